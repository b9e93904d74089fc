"""Benchmarks, each side by side with a reference implementation in one run.

    python bench.py envs                      # rooms/hands generated and solved per second vs gym-sokoban
    python bench.py sft                       # SFT tokens/s of the tiny model vs a Hugging Face Trainer loop
    python bench.py sft --model smollm2       # the same on SmolLM2-135M-Instruct, with FLOP/s vs a bf16 matmul
    python bench.py encode                    # dataset encoding vs apply_chat_template per record (SmolLM2)
    python bench.py sampler [--model smollm2] # KV-cached sampler tokens/s vs model.generate (SDPA) and vs no cache
    python bench.py tricks [--model smollm2] [--memory] [--dtype bf16]  # each sampler speed trick on vs off, on the study's work
    python bench.py same --rev b9bdb22        # the tiny pipeline's outputs here vs at a git revision, byte for byte
    python bench.py plan                      # the paper-scale recipe's memory plans (Qwen2.5-7B's shape, 8 GPUs)
    python bench.py gpu                       # the CUDA check: bf16/SDPA, sampler == generate, NCCL and FSDP steps, MFU

The peers (gym-sokoban, the Trainer's extras) are installed only for benchmarking and are never
dependencies of the project. Each benchmark's last line is its headline ratio.
"""
import argparse
import sys

# -----------------------------------------------------------------------------
# envs


SOKOBAN_SETTINGS = (((6, 6), 1), ((10, 10), 1), ((6, 6), 2), ((10, 10), 2))  # the paper's four


def load_gym_room_utils():
    """gym-sokoban's room_utils module, or None when the package is not installed. Loaded from
    its file because the package's __init__ imports gym and pkg_resources; room_utils needs
    numpy only (`pip install --no-deps gym-sokoban` is enough)."""
    import importlib.util
    import os
    spec = importlib.util.find_spec("gym_sokoban")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "envs", "room_utils.py")
    module_spec = importlib.util.spec_from_file_location("gym_sokoban_room_utils", path)
    room_utils = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(room_utils)
    return room_utils


def gym_generate_room(room_utils, dim, num_boxes, search_depth=30):
    """One room from gym-sokoban's own functions, run as RAGEN runs them: search depth 30 and
    pull moves only (the released gym-sokoban hard-codes depth 300 with plain moves too, which
    is much slower), walk length int(1.7 * (rows + cols)), retried until a box moved. RAGEN's
    player drift (a few cheap steps) is left out, which only flatters the peer."""
    import numpy as np
    room_utils.ACTION_LOOKUP = {a: name for a, name in room_utils.ACTION_LOOKUP.items() if a < 4}
    while True:
        try:
            room = room_utils.room_topology_generation(dim, 0.35, int(1.7 * (dim[0] + dim[1])))
            room = room_utils.place_boxes_and_player(room, num_boxes=num_boxes, second_player=False)
        except RuntimeError:  # too little floor
            continue
        structure = room.copy()
        structure[structure == 5] = 1
        state = room.copy()
        state[state == 2] = 4
        box_mapping = {(r, c): (r, c) for r, c in zip(*np.where(structure == 2))}
        room_utils.explored_states, room_utils.num_boxes = set(), num_boxes
        room_utils.best_room, room_utils.best_room_score, room_utils.best_box_mapping = None, -1, box_mapping
        room_utils.depth_first_search(state, structure, box_mapping, 0, (-1, -1), search_depth)
        if room_utils.best_room_score > 0:
            return room_utils.best_room


def _rate(make_one, seconds):
    """Items per second of make_one(i) for i = 0, 1, ..., over about `seconds`."""
    import time
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        make_one(count)
        count += 1
    return count, time.perf_counter() - start


def _bench_sokoban(args):
    """Rooms generated and solved per second, ours vs gym-sokoban, for the four settings. The
    two alternate in short slices so that other load on the machine hits both alike. Returns
    the list of ratios (empty when gym-sokoban is missing)."""
    import random

    import numpy as np

    import env_sokoban

    room_utils = load_gym_room_utils()
    if room_utils is None:
        print("gym-sokoban not installed (pip install --no-deps gym-sokoban): no side-by-side figures")
    print(f"{'sokoban':<10} {'ours rooms/s':>14} {'gym-sokoban rooms/s':>20} {'ratio':>8}")
    ratios, slices = [], 5
    for dim, num_boxes in SOKOBAN_SETTINGS:
        ours, peer = [0, 0.0], [0, 0.0]
        random.seed(args.seed)  # gym-sokoban draws from the global generators
        np.random.seed(args.seed)
        for _ in range(slices):
            count, seconds = _rate(
                lambda i: env_sokoban.solve(env_sokoban.generate_room(dim, num_boxes, args.seed + ours[0] + i)),
                args.seconds / slices)
            ours[0], ours[1] = ours[0] + count, ours[1] + seconds
            if room_utils is not None:
                count, seconds = _rate(lambda i: gym_generate_room(room_utils, dim, num_boxes), args.seconds / slices)
                peer[0], peer[1] = peer[0] + count, peer[1] + seconds
        name, ours_rate = f"{dim[0]}x{dim[1]}/{num_boxes}", ours[0] / ours[1]
        if room_utils is None:
            print(f"{name:<10} {ours_rate:>14.0f} {'-':>20} {'-':>8}")
            continue
        peer_rate = peer[0] / peer[1]
        ratios.append(ours_rate / peer_rate)
        print(f"{name:<10} {ours_rate:>14.0f} {peer_rate:>20.0f} {ratios[-1]:>7.2f}x")
    return ratios


def _bench_gpoints(args):
    """General Points hands solved per second (env_gpoints.solve, every distinct formula): all
    1,820 four-card hands of ranks 1-13 and 300 random five-card hands (J/Q/K = 10), each from
    cold solver caches, since the memo tables are part of what a fresh process pays."""
    import itertools
    import time

    import numpy as np

    import env_gpoints as gp

    rng = np.random.default_rng(args.seed)
    four_card_hands = list(itertools.combinations_with_replacement(range(1, 14), 4))
    five_card_hands = [gp.hand_values([gp.RANKS[i] for i in rng.integers(13, size=5)], "all10") for _ in range(300)]
    for name, hands in (("4 cards, every hand", four_card_hands), ("5 cards, random", five_card_hands)):
        gp.clear_solver_caches()
        start = time.perf_counter()
        solvable = sum(bool(gp.solve(hand)) for hand in hands)
        seconds = time.perf_counter() - start
        print(f"GP {name}: {len(hands)} hands ({solvable} solvable) in {seconds:.2f}s = "
              f"{len(hands) / seconds:.0f} hands solved/s")


def bench_envs(args):
    ratios = _bench_sokoban(args)
    _bench_gpoints(args)
    # the headline is the worst of the four Sokoban settings
    print(f"envs vs gym-sokoban: {min(ratios):.2f}x" if ratios else "envs vs gym-sokoban: n/a (gym-sokoban missing)")


# -----------------------------------------------------------------------------
# sft


