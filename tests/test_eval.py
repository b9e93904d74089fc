"""Tests of eval.py, and of the KV-cached sampler it plays with (rl.py) on tiny random Qwen2 / Llama
models (CPU, fp32 unless said)."""
import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

import common
import eval as eval_module
import make_data
from eval import Samples, cut_at_stop, sample

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "<think>the player is left of the box</think> <answer>Right</answer>",
    "cards 3 8 8 3, formula 8/(3-8/3) = 24",
]
PROMPTS = ["the quick brown fox", "a", "<answer>Up</answer> the lazy dog jumps over the box", "cards 8 3"]

# -----------------------------------------------------------------------------
# fixtures: sft.py's tiny model directory (byte-level BPE tokenizer, random Qwen2), and tiny random
# models built from configs with that tokenizer (GQA, Llama, eager attention)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_data.build_tiny_model(str(tmp_path_factory.mktemp("m") / "tiny"), TEXTS * 4, hidden=64, layers=2, heads=4,
                                ffn=128, vocab=320)


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return common.load_tokenizer(tiny_dir)


def tiny_model(kind, tok, attn="sdpa"):
    torch.manual_seed(0)
    # a larger init than the default: a random model's replies then react to every input token and
    # position, so a wrong mask or position id changes the greedy output
    size = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.1,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = Qwen2Config(**size) if kind == "qwen2" else LlamaConfig(**size)
    config._attn_implementation = attn
    model = (Qwen2ForCausalLM if kind == "qwen2" else LlamaForCausalLM)(config)
    with torch.no_grad():  # larger logits than the default init, so a sampled reply varies
        model.lm_head.weight.mul_(20.0)
    return model.eval()


@pytest.fixture(scope="module")
def qwen(tok):
    return tiny_model("qwen2", tok)


@pytest.fixture(scope="module")
def prompts(tok):
    return [tok.encode(p) for p in PROMPTS]


def hf_generate(model, prompts, pad_id, **kw):
    """model.generate on left-padded prompts -> the new tokens of every row, cut after the first EOS."""
    T = max(map(len, prompts))
    ids_BT = torch.tensor([[pad_id] * (T - len(p)) + p for p in prompts])
    mask_BT = (ids_BT != pad_id).long()
    for i, p in enumerate(prompts):  # the real tokens are the last len(p), whatever they are
        mask_BT[i] = torch.arange(T) >= T - len(p)
    new_BN = model.generate(input_ids=ids_BT, attention_mask=mask_BT, pad_token_id=pad_id, **kw)[:, T:]
    rows = []
    eos = kw.get("eos_token_id")
    for row in new_BN.tolist():
        if eos is not None and eos in row:
            row = row[:row.index(eos) + 1]
        rows.append(row)
    return rows


# -----------------------------------------------------------------------------
# greedy == generate, batching, seeding


@pytest.mark.parametrize("kind,attn,small_chunks,pad", [("qwen2", "sdpa", False, 1), ("qwen2", "sdpa", True, 1),
                                                        ("qwen2", "sdpa", True, 8), ("llama", "sdpa", False, 32),
                                                        ("qwen2", "eager", False, 5), ("sft-tiny", "sdpa", False, 32)])
def test_greedy_equals_generate(tok, tiny_dir, prompts, kind, attn, small_chunks, pad):
    """pad: prompts and the attended cache rounded up to a multiple of it (masked columns)."""
    model = common.load_model(tiny_dir, "fp32") if kind == "sft-tiny" else tiny_model(kind, tok, attn)
    # an EOS that some rows hit mid-way, so rows finish at different steps (and get dropped)
    free = sample(model, prompts, temperature=0, max_new_tokens=24, eos_ids=[]).ids
    eos = free[1][6]
    ref = hf_generate(model, prompts, tok.pad_token_id, do_sample=False, max_new_tokens=24, eos_token_id=eos)
    assert len({len(r) for r in ref}) > 1, "the test needs rows of different lengths"
    chunks = dict(prefill_tokens=20, max_batch_rows=3, drop_fraction=0.01) if small_chunks else {}
    out = sample(model, prompts, temperature=0, max_new_tokens=24, eos_ids=[eos], pad_multiple=pad, **chunks)
    assert out.ids == ref
    assert out.stop_reason == ["eos" if eos in r else "length" for r in ref]


@pytest.mark.parametrize("small_chunks", [False, True])
def test_shared_prefix_runs_once_and_changes_nothing(tok, qwen, prompts, small_chunks):
    """Prompts that start alike (a chat template's system turn): the prefix is prefilled once per
    chunk, and greedy replies still equal generate's."""
    head = tok.encode("the system says: answer with one word. the user says:")
    shared = [head + p for p in prompts] + [head + prompts[0] + p for p in prompts[1:]]
    seen = []
    hook = qwen.model.register_forward_pre_hook(lambda m, a, kw: seen.append(tuple(kw["input_ids"].shape)),
                                                with_kwargs=True)
    chunks = dict(prefill_tokens=60, max_batch_rows=4) if small_chunks else {}
    try:
        out = sample(qwen, shared, temperature=0, max_new_tokens=12, eos_ids=[], pad_multiple=1, **chunks)
    finally:
        hook.remove()
    assert seen[0][0] == 1 and seen[0][1] >= len(head)  # the prefix, alone
    if not small_chunks:  # one chunk: fewer prompt tokens computed than the prompts hold
        assert sum(b * t for b, t in seen if t > 1) < sum(map(len, shared))
    assert out.ids == hf_generate(qwen, shared, tok.pad_token_id, do_sample=False, max_new_tokens=12)
    assert eval_module.shared_prefix_len([[1, 2, 3], [1, 2, 4], [1, 2]]) == 1  # one token left to each row
    assert eval_module.shared_prefix_len([[5, 6]]) == 0 and eval_module.shared_prefix_len([[1], [2]]) == 0


