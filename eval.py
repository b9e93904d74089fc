"""Evaluation: the KV-cache sampler, the rewards, the study's test sets played with them, and Table 1.

    python eval.py --model runs/sok-ans/final --task sokoban --data data              # 8 variants x 100 rooms
    python eval.py --model runs/gp-ans/final --task gpoints --data data --out gp.json   # 8 variants x 500 hands
    python eval.py --model runs/sok-ans/final --task sokoban --limit 20 --temperature 0  # quick and greedy
    python eval.py --sweep runs/sok-ans --task sokoban --out sweep.json                  # best step_N (mean w/o Fake)
    python eval.py --model random --task sokoban --data data --limit 20 --seed 1         # a random policy's row
    python eval.py --report results/*.json --task sokoban --plot table1.png             # one table from --out files
    python eval.py --distill --model TEACHER --task sokoban --data data --samples 16 \
        --out data/sokoban/train_distilled_cot.jsonl                                   # CoT targets from a teacher

Sokoban is multi-turn as in the paper: each turn the model sees only the current state (in the
prompt style it was trained on) and answers one action; an answer the environment does not accept
moves nothing but uses a turn; 30 turns. `valid` is the per-episode share of accepted answers.
The sampler (`sample`) and the rewards (`reward`, `is_correct`) come first; rl.py uses them too.
"""
import argparse
import contextlib
import functools
import inspect
import json
import math
import os
import random
import re
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

import common
import env_gpoints
import env_sokoban
import make_data
import sft
from common import (ArgumentParser, UserError, check_out_dir, load_model, load_tokenizer, read_jsonl, refuse,
                    resolve_model)
from sft import encode_prompts

# -----------------------------------------------------------------------------
# The KV-cache sampler: `_prefill` runs each distinct prompt once and copies its K/V to the n rows of
# its group; `_sample_batch` then decodes one token a step for every row still running. Greedy output
# is `model.generate(do_sample=False)`'s, token for token. Any Hugging Face decoder whose attention
# calls `cache.update(k, v, layer_idx)` and takes a 4-D mask (Qwen2, Llama, ...), on CPU and CUDA.
#
#     out = sample(model, prompt_ids, n=8, temperature=1.0, max_new_tokens=256,
#                  stop_strings=["</answer>"], tokenizer=tok, seed=0, return_logprobs=True)
#     out.ids[i], out.texts[i], out.logprobs[i], out.truncated[i]   # i = prompt * n + sample
#
# `python bench.py tricks` times each speed trick (TRICKS, `sample`'s prefill_tokens and pad_multiple)
# against the same sampler without it.

TRICKS = dict(
    shared_prefix=True,  # a chunk's common prompt prefix (system turn, instructions) runs once, then is copied
    inverse_cdf=True,  # one uniform draw a row, where torch.multinomial on CPU draws one per vocabulary entry
    sdpa=True,  # an eager-attention model decodes with SDPA: no copy of K/V per query head (eager's repeat_kv)
)


@dataclass
class Samples:
    """What `sample` returns; row i is sample i % n of prompt i // n."""

    ids: list  # list[list[int]]: generated token ids, ending with the EOS / stop-string token if any
    texts: list  # list[str] decoded without special tokens, cut after the first stop string; None without a tokenizer
    logprobs: list  # list[Tensor (len(ids[i]),)] float32 on CPU: log_softmax(logits / temperature) of each token;
    #                 None unless asked
    truncated: list  # list[bool]: hit max_new_tokens without an EOS or a stop string
    stop_reason: list  # list[str]: "eos", "stop" (a stop string) or "length"


class KVCache:
    """K and V of every layer in (B, H_kv, T_max, D) buffers, allocated on the first write. Left padding
    aligns the rows, so each writes its next token at column `length` (the caller advances it);
    attention reads columns [0, length) rounded up to a multiple of `multiple` (the extra ones masked)."""

    def __init__(self, batch_size, max_len, multiple=1):
        self.batch_size, self.max_len, self.length = batch_size, sft.pad_length(max_len, multiple), 0
        self.multiple = multiple
        self.k_BHTD, self.v_BHTD = [], []  # one buffer per layer

    def _alloc(self, layer_idx, like_BHTD):
        while len(self.k_BHTD) <= layer_idx:
            _, H, _, D = like_BHTD.shape
            # zeros, not empty: masked columns are still multiplied by 0, and garbage can be inf (0 * inf = NaN)
            self.k_BHTD.append(like_BHTD.new_zeros((self.batch_size, H, self.max_len, D)))
            self.v_BHTD.append(like_BHTD.new_zeros((self.batch_size, H, self.max_len, D)))

    def update(self, k_BHTD, v_BHTD, layer_idx, *args, **kwargs):
        self._alloc(layer_idx, k_BHTD)
        start, end = self.length, self.length + k_BHTD.shape[2]
        self.k_BHTD[layer_idx][:, :, start:end] = k_BHTD
        self.v_BHTD[layer_idx][:, :, start:end] = v_BHTD
        end = sft.pad_length(end, self.multiple)
        return self.k_BHTD[layer_idx][:, :, :end], self.v_BHTD[layer_idx][:, :, :end]

    def insert(self, other, rows, cols, repeats):
        """Copy `other`'s filled columns into rows `rows` and columns `cols`, each row `repeats` times
        (one prefilled prompt -> the n samples of its group, without re-running the prompt)."""
        for layer_idx, (k_bHTD, v_bHTD) in enumerate(zip(other.k_BHTD, other.v_BHTD)):
            self._alloc(layer_idx, k_bHTD)
            b, H, T, D = k_bHTD.shape
            self.k_BHTD[layer_idx][rows, :, cols].view(b, repeats, H, T, D)[:] = k_bHTD[:, None]
            self.v_BHTD[layer_idx][rows, :, cols].view(b, repeats, H, T, D)[:] = v_bHTD[:, None]

    def keep(self, rows_R):
        """Keep only rows `rows_R` (drop finished samples so they stop costing compute)."""
        self.k_BHTD = [k[rows_R] for k in self.k_BHTD]
        self.v_BHTD = [v[rows_R] for v in self.v_BHTD]
        self.batch_size = len(rows_R)


@functools.lru_cache(maxsize=None)
def _cache_kwarg(model_class):
    # transformers 5.x renamed `past_key_values` to `cache`; accept both spellings
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def _forward(model, ids_BT, allowed_BQK, pos_BT, cache, **kwargs):
    """The model on ids_BT at positions pos_BT, reading and writing `cache`. allowed_BQK says which
    key columns each query sees: passed as is to SDPA, as an additive 0 / -big mask to eager attention."""
    mask_B1QK = allowed_BQK[:, None]
    if getattr(model.config, "_attn_implementation", "eager") == "eager":
        dtype = next(model.parameters()).dtype
        mask_B1QK = torch.zeros(mask_B1QK.shape, dtype=dtype, device=mask_B1QK.device).masked_fill_(
            ~mask_B1QK, torch.finfo(dtype).min)
    return model(input_ids=ids_BT, attention_mask=mask_B1QK, position_ids=pos_BT, use_cache=True,
                 **{_cache_kwarg(type(model)): cache}, **kwargs)


def shared_prefix_len(prompt_ids):
    """Tokens at the start of every prompt (the chat template's system turn and the task's fixed
    instructions), kept one short of the shortest prompt so every row has a token of its own."""
    if len(prompt_ids) < 2:
        return 0
    first, n = prompt_ids[0], min(map(len, prompt_ids)) - 1
    for other in prompt_ids[1:]:
        n = next((i for i in range(n) if other[i] != first[i]), n)
    return n


