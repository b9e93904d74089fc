"""Tests of env_sokoban.py: dynamics and rewards on hand-made rooms, the solver against a
brute-force breadth-first search, room generation (reproducible across processes, always
solvable within 30), symmetries, and parse_answer on hostile input."""
import os
import random
import subprocess
import sys
import time
from collections import deque

import pytest

import env_sokoban
from env_sokoban import (ACTIONS, VARIANTS, VOCABS, SokobanEnv, canonical_key, optimal_actions, parse_answer, solve,
                         symmetries)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = [((6, 6), 1), ((10, 10), 1), ((6, 6), 2), ((10, 10), 2)]


def room(text):
    return SokobanEnv.from_text(text.strip().replace("|", " "))


# -----------------------------------------------------------------------------
# dynamics and rewards


def test_render_round_trips_and_uses_the_paper_symbols():
    text = "# # # # #\n# S X _ #\n# √ _ _ #\n# # # # #"
    env = SokobanEnv.from_text(text)
    assert env.render() == text
    assert env.player == (1, 1) and env.boxes == ((1, 2), (2, 1)) and env.targets == {(1, 1), (2, 1)}
    assert env.dim == (4, 5) and env.num_boxes == 2


def test_push_moves_the_box_and_walls_or_boxes_block_it():
    env = room("# # # # # #\n# P X _ O #\n# # # # # #")
    _, reward, terminated, truncated, info = env.step("Right")
    assert env.player == (1, 2) and env.boxes == ((1, 3),)
    assert reward == pytest.approx(-0.1) and info["action_is_effective"] and not terminated and not truncated
    env = room("# # # #\n# P X #\n# O # #\n# # # #")  # box against the wall
    _, reward, _, _, info = env.step(3)
    assert env.player == (1, 1) and env.boxes == ((1, 2),) and not info["action_is_effective"]
    assert reward == pytest.approx(-0.1)
    env = room("# # # # # # #\n# P X X _ O #\n# _ _ _ _ O #\n# # # # # # #")  # two boxes in a row
    env.step("Right")
    assert env.player == (1, 1) and env.boxes == ((1, 2), (1, 3))
    env.step("Up")  # into the wall
    assert env.player == (1, 1)


def test_rewards_box_on_and_off_target_and_solved():
    env = room("# # # # # # #\n# P X O _ O #\n# _ _ _ _ X #\n# # # # # # #")
    _, reward, terminated, _, info = env.step("Right")  # box onto a target, one box left
    assert reward == pytest.approx(1 - 0.1) and not terminated and info["boxes_on_target"] == 1
    _, reward, _, _, _ = env.step("Right")  # and off it again
    assert reward == pytest.approx(-1 - 0.1)
    env = room("# # # # #\n# P X O #\n# # # # #")
    _, reward, terminated, truncated, info = env.step("Right")
    assert reward == pytest.approx(10 + 1 - 0.1) and terminated and not truncated and info["success"]


def test_truncation_at_max_steps_and_invalid_actions():
    env = SokobanEnv.from_text("# # # # #\n# P X O #\n# # # # #", max_steps=3)
    results = [env.step("Left") for _ in range(3)]
    assert [r[3] for r in results] == [False, False, True] and not any(r[2] for r in results)
    for bad in ("up", "Jump", 4, -1, None, 1.0, True):
        with pytest.raises(ValueError):
            env.step(bad)
    with pytest.raises(ValueError):
        SokobanEnv.from_text("# # #\n# X #\n# # #")  # no player


def test_copy_is_independent():
    env = room("# # # # # #\n# P X _ O #\n# # # # # #")
    twin = env.copy()
    twin.step("Right")
    assert env.player == (1, 1) and env.steps == 0 and twin.steps == 1


# -----------------------------------------------------------------------------
# solver


def brute_force_distance(env, max_depth=40):
    """Plain breadth-first search through env.step: slow and obviously right."""
    start = env.copy()
    start.max_steps = 10**9
    seen, queue = {(start.player, start.boxes)}, deque([(start, 0)])
    while queue:
        state, depth = queue.popleft()
        if state.is_solved():
            return depth
        if depth < max_depth:
            for action in ACTIONS:
                child = state.copy()
                child.step(action)
                if (child.player, child.boxes) not in seen:
                    seen.add((child.player, child.boxes))
                    queue.append((child, depth + 1))
    return None


def brute_force_optimal_actions(env):
    length = brute_force_distance(env)
    moves = set()
    for action in ACTIONS:
        child = env.copy()
        child.step(action)
        moved = (child.player, child.boxes) != (env.player, env.boxes)
        if moved and length and brute_force_distance(child) == length - 1:
            moves.add(action)
    return moves