def test_batch_equals_one_by_one(qwen, prompts):
    batch = sample(qwen, prompts, temperature=0, max_new_tokens=16, eos_ids=[])
    for i, p in enumerate(prompts):
        assert sample(qwen, [p], temperature=0, max_new_tokens=16, eos_ids=[]).ids[0] == batch.ids[i]


def test_group_sampling_is_seeded_and_varies(qwen, prompts):
    kw = dict(n=4, temperature=1.0, max_new_tokens=12, eos_ids=[], seed=3)
    torch.manual_seed(1)
    a = sample(qwen, prompts, **kw)
    torch.manual_seed(2)  # the global RNG plays no part
    b = sample(qwen, prompts, **kw)
    assert a.ids == b.ids and len(a.ids) == 4 * len(prompts)
    for i in range(len(prompts)):  # the n samples of a prompt differ
        group = a.ids[4 * i:4 * i + 4]
        assert len({tuple(g) for g in group}) > 1
    assert sample(qwen, prompts, **{**kw, "seed": 4}).ids != a.ids


def test_top_p_to_zero_is_greedy(qwen, prompts):
    greedy = sample(qwen, prompts, temperature=0, max_new_tokens=12, eos_ids=[])
    nucleus = sample(qwen, prompts, n=2, temperature=1.0, top_p=1e-6, max_new_tokens=12, eos_ids=[])
    assert nucleus.ids == [ids for ids in greedy.ids for _ in range(2)]


@pytest.mark.parametrize("inverse_cdf", [True, False])
def test_sampled_tokens_follow_the_distribution(inverse_cdf, monkeypatch):
    monkeypatch.setitem(eval_module.TRICKS, "inverse_cdf", inverse_cdf)  # False: torch.multinomial (bench.py tricks)
    # one row per distribution: a peaked one, a flat one with zero-mass tokens (what top-p leaves) at
    # both ends; 20,000 draws each, frequencies within 0.015 of the probabilities (about 5 sigma)
    probs = torch.tensor([[0.0, 0.7, 0.2, 0.1, 0.0], [0.25, 0.25, 0.0, 0.25, 0.25]])
    logits = probs.log().repeat_interleave(20_000, dim=0)  # log 0 = -inf: never drawn
    gen = torch.Generator().manual_seed(0)
    tokens, logp = eval_module.sample_tokens(logits, 1.0, 1.0, gen)
    for row, p in enumerate(probs):
        counts = torch.bincount(tokens[row * 20_000:(row + 1) * 20_000], minlength=5) / 20_000
        assert counts[p == 0].sum() == 0
        assert torch.allclose(counts, p, atol=0.015), (counts, p)
    assert torch.allclose(logp.exp(), probs.repeat_interleave(20_000, dim=0).gather(-1, tokens[:, None]).squeeze(-1))


@pytest.mark.parametrize("trick", ["shared_prefix", "sdpa"])
def test_a_trick_switched_off_changes_no_greedy_reply(tok, tiny_dir, prompts, trick, monkeypatch):
    """bench.py tricks times the sampler with each speed trick off: it then decodes as it says (no
    prefix forward alone; eager attention's additive mask) and greedy replies still equal generate's."""
    monkeypatch.setitem(eval_module.TRICKS, trick, False)
    model = common.load_model(tiny_dir, "fp32")  # eager on a CPU
    shared = [tok.encode("the system says: answer with one word. the user says:") + p for p in prompts]
    seen = []
    hook = model.model.register_forward_pre_hook(
        lambda m, a, kw: seen.append((kw["input_ids"].shape[0], kw["attention_mask"].dtype)), with_kwargs=True)
    try:
        out = sample(model, shared, temperature=0, max_new_tokens=12, eos_ids=[])
    finally:
        hook.remove()
    assert out.ids == hf_generate(model, shared, tok.pad_token_id, do_sample=False, max_new_tokens=12)
    assert (seen[0][0] == len(shared)) == (trick == "shared_prefix")  # with it on, the prefix runs alone first
    assert all((dtype == torch.bool) == (trick != "sdpa") for _, dtype in seen)
    assert model.config._attn_implementation == "eager"


def test_sampling_leaves_the_models_attention_as_it_was(tiny_dir, prompts):
    model = common.load_model(tiny_dir, "fp32")  # eager on a CPU; the sampler decodes with SDPA
    assert model.config._attn_implementation == "eager"
    sample(model, prompts, temperature=0, max_new_tokens=4)
    assert model.config._attn_implementation == "eager"


# -----------------------------------------------------------------------------
# stopping: stop strings, max_new_tokens


