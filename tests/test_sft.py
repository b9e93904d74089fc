"""Tests of sft.py on CPU: masks, batching, the maths, and the script end to end with a tiny model
(as subprocesses, like cleanrl's tests): the loss falls, 2-rank DDP and FSDP equal 1 rank, resume is exact."""
import json
import math
import os
import random
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common
import make_data  # noqa: E402
import sft  # noqa: E402

TINY = ["--tiny-hidden", "32", "--tiny-layers", "2", "--tiny-heads", "2", "--tiny-ffn", "64", "--tiny-vocab", "400"]
WORDS = ("apple river stone cloud tiger lemon piano rocket candle forest mirror velvet orange copper silver "
         "meadow").split()


def write_copy_task(path, n=128, seed=0):
    """A toy task: a Sokoban-like grid to ignore, and a word to repeat in the answer tags."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            w, width = rng.choice(WORDS), rng.randint(3, 8)
            grid = "\n".join("".join(rng.choice("#_OXP√") for _ in range(width)) for _ in range(3))
            msgs = [{"role": "user", "content": f"Grid:\n{grid}\nRepeat the word {w}."},
                    {"role": "assistant", "content": f"<think> </think> <answer> {w} </answer>"}]
            f.write(json.dumps({"messages": msgs, "meta": {"word": w}}) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_copy_task(str(tmp_path_factory.mktemp("data") / "copy.jsonl"))


@pytest.fixture(scope="module")
def tiny_dir(data, tmp_path_factory):
    texts = [x for r in common.read_jsonl(data) for m in r["messages"] for x in (m["role"], m["content"])]
    return make_data.build_tiny_model(str(tmp_path_factory.mktemp("m") / "tiny"), texts, hidden=32, layers=2, heads=2, ffn=64,
                                vocab=400)


def run_sft(*args, nproc=1, check=True):
    cmd = [sys.executable, os.path.join(ROOT, "sft.py")] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
         os.path.join(ROOT, "sft.py")]
    proc = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, cwd=ROOT, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def weights(run_dir, name="final"):
    return load_file(os.path.join(run_dir, name, "model.safetensors"))


def log(run_dir):
    return [json.loads(line) for line in open(os.path.join(run_dir, "log.jsonl"))]


# a fixed small run (fp32, 4 micro-batches of 2 per step) that DDP, FSDP and resume are compared with
SMALL = ["--batch-size", 8, "--micro-batch-size", 2, "--max-steps", 6, "--dtype", "fp32", "--lr", "3e-3"]


@pytest.fixture(scope="module")
def reference_run(data, tiny_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ref"))
    run_sft("--model", tiny_dir, "--data", data, "--out", out, *SMALL)
    return out


# -----------------------------------------------------------------------------
# masks: from positions, EOS supervised, prompt and padding not


def test_mask_covers_response_and_eos_only(data, tiny_dir):
    tok = common.load_tokenizer(tiny_dir)
    msgs = common.read_jsonl(data)[0]["messages"]
    ids, mask = sft.encode_chats(tok, [msgs])[0]
    prompt = tok.apply_chat_template(msgs[:1], add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids[:len(prompt)] == prompt and not any(mask[:len(prompt)])
    assert all(mask[len(prompt):]) and ids[-1] == tok.eos_token_id
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == msgs[1]["content"] + "<|im_end|>"


def test_batched_encoding_is_the_chat_template_tokenized(data, tiny_dir):
    """encode_chats (text rendering + one batched tokenizer call) gives, record by record, what
    apply_chat_template(tokenize=True) gives up to the reply's end-of-turn token, and its prompt
    part is exactly encode_prompt's (what generation sees)."""
    tok = common.load_tokenizer(tiny_dir)
    records = common.read_jsonl(data)[:40]
    examples = sft.encode_chats(tok, [r["messages"] for r in records])
    for r, (ids, mask) in zip(records, examples):
        full = tok.apply_chat_template(r["messages"], tokenize=True, return_dict=False)
        assert ids == list(full[:len(ids)]) and ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
        n_prompt = mask.index(1)
        assert ids[:n_prompt] == sft.encode_prompt(tok, r["messages"][:-1])
    assert sft.encode_dataset(tok, records, 10 ** 6, False, "x", chunk=7) == examples


