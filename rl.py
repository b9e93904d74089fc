r"""Reinforcement learning on the study's rewards: GRPO (the paper's "RL (warm)" baseline) and PPO.

A step (main's loop): `--group-size` replies to each of this rank's share of `--prompts-per-step`
prompts from eval.py's KV-cached sampler, scored by eval.py's `reward`; the log-probs of the policy
that sampled and of the frozen reference; per-token advantages (GRPO: relative to the group; PPO: GAE
with a value head); `--ppo-epochs` passes of one optimizer step per mini-batch on the clipped
objective (grpo_loss, ppo_loss). `--model` is a Hugging Face directory, e.g. an SFT run's final/.

    # CPU demo (a tiny SFT model, 2 cores)
    python make_data.py --out data --scale small --style compact
    python sft.py --model tiny --data data/sokoban/train_cot.jsonl --out runs/sok-sft --max-steps 20 --batch-size 16
    python rl.py --algo grpo --model runs/sok-sft/final --data data/sokoban/rl.jsonl --out runs/sok-rl \
        --dtype fp32 --prompts-per-step 8 --group-size 4 --max-new-tokens 64 --lr 1e-4 --max-steps 5
    # one GPU, the paper's GRPO baseline (defaults: 256 prompts x 8 samples, lr 1e-6, clip 0.2)
    python rl.py --algo grpo --model runs/sok-cot-warm/final --data data/sokoban/rl.jsonl --out runs/sok-rl
    # one node, 8 GPUs
    torchrun --standalone --nproc_per_node=8 rl.py --algo ppo --model runs/gp-cot-warm/final \
        --data data/gpoints/rl.jsonl --out runs/gp-ppo
    # one node, 8 GPUs, a 7-8B policy: its weights, grads and AdamW state sharded (FSDP2)
    torchrun --standalone --nproc_per_node=8 rl.py --algo grpo --model runs/q7-sokoban-cot-warm/final --fsdp \
        --data data/sokoban/rl.jsonl --out runs/q7-sokoban-rl
    # 2 CPU processes (gloo), e.g. to check DDP or FSDP
    torchrun --standalone --nproc_per_node=2 rl.py --model ... --data ... --out ... --dtype fp32 [--fsdp]

Outputs as in sft.py: OUT/config.json, OUT/log.jsonl, OUT/step_N/ and OUT/final/ (PPO adds
value_head.pt); the memory plan per process is printed at start; `--resume` continues exactly; bad
input is one line `rl.py: error: ...` (exit 2) before any work; SIGTERM / Ctrl-C save OUT/step_N/
after the step and exit with 128 + the signal.
"""
import argparse
import contextlib
import json
import math
import os
import random
import time
from dataclasses import astuple, dataclass, fields, replace
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from tqdm import tqdm

import common
import sft
from common import (UserError, ArgumentParser, file_fingerprint, latest_checkpoint, run_cli, read_jsonl, refuse,
                    setup_distributed, all_reduce_sum, grad_sync, fsdp_shard, autocast_ctx, fused_adamw, resolve_model,
                    load_tokenizer, load_model, save_checkpoint, load_trainer_state, check_out_dir, check_run_dir,
                    prepare_run_dir, start_run_files, log_step, StopSignal, finish_run)
from eval import ENV_EVALUATORS, check_prompt_record, is_correct, model_replies, reward, sample

# -----------------------------------------------------------------------------
# arguments


def get_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data and model")
    g.add_argument("--model", required=True, help="model directory (an SFT run's final/), a hub id, or 'smollm2'")
    g.add_argument("--data", required=True, help="RL prompt JSONL: {'messages': [user turn], 'meta': {...}}")
    g.add_argument("--out", required=True, help="output directory: config.json, log.jsonl, step_N/, final/")
    g.add_argument("--max-new-tokens", type=int, default=1024, help="longest reply in tokens; longer ones are cut")
    g.add_argument("--stop", nargs="*", default=[], help="stop strings that end a reply besides the EOS (default none)")
    g = p.add_argument_group("algorithm (defaults: the paper's GRPO baseline)")
    g.add_argument("--algo", choices=["grpo", "ppo"], default="grpo", help="group-relative advantages, or value + GAE")
    g.add_argument("--prompts-per-step", type=int, default=256, help="prompts per step over all ranks")
    g.add_argument("--group-size", type=int, default=8, help="samples per prompt (GRPO needs >= 2)")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; log-probs use the same one")
    g.add_argument("--clip", type=float, default=0.2, help="clip range of the importance ratio")
    g.add_argument("--kl-coef", type=float, default=0.0, help="k3 KL to the initial model: GRPO loss / PPO reward")
    g.add_argument("--entropy-coef", type=float, default=0.0, help="weight of the entropy bonus")
    g.add_argument("--ppo-epochs", type=int, default=1, help="passes over each step's samples")
    g.add_argument("--mini-batch-size", type=int, default=0, help="sequences per update, all ranks (0: the step)")
    g.add_argument("--adv-eps", type=float, default=1e-6, help="GRPO: added to the group std of the rewards")
    g.add_argument("--dynamic-sampling", type=int, default=0, metavar="DRAWS",
                   help="GRPO: replace groups whose replies all score the same with groups of new prompts, from up "
                   "to DRAWS more draws a step (DAPO's dynamic sampling, not the paper's GRPO; 0: off)")
    g = p.add_argument_group("PPO value head")
    g.add_argument("--vf-coef", type=float, default=0.5, help="weight of the value loss")
    g.add_argument("--vf-lr", type=float, default=1e-5, help="learning rate of the value head (the trunk: --lr)")
    g.add_argument("--value-clip", type=float, default=0.2, help="clip range of the values around the sampling ones")
    g.add_argument("--gamma", type=float, default=1.0, help="discount over response tokens")
    g.add_argument("--lam", type=float, default=0.95, help="GAE lambda")
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=1e-6, help="constant learning rate of the policy")
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    g.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm to this (0: no clip)")
    g.add_argument("--max-steps", type=int, default=200, help="RL steps")
    g.add_argument("--micro-batch-size", type=int, default=8, help="sequences per forward/backward on one rank")
    g.add_argument("--pad-multiple", type=int, default=32, help="round batch lengths up to a multiple of this (1: no)")
    g.add_argument("--sample-batch-rows", type=int, default=0, help="most rows the sampler decodes at once (0: all)")
    g = p.add_argument_group("system")
    g.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="autocast dtype (weights stay fp32)")
    g.add_argument("--fsdp", action="store_true", help="shard weights, grads and optimizer over ranks (FSDP2)")
    g.add_argument("--seed", type=common.seed, default=0, help="seed of the prompt order and of every sample")
    common.add_run_flags(g, default_log_every=1)
    g.add_argument("--eval-every", type=int, default=0, help="evaluate on --eval-data every this many steps")
    g.add_argument("--eval-data", nargs="*", default=[], help="evaluation JSONL files (make_data.py's eval_*.jsonl)")
    g.add_argument("--eval-limit", type=int, default=16, help="records per evaluation file")
    g.add_argument("--eval-temperature", type=float, default=0.5, help="sampling temperature of the evaluation")
    return p


