r"""Reinforcement learning on the study's rewards: GRPO (the paper's "RL (warm)" baseline) and PPO.

Each step draws `--prompts-per-step` prompts (rank r takes its contiguous share), samples
`--group-size` replies to each with eval.py's KV-cached sampler (through the unwrapped module, at
`--temperature`), scores them with eval.reward (Sokoban single step: 1 for a well-formed optimal
move, all optimal moves counting; General Points: +5/-1/-2/-3), turns rewards into per-token
advantages and takes `--ppo-epochs` x (batch / `--mini-batch-size`) optimizer steps on the
clipped surrogate. Token losses are summed and divided by the response tokens of the whole
mini-batch over all micro-batches and ranks. `--model` is a local Hugging Face directory (an SFT
run's `final/`); prompts are each record's user message through the tokenizer's chat template.

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
    # 2 CPU processes (gloo), e.g. to check DDP
    torchrun --standalone --nproc_per_node=2 rl.py --model ... --data ... --out ... --dtype fp32

GRPO: advantage = (reward - group mean) / (group std + eps), the same for every token of a reply;
optional k3 KL to the frozen initial model in the loss (`--kl-coef`) and entropy bonus.
PPO: a value head (one linear layer, zero-initialised) on the policy's last hidden state, GAE over
the response tokens, per-token reward -kl_coef * (logp - ref_logp) plus the score on the last
token, whitened advantages, clipped value loss. Outputs as in sft.py: OUT/config.json,
OUT/log.jsonl (one line a step), OUT/step_N/ and OUT/final/ (Hugging Face directories +
trainer_state.pt; PPO adds value_head.pt), and `--resume` continues exactly. Bad input is refused
before any work (one line `rl.py: error: ...`, exit 2), an OUT holding another run needs
`--overwrite`, and SIGTERM / Ctrl-C save OUT/step_N/ at the end of the current step and exit with
128 + the signal (143 / 130), as in sft.py.
"""
import argparse
import contextlib
import json
import os
import signal
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import eval as evaluation  # `eval` would shadow the builtin
import sft
from sft import UserError

# -----------------------------------------------------------------------------
# arguments


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data and model")
    g.add_argument("--model", required=True, help="Hugging Face model directory to start from (e.g. an SFT run's final/), a hub id, or 'smollm2'")
    g.add_argument("--data", required=True, help="RL prompt JSONL: {'messages': [user turn], 'meta': {...}} (make_data.py's rl*.jsonl)")
    g.add_argument("--out", required=True, help="output directory: config.json, log.jsonl, step_N/, final/")
    g.add_argument("--max-new-tokens", type=int, default=1024, help="longest reply in tokens; longer ones are cut (and counted in the log)")
    g.add_argument("--stop", nargs="*", default=[], help="stop strings that end a reply besides the EOS (default: none, the model learns to stop)")
    g = p.add_argument_group("algorithm (defaults: the paper's GRPO baseline)")
    g.add_argument("--algo", choices=["grpo", "ppo"], default="grpo", help="group-relative advantages, or a value head with GAE")
    g.add_argument("--prompts-per-step", type=int, default=256, help="prompts per step over all ranks")
    g.add_argument("--group-size", type=int, default=8, help="samples per prompt (GRPO needs >= 2)")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; log-probs use the same one")
    g.add_argument("--clip", type=float, default=0.2, help="clip range of the importance ratio")
    g.add_argument("--kl-coef", type=float, default=0.0, help="GRPO: weight of the k3 KL to the initial model in the loss; PPO: per-token KL penalty in the reward")
    g.add_argument("--entropy-coef", type=float, default=0.0, help="weight of the entropy bonus")
    g.add_argument("--ppo-epochs", type=int, default=1, help="passes over each step's samples")
    g.add_argument("--mini-batch-size", type=int, default=0, help="sequences per optimizer update over all ranks (0: the whole step, one update a pass)")
    g.add_argument("--adv-eps", type=float, default=1e-6, help="GRPO: added to the group std (a zero-variance group gets advantage 0)")
    g = p.add_argument_group("PPO value head")
    g.add_argument("--vf-coef", type=float, default=0.5, help="weight of the value loss")
    g.add_argument("--vf-lr", type=float, default=1e-5, help="learning rate of the value head (the trunk keeps --lr)")
    g.add_argument("--value-clip", type=float, default=0.2, help="clip range of the value update around the sampling-time values")
    g.add_argument("--gamma", type=float, default=1.0, help="discount over response tokens")
    g.add_argument("--lam", type=float, default=0.95, help="GAE lambda")
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=1e-6, help="constant learning rate of the policy")
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    g.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm to this (0: no clipping)")
    g.add_argument("--max-steps", type=int, default=200, help="RL steps")
    g.add_argument("--micro-batch-size", type=int, default=8, help="sequences per forward/backward on one rank")
    g.add_argument("--sample-batch-rows", type=int, default=0, help="most rows the sampler decodes at once (0: all of a rank's share)")
    g = p.add_argument_group("system")
    g.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="autocast dtype for sampling and training (weights and optimizer stay fp32)")
    g.add_argument("--seed", type=int, default=0, help="seed of the prompt order and of every sample")
    g.add_argument("--save-every", type=int, default=0, help="write OUT/step_N/ every this many steps (0: only OUT/final/)")
    g.add_argument("--resume", action="store_true", help="continue from the newest OUT/step_N/; an error if there is none")
    g.add_argument("--overwrite", action="store_true", help="OUT holds another run (or checkpoints): delete its step_N/, final/ and log, and start over")
    g.add_argument("--stop-after", type=int, default=0, help="leave the loop after this step without writing final/ (simulates a kill, for tests)")
    g.add_argument("--eval-every", type=int, default=0, help="every this many steps print sampled replies and evaluate on --eval-data (0: never)")
    g.add_argument("--eval-data", nargs="*", default=[], help="evaluation JSONL files (make_data.py's eval_*.jsonl)")
    g.add_argument("--eval-limit", type=int, default=16, help="records per evaluation file")
    g.add_argument("--eval-temperature", type=float, default=0.5, help="sampling temperature of the evaluation (the paper: 0.5)")
    g.add_argument("--log-every", type=int, default=1, help="print a log line every this many steps (log.jsonl gets every step)")
    return p


