"""Tests of env_gpoints.py: solver counts and speed, five-card brackets, scorer levels, hostile
input, dealers. Run: python -m pytest -q tests/test_env_gpoints.py"""
import itertools
import json
import time
from fractions import Fraction

import numpy as np
import pytest

import env_gpoints as gp

FOUR_CARD_HANDS = list(itertools.combinations_with_replacement(range(1, 14), 4))

# -----------------------------------------------------------------------------
# solver


def test_four_card_counts_and_speed():
    gp.clear_solver_caches()
    start = time.process_time()  # CPU time: the machine is shared, wall time is noisy
    solutions = [gp.solve(hand) for hand in FOUR_CARD_HANDS]
    seconds = time.process_time() - start
    assert len(FOUR_CARD_HANDS) == 1820
    assert sum(bool(s) for s in solutions) == 1362
    assert seconds < 1.0, f"solving all 1,820 hands took {seconds:.2f}s of CPU"
    assert [bool(s) for s in solutions] == [gp.is_solvable(hand) for hand in FOUR_CARD_HANDS]


def test_every_formula_scores_and_is_distinct():
    for hand in FOUR_CARD_HANDS[::7]:
        formulas = gp.solve(list(hand))
        assert len(formulas) == len(set(formulas))
        for formula in formulas:
            assert gp.score_formula(formula, list(hand)) == gp.REWARD_CORRECT, (hand, formula)
        assert gp.solve_one(list(hand)) == (formulas[0] if formulas else None)


def test_known_hands():
    assert gp.solve([3, 3, 8, 8]) == ["8/(3-8/3)"]
    assert gp.solve([8, 8, 3, 3]) == ["8/(3-8/3)"]  # order of the values does not matter
    assert gp.solve([1, 1, 1, 1]) == []
    assert gp.solve_one([1, 1, 1, 1]) is None
    # the 24 orders and 5 bracketings of 1*2*3*4 are one formula; x*1 and x/1 stay two
    assert gp.solve([1, 2, 3, 4]) == ["4*3*2*1", "4*3*2/1", "(3+2+1)*4", "(4+2)*(3+1)"]
    # a-(b-c), (a+c)-b, ... are one signed sum: "10*10/4-1" appears once, whatever the tree
    assert gp.solve([10, 10, 4, 1]).count("10*10/4-1") == 1
    assert gp.solve([4, 7, 8, 8]) == ["8*7-8*4", "(7+4-8)*8", "(7-8/8)*4"]
    assert gp.solve([6], 6) == ["6"] and gp.solve([6], 5) == []
    assert gp.is_solvable([5, 5, 5, 1]) and gp.solve([5, 5, 5, 1]) == ["(5-1/5)*5"]
    assert gp.is_solvable([0, 3], 0) and "3*0" in gp.solve([0, 3], 0)  # zero handling


def flat_value(numbers, ops):
    """Value of numbers joined by ops with the usual precedence (no brackets); None on x/0."""
    terms, signs = [Fraction(numbers[0])], ["+"]
    for op, n in zip(ops, numbers[1:]):
        if op == "*":
            terms[-1] *= n
        elif op == "/":
            if n == 0:
                return None
            terms[-1] /= n
        else:
            terms.append(Fraction(n))
            signs.append(op)
    return sum(t if s == "+" else -t for t, s in zip(terms, signs))


def original_bracket_set_finds(values, target=24):
    """The original solver's search space: every order and operator, with no brackets, one pair of
    brackets around a run of numbers, or "(a o b) o (c o d) o ..." - nothing nested."""
    n = len(values)
    runs = [(i, j) for i in range(n) for j in range(i + 2, n + 1) if (i, j) != (0, n)]
    for perm in set(itertools.permutations(values)):
        for ops in itertools.product("+-*/", repeat=n - 1):
            candidates = [flat_value(perm, ops)]
            for i, j in runs:
                inner = flat_value(perm[i:j], ops[i:j - 1])
                if inner is not None:
                    candidates.append(flat_value(perm[:i] + (inner,) + perm[j:], ops[:i] + ops[j - 1:]))
            left, right = flat_value(perm[:2], ops[:1]), flat_value(perm[2:4], ops[2:3])
            if left is not None and right is not None:
                candidates.append(flat_value((left, right) + perm[4:], ops[1:2] + ops[3:]))
            if target in candidates:
                return True
    return False


