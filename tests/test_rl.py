"""Tests of rl.py on CPU: the maths against hand-computed values and plain loops, the log-probs of
the training forward against the sampler's, and the script end to end with a tiny model and toy
rewards (injected through rl.main's Python API): parameters move, reward rises, 2-rank DDP runs,
2-rank FSDP trains as one process (slow), resume is exact, bad flags are refused at start-up."""
import json
import math
import os
import random
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402
import eval as eval_module  # noqa: E402
import make_data  # noqa: E402
import rl  # noqa: E402
import sft  # noqa: E402
from test_sft import WORDS  # noqa: E402



def write_toy_prompts(path, n=32, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            w = rng.choice(WORDS)
            record = {"messages": [{"role": "user", "content": f"Say a word like {w}."}], "meta": {"word": w}}
            f.write(json.dumps(record) + "\n")
    return path


def vowel_reward(reply, meta):
    """The toy task: 1 if the reply starts with a vowel. A random tiny model does so now and then."""
    return float(reply.strip()[:1].lower() in "aeiou")


def length_reward(reply, meta):
    """Always varies within a group, so every group has a learning signal."""
    return float(len(reply))


def never_correct(reply, meta):
    return False


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    data = write_toy_prompts(str(d / "prompts.jsonl"))
    texts = [f"Say a word like {w}. {w} {w.upper()} answer: {w}" for w in WORDS] * 4 + ["user", "assistant"]
    model = make_data.build_tiny_model(str(d / "tiny"), texts, hidden=32, layers=2, heads=2, ffn=64, vocab=300)
    return data, model


def run_rl(toy, out, *extra, reward=length_reward):
    data, model = toy
    argv = ["--model", model, "--data", data, "--out", str(out), "--dtype", "fp32", "--prompts-per-step", "4",
            "--group-size", "4", "--max-new-tokens", "6", "--lr", "1e-3", "--micro-batch-size", "4"]
    argv += [str(a) for a in extra]
    return rl.main(argv, reward_fn=reward, correct_fn=never_correct)


def weights(run_dir, name="final"):
    return load_file(os.path.join(str(run_dir), name, "model.safetensors"))

# -----------------------------------------------------------------------------
# the maths


def test_group_advantages_by_hand():
    rewards_B = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv_B, zero_var_G = rl.group_advantages(rewards_B, group_size=4, eps=0.0)
    a = 0.5 / math.sqrt(1 / 3)  # |r - mean| / unbiased std of (1, 0, 0, 1)
    torch.testing.assert_close(adv_B, torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0]))
    assert zero_var_G.tolist() == [False, True]
    adv_B, _ = rl.group_advantages(torch.tensor([5.0, 5.0, -3.0, -3.0]), group_size=2)
    assert torch.equal(adv_B, torch.zeros(4))  # zero variance: exactly 0, not 0/eps noise


def test_k3_kl_by_hand():
    logp, ref = torch.log(torch.tensor([0.5, 0.3])), torch.log(torch.tensor([0.25, 0.3]))
    kl = rl.k3_kl(logp, ref)
    torch.testing.assert_close(kl, torch.tensor([0.5 - math.log(0.5) - 1, 0.0]))
    assert (rl.k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()


def test_clipped_surrogate_by_hand():
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1]))
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0])
    loss, ratio, clipped = rl.clipped_surrogate(logp, torch.zeros(5), adv, clip=0.2)
    torch.testing.assert_close(loss, torch.tensor([-1.2, 1.5, -0.5, 0.8, -2.2]))
    assert clipped.tolist() == [True, False, False, True, False]
    torch.testing.assert_close(ratio, torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1]))


def test_value_loss_rewards_whiten_by_hand():
    v = rl.clipped_value_loss(torch.tensor([1.0, 0.1]), torch.tensor([0.0, 0.0]), torch.tensor([2.0, 1.0]), clip=0.2)
    torch.testing.assert_close(v, torch.tensor([0.5 * 1.8 ** 2, 0.5 * 0.9 ** 2]))
    mask_BR = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    r_BR = rl.ppo_token_rewards(torch.tensor([1.0, 2.0]), torch.ones(2, 3), mask_BR, kl_coef=0.1)
    torch.testing.assert_close(r_BR, torch.tensor([[-0.1, 0.9, 0.0], [-0.1, -0.1, 1.9]]))
    x = torch.tensor([[1.0, 3.0, 99.0], [5.0, 7.0, 9.0]])
    w = rl.whiten(x, mask_BR, mean=5.0, var=8.0)
    assert w[0, 2] == 0 and abs(float(w[1, 1]) - 2 / math.sqrt(8)) < 1e-6


