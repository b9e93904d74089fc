"""make_data.py: determinism, disjointness, correct targets, the variants as in PAPER.md."""
import ast
import filecmp
import json
import os
import re
import subprocess
import sys
from fractions import Fraction

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
    (["--gp-cot", "tree"], "argument --gp-cot: invalid choice"),
    (["--sok-cot", "grid"], "argument --sok-cot: invalid choice"),
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

# -----------------------------------------------------------------------------
# the CoT variants: --gp-cot search (a search with dead ends) and --sok-cot relative (no coordinates)

NEW_COT = ["--gp-cot", "search", "--sok-cot", "relative"]


@pytest.fixture(scope="module")
def new_cot_data(tmp_path_factory):
    """The `data` fixture's command with the new CoT flags."""
    out = tmp_path_factory.mktemp("new-cot")
    make_data.main(["--out", str(out), "--scale", "small", "--sok-train-rooms", "60", "--gp-train", "300", *NEW_COT])
    return str(out)


def think(record):
    reply = record["messages"][1]["content"]
    return reply[reply.index("<think>") + len("<think>"):reply.index("</think>")].strip()


def test_cot_flags_have_help_and_default_to_todays_traces(capsys):
    with pytest.raises(SystemExit):
        make_data.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--gp-cot {path,search}" in text and "--sok-cot {absolute,relative}" in text
    assert "depth-first search" in text and "no number" in text
    args = make_data.parse_args([])
    assert (args.gp_cot, args.sok_cot) == ("path", "absolute")


def test_default_cot_files_hold_todays_traces_and_new_flags_change_only_the_thinking(data, new_cot_data):
    # today's traces, pinned as text
    assert make_data.gpoints_cot(["3", "5", "9", "2"], [3, 5, 9, 2]) == (
        "cards 3 5 9 2 are 3 5 9 2. 9*3=27, left 5 2 27. 27+2=29, left 5 29. 29-5=24, left 24. reached 24.")
    assert make_data.gpoints_cot(["8", "3", "8", "3"], [8, 3, 8, 3]) == (
        "cards 8 3 8 3 are 8 3 8 3. 8/3=8/3, left 8 3 8/3. 3-8/3=1/3, left 8 1/3. 8/1/3=24, left 24. reached 24.")
    env = sok.SokobanEnv.from_text("# # # # # #\n# O _ _ _ #\n# _ # X _ #\n# # # P _ #\n# # # # # #\n# # # # # #")
    assert make_data.sokoban_cot(env, sok.solve(env), sok.VOCABS["alpha"]) == (
        "player (3,3). boxes (2,3). targets (1,1). push box (2,3) Up to (1,3). walk none, then push Up. "
        "first move Up, named A.")
    for name in ("train_cot", "train_diverse_cot"):
        for r in load(data, "gpoints", name):
            assert think(r) == make_data.gpoints_cot(r["meta"]["cards"], r["meta"]["values"])
    # with the new flags, every file is the same but for the thinking of the CoT targets
    for task, names in (("sokoban", SOK_FILES), ("gpoints", GP_FILES)):
        for name in names:
            old, new = load(data, task, name), load(new_cot_data, task, name)
            if name.endswith("_cot"):
                assert all(think(a) != think(b) for a, b in zip(old, new))
                for r in old + new:
                    r["messages"][1]["content"] = r["messages"][1]["content"].replace(think(r), "")
            assert old == new, (task, name)


# General Points search traces, read back by an independent parser and solver

NUMBER = r"-?\d+(?:/\d+)?"
OPERAND = rf"\d+|\({NUMBER}\)"  # a negative or fractional operand is bracketed
STEP_RE = re.compile(rf"({OPERAND})([-+*/])({OPERAND})=({NUMBER}), left ({NUMBER}(?: {NUMBER})*)\.")


def brute_force(numbers, target):
    """Whether the rationals can make target: any two merged by any operation, recursively."""
    if len(numbers) == 1:
        return numbers[0] == target
    for i, a in enumerate(numbers):
        for j, b in enumerate(numbers):
            if i != j:
                rest = [x for k, x in enumerate(numbers) if k not in (i, j)]
                if any(brute_force(rest + [r], target) for r in [a + b, a - b, a * b] + ([a / b] if b else [])):
                    return True
    return False


def evaluate(formula):
    """(exact value, integer literals) of a + - * / formula with brackets."""
    literals = []

    def value(node):
        if isinstance(node, ast.BinOp):
            a, b = value(node.left), value(node.right)
            op = type(node.op)
            assert op in (ast.Add, ast.Sub, ast.Mult, ast.Div) and (op is not ast.Div or b != 0), formula
            return a + b if op is ast.Add else a - b if op is ast.Sub else a * b if op is ast.Mult else a / b
        assert isinstance(node, ast.Constant) and type(node.value) is int, formula
        literals.append(node.value)
        return Fraction(node.value)
    return value(ast.parse(formula, mode="eval").body), literals