def check_args(args, world):
    """Reject incompatible settings before anything is loaded; returns the global mini-batch size."""
    batch = args.prompts_per_step * args.group_size
    mini = args.mini_batch_size or batch
    sft.refuse([
        (min(args.prompts_per_step, args.group_size, args.ppo_epochs, args.micro_batch_size, args.max_new_tokens, args.max_steps) < 1,
         "--prompts-per-step, --group-size, --ppo-epochs, --micro-batch-size, --max-new-tokens and --max-steps must be >= 1"),
        (min(args.mini_batch_size, args.sample_batch_rows, args.save_every, args.stop_after, args.eval_every) < 0,
         "--mini-batch-size, --sample-batch-rows, --save-every, --stop-after and --eval-every must be >= 0"),
        (args.eval_limit < 1 or args.log_every < 1, "--eval-limit and --log-every must be >= 1"),
        (args.algo == "grpo" and args.group_size < 2, f"--algo grpo needs --group-size >= 2 (got {args.group_size}): advantages are relative to the group"),
        (args.prompts_per_step % world, f"--prompts-per-step {args.prompts_per_step} must be divisible by the number of ranks {world}"),
        (batch % mini, f"--mini-batch-size {mini} must divide the step's {batch} sequences (--prompts-per-step x --group-size)"),
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
        (args.resume and args.overwrite, "--resume continues OUT's run and --overwrite deletes it: pass one of them"),
    ])
    return mini

# -----------------------------------------------------------------------------
# the maths, as pure functions (B: sequences, G: groups, K: group size, R: response tokens, N: tokens)


def masked_sum(x, mask):
    return (x * mask).sum()


def masked_mean(x, mask):
    return masked_sum(x, mask) / mask.sum().clamp(min=1)


def group_advantages(rewards_B, group_size, eps=1e-6):
    """(adv_B, zero_var_G): (r - group mean) / (group std + eps), std unbiased as in verl's GRPO.
    Rows are grouped consecutively (prompt 0's K samples, then prompt 1's ...). A group whose
    rewards are all equal gets advantage 0 exactly and carries no learning signal."""
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
    """Entropy of each row's softmax, in fp32."""
    logp_NV = F.log_softmax(logits_NV.float(), -1)
    return -(logp_NV.exp() * logp_NV).sum(-1)