def test_five_cards_need_nested_brackets():
    assert original_bracket_set_finds((3, 3, 8, 8))  # the emulation does find single-pair solutions
    hand = [1, 7, 7, 7, 8]
    assert not original_bracket_set_finds(tuple(hand))
    assert gp.solve(hand) == ["((7+7)/7+1)*8"]
    assert gp.score(json.dumps({"formula": "8*((7+7)/7+1) = 24"}), hand) == gp.REWARD_CORRECT
    # two separate bracket groups, also outside the original's set for five cards
    assert not original_bracket_set_finds((1, 1, 1, 1, 7))
    assert gp.solve([1, 1, 1, 1, 7]) == ["(7+1)*(1+1+1)"]


def test_solution_steps_replay():
    for hand in ([3, 3, 8, 8], [1, 7, 7, 7, 8], [4, 7, 8, 8], [10, 10, 4, 1]):
        steps = gp.solution_steps(hand)
        assert len(steps) == len(hand) - 1 and steps[-1][3] == 24
        pool = [Fraction(v) for v in hand]
        for a, op, b, result in steps:  # each step uses two numbers still on the table
            pool.remove(Fraction(a))
            pool.remove(Fraction(b))
            assert result == {"+": a + b, "-": a - b, "*": a * b, "/": Fraction(a) / b if b else None}[op]
            pool.append(Fraction(result))
        assert pool == [24]
    assert gp.solution_steps([1, 1, 1, 1]) is None

# -----------------------------------------------------------------------------
# parsing and scoring


def test_parse_numbers():
    reply = '<think> cards 4 J are 4 5 </think> {"cards": ["4", "J"], "number": [4, 5], "formula": "4*5"}'
    assert gp.parse_numbers(reply) == [4, 5]
    assert gp.parse_numbers("{'number': ['10', 3]}") == [10, 3]
    assert gp.parse_numbers('{"number": [1]} then {"number": [2, 3]}') == [2, 3]
    for bad in ("no object", '{"number": []}', '{"number": [4, 5x]}', '{"number": [1.5]}', '{"number": [-3]}',
                '{"number": [' + "9" * 100_000 + "]}", '{"number": [1, 2]', '{"formula": "1+2"}'):
        assert gp.parse_numbers(bad) is None, bad


def test_parse_formula():
    assert gp.parse_formula('<think>try {"formula": "1+1"}</think>\n{"cards": ["A"], "formula": "8*3"}') == "8*3"
    assert gp.parse_formula('{"formula": "1+2"} then {"formula": "3*8"}') == "3*8"
    assert gp.parse_formula("{'cards': ['3', '8'], 'formula': '3*8 = 24'}") == "3*8 = 24"
    assert gp.parse_formula('{"formula": \'3*8\'}') == "3*8"  # the prompt's own mixed quoting
    assert gp.parse_formula('{"cards": ["3", "8"]}') is None
    assert gp.parse_formula('{"formula": 24}') is None
    assert gp.parse_formula("  3 * 8  ") == "3 * 8"
    assert gp.parse_formula("<think>hm</think><answer>1+1</answer><answer> 3*8 </answer>") == "3*8"
    assert gp.parse_formula("") is None and gp.parse_formula("<think>all reasoning</think>  ") is None