def test_gae_against_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    B, R, gamma, lam = 5, 7, 0.9, 0.8
    lengths = [7, 1, 4, 6, 3]
    mask_BR = torch.arange(R)[None, :] < torch.tensor(lengths)[:, None]
    rewards_BR = torch.randn(B, R, generator=g, dtype=torch.float64) * mask_BR
    values_BR = torch.randn(B, R, generator=g, dtype=torch.float64) * mask_BR
    adv_BR, ret_BR = rl.gae(rewards_BR, values_BR, mask_BR, gamma, lam)
    for b, L in enumerate(lengths):
        r, v = rewards_BR[b, :L].tolist(), values_BR[b, :L].tolist() + [0.0]
        running = 0.0
        for t in reversed(range(L)):
            running = r[t] + gamma * v[t + 1] - v[t] + gamma * lam * running
            assert abs(adv_BR[b, t].item() - running) < 1e-12
            assert abs(ret_BR[b, t].item() - (running + v[t])) < 1e-12
        assert (adv_BR[b, L:] == 0).all() and (ret_BR[b, L:] == 0).all()


def test_step_prompts_is_a_stream_of_permutations():
    seen = [i for s in range(5) for i in rl.step_prompts(10, 4, seed=3, step=s)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert rl.step_prompts(10, 4, 3, 2) == seen[8:12]

# -----------------------------------------------------------------------------
# log-probs: the training forward reproduces the sampler's, with the temperature


def test_training_logprobs_equal_the_samplers(toy):
    data, model_dir = toy
    tok, lm = common.load_tokenizer(model_dir), common.load_model(model_dir, "fp32", "cpu").eval()
    prompts = [sft.encode_prompt(tok, r["messages"]) for r in common.read_jsonl(data)[:3]]
    assert all(isinstance(t, int) for t in prompts[0])
    s = eval_module.sample(lm, prompts, n=2, max_new_tokens=8, temperature=0.7, tokenizer=tok, seed=1, return_logprobs=True)
    ro = SimpleNamespace(prompt=[p for p in prompts for _ in range(2)], response=s.ids)
    mb = rl.collate(ro, list(range(6)), tok.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        logp_N, _, _ = rl.response_logprobs(rl.Policy(lm), mb, 0.7, "fp32")
        wrong_N, _, _ = rl.response_logprobs(rl.Policy(lm), mb, 1.0, "fp32")
    sampler_N = torch.cat(s.logprobs)
    torch.testing.assert_close(logp_N, sampler_N, atol=1e-5, rtol=0)
    assert (wrong_N - sampler_N).abs().max() > 1e-3  # forgetting the temperature would be caught
    # padding the rows further (--pad-multiple) changes nothing the model computes for the response
    multiple = mb.ids_BT.shape[1] + 5
    padded = rl.collate(ro, list(range(6)), tok.pad_token_id, torch.device("cpu"), multiple=multiple)
    assert padded.ids_BT.shape[1] == multiple
    kept = rl.collate(ro, list(range(6)), tok.pad_token_id, torch.device("cpu"), multiple=32)
    assert int(kept.kept_BT.sum()) % 32 == 0 and int(kept.kept_BT.sum()) > len(logp_N)
    with torch.no_grad():
        padded_N, _, _ = rl.response_logprobs(rl.Policy(lm), padded, 0.7, "fp32")
        kept_N, _, _ = rl.response_logprobs(rl.Policy(lm), kept, 0.7, "fp32")
    torch.testing.assert_close(padded_N, logp_N, atol=1e-5, rtol=0)
    torch.testing.assert_close(kept_N, logp_N, atol=1e-5, rtol=0)  # the output layer on 32k positions


@pytest.mark.parametrize("algo,extra",
                         [("grpo", []), ("grpo", ["--ppo-epochs", "2", "--mini-batch-size", "8", "--kl-coef", "0.1"]),
                                        ("ppo", ["--group-size", "1", "--ppo-epochs", "2"])])
def test_ratio_is_exactly_one_on_the_first_mini_batch(toy, tmp_path, algo, extra):
    rows = run_rl(toy, tmp_path / "r", "--algo", algo, "--max-steps", "2", "--temperature", "0.7", *extra)
    for row in rows:
        assert row["ratio_dev_first"] == 0.0
        assert row["logp_sampler_diff"] < 1e-5
    if "--ppo-epochs" in extra:
        assert rows[-1]["approx_kl"] > 0  # later mini-batches did see a moved policy

# -----------------------------------------------------------------------------
# the script end to end


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_every_parameter_changes_after_one_step(toy, tmp_path, algo):
    data, model_dir = toy
    run_rl(toy, tmp_path / "r", "--algo", algo, "--max-steps", "1", "--weight-decay", "0",
           "--vf-lr" if algo == "ppo" else "--lr", "1e-3", "--kl-coef", "0.05" if algo == "ppo" else "0")
    before, after = load_file(os.path.join(model_dir, "model.safetensors")), weights(tmp_path / "r")
    assert before.keys() == after.keys()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, unchanged
    if algo == "ppo":
        head = torch.load(tmp_path / "r" / "final" / "value_head.pt", weights_only=False)["head"]
        assert all(v.abs().sum() > 0 for v in head.values())  # moved away from its zero init
    cfg = json.load(open(tmp_path / "r" / "config.json"))
    assert cfg["algo"] == algo and cfg["world_size"] == 1
    assert common.load_model(str(tmp_path / "r" / "final"), "fp32") is not None  # a plain HF directory


def test_reward_rises_on_a_toy_task(toy, tmp_path):
    rows = run_rl(toy, tmp_path / "r", "--algo", "grpo", "--max-steps", "20", "--prompts-per-step", "8",
                  "--group-size", "8", "--max-new-tokens", "1", "--lr", "1e-2", "--micro-batch-size", "64",
                  reward=vowel_reward)
    first, last = sum(r["reward"] for r in rows[:5]) / 5, sum(r["reward"] for r in rows[-5:]) / 5
    assert last > first + 0.3 and last > 0.6, [round(r["reward"], 2) for r in rows]
    assert all(0 <= r["zero_var_groups"] <= 1 for r in rows)


def half_constant_reward(reply, meta):
    """0 for every reply to half the words (their groups have no variance), the reply's length on the rest."""
    return float(len(reply)) if WORDS.index(meta["word"]) % 2 else 0.0


def test_held_out_scores_join_the_log_line_of_their_step(toy, tmp_path):
    """--eval-every: the held-out scores are in OUT/log.jsonl (to plot against steps), on the steps they ran."""
    data, _ = toy
    run_rl(toy, tmp_path / "run", "--max-steps", 2, "--eval-every", 2, "--eval-data", data, "--eval-limit", 3)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert "prompts_first_move_acc" not in rows[0] and rows[1]["prompts_first_move_acc"] == 0.0  # never_correct


def test_dynamic_sampling_replaces_groups_without_variance(toy, tmp_path):
    extra = ["--max-steps", "3", "--prompts-per-step", "8"]
    plain = run_rl(toy, tmp_path / "plain", *extra, reward=half_constant_reward)
    dapo = run_rl(toy, tmp_path / "dapo", *extra, "--dynamic-sampling", "4", reward=half_constant_reward)
    assert all(r["zero_var_groups"] >= 0.25 for r in plain) and "drawn_per_group" not in plain[0]
    assert dapo[0]["zero_var_groups"] == plain[0]["zero_var_groups"]  # the same first draw
    assert all(r["zero_var_trained"] < r["zero_var_groups"] and r["drawn_per_group"] > 1 for r in dapo)
    again = run_rl(toy, tmp_path / "again", *extra, "--dynamic-sampling", "4", reward=half_constant_reward)
    assert [r["reward"] for r in again] == [r["reward"] for r in dapo]  # seeded by (seed, step, rank, draw)
    # nothing to find: every draw is spent, the batch keeps its size with the groups it has
    flat = run_rl(toy, tmp_path / "flat", *extra, "--dynamic-sampling", "2", reward=lambda reply, meta: 1.0)
    assert all(r["zero_var_trained"] == 1.0 and r["drawn_per_group"] == 3.0 for r in flat)
    assert all(r["reward"] == 1.0 and r["grad_norm"] == 0.0 for r in flat)


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_resume_equals_an_uninterrupted_run(toy, tmp_path, algo):
    extra = ["--algo", algo, "--max-steps", "4", "--save-every", "2", "--ppo-epochs", "2", "--mini-batch-size", "8",
             "--kl-coef", "0.05"]
    if algo == "ppo":
        extra += ["--group-size", "2"]
    full = run_rl(toy, tmp_path / "full", *extra)
    run_rl(toy, tmp_path / "cut", *extra, "--stop-after", "3")  # killed after step 3: step_2 is the newest checkpoint
    assert not os.path.exists(tmp_path / "cut" / "final")
    resumed = run_rl(toy, tmp_path / "cut", *extra, "--resume")
    assert [r["step"] for r in resumed] == [3, 4]
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["reward"] for r in full[2:]] == [r["reward"] for r in resumed]
    log = [json.loads(l) for l in open(tmp_path / "cut" / "log.jsonl")]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    if algo == "ppo":
        ha = torch.load(tmp_path / "full" / "final" / "value_head.pt", weights_only=False)["head"]
        hb = torch.load(tmp_path / "cut" / "final" / "value_head.pt", weights_only=False)["head"]
        assert all(torch.equal(ha[k], hb[k]) for k in ha)


DDP_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import rl
rl.main(sys.argv[1:], reward_fn=lambda reply, meta: float(len(reply)), correct_fn=lambda reply, meta: False)
"""


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_ddp_two_ranks_gloo(toy, tmp_path, algo):
    data, model = toy
    script = tmp_path / "run.py"
    script.write_text(DDP_SCRIPT.format(root=ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           "--algo", algo, "--model", model, "--data", data, "--out", str(tmp_path / "r"), "--dtype", "fp32",
           "--prompts-per-step", "4", "--group-size", "2", "--max-new-tokens", "6", "--lr", "1e-3", "--max-steps", "2",
           "--micro-batch-size", "2", "--ppo-epochs", "2", "--mini-batch-size", "4"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ranks in sync: True" in proc.stdout
    log = [json.loads(l) for l in open(tmp_path / "r" / "log.jsonl")]
    assert [r["step"] for r in log] == [1, 2] and all(r["ratio_dev_first"] == 0.0 for r in log)
    assert os.path.isfile(tmp_path / "r" / "final" / "model.safetensors")

# -----------------------------------------------------------------------------
# FSDP: two gloo ranks train as one process, resume exactly, and save a plain checkpoint


def fixed_replies(model, prompt_ids, *, n=1, max_new_tokens=256, tokenizer=None, **_):
    """A stand-in for eval.sample whose replies depend on the prompt and the sample's index only (not
    on the seed, the batch or the rank), so that one process and two ranks train on the same rows."""
    ids = [[10 + (sum(p) + 7 * s + 3 * j) % 50 for j in range(1 + (sum(p) + s) % max_new_tokens)]
           for p in prompt_ids for s in range(n)]
    return eval_module.Samples(ids=ids, texts=tokenizer.batch_decode(ids, skip_special_tokens=True),
                               logprobs=[torch.zeros(len(r)) for r in ids],
                               truncated=[len(r) == max_new_tokens for r in ids], stop_reason=["length"] * len(ids))


FSDP_SCRIPT = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import rl, test_rl
if sys.argv[1] == "fixed":
    rl.sample = test_rl.fixed_replies
rl.main(sys.argv[2:], reward_fn=test_rl.length_reward, correct_fn=test_rl.never_correct)
"""
FSDP_BASE = ["--dtype", "fp32", "--prompts-per-step", "4", "--group-size", "2", "--max-new-tokens", "6", "--lr", "1e-3",
             "--micro-batch-size", "2"]