def ppo_token_rewards(score_B, kl_BR, mask_BR, kl_coef):
    """Per-token rewards: -kl_coef * KL estimate on every response token, the score on the last one."""
    rewards_BR = -kl_coef * kl_BR * mask_BR
    last_B = mask_BR.long().sum(1) - 1
    return rewards_BR.index_put((torch.arange(len(score_B)), last_B), score_B, accumulate=True)


def gae(rewards_BR, values_BR, mask_BR, gamma, lam):
    """(adv_BR, returns_BR): generalised advantage estimation over each row's response tokens
    (a right-padded prefix of mask_BR); the value after the last token is 0 (the episode ends)."""
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
    """(x - mean) / sqrt(var + eps) on the mask, 0 elsewhere; mean/var are passed in so that they
    can be the statistics over all ranks."""
    return (x - mean) * torch.rsqrt(torch.as_tensor(var + eps, dtype=x.dtype)) * mask

# -----------------------------------------------------------------------------
# the model: the language model, plus a value head on its last hidden state for PPO


class Policy(nn.Module):
    """forward(ids_BT, keep_BT) -> (logits_NV, values_N or None) at the `keep_BT` positions.
    Wrapping the LM and the head in one module lets DDP all-reduce both in one backward."""

    def __init__(self, lm, value_head=None):
        super().__init__()
        self.lm, self.value_head = lm, value_head

    def forward(self, ids_BT, keep_BT):
        # right padding + causal attention: real tokens never see the pads, so no attention mask
        if self.value_head is None:
            return self.lm(input_ids=ids_BT, logits_to_keep=keep_BT).logits, None
        h_NH = self.lm.get_decoder()(input_ids=ids_BT).last_hidden_state[keep_BT]
        return self.lm.get_output_embeddings()(h_NH), self.value_head(h_NH).squeeze(-1).float()


def make_value_head(lm):
    head = nn.Linear(lm.config.hidden_size, 1)
    nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)  # starts at V = 0 and sends no gradient into the trunk
    return head.to(next(lm.parameters()).device)


def response_logprobs(model, ids_BT, resp_mask_BT, temperature, dtype, device):
    """(logp_N, logits_NV, values_N) of the response tokens, log-probs under log_softmax(logits / T)
    exactly as the sampler computes them; N runs over the rows' response tokens in order."""
    keep_BT, targets_N = sft.supervised_positions(ids_BT, resp_mask_BT)
    with sft.autocast_ctx(device, dtype):
        logits_NV, values_N = model(ids_BT, keep_BT)
    logits_NV = logits_NV.float() / temperature
    return -F.cross_entropy(logits_NV, targets_N, reduction="none"), logits_NV, values_N

# -----------------------------------------------------------------------------
# data: prompts, which prompts a step uses, rollouts


def check_prompt_record(record):
    msgs = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(msgs, list) or not msgs or msgs[-1].get("role") != "user" or "meta" not in record:
        return "expected {'messages': [..., {'role': 'user', ...}], 'meta': {...}} ending with the user turn"
    return None


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


def rollout(lm, tokenizer, prompts, metas, args, seed, device, reward_fn, correct_fn):
    """Sample `group_size` replies per prompt and score them. Returns a dict of per-row lists."""
    with sft.autocast_ctx(device, args.dtype):
        s = evaluation.sample(lm, prompts, n=args.group_size, max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, stop_strings=args.stop, tokenizer=tokenizer, seed=seed,
                              return_logprobs=True, max_batch_rows=args.sample_batch_rows or None)
    metas_B = [m for m in metas for _ in range(args.group_size)]
    return dict(prompt=[p for p in prompts for _ in range(args.group_size)], response=s.ids, text=s.texts,
                sampler_logp=s.logprobs, truncated=s.truncated,
                reward=[float(reward_fn(t, m)) for t, m in zip(s.texts, metas_B)],
                correct=[bool(correct_fn(t, m)) for t, m in zip(s.texts, metas_B)])