def test_stop_strings_cut(qwen, tok, prompts):
    free = sample(qwen, prompts, temperature=0, max_new_tokens=20, eos_ids=[], tokenizer=tok)
    text = free.texts[0]
    stop = text[8:11]  # a string the reply is known to contain
    assert len(stop) == 3
    out = sample(qwen, prompts, temperature=0, max_new_tokens=20, eos_ids=[], tokenizer=tok, stop_strings=["@@@", stop])
    for i in range(len(prompts)):
        if stop in free.texts[i]:
            assert out.texts[i] == cut_at_stop(free.texts[i], [stop]) and out.texts[i].endswith(stop)
            assert out.stop_reason[i] == "stop" and not out.truncated[i]
            # generation stopped at the token that completed the stop string
            k = len(out.ids[i])
            assert out.ids[i] == free.ids[i][:k] and stop in tok.decode(out.ids[i])
            assert stop not in tok.decode(out.ids[i][:-1])
        else:
            assert out.ids[i] == free.ids[i] and out.truncated[i]
    assert out.stop_reason[0] == "stop"


def test_cut_at_stop():
    assert cut_at_stop("<think>a</think><answer>Up</answer> more", ["</answer>"]) == \
        "<think>a</think><answer>Up</answer>"
    assert cut_at_stop("x </b> y </a>", ["</a>", "</b>"]) == "x </b>"
    assert cut_at_stop("nothing", ["</a>"]) == "nothing"


def test_max_new_tokens_and_truncated(qwen, tok, prompts):
    out = sample(qwen, prompts, n=2, temperature=1.0, max_new_tokens=5, eos_ids=[], tokenizer=tok)
    assert isinstance(out, Samples)
    assert all(len(ids) == 5 for ids in out.ids) and all(out.truncated)
    assert out.stop_reason == ["length"] * 8 and len(out.texts) == 8
    eos = sample(qwen, prompts, temperature=0, max_new_tokens=5, eos_ids=[]).ids[2][0]  # row 2 ends at once
    out = sample(qwen, prompts, temperature=0, max_new_tokens=5, eos_ids=[eos])
    assert out.ids[2] == [eos] and out.stop_reason[2] == "eos" and not out.truncated[2]


# -----------------------------------------------------------------------------
# log-probs (rl.py's importance ratio is exactly 1 at the start), modes, dtypes


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.0])
def test_logprobs_match_teacher_forcing(qwen, prompts, temperature):
    out = sample(qwen, prompts, n=2, temperature=temperature, max_new_tokens=10, eos_ids=[], return_logprobs=True)
    for i, ids in enumerate(out.ids):
        prompt = prompts[i // 2]
        with torch.no_grad():
            logits_TV = qwen(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1:-1].float()
        logp_TV = F.log_softmax(logits_TV / (temperature or 1.0), dim=-1)
        expected_T = logp_TV.gather(-1, torch.tensor(ids)[:, None]).squeeze(-1)
        assert out.logprobs[i].shape == (len(ids),)
        torch.testing.assert_close(out.logprobs[i], expected_T, atol=1e-4, rtol=1e-4)


def test_training_mode_restored(qwen, prompts):
    qwen.train()
    try:
        out = sample(qwen, prompts, temperature=0, max_new_tokens=4, eos_ids=[])
        assert qwen.training
    finally:
        qwen.eval()
    assert out.ids == sample(qwen, prompts, temperature=0, max_new_tokens=4, eos_ids=[]).ids


def test_bf16_runs(tok, prompts):
    model = tiny_model("llama", tok).to(torch.bfloat16)
    out = sample(model, prompts, n=3, temperature=0.5, max_new_tokens=6, eos_ids=[], return_logprobs=True)
    assert len(out.ids) == 12 and all(len(i) == 6 for i in out.ids)
    assert all(torch.isfinite(lp).all() and (lp <= 0).all() for lp in out.logprobs)


def test_bad_arguments(qwen, prompts):
    with pytest.raises(ValueError):
        sample(qwen, prompts, stop_strings=["x"])  # no tokenizer
    with pytest.raises(ValueError):
        sample(qwen, [[]])
    with pytest.raises(ValueError):
        sample(qwen, prompts, top_p=0.0)
    with pytest.raises(ValueError, match="pad_multiple"):
        sample(qwen, prompts, pad_multiple=0)


def test_position_ids_count_real_tokens(qwen, prompts):
    prompts = sorted(prompts, key=len)  # the sampler batches prompts by length; keep its order here
    seen = []
    hook = qwen.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["position_ids"].clone()),
                                                with_kwargs=True)
    try:
        sample(qwen, prompts, n=2, temperature=0, max_new_tokens=3, eos_ids=[], drop_fraction=2.0)
    finally:
        hook.remove()
    prefill_bT, decode = seen[0], seen[1:]
    T = prefill_bT.shape[1]
    assert T == -(-max(map(len, prompts)) // 32) * 32  # the default pad_multiple
    for i, p in enumerate(prompts):  # left padding: the real tokens are the last len(p) columns
        assert prefill_bT[i, T - len(p):].tolist() == list(range(len(p)))
        assert [d[2 * i, 0].item() for d in decode] == [len(p), len(p) + 1]

# -----------------------------------------------------------------------------
# the evaluator: scripted policies on make_data.py's test sets, the table, CLI errors

import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import env_gpoints  # noqa: E402
import env_sokoban  # noqa: E402
import eval as evaluation  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("data"))
    make_data.main(["--out", out, "--scale", "small", "--style", "compact", "--sok-eval-rooms", "6", "--gp-eval", "6"])
    return out


def compact_state(prompt):
    """(names, env) from a compact Sokoban prompt, as a scripted player reads it."""
    lines = prompt.splitlines()
    names = {direction: word for word, direction in re.findall(r"(\S+) is (Up|Down|Left|Right)", lines[0])}
    return names, env_sokoban.SokobanEnv.from_text("\n".join(lines[1:-1]))