FSDP_ALGOS = {"grpo": ["--algo", "grpo"],  # the paper's: one update a step, no reference
              "ppo": ["--algo", "ppo", "--ppo-epochs", "2", "--kl-coef", "0.05"]}  # a head, a reference, a pre-pass


def fsdp_run(toy, tmp_path, replies, *argv):
    """rl.py --fsdp on two gloo ranks, with the real sampler or fixed_replies; returns its stdout."""
    data, model = toy
    script = tmp_path / "run_fsdp.py"
    script.write_text(FSDP_SCRIPT.format(root=ROOT, tests=os.path.join(ROOT, "tests")))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), replies,
           "--model", model, "--data", data, *FSDP_BASE, "--fsdp", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def head(run_dir):
    return torch.load(os.path.join(str(run_dir), "final", "value_head.pt"), weights_only=False)["head"]


def assert_close(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_fsdp_two_ranks_train_as_one_process(toy, tmp_path, monkeypatch, algo):
    """The same replies (fixed_replies: the sampler's draws depend on the rank) give the same weights on
    two FSDP ranks as on one process, within fp32 rounding."""
    data, model = toy
    argv = [*FSDP_ALGOS[algo], "--max-steps", "3"]
    stdout = fsdp_run(toy, tmp_path, "fixed", *argv, "--out", str(tmp_path / "fsdp"))
    assert "FSDP x2" in stdout and "gathered weights" in stdout  # the memory plan
    monkeypatch.setattr(rl, "sample", fixed_replies)
    rl.main(["--model", model, "--data", data, *FSDP_BASE, *argv, "--out", str(tmp_path / "one")],
            reward_fn=length_reward, correct_fn=never_correct)
    assert_close(weights(tmp_path / "fsdp"), weights(tmp_path / "one"))
    if algo == "ppo":
        assert_close(*[head(tmp_path / d) for d in ("fsdp", "one")])


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_fsdp_resume_is_exact_and_the_checkpoint_plain(toy, tmp_path, algo):
    argv = [*FSDP_ALGOS[algo], "--max-steps", "4", "--save-every", "2"]
    if algo == "grpo":
        argv += ["--kl-coef", "0.05"]  # a sharded reference
    fsdp_run(toy, tmp_path, "sampled", *argv, "--out", str(tmp_path / "full"))
    fsdp_run(toy, tmp_path, "sampled", *argv, "--out", str(tmp_path / "cut"), "--stop-after", "3")  # killed after 3
    fsdp_run(toy, tmp_path, "sampled", *argv, "--out", str(tmp_path / "cut"), "--resume")
    full, cut = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(full[k], cut[k]) for k in full)
    logs = [[json.loads(line) for line in open(tmp_path / d / "log.jsonl")] for d in ("full", "cut")]
    assert [r["reward"] for r in logs[0]] == [r["reward"] for r in logs[1]] and len(logs[1]) == 4
    # the sampler decoded with the gathered weights: its log-probs are the training forward's
    assert all(r["ratio_dev_first"] == 0.0 and r["logp_sampler_diff"] < 1e-5 for r in logs[0] + logs[1])
    if algo == "ppo":
        a, b = head(tmp_path / "full"), head(tmp_path / "cut")
        assert all(torch.equal(a[k], b[k]) for k in a)
    config = json.load(open(tmp_path / "full" / "config.json"))
    assert config["fsdp"] and config["world_size"] == 2
    from transformers import AutoModelForCausalLM  # a plain Hugging Face directory with whole tensors
    lm = AutoModelForCausalLM.from_pretrained(str(tmp_path / "full" / "final"))
    assert all(torch.equal(p, full[k]) for k, p in lm.state_dict().items() if k in full)


