"""General Points (the 24 game): cards, face-card mappings, an exact solver, a safe scorer, dealers.

Deal N cards (A, 2..10, J, Q, K; the Large test set adds 14..19), map J/Q/K to numbers with a
face-card mapping, and reach the target (24) with + - * / and brackets, every card used once.
Nothing here imports torch; numpy only provides the random generator the dealers are given.

    python env_gpoints.py                      # demo: deal one hand per test set, solve, score
    python env_gpoints.py --cards 3 3 8 8      # every distinct solution of one hand
    python -m pytest -q tests/test_env_gpoints.py

Design decisions (see the functions for details):
- Arithmetic is exact (rationals as reduced integer pairs), so 8/(3-8/3) is 24 (the original
  verifier used floats and rejected it).
- The solver works on multisets: the set of values reachable from every sub-multiset is memoised,
  and a hand of n cards is split into two non-empty parts in every way, which covers every
  expression tree (every bracketing), for any number of cards.
- Model output is parsed, never executed: a tokenizer and an explicit-stack (shunting-yard)
  parser, so deep nesting cannot overflow the Python stack, and numbers are checked against the
  cards before anything is evaluated, so huge literals never reach big-int arithmetic.
"""
import argparse
import json
import re
from fractions import Fraction
from functools import lru_cache
from itertools import combinations
from math import gcd

import numpy as np

# -----------------------------------------------------------------------------
# cards and face-card mappings

RANKS = ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")
FACE_RANKS = ("J", "Q", "K")
LARGE_RANKS = ("14", "15", "16", "17", "18", "19")  # the Large test set; value = the number
ALL_RANKS = RANKS + LARGE_RANKS

MAPPINGS = {
    "all5": {"J": 5, "Q": 5, "K": 5},
    "all7": {"J": 7, "Q": 7, "K": 7},
    "all8": {"J": 8, "Q": 8, "K": 8},
    "all9": {"J": 9, "Q": 9, "K": 9},
    "all10": {"J": 10, "Q": 10, "K": 10},
    "all12": {"J": 12, "Q": 12, "K": 12},
    "regular": {"J": 11, "Q": 12, "K": 13},
    "8-9-10": {"J": 8, "Q": 9, "K": 10},
    "7-8-9": {"J": 7, "Q": 8, "K": 9},
    "5-7-9": {"J": 5, "Q": 7, "K": 9},
    "6-8-10": {"J": 6, "Q": 8, "K": 10},
}
# the authors' diverse training mix (1,250 examples each); the test mappings never occur in it
TRAIN_DIVERSE_MAPPINGS = ("all8", "all9", "all10", "8-9-10", "7-8-9", "5-7-9", "6-8-10")
TEST_MAPPINGS = ("all5", "all7", "all12", "regular")


def describe_mapping(mapping):
    """The prompt's sentence for a mapping, e.g. "'J', 'Q', and 'K' all count as '10'"."""
    values = MAPPINGS[mapping] if isinstance(mapping, str) else mapping
    if len(set(values.values())) == 1:
        return f"'J', 'Q', and 'K' all count as '{values['J']}'"
    return f"'J' counts as '{values['J']}', 'Q' counts as '{values['Q']}', and 'K' counts as '{values['K']}'"


def card_value(card, mapping):
    """The number a card stands for; `mapping` is a key of MAPPINGS or a {"J","Q","K"} dict."""
    if card not in ALL_RANKS:
        raise ValueError(f"unknown card {card!r}")
    if card == "A":
        return 1
    if card in FACE_RANKS:
        return (MAPPINGS[mapping] if isinstance(mapping, str) else mapping)[card]
    return int(card)


def hand_values(cards, mapping):
    return [card_value(card, mapping) for card in cards]


def hand_key(cards):
    """The hand as a sorted multiset of ranks: the identity used to keep test hands out of training
    (rank-based, so a hand is the same hand under every mapping)."""
    return tuple(sorted(cards, key=ALL_RANKS.index))