@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_padding_and_prompt_carry_no_loss(data, tiny_dir, pad_is_eos):
    tok = common.load_tokenizer(tiny_dir)
    if pad_is_eos:
        tok.pad_token = tok.eos_token
        assert tok.pad_token_id == tok.eos_token_id
    examples = sft.encode_chats(tok, [r["messages"] for r in common.read_jsonl(data)[:4]])
    batch = sft.collate(examples, [0, 1, 2, 3], tok.pad_token_id)
    ids_BT, n_real = batch.ids_BT, batch.n_real
    assert n_real == sum(len(e[0]) for e in examples) < ids_BT.numel()  # there is padding
    mask_BT = torch.zeros_like(ids_BT, dtype=torch.bool)  # the loss masks, right-padded
    for b, (_, m) in enumerate(examples):
        mask_BT[b, :len(m)] = torch.tensor(m, dtype=torch.bool)
    keep_BT, targets_N = sft.supervised_positions(ids_BT, mask_BT)
    assert torch.equal(batch.kept_BT, keep_BT) and batch.real_K == slice(None)  # multiple 1: nothing added
    assert torch.equal(batch.targets_N, targets_N)
    assert len(targets_N) == sum(sum(m) for _, m in examples)
    assert (targets_N == tok.eos_token_id).sum() == 4  # every row's EOS is a target, pads are not
    # logits at prompt and padding positions cannot change the loss
    V = len(tok)
    logits_BTV = torch.randn(*ids_BT.shape, V)
    loss = sft.token_loss_sum(logits_BTV[keep_BT], targets_N)
    logits_BTV[~keep_BT] = 100 * torch.randn_like(logits_BTV[~keep_BT])
    assert torch.equal(loss, sft.token_loss_sum(logits_BTV[keep_BT], targets_N))
    assert math.isclose(sft.token_loss_sum(torch.zeros(len(targets_N), V), targets_N).item(),
                        len(targets_N) * math.log(V), rel_tol=1e-5)
    # --pad-multiple: a longer batch, a multiple of 32, with the same targets and real-token count
    b32 = sft.collate(examples, [0, 1, 2, 3], tok.pad_token_id, multiple=32)
    assert b32.ids_BT.shape[1] % 32 == 0 and b32.ids_BT.shape[1] >= ids_BT.shape[1] and b32.n_real == n_real
    assert torch.equal(b32.targets_N, targets_N)
    # the output layer's positions come padded too: a multiple of 32, whose real ones predict the targets
    next_BT = torch.nn.functional.pad(b32.ids_BT[:, 1:], (0, 1))
    assert b32.kept_BT.sum() % 32 == 0 and torch.equal(next_BT[b32.kept_BT][b32.real_K], targets_N)
    assert [sft.pad_length(n, 32) for n in (1, 32, 33)] == [32, 32, 64]
    # the output layer's positions: a multiple of 8 that contains keep_BT, and the map back to it
    kept_BT, real_K = sft.pad_kept(keep_BT, 8)
    assert kept_BT.sum() % 8 == 0 and (kept_BT & keep_BT).equal(keep_BT) and real_K.sum() == keep_BT.sum()
    assert torch.equal(logits_BTV[kept_BT][real_K], logits_BTV[keep_BT])
    assert sft.pad_kept(keep_BT, 1) == (keep_BT, slice(None))  # nothing added
    assert sft.pad_kept(torch.ones(2, 3, dtype=torch.bool), 4)[0].sum() == 6  # no free position left


def test_template_without_end_token_gets_eos(tiny_dir):
    tok = common.load_tokenizer(tiny_dir)
    tok.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' if m['role'] != "
                         "'assistant' else m['role'] + ': ' + m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "apple"}]
    ids, mask = sft.encode_chats(tok, [chat])[0]
    assert ids[-1] == tok.eos_token_id and mask[-1] == 1
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "apple<|im_end|>"


def test_max_length_policy_is_loud(data, tiny_dir, capsys):
    tok = common.load_tokenizer(tiny_dir)
    records = common.read_jsonl(data)[:20]
    lengths = [len(ids) for ids, _ in sft.encode_chats(tok, [r["messages"] for r in records])]
    limit = sorted(lengths)[10]
    n_long = sum(n > limit for n in lengths)
    kept = sft.encode_dataset(tok, records, limit, False, "x.jsonl")
    assert len(kept) == 20 - n_long and f"{n_long} of 20" in capsys.readouterr().err
    cut = sft.encode_dataset(tok, records, limit, True, "x.jsonl")
    assert len(cut) == 20 and max(len(i) for i, _ in cut) == limit and "truncated" in capsys.readouterr().err


# -----------------------------------------------------------------------------
# batching and maths