def _sft_synthetic_chats(n, seed):
    """Sokoban-like chats (instructions of varying length, a 6x6 grid, an answer) for throughput only."""
    import random
    rng = random.Random(seed)
    rules = ["You are a Sokoban solver.", "Push the box onto the target.", "You cannot pull boxes.", "Avoid walls.",
             "Symbols: # wall, _ floor, O target, X box, P player.", "Each step costs 0.1 points.",
             "Think first, then answer.", "Where apple is Up, river is Down, stone is Left, tiger is Right.",
             "Answer inside <answer> </answer> tags."]
    chats = []
    for _ in range(n):
        grid = "\n".join(" ".join(rng.choice("#__OXP") for _ in range(6)) for _ in range(6))
        text = " ".join(rng.choices(rules, k=rng.randint(3, 20))) + f"\n{grid}\nDecide the next action."
        answer = rng.choice(['Up', 'Down', 'Left', 'Right'])
        chats.append({"messages": [{"role": "user", "content": text},
                                   {"role": "assistant", "content": f"<think> </think> <answer> {answer} </answer>"}]})
    return chats


def _sft_trainer_run(model_dir, examples, steps, batch, micro, dtype, lr, out):
    """The peer: a plain transformers Trainer on the same model, examples, batch and padding."""
    import time
    import torch
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainerCallback,
                              TrainingArguments)
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = [{"input_ids": ids, "attention_mask": [1] * len(ids),
             "labels": [t if m else -100 for t, m in zip(ids, mask)]} for ids, mask in examples]
    counts = {"real": 0, "padded": 0}
    pad = DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100)

    def collate(features):
        out_ = pad(features)
        counts["real"] += int(out_["attention_mask"].sum())
        counts["padded"] += out_["attention_mask"].numel()
        return out_

    marks = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            marks.append((time.time(), counts["real"], counts["padded"]))

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    targs = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=micro,
                              gradient_accumulation_steps=batch // micro, learning_rate=lr, adam_beta1=0.9,
                              adam_beta2=0.95, weight_decay=0.01, warmup_steps=max(1, round(0.1 * steps)),
                              lr_scheduler_type="cosine", max_grad_norm=1.0, bf16=dtype == "bf16", use_cpu=True,
                              train_sampling_strategy="group_by_length", save_strategy="no", report_to=[],
                              logging_steps=10**6, disable_tqdm=True, dataloader_num_workers=0, seed=0)
    Trainer(model=model, args=targs, train_dataset=rows, data_collator=collate, callbacks=[Clock()]).train()
    (t0, r0, p0), (t1, r1, p1) = marks[0], marks[-1]  # skip the first (warm-up) step
    return (r1 - r0) / (t1 - t0), 1 - (r1 - r0) / (p1 - p0)


def _sokoban_records(out_dir, rooms=None):
    """Compact Sokoban SFT records written by make_data.py (the CPU study's data); `rooms` rooms, or
    the paper's size (4,320 records from 1,000 rooms) when None."""
    import os
    import common
    folder = _make_sokoban_data(out_dir, *(["--sok-train-rooms", str(rooms)] if rooms else []))
    return common.read_jsonl(os.path.join(folder, "train_diverse_ans.jsonl"))