def solver_policy(vocabulary=None):
    """Plays the solver's move, named as the prompt says (or in a fixed vocabulary)."""
    def replies(prompts, seed):
        out = []
        for prompt in prompts:
            names, env = compact_state(prompt)
            word = (vocabulary or names)[env_sokoban.solve(env)[0]]
            out.append(f"<think> </think> <answer> {word} </answer>")
        return out
    return replies


def test_solver_policy_wins_every_variant_but_fake(data):
    sets = evaluation.load_eval_sets(data, "sokoban", evaluation.SOKOBAN_VARIANTS)
    results = evaluation.evaluate_sokoban(solver_policy(), sets, progress=False)
    for variant, m in results.items():
        if variant == "fake":  # the prompt's names (1-4) are not what the environment accepts
            assert (m["success"], m["valid"], m["turns"]) == (0.0, 0.0, 30.0)
        else:
            assert (m["success"], m["valid"], m["effective"]) == (1.0, 1.0, 1.0), variant
            optimal = [len(env_sokoban.solve(env_sokoban.SokobanEnv.from_text(r["meta"]["grid"])))
                       for r in sets[variant]]
            assert m["turns"] == sum(optimal) / len(optimal)


def test_ignoring_the_prompt_wins_fake_only(data):
    sets = evaluation.load_eval_sets(data, "sokoban", ("id", "num", "fake"))
    results = evaluation.evaluate_sokoban(solver_policy(env_sokoban.VOCABS["default"]), sets, progress=False)
    assert results["id"]["success"] == 1.0 and results["fake"]["success"] == 1.0
    assert results["num"]["success"] == 0.0 and results["num"]["valid"] == 0.0


def test_garbage_and_half_valid_policies(data):
    sets = evaluation.load_eval_sets(data, "sokoban", ("id",), limit=4)
    garbage = evaluation.evaluate_sokoban(lambda prompts, seed: ["<answer> jump </answer>" + "x" * 10] * len(prompts),
                                          sets, progress=False)["id"]
    assert (garbage["success"], garbage["valid"], garbage["effective"], garbage["turns"]) == (0.0, 0.0, 0.0, 30.0)
    solver, turn = solver_policy(), {"n": 0}

    def every_other(prompts, seed):  # garbage on even turns, the solver's move on odd ones
        turn["n"] += 1
        return solver(prompts, seed) if turn["n"] % 2 == 0 else ["no idea"] * len(prompts)
    half = evaluation.evaluate_sokoban(every_other, sets, progress=False)["id"]
    assert half["success"] == 1.0 and half["valid"] == pytest.approx(0.5)


@pytest.mark.parametrize("style", ["compact", "full"])
def test_announced_names_are_read_from_either_prompt_style(style):
    grid = "# # # #\n# P X #\n# # # #"
    for vocab, names in env_sokoban.VOCABS.items():
        prompt = make_data.sokoban_prompt(grid, names, style)
        assert evaluation.announced_names(prompt) == [names[a] for a in env_sokoban.ACTIONS], (style, vocab)
    assert evaluation.announced_names("what now?") == []


def test_random_policy_answers_an_announced_name_seeded(data):
    sets = evaluation.load_eval_sets(data, "sokoban", evaluation.SOKOBAN_VARIANTS)
    prompts = [evaluation.Episode(v, r, 30).prompt() for v, records in sets.items() for r in records]
    replies = evaluation.random_replies(prompts + ["no names here"], seed=3)
    assert replies == evaluation.random_replies(prompts + ["no names here"], seed=3) and replies[-1] == ""
    for prompt, reply in zip(prompts, replies):
        assert env_sokoban.answer_tag(reply).strip() in evaluation.announced_names(prompt)
    assert len(set(replies[:-1])) > 4  # varies over rooms and vocabularies
    results = evaluation.evaluate_sokoban(evaluation.random_replies, sets, progress=False)
    assert results["id"]["valid"] == results["rand"]["valid"] == 1.0
    assert results["fake"]["valid"] == results["fake"]["success"] == 0.0  # it answers the announced 1-4