# -----------------------------------------------------------------------------
# exact solver
#
# A rational number is a pair (numerator, denominator) in lowest terms with denominator > 0, so
# each value has exactly one representation and pairs can be set members and dict keys. Plain
# int pairs with math.gcd are several times faster than fractions.Fraction, whose hashing alone
# dominated the solver's time.


def _ratio(n, d):
    if d < 0:
        n, d = -n, -d
    g = gcd(n, d)
    return (n // g, d // g) if g > 1 else (n, d)


def _apply(op, a, b):
    """a op b on pairs; the caller makes sure a division's divisor is non-zero."""
    (an, ad), (bn, bd) = a, b
    if op == "+":
        return (an + bn, 1) if ad == bd == 1 else _ratio(an * bd + bn * ad, ad * bd)
    if op == "-":
        return (an - bn, 1) if ad == bd == 1 else _ratio(an * bd - bn * ad, ad * bd)
    if op == "*":
        return (an * bn, 1) if ad == bd == 1 else _ratio(an * bn, ad * bd)
    return _ratio(an * bd, ad * bn)


def _to_number(q):
    """A pair as an int when integral, else a Fraction: the form callers outside this file see."""
    return q[0] if q[1] == 1 else Fraction(*q)


@lru_cache(maxsize=1 << 14)
def _splits(numbers):
    """Every way to cut a sorted multiset into two non-empty parts (smaller part first), each once."""
    n, seen = len(numbers), set()
    for size in range(1, n // 2 + 1):
        for idx in combinations(range(n), size):
            part = tuple(numbers[i] for i in idx)
            rest = tuple(numbers[i] for i in range(n) if i not in idx)
            if size * 2 == n and rest < part:
                part, rest = rest, part
            seen.add((part, rest))
    return tuple(sorted(seen))


@lru_cache(maxsize=1 << 16)
def _reachable(numbers):
    """Every value an expression using each number of the sorted multiset exactly once can take."""
    if len(numbers) == 1:
        return frozenset([(numbers[0], 1)])
    out = set()
    for part, rest in _splits(numbers):
        rest_values = _reachable(rest)
        for a in _reachable(part):
            for b in rest_values:
                out.add(_apply("+", a, b))
                out.add(_apply("-", a, b))
                out.add(_apply("-", b, a))
                out.add(_apply("*", a, b))
                if b[0] != 0:
                    out.add(_apply("/", a, b))
                if a[0] != 0:
                    out.add(_apply("/", b, a))
    return frozenset(out)


def _partners(a, target, rest_values):
    """(op, a_first, b) for every b in rest_values with `a op b` (a_first) or `b op a` == target.
    Inverting the operation turns the pair search into set look-ups."""
    candidates = [("+", True, _apply("-", target, a)), ("-", True, _apply("-", a, target)),
                  ("-", False, _apply("+", a, target))]
    if a[0] != 0:
        candidates += [("*", True, _apply("/", target, a)), ("/", False, _apply("*", target, a))]
        if target[0] != 0:
            candidates.append(("/", True, _apply("/", a, target)))
    out = [c for c in candidates if c[2] in rest_values]
    if a[0] == 0 and target[0] == 0:  # 0 * b and 0 / b are 0 for every (non-zero) b
        out += [("*", True, b) for b in rest_values] + [("/", True, b) for b in rest_values if b[0] != 0]
    return out


@lru_cache(maxsize=1 << 16)
def _can_reach(numbers, target):
    if len(numbers) == 1:
        return (numbers[0], 1) == target
    for part, rest in _splits(numbers):
        rest_values = _reachable(rest)
        for a in _reachable(part):
            if _partners(a, target, rest_values):
                return True
    return False


def clear_solver_caches():
    """Forget every memoised sub-result (for cold-start timings; the caches are bounded anyway)."""
    for cached in (_splits, _reachable, _can_reach, _expressions):
        cached.cache_clear()


def is_solvable(values, target=24):
    """Whether the numbers can make the target; fast (no formula is built)."""
    return _can_reach(tuple(sorted(values)), (target, 1))


# A canonical expression is ("num", v), ("sum", plus, minus) or ("prod", numer, denom), where the
# four tuples hold canonical sub-expressions sorted in descending order. Flattening + and - into
# one signed sum (and * and / into one product) makes two formulas the same when they differ only
# by commutativity, associativity or the moving of signs: a+(b-c), (a-c)+b and a-(c-b) are all
# "a+b-c". Formulas that differ otherwise (distributivity, 2*2 vs 2+2, x*1 vs x/1) stay distinct.


def _sum_terms(x):
    return (x[1], x[2]) if x[0] == "sum" else ((x,), ())


def _prod_factors(x):
    return (x[1], x[2]) if x[0] == "prod" else ((x,), ())


def _combine(op, x, y):
    if op in "+-":
        (xp, xm), (yp, ym) = _sum_terms(x), _sum_terms(y)
        plus, minus = (xp + yp, xm + ym) if op == "+" else (xp + ym, xm + yp)
        return ("sum", tuple(sorted(plus, reverse=True)), tuple(sorted(minus, reverse=True)))
    (xn, xd), (yn, yd) = _prod_factors(x), _prod_factors(y)
    numer, denom = (xn + yn, xd + yd) if op == "*" else (xn + yd, xd + yn)
    return ("prod", tuple(sorted(numer, reverse=True)), tuple(sorted(denom, reverse=True)))


def _render(x):
    """Minimal brackets: only a sum inside a product needs them. The first term of a sum and the
    first factor of a product are never negated or inverted (proof: `plus`/`numer` always hold
    at least one leaf), and every denominator factor is non-zero, so the string evaluates safely."""
    if x[0] == "num":
        return str(x[1])
    if x[0] == "sum":
        return "+".join(_render(t) for t in x[1]) + "".join("-" + _render(t) for t in x[2])
    wrap = lambda f: "(" + _render(f) + ")" if f[0] == "sum" else _render(f)
    return "*".join(wrap(f) for f in x[1]) + "".join("/" + wrap(f) for f in x[2])


@lru_cache(maxsize=1 << 16)
def _expressions(numbers, target):
    """Every canonical expression over the sorted multiset whose value is target."""
    if len(numbers) == 1:
        return frozenset([("num", numbers[0])]) if (numbers[0], 1) == target else frozenset()
    out = set()
    for part, rest in _splits(numbers):
        rest_values = _reachable(rest)
        for a in _reachable(part):
            for op, a_first, b in _partners(a, target, rest_values):
                for x in _expressions(part, a):
                    for y in _expressions(rest, b):
                        out.add(_combine(op, x, y) if a_first else _combine(op, y, x))
    return frozenset(out)


def _canonical_solutions(values, target):
    numbers, target = tuple(sorted(values)), (target, 1)
    if not _can_reach(numbers, target):
        return []
    found = [(_render(x), x) for x in _expressions(numbers, target)]
    # fewest brackets first, then shortest: the first solution is the simplest to read
    found.sort(key=lambda f: (f[0].count("("), len(f[0]), f[0]))
    return found


def solve(values, target=24):
    """Every distinct formula over the integer `values` (each used once) that equals `target`,
    simplest first; [] when there is none. Distinct = different canonical form (see _combine)."""
    return [formula for formula, _ in _canonical_solutions(values, target)]


def solve_one(values, target=24):
    """The simplest solution formula, or None."""
    found = _canonical_solutions(values, target)
    return found[0][0] if found else None


def _steps(x, out):
    """Evaluate a canonical expression left to right, appending (a, op, b, result) per operation.
    Depth is bounded by the number of cards, so recursion is safe here (solver output only)."""
    if x[0] == "num":
        return (x[1], 1)
    plus_op, minus_op = ("+", "-") if x[0] == "sum" else ("*", "/")
    acc = _steps(x[1][0], out)
    for op, terms in ((plus_op, x[1][1:]), (minus_op, x[2])):
        for t in terms:
            b = _steps(t, out)
            result = _apply(op, acc, b)
            out.append((_to_number(acc), op, _to_number(b), _to_number(result)))
            acc = result
    return acc


def solution_steps(values, target=24):
    """One solution (the one solve_one returns) as the sequence of pairwise operations a solver
    performs: [(a, op, b, result), ...], numbers as int or Fraction, the last result == target;
    None when unsolvable. A chain-of-thought writer turns this into a trace."""
    found = _canonical_solutions(values, target)
    if not found:
        return None
    out = []
    _steps(found[0][1], out)
    return out

# -----------------------------------------------------------------------------
# reply parsing and scoring (the reward of Chu et al. 2025)

REWARD_CORRECT, REWARD_WRONG_RESULT, REWARD_WRONG_NUMBERS, REWARD_ILLEGAL = 5, -1, -2, -3

_OBJECT_RE = re.compile(r"\{[^{}]*\}")  # flat JSON objects; linear time on any input
_FORMULA_FIELD_RE = re.compile(r"""["']formula["']\s*:\s*(?:"([^"]*)"|'([^']*)')""")
_CLAIMED_RESULT_RE = re.compile(r"\s*\d+(?:\.\d+)?\s*")
_TOKEN_RE = re.compile(r"\s*(?:([0-9]+)|([-+*/()]))")
_ILLEGAL_CHAR_RE = re.compile(r"[^0-9+\-*/()\s]")
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def _after_reasoning(reply):
    """The reply after its last `</think>` (all of it when there is none): where the answer is."""
    return reply[reply.rfind("</think>") + len("</think>"):] if "</think>" in reply else reply


def parse_formula(reply):
    """The formula a reply answers with, or None when it gives none.

    Reasoning up to the last `</think>` is dropped. If what is left holds JSON-like objects, the
    answer is the "formula" string of the last object that has one (double- or single-quoted keys
    and values, so the prompt's own `"formula": '...'` style parses too); objects without a
    formula string mean no answer. Otherwise the text itself (or its last <answer> tag) is taken
    as a bare formula. Every step is a linear-time regex or string search.
    """
    text = _after_reasoning(reply)
    objects = _OBJECT_RE.findall(text)
    for obj in reversed(objects):
        if "formula" in obj:
            fields = _FORMULA_FIELD_RE.findall(obj)
            if fields:
                double_quoted, single_quoted = fields[-1]
                return double_quoted or single_quoted
    if "{" in text:
        return None
    start = text.rfind("<answer>")  # str.find, not a lazy regex: "<answer>" * 10**5 stays linear
    end = text.find("</answer>", start)
    if start >= 0 and end >= 0:
        text = text[start + len("<answer>"):end]
    return text.strip() or None


_NUMBER_FIELD_RE = re.compile(r"""["']number["']\s*:\s*\[([^\[\]]*)\]""")


def parse_numbers(reply):
    """The card values a reply states in its answer object's "number" list, or None when it gives
    none (or any entry is not a plain integer of at most 6 digits). Read like parse_formula: after
    the last `</think>`, the last flat object with a "number" list. A small model can read the
    J/Q/K rule right and still fail the arithmetic; this field shows the first part alone."""
    text = _after_reasoning(reply)
    for obj in reversed(_OBJECT_RE.findall(text)):
        fields = _NUMBER_FIELD_RE.findall(obj)
        if fields:
            items = [x.strip().strip("\"'") for x in fields[-1].split(",")]
            if not all(x.isdigit() and x.isascii() and len(x) <= 6 for x in items):
                return None
            return [int(x) for x in items]
    return None


def _to_postfix(formula):
    """Tokens of the formula in postfix order, or None when it is illegal. Shunting-yard with an
    explicit stack: an operand is expected after an operator or '(' (so unary minus, '**',
    implicit multiplication and '()' are illegal) and brackets must balance."""
    if _ILLEGAL_CHAR_RE.search(formula):
        return None
    out, stack, expect_operand = [], [], True
    for match in _TOKEN_RE.finditer(formula):
        number, symbol = match.groups()
        if number:
            if not expect_operand:
                return None
            out.append(number)
            expect_operand = False
        elif symbol == "(":
            if not expect_operand:
                return None
            stack.append(symbol)
        elif symbol == ")":
            if expect_operand:
                return None
            while stack and stack[-1] != "(":
                out.append(stack.pop())
            if not stack:
                return None
            stack.pop()
        else:
            if expect_operand:
                return None
            while stack and stack[-1] != "(" and _PRECEDENCE[stack[-1]] >= _PRECEDENCE[symbol]:
                out.append(stack.pop())
            stack.append(symbol)
            expect_operand = True
    if expect_operand or "(" in stack:
        return None
    return out + stack[::-1]


def score_formula(formula, values, target=24):
    """Reward of one formula string: +5 equals target; -1 legal, uses exactly `values` (as a
    multiset) but is wrong or divides by zero; -2 numbers differ from `values`; -3 illegal.
    Legal = non-negative integer literals, + - * / ( ) and whitespace, optionally followed by
    one `= <number>` (the claimed result is ignored; the left side is what counts)."""
    if "=" in formula:
        formula, claimed = formula.rsplit("=", 1)
        if not _CLAIMED_RESULT_RE.fullmatch(claimed):
            return REWARD_ILLEGAL
    postfix = _to_postfix(formula.strip())
    if postfix is None:
        return REWARD_ILLEGAL
    literals = [t for t in postfix if t[0].isdigit()]
    # compare digit strings before int(): a 100,000-digit literal never becomes a number
    max_digits = max(len(str(v)) for v in values)
    literal_values = [int(s.lstrip("0") or "0") if len(s.lstrip("0")) <= max_digits else None for s in literals]
    if None in literal_values or sorted(literal_values) != sorted(values):
        return REWARD_WRONG_NUMBERS
    stack = []
    for token in postfix:
        if token[0].isdigit():
            stack.append((int(token), 1))
            continue
        b, a = stack.pop(), stack.pop()
        if token == "/" and b[0] == 0:
            return REWARD_WRONG_RESULT
        stack.append(_apply(token, a, b))
    return REWARD_CORRECT if stack[0] == (target, 1) else REWARD_WRONG_RESULT


def score(reply, values, target=24):
    """The study's reward for a model reply (see parse_formula and score_formula); no formula = -3."""
    formula = parse_formula(reply)
    return REWARD_ILLEGAL if formula is None else score_formula(formula, values, target)

# -----------------------------------------------------------------------------
# test sets and dealers
#
# As in the authors' generator, each card is drawn independently and uniformly from the variant's
# ranks (so a hand is a multiset; the 1,820 four-card multisets all occur). Their "at least one
# face / large card" rule forced one card into that range; here hands that break the rule are
# rejected and redrawn instead, which keeps hands uniform among those that satisfy it.

VARIANTS = {
    "id": dict(num_cards=4, shown="all10", scored="all10", ranks=RANKS, need_face=True, need_large=False),
    "all5": dict(num_cards=4, shown="all5", scored="all5", ranks=RANKS, need_face=True, need_large=False),
    "all7": dict(num_cards=4, shown="all7", scored="all7", ranks=RANKS, need_face=True, need_large=False),
    "all12": dict(num_cards=4, shown="all12", scored="all12", ranks=RANKS, need_face=True, need_large=False),
    "regular": dict(num_cards=4, shown="regular", scored="regular", ranks=RANKS, need_face=True, need_large=False),
    "large": dict(num_cards=4, shown="all10", scored="all10", ranks=ALL_RANKS, need_face=False, need_large=True),
    "five": dict(num_cards=5, shown="all10", scored="all10", ranks=RANKS, need_face=False, need_large=False),
    # the probe: the prompt says J/Q/K are 5, the scorer counts them as 10
    "fake": dict(num_cards=4, shown="all5", scored="all10", ranks=RANKS, need_face=True, need_large=False),
}
MAX_DEAL_TRIES = 100_000  # far above need (>= 1 in 4 draws is kept); stops an impossible `exclude`


def _deal(rng, ranks, num_cards, scored, need_face, need_large, exclude, target):
    for _ in range(MAX_DEAL_TRIES):
        cards = [ranks[i] for i in rng.integers(len(ranks), size=num_cards)]
        if need_face and not any(c in FACE_RANKS for c in cards):
            continue
        if need_large and not any(c in LARGE_RANKS for c in cards):
            continue
        if hand_key(cards) in exclude:
            continue
        if is_solvable(hand_values(cards, scored), target):
            return cards
    raise RuntimeError("no hand satisfies the rule; is `exclude` too large?")


def deal(variant, rng, exclude=frozenset(), target=24):
    """A hand of the test set `variant` (cards as shown in the prompt), solvable under the
    variant's *scored* mapping, whose hand_key is not in `exclude`. rng: numpy Generator."""
    spec = VARIANTS[variant]
    return _deal(rng, spec["ranks"], spec["num_cards"], spec["scored"], spec["need_face"], spec["need_large"],
                 exclude, target)


def deal_train(rng, mapping="all10", num_cards=4, exclude=frozenset(), target=24):
    """A training hand of ranks A-K, solvable under `mapping`, whose hand_key is not in `exclude`."""
    return _deal(rng, RANKS, num_cards, mapping, False, False, exclude, target)

# -----------------------------------------------------------------------------

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.error = lambda message: parser.exit(2, f"env_gpoints.py: error: {message}\n")  # one line, no usage block
    parser.add_argument("--cards", nargs="+", default=None,
                        help="solve this hand: ranks A (or 1), 2-10, J, Q, K (any case) and 14-19, "
                        "e.g. 3 3 8 8 or A J 5 K")
    parser.add_argument("--mapping", default="all10", choices=sorted(MAPPINGS), help="face-card mapping for --cards")
    parser.add_argument("--target", type=int, default=24, help="the number to reach")
    parser.add_argument("--seed", type=int, default=0, help="seed of the demo deals")
    args = parser.parse_args()
    if args.target < 1 or args.seed < 0:
        parser.error("--target must be at least 1 and --seed at least 0")
    if args.cards:
        args.cards = ["A" if c == "1" else c.upper() for c in args.cards]  # 1 is the ace's value: accept it as its name
        unknown = [c for c in args.cards if c not in ALL_RANKS]
        if unknown:
            parser.exit(2,
                        f"env_gpoints.py: error: unknown card {' '.join(unknown)}: the cards are {' '.join(ALL_RANKS)} "
                        "(or 1 for A)\n")
        values = hand_values(args.cards, args.mapping)
        solutions = solve(values, args.target)
        print(f"{args.cards} -> {values}: {len(solutions)} distinct solutions")
        for formula in solutions:
            print(" ", formula)
    else:
        rng = np.random.default_rng(args.seed)
        for name, spec in VARIANTS.items():
            cards = deal(name, rng, target=args.target)
            values = hand_values(cards, spec["scored"])
            formula = solve_one(values, args.target)
            reply = "<think></think>" + json.dumps({"cards": cards, "number": values,
                                                    "formula": f"{formula} = {args.target}"})
            print(f"{name:8s} {cards} shown {spec['shown']:8s} scored {values}: {formula}  score "
                  f"{score(reply, values, args.target)}")
