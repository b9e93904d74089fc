r"""Supervised fine-tuning (SFT) of a causal LM on chat-format JSONL, in one readable loop.

The loss is the cross-entropy of each chat's last assistant turn and its end-of-turn token, summed
over tokens and divided by the supervised tokens of the whole optimizer step (all micro-batches, all
ranks). `--model tiny` builds a small Qwen2 and a byte-level BPE tokenizer from the data (OUT/tiny_init/).

    # CPU demo (the tiny model, 2 cores)
    python sft.py --model tiny --data data/sokoban/train_ans.jsonl --out runs/sok-ans
    # one GPU
    python sft.py --model /path/to/Qwen2.5-1.5B --data data/sokoban/train_ans.jsonl --out runs/q15-ans
    # one node, 8 GPUs, paper scale (7-8B does not fit DDP: shard it)
    torchrun --standalone --nproc_per_node=8 sft.py --model /path/to/Qwen2.5-7B --fsdp \
        --grad-checkpointing --data data/sokoban/train_cot.jsonl --out runs/q7-cot --epochs 5
    # 2 CPU processes (gloo), e.g. to check DDP
    torchrun --standalone --nproc_per_node=2 sft.py --model tiny --data ... --out ...

Writes OUT/config.json, OUT/log.jsonl (a line per step), OUT/step_N/ and OUT/final/ (Hugging Face
directories plus trainer_state.pt, from which --resume continues exactly). Bad input is one line
`sft.py: error: ...` (exit status 2) before any work; SIGTERM or Ctrl-C saves OUT/step_N/ at the end
of the step and exits with 128 + the signal.
"""
import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import common
from common import (UserError, ArgumentParser, file_fingerprint, latest_checkpoint, run_cli, read_jsonl, refuse,
                    setup_distributed, all_reduce_sum, grad_sync, fsdp_shard, autocast_ctx, fused_adamw, resolve_model,
                    load_tokenizer, load_model, save_checkpoint, load_trainer_state, check_out_dir, check_run_dir,
                    prepare_run_dir, start_run_files, log_step, StopSignal, finish_run)
from make_data import build_tiny_model

# -----------------------------------------------------------------------------
# arguments


def get_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data and model")
    g.add_argument("--model", default="tiny", help="Hugging Face directory or hub id, 'smollm2', or 'tiny' (built)")
    g.add_argument("--data", required=True, help="training JSONL, one chat per line ({'messages': [...]})")
    g.add_argument("--out", required=True, help="output directory: config.json, log.jsonl, step_N/, final/")
    g.add_argument("--max-length", type=int, default=1024, help="longest sequence in tokens; longer ones are dropped")
    g.add_argument("--truncate", action="store_true", help="cut sequences longer than --max-length instead")
    g.add_argument("--pad-multiple", type=int, default=32, help="pad lengths and output rows to a multiple of this")
    g = p.add_argument_group("tiny model (--model tiny)")
    g.add_argument("--tiny-hidden", type=int, default=128, help="hidden size")
    g.add_argument("--tiny-layers", type=int, default=4, help="number of transformer layers")
    g.add_argument("--tiny-heads", type=int, default=4, help="attention heads (as many key/value heads)")
    g.add_argument("--tiny-ffn", type=int, default=512, help="MLP intermediate size")
    g.add_argument("--tiny-vocab", type=int, default=2048, help="BPE vocabulary size (an upper bound)")
    g.add_argument("--tiny-tokenizer-data", nargs="*", default=[], help="more JSONL files to train the tokenizer on")
    g = p.add_argument_group("optimisation (defaults: the paper's AdamW recipe)")
    g.add_argument("--epochs", type=float, default=5, help="passes over the data")
    g.add_argument("--max-steps", type=int, default=None, help="optimizer steps; overrides --epochs")
    g.add_argument("--batch-size", type=int, default=128, help="sequences per optimizer step, over all ranks")
    g.add_argument("--micro-batch-size", type=int, default=16, help="sequences per forward/backward on one rank")
    g.add_argument("--micro-batch-tokens", type=int, default=0,
                   help="cut a step's micro-batches into parts of at most this many padded tokens (0: off): the "
                        "same update with less activation memory on long batches; a resumed run may change it")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-5; 1e-3 for a tiny model)")
    g.add_argument("--warmup-ratio", type=float, default=0.1, help="share of steps warming up before the cosine decay")
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (not on norms or biases)")
    g.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1")
    g.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2")
    g.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm to this (0: off)")
    g.add_argument("--kl-coef", type=float, default=0.0, help="weight of KL(policy || initial model) (paper App. C)")
    g.add_argument("--l2-coef", type=float, default=0.0, help="weight of ||w - w_initial||^2 (paper App. C)")
    g.add_argument("--no-group-by-length", action="store_true", help="plain shuffled batches, not length-grouped")
    g = p.add_argument_group("system")
    g.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="autocast dtype (weights: fp32)")
    g.add_argument("--fsdp", action="store_true", help="shard weights, grads and optimizer over ranks (FSDP2)")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward")
    g.add_argument("--compile", action="store_true", help="compile each decoder layer with torch.compile")
    g.add_argument("--seed", type=common.seed, default=0, help="seed of the tiny model, the batch order and every RNG")
    common.add_run_flags(g, default_log_every=10)
    return p