def _prefill(model, prompt_ids, n, cache, valid_BT, prefill_tokens):
    """Each prompt's K/V into its n rows of `cache`, ending at column cache.length - 1, its real tokens
    marked in valid_BT; returns every row's next-token logits (B, V) in fp32. Prompts go in chunks of at
    most `prefill_tokens` padded tokens. A chunk's shared prefix (P tokens) runs once, as one row, copied
    to every row; then each prompt's own suffix, left-padded to the chunk's length, attends to it.
    Position ids count real tokens, so a row's keys are the ones it would get alone; a padding query
    attends to itself only, which keeps its unused states finite."""
    device = valid_BT.device
    lens = [len(p) for p in prompt_ids]
    first_logits, start = [], 0
    while start < len(prompt_ids):
        stop = start + 1  # the chunk is prompts [start, stop)
        while stop < len(prompt_ids) and (stop + 1 - start) * max(lens[start:stop + 1]) <= prefill_tokens:
            stop += 1
        chunk, b = prompt_ids[start:stop], stop - start
        P = shared_prefix_len(chunk) if TRICKS["shared_prefix"] else 0
        T = sft.pad_length(max(lens[start:stop]), cache.multiple)  # the chunk's columns: P shared, S = T - P own
        S = T - P
        chunk_cache = KVCache(b, T)
        if P > 0:
            prefix_cache = KVCache(1, P)
            _forward(model, torch.tensor([chunk[0][:P]], device=device),
                     torch.ones(P, P, dtype=torch.bool, device=device).tril()[None],
                     torch.arange(P, device=device)[None], prefix_cache, logits_to_keep=1)
            chunk_cache.insert(prefix_cache, slice(0, b), slice(0, P), b)
            chunk_cache.length = P
        ids_bS = torch.tensor([[0] * (T - len(p)) + p[P:] for p in chunk], device=device)
        pad_b1 = torch.tensor([T - len(p) for p in chunk], device=device)[:, None]
        real_bS = torch.arange(S, device=device)[None, :] >= pad_b1
        pos_bS = P + (real_bS.long().cumsum(-1) - 1).clamp(min=0)
        own_bSS = ((torch.ones(S, S, dtype=torch.bool, device=device).tril() & real_bS[:, None, :])
                   | torch.eye(S, dtype=torch.bool, device=device))
        allowed_bSK = torch.cat([real_bS[:, :, None].expand(b, S, P), own_bSS], dim=-1)  # real queries see the prefix
        out = _forward(model, ids_bS, allowed_bSK, pos_bS, chunk_cache, logits_to_keep=1)
        rows, cols = slice(start * n, stop * n), slice(cache.length - T, cache.length)
        cache.insert(chunk_cache, rows, cols, n)
        valid_bT = torch.cat([torch.ones(b, P, dtype=torch.bool, device=device), real_bS], dim=-1)
        valid_BT[rows, cols] = valid_bT.repeat_interleave(n, dim=0)
        first_logits.append(out.logits[:, -1].float().repeat_interleave(n, dim=0))
        start = stop
    return torch.cat(first_logits)


@torch.no_grad()
def _sample_batch(model, prompt_ids, n, max_new_tokens, temperature, top_p, eos_ids, stopper, generator,
                  prefill_tokens, drop_fraction, multiple):
    """Decode n samples of each prompt in one batch: the prefill, then the decode loop, one token a
    step for every row still in the batch. Returns (ids, logprobs, reasons) per row."""
    device = next(model.parameters()).device
    lens = [len(p) for p in prompt_ids]
    B = len(prompt_ids) * n
    T0 = sft.pad_length(max(lens), multiple)  # every prompt ends at column T0 - 1; new tokens follow in lockstep
    cache = KVCache(B, T0 + max_new_tokens, multiple)
    cache.length = T0
    valid_BT = torch.zeros(B, cache.max_len, dtype=torch.bool, device=device)  # real tokens, per row
    logits_BV = _prefill(model, prompt_ids, n, cache, valid_BT, prefill_tokens)

    pos_B = torch.tensor(lens, device=device).repeat_interleave(n)
    rows = list(range(B))  # batch row -> sample index (host copy of row_B)
    row_B = torch.arange(B, device=device)
    alive_B = torch.ones(B, dtype=torch.bool, device=device)  # finished rows linger until dropped
    out_BN = torch.zeros(B, max_new_tokens, dtype=torch.long, device=device)
    logp_BN = torch.zeros(B, max_new_tokens, dtype=torch.float32, device=device)
    eos_E = torch.tensor(eos_ids, dtype=torch.long, device=device)
    n_gen, reasons = [max_new_tokens] * B, ["length"] * B
    for step in range(max_new_tokens):
        token_B, logp_B = sample_tokens(logits_BV, temperature, top_p, generator)
        out_BN[row_B, step] = token_B
        logp_BN[row_B, step] = logp_B
        ended_B = torch.isin(token_B, eos_E) & alive_B
        alive_B &= ~ended_B
        for r in ended_B.nonzero().squeeze(-1).tolist():
            n_gen[rows[r]], reasons[rows[r]] = step + 1, "eos"
        for r in stopper.hits(token_B, out_BN, rows, step + 1) if stopper is not None else []:
            if reasons[rows[r]] == "length":
                n_gen[rows[r]], reasons[rows[r]] = step + 1, "stop"
                alive_B[r] = False
        n_alive = int(alive_B.sum())
        if n_alive == 0 or step == max_new_tokens - 1:
            break
        n_dead = len(rows) - n_alive
        if n_dead > 0 and n_dead >= drop_fraction * len(rows):
            keep_R = alive_B.nonzero().squeeze(-1)
            cache.keep(keep_R)
            valid_BT, pos_B, row_B, token_B, alive_B = (x[keep_R] for x in (valid_BT, pos_B, row_B, token_B, alive_B))
            rows = row_B.tolist()
        # the decode step: every row's newest token attends to its cached columns and to itself
        valid_BT[:, cache.length] = True
        K = sft.pad_length(cache.length + 1, multiple)  # the key columns the cache hands to attention
        # contiguous: SDPA on CPU takes a slower path with a strided mask
        out = _forward(model, token_B[:, None], valid_BT[:, None, :K].contiguous(), pos_B[:, None], cache)
        logits_BV = out.logits[:, -1]
        cache.length += 1
        pos_B += 1

    out_BN, logp_BN = out_BN.cpu(), logp_BN.cpu()
    return [out_BN[i, :n_gen[i]].tolist() for i in range(B)], [logp_BN[i, :n_gen[i]].clone() for i in range(B)], reasons


def sample_tokens(logits_BV, temperature, top_p, generator):
    """Next token of every row and its log-prob under log_softmax(logits / temperature)
    (log_softmax(logits) for greedy, temperature 0). Top-p truncates what is sampled from; the
    returned log-prob is the untruncated one, which is what a trainer recomputes."""
    logits_BV = logits_BV.float()
    if temperature == 0:
        logp_BV = F.log_softmax(logits_BV, dim=-1)
        token_B = logits_BV.argmax(dim=-1)
        return token_B, logp_BV.gather(-1, token_B[:, None]).squeeze(-1)
    logp_BV = F.log_softmax(logits_BV / temperature, dim=-1)
    probs_BV = logp_BV.exp()
    if top_p < 1.0:
        sorted_BV, order_BV = probs_BV.sort(dim=-1, descending=True)
        # keep the smallest top set whose mass reaches top_p (always the most likely token)
        drop_BV = (sorted_BV.cumsum(dim=-1) - sorted_BV) >= top_p
        probs_BV = torch.zeros_like(probs_BV).scatter_(-1, order_BV, sorted_BV.masked_fill(drop_BV, 0.0))
    if TRICKS["inverse_cdf"]:  # the first token whose cumulative mass exceeds a uniform draw
        cdf_BV = probs_BV.cumsum(dim=-1)
        total_B1 = cdf_BV[:, -1:]
        u_B1 = torch.rand(total_B1.shape, generator=generator, device=probs_BV.device) * total_B1
        # strictly below the total, so the draw lands on a token with mass even if u * total rounds up
        u_B1 = torch.minimum(u_B1, torch.nextafter(total_B1, torch.zeros_like(total_B1)))
        token_B = torch.searchsorted(cdf_BV, u_B1, right=True).squeeze(-1)
    else:
        token_B = torch.multinomial(probs_BV, 1, generator=generator).squeeze(-1)
    return token_B, logp_BV.gather(-1, token_B[:, None]).squeeze(-1)