def test_plan_epoch_groups_lengths_and_is_deterministic():
    lengths = [random.Random(i).randint(10, 200) for i in range(1000)]
    plan = sft.plan_epoch(lengths, 64, 8, seed=1, epoch=0)
    assert plan == sft.plan_epoch(lengths, 64, 8, seed=1, epoch=0) != sft.plan_epoch(lengths, 64, 8, seed=1, epoch=1)
    flat = [i for step in plan for mb in step for i in mb]
    assert len(plan) == 1000 // 64 and len(flat) == len(set(flat)) == 64 * len(plan)

    def pad_share(p):
        real = sum(lengths[i] for s in p for mb in s for i in mb)
        return 1 - real / sum(len(mb) * max(lengths[i] for i in mb) for s in p for mb in s)
    assert pad_share(plan) < 0.1 < pad_share(sft.plan_epoch(lengths, 64, 8, 1, 0, group_by_length=False))


def test_token_budget_cuts_every_micro_batch_of_a_step_alike():
    lengths = [random.Random(i).randint(10, 200) for i in range(256)]
    step = sft.plan_epoch(lengths, 64, 16, seed=0, epoch=0)[0]
    size = lambda part: len(part) * sft.pad_length(max(lengths[i] for i in part), 32)  # noqa: E731
    assert sft.split_micro_batches(step, lengths, 0, 32) == step  # off
    assert sft.split_micro_batches(step, lengths, 10 ** 9, 32) == step  # everything fits: unchanged
    budget = max(size(mb) for mb in step) // 3
    parts = sft.split_micro_batches(step, lengths, budget, 32)
    k = len(parts) // len(step)
    assert len(parts) == k * len(step) and k > 1  # one k for the step: every rank runs as many passes
    assert all(size(p) <= budget for p in parts)
    assert [i for p in parts for i in p] == [i for mb in step for i in mb]  # every row once, in order
    assert all(len(p) == 1 for p in sft.split_micro_batches(step, lengths, 1, 32))  # a row is never cut


def test_lr_schedule():
    assert sft.lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert sft.lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert sft.lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert sft.lr_at(99, 100, 10, 1.0) < 0.001


def test_step_normalisation_is_over_the_whole_step():
    # two ranks with unequal token counts: averaging their scaled sums gives the global token mean
    sums, counts = [3.0, 10.0], [1, 4]
    scale = sft.step_loss_scale(sum(counts), world_size=2)
    assert sum(s * scale for s in sums) / 2 == pytest.approx(sum(sums) / sum(counts))


def test_kl_sum():
    logits = torch.randn(5, 7)
    assert sft.kl_sum(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    assert sft.kl_sum(logits, torch.randn(5, 7)).item() > 0


# -----------------------------------------------------------------------------
# the script end to end


def test_loss_decreases_and_final_loads_and_generates(data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out = str(tmp_path / "run")
    run_sft("--model", "tiny", "--data", data, "--out", out, *TINY, "--batch-size", 16, "--micro-batch-size", 8,
            "--max-steps", 40, "--lr", "1e-2", "--save-every", 20)
    losses = [row["loss"] for row in log(out)]
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < 0.6 * losses[0]
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "padding_share"} <= set(log(out)[0])
    assert json.load(open(os.path.join(out, "config.json")))["total_steps"] == 40
    assert os.path.isdir(os.path.join(out, "step_20")) and common.latest_checkpoint(out).endswith("step_20")
    tok = AutoTokenizer.from_pretrained(os.path.join(out, "final"))
    model = AutoModelForCausalLM.from_pretrained(os.path.join(out, "final"))
    prompt = tok.apply_chat_template([{"role": "user", "content": "Grid:\n#_O\nRepeat the word tiger."}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    gen = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert gen.shape[1] > prompt["input_ids"].shape[1]
    assert isinstance(tok.decode(gen[0, prompt["input_ids"].shape[1]:]), str)


def test_ddp_two_ranks_equal_one_rank(data, tiny_dir, reference_run, tmp_path):
    out = str(tmp_path / "ddp")
    run_sft("--model", tiny_dir, "--data", data, "--out", out, *SMALL, nproc=2)
    ref, got = weights(reference_run), weights(out)
    assert set(ref) == set(got)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-4)
    assert json.load(open(os.path.join(out, "config.json")))["accumulation"] == 2


def test_compiled_layers_train_like_eager_ones(data, tiny_dir, reference_run, tmp_path):
    """--compile (each decoder layer through torch.compile) computes the same steps as the eager
    model, up to float rounding, and saves the same plain checkpoint (no compiler prefixes)."""
    out = str(tmp_path / "compiled")
    run_sft("--model", tiny_dir, "--data", data, "--out", out, *SMALL, "--compile")
    ref, got = weights(reference_run), weights(out)
    assert set(ref) == set(got)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-4, rtol=1e-3)
    assert [round(r["loss"], 4) for r in log(out)] == pytest.approx([round(r["loss"], 4) for r in log(reference_run)],
                                                                    abs=1e-3)


def test_fsdp_and_grad_checkpointing_under_gloo(data, tiny_dir, reference_run, tmp_path):
    # with a token budget of 1 every micro-batch of 2 is cut in two: the ranks still run as many passes
    # (FSDP's collectives would hang otherwise) and the update is the reference's
    out = str(tmp_path / "fsdp")
    proc = run_sft("--model", tiny_dir, "--data", data, "--out", out, *SMALL, "--fsdp", "--grad-checkpointing",
                   "--micro-batch-tokens", 1, nproc=2)
    assert "memory plan" in proc.stdout
    accumulation = json.load(open(os.path.join(out, "config.json")))["accumulation"]
    assert accumulation == 2 and {row["micro_batches"] for row in log(out)} == {2 * accumulation}
    ref, got = weights(reference_run), weights(out)
    assert set(ref) == set(got)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-4)