def _make_sokoban_data(out_dir, *flags):
    """Run make_data.py for compact Sokoban files (the CPU study's style) in OUT_DIR/sokoban/; returns that folder."""
    import os
    import subprocess
    cmd = [sys.executable, "make_data.py", "--out", out_dir, "--tasks", "sokoban", "--style", "compact", *flags]
    subprocess.run(cmd, check=True, capture_output=True, cwd=os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(out_dir, "sokoban")


def matmul_peak(seconds=3.0, n=2048):
    """FLOP/s of a square bf16 matmul, best of repeated timings: the CPU's practical peak."""
    import time
    import torch
    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    best, end = 0.0, time.time() + seconds
    while time.time() < end:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def training_flops_per_token(config, seq_len, supervised_share):
    """Model FLOPs of one trained token (forward + backward), the PaLM accounting: 6 x the
    non-embedding matmul parameters, 12 x layers x width x sequence length for attention, and the
    LM head (6 x vocab x hidden) only where a token is supervised (sft.py computes it nowhere else)."""
    h, layers, ffn = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    matmul_params = layers * (h * q + 2 * h * kv + q * h + 3 * h * ffn)
    return 6 * matmul_params + 12 * layers * q * seq_len + 6 * config.vocab_size * h * supervised_share


def _sft_workload(args, tmp):
    """What `bench.py sft` trains: the tiny model on synthetic Sokoban-like chats at the tiny study's
    batch, or a pretrained model on the CPU study's data and batch. Returns (model directory, data
    file, chats, settings)."""
    import json
    import os
    import types
    import common
    import make_data
    if args.model == "tiny":
        run = types.SimpleNamespace(batch=128, micro=16, dtype="bf16", lr="1e-3",
                                    steps=max(2, int(args.seconds // 3)))  # measured steps per run, after a warm-up
        chats = _sft_synthetic_chats(run.batch * (run.steps + 1), args.seed)
        texts = [x for c in chats for m in c["messages"] for x in (m["role"], m["content"])]
        model_dir = make_data.build_tiny_model(os.path.join(tmp, "tiny"), texts, seed=args.seed)  # the default tiny size
    else:
        run = types.SimpleNamespace(batch=32, micro=32, dtype="bf16", lr="1e-4", steps=max(2, int(args.seconds // 5)))
        chats = _sokoban_records(tmp, rooms=60)[: run.batch * (run.steps + 1)]
        model_dir = common.resolve_model(args.model)
    data = os.path.join(tmp, "train.jsonl")
    with open(data, "w") as f:
        f.writelines(json.dumps(c) + "\n" for c in chats)
    return model_dir, data, chats, run


def _sft_run(model_dir, data, out, run, seed, extra):
    """sft.py on the workload; returns (tokens/s, padding share) over its steps but the first."""
    import json
    import os
    import sft
    sft.main(["--model", model_dir, "--data", data, "--out", out, "--batch-size", str(run.batch),
              "--micro-batch-size", str(run.micro), "--max-steps", str(run.steps + 1), "--dtype", run.dtype,
              "--lr", run.lr, "--log-every", str(10**6), "--seed", str(seed)] + extra)
    rows = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))][1:]
    tps = sum(r["tokens_per_s"] * r["seconds"] for r in rows) / sum(r["seconds"] for r in rows)
    return tps, sum(r["padding_share"] for r in rows) / len(rows)


def bench_sft(args):
    """sft.py's training tokens/s against a Hugging Face Trainer on the same model, data, batch and
    padding, and both against the CPU's bf16 matmul peak (FLOP/s)."""
    import os
    import tempfile
    import torch
    import common
    import sft
    import importlib.util
    if importlib.util.find_spec("accelerate") is None:  # the Trainer needs it; benchmark only
        sys.exit("bench.py sft: the Trainer peer needs accelerate: pip install accelerate (benchmark only)")
    tmp = tempfile.mkdtemp(prefix="bench_sft_")
    model_dir, data, chats, run = _sft_workload(args, tmp)
    examples = sft.encode_chats(common.load_tokenizer(model_dir), [c["messages"] for c in chats])
    config = common.load_model(model_dir, "fp32").config
    n_tokens = sum(len(i) for i, _ in examples)
    seq_len = sum(len(i) ** 2 for i, _ in examples) / n_tokens  # the length a token sees, on average
    flops_per_token = training_flops_per_token(config, seq_len, sum(sum(m) for _, m in examples) / n_tokens)
    print(f"{args.model}: {config.model_type}, hidden {config.hidden_size}, {config.num_hidden_layers} layers, vocab "
          f"{config.vocab_size}; {len(examples)} examples of {n_tokens / len(examples):.0f} tokens on average; "
          f"batch {run.batch}, micro-batch {run.micro}, {run.dtype}, {run.steps + 1} steps per run (the first not "
          f"timed), {torch.get_num_threads()} threads; {flops_per_token / 1e6:.0f} MFLOP per trained token")
    # sft.py as the study runs it (--compile on a pretrained model; the tiny model's steps are too short to pay for it),
    # plain sft.py, and the Trainer; interleaved, so that load from other processes hits all alike
    variants = {"sft.py": []} if args.model == "tiny" else {"sft.py --compile": ["--compile"], "sft.py": []}
    ours, theirs, peaks = {name: [] for name in variants}, [], [matmul_peak()]
    for rnd in range(2):
        for name, extra in variants.items():
            ours[name].append(_sft_run(model_dir, data, os.path.join(tmp, f"sft{rnd}{len(extra)}"), run, args.seed,
                                       extra))
        theirs.append(_sft_trainer_run(model_dir, examples, run.steps + 1, run.batch, run.micro, run.dtype,
                                       float(run.lr), os.path.join(tmp, f"hf{rnd}")))
        peaks.append(matmul_peak())
        print(f"round {rnd + 1}: "
              + " | ".join(f"{name} {v[-1][0]:,.0f} tokens/s (padding {v[-1][1]:.1%})" for name, v in ours.items())
              + f" | Trainer {theirs[-1][0]:,.0f} tokens/s (padding {theirs[-1][1]:.1%}) | bf16 matmul "
              f"{peaks[-1] / 1e9:,.0f} GFLOP/s")
    best = {name: max(t for t, _ in v) for name, v in ours.items()}
    best["Trainer"] = max(t for t, _ in theirs)
    _sft_summary(best, flops_per_token, peaks, first=next(iter(variants)))


def _sft_summary(best, flops_per_token, peaks, first):
    """The best tokens/s of each contender, as FLOP/s and a share of the matmul peak; the headline last."""
    peak = max(peaks)
    for name, tps in best.items():
        print(f"{name:17s}: {tps:6,.0f} tokens/s (best of 2), {tps * flops_per_token / 1e9:5,.0f} GFLOP/s = "
              f"{tps * flops_per_token / peak:.0%} of the bf16 matmul peak")
    print(f"bf16 matmul peak: {peak / 1e9:,.0f} GFLOP/s (2048 x 2048, best of {len(peaks)} measurements in this run)")
    if len(best) > 2:
        print(f"plain sft.py vs Trainer: {best['sft.py'] / best['Trainer']:.2f}x")
    print(f"sft vs Trainer: {best[first] / best['Trainer']:.2f}x")


def bench_encode(args):
    """sft.encode_dataset (chat templates rendered as text, one batched Rust tokenizer call per
    chunk, the end-of-turn ids looked up once) against one apply_chat_template(..., tokenize=True)
    call per record, and against this project's previous per-record encoding (two tokenizing
    template calls and an end-of-turn lookup in the 49k-entry vocabulary per record), on the same
    records and tokenizer. The ids must agree: apply_chat_template's run on past the end-of-turn
    token (a newline), sft.py's stop there."""
    import tempfile
    import time
    import common
    import sft
    with tempfile.TemporaryDirectory() as tmp:
        records = _sokoban_records(tmp)
    tok = common.load_tokenizer(common.resolve_model(args.model))

    def previous(messages):
        prompt = list(tok.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True,
                                              return_dict=False))
        full = list(tok.apply_chat_template(messages, tokenize=True, return_dict=False))
        stops = sft.end_of_turn_ids(tok)
        end = next(i for i, t in enumerate(full[len(prompt):]) if t in stops)
        return full[: len(prompt) + end + 1]

    runs = {"encode_dataset":
            lambda: [ids for ids, _ in sft.encode_dataset(tok, records, 10 ** 6, False, "records", verbose=False)],
            "apply_chat_template":
            lambda: [tok.apply_chat_template(r["messages"], tokenize=True, return_dict=False) for r in records],
            # 200 records: the previous encoding takes ~25 ms a record
            "previous encoding": lambda: [previous(r["messages"]) for r in records[:200]]}
    seconds, outputs = {name: [] for name in runs}, {}
    for _ in range(2):  # interleaved, best of 2
        for name, run in runs.items():
            t0 = time.perf_counter()
            outputs[name] = run()
            seconds[name].append((time.perf_counter() - t0) / len(outputs[name]))
    ours, full = outputs["encode_dataset"], outputs["apply_chat_template"]
    same = sum(a == b[:len(a)] and tok.decode(b[len(a):]).strip() == "" for a, b in zip(ours, full))
    same_previous = sum(a == b for a, b in zip(ours, outputs["previous encoding"]))
    rate = {name: 1 / min(s) for name, s in seconds.items()}
    print(f"{len(records)} records (compact Sokoban, diverse names), {args.model} tokenizer, "
          f"{sum(map(len, ours)) / len(ours):.0f} tokens on average; ids equal to apply_chat_template's in "
          f"{same}/{len(records)}, to the previous encoding's in "
          f"{same_previous}/{len(outputs['previous encoding'])}")
    for name in runs:
        print(f"{name:20s}: {rate[name]:8,.0f} records/s")
    print(f"encode vs previous encoding: {rate['encode_dataset'] / rate['previous encoding']:.2f}x")
    print(f"encode vs apply_chat_template: {rate['encode_dataset'] / rate['apply_chat_template']:.2f}x")


# -----------------------------------------------------------------------------
# sampler


def _left_pad(prompts, pad_id):
    import torch
    T = max(map(len, prompts))
    ids_BT = torch.tensor([[pad_id] * (T - len(p)) + p for p in prompts])
    mask_BT = torch.stack([torch.arange(T) >= T - len(p) for p in prompts]).long()
    return ids_BT, mask_BT


def _cut_at_eos(rows, eos_ids):
    eos = set(eos_ids)
    return [row[:next((i + 1 for i, t in enumerate(row) if t in eos), len(row))] for row in rows]


def _generate(model, prompts, max_new_tokens, eos_ids, pad_id, temperature, n=1):
    """The peer: Hugging Face `model.generate` on the left-padded batch (top-k off, as in the sampler),
    n samples per prompt."""
    import torch
    ids_BT, mask_BT = (x.to(model.device) for x in _left_pad(prompts, pad_id))
    mode = dict(do_sample=False)
    if temperature > 0:
        mode = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    with torch.no_grad():
        out_BT = model.generate(input_ids=ids_BT, attention_mask=mask_BT, max_new_tokens=max_new_tokens,
                                eos_token_id=eos_ids, pad_token_id=pad_id, num_return_sequences=n, **mode)
    return _cut_at_eos(out_BT[:, ids_BT.shape[1]:].tolist(), eos_ids)


def _no_cache(model, prompts, max_new_tokens, eos_ids, pad_id, temperature):
    """Decoding without a KV cache: every step re-runs the whole left-padded sequence."""
    import torch
    ids_BT, mask_BT = _left_pad(prompts, pad_id)
    done_B = torch.zeros(len(prompts), dtype=torch.bool)
    eos_E = torch.tensor(eos_ids)
    generator = torch.Generator().manual_seed(0)
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            pos_BT = (mask_BT.cumsum(-1) - 1).clamp(min=0)
            out = model(input_ids=ids_BT, attention_mask=mask_BT, position_ids=pos_BT, logits_to_keep=1)
            logits_BV = out.logits[:, -1]
            if temperature > 0:
                token_B = torch.multinomial((logits_BV.float() / temperature).softmax(-1), 1, generator=generator)[:, 0]
            else:
                token_B = logits_BV.argmax(-1)
            new.append(token_B)
            done_B |= torch.isin(token_B, eos_E)
            if done_B.all():
                break
            ids_BT = torch.cat([ids_BT, token_B[:, None]], dim=1)
            mask_BT = torch.cat([mask_BT, torch.ones_like(mask_BT[:, :1])], dim=1)
    return _cut_at_eos(torch.stack(new, dim=1).tolist(), eos_ids)


def _sampler_model(model_dir, dtype):
    """The model on the CPU with SDPA attention: the best `generate` can use, and what the sampler
    decodes with (it swaps an eager model to SDPA for the call anyway)."""
    import common
    model = common.load_model(model_dir, dtype, "cpu").eval()
    model.set_attn_implementation("sdpa")
    return model


def _sampler_setup_tiny(seed, dtype):
    """sft.py's tiny model on 400 random-token prompts of 60-200 tokens, 64 random EOS ids, 1 thread."""
    import random
    import tempfile

    import torch

    from common import load_tokenizer
    from make_data import build_tiny_model
    n_prompts, min_len, max_len, max_new_tokens, n_eos, rounds, subset = 400, 60, 200, 48, 64, 3, 16
    torch.set_num_threads(1)
    rng = random.Random(seed)
    # enough distinct made-up words for a ~2k-token BPE vocabulary
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(3000)]
    texts = [" ".join(rng.choice(words) for _ in range(60)) for _ in range(600)]
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_model(tmp + "/tiny", texts)
        model, tok = _sampler_model(tmp + "/tiny", dtype), load_tokenizer(tmp + "/tiny")
    vocab = len(tok)
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(min_len, max_len))] for _ in range(n_prompts)]
    eos_ids = rng.sample(range(3, vocab), n_eos)
    what = f"tiny Qwen2, {dtype}, SDPA, CPU, 1 thread; {n_prompts} prompts of {min_len}-{max_len} tokens"
    return model, tok, prompts, eos_ids, what, (n_prompts, max_new_tokens, rounds, subset)