def test_cli_random_baseline_writes_its_row(data, tmp_path):
    out = tmp_path / "random.json"
    result = subprocess.run([sys.executable, "eval.py", "--model", "random", "--task", "sokoban", "--data", data,
                             "--limit", "2", "--label", "random policy", "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    row = json.loads(out.read_text())
    assert row["model"] == "random" and set(row["variants"]) == set(evaluation.SOKOBAN_VARIANTS)
    assert "random policy" in subprocess.run([sys.executable, "eval.py", "--task", "sokoban", "--report", str(out)],
                                             cwd=ROOT, capture_output=True, text=True).stdout


def test_gpoints_scoring_of_known_replies(data):
    sets = evaluation.load_eval_sets(data, "gpoints", evaluation.GPOINTS_VARIANTS)
    by_prompt = {r["messages"][0]["content"]: r["meta"] for records in sets.values() for r in records}

    def solver(prompts, seed):
        return ['<think> </think> {"number": %s, "formula": "%s"}' % (by_prompt[p]["values"][::-1],
                                                                      env_gpoints.solve_one(by_prompt[p]["values"]))
                for p in prompts]
    results = evaluation.evaluate_gpoints(solver, sets, progress=False)
    assert all(m["success"] == 1.0 and m["valid"] == 1.0 and m["values_read"] == 1.0 for m in results.values())
    wrong = evaluation.evaluate_gpoints(lambda prompts, seed: ['{"formula": "1+2"}'] * len(prompts), sets,
                                        progress=False)
    # -2: not the card values
    assert all(m["success"] == 0.0 and m["valid"] == 0.0 and m["values_read"] == 0.0 for m in wrong.values())

    def shown_values(prompts, seed):  # reads the rule as the prompt states it, then fails the arithmetic
        return ['{"number": %s, "formula": "1+2"}' % env_gpoints.hand_values(by_prompt[p]["cards"],
                                                                             by_prompt[p]["mapping"])
                for p in prompts]
    shown = evaluation.evaluate_gpoints(shown_values, sets, progress=False)
    assert shown["id"]["values_read"] == 1.0 and shown["all5"]["values_read"] == 1.0 and shown["id"]["success"] == 0.0
    assert shown["fake"]["values_read"] == 0.0  # Fake scores J/Q/K as 10 whatever the prompt says


def test_wilson_interval_and_table_lists_every_variant():
    lo, hi = evaluation.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = evaluation.wilson_interval(50, 100)
    assert (lo, hi) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))
    results = {v: dict(success=0.5, success_ci=(0.4, 0.6), valid=1.0) for v in evaluation.SOKOBAN_VARIANTS}
    table = evaluation.format_table(results, "Ans.")
    header = table.splitlines()[0]
    assert all(f" {v} " in header for v in evaluation.SOKOBAN_VARIANTS)
    assert "0.50 [0.40, 0.60]" in table and evaluation.average_except_fake(results) == 0.5


def test_distill_keeps_the_first_correct_reply(data, monkeypatch):
    path = os.path.join(data, "sokoban", "train_ans.jsonl")
    records = [json.loads(line) for line in open(path, encoding="utf-8")][:5]
    good = lambda r: (  # noqa: E731
        f"<think> plan </think> <answer> {r['meta']['names'][r['meta']['optimal'][0]]} </answer>")

    def fake_sample(model, prompt_ids, *, n, **kw):  # replies: wrong, right, right for even prompts; all wrong for odd
        texts = []
        for i in range(len(prompt_ids)):
            record = records[i]
            texts += ["<answer> nope </answer>", good(record), good(record) + "!"] if i % 2 == 0 else ["nope"] * n
        return Samples(ids=None, texts=texts, logprobs=None, truncated=None, stop_reason=None)
    monkeypatch.setattr(evaluation, "sample", fake_sample)
    monkeypatch.setattr(evaluation, "prompt_ids", lambda tok, contents: [[1] for _ in contents])
    kept, share = evaluation.distill(None, None, records, samples=3, progress=False)
    assert len(kept) == 3 and share == pytest.approx(3 / 5)
    for r in kept:
        assert r["messages"][1]["content"] == good(r) and r["meta"]["distilled"]
        assert evaluation.is_correct(r["messages"][1]["content"], r["meta"])


def test_cli_runs_on_a_tiny_model_and_reports_bad_input(data, tmp_path):
    model_dir = make_data.build_tiny_model(str(tmp_path / "tiny"), TEXTS * 4, hidden=32, layers=1, heads=2, ffn=64, vocab=300)
    out = tmp_path / "gp.json"
    run = lambda *a: subprocess.run([sys.executable, "eval.py", *a], cwd=ROOT,
                                    capture_output=True, text=True)  # noqa: E731
    result = run("--model", model_dir, "--task", "gpoints", "--data", data, "--limit", "2", "--max-new-tokens", "4",
                 "--out", str(out))
    assert result.returncode == 0, result.stderr
    saved = json.loads(out.read_text())
    assert list(saved["variants"]) == list(evaluation.GPOINTS_VARIANTS) and "| valid |" in result.stdout
    for args, message in ((("--model", str(tmp_path / "missing"), "--task", "sokoban", "--data", data),
                           "model directory not found"),
                          (("--model", model_dir, "--task", "sokoban", "--data", str(tmp_path)),
                           "data file not found")):
        result = run(*args)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_report_puts_the_papers_row_under_each_method(tmp_path):
    results = {v: dict(success=1.0, success_ci=(0.9, 1.0), valid=1.0) for v in evaluation.SOKOBAN_VARIANTS}
    path = tmp_path / "ans.json"
    path.write_text(json.dumps(dict(task="sokoban", label="Ans.", variants=results)))
    result = subprocess.run([sys.executable, "eval.py", "--task", "sokoban", "--report", str(path)], cwd=ROOT,
                            capture_output=True, text=True)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and lines[2].startswith("| Ans. | 1.00 |")
    assert lines[3].startswith("| *paper* | *0.98* |")