def test_kill_and_resume_equals_uninterrupted(data, tiny_dir, reference_run, tmp_path):
    out = str(tmp_path / "resumed")
    run_sft("--model", tiny_dir, "--data", data, "--out", out, *SMALL, "--save-every", 3, "--stop-after", 4)
    assert not os.path.exists(os.path.join(out, "final")) and common.latest_checkpoint(out).endswith("step_3")
    run_sft("--model", tiny_dir, "--data", data, "--out", out, *SMALL, "--save-every", 3, "--resume")
    ref, got = weights(reference_run), weights(out)
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    assert [r["step"] for r in log(out)] == list(range(1, 7))
    assert [r["loss"] for r in log(out)] == pytest.approx([r["loss"] for r in log(reference_run)], rel=1e-6)


def test_kl_and_l2_penalties(data, tiny_dir, tmp_path):
    out = str(tmp_path / "kl")
    run_sft("--model", tiny_dir, "--data", data, "--out", out, "--batch-size", 8, "--micro-batch-size", 4,
            "--max-steps", 3, "--lr", "1e-2", "--kl-coef", 0.1, "--l2-coef", 0.1)
    rows = log(out)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and rows[0]["l2"] == 0.0
    assert rows[-1]["kl"] > 0 and rows[-1]["l2"] > 0