def _sampler_setup_chat_model(name, seed, dtype):
    """A real chat model (`--model`) on 48 of the study's Sokoban prompts, its end-of-turn tokens as EOS."""
    import random
    import tempfile

    import torch

    from common import load_tokenizer, resolve_model
    from sft import encode_prompts, end_of_turn_ids
    n_prompts, max_new_tokens, rounds, subset = 48, 48, 2, 8
    rng = random.Random(seed)
    model_dir = resolve_model(name)
    model, tok = _sampler_model(model_dir, dtype), load_tokenizer(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        records = rng.sample(_sokoban_records(tmp, rooms=60), n_prompts)
    prompts = encode_prompts(tok, [r["messages"][:1] for r in records])
    eos_ids = sorted(end_of_turn_ids(tok))
    lengths = sorted(map(len, prompts))
    what = (f"{name} ({model.config.model_type}), {dtype}, SDPA, CPU, {torch.get_num_threads()} threads; "
            f"{n_prompts} Sokoban prompts of {lengths[0]}-{lengths[-1]} tokens")
    return model, tok, prompts, eos_ids, what, (n_prompts, max_new_tokens, rounds, subset)


def _sampler_runs(model, prompts, eos_ids, pad_id, max_new_tokens, seed, subset, groups):
    """name -> a call that decodes at temperature 1 and returns the new ids of every row: the sampler
    and `generate` on every prompt, the sampler and no-cache decoding on 1/subset of them, and with
    `groups` > 1 both in rl.py's shape (prompts x groups samples, a prompt prefilled once by the sampler)."""
    from eval import sample

    def ours(ps, n=1):
        return sample(model, ps, n=n, temperature=1.0, max_new_tokens=max_new_tokens, eos_ids=eos_ids, seed=seed).ids

    few = prompts[::subset]
    runs = {
        "sampler": lambda: ours(prompts),
        "generate": lambda: _generate(model, prompts, max_new_tokens, eos_ids, pad_id, 1.0),
        "sampler, subset": lambda: ours(few),
        "no cache, subset": lambda: _no_cache(model, few, max_new_tokens, eos_ids, pad_id, 1.0),
    }
    if groups > 1:
        grouped = prompts[:len(prompts) // groups]
        runs["sampler, groups"] = lambda: ours(grouped, groups)
        runs["generate, groups"] = lambda: _generate(model, grouped, max_new_tokens, eos_ids, pad_id, 1.0, groups)
    return runs


def _tokens_per_s(name, run, label, outputs):
    """Time run(), keep its rows in outputs[name], print and return its tokens/s."""
    import time
    t0 = time.perf_counter()
    outputs[name] = run()
    seconds = time.perf_counter() - t0
    n_tokens = sum(map(len, outputs[name]))
    print(f"{label:8s} {name:18s} {n_tokens:6d} tokens in {seconds:6.2f}s  {n_tokens / seconds:7.0f} tokens/s")
    return n_tokens / seconds


def bench_sampler(args):
    """eval.sample vs model.generate vs no-cache decoding: tokens/s on the tiny model (sft.py's), an
    eval-size batch of prompts of mixed lengths, sampled at temperature 1 with a set of EOS ids that
    ends rows at mixed steps (a random model rarely says its real EOS); then one greedy round, whose
    outputs must be identical. Runs are interleaved and repeated, on one thread: this machine's 2
    cores are shared, and timings are far steadier that way."""
    import statistics

    from eval import sample

    dtype = args.dtype or "fp32"
    if args.model == "tiny":
        model, tok, prompts, eos_ids, what, sizes = _sampler_setup_tiny(args.seed, dtype)
    else:  # a real chat model on the study's prompts, its own end-of-turn tokens as EOS
        model, tok, prompts, eos_ids, what, sizes = _sampler_setup_chat_model(args.model, args.seed, dtype)
    n_prompts, max_new_tokens, rounds, subset = sizes
    group = 1 if args.model == "tiny" else 8  # rl.py's rollouts: a group of samples per prompt
    print(f"{what} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params), temperature 1.0, "
          f"max_new_tokens {max_new_tokens}, {len(eos_ids)} EOS ids")
    runs = _sampler_runs(model, prompts, eos_ids, tok.pad_token_id, max_new_tokens, args.seed, subset, group)
    rates, outputs = {name: [] for name in runs}, {}
    for r in range(rounds):
        for name, run in runs.items():
            rates[name].append(_tokens_per_s(name, run, f"round {r + 1}", outputs))
    lengths = sorted(map(len, outputs["sampler"]))
    print(f"reply lengths (sampler): min {lengths[0]}, median {lengths[len(lengths) // 2]}, max {lengths[-1]}; "
          f"{sum(n < max_new_tokens for n in lengths)}/{len(lengths)} rows stopped at an EOS")
    greedy_a = _tokens_per_s("sampler", lambda: sample(model, prompts, temperature=0.0, max_new_tokens=max_new_tokens,
                                                       eos_ids=eos_ids, seed=args.seed).ids, "greedy", outputs)
    greedy_b = _tokens_per_s("generate", lambda: _generate(model, prompts, max_new_tokens, eos_ids, tok.pad_token_id,
                                                           0.0), "greedy", outputs)
    same = sum(a == b for a, b in zip(outputs["sampler"], outputs["generate"]))
    print(f"greedy: sampler vs generate {greedy_a / greedy_b:.2f}x, outputs identical in {same}/{n_prompts} rows")
    median = {name: statistics.median(v) for name, v in rates.items()}
    print(f"median tokens/s: (a) sampler {median['sampler']:.0f}  (b) generate {median['generate']:.0f}  "
          f"(c) no cache {median['no cache, subset']:.0f} on 1/{subset} of the prompts "
          f"(sampler there: {median['sampler, subset']:.0f})")
    print(f"sampler vs no cache: {median['sampler, subset'] / median['no cache, subset']:.2f}x (same subset)")
    if "sampler, groups" in median:
        print(f"groups of {group} samples per prompt ({n_prompts // group} prompts, as rl.py samples): "
              f"sampler vs generate {median['sampler, groups'] / median['generate, groups']:.2f}x")
    print(f"sampler vs generate: {median['sampler'] / median['generate']:.2f}x")


# -----------------------------------------------------------------------------
# tricks: each of the sampler's speed tricks against the same sampler without it, on the study's work

TRICK_SWITCHES = {  # name -> how to switch it off: sample() keywords, or a key of eval.TRICKS
    "shared prefix": "shared_prefix",  # a chunk's common prompt prefix prefilled once, then copied
    "chunked prefill": dict(prefill_tokens=10 ** 12),  # off: every batch's prompts in one prefill forward
    "inverse-CDF draws": "inverse_cdf",  # off: torch.multinomial
    "SDPA swap": "sdpa",  # off: an eager-attention model decodes with eager attention
    "pad to a multiple": dict(pad_multiple=1),  # off: prompts and attended cache padded to nothing
}


def _tricks_workloads(args):
    """The model and the two pieces of the study's work that the sampler does, on make_data.py's
    compact Sokoban prompts: an evaluation turn (the first turn of every test set, one reply each at
    temperature 0.5, stopped at </answer>) and a GRPO rollout (RL prompts x 8 samples at temperature 1,
    log-probs kept, the fp32 model under autocast as rl.py runs it). Returns (model's description,
    {workload: (model, prompt ids, sample() keywords, autocast dtype)})."""
    import os
    import random
    import tempfile

    import torch

    import common
    import eval as evaluation
    import make_data
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = args.dtype or ("bf16" if device == "cuda" else "fp32")
    tiny = args.model == "tiny"
    rooms, rl_prompts, max_new_tokens = (6, 8, 48) if tiny else (16, 16, 64)
    if args.rooms:
        rooms = rl_prompts = args.rooms
    with tempfile.TemporaryDirectory() as tmp:
        folder = _make_sokoban_data(tmp, "--scale", "small", "--sok-eval-rooms", str(rooms))
        evals = [r for v in evaluation.SOKOBAN_VARIANTS for r in common.read_jsonl(f"{folder}/eval_{v}.jsonl")]
        rl = common.read_jsonl(f"{folder}/rl.jsonl")[:rl_prompts]
        if tiny:  # sft.py's tiny model, its tokenizer trained on this text, on one thread (steadier timings)
            torch.set_num_threads(1)
            texts = [m["content"] for r in common.read_jsonl(f"{folder}/train_cot.jsonl") + evals for m in r["messages"]]
            model_dir = make_data.build_tiny_model(os.path.join(tmp, "tiny"), texts, seed=args.seed)
        else:
            model_dir = common.resolve_model(args.model)
        model, tok = common.load_model(model_dir, dtype, device), common.load_tokenizer(model_dir)
        policy = model if dtype == "fp32" else common.load_model(model_dir, "fp32", device)
    # a random model seldom says its EOS: a set of EOS ids ends its rows at mixed steps, as a trained one's
    eos_ids = random.Random(args.seed).sample(range(3, len(tok)), 16) if tiny else None
    common_kw = dict(max_new_tokens=max_new_tokens, tokenizer=tok, eos_ids=eos_ids, seed=args.seed)
    works = {
        "eval turn": (model, evaluation.prompt_ids(tok, [r["messages"][0]["content"] for r in evals]),
                      dict(common_kw, n=1, temperature=0.5, stop_strings=evaluation.STOP_STRINGS["sokoban"]), None),
        "rollout": (policy, evaluation.prompt_ids(tok, [r["messages"][0]["content"] for r in rl]),
                    dict(common_kw, n=8, temperature=1.0, return_logprobs=True), dtype),
    }
    what = (f"{args.model} ({model.config.model_type}, {model.config._attn_implementation} attention as loaded), "
            f"{dtype}, {device}, {torch.get_num_threads()} threads; eval turn: {len(evals)} Sokoban prompts x 1 at "
            f"T=0.5; rollout: {len(rl)} RL prompts x 8 at T=1 (fp32{'' if dtype == 'fp32' else f' under {dtype} autocast'}); "
            f"up to "
            f"{max_new_tokens} new tokens")
    return what, works


def _trick_run(work, off):
    """One sample() call of a workload with the trick `off` switched off (None: every trick on).
    Returns (seconds, tokens, growth of the peak RSS in MB, peak GPU memory in GB or None)."""
    import resource
    import time

    import torch

    import common
    import eval as evaluation
    model, prompts, kwargs, autocast = work
    switch = TRICK_SWITCHES.get(off)
    saved = dict(evaluation.TRICKS)
    if isinstance(switch, str):
        evaluation.TRICKS[switch] = False
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    try:
        with common.autocast_ctx(device, autocast or "fp32"):
            out = evaluation.sample(model, prompts, **kwargs, **(switch if isinstance(switch, dict) else {}))
        if cuda:
            torch.cuda.synchronize()
    finally:
        evaluation.TRICKS.update(saved)
    seconds = time.perf_counter() - t0
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024  # ru_maxrss is in KB on Linux
    return seconds, sum(map(len, out.ids)), grown, torch.cuda.max_memory_allocated() / 1e9 if cuda else None


def bench_tricks(args):
    """Each speed trick of the sampler on and off, everything else equal (same prompts, seeds and
    model), on an evaluation turn and a GRPO rollout. Both workloads run once first (warm-up); then
    on and off alternate, `rounds` times, which goes first swapping each round. Reports the best
    seconds of each, the ratio off/on (above 1: the trick pays), the tokens decoded (draws differ
    without inverse-CDF, so lengths may too) and how far each setting raised the process's peak RSS."""
    what, works = _tricks_workloads(args)
    print(what)
    for work in works.values():
        _trick_run(work, None)
    rounds, results = 2, {}  # (trick, workload, "on" / "off") -> [(seconds, tokens, MB, GB)]
    for r in range(rounds):
        for i, trick in enumerate(TRICK_SWITCHES):
            for name, work in works.items():
                if trick == "SDPA swap" and work[0].config._attn_implementation != "eager":
                    continue  # loaded with SDPA already (on a GPU): there is nothing to swap
                for setting in ("on", "off") if (r + i) % 2 == 0 else ("off", "on"):
                    results.setdefault((trick, name, setting), []).append(
                        _trick_run(work, trick if setting == "off" else None))
    print(f"{'trick':18s} {'work':10s} {'on s':>7s} {'off s':>7s} {'off/on':>7s} {'tokens on/off':>15s} "
          f"{'RSS +MB on/off':>15s}" + (f" {'GPU GB on/off':>14s}" if works["eval turn"][0].device.type == "cuda" else ""))
    headline = []
    for trick in TRICK_SWITCHES:
        cells = []
        for name in works:
            if (trick, name, "on") not in results:
                cells.append(f"{name} n/a")
                continue
            on, off = results[(trick, name, "on")], results[(trick, name, "off")]
            best_on, best_off = min(s for s, *_ in on), min(s for s, *_ in off)
            gpu = f" {max(g for *_, g in on):6.2f}/{max(g for *_, g in off):<7.2f}" if on[0][3] is not None else ""
            print(f"{trick:18s} {name:10s} {best_on:7.2f} {best_off:7.2f} {best_off / best_on:6.2f}x "
                  f"{on[0][1]:>7d}/{off[0][1]:<7d} {sum(m for *_, m, _ in on):7.0f}/{sum(m for *_, m, _ in off):<7.0f}"
                  + gpu)
            cells.append(f"{name} {best_off / best_on:.2f}x")
        headline.append(f"{trick} {', '.join(cells)}")
    print("tricks, seconds off/on: " + "; ".join(headline))


def _eval_turn_peak_rss(args, off, queue):
    """In a fresh process: one eval turn with the trick `off` switched off (None: all on); its peak RSS in MB."""
    import resource
    _, works = _tricks_workloads(args)
    seconds, tokens, *_ = _trick_run(works["eval turn"], off)
    queue.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, seconds, tokens))