def check_args(args, world):
    """Reject incompatible settings before anything is loaded; returns the global mini-batch size."""
    batch = args.prompts_per_step * args.group_size
    mini = args.mini_batch_size or batch
    refuse([
        (min(args.prompts_per_step, args.group_size, args.ppo_epochs, args.micro_batch_size, args.max_new_tokens,
             args.max_steps) < 1,
         "--prompts-per-step, --group-size, --ppo-epochs, --micro-batch-size, --max-new-tokens and --max-steps "
         "must be >= 1"),
        (min(args.mini_batch_size, args.sample_batch_rows, args.save_every, args.stop_after, args.eval_every) < 0,
         "--mini-batch-size, --sample-batch-rows, --save-every, --stop-after and --eval-every must be >= 0"),
        (min(args.eval_limit, args.log_every, args.pad_multiple) < 1,
         "--eval-limit, --log-every and --pad-multiple must be >= 1"),
        (args.algo == "grpo" and args.group_size < 2,
         f"--algo grpo needs --group-size >= 2 (got {args.group_size}): advantages are relative to the group"),
        (args.prompts_per_step % world,
         f"--prompts-per-step {args.prompts_per_step} must be divisible by the number of ranks {world}"),
        (mini > 0 and batch % mini,
         f"--mini-batch-size {mini} must divide the step's {batch} sequences (--prompts-per-step x --group-size)"),
        (mini % world, f"--mini-batch-size {mini} must be divisible by the number of ranks {world}"),
        (args.temperature <= 0, "--temperature must be > 0 (log-probs are those of the sampling distribution)"),
        (args.eval_temperature < 0, "--eval-temperature must be >= 0 (0 is greedy)"),
        (not (args.lr > 0 and args.vf_lr > 0), "--lr and --vf-lr must be > 0"),
        (not (args.clip > 0 and args.value_clip > 0), "--clip and --value-clip must be > 0"),
        (min(args.kl_coef, args.entropy_coef, args.weight_decay, args.grad_clip, args.vf_coef, args.adv_eps) < 0,
         "--kl-coef, --entropy-coef, --weight-decay, --grad-clip, --vf-coef and --adv-eps must be >= 0"),
        (not (0 < args.gamma <= 1 and 0 <= args.lam <= 1), "--gamma must be in (0, 1] and --lam in [0, 1]"),
        (args.algo == "grpo" and (args.vf_coef != 0.5 or args.vf_lr != 1e-5 or args.gamma != 1.0 or args.lam != 0.95),
         "--vf-coef/--vf-lr/--gamma/--lam are PPO flags; GRPO has no value head"),
        (args.eval_every and not args.eval_data, "--eval-every needs --eval-data"),
        (args.dynamic_sampling < 0, "--dynamic-sampling must be >= 0 (0: off)"),
        (args.dynamic_sampling and args.algo != "grpo",
         "--dynamic-sampling drops groups without reward variance: a GRPO flag"),
        (args.fsdp and world == 1, "--fsdp shards over ranks: run it under torchrun with more than one process"),
        (args.resume and args.overwrite, "--resume continues OUT's run and --overwrite deletes it: pass one of them"),
    ])
    return mini

# -----------------------------------------------------------------------------
# the maths, as pure functions (B: sequences, G: groups, K: group size, R: response tokens, N: tokens)


def group_advantages(rewards_B, group_size, eps=1e-6):
    """(adv_B, zero_var_G): (r - group mean) / (group std + eps), std unbiased as in verl's GRPO, over
    consecutive groups of rows; a group whose rewards are all equal gets advantage 0 exactly."""
    r_GK = rewards_B.view(-1, group_size).double()
    mean_G1, std_G1 = r_GK.mean(1, keepdim=True), r_GK.std(1, keepdim=True)
    zero_var_G = (r_GK == r_GK[:, :1]).all(1)
    adv_GK = torch.where(zero_var_G[:, None], 0.0, (r_GK - mean_G1) / (std_G1 + eps))
    return adv_GK.view(-1).to(rewards_B.dtype), zero_var_G


def k3_kl(logp, ref_logp):
    """Per-token k3 estimate of KL(policy || reference) from samples of the policy (Schulman):
    exp(ref - logp) - (ref - logp) - 1, non-negative, unbiased, low variance."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def clipped_surrogate(logp, old_logp, adv, clip):
    """(loss, ratio, clipped): PPO's per-token pessimistic objective, as a loss to minimise."""
    ratio = torch.exp(logp - old_logp)
    loss_unclipped, loss_clipped = -adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)
    return torch.maximum(loss_unclipped, loss_clipped), ratio, loss_clipped > loss_unclipped


def token_entropy(logits_NV):
    logp_NV = F.log_softmax(logits_NV.float(), -1)
    return -(logp_NV.exp() * logp_NV).sum(-1)


def ppo_token_rewards(score_B, kl_BR, mask_BR, kl_coef):
    """Per-token rewards: -kl_coef * KL estimate on every response token, the score on the last one."""
    rewards_BR = -kl_coef * kl_BR * mask_BR
    last_B = mask_BR.long().sum(1) - 1
    return rewards_BR.index_put((torch.arange(len(score_B)), last_B), score_B, accumulate=True)


def gae(rewards_BR, values_BR, mask_BR, gamma, lam):
    """(adv_BR, returns_BR): generalised advantage estimation over each row's response tokens (a
    right-padded prefix of mask_BR); the value after the last token is 0 (the episode ends)."""
    B, R = rewards_BR.shape
    adv_BR = torch.zeros_like(rewards_BR)
    next_value_B, next_adv_B = torch.zeros(B, dtype=rewards_BR.dtype), torch.zeros(B, dtype=rewards_BR.dtype)
    for t in reversed(range(R)):
        m_B = mask_BR[:, t].to(rewards_BR.dtype)
        delta_B = rewards_BR[:, t] + gamma * next_value_B - values_BR[:, t]
        next_adv_B = (delta_B + gamma * lam * next_adv_B) * m_B
        next_value_B = values_BR[:, t] * m_B
        adv_BR[:, t] = next_adv_B
    return adv_BR, (adv_BR + values_BR) * mask_BR


