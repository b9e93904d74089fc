"""Every dataset of the study: frozen and diverse prompts, answer-only and chain-of-thought (CoT)
SFT targets, RL prompt sets and the sixteen evaluation sets, as chat-format JSONL.

    python make_data.py --out data                      # the paper's sizes (about a minute)
    python make_data.py --out data --scale small        # a few records per file, for tests/demos
    python make_data.py --out data --style compact --sok-train-rooms 20000 --sok-augment

Every record is {"messages": [...], "meta": {...}}. SFT records hold the user prompt and the
assistant target, RL and evaluation records the user prompt only; `meta` holds what scoring needs
(see the README). The same command always writes byte-identical files.

One function renders each task's prompt (`sokoban_prompt`, `gpoints_prompt`); training, RL and
evaluation all go through it, so train and test prompts cannot drift apart. `--style compact`
keeps the same information (the names, the grid or cards, the answer format) in far fewer tokens,
for the tiny models of the CPU study; it is recorded in every record's meta.style and the
evaluator renders later turns in the same style.

`build_tiny_model` makes the tiny model of `sft.py --model tiny` from the data: a byte-level BPE trained
on its texts and a random-init Qwen2.

Evaluation never overlaps training. Sokoban: no state on a shortest solution of an evaluation
room, in any of its 8 rotations/reflections, is a training or RL state (rooms touching one are
skipped). General Points: the four-card hands (multisets of ranks) are split once into a held-out
part, from which every four-card test set is dealt, and a training part for the rest; five-card
and Large hands never occur in training at all.
"""
import argparse
import json
import os
import shutil
import time
from fractions import Fraction

import numpy as np
from tqdm import tqdm

import env_gpoints as gp
import env_sokoban as sok
import common
from common import ArgumentParser, UserError, run_cli, write_jsonl

# -----------------------------------------------------------------------------
# arguments

SCALES = {  # file sizes: the paper's, and a small set for tests and demos
    "full": dict(sok_train_rooms=1000, sok_rl_rooms=1000, sok_eval_rooms=100, gp_train=10000, gp_rl=10000, gp_eval=500,
                 base_records=50000),
    "small": dict(sok_train_rooms=20, sok_rl_rooms=10, sok_eval_rooms=8, gp_train=40, gp_rl=20, gp_eval=10,
                  base_records=200),
}


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data", help="output directory (sokoban/ and gpoints/ are written inside)")
    parser.add_argument("--scale", choices=sorted(SCALES), default="full",
                        help="default sizes: the paper's, or a few records")
    parser.add_argument("--seed", type=common.seed, default=0,
                        help="seed of every random draw; a different seed, a different dataset")
    parser.add_argument("--style", choices=("full", "compact"), default="full",
                        help="prompt style: the paper's wording, or a short one with the same information for tiny "
                        "models")
    parser.add_argument("--sok-cot", choices=("absolute", "relative"), default="absolute",
                        help="Sokoban CoT targets: 'absolute' names (row,col) coordinates of player, boxes and "
                        "targets; 'relative' names only the player's four neighbours and directions (no number, "
                        "so a 10x10 room reads like a 6x6 one)")
    parser.add_argument("--gp-cot", choices=("path", "search"), default="path",
                        help="General Points CoT targets: 'path' shows the winning steps only; 'search' shows a "
                        f"bounded depth-first search: up to {GP_SEARCH_DEAD} tries that reach a dead end and are "
                        "abandoned, then the winning steps and a check of the formula")
    parser.add_argument("--tasks", nargs="+", choices=("sokoban", "gpoints", "base"), default=("sokoban", "gpoints"),
                        help="which files to write; 'base' is the generic corpus of the tiny base model "
                        "(base/train.jsonl)")
    group = parser.add_argument_group("sizes (default: set by --scale)")
    group.add_argument("--sok-train-rooms", type=int,
                       help="6x6 one-box rooms behind the SFT sets (every state of a shortest solution is an example)")
    group.add_argument("--sok-rl-rooms", type=int, help="rooms behind the RL prompt sets")
    group.add_argument("--sok-eval-rooms", type=int, help="rooms per Sokoban evaluation set")
    group.add_argument("--sok-augment", action="store_true",
                       help="add the 8 rotations/reflections of every SFT/RL state (actions mapped)")
    group.add_argument("--sok-default-share", type=float, default=0.0,
                       help="share of the diverse Sokoban SFT records that keep the default names Up/Down/Left/Right "
                       "(as General Points' diverse mix keeps its default rule); 0: every record renamed")
    group.add_argument("--gp-train", type=int, help="records per General Points SFT file")
    group.add_argument("--gp-rl", type=int, help="records per General Points RL file")
    group.add_argument("--gp-eval", type=int, help="problems per General Points evaluation set")
    group.add_argument("--gp-heldout", type=float, default=0.3, help="share of four-card hands reserved for evaluation")
    group.add_argument("--base-records", type=int, help="records of the tiny base model's generic corpus")
    args = parser.parse_args(argv)
    for key, value in SCALES[args.scale].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not args.out:
        raise UserError("--out: an empty path")
    if not 0 < args.gp_heldout < 1:
        raise UserError("--gp-heldout must be between 0 and 1")
    if not 0 <= args.sok_default_share <= 1:
        raise UserError(f"--sok-default-share {args.sok_default_share}: must be between 0 and 1")
    sizes = [k for k in SCALES["full"] if getattr(args, k) < 1]
    if sizes:
        flags = ", ".join(f"--{k.replace('_', '-')} {getattr(args, k)}" for k in sizes)
        raise UserError(f"{flags}: sizes must be >= 1")
    return args