class _StopStrings:
    """Per-row stop-string check that stays cheap: only rows whose new token could complete a stop
    string (its text holds a stop string's last character, or a partial UTF-8 byte) decode the
    last few tokens of their reply."""

    _may_end = {}  # (tokenizer id, vocab size, stop strings) -> bool per token id, computed once

    def __init__(self, stop_strings, tokenizer, vocab_size, device):
        self.stop_strings, self.tokenizer = list(stop_strings), tokenizer
        # every token holds at least one byte, so this many tokens always cover a stop string
        self.tail = max(len(s.encode()) for s in self.stop_strings) + 1
        key = (id(tokenizer), len(tokenizer), vocab_size, tuple(self.stop_strings))
        if key not in self._may_end:
            last_chars = {s[-1] for s in self.stop_strings} | {"\ufffd"}
            texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
            flags = [any(c in t for c in last_chars) for t in texts]
            flags += [True] * (vocab_size - len(flags))  # ids the tokenizer lacks: check them anyway
            self._may_end[key] = torch.tensor(flags)
        self.may_end_V = self._may_end[key].to(device)

    def hits(self, token_B, out_BN, rows, n_new):
        """Batch rows whose reply (row `rows[r]` of out_BN, n_new tokens so far) now holds a stop string."""
        cand = self.may_end_V[token_B].nonzero().squeeze(-1).tolist()
        if not cand:
            return []
        tails = out_BN[[rows[r] for r in cand], max(0, n_new - self.tail):n_new].tolist()
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
        return [r for r, t in zip(cand, texts) if any(s in t for s in self.stop_strings)]


def cut_at_stop(text, stop_strings):
    """Text up to and including the first stop string that ends in it."""
    ends = [text.find(s) + len(s) for s in stop_strings if s in text]
    return text[:min(ends)] if ends else text


@contextlib.contextmanager
def _decoding_mode(model):
    """The model in eval mode, and an eager-attention one in SDPA (TRICKS["sdpa"]; the trainers keep
    eager on CPUs, common.load_model), restored on exit."""
    impl = getattr(model.config, "_attn_implementation", "eager")
    if impl not in ("sdpa", "eager"):
        raise ValueError(f"sample() supports sdpa and eager attention, not {impl!r}; load the model with "
                         "attn_implementation='sdpa'")
    was_training = model.training
    to_sdpa = TRICKS["sdpa"] and impl == "eager" and hasattr(model, "set_attn_implementation")
    model.eval()
    if to_sdpa:
        model.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        model.train(was_training)
        if to_sdpa:
            model.set_attn_implementation("eager")