def check_args(args, world, parser):
    """Reject values that make no sense, before anything is read or built."""
    tiny_flags = [f"--{k.replace('_', '-')}" for k in vars(args)
                  if k.startswith("tiny_") and getattr(args, k) != parser.get_default(k)]
    refuse([
        (min(args.batch_size, args.micro_batch_size) < 1, "--batch-size and --micro-batch-size must be >= 1"),
        (args.micro_batch_size >= 1 and args.batch_size % (args.micro_batch_size * world),
         f"--batch-size {args.batch_size} must be a multiple of --micro-batch-size x ranks = "
         f"{args.micro_batch_size * world}"),
        (args.lr is not None and not args.lr > 0, f"--lr must be > 0 (got {args.lr})"),
        (not args.epochs > 0, f"--epochs must be > 0 (got {args.epochs})"),
        (args.max_steps is not None and args.max_steps < 1,
         f"--max-steps must be >= 1 (got {args.max_steps}; leave it out to train --epochs)"),
        (args.max_length < 2, f"--max-length must be >= 2 (got {args.max_length})"),
        (args.pad_multiple < 1, f"--pad-multiple must be >= 1 (got {args.pad_multiple})"),
        (not 0 <= args.warmup_ratio < 1, f"--warmup-ratio must be in [0, 1) (got {args.warmup_ratio})"),
        (not (0 <= args.beta1 < 1 and 0 <= args.beta2 < 1), "--beta1 and --beta2 must be in [0, 1)"),
        (min(args.weight_decay, args.grad_clip, args.kl_coef, args.l2_coef) < 0,
         "--weight-decay, --grad-clip, --kl-coef and --l2-coef must be >= 0"),
        (min(args.save_every, args.stop_after, args.micro_batch_tokens) < 0,
         "--save-every, --stop-after and --micro-batch-tokens must be >= 0"),
        (args.log_every < 1, "--log-every must be >= 1"),
        (args.model != "tiny" and tiny_flags,
         f"flags of --model tiny given with --model {args.model}: {', '.join(tiny_flags)}"),
        (min(args.tiny_hidden, args.tiny_layers, args.tiny_heads, args.tiny_ffn, args.tiny_vocab) < 1,
         "--tiny-* sizes must be >= 1"),
        (args.tiny_heads >= 1 and args.tiny_hidden % args.tiny_heads,
         f"--tiny-hidden {args.tiny_hidden} must be divisible by --tiny-heads {args.tiny_heads}"),
        (args.fsdp and world == 1, "--fsdp shards over ranks: run it under torchrun with more than one process"),
        (args.resume and args.overwrite, "--resume continues OUT's run and --overwrite deletes it: pass one of them"),
    ])


# -----------------------------------------------------------------------------
# data: chat encoding with position-based loss masks, length-grouped batches, the collate


ROLES = ("system", "user", "assistant")


def check_turns(record, last_role, at_least):
    """The error string for a record that is not {"messages": [{"role": ..., "content": "..."}, ...], "meta":
    {...}} (meta optional) ending with `last_role`, or None."""
    msgs = record.get("messages") if isinstance(record, dict) else None
    if not (isinstance(msgs, list) and len(msgs) >= at_least and all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in msgs)):
        return (f"expected {{'messages': [{{'role': 'system' | 'user' | 'assistant', 'content': '...'}}, ...], "
                f"'meta': {{...}}}} with at least {at_least} turn{'s' * (at_least > 1)}")
    if msgs[-1]["role"] != last_role:
        return f"the last message must be the {last_role}'s (got role {msgs[-1]['role']!r})"
    if not isinstance(record.get("meta", {}), dict):
        return f"'meta' must be an object (got {type(record['meta']).__name__})"
    return None