def test_report_names_the_chosen_checkpoint_and_the_papers_row_of_a_qualified_label(tmp_path):
    """A row the checkpoint rule chose says its step (a sweep file its best step, an --out file its model's
    step_N); final/ rows say final; a table of final/ rows alone has no such column. 'CoT (search)' gets
    the paper's CoT row under it, 'CoT (search) (final)' and unknown methods none."""
    results = {v: dict(success=0.5, success_ci=(0.3, 0.7), valid=1.0) for v in evaluation.SOKOBAN_VARIANTS}
    files = dict(ans=dict(task="sokoban", label="Ans.", model="runs/x/sok-ans/final", variants=results),
                 cot=dict(task="sokoban", label="CoT (relative)", model="runs/x/sok-cot/step_250/", variants=results),
                 sweep=dict(task="sokoban", label="Diver.+CoT", best="r/step_40", best_step=40,
                            curve=[dict(step=40, path="r/step_40", average=0.5, results=results)]),
                 final=dict(task="sokoban", label="CoT (relative) (final)", model="runs/x/sok-cot/final", variants=results),
                 hub=dict(task="sokoban", label="Other", model="org/model", variants=results))
    paths = {}
    for name, saved in files.items():
        paths[name] = str(tmp_path / f"{name}.json")
        (tmp_path / f"{name}.json").write_text(json.dumps(saved))
    lines = evaluation.report_file_table("sokoban", list(paths.values())).splitlines()
    assert lines[0].endswith("| mean w/o Fake | checkpoint |")
    labels_and_checkpoints = [(line.split(" | ")[0], line.split(" | ")[-1]) for line in lines[2:]]
    assert labels_and_checkpoints == [("| Ans.", "final |"), ("| *paper*", " |"), ("| CoT (relative)", "step 250 |"),
                                      ("| *paper*", " |"), ("| Diver.+CoT", "step 40 |"), ("| *paper*", " |"),
                                      ("| CoT (relative) (final)", "final |"), ("| Other", "- |")]
    assert lines[5].startswith("| *paper* | *1.00* | *0.73* |")  # the paper's CoT under 'CoT (relative)'
    assert all(len(line.split("|")) == len(lines[0].split("|")) for line in lines)
    finals = evaluation.report_file_table("sokoban", [paths["ans"], paths["final"]])
    assert "checkpoint" not in finals and finals == evaluation.format_report(
        "sokoban", evaluation.read_report_rows("sokoban", [paths["ans"], paths["final"]]))
    assert evaluation.paper_row("gpoints", "RL (warm)") == evaluation.PAPER_TABLE1["gpoints"]["RL (warm)"]
    assert evaluation.paper_row("gpoints", "RL (cold)") is None and evaluation.paper_row("gpoints", "CoT") is not None


def test_plot_logs_draws_rl_logs_side_by_side_and_refuses_what_it_cannot_draw(tmp_path, monkeypatch):
    """--plot-logs: one panel per rl.py log, the held-out scores of --eval-every among its series; without
    --logs, or beside a model, it is refused before anything is written."""
    log = tmp_path / "lr1e-5" / "log.jsonl"
    log.parent.mkdir()
    rows = [dict(step=s, reward=0.1 * s, accuracy=0.1 * s, zero_var_groups=0.05 * s) for s in (1, 2, 3, 4)]
    rows[1].update(eval_id_first_move_acc=0.5, eval_id_success=0.2, eval_id_n=10)
    rows[3].update(eval_id_first_move_acc=0.6, eval_id_success=0.3, eval_id_n=10)
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    drawn = {}
    monkeypatch.setattr(evaluation, "_save_png", lambda fig, path: drawn.update(
        titles=[ax.get_title(loc="left") for ax in fig.axes],
        lines={line.get_label(): list(line.get_xdata()) for ax in fig.axes for line in ax.get_lines()}))
    pytest.importorskip("matplotlib")
    evaluation.main(["--task", "sokoban", "--plot-logs", str(tmp_path / "p.png"), "--logs", str(log), str(log)])
    assert drawn["titles"].count("lr1e-5") == 2
    assert drawn["lines"]["held-out: eval_id_success"] == [2, 4] and "held-out: eval_id_n" not in drawn["lines"]
    assert drawn["lines"]["train: groups w/o variance"] == [1, 2, 3, 4]
    for argv, message in ((["--plot-logs", "x.png"], "name the logs"),
                          (["--plot-logs", "x.png", "--logs", str(log), "--model", "m"], "training logs only"),
                          (["--logs", str(log)], "--logs go with")):
        with pytest.raises(evaluation.UserError, match=message):
            evaluation.check_args(evaluation.get_parser().parse_args(["--task", "sokoban", *argv]))