# -----------------------------------------------------------------------------
# vocabularies
#
# The diverse names: common English words, none of them a test name (letters, digits, symbols),
# a direction word, or a word of the game itself, so the test vocabularies stay unseen.
WORD_POOL = tuple("""
cat dog cow pig hen fox owl bee ant bat elk yak emu eel ram goat duck frog lion wolf bear deer seal swan crab
moth toad mole hawk crow dove lamb mule pony puma newt orca tuna shark whale horse mouse tiger zebra camel
otter panda koala sheep snake eagle raven robin llama bison moose sloth lemur gecko squid
red blue green pink gold gray black white brown purple orange yellow silver violet cyan amber ivory olive
coral navy teal beige maroon crimson indigo
apple bread cake rice soup milk egg pear plum corn bean salt honey lemon mango melon grape olive peach
cherry onion pepper carrot potato tomato butter cheese cookie pasta pizza sugar tea coffee juice candy
lamp book cup pen hat key ring bell coin drum flag kite rope sock shoe vase bowl fork spoon chair table
clock brush comb glove mask jar mug pot pan sofa desk door bed rug fan radio piano guitar violin camera
bottle basket bucket candle ladder mirror pillow pencil rocket wagon anchor bridge castle garden island
river forest desert valley meadow planet comet cloud storm rain snow wind thunder
sing swim read jump run dance laugh cook paint write sleep dream climb throw catch build smile wave
""".split())
WORD_POOL = tuple(dict.fromkeys(WORD_POOL))  # a word listed twice counts once
FORBIDDEN_NAMES = {w.casefold() for vocab in sok.VOCABS.values() for w in vocab.values()} | {
    "up", "down", "left", "right", "north", "south", "east", "west", "box", "wall", "floor", "target", "player",
    "push", "pull", "move", "step", "goal"}
assert not FORBIDDEN_NAMES & set(WORD_POOL) and all(len(w) > 1 and w.isalpha() for w in WORD_POOL)


def diverse_names(rng):
    """Four distinct words of the pool as the names of Up, Down, Left, Right."""
    words = rng.choice(len(WORD_POOL), size=4, replace=False)
    return {action: WORD_POOL[i] for action, i in zip(sok.ACTIONS, words)}

# -----------------------------------------------------------------------------
# prompts and replies (the one place they are written)


def sokoban_prompt(grid, names, style="full"):
    """The user prompt for one Sokoban state. `names` maps each canonical direction to the word
    the prompt tells the model to answer with."""
    words = [names[a] for a in sok.ACTIONS]
    plain = names == sok.VOCABS["default"]
    if style == "compact":
        # "name is Up" with spaces: a name is then the same token here as in the reply (Qwen's
        # pre-tokeniser glues punctuation such as "*=" or "=Up" into one piece)
        gloss = ", ".join(f"{names[a]} is {a}" for a in sok.ACTIONS)
        return f"sokoban. actions: {gloss}\n{grid}\nnext action?"
    gloss = "" if plain else "\nwhere " + ", ".join(f"{names[a]} is {a}" for a in sok.ACTIONS) + "."
    answers = " | ".join(f"<answer> {w} </answer>" for w in words)  # spaced as in the replies: same tokens
    return (
        "You are a Sokoban solver.\n"
        "Sokoban quick guide\n"
        "Goal: push every box onto a target.\n"
        "Symbols: # wall, _ floor, O target, X box, √ box on target, P player, S player on target.\n"
        "Rules: you can push a box but never pull it, and neither you nor a box can pass through a wall.\n"
        f"Answers: {answers}{gloss}\n"
        "Rewards: each move -0.1, a box onto a target +1, a box off a target -1, all boxes on targets +10.\n\n"
        f"Current state:\n{grid}\n\n"
        "Decide the next action.\n"
        "Think inside <think> </think>, then give your answer inside <answer> </answer>."
    )


def sokoban_reply(word, think=""):
    return f"<think>{' ' + think + ' ' if think else ' '}</think> <answer> {word} </answer>"