def test_memory_plan_counts_the_rollouts():
    args = rl.get_parser().parse_args(["--model", "m", "--data", "d", "--out", "o", "--fsdp", "--kl-coef", "0.1",
                                       "--max-new-tokens", "100", "--pad-multiple", "1"])
    config = SimpleNamespace(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=3)
    plan = rl.memory_plan(args, config, n_params=2 ** 30, world=8, longest_prompt=28, device_type="cuda")
    kv_cache = 32 * 8 * (28 + 100) * 3 * 2 * 2 * 16 * 2  # prompts x group x tokens x layers x K,V x heads x dim x bf16
    assert f"KV cache (256 rows x 128 tokens) {kv_cache / 2 ** 30:.2f} GiB" in plan
    assert "weights 0.50 GiB + grads 0.50 GiB + AdamW 1.00 GiB + reference 0.50 GiB + gathered weights 4.00 GiB" in plan
    assert f"= {6.5 + kv_cache / 2 ** 30:.2f} GiB per GPU" in plan
    args.sample_batch_rows = 64  # the sampler decodes 8 prompts x 8 at a time
    assert "KV cache (64 rows x 128 tokens)" in rl.memory_plan(args, config, 2 ** 30, 8, 28, "cuda")

# -----------------------------------------------------------------------------
# configuration