def bench_tricks_memory(args):
    """Peak RSS of an evaluation turn with each trick on and off, each setting in a fresh process (a
    process's peak only grows): what a trick keeps off the memory at the study's batch (--rooms 30:
    30 rooms x 8 test sets, study.sh's evaluation)."""
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    print(f"{'trick':18s} {'peak RSS MB on':>15s} {'off':>7s} {'off - on':>9s}")
    for trick in [args.trick] if args.trick else list(TRICK_SWITCHES):
        peaks = []
        for off in (None, trick):
            queue = ctx.Queue()
            child = ctx.Process(target=_eval_turn_peak_rss, args=(args, off, queue))
            child.start()
            peaks.append(queue.get()[0])
            child.join()
        print(f"{trick:18s} {peaks[0]:15.0f} {peaks[1]:7.0f} {peaks[1] - peaks[0]:9.0f}", flush=True)


# -----------------------------------------------------------------------------
# same: a refactoring changes no output bit (make_data -> sft -> eval -> rl at the smallest sizes)

PIPELINE = (
    "python make_data.py --out data --scale small --style compact",
    "python sft.py --model tiny --data data/sokoban/train_cot.jsonl --out runs/sft --max-steps 6 --batch-size 16 "
    "--log-every 100",
    "python eval.py --model runs/sft/final --task sokoban --data data --limit 2 --max-new-tokens 32 --out eval.json",
    "python rl.py --algo grpo --model runs/sft/final --data data/sokoban/rl.jsonl --out runs/rl --dtype fp32 "
    "--prompts-per-step 4 --group-size 4 --max-new-tokens 32 --lr 1e-4 --max-steps 2 --log-every 100",
)
TIMING_KEYS = {"seconds", "tokens_per_s", "sample_s", "learn_s"}