def gpoints_prompt(cards, mapping, target=24, style="full"):
    """The user prompt for one hand. `mapping` is the J/Q/K mapping stated in the prompt."""
    shown = gp.MAPPINGS[mapping] if isinstance(mapping, str) else mapping
    if style == "compact":
        faces = " ".join(f"{f}={shown[f]}" for f in gp.FACE_RANKS)
        return f"points. cards: {' '.join(cards)}. {faces}. target {target}. json formula?"
    return (
        "You are an expert player of the card game General Points.\n"
        f"Make {target} with the cards below: use the value of every card exactly once, with the operators "
        "+, -, *, / and brackets.\n"
        f"Note that {gp.describe_mapping(shown)}; every other card counts as its number (A is 1).\n"
        f"Cards: {', '.join(cards)}\n"
        "Think inside <think> </think>, then answer with one JSON object: "
        '{"cards": [the cards], "number": [their values], "formula": "an expression that equals '
        f'{target}"}}.'
    )


def gpoints_reply(cards, values, formula, think=""):
    answer = json.dumps({"cards": list(cards), "number": [int(v) for v in values], "formula": formula})
    return f"<think>{' ' + think + ' ' if think else ' '}</think> {answer}"

# -----------------------------------------------------------------------------
# chain-of-thought written by the solvers


def _cell(pos):
    return f"({pos[0]},{pos[1]})"


def first_push(env, solution):
    """Follow `solution` from env's state, each box keeping its index in env.boxes: (the moves
    before the first push, the index of the box it pushes, its direction, where every box ends)."""
    boxes, player, push = list(env.boxes), env.player, None
    for i, action in enumerate(solution):
        dr, dc = sok.ACTION_DELTAS[action]
        player = (player[0] + dr, player[1] + dc)
        if player in boxes:
            k = boxes.index(player)
            boxes[k] = (player[0] + dr, player[1] + dc)
            push = push or (i, k, action)
    return (*push, boxes)


def sokoban_cot(env, solution, names):
    """A short trace of the plan: where everything is, the first push of a shortest solution and
    the walk to it, then the first move in the prompt's vocabulary."""
    push_at, k, action, _ = first_push(env, solution)
    box = env.boxes[k]
    dest = (box[0] + sok.ACTION_DELTAS[action][0], box[1] + sok.ACTION_DELTAS[action][1])
    walk = " ".join(solution[:push_at]) or "none"
    lines = [
        f"player {_cell(env.player)}.",
        "boxes " + " ".join(_cell(b) for b in env.boxes) + ".",
        "targets " + " ".join(_cell(t) for t in sorted(env.targets)) + ".",
        f"push box {_cell(box)} {action} to {_cell(dest)}.",
        f"walk {walk}, then push {action}.",
        f"first move {solution[0]}, named {names[solution[0]]}.",
    ]
    return " ".join(lines)


SIDES = {"Up": "down", "Down": "up", "Left": "right", "Right": "left"}  # the side of a box a push comes from


def _direction(origin, cell):
    """Where `cell` lies seen from `origin`, in words: 'up', 'down-left', ... (no distance)."""
    vertical = "up" if cell[0] < origin[0] else "down" if cell[0] > origin[0] else ""
    horizontal = "left" if cell[1] < origin[1] else "right" if cell[1] > origin[1] else ""
    return "-".join(w for w in (vertical, horizontal) if w) or "here"


def _content(env, cell):
    if cell in env.walls or not (0 <= cell[0] < env.dim[0] and 0 <= cell[1] < env.dim[1]):
        return "wall"
    if cell in env.boxes:
        return "box on target" if cell in env.targets else "box"
    return "target" if cell in env.targets else "floor"


def sokoban_relative_cot(env, solution, names):
    """The plan of sokoban_cot without a number, so that a 10x10 room reads like a 6x6 one: what
    is next to the player, each box as a direction from the player with the direction of the
    target the solution brings it to (the box pushed first, then the others), the first push and
    the side of the box it comes from, the walk to it, then the first move in the prompt's names."""
    walked, first, action, boxes = first_push(env, solution)
    around = ", ".join(f"{a.lower()} {_content(env, (env.player[0] + dr, env.player[1] + dc))}"
                       for a, (dr, dc) in sok.ACTION_DELTAS.items())
    lines = [f"around: {around}."]
    for k in [first] + [k for k in range(len(boxes)) if k != first]:
        box, target = env.boxes[k], boxes[k]
        goal = "on its target" if box == target else f"its target: {_direction(box, target)}"
        lines.append(f"{'box' if k == first else 'other box'}: {_direction(env.player, box)}, {goal}.")
        if k == first:
            lines.append(f"push it {action} from its {SIDES[action]} side.")
    lines.append(f"walk {' '.join(solution[:walked]) or 'none'}, then push {action}.")
    lines.append(f"first move {solution[0]}, named {names[solution[0]]}.")
    return " ".join(lines)