def check_search_trace(trace, cards, values, target=24):
    """Replays a search trace: every step exact on numbers that are there, every state given up
    unsolvable, a dead end reached at two numbers, the way back to an earlier state, the winning
    path ending at the target, the check line true. Returns (tries given up, checked formula)."""
    sentences = [s.strip() for s in re.findall(r"[^.]+\.", trace)]  # no decimal point in a trace
    assert sentences[0] == f"cards {' '.join(cards)} are {' '.join(map(str, values))}.", trace
    check = re.fullmatch(rf"check: (.+) = {target}\.", sentences[-2])
    assert check and sentences[-1] == "yes.", trace
    path, dead = [[Fraction(v) for v in values]], 0  # the states from the cards to the current one
    for sentence in sentences[1:-2]:
        step = STEP_RE.fullmatch(sentence)
        if step:
            a, op, b = Fraction(step[1].strip("()")), step[2], Fraction(step[3].strip("()"))
            assert op != "/" or b != 0, trace
            left = list(path[-1])
            left.remove(a)  # ValueError: a number that is not there
            left.remove(b)
            result = a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a / b
            assert Fraction(step[4]) == result, (sentence, trace)
            assert [Fraction(x) for x in step[5].split()] == left + [result], (sentence, trace)
            path.append(left + [result])
            continue
        back = re.fullmatch(rf"no way to {target} from here, back to ({NUMBER}(?: {NUMBER})*)\.", sentence)
        assert back and len(path[-1]) == 2, (sentence, trace)
        resumed = [Fraction(x) for x in back[1].split()]
        assert resumed in path[:-1], (sentence, trace)
        given_up = path[path.index(resumed) + 1:]
        assert given_up and not any(brute_force(state, target) for state in given_up), (sentence, trace)
        del path[path.index(resumed) + 1:]
        dead += 1
    assert path[-1] == [target] and len(path) == len(values), trace
    result, literals = evaluate(check[1])
    assert result == target and sorted(literals) == sorted(values), trace
    return dead, check[1]


def test_gp_search_cot_is_true_for_4_and_5_cards_and_other_targets():
    deal_rng, search_rng = make_data.stream(0, "test/hands"), make_data.stream(0, "test/search")
    hands = [(cards, 24) for cards in (["8", "3", "8", "3"], ["A", "5", "A", "7"], ["3", "3", "8", "8"])]
    for n_cards, target, n in ((4, 24, 150), (5, 24, 60), (4, 10, 20), (5, 36, 20)):
        hands += [(gp.deal_train(deal_rng, num_cards=n_cards, target=target), target) for _ in range(n)]
    tries = set()
    for cards, target in hands:
        values = gp.hand_values(cards, "all10")
        trace = make_data.gpoints_search_cot(cards, values, search_rng, target)
        dead, formula = check_search_trace(trace, cards, values, target)
        assert formula == gp.solve_one(values, target)  # the answer's formula is the winning path's
        tries.add(dead)
    assert tries == set(range(make_data.GP_SEARCH_DEAD + 1))  # the budget is used, never exceeded
    again = make_data.gpoints_search_cot(cards, values, make_data.stream(0, "x"), target)
    assert again == make_data.gpoints_search_cot(cards, values, make_data.stream(0, "x"), target)


def test_gp_search_cot_files_answer_with_the_checked_formula(new_cot_data):
    for name in ("train_cot", "train_diverse_cot"):
        for r in load(new_cot_data, "gpoints", name):
            meta, reply = r["meta"], r["messages"][1]["content"]
            _, formula = check_search_trace(think(r), meta["cards"], meta["values"], meta["target"])
            answer = json.loads(reply[reply.index("</think>") + len("</think>"):])["formula"]
            assert answer == formula and gp.score(reply, meta["values"], meta["target"]) == 5
            value, literals = evaluate(answer)
            assert value == 24 and sorted(literals) == sorted(meta["values"])


# Sokoban relative traces, checked against the grid

MOVE = "(?:Up|Down|Left|Right)"
GOAL = "on its target|its target: [a-z-]+"
RELATIVE_RE = re.compile(
    r"around: up (?P<up>[a-z ]+), down (?P<down>[a-z ]+), left (?P<left>[a-z ]+), right (?P<right>[a-z ]+)\. "
    rf"box: (?P<box>[a-z-]+), (?P<goal>{GOAL})\. push it (?P<push>{MOVE}) from its (?P<side>[a-z]+) side\. "
    rf"(?:other box: (?P<other>[a-z-]+), (?P<other_goal>{GOAL})\. )?"
    rf"walk (?P<walk>none|{MOVE}(?: {MOVE})*), then push (?P=push)\. "
    rf"first move (?P<first>{MOVE}), named (?P<named>\S+)\.")