def test_solver_matches_brute_force_on_generated_rooms_and_along_their_solutions():
    checked = 0
    for dim, num_boxes in [((6, 6), 1), ((6, 6), 2), ((8, 8), 1)]:
        for seed in range(6):
            env = env_sokoban.generate_room(dim, num_boxes, seed)
            for action in [None] + solve(env):
                if action:
                    env.step(action)
                solution = solve(env)
                assert len(solution) == brute_force_distance(env)
                assert optimal_actions(env) == brute_force_optimal_actions(env)
                replay = env.copy()
                for a in solution:
                    replay.step(a)
                assert replay.is_solved()
                checked += 1
    assert checked > 50


def test_optimal_actions_returns_every_tie():
    # the box sits diagonally from its target: push Up then Right, or Right then Up
    env = room("# # # # # #\n# _ _ O _ #\n# _ X _ _ #\n# _ P _ _ #\n# # # # # #")
    assert brute_force_distance(env) == len(solve(env))
    assert optimal_actions(env) == brute_force_optimal_actions(env)
    # the player between two equally far boxes of a symmetric room: Left and Right both optimal
    env = room("# # # # # # #\n# O X P X O #\n# # # # # # #")
    assert optimal_actions(env) == {"Left", "Right"} and len(solve(env)) == 3


def test_solver_edge_cases():
    boxed_in = "# # # #\n# P √ #\n# # # #"
    assert solve(room(boxed_in)) == [] and optimal_actions(room(boxed_in)) == set()
    dead = room("# # # # #\n# P _ X #\n# O _ _ #\n# # # # #")  # box in a corner: never solvable
    assert solve(dead) is None and optimal_actions(dead) == set()
    far = room("# " * 36 + "\n# P X " + "_ " * 31 + "O #\n" + "# " * 36)  # 32 pushes away
    assert solve(far) is None and len(solve(far, max_depth=40)) == 32


# -----------------------------------------------------------------------------
# generation


def test_generated_rooms_are_solvable_within_30_and_well_formed():
    for dim, num_boxes in SETTINGS:
        for seed in range(8):
            env = SokobanEnv(dim=dim, num_boxes=num_boxes)
            obs, info = env.reset(seed=seed)
            assert info["seed"] == seed and obs == env.render()
            assert len(env.boxes) == len(env.targets) == num_boxes and not env.is_solved()
            assert env.render().count("\n") == dim[0] - 1 and len(env.render().splitlines()[0].split()) == dim[1]
            border = [(r, c) for r in range(dim[0]) for c in range(dim[1])
                      if r in (0, dim[0] - 1) or c in (0, dim[1] - 1)]
            assert set(border) <= env.walls
            solution = solve(env)
            assert solution is not None and 1 <= len(solution) <= 30


def test_reset_is_deterministic_and_seeds_differ():
    env = SokobanEnv()
    first = [env.reset(seed=s)[0] for s in range(20)]
    assert first == [env.reset(seed=s)[0] for s in range(20)]
    assert len(set(first)) >= 18
    unseeded = SokobanEnv()
    unseeded.reset()
    assert unseeded.seed is not None and SokobanEnv().reset(seed=unseeded.seed)[0] == unseeded.render()