def sample(model, prompt_ids, *, n=1, max_new_tokens=256, temperature=1.0, top_p=1.0, eos_ids=None,
           stop_strings=(), tokenizer=None, seed=0, return_logprobs=False, max_batch_rows=None,
           prefill_tokens=None, drop_fraction=0.25, pad_multiple=32):
    """n replies to each prompt (a list of token ids): a `Samples` whose rows are prompt 0's n samples,
    then prompt 1's, ... temperature 0 is greedy; top_p < 1 samples from the nucleus. A row stops at any
    of `eos_ids` (default: the model's generation config, else the tokenizer's EOS), once its reply holds
    one of `stop_strings` (needs `tokenizer`), or after `max_new_tokens`. The same call gives the same
    samples whatever the global RNG state. `max_batch_rows` caps the rows decoded at once, `prefill_tokens`
    the padded tokens of one prefill forward; rows leave the batch once `drop_fraction` of it has
    finished; lengths are padded to a multiple of `pad_multiple` (sft.pad_length says why)."""
    if n < 1 or max_new_tokens < 1 or temperature < 0 or not 0 < top_p <= 1 or pad_multiple < 1:
        raise ValueError(f"need n >= 1, max_new_tokens >= 1, temperature >= 0, 0 < top_p <= 1, pad_multiple >= 1 "
                         f"(got {n}, {max_new_tokens}, {temperature}, {top_p}, {pad_multiple})")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt needs at least one token")
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer")
    layer_types = getattr(model.config, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        raise ValueError(f"sample() supports full attention only, the model has layer types {set(layer_types)}")
    if eos_ids is None:
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if eos is None and tokenizer is not None:
            eos = tokenizer.eos_token_id
        eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else eos
    eos_ids = list(eos_ids)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    vocab_size = max(model.get_output_embeddings().weight.shape[0], len(tokenizer) if tokenizer is not None else 0)
    if prefill_tokens is None:  # small chunks stay in a CPU's caches; a GPU wants big ones
        prefill_tokens = 2048 if device.type == "cpu" else 16384
    stopper = _StopStrings(stop_strings, tokenizer, vocab_size, device) if stop_strings else None
    per_batch = len(prompt_ids) if max_batch_rows is None else max(1, max_batch_rows // n)

    # prompts of similar lengths share a batch and a prefill chunk: less padding to compute
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    results = []  # (ids, logprobs, reason) per row, in sorted-prompt order
    with _decoding_mode(model):
        for start in range(0, len(order), per_batch):
            batch = [prompt_ids[i] for i in order[start:start + per_batch]]
            results += zip(*_sample_batch(model, batch, n, max_new_tokens, temperature, top_p, eos_ids, stopper,
                                          generator, prefill_tokens, drop_fraction, pad_multiple))
    rank = {p: r for r, p in enumerate(order)}
    ids, logprobs, reasons = (list(column) for column in zip(
        *[results[rank[p] * n + s] for p in range(len(prompt_ids)) for s in range(n)]))
    texts = None
    if tokenizer is not None:
        texts = [cut_at_stop(t, stop_strings) for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    return Samples(ids=ids, texts=texts, logprobs=logprobs if return_logprobs else None,
                   truncated=[r == "length" for r in reasons], stop_reason=reasons)


# -----------------------------------------------------------------------------
# Rewards of one reply, from the environments' own functions (used by rl.py's rollout(), the
# evaluator and the distillation filter; nothing else scores a reply), and the prompt records they read

# what scoring reads from a prompt record's meta, by task: (field, accepted types)
META_FIELDS = {"sokoban": {"grid": (str,), "names": (dict,), "accepted": (dict,), "optimal": (list,)},
               "gpoints": {"cards": (list,), "values": (list,), "target": (int, float)}}


def reward(reply, meta):
    """The study's reward for one reply to a prompt record's `meta`.
    Sokoban (single step, as the paper's RL): 1.0 if the reply is well formed (a think block, then
    the answer) and names one of the state's optimal moves in the vocabulary the environment
    accepts, else 0.0. General Points: env_gpoints.score, +5 / -1 / -2 / -3."""
    if meta["task"] == "sokoban":
        action = env_sokoban.parse_answer(reply, meta["accepted"])
        well_formed = "</think>" in reply and reply.find("</think>") < reply.rfind("<answer>")
        return 1.0 if well_formed and action in meta["optimal"] else 0.0
    if meta["task"] == "gpoints":
        return float(env_gpoints.score(reply, meta["values"], meta["target"]))
    raise ValueError(f"unknown task {meta['task']!r}")


def is_correct(reply, meta):
    """Sokoban: an optimal move, well formed; General Points: a formula worth +5."""
    return reward(reply, meta) == (1.0 if meta["task"] == "sokoban" else float(env_gpoints.REWARD_CORRECT))


def check_prompt_record(record, task=None):
    """The error string for a prompt record (RL, evaluation) that does not end with the user's turn or
    lacks the meta scoring reads (of `task`, if given), or None."""
    problem = sft.check_turns(record, "user", 1)
    if problem or "meta" not in record:
        return problem or "a prompt record needs its 'meta' (what scoring needs; make_data.py writes it)"
    meta = record["meta"]
    if task is not None and meta.get("task") != task:
        return f"not a {task} evaluation record (make_data.py writes them)"
    wanted = META_FIELDS.get(meta.get("task"), {})
    odd = [k for k, kind in wanted.items() if not isinstance(meta.get(k), kind)]
    if odd:
        return f"meta of a {meta['task']} record needs {', '.join(f'{k} ({wanted[k][0].__name__})' for k in odd)}"
    return None


# -----------------------------------------------------------------------------
# Evaluator: multi-turn Sokoban and one-shot General Points on the study's test sets

SOKOBAN_VARIANTS = tuple(env_sokoban.VARIANTS)  # id alpha num rand large twoboxes complex fake
GPOINTS_VARIANTS = tuple(env_gpoints.VARIANTS)  # id all5 all7 all12 regular large five fake
VARIANTS = {"sokoban": SOKOBAN_VARIANTS, "gpoints": GPOINTS_VARIANTS}
STOP_STRINGS = {"sokoban": ("</answer>",), "gpoints": (), "base": ("</answer>",)}


def prompt_ids(tokenizer, contents):
    """Token ids of each user turn under the model's chat template, ready for the reply."""
    return encode_prompts(tokenizer, [[{"role": "user", "content": c}] for c in contents])


def wilson_interval(successes, n, z=1.96):
    """95% Wilson score interval of a binomial proportion: sane at 0 and 1, unlike p +- 2 sigma."""
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def load_eval_sets(data_dir, task, variants, limit=None):
    """{variant: records} from DATA/TASK/eval_VARIANT.jsonl, the first `limit` records of each."""
    sets = {}
    for variant in variants:
        records = read_jsonl(os.path.join(data_dir, task, f"eval_{variant}.jsonl"),
                             check=lambda record: check_prompt_record(record, task))
        sets[variant] = records[:limit] if limit else records
    return sets


class Episode:
    """One multi-turn Sokoban game started from an evaluation record."""

    def __init__(self, variant, record, max_turns):
        meta = record["meta"]
        self.variant, self.names, self.accepted = variant, meta["names"], meta["accepted"]
        self.style = meta.get("style", "full")
        self.env = env_sokoban.SokobanEnv.from_text(meta["grid"], max_steps=max_turns)
        self.start = meta["grid"]
        self.turns = self.valid = self.effective = 0
        self.done, self.success, self.transcript = False, False, []

    def prompt(self):
        return make_data.sokoban_prompt(self.env.render(), self.names, self.style)

    def play(self, reply):
        """Apply one reply: an accepted word moves the player, anything else wastes the turn."""
        action = env_sokoban.parse_answer(reply, self.accepted)
        self.turns += 1
        self.transcript.append(reply)
        if action is not None:
            self.valid += 1
            _, _, solved, _, info = self.env.step(action)
            self.effective += info["action_is_effective"]
            self.success = solved
        self.done = self.success or self.turns >= self.env.max_steps


def model_replies(model, tokenizer, *, temperature=0.5, top_p=1.0, max_new_tokens=256, batch_rows=None,
                  stop_strings=()):
    """A policy for the evaluators: (user prompts, seed) -> one reply each, from `model` through
    the chat template and the batched sampler."""
    def replies(contents, seed):
        prompts = prompt_ids(tokenizer, contents)
        return sample(model, prompts, temperature=temperature, top_p=top_p, seed=seed, max_new_tokens=max_new_tokens,
                      stop_strings=stop_strings, tokenizer=tokenizer, max_batch_rows=batch_rows).texts
    return replies


def announced_names(prompt):
    """The answer words a Sokoban prompt announces, in either style ("actions: A is Up, ..." or
    "Answers: <answer> A </answer> | ..."), or [] when it announces none."""
    compact = re.search(r"^sokoban\. actions: (.*)$", prompt, re.M)
    if compact:
        return [part.rsplit(" is ", 1)[0] for part in compact.group(1).split(", ")]
    full = re.search(r"^Answers: (.*)$", prompt, re.M)
    return re.findall(r"<answer> (.*?) </answer>", full.group(1)) if full else []


def random_replies(contents, seed):
    """--model random: the baseline every Sokoban table reads against. Each turn it answers one of the
    names the prompt announces, uniformly (so Fake, which accepts other names, scores 0), seeded."""
    rng = random.Random(seed)
    return [make_data.sokoban_reply(rng.choice(names)) if (names := announced_names(c)) else "" for c in contents]


def evaluate_sokoban(replies, sets, *, seed=0, max_turns=30, show=2, progress=True):
    """The paper's multi-turn protocol. `replies(prompts, seed)` is the policy (model_replies, or
    a scripted one in the tests). Every episode of every variant advances together, one batched
    call per turn; each turn the model sees only the current state's prompt and answers one
    action. Returns {variant: metrics}."""
    episodes = [Episode(v, r, max_turns) for v, records in sets.items() for r in records]
    bar = tqdm(total=max_turns, desc="sokoban turns", disable=not progress, leave=False)
    for turn in range(max_turns):
        active = [e for e in episodes if not e.done]
        if not active:
            break
        for episode, reply in zip(active, replies([e.prompt() for e in active], seed * 1000 + turn)):
            episode.play(reply)
        bar.update(1)
        bar.set_postfix(active=len(active))
    bar.close()
    results = {}
    for variant in sets:
        mine = [e for e in episodes if e.variant == variant]
        n, wins = len(mine), sum(e.success for e in mine)
        results[variant] = dict(
            n=n, success=wins / max(n, 1), success_ci=wilson_interval(wins, n),
            # per-episode shares, then their mean: an episode without one valid turn counts 0
            valid=sum(e.valid / e.turns for e in mine) / max(n, 1),
            effective=sum(e.effective / e.turns for e in mine) / max(n, 1),
            turns=sum(e.turns for e in mine) / max(n, 1),
            examples=[dict(grid=e.start, success=e.success, replies=e.transcript[:5]) for e in mine[:show]])
    return results


def evaluate_gpoints(replies, sets, *, seed=0, show=2, progress=True):
    """One reply per problem, scored by env_gpoints.score: success = +5, valid = reward >= -1.
    values_read: the reply's "number" list holds the hand's values under the scored mapping (as a
    multiset), i.e. the model applied the J/Q/K rule, whether or not its arithmetic then works."""
    items = [(v, r) for v, records in sets.items() for r in records]
    texts = replies([r["messages"][0]["content"] for _, r in items], seed)
    scores = [reward(text, r["meta"]) for (_, r), text in zip(items, texts)]
    results = {}
    for variant in sets:
        mine = [(r, text, s) for (v, r), text, s in zip(items, texts, scores) if v == variant]
        n, wins = len(mine), sum(s == env_gpoints.REWARD_CORRECT for _, _, s in mine)
        results[variant] = dict(
            n=n, success=wins / max(n, 1), success_ci=wilson_interval(wins, n),
            valid=sum(s >= env_gpoints.REWARD_WRONG_RESULT for _, _, s in mine) / max(n, 1),
            values_read=sum(sorted(env_gpoints.parse_numbers(text) or []) == sorted(r["meta"]["values"])
                            for r, text, _ in mine) / max(n, 1),
            examples=[dict(cards=r["meta"]["cards"], score=s, reply=text) for r, text, s in mine[:show]])
    return results


def evaluate_base(replies, sets, *, seed=0, show=2):
    """The tiny base model's skills (make_data.py --tasks base), one column per kind (copy,
    lookup-key, lookup-value, arithmetic) of the held-out records in sets["base"]: success = the
    answer tag's words equal the reference's, valid = the reply has exactly one answer tag."""
    records = sets["base"]
    texts = replies([r["messages"][0]["content"] for r in records], seed)
    results = {}
    for record, text in zip(records, texts):
        m = results.setdefault(record["meta"]["kind"], dict(n=0, success=0, valid=0, replies=[]))
        answer, want = (env_sokoban.answer_tag(t, max_chars=None) for t in (text, record["messages"][1]["content"]))
        m["n"] += 1
        m["valid"] += answer is not None
        m["success"] += answer is not None and answer.split() == want.split()
        if len(m["replies"]) < show:
            m["replies"].append(dict(prompt=record["messages"][0]["content"], reply=text))
    for m in results.values():
        m["success_ci"] = wilson_interval(m["success"], m["n"])
        m["success"], m["valid"] = m["success"] / m["n"], m["valid"] / m["n"]
    return results


ENV_EVALUATORS = {"sokoban": evaluate_sokoban, "gpoints": evaluate_gpoints}  # what rl.py --eval-every runs too


def evaluate_model(args, model_path, sets, model=None):
    """{variant: metrics} of the model at model_path (loaded unless given) on `sets`, as args say."""
    if model_path == "random":
        return evaluate_sokoban(random_replies, sets, seed=args.seed, max_turns=args.max_turns, show=args.show)
    model = model if model is not None else load_model(model_path, args.dtype, args.device)
    tokenizer = load_tokenizer(model_path)
    style, first_set = trained_style(model_path), next(iter(sets.values()), [])
    data_style = first_set[0]["meta"].get("style") if first_set else None
    if style and data_style and style != data_style:
        print(f"warning: {model_path} was trained on {style!r} prompts but {args.data} holds {data_style!r} ones")
    replies = model_replies(model, tokenizer, temperature=args.temperature, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens, batch_rows=args.batch_rows,
                            stop_strings=STOP_STRINGS[args.task])
    if args.task == "sokoban":
        return evaluate_sokoban(replies, sets, seed=args.seed, max_turns=args.max_turns, show=args.show)
    if args.task == "base":
        return evaluate_base(replies, sets, seed=args.seed, show=args.show)
    return evaluate_gpoints(replies, sets, seed=args.seed, show=args.show)


def trained_style(model_path):
    """The prompt style of the data a run of sft.py / rl.py trained on (from RUN/config.json), or None."""
    config = os.path.join(os.path.dirname(os.path.abspath(model_path)), "config.json")
    try:
        with open(config, encoding="utf-8") as f:
            data = json.load(f).get("data")
        with open(data, encoding="utf-8") as f:
            return json.loads(f.readline())["meta"].get("style")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def average_except_fake(results):
    """The paper's checkpoint-selection score: mean success over every column but Fake."""
    scores = [m["success"] for v, m in results.items() if v != "fake"]
    return sum(scores) / max(len(scores), 1)

# -----------------------------------------------------------------------------
# Reports: Table 1 as Markdown and as a figure, from the JSON files of several runs


def _md_row(label, cells):
    return f"| {label} | " + " | ".join(cells) + " |"


def format_table(results, title=""):
    """A Markdown table in the paper's layout: variants as columns, success with its 95% Wilson
    interval, then validity."""
    metrics = results.values()
    lines = [_md_row(title, list(results)), "|---|" + "---|" * len(results),
             _md_row("success", [f"{m['success']:.2f} [{m['success_ci'][0]:.2f}, {m['success_ci'][1]:.2f}]"
                                 for m in metrics]),
             _md_row("valid", [f"{m['valid']:.2f}" for m in metrics])]
    if all("values_read" in m for m in metrics):
        lines.append(_md_row("values read", [f"{m['values_read']:.2f}" for m in metrics]))
    return "\n".join(lines)


# The paper's Table 1 (Qwen2.5-7B), success rates, for side-by-side reports.
PAPER_TABLE1 = {
    "sokoban": {"Ans.": (.98, 0, 0, 0, .64, .35, .19, .93), "Diver.+Ans.": (.91, .92, .89, .84, .53, .33, .09, 0),
                "CoT": (1, .73, .80, .22, .53, .57, .28, .03), "Diver.+CoT": (1, .97, .98, 1, .74, .58, .40, 0),
                "RL (warm)": (.90, .76, .69, .55, .34, .36, .10, 0)},
    "gpoints": {"Ans.": (.61, .23, .25, .07, .06, .02, .00, .01), "Diver.+Ans.": (.78, .71, .70, .09, .07, .03, .01, 0),
                "CoT": (.95, .90, .90, .85, .86, .80, .26, 0), "Diver.+CoT": (.96, .93, .93, .90, .89, .84, .29, 0),
                "RL (warm)": (.93, .80, .87, .82, .80, .69, .22, .05)},
}


def paper_row(task, label):
    """Table 1's row for a method's label: the label itself, or the label less a qualifier in brackets
    ('CoT (search)', 'Diver.+CoT (relative)' are the paper's 'CoT', 'Diver.+CoT'); None for other methods."""
    table = PAPER_TABLE1[task]
    if label in table:
        return table[label]
    base = re.sub(r" \([^()]*\)$", "", label)
    return table.get(base) if base != label else None


def format_report(task, rows, checkpoints=None):
    """One Markdown table from several result files: a row per method (success, and the paper's
    success below it where the method is one of Table 1's), variants as columns. `checkpoints` (one
    per row, e.g. 'step 250' or 'final') become a last column once one of them is a step the checkpoint
    rule chose; tables of final/ rows print as before. General Points results that hold `values_read`
    get a second table of it."""
    variants = VARIANTS[task]
    cells = lambda results, key: [f"{results[v][key]:.2f}" if v in results else "-" for v in variants]
    if not any(c.startswith("step ") for c in checkpoints or ()):
        checkpoints = None
    extra = ["checkpoint"] if checkpoints else []
    lines = [_md_row("method", [*variants, "mean w/o Fake", *extra]), "|---|" + "---|" * (len(variants) + 1 + len(extra))]
    for i, (label, results) in enumerate(rows):
        lines.append(_md_row(label, [*cells(results, "success"), f"{average_except_fake(results):.2f}",
                                     *([checkpoints[i]] if checkpoints else [])]))
        paper = paper_row(task, label)
        if paper:
            mean = sum(paper[:-1]) / (len(paper) - 1)
            lines.append(_md_row("*paper*", [f"*{x:.2f}*" for x in (*paper, mean)] + [""] * len(extra)))
    if all("values_read" in m for _, results in rows for m in results.values()):
        lines += ["",
                  "values read (the reply's \"number\" list holds the hand's values under the scored J/Q/K rule):", "",
                  _md_row("method", variants), "|---|" + "---|" * len(variants)]
        lines += [_md_row(label, cells(results, "values_read")) for label, results in rows]
    return "\n".join(lines)


def _panels(flag, n, figsize, **kwargs):
    """(figure, its n axes in a column) from matplotlib on a file backend, or a UserError naming what to install."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError(f"{flag} needs matplotlib: pip install matplotlib") from None
    fig, axes = plt.subplots(n, 1, figsize=figsize, squeeze=False, **kwargs)
    return fig, axes[:, 0]


def _save_png(fig, path):
    import matplotlib.pyplot as plt
    fig.tight_layout()
    common.write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120), binary=True)
    plt.close(fig)


def plot_report(task, rows, path):
    """Table 1 as a figure: one panel per method, success per variant, ours beside the paper's (where the
    method is one of Table 1's rows). Needs matplotlib (an optional extra)."""
    variants = VARIANTS[task]
    fig, axes = _panels("--plot", len(rows), (8, 1.9 * len(rows) + 0.6), sharex=True)
    x = range(len(variants))
    for ax, (label, results) in zip(axes, rows):
        ours = [results[v]["success"] if v in results else 0.0 for v in variants]
        paper = paper_row(task, label)
        width = 0.4 if paper else 0.6
        ax.bar([i - (width / 2 if paper else 0) for i in x], ours, width, label="this run", color="tab:blue")
        if paper:
            ax.bar([i + width / 2 for i in x], paper, width, label="paper", color="lightgray", edgecolor="gray",
                   hatch="//")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("success")
        ax.set_title(label, loc="left", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=8, ncol=2)
    axes[-1].set_xticks(list(x), variants)
    _save_png(fig, path)


def plot_curves(sweeps, path, logs=()):
    """One panel per --sweep file: success per variant against the training step, and the mean
    without Fake (the checkpoint rule's score) in black, the chosen step marked. With `logs` (each
    sweep's training log.jsonl, or None) the run's own curves go in gray: SFT's loss on a right-hand
    log axis; RL's share of sampled replies that were right and of groups without reward variance."""
    fig, axes = _panels("--plot-curves", len(sweeps), (7, 2.6 * len(sweeps) + 0.4))
    for ax, sweep, log in zip(axes, sweeps, list(logs) + [None] * (len(sweeps) - len(logs))):
        steps = [c["step"] for c in sweep["curve"]]
        for variant in sweep["curve"][0]["results"]:
            ax.plot(steps, [c["results"][variant]["success"] for c in sweep["curve"]], marker="o", lw=1,
                    label=variant, ls="--" if variant == "fake" else "-")
        ax.plot(steps, [c["average"] for c in sweep["curve"]], color="black", lw=2.5, label="mean w/o Fake")
        if log:
            _plot_train_log(ax, log)
        best = next(c for c in sweep["curve"] if c["path"] == sweep["best"])
        ax.axvline(best["step"], color="gray", ls=":", lw=1)
        n = sweep.get("args", {}).get("limit")
        ax.set_title(f"{sweep.get('label') or sweep['run']}: chosen step {best['step']}"
                     + (f" ({n} records a variant)" if n else ""), loc="left", fontsize=10)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("training step")
        ax.set_ylabel("success")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=3, loc="upper left")
    _save_png(fig, path)


def _log_series(rows, key):
    """(steps, values) of a training log's rows that hold a number under `key`."""
    kept = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [s for s, _ in kept], [v for _, v in kept]


def _plot_train_log(ax, rows, window=5):
    """A training log's curves in gray, each a running mean over `window` steps."""
    def smooth(key):
        steps, values = _log_series(rows, key)
        w = min(window, len(values)) or 1
        return steps[w - 1:], [sum(values[i - w + 1:i + 1]) / w for i in range(w - 1, len(values))]
    if any("zero_var_groups" in r for r in rows):  # rl.py's log (GRPO)
        ax.plot(*smooth("accuracy"), color="gray", lw=1.2, label=f"train: replies right ({window}-step mean)")
        ax.plot(*smooth("zero_var_groups"), color="gray", lw=1.2, ls="--", label="train: groups w/o variance")
    elif any("loss" in r for r in rows):  # sft.py's log
        right = ax.twinx()
        right.plot(*smooth("loss"), color="gray", lw=1, label=f"train loss ({window}-step mean)")
        right.set_yscale("log")
        right.set_ylabel("train loss", color="gray")
        right.legend(fontsize=7, loc="upper right")


HELD_OUT = ("_first_move_acc", "_success")  # rl.py --eval-every's scores drawn by --plot-logs


def log_name(path):
    """A panel's title: the run folder of OUT/log.jsonl, else the file's name."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.basename(folder) if name == "log.jsonl" else os.path.splitext(name)[0]


def plot_logs(logs, path):
    """--plot-logs: [(title, rl.py log rows)], a panel each: the share of replies right, of groups without
    variance, and the held-out scores (dots) on the left axis; the mean reward on the right one."""
    fig, axes = _panels("--plot-logs", len(logs), (8, 2.3 * len(logs) + 0.5), sharex=True)
    for ax, (title, rows) in zip(axes, logs):
        series = functools.partial(_log_series, rows)
        ax.plot(*series("accuracy"), color="tab:blue", lw=1.2, label="train: replies right")
        ax.plot(*series("zero_var_groups"), color="tab:blue", lw=1.2, ls="--", label="train: groups w/o variance")
        for key in sorted({k for r in rows for k in r if k.endswith(HELD_OUT)}):
            ax.plot(*series(key), marker="o", lw=1, label=f"held-out: {key}")
        right = ax.twinx()
        right.plot(*series("reward"), color="gray", lw=1, label="train: mean reward")
        right.set_ylabel("reward", color="gray")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("share")
        ax.set_title(title, loc="left", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="upper left")
    axes[-1].set_xlabel("RL step")
    _save_png(fig, path)


def read_report_rows(task, paths, with_checkpoints=False):
    """(label, results) of every --out or --sweep file (a sweep's best checkpoint) for the --report
    table. A file of another benchmark is refused; files of the base model's skills (task 'base',
    e.g. a study's base.json) are not rows of the table: they are skipped, with a note naming them.
    with_checkpoints: also the checkpoint each row is ('step N', 'final', or '-' for a hub model or a
    random policy), as (rows, checkpoints)."""
    rows, skipped, checkpoints = [], [], []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: not an eval.py --out file ({e})") from None
        if not isinstance(saved, dict) or "task" not in saved or not ("variants" in saved or "curve" in saved):
            raise UserError(f"{path}: not an eval.py --out file (no task and variants)")
        if saved["task"] == "base":
            skipped.append(path)
            continue
        if saved["task"] != task:
            raise UserError(f"{path} holds {saved['task']} results, not {task} ones: pass --task {saved['task']} or "
                            "other files")
        if "curve" in saved:  # an --sweep file: its best checkpoint is the row
            results = next(c["results"] for c in saved["curve"] if c["path"] == saved["best"])
            model = saved["best"]
        else:
            results, model = saved["variants"], saved.get("model") or ""
        rows.append((saved.get("label") or os.path.splitext(os.path.basename(path))[0], results))
        name = os.path.basename(os.path.normpath(model))
        step = common.step_of(name)
        checkpoints.append(f"step {step}" if step is not None else "final" if name == "final" else "-")
    if skipped:
        print(f"eval.py: note: skipped {', '.join(skipped)}: the base model's skills (task 'base'), not a row of the "
              "table", file=sys.stderr)
    if not rows:
        raise UserError(f"no {task} results among the --report files")
    return (rows, checkpoints) if with_checkpoints else rows

# -----------------------------------------------------------------------------
# Teacher-distilled CoT: the paper's rejection sampling from a (RL-tuned) teacher


def distill(model, tokenizer, records, *, samples=16, temperature=1.0, max_new_tokens=1024, seed=0,
            batch_prompts=64, progress=True):
    """For every SFT/RL record, sample `samples` replies and keep the first correct one (Sokoban:
    well formed and an optimal move; GP: +5). Returns (records in make_data.py's SFT format, yield)."""
    kept = []
    task = records[0]["meta"]["task"] if records else "sokoban"
    for start in tqdm(range(0, len(records), batch_prompts), desc="distill", disable=not progress):
        chunk = records[start:start + batch_prompts]
        prompts = prompt_ids(tokenizer, [r["messages"][0]["content"] for r in chunk])
        out = sample(model, prompts, n=samples, temperature=temperature, max_new_tokens=max_new_tokens,
                     stop_strings=STOP_STRINGS[task], tokenizer=tokenizer, seed=seed + start)
        for i, record in enumerate(chunk):
            replies = out.texts[i * samples:(i + 1) * samples]
            good = next((r for r in replies if is_correct(r, record["meta"])), None)
            if good is not None:
                meta = dict(record["meta"], distilled=True)
                kept.append(dict(messages=[record["messages"][0], dict(role="assistant", content=good.strip())],
                                 meta=meta))
    return kept, len(kept) / max(len(records), 1)

# -----------------------------------------------------------------------------
# command line: one function per mode


def get_parser():
    cuda = torch.cuda.is_available()
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a model directory (sft.py / rl.py output or a Hugging Face chat model), a "
                        "hub id, 'smollm2', or 'random' (Sokoban: each turn one of the names the prompt announces, "
                        "uniformly; the baseline)")
    parser.add_argument("--task", choices=("sokoban", "gpoints", "base"), required=True,
                        help="which benchmark ('base': the tiny base model's held-out copy/lookup/arithmetic examples)")
    parser.add_argument("--data", default="data", help="make_data.py's output directory (eval sets in DATA/TASK/)")
    parser.add_argument("--out", help="JSON file for the raw numbers and sample replies (distill: the SFT file)")
    parser.add_argument("--variants", nargs="+", help="test sets to run (default: all eight)")
    parser.add_argument("--limit", type=int, help="first N records of each test set, for quick runs")
    group = parser.add_argument_group("decoding")
    group.add_argument("--temperature", type=float, default=0.5, help="sampling temperature (the paper's 0.5); 0 is greedy")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    group.add_argument("--seed", type=common.seed, default=0, help="sampling seed")
    group.add_argument("--max-new-tokens", type=int, help="reply cap (default 256 Sokoban, 512 GP, 1024 distill)")
    group.add_argument("--max-turns", type=int, default=30, help="Sokoban turns per episode")
    group.add_argument("--batch-rows", type=int, help="cap on rows decoded at once (GPU memory)")
    group.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16" if cuda else "fp32",
                       help="weights dtype (default bf16 on CUDA, fp32 on CPU)")
    group.add_argument("--show", type=int, default=2, help="episodes per variant whose replies go into --out")
    group.add_argument("--label", help="the method's name in --out and in --report tables (e.g. 'Diver.+CoT')")
    parser.add_argument("--report", nargs="+", metavar="JSON",
                        help="print one table from several --out files (no model needed)")
    parser.add_argument("--plot", metavar="PNG",
                        help="with --report: also draw the table as a figure, ours beside the paper's (needs matplotlib)")
    parser.add_argument("--plot-curves", metavar="PNG", help="with --report: draw each --sweep file's curve, success "
                        "per variant against the training step (needs matplotlib)")
    parser.add_argument("--logs", nargs="+", metavar="JSONL", help="with --plot-curves: each --sweep file's training "
                        "log (sft.py's or rl.py's log.jsonl), in the same order, drawn on its panel; with --plot-logs: "
                        "the rl.py logs to draw")
    parser.add_argument("--plot-logs", metavar="PNG", help="draw each --logs file (rl.py's log.jsonl) in a panel against "
                        "the step: reward, replies right, groups without variance, and the --eval-every held-out "
                        "scores (no model needed; e.g. runs of an lr / temperature sweep side by side)")
    group = parser.add_argument_group("checkpoint selection and distillation")
    group.add_argument("--sweep", metavar="RUN_DIR",
                       help="evaluate every RUN_DIR/step_N and report the best (mean success without Fake)")
    group.add_argument("--distill", action="store_true", help="rejection-sample CoT targets from --model (a teacher)")
    group.add_argument("--distill-from", default="train_ans", help="which DATA/TASK/NAME.jsonl prompts to distill")
    group.add_argument("--samples", type=int, default=16, help="distill: replies sampled per prompt (paper: 16 "
                       "Sokoban, 3 GP)")
    parser.set_defaults(device="cuda" if cuda else "cpu")  # not a flag: recorded in --out's args
    return parser


def check_args(args):
    """Reject values that make no sense and an --out that cannot be written, before any model is loaded."""
    refuse([(args.logs and not (args.plot_curves or args.plot_logs),
             "--logs go with --report ... --plot-curves PNG, or with --plot-logs PNG"),
            (args.plot_logs and not args.logs, "--plot-logs PNG draws --logs JSONL...: name the logs"),
            (args.plot_logs and (args.report or args.model or args.sweep or args.distill),
             "--plot-logs reads training logs only: leave out --report, --model, --sweep and --distill")])
    if args.plot_logs:
        return check_out_dir(os.path.dirname(os.path.abspath(args.plot_logs)), f"--plot-logs {args.plot_logs}")
    if args.report:
        refuse([(args.model or args.sweep or args.distill,
                 "--report reads result files only: leave out --model, --sweep and --distill")])
        for flag, path in (("--plot", args.plot), ("--plot-curves", args.plot_curves)):
            if path:
                check_out_dir(os.path.dirname(os.path.abspath(path)), f"{flag} {path}")
        return
    variants = VARIANTS.get(args.task, ())
    positive = [("--limit", args.limit), ("--max-new-tokens", args.max_new_tokens), ("--batch-rows", args.batch_rows)]
    refuse([
        (args.sweep and (args.model or args.distill),
         "--sweep evaluates RUN_DIR's step_N checkpoints: leave out --model and --distill"),
        (not args.sweep and not args.model, "--model is required (or --sweep RUN_DIR, or --report FILES)"),
        (args.model == "random" and (args.task != "sokoban" or args.distill),
         "--model random is Sokoban's random-policy baseline: --task sokoban, no --distill"),
        (args.distill and args.task == "base", "--distill makes Sokoban or General Points targets: --task sokoban or "
         "gpoints"),
        (args.sweep and not os.path.isdir(args.sweep), f"--sweep: run directory not found: {args.sweep}"),
        *[(value is not None and value < 1, f"{flag} must be >= 1 (got {value})") for flag, value in positive],
        (min(args.max_turns, args.samples) < 1, "--max-turns and --samples must be >= 1"),
        (args.show < 0, "--show must be >= 0"),
        (args.temperature < 0, f"--temperature must be >= 0, 0 being greedy (got {args.temperature})"),
        (not 0 < args.top_p <= 1, f"--top-p must be in (0, 1] (got {args.top_p})"),
        (args.variants and args.task == "base", "--variants: the base task has one set (base/eval.jsonl)"),
        (args.variants and not set(args.variants) <= set(variants),
         f"--variants: unknown {', '.join(sorted(set(args.variants or ()) - set(variants)))}; {args.task} has "
         f"{' '.join(variants)}"),
        (args.out and os.path.isdir(args.out), f"--out {args.out} is a directory: name a file"),
    ])
    if args.out:
        check_out_dir(os.path.dirname(os.path.abspath(args.out)), f"--out {args.out}")


def main(argv=None):
    args = get_parser().parse_args(argv)
    check_args(args)
    if args.report:
        return run_report(args)
    if args.plot_logs:
        make_out_dirs(args.plot_logs)
        plot_logs([(log_name(path), read_jsonl(path)) for path in args.logs], args.plot_logs)
        print(f"wrote {args.plot_logs}", file=sys.stderr)
        return
    # the model's path and the reply cap resolved, in a copy that --out records as the run's args
    cap = 1024 if args.distill else 256 if args.task == "sokoban" else 512
    model = args.model if args.model == "random" else args.model and resolve_model(args.model)
    run = argparse.Namespace(**{**vars(args), "model": model,
                                "max_new_tokens": args.max_new_tokens or cap})
    if run.distill:
        return run_distill(run)
    if run.task == "base":
        sets = {"base": read_jsonl(os.path.join(run.data, "base", "eval.jsonl"))[:run.limit]}
    else:
        sets = load_eval_sets(run.data, run.task, run.variants or VARIANTS[run.task], run.limit)
    make_out_dirs(run.out)  # now, not at the end, when the work would be lost
    return run_sweep(run, sets) if run.sweep else run_evaluation(run, sets)


def make_out_dirs(*paths):
    for path in paths:
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def write_json(path, obj):
    make_out_dirs(path)
    common.write_atomic(path, lambda f: json.dump(obj, f, indent=1, ensure_ascii=False))


def run_evaluation(args, sets):
    """Plain evaluation (--task base included): the table, and the numbers in --out."""
    results = evaluate_model(args, args.model, sets)
    print(format_table(results, args.task))
    if args.task != "base":  # the base's columns are skills, and there is no Fake among them
        print(f"mean success without Fake: {average_except_fake(results):.3f}")
    if args.out:
        write_json(args.out, dict(task=args.task, model=args.model, label=args.label,
                                  average_except_fake=average_except_fake(results), variants=results, args=vars(args)))


def run_sweep(args, sets):
    """--sweep RUN_DIR: every RUN_DIR/step_N evaluated, the best by best_point; --out written after each
    (a stopped sweep run again with the same --out and settings keeps its steps); one that does not load
    is named and skipped."""
    steps = sweep_checkpoints(args.sweep)
    if not steps:
        raise UserError(f"no step_N checkpoints in {args.sweep}")
    done, curve, skipped = earlier_sweep(args), [], []
    for step, path in steps:
        if (step, path) in done:
            curve.append(done[step, path])
            print(f"step {step}: mean success without Fake {curve[-1]['average']:.3f} (kept from {args.out})")
            continue
        try:
            model = load_model(path, args.dtype, args.device)
        except Exception as e:  # a truncated or corrupt checkpoint costs its own point, not the sweep
            skipped.append(dict(step=step, path=path, error=f"{type(e).__name__}: {e}"[:300]))
            print(f"step {step}: {path} does not load ({skipped[-1]['error']}): skipped", file=sys.stderr)
        else:
            results = evaluate_model(args, path, sets, model)
            curve.append(dict(step=step, path=path, average=average_except_fake(results), results=results))
            print(f"step {step}: mean success without Fake {curve[-1]['average']:.3f}")
        if args.out and curve:  # after every checkpoint, so that a stopped sweep keeps what it measured
            best = best_point(curve)
            write_json(args.out, dict(task=args.task, run=args.sweep, label=args.label, best=best["path"],
                                      best_step=best["step"], curve=curve, args=vars(args),
                                      **({"skipped": skipped} if skipped else {})))
    if not curve:
        raise UserError(f"no checkpoint of {args.sweep} loads: {'; '.join(s['path'] for s in skipped)}")
    best = best_point(curve)
    print(f"\nbest: {best['path']} (mean success without Fake {best['average']:.3f})\n")
    print(format_table(best["results"], f"{args.task} step {best['step']}"))


def best_point(curve):
    """The paper's rule: the best mean success without Fake, the earlier step on a tie."""
    return max(curve, key=lambda c: (c["average"], -c["step"]))


SWEEP_SETTINGS = ("task", "data", "variants", "limit", "temperature", "top_p", "seed", "max_new_tokens", "max_turns",
                  "dtype", "sweep")


def earlier_sweep(args):
    """{(step, path): curve point} of a stopped sweep in --out made with the same settings, else {}."""
    try:
        with open(args.out, encoding="utf-8") as f:
            old = json.load(f)
        same = all(old["args"].get(k) == getattr(args, k) for k in SWEEP_SETTINGS)
        return {(c["step"], c["path"]): c for c in old["curve"]} if same else {}
    except (TypeError, OSError, ValueError, KeyError, AttributeError):
        return {}


def sweep_checkpoints(run_dir):
    """[(step, path)] of RUN_DIR's step_N/ checkpoints and its final/ (at the run's last step), by step."""
    steps = common.step_dirs(run_dir)
    final = os.path.join(run_dir, "final")
    if os.path.isfile(os.path.join(final, "trainer_state.pt")):
        try:
            state = torch.load(os.path.join(final, "trainer_state.pt"), map_location="cpu", mmap=True,
                               weights_only=False)
            steps.append((int(state["step"]), final))
        except Exception as e:  # unreadable: the step_N checkpoints are still swept
            print(f"{final}/trainer_state.pt does not load ({type(e).__name__}): final/ left out", file=sys.stderr)
    return steps


def report_file_table(task, paths):
    """The table `eval.py --report PATHS` prints."""
    return format_report(task, *read_report_rows(task, paths, with_checkpoints=True))


def run_report(args):
    """--report FILES: one table from --out / --sweep files, no model needed; --plot draws it too."""
    rows, checkpoints = read_report_rows(args.task, args.report, with_checkpoints=True)
    make_out_dirs(args.plot, args.plot_curves)
    if args.plot_curves:  # refused before anything is written
        sweeps = [json.load(open(path, encoding="utf-8")) for path in args.report]
        sweeps = [s for s in sweeps if isinstance(s, dict) and s.get("curve")]
        if not sweeps:
            raise UserError("--plot-curves: none of the --report files is an --sweep file (with a curve)")
        logs = [read_jsonl(path) for path in args.logs or ()]
        if len(logs) > len(sweeps):
            raise UserError(f"--logs: {len(logs)} logs for {len(sweeps)} --sweep files (one a sweep, in order)")
    print(format_report(args.task, rows, checkpoints))
    if args.plot:
        plot_report(args.task, rows, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.plot_curves:
        plot_curves(sweeps, args.plot_curves, logs)
        print(f"wrote {args.plot_curves}", file=sys.stderr)


def run_distill(args):
    """--distill: the teacher's first correct reply to each prompt of DATA/TASK/--distill-from.jsonl, as SFT records."""
    path = os.path.join(args.data, args.task, f"{args.distill_from}.jsonl")
    records = read_jsonl(path)
    if not records:
        raise UserError(f"no records in {path}")
    make_out_dirs(args.out)
    model, tokenizer = load_model(args.model, args.dtype, args.device), load_tokenizer(args.model)
    kept, share = distill(model, tokenizer, records, samples=args.samples, max_new_tokens=args.max_new_tokens,
                          seed=args.seed)
    out = args.out or os.path.join(args.data, args.task, "train_distilled_cot.jsonl")
    common.write_jsonl(out, kept)
    print(f"distilled {len(kept)} of {len(records)} prompts ({share:.1%} kept) -> {out}")


if __name__ == "__main__":
    common.run_cli(main, "eval.py")