def clipped_value_loss(values, old_values, returns, clip):
    """Per-token 0.5 * max((v - R)^2, (v_clipped - R)^2), v_clipped within old +- clip."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)


def whiten(x, mask, mean, var, eps=1e-8):
    """(x - mean) / sqrt(var + eps) on the mask, 0 elsewhere; mean and var are those of all ranks."""
    return (x - mean) * torch.rsqrt(torch.as_tensor(var + eps, dtype=x.dtype)) * mask

# -----------------------------------------------------------------------------
# the objectives: what one micro-batch's backward minimises (per-token tensors, N = its response tokens)


def grpo_loss(logp_N, old_logp_N, adv_N, ref_logp_N, entropy_N, *, clip, kl_coef, entropy_coef, scale):
    r"""GRPO's objective as a loss, for the response tokens o_{i,t} of one micro-batch:

        loss = scale * sum_{i,t} [ max(-A_i rho_it, -A_i clip(rho_it, 1 - eps, 1 + eps))     clipped surrogate
                                   + beta (exp(d_it) - d_it - 1) ]                            k3 KL to the reference
               - scale * c_H * sum_{i,t} H_it                                                 entropy bonus

        A_i = (R_i - mean_group R) / (std_group R + eps_adv)   (group_advantages, on every token of reply i)
        rho_it = exp(logp_it - old_logp_it)   (pi_theta / pi_old: 1 on the first update of a step)
        d_it = ref_logp_it - logp_it          (log pi_ref / pi_theta; KL term only with --kl-coef)
        scale = world / (response tokens of the whole mini-batch on all ranks)   (sft.step_loss_scale)

    eps = --clip, beta = --kl-coef, c_H = --entropy-coef. `scale` weighs every response token of the
    mini-batch the same (DAPO's token-level mean, not GRPO's per sequence), however it is split into
    micro-batches and ranks; `world` undoes DDP's mean over ranks. Returns (loss, the per-token terms)."""
    pg_N, ratio_N, clipped_N = clipped_surrogate(logp_N, old_logp_N, adv_N, clip)
    loss = pg_N.sum()
    if entropy_coef:
        loss = loss - entropy_coef * entropy_N.sum()
    kl_N = None
    if ref_logp_N is not None:
        kl_N = k3_kl(logp_N, ref_logp_N)
        loss = loss + kl_coef * kl_N.sum()
    return loss * scale, dict(pg_N=pg_N, ratio_N=ratio_N, clipped_N=clipped_N, kl_N=kl_N)


def ppo_loss(logp_N, old_logp_N, adv_N, values_N, old_values_N, returns_N, entropy_N, *, clip, value_clip, vf_coef,
             entropy_coef, scale):
    r"""PPO's objective as a loss, for the response tokens of one micro-batch:

        loss = scale * sum_t [ max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps))      clipped surrogate
                               + c_V 0.5 max((V_t - G_t)^2, (V_t^clip - G_t)^2) ]      clipped value loss
               - scale * c_H * sum_t H_t                                               entropy bonus

    with A_t the whitened GAE advantages, G_t = A_t + V_old_t the returns (gae) and V_t^clip within
    V_old_t +- --value-clip. The KL to the reference is a per-token reward here (ppo_token_rewards),
    not a loss term; `scale` as in grpo_loss. Returns (loss, the per-token terms)."""
    pg_N, ratio_N, clipped_N = clipped_surrogate(logp_N, old_logp_N, adv_N, clip)
    loss = pg_N.sum()
    if entropy_coef:
        loss = loss - entropy_coef * entropy_N.sum()
    vf_N = clipped_value_loss(values_N, old_values_N, returns_N, value_clip)
    loss = loss + vf_coef * vf_N.sum()
    return loss * scale, dict(pg_N=pg_N, ratio_N=ratio_N, clipped_N=clipped_N, vf_N=vf_N)

# -----------------------------------------------------------------------------
# the model: the language model, plus a value head on its last hidden state for PPO


class Policy(nn.Module):
    """forward(ids_BT, kept_BT) -> (logits_KV, values_K or None) at the `kept_BT` positions; the LM and
    the head in one module, so that DDP all-reduces both in one backward."""

    def __init__(self, lm, value_head=None):
        super().__init__()
        self.lm, self.value_head = lm, value_head

    def forward(self, ids_BT, kept_BT):
        # right padding + causal attention: real tokens never see the pads, so no attention mask.
        # Always through the LM's own forward, which under FSDP is what gathers its weights.
        if self.value_head is None:
            return self.lm(input_ids=ids_BT, logits_to_keep=kept_BT).logits, None
        out = self.lm(input_ids=ids_BT, logits_to_keep=kept_BT, output_hidden_states=True)
        h_KH = out.hidden_states[-1][kept_BT]  # the last hidden state, after the final norm
        return out.logits, self.value_head(h_KH).squeeze(-1).float()


def response_logprobs(model, mb, temperature, dtype):
    """(logp_N, logits_NV, values_N) of a MicroBatch's response tokens, rows in order; log-probs under
    log_softmax(logits / T), as the sampler computes them."""
    with autocast_ctx(mb.ids_BT.device, dtype):
        logits_KV, values_K = model(mb.ids_BT, mb.kept_BT)
    logits_NV, values_N = logits_KV[mb.real_K], None if values_K is None else values_K[mb.real_K]
    logits_NV = logits_NV.float() / temperature
    return -F.cross_entropy(logits_NV, mb.targets_N, reduction="none"), logits_NV, values_N


@dataclass
class Models:
    """What rl.py samples with and trains."""
    lm: nn.Module  # the language model; the sampler gets it without DDP's wrapper (under FSDP: in full_weights)
    ref: Policy  # the frozen initial model (--kl-coef), or None
    head: nn.Module  # PPO's value head, or None
    policy: Policy  # lm + head in one module
    model: nn.Module  # policy, DDP-wrapped on several ranks (the loss forward goes through it: backward all-reduces);
    #                   under FSDP the policy itself, whose LM, reference and head are sharded
    params: list  # the trained parameters (lm and head)
    optimizer: torch.optim.Optimizer
    head_optimizer: torch.optim.Optimizer  # or None