def test_generation_is_reproducible_across_processes():
    script = ("import env_sokoban as e; print('\\n=\\n'.join("
              "e.generate_room(d, b, s).render() for d, b in [((6, 6), 1), ((10, 10), 2)] for s in range(5)))")
    outputs = []
    for hash_seed in ("1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        outputs.append(subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                                      check=True).stdout)
    here = "\n=\n".join(env_sokoban.generate_room(d, b, s).render()
                         for d, b in [((6, 6), 1), ((10, 10), 2)] for s in range(5))
    assert outputs[0] == outputs[1] == here + "\n"


def test_reverse_play_pulls_the_box_away_from_its_target():
    # a 1x4 corridor: the deepest pull moves the box two cells from its target
    floor = bytearray(18)
    for cell in (7, 8, 9, 10):  # row 1 of a 3x6 grid
        floor[cell] = 1
    player, boxes, moved, depth = env_sokoban.reverse_play(6, floor, (8,), 7, search_depth=30)
    assert moved == 0  # the player is stuck behind the box's only pull direction
    player, boxes, moved, depth = env_sokoban.reverse_play(6, floor, (8,), 9, search_depth=30)
    assert (player, boxes, moved, depth) == (10, (9,), 1, 1)
    player, boxes, moved, depth = env_sokoban.reverse_play(6, floor, (7,), 8, search_depth=30)
    assert boxes == (9,) and player == 10 and moved == 2 and depth == 2


# -----------------------------------------------------------------------------
# symmetries


def test_symmetries_of_an_asymmetric_room_are_distinct_and_map_solutions():
    env = env_sokoban.generate_room((6, 6), 2, 3)
    variants = symmetries(env.render())
    assert len(variants) == 8 and variants[0][0] == env.render()
    assert len({text for text, _ in variants}) == 8
    solution = solve(env)
    for text, action_map in variants:
        assert sorted(action_map.values()) == sorted(ACTIONS)
        moved = SokobanEnv.from_text(text)
        for action in solution:
            moved.step(action_map[action])
        assert moved.is_solved() and len(solve(SokobanEnv.from_text(text))) == len(solution)
        assert canonical_key(text) == canonical_key(env.render())
    assert variants[1][1]["Up"] == "Right"  # rot90 is clockwise


def test_symmetries_of_a_non_square_room_transpose_dims():
    text = "# # # # # #\n# P X _ O #\n# # # # # #"
    shapes = [(len(t.splitlines()), len(t.splitlines()[0].split())) for t, _ in symmetries(text)]
    assert shapes.count((3, 6)) == 4 and shapes.count((6, 3)) == 4
    assert canonical_key(text) != canonical_key(env_sokoban.generate_room((6, 6), 1, 0).render())


# -----------------------------------------------------------------------------
# answer parsing and vocabularies


def test_vocabularies_and_variants():
    for vocab in VOCABS.values():
        assert set(vocab) == set(ACTIONS) and len(set(vocab.values())) == 4
    assert VOCABS["rand"] == {"Up": "*", "Down": "&", "Left": "1", "Right": "M"}
    assert set(VARIANTS) == {"id", "alpha", "num", "rand", "large", "twoboxes", "complex", "fake"}
    assert VARIANTS["fake"]["names"] == "num" and VARIANTS["fake"]["accepted"] == "default"
    assert VARIANTS["complex"]["dim"] == (10, 10) and VARIANTS["complex"]["num_boxes"] == 2
    assert all(v["names"] == v["accepted"] for k, v in VARIANTS.items() if k != "fake")


@pytest.mark.parametrize("reply, names, expected", [
    ("<think>push it</think><answer>Up</answer>", "default", "Up"),
    ("<answer>  left \n</answer>", "default", "Left"),
    ("<ANSWER>RIGHT</ANSWER>", "default", "Right"),
    ("<answer>1</answer>", "rand", "Left"),
    ("<answer>1</answer>", "num", "Up"),
    ("<answer>m</answer>", "rand", "Right"),
    ("<answer>⬆</answer>", "emoji", "Up"),  # without the emoji presentation selector
    ("<answer>➡️</answer>", "emoji", "Right"),
    ("<answer>Up</answer>", "num", None),  # Fake: the env accepts only its own words
    ("<answer>Up, Left</answer>", "default", None),
    ("<answer>Up || Up</answer>", "default", None),
    ("<answer>Up</answer><answer>Up</answer>", "default", None),  # several tags: None, not "the last"
    ("<answer>Up</answer> then <answer>", "default", None),
    ("<answer></answer>", "default", None),
    ("<answer> </answer>", "default", None),
    ("Up", "default", None),
    ("</answer>Up<answer>", "default", None),
    ("<answer>Upward</answer>", "default", None),
    ("<answer>North</answer>", "cardinal", "Up"),
])
def test_parse_answer(reply, names, expected):
    assert parse_answer(reply, VOCABS[names]) == expected


def test_parse_answer_never_raises_on_fuzz_and_is_fast_on_megabytes():
    rng = random.Random(0)
    alphabet = ["<answer>", "</answer>", "<ANSWER>", "<", ">", "/", "Up", "1", "*", "\ufe0f", "⬆", " ", "\n", "a",
                "\x00", "İ", "\ud800"]
    for _ in range(3000):
        reply = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        for vocab in VOCABS.values():
            assert parse_answer(reply, vocab) in (None, *ACTIONS)
    for hostile in (None, 123, b"<answer>Up</answer>", ["<answer>Up</answer>"]):
        assert parse_answer(hostile, VOCABS["default"]) is None
    assert parse_answer("<answer>Up</answer>", None) is None
    megabyte = ["<answer>" * 100_000, "<" * 1_000_000, "<answer>" + "Up " * 350_000 + "</answer>",
                "x" * 1_000_000 + "<answer>Down</answer>", "</answer><answer" * 60_000]
    start = time.process_time()
    results = [parse_answer(reply, VOCABS["default"]) for reply in megabyte]
    assert time.process_time() - start < 1.0
    assert results == [None, None, None, "Down", None]


@pytest.mark.parametrize("argv, message", [
    (["--dim", "3", "3"], "--dim needs at least 4 4"),
    (["--rooms", "0"], "--rooms at least 1"),
    (["--boxes", "9"], "no room for seed 0"),  # more boxes than a 6x6 room has floor for
])
def test_cli_refuses_rooms_it_cannot_make(argv, message):
    result = subprocess.run([sys.executable, "env_sokoban.py", *argv], cwd=ROOT, capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1
    assert lines[0].startswith("env_sokoban.py: error:") and message in lines[0]