@pytest.mark.parametrize("reply, values, expected", [
    # +5: JSON after think, single-quoted, bare, trailing "= 24", exact rationals, whitespace
    ('<think>3*8 works</think>{"cards": ["3", "8", "A", "A"], "formula": "3*8*1*1"}', [3, 8, 1, 1], 5),
    ("{'formula': '(10-4)*(3+1)'}", [10, 4, 3, 1], 5),
    ("(10 - 4) * (3 + 1)", [1, 3, 4, 10], 5),
    ('{"formula": "(10-4)*(3+1) = 24"}', [10, 4, 3, 1], 5),
    ("8/(3-8/3)", [3, 3, 8, 8], 5),
    ("8 / ( 3 - 8 / 3 ) = 24", [3, 3, 8, 8], 5),
    ("((((8))/((3)-(8)/(3))))", [3, 3, 8, 8], 5),
    ("(7+7)/7*12", [7, 7, 7, 12], 5),
    ("08*3*1*1", [8, 3, 1, 1], 5),  # leading zeros read as the same number
    # -1: legal, right numbers, wrong value; division by zero; claimed result ignored
    ("3+8+1+1", [3, 8, 1, 1], -1),
    ('{"formula": "3*8*1*1 = 25"}', [3, 8, 1, 1], 5),
    ('{"formula": "3+8+1+1 = 24"}', [3, 8, 1, 1], -1),
    ("8/(3-3)*8", [3, 3, 8, 8], -1),
    ("8*8/(3-3)", [3, 3, 8, 8], -1),
    ("8/3-8/3", [3, 3, 8, 8], -1),
    # -2: missing, extra, unknown, repeated number
    ("3*8", [3, 8, 1, 1], -2),
    ("3*8*1*1*1", [3, 8, 1, 1], -2),
    ("3*8*1*2", [3, 8, 1, 1], -2),
    ("3*8*1*1", [3, 8, 1, 2], -2),
    ("24*1*1*1", [3, 8, 1, 1], -2),
    ("3*8*1*" + "1" * 100_000, [3, 8, 1, 1], -2),
    # -3: letters, powers, unary minus, decimals, unbalanced, empty, junk after "=", no formula
    ("3*8*one*1", [3, 8, 1, 1], -3),
    ("3**8", [3, 8], -3),
    ("9**9**9", [9, 9, 9], -3),
    ("-3+8*3+3", [3, 8, 3, 3], -3),
    ("8*(-3)*1*1", [3, 8, 1, 1], -3),
    ("3.0*8*1*1", [3, 8, 1, 1], -3),
    ("(3*8*1*1", [3, 8, 1, 1], -3),
    ("3*8)*(1*1", [3, 8, 1, 1], -3),
    ("3*8*1*1)", [3, 8, 1, 1], -3),
    ("3*8()*1*1", [3, 8, 1, 1], -3),
    ("3(8)*1*1", [3, 8, 1, 1], -3),
    ("3 8 1 1", [3, 8, 1, 1], -3),
    ("3*8*1*1 = 24 = 24", [3, 8, 1, 1], -3),
    ("3*8*1*1 = twenty-four", [3, 8, 1, 1], -3),
    ("24 = 3*8*1*1", [3, 8, 1, 1], -3),
    ("3×8×1×1", [3, 8, 1, 1], -3),
    ("٣*8*1*1", [3, 8, 1, 1], -3),  # a non-ASCII digit is not a number here
    ('{"cards": ["3", "8"], "number": [3, 8]}', [3, 8], -3),
    ("", [3, 8], -3),
    ("<think>3*8</think>", [3, 8], -3),
])
def test_score_levels(reply, values, expected):
    assert gp.score(reply, values) == expected


def test_hostile_input_is_bounded():
    # CPU time, not wall time: a busy machine may pause the process, which says nothing of the parser
    rng = np.random.default_rng(1234)
    fragments = list("0123456789+-*/()=. {}[]:,'\"\\x<>") + ['{"formula": "', "'formula': '", '"}', "</think>",
                                                             "<answer>", "</answer>", "**", "24"]
    worst = 0.0
    for _ in range(3000):
        reply = "".join(fragments[i] for i in rng.integers(len(fragments), size=int(rng.integers(0, 60))))
        start = time.process_time()
        reward = gp.score(reply, [1, 2, 3, 4])
        worst = max(worst, time.process_time() - start)
        assert reward in (5, -1, -2, -3)
        assert gp.parse_formula(reply) is None or isinstance(gp.parse_formula(reply), str)
    assert worst < 0.05
    huge = [
        ("x" * 1_000_000, -3),
        ("{" * 1_000_000, -3),
        ("1+" * 500_000 + "1", -2),
        ("(" * 100_000 + "1+2+3+4" + ")" * 100_000, -1),
        ("(" * 100_000 + "4*3*2*1" + ")" * 100_000, 5),
        ("(" * 100_001 + "4*3*2*1" + ")" * 100_000, -3),
        ('{"formula": "' + "(" * 500_000 + '"}', -3),
        ("9" * 100_000 + "+1+2+3", -2),
        ("9**9**9**9**9", -3),
        ("<answer>" * 100_000 + "4*3*2*1", -3),
        ("<answer>4*3*2*1</answer>" * 50_000, 5),
        ("<think>" + "{}" * 300_000 + "</think>" * 1000 + '{"formula": "4*3*2*1"}', 5),
    ]
    for reply, expected in huge:
        start = time.process_time()
        assert gp.score(reply, [1, 2, 3, 4]) == expected
        assert time.process_time() - start < 2.0