def test_bad_inputs_give_one_line_errors(data, tiny_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(open(data).readline() + "{not json\n")
    with pytest.raises(common.UserError, match=r"bad.jsonl:2: malformed JSON"):
        common.read_jsonl(str(bad))
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    with pytest.raises(common.UserError, match=r"bad.jsonl:1: "):
        common.read_jsonl(str(bad), check=sft.check_chat_record)
    with pytest.raises(common.UserError, match="nowhere/model"):
        common.load_model(str(tmp_path / "nowhere/model"))
    proc = run_sft("--model", str(tmp_path / "missing"), "--data", data, "--out", str(tmp_path / "o"), check=False)
    last_line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last_line.startswith("sft.py: error: model directory not found")
    assert "Traceback" not in proc.stderr
    proc = run_sft("--model", tiny_dir, "--data", data, "--out", str(tmp_path / "o"), "--batch-size", 8,
                   "--micro-batch-size", 3, check=False)
    assert proc.returncode == 2 and "multiple of" in proc.stderr


# -----------------------------------------------------------------------------
# bad input: one line on stderr, exit status 2, before any work, OUT untouched


def snapshot(path):
    """Every file and folder under `path` with its bytes and mtime: what "OUT unchanged" compares."""
    seen = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(root, name)
            seen[os.path.relpath(p, path)] = (open(p, "rb").read() if os.path.isfile(p) else None,
                                              os.stat(p).st_mtime_ns)
    return seen


def fake_run(out, data, model="tiny", steps=(3,)):
    """An OUT as an earlier run leaves it, as far as the start-up checks read it."""
    os.makedirs(out)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(dict(data=data, model=model, task=None), f)
    with open(os.path.join(out, "log.jsonl"), "w") as f:
        f.write(json.dumps({"step": 1}) + "\n")
    for s in steps:
        os.makedirs(os.path.join(out, f"step_{s}"))
        open(os.path.join(out, f"step_{s}", "trainer_state.pt"), "wb").close()
    return out


def assert_refused(proc, script, message, before=None, out=None):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: ") and message in lines[0], proc.stderr
    if out is not None:
        assert snapshot(out) == before


SFT_REFUSALS = {  # id: (extra argv, what OUT holds before: None / "other" / "same" / "config", message)
    "binary data": (["--data", "{bin}"], None, "bin.jsonl:1: not UTF-8"),
    "batch 0": (["--batch-size", 0], None, "--batch-size and --micro-batch-size must be >= 1"),
    "micro-batch 0": (["--micro-batch-size", 0], None, "--batch-size and --micro-batch-size must be >= 1"),
    "token budget -1": (["--micro-batch-tokens", -1], None, "--micro-batch-tokens must be >= 0"),
    "lr -1": (["--lr", -1], None, "--lr must be > 0"),
    "lr 0": (["--lr", 0], None, "--lr must be > 0"),
    "epochs 0": (["--epochs", 0], None, "--epochs must be > 0"),
    "max-steps -5": (["--max-steps", -5], None, "--max-steps must be >= 1"),
    "out under a file": (["--out", "{file}/run"], None, "is a file, not a directory"),
    "out unwritable": (["--out", "/proc/sft-test/run"], None, "cannot write in /proc"),
    "empty data": (["--data", "{empty}"], None, "no records in"),
    "fewer records than a batch": (["--data", "{small}"], None, "79 records, fewer than one --batch-size 128"),
    "resume without checkpoint": (["--resume"], "config", "--resume: no checkpoint in"),
    "out of another run": ([], "other", "holds another run (data"),
    "out of another run, resume": (["--resume"], "other", "holds another run (data"),
    "fresh start over checkpoints": ([], "same", "already holds a run's checkpoints (step_3/)"),
    "resume and overwrite": (["--resume", "--overwrite"], None, "pass one of them"),
    "tiny flags, other model": (["--model", "{data}", "--tiny-hidden", 64], None, "flags of --model tiny"),
    "missing model": (["--model", "{file}-missing"], None, "model directory not found"),
}


@pytest.mark.parametrize("case", list(SFT_REFUSALS))
def test_cli_refuses_bad_input_before_any_work(case, data, tmp_path):
    extra, prior, message = SFT_REFUSALS[case]
    files = dict(data=data, bin=str(tmp_path / "bin.jsonl"), empty=str(tmp_path / "empty.jsonl"),
                 small=write_copy_task(str(tmp_path / "small.jsonl"), n=79), file=str(tmp_path / "file"))
    (tmp_path / "bin.jsonl").write_bytes(b'{"messages": "\xd0\xcf\x11\xe0 binary"}\n')
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "file").write_text("a regular file")
    out = str(tmp_path / "out")
    if prior:
        fake_run(out, data if prior != "other" else str(tmp_path / "gpoints.jsonl"),
                 steps=() if prior == "config" else (3,))
    argv = ["--data", data, "--out", out, *([] if "--model" in extra else TINY)]
    argv += [str(a).format(**files) for a in extra]
    before = snapshot(tmp_path)
    assert_refused(run_sft(*argv, check=False), "sft.py", message, before, str(tmp_path))


def test_overwrite_replaces_another_run(data, tiny_dir, tmp_path):
    out = fake_run(str(tmp_path / "out"), str(tmp_path / "other.jsonl"), steps=(3, 50))
    proc = run_sft("--model", tiny_dir, "--data", data, "--out", out, *SMALL, "--max-steps", 2, "--overwrite")
    assert sorted(os.listdir(out)) == ["config.json", "final", "log.jsonl"] and len(log(out)) == 2
    assert "per process" in proc.stdout  # the memory plan on CPU is not "per GPU"


def test_sigterm_saves_a_checkpoint_and_resume_is_exact(data, tiny_dir, reference_run, tmp_path):
    """What a cluster does before pre-emption: SIGTERM mid-run. The run ends its step, saves
    step_N/, exits 143 (128 + SIGTERM); --resume then ends with the uninterrupted run's weights."""
    import signal
    import time
    out = str(tmp_path / "cut")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "sft.py"), "--model", tiny_dir, "--data", data,
                             "--out", out, *map(str, SMALL)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    log_path = os.path.join(out, "log.jsonl")
    while proc.poll() is None and not (os.path.isfile(log_path) and os.path.getsize(log_path)):
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    ckpt = common.latest_checkpoint(out)
    assert ckpt and not os.path.exists(os.path.join(out, "final")) and "continue with --resume" in stderr
    assert int(ckpt.rsplit("_", 1)[1]) == len(log(out)) < 6
    run_sft("--model", tiny_dir, "--data", data, "--out", out, *SMALL, "--resume")
    a, b = weights(reference_run), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in log(out)] == list(range(1, 7))