def _number(x):
    return str(x) if not isinstance(x, Fraction) or x.denominator != 1 else str(x.numerator)


def gpoints_cot(cards, values, target=24):
    """A compact search trace: the values of the cards, then each combination of the solution
    found by the search with the numbers left after it, until only the target is left."""
    left = [Fraction(v) for v in values]
    lines = ["cards " + " ".join(cards) + " are " + " ".join(_number(v) for v in values) + "."]
    for step in gp.solution_steps(values, target):
        left, line = _gp_step(left, *step)
        lines.append(line)
    lines.append(f"reached {target}.")
    return " ".join(lines)


def _gp_step(left, a, op, b, result, brackets=False):
    """The numbers left after `a op b = result` (a and b removed, the result appended) and the
    trace's sentence for the step; `brackets` puts a negative or fractional operand in brackets,
    so that 8/(1/3) cannot be read as 8/1/3."""
    left = list(left)
    left.remove(Fraction(a))
    left.remove(Fraction(b))
    left.append(Fraction(result))
    shown = [f"({_number(x)})" if brackets and (x < 0 or Fraction(x).denominator != 1) else _number(x) for x in (a, b)]
    return left, f"{shown[0]}{op}{shown[1]}={_number(result)}, left {' '.join(_number(x) for x in left)}."


GP_SEARCH_DEAD = 3  # the most abandoned tries in one search trace (each at most cards-2 steps long)


def _integer_steps(left):
    """Every distinct step over two of the integers `left` whose result is a non-negative
    integer, the larger number first: what a try of the search may do. Never divides by zero."""
    steps = []
    for i in range(len(left)):
        for j in range(i + 1, len(left)):
            a, b = max(left[i], left[j]), min(left[i], left[j])
            for op, result in (("+", a + b), ("-", a - b), ("*", a * b), ("/", a / b if b else None)):
                if result is not None and result.denominator == 1 and result >= 0 and (a, op, b, result) not in steps:
                    steps.append((a, op, b, result))
    return steps


def _solvable(left, target):
    return gp.is_solvable([int(x) for x in left], target)  # the states searched hold integers only


def gpoints_search_cot(cards, values, rng, target=24, max_dead=GP_SEARCH_DEAD):
    """A bounded depth-first search trace, in the style of Stream of Search (Gandhi et al. 2024):
    the card values, the steps of the solution (those of gpoints_cot), and a check of the
    answer's formula. Before a step, the search may first try another step after which the exact
    solver finds no way to the target, follow it down to two numbers, say so and go back: 0 to
    `max_dead` such tries in all (drawn with `rng`, from states whose numbers are all integers)."""
    states, path = [[Fraction(v) for v in values]], []
    for step in gp.solution_steps(values, target):
        left, line = _gp_step(states[-1], *step, brackets=True)
        states.append(left)
        path.append(line)
    dead = {d: [s for s in _integer_steps(state) if not _solvable(_gp_step(state, *s)[0], target)]
            for d, state in enumerate(states) if len(state) >= 3 and all(x.denominator == 1 for x in state)}
    tries = {d: [] for d in dead}
    for _ in range(int(rng.integers(max_dead + 1))):
        open_states = [d for d in dead if dead[d]]
        if not open_states:
            break
        d = open_states[int(rng.integers(len(open_states)))]
        tries[d].append(dead[d].pop(int(rng.integers(len(dead[d])))))
    lines = ["cards " + " ".join(cards) + " are " + " ".join(_number(v) for v in values) + "."]
    for d, line in enumerate(path):
        for step in tries.get(d, ()):
            left = states[d]
            while True:  # every state below a dead one is dead: follow random steps down to two numbers
                left, try_line = _gp_step(left, *step, brackets=True)
                lines.append(try_line)
                if len(left) <= 2:
                    break
                options = _integer_steps(left)
                step = options[int(rng.integers(len(options)))]
            assert not _solvable(left, target), (values, left)
            lines.append(f"no way to {target} from here, back to {' '.join(_number(x) for x in states[d])}.")
        lines.append(line)
    lines.append(f"check: {gp.solve_one(values, target)} = {target}. yes.")
    return " ".join(lines)

# -----------------------------------------------------------------------------
# Sokoban sets


def stream(seed, name):
    """An independent generator per file, so that changing one file's size leaves the others."""
    return np.random.default_rng([seed, *name.encode()])


def room_seeds(seed, name, n):
    return stream(seed, name + "/rooms").integers(2**62, size=n).tolist()


def solution_states(env):
    """(env at each state, its optimal first moves, a shortest solution from it) along a
    shortest solution of the room; the solved state is left out."""
    states, solution = [], sok.solve(env)
    state = env.copy()
    for i in range(len(solution)):
        states.append((state.copy(), sok.optimal_actions(state), solution[i:]))
        state.step(solution[i])
    return states