# -----------------------------------------------------------------------------
# cards and dealers


def test_cards_and_mappings():
    assert gp.RANKS == ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")
    assert set(gp.TRAIN_DIVERSE_MAPPINGS).isdisjoint(gp.TEST_MAPPINGS)
    assert set(gp.TRAIN_DIVERSE_MAPPINGS) | set(gp.TEST_MAPPINGS) <= set(gp.MAPPINGS)
    assert gp.hand_values(["A", "10", "J", "Q", "K", "17"], "regular") == [1, 10, 11, 12, 13, 17]
    assert gp.hand_values(["J", "Q", "K"], "5-7-9") == [5, 7, 9]
    assert gp.hand_values(["J", "Q", "K"], {"J": 1, "Q": 2, "K": 3}) == [1, 2, 3]
    with pytest.raises(ValueError):
        gp.card_value("1", "all10")  # the ace is "A"
    assert gp.hand_key(["K", "A", "10", "2"]) == gp.hand_key(["2", "10", "K", "A"]) == ("A", "2", "10", "K")
    assert gp.describe_mapping("all10") == "'J', 'Q', and 'K' all count as '10'"
    assert "'K' counts as '13'" in gp.describe_mapping("regular")


def test_deal_rules_and_reproducibility():
    assert set(gp.VARIANTS) == {"id", "all5", "all7", "all12", "regular", "large", "five", "fake"}
    assert (gp.VARIANTS["fake"]["shown"], gp.VARIANTS["fake"]["scored"]) == ("all5", "all10")
    for name, spec in gp.VARIANTS.items():
        hands = [gp.deal(name, np.random.default_rng(7)) for _ in range(2)]
        assert hands[0] == hands[1], name  # same seed, same hand
        rng = np.random.default_rng(0)
        for _ in range(40):
            cards = gp.deal(name, rng)
            assert len(cards) == spec["num_cards"] and set(cards) <= set(spec["ranks"])
            assert gp.is_solvable(gp.hand_values(cards, spec["scored"]))
            if spec["need_face"]:
                assert set(cards) & set(gp.FACE_RANKS)
            if spec["need_large"]:
                assert set(cards) & set(gp.LARGE_RANKS)
    rng = np.random.default_rng(0)
    assert len({tuple(gp.deal("id", rng)) for _ in range(50)}) > 40  # hands vary


def test_deal_train_and_exclude(monkeypatch):
    rng = np.random.default_rng(3)
    test_keys = {gp.hand_key(gp.deal("id", rng)) for _ in range(200)}
    for mapping in gp.TRAIN_DIVERSE_MAPPINGS:
        for _ in range(30):
            cards = gp.deal_train(rng, mapping=mapping, exclude=test_keys)
            assert gp.hand_key(cards) not in test_keys and set(cards) <= set(gp.RANKS)
            assert gp.is_solvable(gp.hand_values(cards, mapping))
    assert len(gp.deal_train(rng, num_cards=5)) == 5
    monkeypatch.setattr(gp, "MAX_DEAL_TRIES", 500)
    every_hand = set(itertools.combinations_with_replacement(gp.RANKS, 4))
    every_hand = {gp.hand_key(h) for h in every_hand}
    with pytest.raises(RuntimeError):  # every hand excluded: stops instead of looping forever
        gp.deal("id", np.random.default_rng(0), exclude=every_hand)


@pytest.mark.parametrize("cards, status, expected", [
    (["1", "1", "1", "1"], 0, "['A', 'A', 'A', 'A'] -> [1, 1, 1, 1]: 0 distinct solutions"),  # 1 is read as the ace
    (["1", "2", "3", "4"], 0, "['A', '2', '3', '4'] -> [1, 2, 3, 4]:"),
    (["a", "j", "5", "k"], 0, "['A', 'J', '5', 'K'] -> [1, 10, 5, 10]:"),
    (["Z", "3", "0", "8"], 2,
     "env_gpoints.py: error: unknown card Z 0: the cards are A 2 3 4 5 6 7 8 9 10 J Q K 14 15 16 17 18 19 "
     "(or 1 for A)"),
])
def test_cli_cards(cards, status, expected):
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "env_gpoints.py", "--cards", *cards], cwd=root, capture_output=True,
                            text=True)
    assert result.returncode == status and "Traceback" not in result.stderr
    if status:
        assert result.stderr.strip().splitlines() == [expected]
    else:
        assert result.stdout.startswith(expected)