@pytest.mark.parametrize("extra,message", [
    (["--group-size", "1"], "--group-size >= 2"),
    (["--prompts-per-step", "4", "--group-size", "2", "--mini-batch-size", "3"], "must divide"),
    (["--eval-every", "5"], "--eval-every needs --eval-data"),
    (["--gamma", "0.9"], "PPO flags"),
    (["--temperature", "0"], "--temperature"),
    (["--prompts-per-step", "0"], "must be >= 1"),  # not a ZeroDivisionError from the mini-batch check
    (["--fsdp"], "--fsdp shards over ranks"),
    (["--algo", "ppo", "--dynamic-sampling", "2"], "a GRPO flag"),
    (["--dynamic-sampling", "-1"], "--dynamic-sampling must be >= 0"),
])
def test_incompatible_flags_are_refused(tmp_path, extra, message):
    with pytest.raises(common.UserError, match=message):
        rl.main(["--model", "m", "--data", "d", "--out", str(tmp_path)] + extra)


def test_cli_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "rl.py"), "--model", "m", "--data", "d",
                           "--out", str(tmp_path), "--group-size", "1"], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("rl.py: error:")


# -----------------------------------------------------------------------------
# bad input from the command line: one line, exit status 2, before any model is loaded, OUT untouched

from test_sft import assert_refused, fake_run, snapshot  # noqa: E402