def build_models(args, resume_from, world, local_rank, device):
    """The policy (from the checkpoint when resuming), the frozen reference, PPO's value head, the DDP
    wrapper or FSDP's shards, and the optimizers."""
    # fp32 master weights, autocast does the rest. Dropout: every module stays in eval mode for the
    # whole run, the loss forwards included (autograd does not need train mode), so the forward that
    # computes the loss is the forward that sampled.
    lm = load_model(resume_from or args.model, "fp32", device).eval()
    lm.config.use_cache = False
    ref_lm = load_model(args.model, "fp32", device).eval().requires_grad_(False) if args.kl_coef > 0 else None
    head = None
    if args.algo == "ppo":
        head = nn.Linear(lm.config.hidden_size, 1)
        nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)  # starts at V = 0, no gradient into the trunk
        head = head.to(next(lm.parameters()).device)
    policy = Policy(lm, head).eval()
    model = policy
    if args.fsdp:  # FSDP2, as sft.py: each decoder layer, then the LM (the root the sampler calls); the head apart
        from torch.distributed.fsdp import fully_shard
        fsdp_shard(lm, reshard_after_forward=False)  # the policy keeps its root's weights from forward to backward
        if ref_lm is not None:
            fsdp_shard(ref_lm)  # the reference has no backward
        if head is not None:
            fully_shard(head)
    elif world > 1:
        model = torch.nn.parallel.DistributedDataParallel(policy,
                                                          device_ids=[local_rank] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(lm.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                  **fused_adamw(args.fsdp))
    head_optimizer = torch.optim.AdamW(head.parameters(), lr=args.vf_lr, weight_decay=0.0) if head is not None else None
    params = [p for p in policy.parameters() if p.requires_grad]
    ref = Policy(ref_lm) if ref_lm is not None else None
    return Models(lm, ref, head, policy, model, params, optimizer, head_optimizer)


@contextlib.contextmanager
def full_weights(lm, fsdp):
    """The LM's whole weights on every rank while the block runs: under --fsdp its shards are gathered
    once for the rollouts (rather than layer by layer at every decoded token) and freed on exit.
    Collective: every rank enters it."""
    if not fsdp:
        yield
        return
    layers = list(lm.model.layers)
    for layer in layers:
        layer.set_reshard_after_forward(False)
    for module in layers + [lm]:
        module.unshard()
    try:
        yield
    finally:
        for layer in layers:
            layer.set_reshard_after_forward(True)
        for module in layers + [lm]:
            module.reshard()

# -----------------------------------------------------------------------------
# data: prompts, which prompts a step uses, micro-batches of rows


def read_prompts(args):
    """The RL prompts, refusing too few of them for a step and empty --eval-data files."""
    records = read_jsonl(args.data, check=check_prompt_record)
    if not records:
        raise UserError(f"no records in {args.data}")
    if args.prompts_per_step > len(records):
        raise UserError(f"--prompts-per-step {args.prompts_per_step} is more than the {len(records)} prompts of "
                        f"{args.data} (a step would repeat prompts): pass at most {len(records)}")
    for path in args.eval_data:
        if not read_jsonl(path, check=check_prompt_record):
            raise UserError(f"no records in {path}")
    return records


def run_identity(args, task, n_prompts):
    """What makes OUT's run the run it is: another run's OUT is refused without --overwrite."""
    identity = dict(data=args.data, data_sha256=file_fingerprint(args.data), model=args.model, algo=args.algo,
                    task=task)
    if args.resume:  # the prompt stream a resumed run recomputes
        identity.update(seed=args.seed, prompts_per_step=args.prompts_per_step, group_size=args.group_size,
                        n_prompts=n_prompts)
    return identity


def step_prompts(n_records, prompts_per_step, seed, step):
    """Record indices of a step: a stream of seeded permutations of the data, cut into steps.
    A pure function of (seed, step), so resuming at a step needs no data position."""
    perms, out = {}, []
    for i in range(step * prompts_per_step, (step + 1) * prompts_per_step):
        epoch, j = divmod(i, n_records)
        if epoch not in perms:
            perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n_records)
        out.append(int(perms[epoch][j]))
    return out


class MicroBatch(NamedTuple):
    ids_BT: torch.Tensor  # prompt + response, right-padded
    kept_BT: torch.Tensor  # the positions the output layer runs on: before each response token, and a few more
    real_K: object  # which kept positions are before a response token: x_K[real_K] (a bool index, or slice(None))
    targets_N: torch.Tensor  # the response tokens, rows in order


def collate(ro, rows, pad_id, device, multiple=1):
    """The MicroBatch of rows `rows` of a rollout (anything with .prompt and .response token lists); its
    length and kept positions rounded up to a multiple of `multiple` (sft.pad_length, sft.pad_kept)."""
    seqs = [ro.prompt[i] + ro.response[i] for i in rows]
    T = sft.pad_length(max(len(s) for s in seqs), multiple)
    ids_BT = torch.full((len(rows), T), pad_id, dtype=torch.long)
    resp_mask_BT = torch.zeros((len(rows), T), dtype=torch.bool)
    for b, (i, s) in enumerate(zip(rows, seqs)):
        ids_BT[b, :len(s)] = torch.tensor(s)
        resp_mask_BT[b, len(ro.prompt[i]):len(s)] = True
    ids_BT = ids_BT.to(device)
    keep_BT, targets_N = sft.supervised_positions(ids_BT, resp_mask_BT.to(device))
    return MicroBatch(ids_BT, *sft.pad_kept(keep_BT, multiple), targets_N)


def split_rows(rows, size):
    return [rows[j:j + size] for j in range(0, len(rows), size)]


def scatter(chunks_N, mask_BR):
    """Per-token vectors of consecutive rows as one (B, R) tensor on CPU, 0 off the mask."""
    x_BR = torch.zeros(mask_BR.shape, dtype=chunks_N[0].dtype)
    x_BR[mask_BR] = torch.cat(chunks_N).cpu()
    return x_BR

# -----------------------------------------------------------------------------
# checkpoints: save_checkpoint for the LM and its optimizer, plus the value head for PPO

FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors on rank 0, as save_checkpoint


def save_rl_checkpoint(run, name, step):
    """OUT/name/: the LM, its optimizer and (PPO) the value head; collective, every rank calls it."""
    # the value head is written before save_checkpoint writes trainer_state.pt (what marks a
    # checkpoint complete for --resume), so a complete step_N/ always has its head
    args, models, master = run.args, run.models, run.rank == 0
    pending = os.path.join(args.out, f".{name}.value_head.pt")
    if models.head is not None:  # full tensors (gathered from FSDP's shards) on rank 0
        head, optimizer = get_state_dict(models.head, models.head_optimizer, options=FULL_STATE)
        if master:
            os.makedirs(args.out, exist_ok=True)
            torch.save({"head": head, "optimizer": optimizer}, pending)
    save_checkpoint(args.out, name, models.lm, run.tokenizer, models.optimizer, None, step, args, run.rank)
    if models.head is not None and master:
        os.replace(pending, os.path.join(args.out, name, "value_head.pt"))


def resume_training(models, resume_from, out_dir, device):
    """The optimizer state (and PPO's value head, in the checkpoint or still pending beside it) of a
    checkpoint; returns its step."""
    state = load_trainer_state(resume_from, models.lm, models.optimizer)
    if models.head is not None:
        path = os.path.join(resume_from, "value_head.pt")
        if not os.path.isfile(path):
            path = os.path.join(out_dir, f".{os.path.basename(resume_from)}.value_head.pt")
        saved = torch.load(path, map_location=device, weights_only=False)
        set_state_dict(models.head, models.head_optimizer, model_state_dict=saved["head"],
                       optim_state_dict=saved["optimizer"], options=StateDictOptions(full_state_dict=True))
    return state["step"]