def collate(ro, rows, pad_id, device):
    """(ids_BT, resp_mask_BT): prompt + response, right-padded; the mask marks response positions."""
    seqs = [ro["prompt"][i] + ro["response"][i] for i in rows]
    T = max(len(s) for s in seqs)
    ids_BT = torch.full((len(rows), T), pad_id, dtype=torch.long)
    resp_mask_BT = torch.zeros((len(rows), T), dtype=torch.bool)
    for b, (i, s) in enumerate(zip(rows, seqs)):
        ids_BT[b, :len(s)] = torch.tensor(s)
        resp_mask_BT[b, len(ro["prompt"][i]):len(s)] = True
    return ids_BT.to(device), resp_mask_BT.to(device)


def to_rows(x_N, rows, lengths_B, R):
    """Scatter a flat per-token vector (rows' responses in order) into a (len(rows), R) tensor."""
    mask_bR = torch.arange(R)[None, :] < torch.tensor([lengths_B[i] for i in rows])[:, None]
    out_bR = torch.zeros(len(rows), R, dtype=x_N.dtype)
    out_bR[mask_bR] = x_N.detach().cpu()
    return out_bR

# -----------------------------------------------------------------------------
# checkpoints: sft.save_checkpoint for the LM and its optimizer, plus the value head for PPO


def save_rl_checkpoint(out_dir, name, lm, head, tokenizer, optimizer, head_optimizer, scaler, step, args, rank):
    # the value head is written before sft.save_checkpoint writes trainer_state.pt (what marks a
    # checkpoint complete for --resume), so a complete step_N/ always has its head
    if head is not None and rank == 0:
        os.makedirs(args.out, exist_ok=True)
        tmp = os.path.join(out_dir, f".{name}.value_head.pt")
        torch.save({"head": head.state_dict(), "optimizer": head_optimizer.state_dict()}, tmp)
    sft.save_checkpoint(out_dir, name, lm, tokenizer, optimizer, scaler, step, args, rank)
    if head is not None and rank == 0:
        os.replace(os.path.join(out_dir, f".{name}.value_head.pt"), os.path.join(out_dir, name, "value_head.pt"))


def value_head_file(ckpt_dir, out_dir):
    inside = os.path.join(ckpt_dir, "value_head.pt")
    pending = os.path.join(out_dir, f".{os.path.basename(ckpt_dir)}.value_head.pt")
    return inside if os.path.isfile(inside) else pending

# -----------------------------------------------------------------------------
# evaluation hook (rank 0 only, the unwrapped model)