def check_chat_record(record):
    return check_turns(record, "assistant", 2)


END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<end_of_turn>", "</s>")


def end_of_turn_ids(tokenizer):
    """Token ids that can close an assistant turn: the EOS plus the usual chat end-of-turn markers."""
    vocab = tokenizer.get_vocab()
    ids = {vocab[t] for t in END_OF_TURN_TOKENS if t in vocab}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def render_prompts(tokenizer, conversations):
    """Each conversation so far rendered by the chat template, with the generation prompt (text)."""
    return [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in conversations]


def encode_prompts(tokenizer, conversations):
    """Token ids of each conversation so far plus the generation prompt: what the model replies to (the
    project's one prompt encoding)."""
    texts = render_prompts(tokenizer, conversations)
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def encode_prompt(tokenizer, messages):
    return encode_prompts(tokenizer, [messages])[0]


def encode_chats(tokenizer, conversations):
    """(input_ids, loss_mask) for each conversation whose last turn is the assistant's. The prompt is
    encoded exactly as at generation time (encode_prompts); the reply is the rest of the rendered chat, up to
    and including its first end-of-turn token (EOS appended if the template writes none). The mask comes from
    these positions, never from token ids, so pad == EOS is harmless."""
    prompt_texts = render_prompts(tokenizer, [m[:-1] for m in conversations])
    full_texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in conversations]
    if not all(full.startswith(prompt) for full, prompt in zip(full_texts, prompt_texts)):
        raise UserError("the chat template's generation prompt is not a prefix of the rendered conversation; cannot "
                        "mask the prompt")
    # one batched call of the Rust tokenizer; add_special_tokens=False as the template writes any BOS itself
    ids = tokenizer(prompt_texts + [full[len(prompt):] for full, prompt in zip(full_texts, prompt_texts)],
                    add_special_tokens=False)["input_ids"]
    stops = end_of_turn_ids(tokenizer)
    examples = []
    for prompt, reply in zip(ids[:len(conversations)], ids[len(conversations):]):
        end = next((i for i, t in enumerate(reply) if t in stops), None)
        if end is None:
            reply, end = reply + [tokenizer.eos_token_id], len(reply)
        examples.append((prompt + reply[: end + 1], [0] * len(prompt) + [1] * (end + 1)))
    return examples


def encode_dataset(tokenizer, records, max_length, truncate, path, verbose=True, chunk=1024):
    """encode_chats for every record, a longer example dropped or cut (`truncate`), and how many said."""
    examples, n_long = [], 0
    for start in tqdm(range(0, len(records), chunk), desc="encode", disable=not verbose or len(records) <= chunk,
                      unit="chunk"):
        for ids, mask in encode_chats(tokenizer, [r["messages"] for r in records[start:start + chunk]]):
            if len(ids) > max_length:
                n_long += 1
                if not truncate or sum(mask[:max_length]) == 0:  # nothing supervised would be left
                    continue
                ids, mask = ids[:max_length], mask[:max_length]
            examples.append((ids, mask))
    if n_long and verbose:
        what = "truncated to" if truncate else "dropped (pass --truncate to cut them instead), limit"
        print(f"{path}: {n_long} of {len(records)} sequences longer than --max-length {what} {max_length} tokens",
              file=sys.stderr)
    if not examples:
        raise UserError(f"{path}: no example fits --max-length {max_length}")
    return examples