RL_REFUSALS = {  # id: (extra argv, what OUT holds before, message)
    "more prompts a step than prompts": (["--prompts-per-step", 256], None,
                                         "--prompts-per-step 256 is more than the 32 prompts"),
    "lr 0": (["--lr", 0], None, "--lr and --vf-lr must be > 0"),
    "negative kl": (["--kl-coef", -1], None, "must be >= 0"),
    "out under a file": (["--out", "{file}/run"], None, "is a file, not a directory"),
    "empty data": (["--data", "{empty}"], None, "no records in"),
    "missing model": (["--model", "{file}-missing"], None, "model directory not found"),
    "resume without checkpoint": (["--resume"], "config", "--resume: no checkpoint in"),
    "out of another run": ([], "other", "holds another run (data"),
    "fresh start over checkpoints": ([], "same", "already holds a run's checkpoints (step_3/)"),
}


@pytest.mark.parametrize("case", list(RL_REFUSALS))
def test_cli_refuses_bad_input_before_any_work(case, toy, tmp_path):
    data, model = toy
    extra, prior, message = RL_REFUSALS[case]
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "file").write_text("a regular file")
    files = dict(empty=str(tmp_path / "empty.jsonl"), file=str(tmp_path / "file"))
    out = str(tmp_path / "out")
    if prior:
        fake_run(out, data if prior != "other" else str(tmp_path / "gpoints.jsonl"), model=model,
                 steps=() if prior == "config" else (3,))
    argv = ["--model", model, "--data", data, "--out", out, "--prompts-per-step", 4, "--group-size", 2] + extra
    before = snapshot(str(tmp_path))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "rl.py")] + [str(a).format(**files) for a in argv],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert_refused(proc, "rl.py", message, before, str(tmp_path))


SIGNAL_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import rl
rl.main(sys.argv[1:], reward_fn=lambda reply, meta: float(len(reply)), correct_fn=lambda reply, meta: False)
"""


def test_sigterm_saves_a_checkpoint_and_resume_is_exact(toy, tmp_path):
    import signal
    import time
    data, model = toy
    script = tmp_path / "run.py"
    script.write_text(SIGNAL_SCRIPT.format(root=ROOT))
    argv = ["--model", model, "--data", data, "--dtype", "fp32", "--prompts-per-step", "4", "--group-size", "4",
            "--max-new-tokens", "6", "--lr", "1e-3", "--micro-batch-size", "4", "--max-steps", "8"]
    run_rl(toy, tmp_path / "full", "--max-steps", 8)
    out = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, str(script), *argv, "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and not ((out / "log.jsonl").is_file() and (out / "log.jsonl").stat().st_size):
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    ckpt = common.latest_checkpoint(str(out))
    assert ckpt and not (out / "final").exists() and "continue with --resume" in stderr
    run_rl(toy, out, "--max-steps", 8, "--resume")
    a, b = weights(tmp_path / "full"), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(line)["step"] for line in open(out / "log.jsonl")] == list(range(1, 9))