def check_replicas(params, world, device, master):
    """DDP keeps replicas identical; say so rather than assume it."""
    checksum = torch.tensor([float(sum(p.detach().double().sum() for p in params))], dtype=torch.float64, device=device)
    all_sums = [torch.zeros_like(checksum) for _ in range(world)]
    dist.all_gather(all_sums, checksum)
    if master:
        print(f"ranks in sync: {all(torch.equal(all_sums[0], c) for c in all_sums)}")

# -----------------------------------------------------------------------------
# setup: refuse bad input, then load the prompts and build the models


@dataclass
class Run:
    """What setup() resolves and the loop reads."""
    args: argparse.Namespace  # the flags, --model resolved to a directory
    rank: int
    world: int
    device: torch.device
    tokenizer: object
    prompts: list  # every record's prompt token ids
    metas: list  # every record's meta, what the rewards read
    models: Models
    local_mini: int  # rows of a mini-batch on this rank
    prepass: bool  # whether a no-grad pass records the old log-probs
    start_step: int  # 0, or the step of the checkpoint resumed from
    reward_fn: object  # reward(reply, meta), eval.py's unless a test injects one
    correct_fn: object  # is_correct(reply, meta), likewise


def setup(args, reward_fn, correct_fn):
    """Refuse bad input before any work, build the models (restored with --resume), write OUT/config.json."""
    rank, world, local_rank, device = setup_distributed()
    master = rank == 0
    mini = check_args(args, world)
    random.seed(args.seed), np.random.seed(args.seed), torch.manual_seed(args.seed)  # checkpoints save all three
    # the data and OUT are checked before any model is loaded or OUT is touched
    args = argparse.Namespace(**dict(vars(args), model=resolve_model(args.model)))  # 'smollm2' -> its directory
    check_out_dir(args.out, inputs=[args.data, args.model, *args.eval_data])  # --overwrite never deletes an input
    records = read_prompts(args)
    task = records[0]["meta"].get("task") if isinstance(records[0]["meta"], dict) else None
    resume_from = check_run_dir(args.out, run_identity(args, task, len(records)), args.resume, args.overwrite)
    tokenizer = load_tokenizer(args.model)  # a missing model is refused before OUT is touched
    prepare_run_dir(args.out, args.overwrite, master, world)
    prompts = sft.encode_prompts(tokenizer, [r["messages"] for r in records])  # one batched tokenizer call

    models = build_models(args, resume_from, world, local_rank, device)
    start_step = resume_training(models, resume_from, args.out, device) if resume_from else 0
    updates = args.ppo_epochs * (args.prompts_per_step * args.group_size // mini)
    config = dict(vars(args), task=task, data_sha256=file_fingerprint(args.data), threads=torch.get_num_threads(),
                  resume_from=resume_from, world_size=world,
                  mini_batch_size_resolved=mini, updates_per_step=updates, n_prompts=len(records),
                  n_params=sum(p.numel() for p in models.params), longest_prompt=max(len(p) for p in prompts))
    if master:
        print(json.dumps(config, indent=1))
        print(memory_plan(args, models.lm.config, config["n_params"], world, config["longest_prompt"], device.type))
        start_run_files(args.out, config, start_step)
    # one update a step (GRPO's default) and neither a reference nor a value head: the policy being
    # updated is the one that sampled, so the update's own log-probs, detached, are the old ones and the
    # ratio is exactly 1. Otherwise a no-grad pre-pass records them (sampling_logprobs).
    prepass = updates > 1 or models.ref is not None or models.head is not None
    return Run(args, rank, world, device, tokenizer, prompts, [r["meta"] for r in records], models, mini // world,
               prepass, start_step, reward_fn, correct_fn)


def memory_plan(args, config, n_params, world, longest_prompt, device_type):
    """sft.memory_plan with what RL adds per process: the reference (--kl-coef; sharded under --fsdp),
    the full weights gathered for the rollouts (--fsdp) and the KV cache of the rows the sampler
    decodes at once: rows x (prompt + --max-new-tokens) x layers x 2 (K, V) x kv_heads x head_dim x bytes."""
    local, group = args.prompts_per_step // world, args.group_size
    prompts = min(local, max(1, args.sample_batch_rows // group)) if args.sample_batch_rows else local
    tokens = sft.pad_length(sft.pad_length(longest_prompt, args.pad_multiple) + args.max_new_tokens, args.pad_multiple)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_cache = (prompts * group * tokens * config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim
                * (4 if args.dtype == "fp32" else 2))
    extra = ([("reference", 4 * n_params / (world if args.fsdp else 1))] * (args.kl_coef > 0)
             + [("gathered weights", 4 * n_params)] * args.fsdp
             + [(f"KV cache ({prompts * group} rows x {tokens} tokens)", kv_cache)])
    return sft.memory_plan(n_params, world, args.fsdp, False, device_type, extra)

# -----------------------------------------------------------------------------
# the RL step: rollout -> old / reference log-probs -> advantages -> update -> log


@dataclass
class Rollout:
    """This rank's samples of one step, row i being reply i % K to prompt i // K, and the per-token
    (B, R) tensors the update reads (CPU; R: the longest reply), None until computed or where unused."""
    prompt: list  # token ids of each row's prompt
    response: list  # token ids of each reply
    text: list  # each reply, decoded
    sampler_logp: list  # the sampler's log-probs of each reply's tokens
    truncated: list  # whether the reply hit --max-new-tokens
    reward: list
    correct: list
    mask_BR: torch.Tensor  # the response tokens
    score_B: torch.Tensor  # the rewards
    old_logp_BR: torch.Tensor = None  # the policy that sampled (None: the update's own forward, detached)
    ref_logp_BR: torch.Tensor = None  # the frozen reference (--kl-coef)
    old_values_BR: torch.Tensor = None  # PPO: the values at sampling time
    adv_BR: torch.Tensor = None
    returns_BR: torch.Tensor = None  # PPO: the GAE returns


def rollout(run, idx, seed):
    """`group_size` scored replies to each of the records `idx`, from the sampler with the whole LM."""
    args, prompts = run.args, [run.prompts[i] for i in idx]
    with full_weights(run.models.lm, args.fsdp), autocast_ctx(run.device, args.dtype):
        out = sample(run.models.lm, prompts, n=args.group_size, max_new_tokens=args.max_new_tokens,
                     temperature=args.temperature, stop_strings=args.stop, tokenizer=run.tokenizer, seed=seed,
                     return_logprobs=True, max_batch_rows=args.sample_batch_rows or None,
                     pad_multiple=args.pad_multiple)
    metas_B = [run.metas[i] for i in idx for _ in range(args.group_size)]
    return make_rollout([p for p in prompts for _ in range(args.group_size)], out.ids, out.texts, out.logprobs,
                        out.truncated, [float(run.reward_fn(t, m)) for t, m in zip(out.texts, metas_B)],
                        [bool(run.correct_fn(t, m)) for t, m in zip(out.texts, metas_B)])


def make_rollout(prompt, response, text, sampler_logp, truncated, reward, correct):
    lengths = [len(r) for r in response]
    return Rollout(prompt=prompt, response=response, text=text, sampler_logp=sampler_logp, truncated=truncated,
                   reward=reward, correct=correct,
                   mask_BR=torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None],
                   score_B=torch.tensor(reward, dtype=torch.float32))


def step_rollout(run, idx, step, seed):
    """(rollout, zero-variance share of the step's prompts, groups sampled). With --dynamic-sampling DRAWS
    (DAPO), a group whose replies all score the same (no GRPO gradient) gives its place to a group of a new
    prompt: each draw samples as many new prompts as places are left (seeded by seed, step, rank, draw);
    places still left after the last draw keep such groups, so every rank's batch keeps its size."""
    args, K, n = run.args, run.args.group_size, len(idx)
    ro = rollout(run, idx, seed)
    if args.algo != "grpo":
        return ro, 0.0, n
    zero_var_G = group_advantages(ro.score_B, K)[1]
    share = zero_var_G.float().mean().item()
    if not args.dynamic_sampling:
        return ro, share, n
    groups, drawn = [(bool(z), ro, g) for g, z in enumerate(zero_var_G)], n  # (no variance, rollout, group)
    for draw in range(1, args.dynamic_sampling + 1):
        left = n - sum(not z for z, _, _ in groups)
        if left <= 0:
            break
        key = [args.seed, step, run.rank, draw]
        new_idx = np.random.default_rng(key).choice(len(run.prompts), min(left, len(run.prompts)), False)
        more = rollout(run, new_idx.tolist(), int(np.random.SeedSequence(key).generate_state(1)[0]))
        groups += [(bool(z), more, g) for g, z in enumerate(group_advantages(more.score_B, K)[1])]
        drawn += len(new_idx)
    rows = [(r, g * K + k) for _, r, g in sorted(groups, key=lambda t: t[0])[:n] for k in range(K)]  # stable
    columns = ("prompt", "response", "text", "sampler_logp", "truncated", "reward", "correct")
    return make_rollout(*[[getattr(r, c)[i] for r, i in rows] for c in columns]), share, drawn


@torch.no_grad()
def sampling_logprobs(run, ro):
    """The rollout with the log-probs of the policy that sampled (PPO: and its values) and of the
    reference, from one no-grad pass with the training micro-batches and dtype."""
    args, models = run.args, run.models
    logp, values, ref = [], [], []
    for rows in split_rows(list(range(len(ro.response))), args.micro_batch_size):
        mb = collate(ro, rows, run.tokenizer.pad_token_id, run.device, args.pad_multiple)
        logp_N, _, values_N = response_logprobs(models.policy, mb, args.temperature, args.dtype)
        logp.append(logp_N), values.append(values_N)
        if models.ref is not None:
            ref.append(response_logprobs(models.ref, mb, args.temperature, args.dtype)[0])
    return replace(ro, old_logp_BR=scatter(logp, ro.mask_BR), ref_logp_BR=scatter(ref, ro.mask_BR) if ref else None,
                   old_values_BR=scatter(values, ro.mask_BR) if models.head is not None else None)


def ppo_advantages(ro, args, world, device):
    """The rollout with PPO's advantages: GAE over per-token rewards (the score on the last token,
    -kl_coef x KL on each), whitened with the mean and variance over every rank's tokens."""
    mask_BR = ro.mask_BR
    kl_BR = ro.old_logp_BR - ro.ref_logp_BR if ro.ref_logp_BR is not None else torch.zeros(mask_BR.shape)
    rewards_BR = ppo_token_rewards(ro.score_B, kl_BR, mask_BR, args.kl_coef)
    adv_BR, returns_BR = gae(rewards_BR, ro.old_values_BR, mask_BR, args.gamma, args.lam)
    sums = [(adv_BR * mask_BR).sum().item(), (adv_BR ** 2 * mask_BR).sum().item(), mask_BR.sum().item()]
    total, total_sq, n_tokens = all_reduce_sum(sums, world, device)
    mean = total / n_tokens
    return replace(ro, adv_BR=whiten(adv_BR, mask_BR, mean, total_sq / n_tokens - mean ** 2), returns_BR=returns_BR)


def micro_batch_loss(run, ro, rows, scale):
    """The objective of rows `rows` (grpo_loss or ppo_loss) through run.models.model (the DDP wrapper
    on several ranks), and its per-token terms for the log."""
    args = run.args
    mb = collate(ro, rows, run.tokenizer.pad_token_id, run.device, args.pad_multiple)
    logp_N, logits_NV, values_N = response_logprobs(run.models.model, mb, args.temperature, args.dtype)
    mask_bR = ro.mask_BR[rows]
    tokens = lambda x_BR: x_BR[rows][mask_bR].to(run.device)  # a (B, R) buffer -> these rows' response tokens
    old_logp_N = logp_N.detach() if ro.old_logp_BR is None else tokens(ro.old_logp_BR)
    with (contextlib.nullcontext() if args.entropy_coef else torch.no_grad()):  # logged either way
        entropy_N = token_entropy(logits_NV)
    if args.algo == "grpo":
        ref_logp_N = tokens(ro.ref_logp_BR) if ro.ref_logp_BR is not None else None
        loss, terms = grpo_loss(logp_N, old_logp_N, tokens(ro.adv_BR), ref_logp_N, entropy_N, clip=args.clip,
                                kl_coef=args.kl_coef, entropy_coef=args.entropy_coef, scale=scale)
    else:
        loss, terms = ppo_loss(logp_N, old_logp_N, tokens(ro.adv_BR), values_N, tokens(ro.old_values_BR),
                               tokens(ro.returns_BR), entropy_N, clip=args.clip, value_clip=args.value_clip,
                               vf_coef=args.vf_coef, entropy_coef=args.entropy_coef, scale=scale)
    return loss, dict(terms, logp_N=logp_N.detach(), old_logp_N=old_logp_N, entropy_N=entropy_N)


@dataclass
class Stats:
    """This rank's sums over the step's trained tokens, for the log."""
    pg_loss: float = 0.0
    vf_loss: float = 0.0
    entropy: float = 0.0
    kl_ref: float = 0.0
    approx_kl: float = 0.0
    clip_frac: float = 0.0
    logp_sampler_diff: float = 0.0  # over the first mini-batch's tokens, trained by the policy that sampled
    tokens: float = 0.0
    first_tokens: float = 0.0

    def add(self, terms):  # one micro-batch's per-token terms
        if terms.get("kl_N") is not None:
            self.kl_ref += terms["kl_N"].sum().item()
        if "vf_N" in terms:
            self.vf_loss += terms["vf_N"].sum().item()
        self.pg_loss += terms["pg_N"].sum().item()
        self.entropy += terms["entropy_N"].sum().item()
        self.approx_kl += k3_kl(terms["old_logp_N"], terms["logp_N"]).sum().item()
        self.clip_frac += terms["clipped_N"].sum().item()
        self.tokens += len(terms["logp_N"])


def update(run, ro, seed):
    """--ppo-epochs passes over the rollout, each cut into mini-batches of run.local_mini rows; one
    optimizer step (global gradient norm clipped) per mini-batch. Returns (this rank's Stats, the grad
    norms, ratio_dev_first: the largest |ratio - 1| of the first mini-batch, 0 when all is well)."""
    args, models, world, device, B = run.args, run.models, run.world, run.device, len(ro.mask_BR)
    stats, grad_norms, ratio_dev_first = Stats(), [], None
    if args.algo == "ppo" and ro.ref_logp_BR is not None:  # the KL that entered the rewards
        stats.kl_ref = ((ro.old_logp_BR - ro.ref_logp_BR) * ro.mask_BR).sum().item()
    for epoch in range(args.ppo_epochs):
        # pass 0 keeps the rows in the pre-pass's order, so the first mini-batch's micro-batches are the
        # very tensors whose old log-probs were recorded (ratio exactly 1); later passes reshuffle
        order = list(range(B))
        if epoch:
            order = torch.randperm(B, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for start in range(0, B, run.local_mini):
            minibatch = order[start:start + run.local_mini]
            n_tokens, = all_reduce_sum([int(ro.mask_BR[minibatch].sum())], world, device)
            scale = sft.step_loss_scale(n_tokens, world)  # token-level averaging over the mini-batch, all ranks
            micro_batches = split_rows(minibatch, args.micro_batch_size)
            for k, rows in enumerate(micro_batches):
                # DDP all-reduces in the last micro-batch; FSDP reduce-scatters in each, so grads stay sharded
                with grad_sync(models.model, k == len(micro_batches) - 1):
                    loss, terms = micro_batch_loss(run, ro, rows, scale)
                    loss.backward()
                if epoch == 0 and start == 0:  # the policy has not moved yet: compare with the sampler
                    dev = (terms["ratio_N"].detach() - 1).abs().max().item()
                    ratio_dev_first = dev if ratio_dev_first is None else max(ratio_dev_first, dev)
                    sampler_N = torch.cat([ro.sampler_logp[i] for i in rows]).to(device)
                    stats.logp_sampler_diff += (terms["logp_N"] - sampler_N).abs().sum().item()
                    stats.first_tokens += len(terms["logp_N"])
                stats.add(terms)
            grad_norms.append(sft.full_value(torch.nn.utils.clip_grad_norm_(models.params,
                                                                            args.grad_clip or float("inf"))))
            for optimizer in (models.optimizer, models.head_optimizer):
                if optimizer is not None:
                    if math.isfinite(grad_norms[-1]):  # a non-finite norm: no update, and main stops the run
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
    return stats, grad_norms, ratio_dev_first


def log_row(run, step, ro, groups, learned, times, signum):
    """The step's log line, from sums over ranks: rewards per reply, token stats per trained token
    (first-pass stats per token of the step); and the all-reduced signal flag. `groups`: this rank's
    zero-variance shares (of its first draw, of the trained batch) and groups sampled."""
    args, (stats, grad_norms, ratio_dev_first) = run.args, learned
    B, (zero_var, zero_var_trained, drawn) = len(ro.response), groups
    G = B // args.group_size
    keys = [f.name for f in fields(stats)] + ["reward", "correct", "length", "truncated", "rows", "zero_var_groups",
                                              "zero_var_trained", "drawn", "step_tokens", "signalled"]
    sums = all_reduce_sum(list(astuple(stats)) + [
        sum(ro.reward), sum(ro.correct), sum(len(r) for r in ro.response), sum(ro.truncated), B,
        zero_var * G, zero_var_trained * G, drawn, float(ro.mask_BR.sum()), signum], run.world, run.device)
    total = dict(zip(keys, sums))
    per_token = lambda k: total[k] / max(total["tokens"], 1)
    kl_tokens = total["step_tokens"] if args.algo == "ppo" else total["tokens"]  # PPO's KL is the sampling policy's
    row = {"step": step + 1, "epoch": round((step + 1) * args.prompts_per_step / len(run.prompts), 3),
           "reward": total["reward"] / total["rows"], "accuracy": total["correct"] / total["rows"],
           "response_length": total["length"] / total["rows"], "truncated": total["truncated"] / total["rows"],
           "kl_ref": total["kl_ref"] / max(kl_tokens, 1), "approx_kl": per_token("approx_kl"),
           "clip_frac": per_token("clip_frac"), "entropy": per_token("entropy"), "pg_loss": per_token("pg_loss"),
           "grad_norm": float(np.mean(grad_norms)), "ratio_dev_first": ratio_dev_first,
           "logp_sampler_diff": total["logp_sampler_diff"] / max(total["first_tokens"], 1), "lr": args.lr,
           "sample_s": times[0], "learn_s": times[1]}
    if args.algo == "grpo":
        row["zero_var_groups"] = total["zero_var_groups"] / args.prompts_per_step
        if args.dynamic_sampling:  # the trained batch's share, and groups sampled per place
            row["zero_var_trained"] = total["zero_var_trained"] / args.prompts_per_step
            row["drawn_per_group"] = total["drawn"] / args.prompts_per_step
    else:
        row["vf_loss"] = per_token("vf_loss")
    return row, total["signalled"]


def log_line(row, args):
    extra = f"zero_var {row['zero_var_groups']:.2f}" if args.algo == "grpo" else f"vf_loss {row['vf_loss']:.4f}"
    if "drawn_per_group" in row:
        extra += f" (trained {row['zero_var_trained']:.2f}, drawn x{row['drawn_per_group']:.2f})"
    return (f"step {row['step']}/{args.max_steps} reward {row['reward']:.3f} acc {row['accuracy']:.3f} "
            f"len {row['response_length']:.1f} cut {row['truncated']:.2f} kl {row['kl_ref']:.4f} "
            f"clip {row['clip_frac']:.3f} ent {row['entropy']:.3f} gnorm {row['grad_norm']:.3f} {extra} "
            f"time {row['sample_s']:.1f}s+{row['learn_s']:.1f}s")

# -----------------------------------------------------------------------------
# evaluation hook (rank 0 only, the LM without DDP's wrapper; under FSDP, in full_weights)


def evaluate_now(run, step, ro):
    """--eval-every, on rank 0 (the others wait): print a few of the step's replies, then score each
    --eval-data file: the first move's accuracy, and eval.py's environment evaluation (multi-turn for
    Sokoban). Returns the scores ({} on the other ranks)."""
    with full_weights(run.models.lm, run.args.fsdp):
        scores = score_eval_data(run, step, ro) if run.rank == 0 else {}
        if run.world > 1:
            dist.barrier()
    return scores


def score_eval_data(run, step, ro):
    args, lm, tokenizer = run.args, run.models.lm, run.tokenizer
    lines = [f"--- step {step}: sampled replies"]
    for i in range(0, min(len(ro.text), 3 * args.group_size), args.group_size):
        lines.append(f"[reward {ro.reward[i]:+.1f}] {ro.text[i][:300]!r}")
    scores = {}
    for path in args.eval_data:
        records = read_jsonl(path, check=check_prompt_record)[:args.eval_limit]
        prompts = sft.encode_prompts(tokenizer, [r["messages"] for r in records])
        with autocast_ctx(run.device, args.dtype):
            texts = sample(lm, prompts, n=1, max_new_tokens=args.max_new_tokens, temperature=args.eval_temperature,
                           stop_strings=args.stop, tokenizer=tokenizer, seed=args.seed).texts
        name = os.path.splitext(os.path.basename(path))[0]
        correct = [run.correct_fn(t, r["meta"]) for t, r in zip(texts, records)]
        scores[f"{name}_first_move_acc"] = float(np.mean(correct))
        task = records[0]["meta"].get("task") if records else None
        if task in ENV_EVALUATORS:
            variant = records[0]["meta"]["variant"]
            replies = model_replies(lm, tokenizer, temperature=args.eval_temperature,
                                    max_new_tokens=args.max_new_tokens, stop_strings=args.stop)
            result = ENV_EVALUATORS[task](replies, {variant: records}, seed=args.seed, progress=False)[variant]
            scores.update({f"{name}_{k}": v for k, v in result.items() if isinstance(v, (int, float))})
    lines.append(" ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    tqdm.write("\n".join(lines))
    return scores

# -----------------------------------------------------------------------------
# the training loop


def main(argv=None, reward_fn=None, correct_fn=None):
    """Run RL; returns rank 0's log rows. `reward_fn(reply, meta)` / `correct_fn` default to eval.py's
    reward / is_correct (tests inject toy ones)."""
    run = setup(get_parser().parse_args(argv), reward_fn or reward, correct_fn or is_correct)
    args, rank, world, device = run.args, run.rank, run.world, run.device
    master, local = rank == 0, args.prompts_per_step // world
    rows_log, stopper, stop = [], StopSignal("rl.py"), False
    pbar = tqdm(range(run.start_step, args.max_steps), initial=run.start_step, total=args.max_steps,
                disable=not master, desc=args.algo)
    for step in pbar:
        t0 = time.time()
        # 1. rollouts: this rank's share of the step's prompts, `group_size` scored replies to each
        idx = step_prompts(len(run.prompts), args.prompts_per_step, args.seed, step)[rank * local:][:local]
        seed = int(np.random.SeedSequence([args.seed, step, rank]).generate_state(1)[0])
        ro, zero_var, drawn = step_rollout(run, idx, step, seed)
        t_sample = time.time() - t0
        # 2. old log-probs (PPO: and values) and the reference's, where the update needs them
        if run.prepass:
            ro = sampling_logprobs(run, ro)
        # 3. advantages of every response token
        if args.algo == "grpo":
            adv_B, zero_var_G = group_advantages(ro.score_B, args.group_size, args.adv_eps)
            ro, zero_var_trained = replace(ro, adv_BR=adv_B[:, None] * ro.mask_BR), zero_var_G.float().mean().item()
        else:
            ro, zero_var_trained = ppo_advantages(ro, args, world, device), 0.0
        # 4. --ppo-epochs passes of one optimizer step per mini-batch
        t1 = time.time()
        learned = update(run, ro, seed)  # (Stats, grad norms, ratio_dev_first)
        grad_norms = learned[1]
        # 5. the log, from sums over ranks; a signal on any rank stops them all after this step
        row, signalled = log_row(run, step, ro, (zero_var, zero_var_trained, drawn), learned,
                                 (t_sample, time.time() - t1), stopper.signum)
        diverged = not all(math.isfinite(g) for g in grad_norms)  # the norms are global: every rank stops
        if args.eval_every and (step + 1) % args.eval_every == 0 and not diverged:
            row.update(evaluate_now(run, step + 1, ro))  # held-out scores join the step's log line
        if master:
            log_step(args.out, row, pbar, step == run.start_step or (step + 1) % args.log_every == 0,
                     log_line(row, args), reward=f"{row['reward']:.3f}", acc=f"{row['accuracy']:.2f}")
            rows_log.append(row)
        if diverged:
            kept = latest_checkpoint(args.out)
            raise UserError(f"step {step + 1}: gradient norms {grad_norms}: the run diverged and stopped without "
                            f"this update ({'last checkpoint ' + kept if kept else 'no checkpoint yet'}); try a lower "
                            "--lr or --grad-clip 1")
        stop = signalled > 0 and step + 1 < args.max_steps  # a signal in the last step lets final/ be written
        if (args.save_every and (step + 1) % args.save_every == 0 or stop) and step + 1 < args.max_steps:
            save_rl_checkpoint(run, f"step_{step + 1}", step + 1)
        if stop or args.stop_after and step + 1 >= args.stop_after:
            break
    else:
        save_rl_checkpoint(run, "final", args.max_steps)
        if master:
            print(f"saved {os.path.join(args.out, 'final')}")
    if world > 1 and not args.fsdp:  # FSDP's ranks hold different shards
        check_replicas(run.models.params, world, device, master)
    finish_run("rl.py", args.out, stop and step + 1, stopper, master, pbar)
    return rows_log


if __name__ == "__main__":
    run_cli(main, "rl.py")

# -----------------------------------------------------------------------------
# pitfalls this file avoids (see ../shared/STYLE.md)
# - Log-probs without the temperature: response_logprobs divides the logits by --temperature,
#   exactly as sample() does; log.jsonl's logp_sampler_diff shows the two agree.
# - Dropout on during RL: every module stays in eval mode; nothing in the loop calls .train().
# - Sampling through the DDP wrapper: sample() gets the bare `lm`; the loss forward goes through
#   `model` (the wrapper) so its backward all-reduces, with no_sync around all but the last
#   micro-batch of an update (grad_sync).
# - Per-micro-batch normalisation: token losses are sums, scaled once by
#   sft.step_loss_scale(tokens of the mini-batch over all ranks).
# - The reference model is frozen (requires_grad False) and in eval mode.
# - Decoding a sharded model: under --fsdp every layer would all-gather its weights at every
#   decoded token; full_weights gathers them once for the step's rollouts.