def sokoban_meta(variant, grid, env, names, accepted, optimal, seed, style):
    return dict(task="sokoban", variant=variant, grid=grid, dim=list(env.dim), num_boxes=env.num_boxes, seed=seed,
                names=names, accepted=accepted, optimal=[a for a in sok.ACTIONS if a in optimal], style=style)


def sokoban_eval_sets(args):
    """The 8 evaluation sets and the canonical keys of every state on their shortest solutions.
    Alpha/Num/Rand/Fake reuse ID's rooms, so their differences from ID are paired."""
    sets, keys = {}, set()
    rooms_by_setting = {}
    for variant, spec in tqdm(sok.VARIANTS.items(), desc="sokoban eval", leave=False):
        setting = (tuple(spec["dim"]), spec["num_boxes"])
        if setting not in rooms_by_setting:
            seeds = room_seeds(args.seed, f"sokoban/eval/{setting}", args.sok_eval_rooms)
            rooms_by_setting[setting] = [sok.generate_room(setting[0], setting[1], s) for s in seeds]
            for env in rooms_by_setting[setting]:
                keys.update(sok.canonical_key(state.render()) for state, _, _ in solution_states(env))
        names, accepted = sok.VOCABS[spec["names"]], sok.VOCABS[spec["accepted"]]
        records = []
        for env in rooms_by_setting[setting]:
            grid = env.render()
            meta = sokoban_meta(variant, grid, env, names, accepted, sok.optimal_actions(env), env.seed, args.style)
            prompt = dict(role="user", content=sokoban_prompt(grid, names, args.style))
            records.append(dict(messages=[prompt], meta=meta))
        sets[variant] = records
    return sets, keys


def sokoban_states(args, name, n_rooms, eval_keys):
    """Single-step states of n_rooms 6x6 one-box rooms, skipping rooms that touch an evaluation
    state. Returns [(grid, env, optimal, solution, seed, symmetry)], augmented if asked."""
    states, skipped = [], 0
    seeds = iter(room_seeds(args.seed, name, 50 * n_rooms + 100))
    with tqdm(total=n_rooms, desc=name, leave=False) as bar:
        while bar.n < n_rooms:
            seed = next(seeds)
            path = solution_states(sok.generate_room((6, 6), 1, seed))
            grids = [state.render() for state, _, _ in path]
            if any(sok.canonical_key(g) in eval_keys for g in grids):
                skipped += 1
                continue
            for grid, (state, optimal, solution) in zip(grids, path):
                variants = sok.symmetries(grid) if args.sok_augment else [(grid, {a: a for a in sok.ACTIONS})]
                for k, (sym_grid, action_map) in enumerate(variants):
                    sym_env = sok.SokobanEnv.from_text(sym_grid)
                    states.append((sym_grid, sym_env, {action_map[a] for a in optimal},
                                   [action_map[a] for a in solution], seed, k))
            bar.update(1)
    return states, skipped


def sokoban_sft_sets(args, states):
    """The four SFT sets over the same states: frozen or diverse names, answer-only or CoT."""
    rng = stream(args.seed, "sokoban/diverse-names")
    keep_default = stream(args.seed, "sokoban/default-share")  # its own stream: the drawn names stay the same
    cot = {"absolute": sokoban_cot, "relative": sokoban_relative_cot}[args.sok_cot]
    out = {"train_ans": [], "train_cot": [], "train_diverse_ans": [], "train_diverse_cot": []}
    for grid, env, optimal, solution, seed, symmetry in states:
        diverse = diverse_names(rng)
        if keep_default.random() < args.sok_default_share:
            diverse = sok.VOCABS["default"]
        for prefix, names in (("train", sok.VOCABS["default"]), ("train_diverse", diverse)):
            meta = sokoban_meta("train" if prefix == "train" else "diverse", grid, env, names, names, optimal, seed,
                                args.style)
            meta["symmetry"] = symmetry
            prompt = dict(role="user", content=sokoban_prompt(grid, names, args.style))
            word = names[solution[0]]
            for kind, think in (("ans", ""), ("cot", cot(env, solution, names))):
                reply = dict(role="assistant", content=sokoban_reply(word, think))
                out[f"{prefix}_{kind}"].append(dict(messages=[prompt, reply], meta=meta))
    return out


def sokoban_rl_sets(args, states):
    rng = stream(args.seed, "sokoban/rl-names")
    out = {"rl": [], "rl_diverse": []}
    for grid, env, optimal, _, seed, symmetry in states:
        for name, names in (("rl", sok.VOCABS["default"]), ("rl_diverse", diverse_names(rng))):
            meta = sokoban_meta("train" if name == "rl" else "diverse", grid, env, names, names, optimal, seed,
                                args.style)
            meta["symmetry"] = symmetry
            out[name].append(dict(messages=[dict(role="user", content=sokoban_prompt(grid, names, args.style))],
                                  meta=meta))
    return out