def test_report_plot_draws_the_table(tmp_path, monkeypatch):
    """--plot writes Table 1 as a PNG (atomically, one panel per method); without matplotlib it
    is a one-line error that says what to install."""
    results = {v: dict(success=0.5, success_ci=(0.4, 0.6), valid=1.0) for v in evaluation.SOKOBAN_VARIANTS}
    rows = [("Ans.", results), ("my method", results)]
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
        with pytest.raises(evaluation.UserError, match="pip install matplotlib"):
            evaluation.plot_report("sokoban", rows, str(tmp_path / "other.png"))
    pytest.importorskip("matplotlib")
    png = tmp_path / "table.png"
    evaluation.plot_report("sokoban", rows, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and [p.name for p in tmp_path.iterdir()] == ["table.png"]


def test_plot_curves_draws_each_sweep_and_refuses_plain_rows(tmp_path, monkeypatch):
    results = {v: dict(success=0.5, success_ci=(0.4, 0.6), valid=1.0) for v in evaluation.SOKOBAN_VARIANTS}
    curve = [dict(step=s, path=f"run/step_{s}", average=s / 100, results=results) for s in (10, 20)]
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps(dict(task="sokoban", run="run", label="CoT", best="run/step_20", curve=curve)))
    row = tmp_path / "row.json"
    row.write_text(json.dumps(dict(task="sokoban", label="Ans.", variants=results)))
    run = lambda *a: subprocess.run([sys.executable, "eval.py", "--task", "sokoban", "--report", *a], cwd=ROOT,
                                    capture_output=True, text=True)  # noqa: E731
    result = run(str(row), "--plot-curves", str(tmp_path / "no.png"))
    assert result.returncode == 2 and "none of the --report files is an --sweep file" in result.stderr
    assert not (tmp_path / "no.png").exists()
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "matplotlib", None)
        with pytest.raises(evaluation.UserError, match="pip install matplotlib"):
            evaluation.plot_curves([json.loads(sweep.read_text())], str(tmp_path / "other.png"))
    pytest.importorskip("matplotlib")
    result = run(str(row), str(sweep), "--plot-curves", str(tmp_path / "curves.png"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # each sweep's training log on its panel: rl.py's (right replies, groups without variance), sft.py's (loss)
    rl_log, sft_log = tmp_path / "rl.jsonl", tmp_path / "sft.jsonl"
    rl_log.write_text("".join(json.dumps(dict(step=s, accuracy=s / 20, zero_var_groups=0.1)) + "\n" for s in range(1, 21)))
    sft_log.write_text("".join(json.dumps(dict(step=s, loss=1 / s)) + "\n" for s in range(1, 3)))
    result = run(str(sweep), str(sweep), "--plot-curves", str(tmp_path / "logs.png"), "--logs", str(rl_log), str(sft_log))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "logs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = run(str(sweep), "--plot-curves", str(tmp_path / "no.png"), "--logs", str(rl_log), str(sft_log))
    assert result.returncode == 2 and "2 logs for 1 --sweep files" in result.stderr
    result = run(str(sweep), "--logs", str(tmp_path / "missing.jsonl"))
    assert result.returncode == 2 and "--logs go with --report ... --plot-curves" in result.stderr
    result = run(str(sweep), "--plot-curves", str(tmp_path / "no.png"), "--logs", str(tmp_path / "missing.jsonl"))
    assert result.returncode == 2 and "missing.jsonl" in result.stderr and not (tmp_path / "no.png").exists()


def base_oracle(prompt):
    """Answers a base-corpus prompt by reading it (arithmetic left out: 'compute' gets '?')."""
    head, question = prompt.split("\n")
    if head.startswith("copy:"):
        return head[len("copy:"):].rsplit(".", 1)[0].strip()
    if head.startswith("lookup:"):
        pairs = [p.split(" is ") for p in head[len("lookup:"):].split(", ")]
        by_value = {v.strip(): k.strip() for k, v in pairs}
        by_key = {k.strip(): v.strip() for k, v in pairs}
        verb, _, asked = question.partition(" is ") if " is " in question else question.partition(" are ")
        table = by_value if verb == "which" else by_key
        return " ".join(table[w] for w in asked.rstrip(" ?").split())
    return "?"


def test_base_skills_are_scored_per_kind(tmp_path):
    make_data.main(["--out", str(tmp_path), "--scale", "small", "--tasks", "base", "--style", "compact"])
    train = {json.loads(line)["messages"][0]["content"] for line in open(tmp_path / "base" / "train.jsonl")}
    records = [json.loads(line) for line in open(tmp_path / "base" / "eval.jsonl")]
    assert records and not train & {r["messages"][0]["content"] for r in records}  # held out
    oracle = lambda prompts, seed: [  # noqa: E731
        f"<think> </think> <answer>  {base_oracle(p)} </answer>" for p in prompts]
    results = evaluation.evaluate_base(oracle, {"base": records})
    assert {k: m["success"] for k, m in results.items() if k != "arithmetic"} == {"copy": 1.0, "lookup-key": 1.0,
                                                                                  "lookup-value": 1.0}
    assert results["arithmetic"]["success"] == 0.0 and sum(m["n"] for m in results.values()) == len(records)
    assert all(m["valid"] == 1.0 for m in results.values())  # '?' is a wrong answer, but a well-formed one
    broken = lambda prompts, seed: [f"<answer> {base_oracle(p)}" for p in prompts]  # noqa: E731  (no closing tag)
    results = evaluation.evaluate_base(broken, {"base": records})
    assert all(m["success"] == 0 and m["valid"] == 0 for m in results.values())


EVAL_REFUSALS = {  # id: (argv, message); every one fires before a model is loaded
    "limit 0": (["--model", "{model}", "--task", "sokoban", "--limit", "0"], "--limit must be >= 1"),
    "limit -1": (["--model", "{model}", "--task", "sokoban", "--limit", "-1"], "--limit must be >= 1"),
    "temperature -1": (["--model", "{model}", "--task", "sokoban", "--temperature", "-1"],
                       "--temperature must be >= 0"),
    "out under a file": (["--model", "{model}", "--task", "sokoban", "--out", "{file}/r.json"],
                         "is a file, not a directory"),
    "unknown variant": (["--model", "{model}", "--task", "gpoints", "--variants", "alpha"],
                        "--variants: unknown alpha"),
    "random on gpoints": (["--model", "random", "--task", "gpoints"], "--model random is Sokoban's"),
    "report of another task": (["--task", "gpoints", "--report", "{sokoban}"],
                               "holds sokoban results, not gpoints ones"),
}


@pytest.mark.parametrize("case", list(EVAL_REFUSALS))
def test_cli_refuses_bad_input_before_any_work(case, data, tmp_path):
    from test_sft import assert_refused, snapshot
    argv, message = EVAL_REFUSALS[case]
    (tmp_path / "file").write_text("a regular file")
    (tmp_path / "sok.json").write_text(json.dumps(dict(task="sokoban", label="Ans.", variants={})))
    files = dict(model=str(tmp_path / "no-model-needed"), file=str(tmp_path / "file"),
                 sokoban=str(tmp_path / "sok.json"))
    before = snapshot(str(tmp_path))
    result = subprocess.run([sys.executable, "eval.py", "--data", data] + [a.format(**files) for a in argv], cwd=ROOT,
                            capture_output=True, text=True)
    assert_refused(result, "eval.py", message, before, str(tmp_path))


def test_sweep_takes_final_as_its_last_checkpoint(tmp_path):
    for name in ("step_20", "step_10", "step_x", ".tmp_step_30", "final"):
        (tmp_path / name).mkdir()
    assert evaluation.sweep_checkpoints(str(tmp_path)) == [(10, str(tmp_path / "step_10")),
                                                           (20, str(tmp_path / "step_20"))]  # final/ unfinished
    torch.save({"step": 30}, tmp_path / "final" / "trainer_state.pt")
    assert evaluation.sweep_checkpoints(str(tmp_path))[-1] == (30, str(tmp_path / "final"))


def test_report_skips_the_base_file_and_reads_sweeps(tmp_path):
    results = {v: dict(success=0.5, success_ci=(0.4, 0.6), valid=1.0, values_read=0.25)
               for v in evaluation.GPOINTS_VARIANTS}
    (tmp_path / "base.json").write_text(json.dumps(dict(task="base", label="base",
                                                        variants={"copy": dict(success=0.5)})))
    (tmp_path / "gp-ans.json").write_text(json.dumps(dict(task="gpoints", label="Ans.", variants=results)))
    curve = [dict(step=s, path=f"run/step_{s}", average=0.5, results=results) for s in (10, 20)]
    (tmp_path / "gp-sweep.json").write_text(json.dumps(dict(task="gpoints", run="run", label="CoT", best="run/step_20",
                                                            curve=curve)))
    result = subprocess.run([sys.executable, "eval.py", "--task", "gpoints", "--report",
                             *sorted(map(str, tmp_path.iterdir()))],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "skipped" in result.stderr and "base.json" in result.stderr
    rows = [line.split(" | ")[0] for line in result.stdout.splitlines() if line.startswith("| ")]
    assert rows == ["| method", "| Ans.", "| *paper*", "| CoT", "| *paper*",
                    "| method", "| Ans.", "| CoT"]  # success, then values read
    assert "| Ans. | 0.25 | 0.25 |" in result.stdout


def test_readme_tables_come_from_the_committed_results():
    """Every results table of results/README.md is what `eval.py --report` prints from the committed JSON files."""
    readme = open(os.path.join(ROOT, "results", "README.md"), encoding="utf-8").read()
    for task, rows in (("sokoban", "ans diverse_ans cot diverse_cot rl"),
                       ("gpoints", "ans diverse_ans cot diverse_cot rl")):
        paths = [os.path.join(ROOT, "results", "tiny", task, f"{task}-{row}.json") for row in rows.split()]
        table = evaluation.report_file_table(task, paths)
        assert table in readme, task
        assert open(os.path.join(ROOT, "results", "tiny", task, f"{task}.md"), encoding="utf-8").read().strip() == table
    for model, tag in (("tiny", "quick"), ("smollm2", "quick"), ("smollm2", "quick-seed1"),
                       ("smollm2", "quick-amd")):
        quick = [os.path.join(ROOT, "results", model, tag, f"sokoban-{row}.json") for row in ("ans", "diverse_ans")]
        table = evaluation.report_file_table("sokoban", quick)
        committed = open(os.path.join(ROOT, "results", model, tag, "sokoban.md"), encoding="utf-8").read()
        assert table in readme and committed.strip() == table
    # the SmolLM2 full study, row by row as its rows land (study order)
    for task in ("sokoban", "gpoints"):
        folder = os.path.join(ROOT, "results", "smollm2", task)
        rows = [os.path.join(folder, f"{task}-{row}.json") for row in ("ans", "diverse_ans", "cot", "diverse_cot", "rl")]
        rows = [p for p in rows if os.path.exists(p)]
        if task == "gpoints":  # the searching CoT's rows (COT=search, their own folder) each under its path one
            search = os.path.join(ROOT, "results", "smollm2", "gpoints-cotsearch")
            rows.insert(3, os.path.join(search, "gpoints-cot.json"))
            rows.insert(5, os.path.join(search, "gpoints-diverse_cot.json"))
        else:  # the relative CoT's rows (COT=relative) each under its absolute one; the RL (warm) row from the
            # 125-step warm start, kept in its own folder beside the re-run
            relative = os.path.join(ROOT, "results", "smollm2", "sokoban-cotrelative")
            rows.insert(3, os.path.join(relative, "sokoban-cot.json"))
            rows.insert(5, os.path.join(relative, "sokoban-diverse_cot.json"))
            rows.append(os.path.join(ROOT, "results", "smollm2", "sokoban-rlwarm-lr1e-4-row", "sokoban-rl.json"))
        table = evaluation.report_file_table(task, rows)
        committed = open(os.path.join(folder, f"{task}.md"), encoding="utf-8").read()
        assert rows and table in readme and committed.strip() == table, task