def _pipeline_outputs(code_dir, work_dir):
    """Run PIPELINE with the scripts of `code_dir` in `work_dir`; {relative path: sha256} of every
    output, log.jsonl and JSON files without their timing fields."""
    import hashlib
    import json
    import os
    import subprocess
    for command in PIPELINE:
        argv = command.split()
        argv[:2] = [sys.executable, os.path.join(code_dir, argv[1])]
        subprocess.run(argv, cwd=work_dir, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    digests = {}
    for root, _, files in os.walk(work_dir):
        for name in files:
            path = os.path.join(root, name)
            data = open(path, "rb").read()
            if name.endswith((".json", ".jsonl")) and not name.startswith("tokenizer"):
                rows = [json.loads(line) for line in data.splitlines()] if name.endswith(".jsonl") else [json.loads(data)]
                if name == "config.json" or name == "eval.json":  # paths of this run's folders
                    rows = [{k: v for k, v in r.items() if k not in ("args", "model", "data", "out", "model_path")}
                            for r in rows]
                data = json.dumps([{k: v for k, v in r.items() if k not in TIMING_KEYS} if isinstance(r, dict) else r
                                   for r in rows], sort_keys=True).encode()
            digests[os.path.relpath(path, work_dir)] = hashlib.sha256(data).hexdigest()
    return digests


def bench_same(args):
    import os
    import subprocess
    import tempfile
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as tmp:
        old_code = os.path.join(tmp, "old")
        subprocess.run(["git", "worktree", "add", "--detach", old_code, args.rev], cwd=here, check=True,
                       capture_output=True)
        try:
            results = {}
            for label, code in (("here", here), (args.rev, old_code)):
                work = os.path.join(tmp, f"work-{label}")
                os.makedirs(work)
                results[label] = _pipeline_outputs(code, work)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", old_code], cwd=here, capture_output=True)
    a, b = results["here"], results[args.rev]
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    for name in differ:
        print(f"differs: {name}")
    print(f"{len(a.keys() & b.keys()) - len([k for k in differ if k in a and k in b])} of {len(a.keys() | b.keys())} "
          f"output files identical to {args.rev}'s")
    return 0 if not differ else 1


# -----------------------------------------------------------------------------
# plan and gpu: models of Qwen2.5's shapes, built from their configs with no weights read

QWEN25_SHAPES = {  # from Qwen2.5's published config.json files
    "0.5B": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7B": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}
RECIPE_RL_FLAGS = ["--fsdp", "--max-new-tokens", "1024"]  # the README recipe's RL (warm) row; the rest: the defaults


def qwen25_config(shape, **extra):
    """A Qwen2Config of one of QWEN25_SHAPES (or a dict of the same keys)."""
    from transformers import Qwen2Config
    shape = QWEN25_SHAPES[shape] if isinstance(shape, str) else shape
    return Qwen2Config(**shape, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, **extra)


def count_params(config):
    """Parameters of the model a config builds, counted on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())


def bench_plan(args):
    """sft.py's and rl.py's memory plans for the README's paper-scale recipe: Qwen2.5-7B's shape on
    --gpus GPUs, rl.py with RECIPE_RL_FLAGS and prompts of --prompt-tokens tokens."""
    import common
    import rl
    import sft
    common.refuse([(min(args.gpus, args.prompt_tokens) < 1, "plan: --gpus and --prompt-tokens must be >= 1")])
    rl_args = rl.get_parser().parse_args(["--model", "-", "--data", "-", "--out", "-"] + RECIPE_RL_FLAGS)
    rl.check_args(rl_args, args.gpus)  # as rl.py would refuse it
    config = qwen25_config("7B")
    n_params = count_params(config)
    print(f"Qwen2.5-7B's shape: {n_params:,} parameters, {args.gpus} GPUs")
    print(f"sft.py --fsdp: {sft.memory_plan(n_params, args.gpus, True, False)}")
    print(f"rl.py {' '.join(RECIPE_RL_FLAGS)} (prompts of up to {args.prompt_tokens} tokens): "
          f"{rl.memory_plan(rl_args, config, n_params, args.gpus, args.prompt_tokens, 'cuda')}")


# dense bf16 tensor-core FLOP/s from the vendors' data sheets; the first name found in the device's wins
GPU_BF16_PEAKS = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
                  ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12)]
# what `gpu` runs: small enough for a few minutes on one GPU, big enough to keep it busy
GPU_SIZES = dict(sft_chats=512, sft_batch=128, sft_micro=32, sft_steps=20, rl_prompts=32, rl_group=8, rl_new=256,
                 rl_micro=16, rl_steps=4, greedy_prompts=16, greedy_new=32, fsdp_steps=2)


def bench_gpu(args):
    """The CUDA check (refused without a GPU): gpu_check on a random model of a Qwen2.5 shape (--shape)."""
    import torch
    import common
    if not torch.cuda.is_available():
        raise common.UserError("gpu: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU node")
    return gpu_check(torch.device("cuda"), args.shape, GPU_SIZES, args.seed, torch.cuda.device_count())


def gpu_check(device, shape, sizes, seed, gpus):
    """On `device`, with no network and no downloaded weights: (1) bf16 autocast and SDPA run and agree
    with fp32 and eager attention; (2) the sampler's greedy output equals `generate`'s; (3) sft.py and
    rl.py steps under torchrun, one process (NCCL on CUDA), and with --fsdp over `gpus` processes when
    there are several; (4) their tokens/s and model FLOP utilisation against the GPU's bf16 peak.
    A check that raises is a failed check, and the others still run. Prints a table of checks;
    returns 1 if one failed."""
    import os
    import tempfile
    import time
    import traceback
    import torch
    import common
    t0 = time.time()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = next((flops for key, flops in GPU_BF16_PEAKS if key in name), None)
    print(f"{name} x{gpus}, bf16 peak {f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown (MFU unknown)'}; "
          f"torch {torch.__version__}; a random model of {f'Qwen2.5-{shape}' if isinstance(shape, str) else 'a'} "
          "shape", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        chats = _sft_synthetic_chats(sizes["sft_chats"], seed)
        rl_records = common.read_jsonl(os.path.join(_make_sokoban_data(tmp, "--scale", "small"), "rl.jsonl"))
        texts = [m["content"] for r in chats + rl_records for m in r["messages"]]
        model_dir = _random_model_dir(os.path.join(tmp, "model"), texts, shape, device, seed)
        sft_data, rl_data = os.path.join(tmp, "sft.jsonl"), os.path.join(tmp, "rl.jsonl")
        common.write_jsonl(sft_data, chats)
        common.write_jsonl(rl_data, rl_records)
        checks = []
        for stage, run in (("(1)-(2) numerics", lambda: _numerics_checks(model_dir, rl_records, device, sizes)),
                           ("(3)-(4) runs", lambda: _run_checks(model_dir, sft_data, rl_data, device, sizes, peak,
                                                                gpus))):
            try:
                checks += run()
                if device.type == "cuda":
                    torch.cuda.empty_cache()  # the runs are other processes: leave them this one's cache
            except Exception as e:  # a GPU's time is scarce: report it, go on
                traceback.print_exc()
                checks.append((stage, False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
    print(f"{'check':44s} {'':4s} detail")
    for what, ok, detail in checks:
        print(f"{what:44s} {'ok' if ok else 'FAIL':4s} {detail}")
    failed = [what for what, ok, _ in checks if not ok]
    print(f"gpu check: {len(checks) - len(failed)} of {len(checks)} passed in {time.time() - t0:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _random_model_dir(out_dir, texts, shape, device, seed):
    """A Hugging Face directory: a random-init Qwen2 of `shape` beside make_data.py's tiny byte-level BPE
    trained on `texts` (its ids are a subset of the model's vocabulary)."""
    import torch
    from transformers import Qwen2ForCausalLM
    import common
    import make_data
    tok = common.load_tokenizer(make_data.build_tiny_model(f"{out_dir}-tiny", texts, seed=seed))  # its tokenizer only
    config = qwen25_config(shape, bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = tok.eos_token_id, tok.pad_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def _numerics_checks(model_dir, rl_records, device, sizes):
    """(1) bf16 autocast and SDPA against fp32 and eager attention on random tokens; (2) the sampler's
    greedy replies to RL prompts against `generate`'s. Returns [(check, ok, detail)]."""
    import torch
    import common
    import sft
    from eval import sample
    model, tok = common.load_model(model_dir, "fp32", device).eval(), common.load_tokenizer(model_dir)
    ids_BT = torch.randint(3, len(tok), (4, 256), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        fp32_BTV = model(input_ids=ids_BT).logits.float()
        with common.autocast_ctx(device, "bf16"):
            bf16_BTV = model(input_ids=ids_BT).logits
        attention = model.config._attn_implementation
        model.set_attn_implementation("eager")
        eager_BTV = model(input_ids=ids_BT).logits.float()
        model.set_attn_implementation(attention)
    top1 = (bf16_BTV.float().argmax(-1) == fp32_BTV.argmax(-1)).float().mean().item()
    eager_diff = (eager_BTV - fp32_BTV).abs().max().item()
    checks = [(f"bf16 autocast forward ({attention} attention)",
               bf16_BTV.dtype == torch.bfloat16 and bool(bf16_BTV.isfinite().all()) and top1 > 0.5,
               f"logits {bf16_BTV.dtype}, top-1 token as fp32's at {top1:.1%} of positions"),
              (f"{attention} attention vs eager, fp32", attention == ("sdpa" if device.type == "cuda" else "eager")
               and eager_diff < 1e-3, f"largest logit difference {eager_diff:.2e}")]
    prompts = sft.encode_prompts(tok, [r["messages"] for r in rl_records[:sizes["greedy_prompts"]]])
    eos_ids = sorted(sft.end_of_turn_ids(tok))
    ours = sample(model, prompts, temperature=0.0, max_new_tokens=sizes["greedy_new"], eos_ids=eos_ids).ids
    theirs = _generate(model, prompts, sizes["greedy_new"], eos_ids, tok.pad_token_id, 0.0)
    same = sum(a == b for a, b in zip(ours, theirs))
    checks.append(("sampler greedy == generate, fp32", same == len(prompts),
                   f"{same}/{len(prompts)} replies identical, {sizes['greedy_new']} new tokens"))
    return checks


def _torchrun(script, nproc, argv):
    """Run SCRIPT.py under torchrun (NCCL on GPUs, gloo on a CPU); returns (ok, last stderr line)."""
    import os
    import subprocess
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script] + argv
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__)),
                          timeout=600)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "%|" not in line]
    errors = [line for line in lines if ("Error" in line or "error:" in line) and "ChildFailedError" not in line]
    lines = errors or lines  # the rank's own error, not torchrun's banner after it
    return proc.returncode == 0, "" if proc.returncode == 0 else f"exit {proc.returncode}: {lines[-1] if lines else ''}"