def evaluate_now(lm, tokenizer, args, device, step, ro, correct_fn):
    lines = [f"--- step {step}: sampled replies"]
    for i in range(0, min(len(ro["text"]), 3 * args.group_size), args.group_size):
        lines.append(f"[reward {ro['reward'][i]:+.1f}] {ro['text'][i][:300]!r}")
    scores = {}
    for path in args.eval_data:
        records = sft.read_jsonl(path, check=check_prompt_record)[:args.eval_limit]
        prompts = sft.encode_prompts(tokenizer, [r["messages"] for r in records])
        with sft.autocast_ctx(device, args.dtype):
            s = evaluation.sample(lm, prompts, n=1, max_new_tokens=args.max_new_tokens, temperature=args.eval_temperature,
                                  stop_strings=args.stop, tokenizer=tokenizer, seed=args.seed)
        name = os.path.splitext(os.path.basename(path))[0]
        scores[f"{name}_first_move_acc"] = float(np.mean([correct_fn(t, r["meta"]) for t, r in zip(s.texts, records)]))
        # the environment evaluation with eval.py's own functions (multi-turn for Sokoban)
        task = records[0]["meta"].get("task") if records else None
        if task in ("sokoban", "gpoints"):
            run_env = getattr(evaluation, f"evaluate_{task}")
            variant = records[0]["meta"]["variant"]
            replies = evaluation.model_replies(lm, tokenizer, temperature=args.eval_temperature,
                                               max_new_tokens=args.max_new_tokens, stop_strings=args.stop)
            result = run_env(replies, {variant: records}, seed=args.seed, progress=False)[variant]
            scores.update({f"{name}_{k}": v for k, v in result.items() if isinstance(v, (int, float))})
    lines.append(" ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    tqdm.write("\n".join(lines))
    return scores

# -----------------------------------------------------------------------------
# the training loop


def main(argv=None, reward_fn=None, correct_fn=None):
    """Run RL; returns rank 0's log rows. `reward_fn(reply, meta)` / `correct_fn` default to
    eval.reward / eval.is_correct (tests inject toy ones)."""
    args = get_parser().parse_args(argv)
    reward_fn, correct_fn = reward_fn or evaluation.reward, correct_fn or evaluation.is_correct
    rank, world, local_rank, device = sft.setup_distributed()
    master = rank == 0
    mini = check_args(args, world)
    torch.manual_seed(args.seed)
    # the data and OUT are checked before any model is loaded or OUT is touched
    sft.check_out_dir(args.out)
    args.model = sft.resolve_model(args.model)
    records = sft.read_jsonl(args.data, check=check_prompt_record)
    if not records:
        raise UserError(f"no records in {args.data}")
    if args.prompts_per_step > len(records):
        raise UserError(f"--prompts-per-step {args.prompts_per_step} is more than the {len(records)} prompts of {args.data} "
                        f"(a step would repeat prompts): pass at most {len(records)}")
    for path in args.eval_data:
        if not sft.read_jsonl(path, check=check_prompt_record):
            raise UserError(f"no records in {path}")
    task = records[0]["meta"].get("task") if isinstance(records[0]["meta"], dict) else None
    identity = dict(data=args.data, model=args.model, algo=args.algo, task=task)
    if args.resume:  # the prompt stream a resumed run recomputes
        identity.update(seed=args.seed, prompts_per_step=args.prompts_per_step, group_size=args.group_size, n_prompts=len(records))
    resume_from = sft.check_run_dir(args.out, identity, args.resume, args.overwrite)
    tokenizer = sft.load_tokenizer(args.model)  # a missing model is refused before OUT is touched
    if master:
        if args.overwrite:
            sft.clear_run_dir(args.out)
        os.makedirs(args.out, exist_ok=True)
    if world > 1:
        dist.barrier()
    prompts = sft.encode_prompts(tokenizer, [r["messages"] for r in records])  # one batched tokenizer call
    metas = [r["meta"] for r in records]

    # fp32 master weights, autocast does the rest. Dropout: every module stays in eval mode for the
    # whole run, the loss forwards included (autograd does not need train mode), so the forward that
    # computes the loss is the forward that sampled; the sampler puts the model in eval mode anyway.
    lm = sft.load_model(resume_from or args.model, "fp32", device).eval()
    lm.config.use_cache = False
    ref = sft.load_model(args.model, "fp32", device).eval().requires_grad_(False) if args.kl_coef > 0 else None
    head = make_value_head(lm) if args.algo == "ppo" else None
    policy = Policy(lm, head).eval()
    model = torch.nn.parallel.DistributedDataParallel(policy, device_ids=[local_rank] if device.type == "cuda" else None) if world > 1 else policy
    optimizer = torch.optim.AdamW(lm.parameters(), lr=args.lr, weight_decay=args.weight_decay, **sft.fused_adamw())
    head_optimizer = torch.optim.AdamW(head.parameters(), lr=args.vf_lr, weight_decay=0.0) if head is not None else None
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16/fp32 only: kept for sft.save_checkpoint's format
    start_step = 0
    if resume_from:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        state = torch.load(os.path.join(resume_from, "trainer_state.pt"), map_location="cpu", weights_only=False)
        set_optimizer_state_dict(lm, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
        start_step = state["step"]
        if head is not None:
            hs = torch.load(value_head_file(resume_from, args.out), map_location=device, weights_only=False)
            head.load_state_dict(hs["head"]), head_optimizer.load_state_dict(hs["optimizer"])

    params = [p for p in policy.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    local_prompts = args.prompts_per_step // world
    local_B, local_mini = local_prompts * args.group_size, mini // world
    config = dict(vars(args), task=task, threads=torch.get_num_threads(), resume_from=resume_from, world_size=world, mini_batch_size_resolved=mini,
                  updates_per_step=args.ppo_epochs * (args.prompts_per_step * args.group_size // mini),
                  n_prompts=len(records), n_params=n_params, longest_prompt=max(len(p) for p in prompts))
    log_path = os.path.join(args.out, "log.jsonl")
    if master:
        print(json.dumps(config, indent=1))
        sft.start_run_files(args.out, config, start_step)

    sync_off = model.no_sync if world > 1 else contextlib.nullcontext
    # one update a step (GRPO's default): the policy that sampled is the one being updated, so the
    # "old" log-probs are the training forward's own, detached, and the ratio is exactly 1. Otherwise
    # a no-grad pass before the first update records them, with the same micro-batches and dtype.
    single_update = config["updates_per_step"] == 1
    rows_log = []
    stopper, stop = sft.StopSignal("rl.py"), False
    pbar = tqdm(range(start_step, args.max_steps), initial=start_step, total=args.max_steps, disable=not master, desc=args.algo)
    for step in pbar:
        t0 = time.time()
        idx = step_prompts(len(records), args.prompts_per_step, args.seed, step)[rank * local_prompts:(rank + 1) * local_prompts]
        seed = int(np.random.SeedSequence([args.seed, step, rank]).generate_state(1)[0])
        ro = rollout(lm, tokenizer, [prompts[i] for i in idx], [metas[i] for i in idx], args, seed, device, reward_fn, correct_fn)
        t_sample = time.time() - t0

        # per-token quantities of the sampling policy, (local_B, R) tensors on CPU
        lengths = [len(r) for r in ro["response"]]
        R = max(lengths)
        mask_BR = torch.arange(R)[None, :] < torch.tensor(lengths)[:, None]
        score_B = torch.tensor(ro["reward"], dtype=torch.float32)
        micro_rows = lambda rows: [rows[j:j + args.micro_batch_size] for j in range(0, len(rows), args.micro_batch_size)]
        old_logp_BR = ref_logp_BR = old_values_BR = None
        if not single_update or ref is not None or head is not None:
            old_logp_BR, ref_logp_BR, old_values_BR = (torch.zeros(local_B, R) for _ in range(3))
            with torch.no_grad():
                for rows in micro_rows(list(range(local_B))):
                    ids_BT, resp_BT = collate(ro, rows, tokenizer.pad_token_id, device)
                    logp_N, _, values_N = response_logprobs(policy, ids_BT, resp_BT, args.temperature, args.dtype, device)
                    old_logp_BR[rows] = to_rows(logp_N, rows, lengths, R)
                    if values_N is not None:
                        old_values_BR[rows] = to_rows(values_N, rows, lengths, R)
                    if ref is not None:
                        ref_N, _, _ = response_logprobs(Policy(ref), ids_BT, resp_BT, args.temperature, args.dtype, device)
                        ref_logp_BR[rows] = to_rows(ref_N, rows, lengths, R)
        zero_var = 0.0
        if args.algo == "grpo":
            adv_B, zero_var_G = group_advantages(score_B, args.group_size, args.adv_eps)
            adv_BR, returns_BR = adv_B[:, None] * mask_BR, None
            zero_var = zero_var_G.float().mean().item()
        else:
            kl_BR = (old_logp_BR - ref_logp_BR) if ref is not None else torch.zeros(local_B, R)
            adv_BR, returns_BR = gae(ppo_token_rewards(score_B, kl_BR, mask_BR, args.kl_coef), old_values_BR, mask_BR, args.gamma, args.lam)
            s, s2, n = sft.all_reduce_sum([masked_sum(adv_BR, mask_BR).item(), masked_sum(adv_BR ** 2, mask_BR).item(), mask_BR.sum().item()], world, device)
            adv_BR = whiten(adv_BR, mask_BR, s / n, s2 / n - (s / n) ** 2)

        # learning: ppo_epochs passes, each cut into mini-batches; one optimizer update per mini-batch
        t1 = time.time()
        stats = dict(pg_loss=0.0, vf_loss=0.0, entropy=0.0, kl_ref=0.0, approx_kl=0.0, clip_frac=0.0, logp_sampler_diff=0.0, tokens=0.0, first_tokens=0.0)
        if ref is not None and args.algo == "ppo":  # the KL that entered the rewards: logp - ref_logp of the sampling policy
            stats["kl_ref"] = masked_sum(old_logp_BR - ref_logp_BR, mask_BR).item()
        grad_norms, ratio_dev_first = [], None
        for epoch in range(args.ppo_epochs):
            # pass 0 keeps the rows in the pre-pass's order, so the first mini-batch's micro-batches are the
            # very tensors whose old log-probs were recorded (ratio exactly 1); later passes reshuffle
            order = torch.randperm(local_B, generator=torch.Generator().manual_seed(seed + epoch)).tolist() if epoch else list(range(local_B))
            for m0 in range(0, local_B, local_mini):
                mb = order[m0:m0 + local_mini]
                n_tok, = sft.all_reduce_sum([int(mask_BR[mb].sum())], world, device)
                scale = sft.step_loss_scale(n_tok, world)
                micros = micro_rows(mb)
                for k, rows in enumerate(micros):
                    with (sync_off() if k < len(micros) - 1 else contextlib.nullcontext()):
                        ids_BT, resp_BT = collate(ro, rows, tokenizer.pad_token_id, device)
                        logp_N, logits_NV, values_N = response_logprobs(model, ids_BT, resp_BT, args.temperature, args.dtype, device)
                        m_bR = mask_BR[rows]
                        to_dev = lambda x_BR: x_BR[rows][m_bR].to(device)
                        old_N = logp_N.detach() if old_logp_BR is None else to_dev(old_logp_BR)
                        pg_N, ratio_N, clipped_N = clipped_surrogate(logp_N, old_N, to_dev(adv_BR), args.clip)
                        loss = pg_N.sum()
                        with (contextlib.nullcontext() if args.entropy_coef else torch.no_grad()):
                            ent_N = token_entropy(logits_NV)
                        if args.entropy_coef:
                            loss = loss - args.entropy_coef * ent_N.sum()
                        if ref is not None and args.algo == "grpo":
                            kl_N = k3_kl(logp_N, to_dev(ref_logp_BR))
                            loss = loss + args.kl_coef * kl_N.sum()
                            stats["kl_ref"] += kl_N.sum().item()
                        if head is not None:
                            vf_N = clipped_value_loss(values_N, to_dev(old_values_BR), to_dev(returns_BR), args.value_clip)
                            loss = loss + args.vf_coef * vf_N.sum()
                            stats["vf_loss"] += vf_N.sum().item()
                        (loss * scale).backward()
                    if epoch == 0 and m0 == 0:  # the policy has not moved yet: compare with the sampler
                        dev = (ratio_N.detach() - 1).abs().max().item()
                        ratio_dev_first = dev if ratio_dev_first is None else max(ratio_dev_first, dev)
                        sampler_N = torch.cat([ro["sampler_logp"][i] for i in rows]).to(device)
                        stats["logp_sampler_diff"] += (logp_N.detach() - sampler_N).abs().sum().item()
                        stats["first_tokens"] += len(logp_N)
                    stats["pg_loss"] += pg_N.sum().item()
                    stats["entropy"] += ent_N.sum().item()
                    stats["approx_kl"] += k3_kl(old_N, logp_N.detach()).sum().item()
                    stats["clip_frac"] += clipped_N.sum().item()
                    stats["tokens"] += len(logp_N)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip if args.grad_clip > 0 else float("inf"))
                grad_norms.append(float(grad_norm))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if head_optimizer is not None:
                    head_optimizer.step()
                    head_optimizer.zero_grad(set_to_none=True)
        t_learn = time.time() - t1

        # one log line: sums over ranks, then means (token stats over all trained tokens; first-pass stats over the step's tokens)
        keys = list(stats)
        sums = sft.all_reduce_sum([stats[k] for k in keys] + [sum(ro["reward"]), sum(ro["correct"]), sum(lengths), sum(ro["truncated"]),
                                                              local_B, zero_var * local_prompts, float(mask_BR.sum()), stopper.signum], world, device)
        tot = dict(zip(keys + ["reward", "correct", "length", "truncated", "rows", "zero_var_groups", "step_tokens", "signalled"], sums))
        per_tok = lambda k: tot[k] / max(tot["tokens"], 1)
        row = {"step": step + 1, "epoch": round((step + 1) * args.prompts_per_step / len(records), 3),
               "reward": tot["reward"] / tot["rows"], "accuracy": tot["correct"] / tot["rows"], "response_length": tot["length"] / tot["rows"],
               "truncated": tot["truncated"] / tot["rows"], "kl_ref": tot["kl_ref"] / max(tot["step_tokens"] if args.algo == "ppo" else tot["tokens"], 1),
               "approx_kl": per_tok("approx_kl"), "clip_frac": per_tok("clip_frac"), "entropy": per_tok("entropy"),
               "pg_loss": per_tok("pg_loss"), "grad_norm": float(np.mean(grad_norms)), "ratio_dev_first": ratio_dev_first,
               "logp_sampler_diff": tot["logp_sampler_diff"] / max(tot["first_tokens"], 1), "lr": args.lr,
               "sample_s": t_sample, "learn_s": t_learn}
        if args.algo == "grpo":
            row["zero_var_groups"] = tot["zero_var_groups"] / args.prompts_per_step
        else:
            row["vf_loss"] = per_tok("vf_loss")
        if master:
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            rows_log.append(row)
            pbar.set_postfix(reward=f"{row['reward']:.3f}", acc=f"{row['accuracy']:.2f}")
            if (step + 1) % args.log_every == 0 or step == start_step:
                extra = f"zero_var {row['zero_var_groups']:.2f}" if args.algo == "grpo" else f"vf_loss {row['vf_loss']:.4f}"
                tqdm.write(f"step {step + 1}/{args.max_steps} reward {row['reward']:.3f} acc {row['accuracy']:.3f} len {row['response_length']:.1f} "
                           f"cut {row['truncated']:.2f} kl {row['kl_ref']:.4f} clip {row['clip_frac']:.3f} ent {row['entropy']:.3f} "
                           f"gnorm {row['grad_norm']:.3f} {extra} time {t_sample:.1f}s+{t_learn:.1f}s")
        if args.eval_every and (step + 1) % args.eval_every == 0:
            if master:
                row.update(evaluate_now(lm, tokenizer, args, device, step + 1, ro, correct_fn))
            if world > 1:
                dist.barrier()
        # a signal on any rank stops every rank after this step (a signal in the last step lets final/ be written)
        stop = tot["signalled"] > 0 and step + 1 < args.max_steps
        if (args.save_every and (step + 1) % args.save_every == 0 or stop) and step + 1 < args.max_steps:
            save_rl_checkpoint(args.out, f"step_{step + 1}", lm, head, tokenizer, optimizer, head_optimizer, scaler, step + 1, args, rank)
        if stop:
            if master:
                tqdm.write(f"rl.py: stopped by a signal; saved {os.path.join(args.out, f'step_{step + 1}')}: continue with --resume", file=sys.stderr)
            break
        if args.stop_after and step + 1 >= args.stop_after:
            break
    else:
        save_rl_checkpoint(args.out, "final", lm, head, tokenizer, optimizer, head_optimizer, scaler, args.max_steps, args, rank)
        if master:
            print(f"saved {os.path.join(args.out, 'final')}")
    pbar.close()
    if world > 1:  # DDP keeps replicas identical; say so rather than assume it
        checksum = torch.tensor([float(sum(p.detach().double().sum() for p in params))], dtype=torch.float64, device=device)
        all_sums = [torch.zeros_like(checksum) for _ in range(world)]
        dist.all_gather(all_sums, checksum)
        if master:
            same = all(torch.equal(all_sums[0], c) for c in all_sums)
            print(f"ranks in sync: {same}")
        dist.destroy_process_group()
    stopper.restore()
    if stop:
        sys.exit(128 + (stopper.signum or signal.SIGTERM))
    return rows_log


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"rl.py: error: {e}", file=sys.stderr)
        sys.exit(2)

# -----------------------------------------------------------------------------
# pitfalls this file avoids (see ../shared/STYLE.md)
# - Log-probs without the temperature: response_logprobs divides the logits by --temperature,
#   exactly as eval.sample does; log.jsonl's logp_sampler_diff shows the two agree.
# - Dropout on during RL: every module stays in eval mode; nothing in the loop calls .train().
# - Sampling through the DDP wrapper: eval.sample gets the bare `lm`; the loss forward goes
#   through `model` (the wrapper) so its backward all-reduces, with no_sync around all but the
#   last micro-batch of an update.
# - Per-micro-batch normalisation: token losses are sums, scaled once by
#   sft.step_loss_scale(tokens of the mini-batch over all ranks).
# - The reference model is frozen (requires_grad False) and in eval mode.