def check_sokoban(files):
    """Every SFT target answers an optimal move under its own names; no training state is an
    evaluation state in any orientation. Returns the number of overlapping states (0)."""
    for name, records in files.items():
        if name.startswith("train"):
            for r in records:
                action = sok.parse_answer(r["messages"][1]["content"], r["meta"]["names"])
                assert action in r["meta"]["optimal"], (name, r)
    eval_keys = {sok.canonical_key(r["meta"]["grid"]) for n, rs in files.items() if n.startswith("eval") for r in rs}
    return sum(sok.canonical_key(r["meta"]["grid"]) in eval_keys
               for n, rs in files.items() if not n.startswith("eval") for r in rs)


def build_sokoban(args):
    eval_sets, eval_keys = sokoban_eval_sets(args)
    train_states, skipped_train = sokoban_states(args, "sokoban/train", args.sok_train_rooms, eval_keys)
    rl_states, skipped_rl = sokoban_states(args, "sokoban/rl", args.sok_rl_rooms, eval_keys)
    files = {**sokoban_sft_sets(args, train_states), **sokoban_rl_sets(args, rl_states)}
    files.update({f"eval_{variant}": records for variant, records in eval_sets.items()})
    notes = f"skipped {skipped_train + skipped_rl} rooms that touch an evaluation state"
    return files, check_sokoban(files), notes

# -----------------------------------------------------------------------------
# General Points sets


def heldout_hands(args):
    """The four-card hands (multisets of ranks A-K) reserved for evaluation: a seeded share of
    all 1,820, so that test hands never occur in training and still cover every card."""
    hands = sorted({gp.hand_key(h) for h in _multisets(gp.RANKS, 4)}, key=lambda h: [gp.RANKS.index(c) for c in h])
    rng = stream(args.seed, "gpoints/heldout")
    chosen = rng.random(len(hands)) < args.gp_heldout
    return frozenset(h for h, c in zip(hands, chosen) if c), frozenset(h for h, c in zip(hands, chosen) if not c)


def _multisets(ranks, k, start=0):
    if k == 0:
        yield ()
        return
    for i in range(start, len(ranks)):
        for rest in _multisets(ranks, k - 1, i):
            yield (ranks[i],) + rest


def gpoints_record(cards, shown, scored, variant, style, reply=None):
    values = gp.hand_values(cards, scored)
    meta = dict(task="gpoints", variant=variant, cards=list(cards), values=values, target=24,
                mapping=dict(gp.MAPPINGS[shown]), style=style)
    messages = [dict(role="user", content=gpoints_prompt(cards, shown, 24, style))]
    if reply is not None:
        messages.append(dict(role="assistant", content=reply))
    return dict(messages=messages, meta=meta)


def build_gpoints(args):
    heldout, train_hands = heldout_hands(args)
    files = {}
    for variant, spec in tqdm(gp.VARIANTS.items(), desc="gpoints eval", leave=False):
        rng = stream(args.seed, f"gpoints/eval/{variant}")
        records = []
        for _ in range(args.gp_eval):
            cards = gp.deal(variant, rng, exclude=train_hands if spec["num_cards"] == 4 else frozenset())
            records.append(gpoints_record(cards, spec["shown"], spec["scored"], variant, args.style))
        files[f"eval_{variant}"] = records
    exclude = heldout
    for prefix, n, sft in (("train", args.gp_train, True), ("rl", args.gp_rl, False)):
        for diverse in (False, True):
            rng = stream(args.seed, f"gpoints/{prefix}/{diverse}")
            name = prefix + ("_diverse" if diverse else "")
            kinds = {f"{name}_ans": [], f"{name}_cot": []} if sft else {name: []}
            search_rng = stream(args.seed, f"gpoints/{name}/search-cot")  # its own stream: the hands stay the same
            for i in tqdm(range(n), desc=f"gpoints/{name}", leave=False):
                mapping = gp.TRAIN_DIVERSE_MAPPINGS[i % len(gp.TRAIN_DIVERSE_MAPPINGS)] if diverse else "all10"
                cards = gp.deal_train(rng, mapping, exclude=exclude)
                variant = "diverse" if diverse else "train"
                if not sft:
                    kinds[name].append(gpoints_record(cards, mapping, mapping, variant, args.style))
                    continue
                values = gp.hand_values(cards, mapping)
                formula = gp.solve_one(values)
                if args.gp_cot == "search":
                    cot = gpoints_search_cot(cards, values, search_rng)
                else:
                    cot = gpoints_cot(cards, values)
                for kind, think in (("ans", ""), ("cot", cot)):
                    reply = gpoints_reply(cards, values, formula, think)
                    kinds[f"{name}_{kind}"].append(gpoints_record(cards, mapping, mapping, variant, args.style, reply))
            files.update(kinds)
    return files, check_gpoints(files), f"{len(heldout)} of 1820 four-card hands held out for evaluation"