def _run_checks(model_dir, sft_data, rl_data, device, sizes, peak, gpus):
    """(3) one-process sft.py and rl.py runs under torchrun, and --fsdp runs over every GPU when there
    are several; (4) their tokens/s and MFU (steps after the first). Returns [(check, ok, detail)]."""
    import os
    import common
    import sft
    from transformers import AutoConfig
    tmp, tok, config, checks = os.path.dirname(model_dir), common.load_tokenizer(model_dir), \
        AutoConfig.from_pretrained(model_dir), []
    mfu = lambda flops_per_s: f"MFU {flops_per_s / peak:.1%}" if peak else "MFU unknown"
    backend = "NCCL" if device.type == "cuda" else "gloo"
    sft_argv = ["--model", model_dir, "--data", sft_data, "--batch-size", str(sizes["sft_batch"]),
                "--micro-batch-size", str(sizes["sft_micro"]), "--lr", "1e-5", "--log-every", "1"]
    out = os.path.join(tmp, "sft")
    ok, error = _torchrun("sft.py", 1, sft_argv + ["--out", out, "--max-steps", str(sizes["sft_steps"])])
    detail = error
    if ok:  # model FLOPs of a trained token, as bench.py sft counts them
        examples = sft.encode_chats(tok, [r["messages"] for r in common.read_jsonl(sft_data)])
        n_tokens = sum(len(ids) for ids, _ in examples)
        flops = training_flops_per_token(config, sum(len(ids) ** 2 for ids, _ in examples) / n_tokens,
                                         sum(sum(m) for _, m in examples) / n_tokens)
        rows = common.read_jsonl(os.path.join(out, "log.jsonl"))[1:]
        tps = sum(r["tokens_per_s"] * r["seconds"] for r in rows) / sum(r["seconds"] for r in rows)
        detail = f"{tps:,.0f} tokens/s, {tps * flops / 1e12:.1f} TFLOP/s, {mfu(tps * flops)}"
    checks.append((f"sft.py, torchrun x1 ({backend}, bf16)", ok, detail))

    rl_argv = ["--algo", "grpo", "--model", model_dir, "--data", rl_data, "--prompts-per-step",
               str(sizes["rl_prompts"]), "--group-size", str(sizes["rl_group"]), "--max-new-tokens",
               str(sizes["rl_new"]), "--micro-batch-size", str(sizes["rl_micro"]), "--log-every", "1"]
    out = os.path.join(tmp, "rl")
    ok, error = _torchrun("rl.py", 1, rl_argv + ["--out", out, "--max-steps", str(sizes["rl_steps"])])
    checks.append((f"rl.py GRPO, torchrun x1 ({backend}, bf16)", ok,
                   error or _grpo_speed(out, rl_data, tok, config, sizes, mfu)))
    if gpus > 1:  # batches divisible by the ranks (a repeated flag: argparse keeps the last)
        divisible = {"sft.py": ["--batch-size", str(sizes["sft_micro"] * gpus)],
                     "rl.py": ["--prompts-per-step", str(gpus * max(1, sizes["rl_prompts"] // gpus))]}
        for script, argv in (("sft.py", sft_argv), ("rl.py", rl_argv)):
            ok, error = _torchrun(script, gpus, argv + divisible[script] + [
                "--out", os.path.join(tmp, f"fsdp-{script}"), "--fsdp", "--max-steps", str(sizes["fsdp_steps"])])
            checks.append((f"{script} --fsdp, torchrun x{gpus} ({backend})", ok, error or "ran"))
    return checks


def _grpo_speed(out, rl_data, tok, config, sizes, mfu):
    """GRPO's tokens/s and MFU over the steps after the first: sampling (each prompt prefilled once for
    its group, then every reply token decoded) and learning (one forward and backward of every row)."""
    import os
    import common
    import sft
    prompts = sft.encode_prompts(tok, [r["messages"] for r in common.read_jsonl(rl_data)])
    P = sum(map(len, prompts)) / len(prompts)  # the compact prompts are of nearly one length
    rows, log = sizes["rl_prompts"] * sizes["rl_group"], common.read_jsonl(os.path.join(out, "log.jsonl"))[1:]
    R = sum(r["response_length"] for r in log) / len(log)
    sample_s, learn_s = sum(r["sample_s"] for r in log) / len(log), sum(r["learn_s"] for r in log) / len(log)
    sample_flops = (sizes["rl_prompts"] * P * training_flops_per_token(config, P, 0)
                    + rows * R * training_flops_per_token(config, P + R, 1)) / 3  # forward only: a third
    learn_flops = rows * (P + R) * training_flops_per_token(config, P + R, R / (P + R))
    return (f"sampling {rows * R / sample_s:,.0f} new tokens/s ({mfu(sample_flops / sample_s)}), learning "
            f"{rows * (P + R) / learn_s:,.0f} tokens/s ({mfu(learn_flops / learn_s)}), the step "
            f"{mfu((sample_flops + learn_flops) / (sample_s + learn_s))}; {rows} replies of {R:.0f} tokens to "
            f"prompts of {P:.0f}")


# -----------------------------------------------------------------------------

def main():
    import common
    parser = common.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["envs", "sft", "encode", "sampler", "tricks", "same", "plan", "gpu"],
                        help="which benchmark to run")
    parser.add_argument("--rev", default="HEAD", help="same: the git revision to compare the working tree with")
    parser.add_argument("--model", default=None,
                        help="sft / sampler / tricks: 'tiny' (default), 'smollm2' or a model directory; "
                        "encode: the tokenizer's model (default smollm2)")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default=None,
                        help="sampler / tricks: the weights' dtype (default fp32 on a CPU, tricks: bf16 on CUDA)")
    parser.add_argument("--seconds", type=float, default=10.0, help="rough time budget per measured item")
    parser.add_argument("--rooms", type=int, default=None,
                        help="tricks: test rooms per variant and RL prompts (default 6 / 8 tiny, 16 / 16 otherwise)")
    parser.add_argument("--memory", action="store_true",
                        help="tricks: peak RSS of an eval turn with each trick on and off, each in a fresh process")
    parser.add_argument("--trick", choices=list(TRICK_SWITCHES), default=None, help="tricks --memory: only this trick")
    parser.add_argument("--gpus", type=int, default=8, help="plan: GPUs the recipe runs on")
    parser.add_argument("--prompt-tokens", type=int, default=512, help="plan: the longest RL prompt, in tokens")
    parser.add_argument("--shape", choices=["0.5B", "1.5B"], default="0.5B",
                        help="gpu: the random model's Qwen2.5 shape (1.5B: fp32 weights, grads and AdamW take 16 bytes a parameter)")
    parser.add_argument("--seed", type=int, default=0, help="seed for every random choice")
    args = parser.parse_args()
    args.model = args.model or ("smollm2" if args.which == "encode" else "tiny")
    benches = {"envs": bench_envs, "sft": bench_sft, "encode": bench_encode, "sampler": bench_sampler,
               "tricks": bench_tricks, "same": bench_same, "plan": bench_plan, "gpu": bench_gpu}
    if args.which == "tricks" and args.memory:
        benches["tricks"] = bench_tricks_memory
    sys.exit(benches[args.which](args) or 0)


if __name__ == "__main__":
    import common
    common.run_cli(main, "bench.py")  # a UserError (a bad flag, `gpu` without a GPU) is one line, exit status 2