def plan_epoch(lengths, batch_size, micro_batch_size, seed, epoch, group_by_length=True):
    """The epoch's optimizer steps, each a list of micro-batches (lists of example indices): shuffled;
    with grouping, windows of 16 global batches sorted by length, so that a micro-batch holds similar
    lengths; cut into global batches (a last partial one dropped), in shuffled order. A pure function of
    (seed, epoch): resuming at step s recomputes the same plan."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if group_by_length:
        window = 16 * batch_size
        lengths = np.asarray(lengths)
        windows = np.split(order, range(window, len(order), window))
        order = np.concatenate([w[np.argsort(-lengths[w], kind="stable")] for w in windows])
    n_steps = len(order) // batch_size
    steps = [order[i * batch_size:(i + 1) * batch_size] for i in range(n_steps)]
    steps = [steps[i] for i in rng.permutation(n_steps)]
    return [[s[j:j + micro_batch_size].tolist() for j in range(0, batch_size, micro_batch_size)] for s in steps]


def split_micro_batches(step_plan, lengths, max_tokens, multiple):
    """The step's micro-batches, each cut into k contiguous parts, k the fewest that bring every part of the
    step within max_tokens padded tokens (a part keeps one row at least). One k for the whole step, so
    every rank runs the same number of forward passes, as FSDP's collectives need; the update is the
    same, as the loss is divided by the whole step's tokens (step_loss_scale)."""
    if not max_tokens:
        return step_plan

    def fits(k):
        return all(len(part) * pad_length(max(lengths[i] for i in part), multiple) <= max_tokens
                   for rows in step_plan for part in np.array_split(rows, k))
    k_max = min(len(rows) for rows in step_plan)
    k = next((k for k in range(1, k_max) if fits(k)), k_max)
    return [part.tolist() for rows in step_plan for part in np.array_split(rows, k)]


class Batch(NamedTuple):
    """A micro-batch as the loss takes it."""
    ids_BT: torch.Tensor  # token ids, right-padded
    kept_BT: torch.Tensor  # the positions the output layer runs on: the supervised ones, and a few more (pad_kept)
    real_K: object  # which of the kept positions are supervised: x_K[real_K] (a bool index, or slice(None))
    targets_N: torch.Tensor  # the next token at each supervised position
    n_real: int  # tokens that are not padding

    def to(self, device):
        return Batch(*(x.to(device) if torch.is_tensor(x) else x for x in self))


def collate(examples, indices, pad_id, multiple=1):
    """The Batch of examples[indices], right-padded to a multiple of `multiple` (--pad-multiple)."""
    T = pad_length(max(len(examples[i][0]) for i in indices), multiple)
    ids_BT = torch.full((len(indices), T), pad_id, dtype=torch.long)
    mask_BT = torch.zeros((len(indices), T), dtype=torch.bool)
    for b, i in enumerate(indices):
        ids, m = examples[i]
        ids_BT[b, :len(ids)] = torch.tensor(ids)
        mask_BT[b, :len(m)] = torch.tensor(m, dtype=torch.bool)
    keep_BT, targets_N = supervised_positions(ids_BT, mask_BT)
    kept_BT, real_K = pad_kept(keep_BT, multiple)
    return Batch(ids_BT, kept_BT, real_K, targets_N, sum(len(examples[i][0]) for i in indices))