def check_gpoints(files):
    for name, records in files.items():
        if name.startswith("train"):
            for r in records:
                assert gp.score(r["messages"][1]["content"], r["meta"]["values"]) == 5, (name, r)
        if name.startswith(("train", "rl")):
            assert all(set(r["meta"]["mapping"].items()) != set(gp.MAPPINGS[m].items())
                       for r in records for m in gp.TEST_MAPPINGS), name
    eval_keys = {gp.hand_key(r["meta"]["cards"]) for n, rs in files.items() if n.startswith("eval") for r in rs}
    return sum(gp.hand_key(r["meta"]["cards"]) in eval_keys
               for n, rs in files.items() if not n.startswith("eval") for r in rs)

# -----------------------------------------------------------------------------
# the tiny base model's corpus
#
# A pretrained LLM can read a mapping in its prompt and produce any token; a 1M-parameter model
# trained from scratch on Sokoban cannot (it never emits a token it was not trained to emit). The
# tiny study therefore first trains a base model on generic skills over the whole vocabulary --
# look a key up by its value and back, copy a list, small exact arithmetic -- then fine-tunes
# every row from it, as the paper fine-tunes Qwen2.5-7B. Nothing here is Sokoban or General
# Points: no direction word, no grid, no card, so no test mapping can occur in it.

BASE_KEYS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789*&%$@!?+#~^") + WORD_POOL
BASE_VALUES = WORD_POOL + tuple("""
alpha beta gamma delta omega sun moon star sky sea lake hill rock sand leaf tree root seed stone metal wood
glass paper silk wool cotton iron copper bronze ruby pearl jade onyx opal topaz zinc tin lead neon argon
""".split())
assert not FORBIDDEN_NAMES & {v.casefold() for v in BASE_VALUES}


def base_record(rng, style):
    """One generic example, answered in the study's reply format. Items are always preceded by a
    space and followed by a space, comma or newline, so an item is the same token in the prompt
    and in the reply (copying is then a skill the model can learn once for every token). Most
    examples ask for several items at once: every answer token is then a copy or a lookup, which
    a 1M-parameter model needs to learn them in minutes rather than hours (one answer token per
    example gives it too little signal)."""
    kind = int(rng.choice(4, p=[0.35, 0.25, 0.25, 0.15]))
    if kind < 2:  # a lookup in a list of "key is value" pairs, by value (as an action name is found) or by key
        n = int(rng.integers(2, 9))
        keys = [BASE_KEYS[i] for i in rng.choice(len(BASE_KEYS), size=n, replace=False)]
        values = [BASE_VALUES[i] for i in rng.choice(len(BASE_VALUES), size=n, replace=False)]
        asked = [int(i) for i in rng.permutation(n)[:int(rng.integers(1, n + 1))]]
        pairs = ", ".join(f"{k} is {v}" for k, v in zip(keys, values))
        given, wanted = (values, keys) if kind == 0 else (keys, values)
        verb = ("which" if kind == 0 else "what") + (" is" if len(asked) == 1 else " are")
        prompt = f"lookup: {pairs}\n{verb} {' '.join(given[i] for i in asked)} ?"
        answer = " ".join(wanted[i] for i in asked)
    elif kind == 2:  # copy a list of tokens
        n = int(rng.integers(1, 13))
        words = [BASE_KEYS[i] for i in rng.choice(len(BASE_KEYS), size=n)]
        prompt, answer = "copy: " + " ".join(words) + " .\nagain?", " ".join(words)
    else:  # exact integer arithmetic on two or three numbers
        a, b, c = (int(x) for x in rng.integers(1, 14, size=3))
        op1, op2 = rng.choice(["+", "-", "*"], size=2)
        expression = f"{a}{op1}{b}" if rng.random() < 0.5 else f"({a}{op1}{b}){op2}{c}"
        value = a + b if op1 == "+" else a - b if op1 == "-" else a * b
        if "(" in expression:
            value = value + c if op2 == "+" else value - c if op2 == "-" else value * c
        prompt, answer = f"compute: {expression}\nresult?", str(value)
    if style == "full":
        prompt = "Answer the question about the text below.\n" + prompt
    return dict(messages=[dict(role="user", content=prompt), dict(role="assistant", content=sokoban_reply(answer))],
                meta=dict(task="base", kind=["lookup-key", "lookup-value", "copy", "arithmetic"][kind], style=style))