CELL_WORDS = {"#": "wall", "_": "floor", "O": "target", "X": "box", "√": "box on target"}
DELTAS = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}


def moved(cell, move):
    dr, dc = DELTAS[move.lower()]
    return cell[0] + dr, cell[1] + dc


def direction(origin, cell):
    words = (["up"] if cell[0] < origin[0] else ["down"] if cell[0] > origin[0] else []) + (
        ["left"] if cell[1] < origin[1] else ["right"] if cell[1] > origin[1] else [])
    return "-".join(words)


def check_relative_trace(grid, trace, names, solution=None):
    """Every statement of a relative trace is true of the grid: the four neighbours, the walk over
    free cells to the side of the box the push comes from, the boxes' directions, where each box
    ends (along `solution`, or the only target), the first move optimal and named in `names`."""
    m = RELATIVE_RE.fullmatch(trace)
    assert m, trace
    cells = [row.split() for row in grid.splitlines()]
    find = lambda symbols: [(r, c) for r, row in enumerate(cells) for c, x in enumerate(row) if x in symbols]
    player, boxes, targets = find("PS")[0], find("X√"), find("O√S")
    for side in DELTAS:
        cell = moved(player, side)
        assert m[side] == CELL_WORDS[cells[cell[0]][cell[1]]], (side, trace)
    walk = [] if m["walk"] == "none" else m["walk"].split()
    stand = player
    for move in walk:
        stand = moved(stand, move)
        assert cells[stand[0]][stand[1]] in "_OPS", trace  # no wall, no box on the way
    box = moved(stand, m["push"])
    beyond = moved(box, m["push"])
    assert box in boxes and cells[beyond[0]][beyond[1]] in "_OPS", trace
    assert m["side"] == direction(box, stand) and m["box"] == direction(player, box), trace
    others = [b for b in boxes if b != box]
    assert len(others) <= 1 and (m["other"] is None) == (not others), trace
    if solution is None:
        assert len(boxes) == 1
        ends = {box: targets[0]}
    else:
        assert solution[:len(walk) + 1] == walk + [m["push"]], trace
        ends, at = {b: b for b in boxes}, player
        for move in solution:
            at = moved(at, move)
            pushed = [b for b, end in ends.items() if end == at]
            if pushed:
                ends[pushed[0]] = moved(at, move)
        assert sorted(ends.values()) == sorted(targets)
    for b, goal in [(box, m["goal"])] + [(o, m["other_goal"]) for o in others]:
        assert goal == ("on its target" if ends[b] == b else f"its target: {direction(b, ends[b])}"), trace
    if others:
        assert m["other"] == direction(player, others[0]), trace
    first = walk[0] if walk else m["push"]
    assert m["first"] == first and first in sok.optimal_actions(sok.SokobanEnv.from_text(grid)), trace
    assert m["named"] == names[first], trace
    return first


def test_sokoban_relative_cot_files_are_true_and_name_the_answer(new_cot_data):
    for name in ("train_cot", "train_diverse_cot"):
        for r in load(new_cot_data, "sokoban", name):
            first = check_relative_trace(r["meta"]["grid"], think(r), r["meta"]["names"])
            assert sok.parse_answer(r["messages"][1]["content"], r["meta"]["names"]) == first


def test_sokoban_relative_cot_has_the_numbers_of_training_in_large_and_two_box_rooms(data, new_cot_data):
    numbers = lambda text: set(re.findall(r"\d+", text))
    trained = set().union(*(numbers(think(r)) for r in load(new_cot_data, "sokoban", "train_cot")))
    trained_absolute = set().union(*(numbers(think(r)) for r in load(data, "sokoban", "train_cot")))
    names = sok.VOCABS["default"]
    seen, absolute_unseen = set(), set()
    for variant in ("id", "large", "twoboxes", "complex"):
        for r in load(new_cot_data, "sokoban", f"eval_{variant}"):
            for state, _, solution in make_data.solution_states(sok.SokobanEnv.from_text(r["meta"]["grid"])):
                trace = make_data.sokoban_relative_cot(state, solution, names)
                check_relative_trace(state.render(), trace, names, solution)
                assert numbers(trace) <= trained, (variant, trace)
                seen.add((state.dim, state.num_boxes))
                absolute_unseen |= numbers(make_data.sokoban_cot(state, solution, names)) - trained_absolute
    assert seen == {((6, 6), 1), ((10, 10), 1), ((6, 6), 2), ((10, 10), 2)}
    assert absolute_unseen  # the absolute trace fails this check: 10x10 rooms need coordinates 6x6 never shows