def pad_length(n, multiple):
    """n rounded up to a multiple of `multiple`. On CPUs oneDNN caches a kernel and its buffers per matmul
    shape, so memory grows with every new length; a handful of lengths keep it flat (docs/LOG.md)."""
    return -(-n // multiple) * multiple


def pad_kept(keep_BT, multiple):
    """(kept_BT, real_K): keep_BT with the first few free positions added to make a multiple of `multiple`
    (when there are enough), and the index of keep_BT's among them (`x_K[real_K]`), so that the output
    layer meets a few row counts, for pad_length's reason."""
    n = int(keep_BT.sum())
    extra = min(pad_length(n, multiple) - n, keep_BT.numel() - n)
    if extra == 0:
        return keep_BT, slice(None)
    kept = keep_BT.flatten().clone()
    kept[(~kept).nonzero().squeeze(1)[:extra]] = True
    return kept.view_as(keep_BT), keep_BT.flatten()[kept]

# -----------------------------------------------------------------------------
# the maths, as pure functions


def supervised_positions(input_ids_BT, loss_mask_BT):
    """(keep_BT, targets_N): the positions whose *next* token is supervised, and those tokens."""
    target_mask_BT = loss_mask_BT[:, 1:]
    keep_BT = F.pad(target_mask_BT, (0, 1), value=False)
    return keep_BT, input_ids_BT[:, 1:][target_mask_BT]


def token_loss_sum(logits_NV, targets_N):
    """Sum (not mean) of the token cross-entropies, in fp32: the step divides by its token count."""
    return F.cross_entropy(logits_NV.float(), targets_N, reduction="sum")


def kl_sum(logits_NV, ref_logits_NV):
    """Sum over tokens of the exact KL(policy || reference) over the vocabulary."""
    logp_NV, ref_logp_NV = F.log_softmax(logits_NV.float(), -1), F.log_softmax(ref_logits_NV.float(), -1)
    return (logp_NV.exp() * (logp_NV - ref_logp_NV)).sum()


def step_loss_scale(n_step_tokens, world_size):
    """Multiply a micro-batch's loss sum by this: DDP/FSDP average gradients over ranks, so scaling by
    world / (supervised tokens of the whole step, all ranks) gives sum(all token grads) / tokens."""
    return world_size / max(n_step_tokens, 1)


def lr_at(step, total_steps, warmup_steps, peak_lr):
    """Linear warm-up to peak_lr, then cosine decay to 0; `step` counts from 0."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


# -----------------------------------------------------------------------------
# setup: refuse bad input, then build the data, the model and the optimizer


@dataclass
class Run:
    """What setup() resolves and the loop reads."""
    args: argparse.Namespace  # the flags, with --lr resolved
    rank: int
    world: int
    device: torch.device
    tokenizer: object
    examples: list  # (input_ids, loss_mask) pairs
    model: torch.nn.Module  # DDP-wrapped or FSDP-sharded over the ranks
    ref_model: torch.nn.Module | None  # the frozen initial model (--kl-coef)
    init_params: list | None  # the initial weights (--l2-coef)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # a disabled one unless fp16
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    start_step: int  # 0, or the step of the checkpoint resumed from


def setup(args, parser):
    """Refuse bad input before any work; encode the data (a tiny model is built from it first), build the
    model and the optimizer (restored with --resume); write OUT/config.json."""
    rank, world, local_rank, device = setup_distributed()  # torchrun's variables, or one plain process
    master = rank == 0
    random.seed(args.seed), np.random.seed(args.seed), torch.manual_seed(args.seed)

    # everything that can be refused is refused here, before a model is built or OUT is touched
    check_args(args, world, parser)
    model_path = os.path.join(args.out, "tiny_init") if args.model == "tiny" else resolve_model(args.model)
    inputs = [args.data, *args.tiny_tokenizer_data] + ([] if args.model == "tiny" else [model_path])
    check_out_dir(args.out, inputs=inputs)  # --overwrite never deletes what the run reads
    records, extra_records, task = read_training_data(args)
    resume_from = check_run_dir(args.out, run_identity(args, task, len(records)), args.resume, args.overwrite)
    tokenizer = None if args.model == "tiny" else load_tokenizer(model_path)  # a missing model is refused here
    prepare_run_dir(args.out, args.overwrite, master, world)

    # data, encoded once; a tiny model is built from it first
    if args.model == "tiny":
        tokenizer = tiny_model_tokenizer(model_path, records + extra_records, args, master, world)
    examples = encode_dataset(tokenizer, records, args.max_length, args.truncate, args.data, verbose=master)
    if len(examples) < args.batch_size:
        raise UserError(f"{args.data}: {len(examples)} usable examples, fewer than one --batch-size {args.batch_size}")
    steps_per_epoch = len(examples) // args.batch_size
    total_steps = args.max_steps or max(1, math.ceil(args.epochs * steps_per_epoch))
    warmup_steps = math.ceil(args.warmup_ratio * total_steps)

    # the model in fp32 (autocast does the rest), its optimizer, and (resuming) their state
    model = load_model(model_path, "fp32", device)
    n_params = sum(p.numel() for p in model.parameters())
    tiny = getattr(model.config, "tiny_model", False)  # a 1M-parameter model learns nothing at 1e-5
    args = argparse.Namespace(**dict(vars(args), lr=args.lr or (1e-3 if tiny else 1e-5)))
    model, ref_model, init_params = prepare_model(model, model_path, args, world, local_rank, device, resume_from)
    optimizer = make_optimizer(model, args)
    scaler = torch.amp.GradScaler(device.type, enabled=args.dtype == "fp16")
    start_step = resume_training(resume_from, model, optimizer, scaler) if resume_from else 0

    config = dict(vars(args), task=task, data_sha256=file_fingerprint(args.data), n_records=len(records),
                  model_path=model_path, resume_from=resume_from,
                  world_size=world, accumulation=args.batch_size // (args.micro_batch_size * world),  # per rank
                  total_steps=total_steps, warmup_steps=warmup_steps, steps_per_epoch=steps_per_epoch,
                  n_examples=len(examples), n_params=n_params, threads=torch.get_num_threads())
    if master:
        print(json.dumps(config, indent=1))
        print(memory_plan(n_params, world, args.fsdp, args.kl_coef > 0, device.type))
        start_run_files(args.out, config, start_step)
    return Run(args, rank, world, device, tokenizer, examples, model, ref_model, init_params, optimizer, scaler,
               steps_per_epoch, total_steps, warmup_steps, start_step)


def read_training_data(args):
    """(SFT records, --tiny-tokenizer-data records, the first record's meta.task); too few for a batch is refused."""
    records = read_jsonl(args.data, check=check_chat_record)
    if not records:
        raise UserError(f"no records in {args.data}")
    if len(records) < args.batch_size:
        raise UserError(f"{args.data}: {len(records)} records, fewer than one --batch-size {args.batch_size}: "
                        "pass a smaller --batch-size")
    extra_records = []
    if args.model == "tiny":
        extra_records = [r for path in args.tiny_tokenizer_data for r in read_jsonl(path, check=check_chat_record)]
    meta = records[0].get("meta")
    return records, extra_records, meta.get("task") if isinstance(meta, dict) else None


def run_identity(args, task, n_records):
    """What makes OUT's run the run it is: another run's OUT is refused without --overwrite."""
    identity = dict(data=args.data, data_sha256=file_fingerprint(args.data), model=args.model, task=task)
    if args.model == "tiny":  # they shape OUT/tiny_init, which a later run reuses
        identity.update({k: v for k, v in vars(args).items() if k.startswith("tiny_")})
    if args.resume:  # the batch plan a resumed run recomputes
        identity.update(seed=args.seed, batch_size=args.batch_size, max_length=args.max_length, truncate=args.truncate,
                        no_group_by_length=args.no_group_by_length, n_records=n_records)
    return identity


def tiny_model_tokenizer(model_path, records, args, master, world):
    """--model tiny: rank 0 builds OUT/tiny_init/ once from the records' texts, the other ranks wait."""
    if master and not os.path.isfile(os.path.join(model_path, "config.json")):
        texts = [x for r in records for m in r["messages"] for x in (m["role"], m["content"])]
        build_tiny_model(model_path, texts, args.tiny_hidden, args.tiny_layers, args.tiny_heads, args.tiny_ffn,
                         args.tiny_vocab, max(4096, args.max_length), args.seed)
    if world > 1:
        dist.barrier()
    return load_tokenizer(model_path)


def prepare_model(model, model_path, args, world, local_rank, device, resume_from):
    """(model, ref_model, init_params): the model checkpointed, compiled, sharded or DDP-wrapped, with a
    resumed checkpoint's weights; its initial weights anchor --kl-coef (a frozen copy) and --l2-coef."""
    model.config.use_cache = False
    ref_model = None
    if args.kl_coef > 0:  # loaded the same way as the policy, so that KL starts at 0
        ref_model = load_model(model_path, "fp32", device).eval().requires_grad_(False)
    if args.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if args.compile:  # per layer, as torchtitan does: a short compile, and FSDP/DDP wrap the compiled layers as usual
        for layer in model.model.layers:
            layer.compile(dynamic=True)
    if args.fsdp:  # FSDP2: every decoder layer, then the whole model; weights, grads and AdamW state 1/world a rank
        fsdp_shard(model)
    elif world > 1:  # DDP: a full replica per rank, gradients all-reduced in backward
        model = torch.nn.parallel.DistributedDataParallel(model,
                                                          device_ids=[local_rank] if device.type == "cuda" else None)
    init_params = [p.detach().clone() for p in model.parameters()] if args.l2_coef > 0 else None
    if resume_from:  # set_model_state_dict fills a sharded or DDP-wrapped model alike
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        weights = load_model(resume_from, "fp32", "cpu").state_dict()
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
    return model, ref_model, init_params


def make_optimizer(model, args):
    """AdamW with weight decay on matrices and embeddings only (not norms or biases)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(args.beta1, args.beta2), **fused_adamw(args.fsdp))


def resume_training(resume_from, model, optimizer, scaler):
    """The optimizer, scaler and RNG states of a checkpoint; returns its step."""
    state = load_trainer_state(resume_from, model, optimizer)
    scaler.load_state_dict(state["scaler"])
    random.setstate(state["rng"]["python"]), np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["step"]


def memory_plan(n_params, world, fsdp, kl, device_type="cuda", extra=()):
    """Bytes per GPU (per process on CPU) for fp32 weights and grads and AdamW's two fp32 moments, the
    KL reference and `extra` (name, bytes) terms (rl.py's rollouts), before activations."""
    gib = lambda n_bytes: f"{n_bytes / 2**30:.2f} GiB"
    n = n_params / (world if fsdp else 1)
    terms = [("weights", 4 * n), ("grads", 4 * n), ("AdamW", 8 * n)] + [("KL reference", 4 * n_params)] * kl
    terms += list(extra)
    return (f"memory plan ({n_params / 1e6:.1f}M params, {'FSDP' if fsdp else 'DDP'} x{world}): "
            + " + ".join(f"{name} {gib(b)}" for name, b in terms) + f" = {gib(sum(b for _, b in terms))} "
            f"{'per GPU' if device_type == 'cuda' else 'per process'}, plus activations "
            f"[weights, grads and AdamW under DDP {gib(16 * n_params)}, under FSDP {gib(16 * n_params / world)}]")


# -----------------------------------------------------------------------------
# the SFT step: micro-batches, the token loss, gradient accumulation, one all-reduce, one update


def full_value(x):
    """A scalar tensor as a float; an FSDP (DTensor) scalar is gathered from its shards first."""
    return float(x.full_tensor() if hasattr(x, "full_tensor") else x)


def train_step(run, micro_batches):
    """One optimizer step on this rank's micro-batches. Returns (this rank's [ce_sum, kl_sum, real_tokens,
    padded_tokens], l2, grad_norm, n_sup)."""
    model, ref_model, args, device = run.model, run.ref_model, run.args, run.device
    # the loss is a sum over tokens divided by the supervised tokens of the whole step on every rank,
    # so that count is all-reduced first: 2 ranks x m give the update of 1 rank x 2 micro-batches of m
    n_sup, = all_reduce_sum([sum(len(b.targets_N) for b in micro_batches)], run.world, device)
    scale = step_loss_scale(n_sup, run.world)  # world / n_sup: DDP and FSDP average gradients over ranks
    ce_total = kl_total = 0.0
    n_real = n_padded = 0
    for micro, b in enumerate(micro_batches):
        b = b.to(device)
        # gradient accumulation: DDP all-reduces once, in the last micro-batch's backward; FSDP
        # reduce-scatters in each, so its gradients stay sharded (common.grad_sync)
        with grad_sync(model, micro == len(micro_batches) - 1):
            # right padding + causal attention: real tokens never see pads, so no attention mask is
            # needed (and SDPA keeps its fast causal path); the output layer runs on kept_BT only
            with autocast_ctx(device, args.dtype):
                logits_NV = model(input_ids=b.ids_BT, logits_to_keep=b.kept_BT).logits[b.real_K]
            ce = token_loss_sum(logits_NV, b.targets_N)
            loss = ce
            if ref_model is not None:
                with torch.no_grad(), autocast_ctx(device, args.dtype):
                    ref_logits_NV = ref_model(input_ids=b.ids_BT, logits_to_keep=b.kept_BT).logits[b.real_K]
                kl = kl_sum(logits_NV, ref_logits_NV)
                loss = loss + args.kl_coef * kl
                kl_total += kl.item()
            run.scaler.scale(loss * scale).backward()
        ce_total += ce.item()
        n_real, n_padded = n_real + b.n_real, n_padded + b.ids_BT.numel()

    run.scaler.unscale_(run.optimizer)
    l2 = 0.0
    if run.init_params is not None:  # add the gradient of l2_coef * ||w - w0||^2: the same on every rank
        with torch.no_grad():
            for p, p0 in zip(model.parameters(), run.init_params):
                d = p.detach() - p0
                p.grad.add_(d, alpha=2 * args.l2_coef)
                l2 += full_value(d.pow(2).sum())  # under FSDP a shard's sum: full_value adds the shards
    grad_norm = full_value(torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                          args.grad_clip if args.grad_clip > 0 else float("inf")))
    if math.isfinite(grad_norm) or args.dtype == "fp16":  # fp16: the scaler skips an overflowed step itself
        run.scaler.step(run.optimizer)  # a no-op scaler for bf16 / fp32
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return [ce_total, kl_total, n_real, n_padded], l2, grad_norm, n_sup


# -----------------------------------------------------------------------------
# the training loop


def main(argv=None):
    parser = get_parser()
    run = setup(parser.parse_args(argv), parser)
    args, master, total = run.args, run.rank == 0, run.total_steps
    lengths, plans = [len(ids) for ids, _ in run.examples], {}
    run.model.train()

    def save(name, step):  # collective: every rank calls it (FSDP gathers the shards)
        save_checkpoint(args.out, name, run.model, run.tokenizer, run.optimizer, run.scaler, step, args, run.rank)

    stopper, stop = StopSignal("sft.py"), False
    pbar = tqdm(range(run.start_step, total), initial=run.start_step, total=total, disable=not master, desc="sft")
    for step in pbar:
        t0 = time.time()
        # the batch plan is a pure function of (seed, epoch): resuming at a step needs no data position
        epoch, idx = divmod(step, run.steps_per_epoch)
        if epoch not in plans:
            plans = {epoch: plan_epoch(lengths, args.batch_size, args.micro_batch_size, args.seed, epoch,
                                       not args.no_group_by_length)}
        # the step's global plan holds accum x world micro-batches (x k parts under a token budget);
        # rank r takes r, r + world, ...
        step_plan = split_micro_batches(plans[epoch][idx], lengths, args.micro_batch_tokens, args.pad_multiple)
        micro_batches = [collate(run.examples, rows, run.tokenizer.pad_token_id, args.pad_multiple)
                         for rows in step_plan[run.rank::run.world]]
        lr = lr_at(step, total, run.warmup_steps, args.lr)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        sums, l2, grad_norm, n_sup = train_step(run, micro_batches)

        # the log sums every rank's tokens; a signal on any rank stops them all after this step
        ce_total, kl_total, n_real, n_padded, signalled = all_reduce_sum(sums + [stopper.signum], run.world, run.device)
        dt = time.time() - t0
        ce_mean, kl_mean = ce_total / n_sup, kl_total / n_sup
        row = {"step": step + 1, "epoch": round(step / run.steps_per_epoch, 3),
               "loss": ce_mean + args.kl_coef * kl_mean + args.l2_coef * l2, "ce": ce_mean, "kl": kl_mean, "l2": l2,
               "lr": lr, "grad_norm": grad_norm, "tokens_per_s": n_real / dt, "padding_share": 1 - n_real / n_padded,
               "supervised_tokens": int(n_sup), "micro_batches": len(micro_batches), "seconds": dt}
        if master:
            line = (f"step {step + 1}/{total} loss {row['loss']:.4f} lr {lr:.2e} grad_norm {grad_norm:.3f} "
                    f"tok/s {row['tokens_per_s']:.0f} pad {row['padding_share']:.1%}")
            log_step(args.out, row, pbar, step == run.start_step or (step + 1) % args.log_every == 0, line,
                     loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{row['tokens_per_s']:.0f}")
        if not math.isfinite(row["loss"]) or not math.isfinite(grad_norm) and args.dtype != "fp16":
            kept = latest_checkpoint(args.out)
            raise UserError(f"step {step + 1}: loss {row['loss']}, gradient norm {grad_norm}: the run diverged and "
                            f"stopped without this update ({'last checkpoint ' + kept if kept else 'no checkpoint yet'}"
                            "); try a lower --lr or --grad-clip 1")
        stop = signalled > 0 and step + 1 < total  # a signal in the last step lets final/ be written
        if (args.save_every and (step + 1) % args.save_every == 0 or stop) and step + 1 < total:
            save(f"step_{step + 1}", step + 1)
        if stop or args.stop_after and step + 1 >= args.stop_after:
            break
    else:
        save("final", total)
        if master:
            print(f"saved {os.path.join(args.out, 'final')}")
    finish_run("sft.py", args.out, stop and step + 1, stopper, master, pbar)


if __name__ == "__main__":
    run_cli(main, "sft.py")

# -----------------------------------------------------------------------------
# pitfalls this file avoids (see ../shared/STYLE.md), and where
# - EOS masked out when pad == EOS: masks come from positions, never from ids (encode_chats).
# - Prompt tokens in the loss, NaN on an empty micro-batch: only supervised positions reach the loss (collate).
# - Per-micro-batch normalisation under accumulation: one scale from the whole step's supervised tokens, all
#   ranks (step_loss_scale), so 2 ranks x m == 1 rank x 2 micro-batches of m.
# - DDP: no_sync around forward *and* backward of all but the last micro-batch, through the wrapper (grad_sync).
# - A half-written checkpoint: written to a tmp dir and renamed (common.save_checkpoint); the batch plan is a
#   function of (seed, epoch), so the data position is just the step (plan_epoch).