def build_base(args):
    """Three files: train.jsonl (every kind mixed), copy.jsonl (copying only) and eval.jsonl. A 1M-parameter
    model learns to copy first and to look up only once it copies, so the study trains the base on
    copy.jsonl, then on train.jsonl (a two-stage curriculum). eval.jsonl holds fresh examples
    for eval.py --task base, none of them a training prompt."""
    rng = stream(args.seed, "base")
    records = [base_record(rng, args.style) for _ in tqdm(range(args.base_records), desc="base", leave=False)]
    rng = stream(args.seed, "base-copy")
    copies = []
    while len(copies) < args.base_records // 2:
        r = base_record(rng, args.style)
        if r["meta"]["kind"] == "copy":
            copies.append(r)
    directions = {a.casefold() for a in sok.ACTIONS}
    overlap = sum(any(w.casefold().strip("=") in directions for m in r["messages"] for w in m["content"].split())
                  for r in records + copies)
    rng = stream(args.seed, "base-eval")  # held-out records for eval.py --task base
    seen = {r["messages"][0]["content"] for r in records + copies}
    held_out = [r for r in (base_record(rng, args.style) for _ in range(max(50, args.base_records // 40)))
                if r["messages"][0]["content"] not in seen]
    return ({"train": records, "copy": copies, "eval": held_out}, overlap,
            "generic lookups, copies and arithmetic (no task content)")


# -----------------------------------------------------------------------------
# the tiny model (sft.py --model tiny): a byte-level BPE tokenizer trained on the data, a random-init Qwen2

# A Qwen2 byte-level BPE: AutoTokenizer loads any qwen2-type directory as Qwen2Tokenizer, with Qwen's
# pre-tokenizer regex and NFC hard-wired, so training it with the same pipeline keeps it identical under
# every loading path. Bytes as the base alphabet: any character is representable and decoding is exact.
# Merges that would glue two grid symbols together ("##", "_P", "X√") are dropped, so a grid is one token
# per cell whether or not its rows put spaces between cells.
TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # pad, turn start, turn end (= EOS)
TINY_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


def joins_grid_cells(token, byte_of):
    """Whether a byte-level token decodes to two or more grid symbols (a leading space and trailing
    newlines aside)."""
    try:
        text = bytes(byte_of[c] for c in token).decode("utf-8")
    except UnicodeDecodeError:  # part of a multi-byte character: merging it is fine
        return False
    text = text.removeprefix(" ").rstrip("\n")
    grid = sok.SYMBOLS
    return len(text) >= 2 and any(c in grid for c in text) and all(c in grid or c in " \n" for c in text)


def build_tiny_model(out_dir, texts, hidden=128, layers=4, heads=4, ffn=512, vocab=2048, max_positions=4096, seed=0):
    """A byte-level BPE tokenizer trained on `texts` and a random-init Qwen2, saved together as a Hugging
    Face directory (loaded as any model)."""
    import torch
    from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=TINY_SPECIALS,
                                  initial_alphabet=alphabet, show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    merges = json.loads(bpe.to_str())["model"]["merges"]
    # keep a merge only if its parts survived and its result does not glue grid cells together
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    tokens = TINY_SPECIALS + sorted(alphabet)
    have, kept = set(tokens), []
    for a, b in (m.split(" ") if isinstance(m, str) else m for m in merges):
        if a in have and b in have and a + b not in have and not joins_grid_cells(a + b, byte_of):
            kept.append((a, b))
            have.add(a + b)
            tokens.append(a + b)
    tok = Qwen2Tokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=kept, unk_token=None,
                         eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": [AddedToken("<|im_start|>", special=True)]})
    tok.chat_template = TINY_CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_positions,
                         tie_word_embeddings=True, bos_token_id=None, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tiny_model=True)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir

# -----------------------------------------------------------------------------
# main


def main(argv=None):
    args = parse_args(argv)
    builders = {"sokoban": build_sokoban, "gpoints": build_gpoints, "base": build_base}
    for task in args.tasks:
        directory = os.path.join(args.out, task)
        try:
            os.makedirs(directory, exist_ok=True)
            probe = os.path.join(directory, f".write-test-{os.getpid()}")
            open(probe, "w").close()
            os.remove(probe)
        except OSError as e:
            raise UserError(f"cannot write to {directory}: {e.strerror}") from None
    for task in args.tasks:
        t0 = time.time()
        files, overlap, notes = builders[task](args)
        for name, records in files.items():
            write_jsonl(os.path.join(args.out, task, f"{name}.jsonl"), records)
        print(f"{task}: {len(files)} files in {time.time() - t0:.1f}s; {notes}; eval/train overlap {overlap}")
        for name, records in files.items():
            print(f"  {task}/{name}.jsonl  {len(records)}")
        if overlap:
            raise UserError(f"{overlap} training records overlap the evaluation sets")


if __name__ == "__main__":
    run_cli(main, "make_data.py")
