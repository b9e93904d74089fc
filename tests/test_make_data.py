"""make_data.py: determinism, disjointness, correct targets, the variants as in PAPER.md."""
import filecmp
import json
import os
import subprocess
import sys

import pytest

import env_gpoints as gp
import env_sokoban as sok
import make_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOK_FILES = ["train_ans", "train_cot", "train_diverse_ans", "train_diverse_cot", "rl", "rl_diverse"] + [
    f"eval_{v}" for v in ("id", "alpha", "num", "rand", "large", "twoboxes", "complex", "fake")]
GP_FILES = ["train_ans", "train_cot", "train_diverse_ans", "train_diverse_cot", "rl", "rl_diverse"] + [
    f"eval_{v}" for v in ("id", "all5", "all7", "all12", "regular", "large", "five", "fake")]


def load(directory, task, name):
    with open(os.path.join(directory, task, f"{name}.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    make_data.main(["--out", str(out), "--scale", "small", "--sok-train-rooms", "60", "--gp-train", "300"])
    return str(out)


def test_every_file_written_with_the_chat_format(data):
    for task, names in (("sokoban", SOK_FILES), ("gpoints", GP_FILES)):
        for name in names:
            records = load(data, task, name)
            assert records, (task, name)
            for r in records:
                roles = [m["role"] for m in r["messages"]]
                assert roles == (["user", "assistant"] if name.startswith("train") else ["user"]), (task, name)
                assert r["meta"]["task"] == task
        assert not [f for f in os.listdir(os.path.join(data, task)) if ".tmp" in f]


def test_same_command_same_bytes_and_seed_changes_them(tmp_path):
    args = ["--scale", "small"]
    make_data.main(["--out", str(tmp_path / "a"), *args])
    make_data.main(["--out", str(tmp_path / "b"), *args])
    make_data.main(["--out", str(tmp_path / "c"), *args, "--seed", "1"])
    for task, names in (("sokoban", SOK_FILES), ("gpoints", GP_FILES)):
        for name in names:
            a, b, c = (str(tmp_path / d / task / f"{name}.jsonl") for d in "abc")
            assert filecmp.cmp(a, b, shallow=False), (task, name)
            assert not filecmp.cmp(a, c, shallow=False), (task, name)


def test_sokoban_targets_are_optimal_and_cot_names_the_action(data):
    for name in ("train_ans", "train_cot", "train_diverse_ans", "train_diverse_cot"):
        for r in load(data, "sokoban", name):
            meta = r["meta"]
            env = sok.SokobanEnv.from_text(meta["grid"])
            assert set(meta["optimal"]) == sok.optimal_actions(env)  # recomputed, not trusted
            action = sok.parse_answer(r["messages"][1]["content"], meta["names"])
            assert action in meta["optimal"]
            assert meta["grid"] in r["messages"][0]["content"]
            if name.endswith("cot"):
                assert f"named {meta['names'][action]}." in r["messages"][1]["content"]


def assert_eval_never_in_training(data, task, files, key):
    """No training or RL record has the key (of its meta) of an evaluation record."""
    eval_keys = {key(r["meta"]) for v in files if v.startswith("eval") for r in load(data, task, v)}
    for name in files:
        if not name.startswith("eval"):
            for r in load(data, task, name):
                assert key(r["meta"]) not in eval_keys


def test_sokoban_eval_never_overlaps_training_in_any_orientation(data):
    assert_eval_never_in_training(data, "sokoban", SOK_FILES, lambda meta: sok.canonical_key(meta["grid"]))


def test_sokoban_variants_as_in_the_paper(data):
    expected = {  # dims, boxes, names shown, names accepted
        "id": ((6, 6), 1, "default", "default"), "alpha": ((6, 6), 1, "alpha", "alpha"),
        "num": ((6, 6), 1, "num", "num"), "rand": ((6, 6), 1, "rand", "rand"),
        "large": ((10, 10), 1, "default", "default"), "twoboxes": ((6, 6), 2, "default", "default"),
        "complex": ((10, 10), 2, "default", "default"), "fake": ((6, 6), 1, "num", "default")}
    id_grids = [r["meta"]["grid"] for r in load(data, "sokoban", "eval_id")]
    for variant, (dim, boxes, names, accepted) in expected.items():
        records = load(data, "sokoban", f"eval_{variant}")
        for r in records:
            meta = r["meta"]
            env = sok.SokobanEnv.from_text(meta["grid"])
            assert (env.dim, env.num_boxes, tuple(meta["dim"]), meta["num_boxes"]) == (dim, boxes, dim, boxes)
            assert meta["names"] == sok.VOCABS[names] and meta["accepted"] == sok.VOCABS[accepted]
            assert set(meta["optimal"]) == sok.optimal_actions(env) and len(sok.solve(env)) <= 30
            for word in meta["names"].values():
                assert f"<answer> {word} </answer>" in r["messages"][0]["content"]
        if variant in ("alpha", "num", "rand", "fake"):  # paired with ID: the same rooms
            assert [r["meta"]["grid"] for r in records] == id_grids
    assert sok.VOCABS["rand"]["Left"] == "1"
    fake = load(data, "sokoban", "eval_fake")[0]
    assert "1 is Up" in fake["messages"][0]["content"] and fake["meta"]["accepted"]["Up"] == "Up"


def test_diverse_names_vary_and_never_use_a_test_word(data):
    test_words = {w.casefold() for v in sok.VOCABS.values() for w in v.values()}
    seen = set()
    for name in ("train_diverse_ans", "train_diverse_cot", "rl_diverse"):
        for r in load(data, "sokoban", name):
            words = list(r["meta"]["names"].values())
            assert len(set(words)) == 4
            assert not {w.casefold() for w in words} & test_words
            assert all(len(w) > 1 and w.isalpha() for w in words)
            seen.add(tuple(words))
    assert len(seen) > 50


def test_default_share_keeps_the_default_names_in_a_share_of_the_diverse_records(tmp_path):
    make_data.main(["--out", str(tmp_path / "a"), "--scale", "small", "--tasks", "sokoban", "--sok-train-rooms", "60"])
    make_data.main(["--out", str(tmp_path / "b"), "--scale", "small", "--tasks", "sokoban", "--sok-train-rooms", "60",
                    "--sok-default-share", "0.25"])
    for name in ("train_diverse_ans", "train_diverse_cot"):
        plain, mixed = load(tmp_path / "a", "sokoban", name), load(tmp_path / "b", "sokoban", name)
        kept = [m["meta"]["names"] == sok.VOCABS["default"] for m in mixed]
        assert 0.15 < sum(kept) / len(kept) < 0.35 and not any(p["meta"]["names"] == sok.VOCABS["default"]
                                                                   for p in plain)
        # the other records keep the names the plain set drew, and every target answers an optimal move
        assert all(m == p for m, p, k in zip(mixed, plain, kept) if not k)
        for m in mixed:
            assert sok.parse_answer(m["messages"][1]["content"], m["meta"]["names"]) in m["meta"]["optimal"]
    for other in ("train_ans", "train_cot", "eval_id", "rl_diverse"):
        assert load(tmp_path / "a", "sokoban", other) == load(tmp_path / "b", "sokoban", other)


def test_gpoints_targets_score_five_and_cot_reaches_target(data):
    for name in ("train_ans", "train_cot", "train_diverse_ans", "train_diverse_cot"):
        for r in load(data, "gpoints", name):
            meta = r["meta"]
            assert gp.hand_values(meta["cards"], meta["mapping"]) == meta["values"]
            assert gp.score(r["messages"][1]["content"], meta["values"], meta["target"]) == 5
            if name.endswith("cot"):
                assert "reached 24." in r["messages"][1]["content"]


def test_gpoints_eval_hands_never_in_training(data):
    assert_eval_never_in_training(data, "gpoints", GP_FILES, lambda meta: gp.hand_key(meta["cards"]))


def test_gpoints_mappings_as_in_the_paper(data):
    test_mappings = [gp.MAPPINGS[m] for m in gp.TEST_MAPPINGS]
    diverse = {tuple(r["meta"]["mapping"].values()) for r in load(data, "gpoints", "train_diverse_ans")}
    assert diverse == {tuple(gp.MAPPINGS[m].values()) for m in gp.TRAIN_DIVERSE_MAPPINGS}
    for name in ("train_ans", "train_cot", "train_diverse_ans", "train_diverse_cot", "rl", "rl_diverse"):
        assert all(r["meta"]["mapping"] not in test_mappings for r in load(data, "gpoints", name))
    expected = {"id": ("all10", "all10", 4), "all5": ("all5", "all5", 4), "all7": ("all7", "all7", 4),
                "all12": ("all12", "all12", 4), "regular": ("regular", "regular", 4),
                "large": ("all10", "all10", 4), "five": ("all10", "all10", 5), "fake": ("all5", "all10", 4)}
    for variant, (shown, scored, n_cards) in expected.items():
        for r in load(data, "gpoints", f"eval_{variant}"):
            meta = r["meta"]
            assert meta["mapping"] == gp.MAPPINGS[shown] and len(meta["cards"]) == n_cards
            assert meta["values"] == gp.hand_values(meta["cards"], scored) and gp.is_solvable(meta["values"])
            if variant == "large":
                assert any(c in gp.LARGE_RANKS for c in meta["cards"])
            if variant in ("id", "all5", "all7", "all12", "regular", "fake"):
                assert any(c in gp.FACE_RANKS for c in meta["cards"])
    fake = load(data, "gpoints", "eval_fake")[0]
    assert "count as '5'" in fake["messages"][0]["content"]


def test_compact_style_keeps_the_information():
    grid = "# # # #\n# P X #\n# _ O #\n# # # #"
    prompt = make_data.sokoban_prompt(grid, sok.VOCABS["alpha"], style="compact")
    assert grid in prompt and all(f"{w} is {a}" in prompt for a, w in sok.VOCABS["alpha"].items())
    prompt = make_data.gpoints_prompt(["J", "3", "5", "A"], "regular", style="compact")
    assert "J 3 5 A" in prompt and "J=11 Q=12 K=13" in prompt


@pytest.mark.parametrize("argv, message", [
    (["--bogus"], "unrecognized arguments"),
    (["--out", "/proc/forbidden/data", "--scale", "small"], "cannot write to"),
    (["--sok-default-share", "1.5"], "--sok-default-share 1.5: must be between 0 and 1"),
])
def test_bad_arguments_give_one_line(argv, message):
    result = subprocess.run([sys.executable, "make_data.py", *argv], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_base_corpus_is_generic_and_answerable(tmp_path):
    make_data.main(["--out", str(tmp_path), "--scale", "small", "--tasks", "base", "--style", "compact"])
    records = load(str(tmp_path), "base", "train")
    assert len(records) == 200 and {r["meta"]["kind"] for r in records} == {"lookup-key", "lookup-value", "copy",
                                                                            "arithmetic"}
    forbidden = {"up", "down", "left", "right", "sokoban", "cards", "√"}
    for r in records:
        prompt, reply = r["messages"][0]["content"], r["messages"][1]["content"]
        assert not forbidden & {w.casefold().strip(",.?") for w in prompt.split()}
        answer = sok.parse_answer(reply, {"Up": reply.split("<answer>")[1].split("</answer>")[0].strip()})
        assert answer == "Up"  # one well-formed answer tag
        word = reply.split("<answer>")[1].split("</answer>")[0].strip()
        if r["meta"]["kind"] != "arithmetic":
            # copied, spaced as in the reply
            assert f" {word.split()[0]} " in prompt.replace("\n", " ").replace(",", " ")
        else:
            assert int(word) == _arith(prompt.split(":")[1].split("\n")[0].strip())


def _arith(expression):
    """A tiny evaluator for the base corpus's +, -, * expressions (one bracket pair at most)."""
    if expression.startswith("("):
        inner, rest = expression[1:].split(")")
        return _arith(str(_arith(inner)) + rest) if rest else _arith(inner)
    for op in "+-*":
        left, sep, right = expression[1:].partition(op)
        if sep:
            a, b = int(expression[0] + left), int(right)
            return a + b if op == "+" else a - b if op == "-" else a * b
    return int(expression)


def test_make_data_refuses_negative_sizes_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "make_data.py", "--out", str(tmp_path / "d"), "--sok-train-rooms", "-3"],
                            cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr and not (tmp_path / "d").exists()
    assert result.stderr.strip().splitlines() == ["make_data.py: error: --sok-train-rooms -3: sizes must be >= 1"]


def test_readme_file_counts_are_what_make_data_writes(tmp_path):
    """The README's data listing states each file's record count at the paper's sizes: it must be
    what `make_data.py --out data` writes (a real run, ~15 s), so the figures cannot go stale."""
    import re
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    listing = re.search(r"\n(data/sokoban/train_ans\.jsonl.*?)\n```", readme, re.S).group(1)
    stated = {}
    for line in listing.splitlines():
        counted = re.search(r"\(([\d,]+) each\)", line)
        if not counted:
            continue
        names = line[:counted.start()].split()
        folder = os.path.dirname(names[0])
        for name in [os.path.basename(names[0])] + names[1:]:
            braces = re.fullmatch(r"(\w*)\{(.*)\}(\.jsonl)", name)
            for expanded in ([braces[1] + v + braces[3] for v in braces[2].split(",")] if braces else [name]):
                stated[f"{folder}/{expanded}"] = int(counted[1].replace(",", ""))
    assert len(stated) == 28
    make_data.main(["--out", str(tmp_path / "data")])
    written = {f"data/{task}/{name}": sum(1 for _ in open(tmp_path / "data" / task / name))
               for task in ("sokoban", "gpoints") for name in os.listdir(tmp_path / "data" / task)}
    assert stated == written
    n_sft = written["data/sokoban/train_ans.jsonl"]
    assert f"({n_sft:,} examples of ~400 tokens" in readme  # the GPU time estimate uses the same figure
