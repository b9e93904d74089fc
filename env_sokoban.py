"""Sokoban: room generation, dynamics and reward, an exact shortest-path solver, answer parsing,
the action vocabularies and the eight evaluation variants of the study. numpy only, no torch.

    python env_sokoban.py                       # print a few generated rooms and their solutions
    python env_sokoban.py --dim 10 10 --boxes 2 --seed 7
    python -m pytest -q tests/test_env_sokoban.py

Rooms come from the same distribution as gym-sokoban / RAGEN (random-walk floor, boxes pulled
away from their targets by a depth-limited reverse search, player drift), but every random
choice is drawn from `numpy.random.default_rng` seeded by (seed, attempt): a seed gives the same
room in every process. Every generated room is solvable within 30 moves.

The solver is an A* search over (player, boxes) states with a consistent heuristic, so it returns
shortest solutions in moves (the same lengths as a breadth-first search, much faster), and one
search also yields every optimal first move (`optimal_actions`), not just one of them.
"""
import argparse
import re
from heapq import heappop, heappush

import numpy as np

# -----------------------------------------------------------------------------
# actions, vocabularies, evaluation variants

ACTIONS = ("Up", "Down", "Left", "Right")
ACTION_DELTAS = {"Up": (-1, 0), "Down": (1, 0), "Left": (0, -1), "Right": (0, 1)}

VOCABS = {
    "default": {"Up": "Up", "Down": "Down", "Left": "Left", "Right": "Right"},
    "alpha": {"Up": "A", "Down": "B", "Left": "C", "Right": "D"},
    "num": {"Up": "1", "Down": "2", "Left": "3", "Right": "4"},
    "rand": {"Up": "*", "Down": "&", "Left": "1", "Right": "M"},  # as in the paper: 1 means Left
    "cardinal": {"Up": "North", "Down": "South", "Left": "West", "Right": "East"},
    "emoji": {"Up": "⬆️", "Down": "⬇️", "Left": "⬅️", "Right": "➡️"},
}

# The eight test sets of the paper. `names` is the vocabulary the prompt announces, `accepted`
# the one the environment parses; they differ only for the Fake probe.
VARIANTS = {
    "id": dict(dim=(6, 6), num_boxes=1, names="default", accepted="default"),
    "alpha": dict(dim=(6, 6), num_boxes=1, names="alpha", accepted="alpha"),
    "num": dict(dim=(6, 6), num_boxes=1, names="num", accepted="num"),
    "rand": dict(dim=(6, 6), num_boxes=1, names="rand", accepted="rand"),
    "large": dict(dim=(10, 10), num_boxes=1, names="default", accepted="default"),
    "twoboxes": dict(dim=(6, 6), num_boxes=2, names="default", accepted="default"),
    "complex": dict(dim=(10, 10), num_boxes=2, names="default", accepted="default"),
    "fake": dict(dim=(6, 6), num_boxes=1, names="num", accepted="default"),
}

# gym-sokoban's rewards
STEP_PENALTY, BOX_ON_REWARD, BOX_OFF_PENALTY, SOLVED_REWARD = -0.1, 1.0, -1.0, 10.0

SYMBOLS = {"#", "_", "O", "X", "√", "P", "S"}

# -----------------------------------------------------------------------------
# the environment


class SokobanEnv:
    """Gymnasium-style Sokoban without gymnasium. The state is plain attributes: `walls` and
    `targets` (frozensets of (row, col)), `boxes` (sorted tuple of (row, col)), `player`
    (row, col), `steps` taken, `dim` (rows, cols), `num_boxes`, `max_steps`, `seed`."""

    def __init__(self, dim=(6, 6), num_boxes=1, max_steps=30):
        self.dim, self.num_boxes, self.max_steps = tuple(dim), num_boxes, max_steps
        self.walls, self.targets, self.boxes, self.player = frozenset(), frozenset(), (), None
        self.steps, self.seed = 0, None

    def reset(self, seed=None):
        if seed is None:  # fresh OS entropy, but remembered so the room can be regenerated
            seed = int(np.random.default_rng().integers(2**62))
        room = generate_room(self.dim, self.num_boxes, seed)
        self.walls, self.targets, self.boxes, self.player = room.walls, room.targets, room.boxes, room.player
        self.steps, self.seed = 0, seed
        return self.render(), {"seed": seed}

    @classmethod
    def from_text(cls, grid_text, max_steps=30):
        """Build an environment from a rendered grid (cells separated by whitespace, or one
        character per cell when a row has no whitespace)."""
        rows = [line.split() if len(line.split()) > 1 else list(line.strip())
                for line in grid_text.strip().splitlines() if line.strip()]
        if not rows or any(len(row) != len(rows[0]) for row in rows):
            raise ValueError("grid rows must be non-empty and of equal length")
        walls, targets, boxes, players = set(), set(), [], []
        for r, row in enumerate(rows):
            for c, cell in enumerate(row):
                if cell not in SYMBOLS:
                    raise ValueError(f"unknown grid symbol {cell!r} at {(r, c)}")
                if cell == "#":
                    walls.add((r, c))
                if cell in "O√S":
                    targets.add((r, c))
                if cell in "X√":
                    boxes.append((r, c))
                if cell in "PS":
                    players.append((r, c))
        if len(players) != 1 or not boxes or len(boxes) != len(targets):
            raise ValueError("a room needs one player, at least one box, and as many targets as boxes")
        env = cls(dim=(len(rows), len(rows[0])), num_boxes=len(boxes), max_steps=max_steps)
        env.walls, env.targets = frozenset(walls), frozenset(targets)
        env.boxes, env.player = tuple(sorted(boxes)), players[0]
        return env

    def copy(self):
        env = SokobanEnv(self.dim, self.num_boxes, self.max_steps)
        env.walls, env.targets, env.boxes, env.player = self.walls, self.targets, self.boxes, self.player
        env.steps, env.seed = self.steps, self.seed
        return env

    def is_solved(self):
        return all(box in self.targets for box in self.boxes)

    def step(self, action):
        action = _action_name(action)
        dr, dc = ACTION_DELTAS[action]
        r, c = self.player
        ahead, beyond = (r + dr, c + dc), (r + 2 * dr, c + 2 * dc)
        on_target_before = sum(box in self.targets for box in self.boxes)
        moved = False
        if self._free(ahead):
            self.player, moved = ahead, True
        elif ahead in self.boxes and self._free(beyond):  # push; never pull, never two boxes
            self.boxes = tuple(sorted(beyond if box == ahead else box for box in self.boxes))
            self.player, moved = ahead, True
        self.steps += 1
        on_target = sum(box in self.targets for box in self.boxes)
        solved = on_target == len(self.boxes)
        reward = STEP_PENALTY
        reward += BOX_ON_REWARD if on_target > on_target_before else 0.0
        reward += BOX_OFF_PENALTY if on_target < on_target_before else 0.0
        reward += SOLVED_REWARD if solved else 0.0
        truncated = not solved and self.steps >= self.max_steps
        info = {"success": solved, "action_is_effective": moved, "boxes_on_target": on_target}
        return self.render(), reward, solved, truncated, info

    def _free(self, cell):
        r, c = cell
        return 0 <= r < self.dim[0] and 0 <= c < self.dim[1] and cell not in self.walls and cell not in self.boxes

    def render(self):
        rows = []
        for r in range(self.dim[0]):
            row = []
            for c in range(self.dim[1]):
                cell, target = (r, c), (r, c) in self.targets
                if cell in self.walls:
                    row.append("#")
                elif cell == self.player:
                    row.append("S" if target else "P")
                elif cell in self.boxes:
                    row.append("√" if target else "X")
                else:
                    row.append("O" if target else "_")
            rows.append(" ".join(row))
        return "\n".join(rows)


def _action_name(action):
    if isinstance(action, (int, np.integer)) and not isinstance(action, bool) and 0 <= action < 4:
        return ACTIONS[action]
    if isinstance(action, str) and action in ACTION_DELTAS:
        return action
    raise ValueError(f"invalid action {action!r}: use one of {ACTIONS} or an index 0-3")


# -----------------------------------------------------------------------------
# room generation (the gym-sokoban / RAGEN algorithm, seeded by numpy)
#
# Cells are flat indices r * cols + c here; the border of a generated room is always wall, so a
# step from a floor cell never leaves the grid.

# The five 3x3 floor masks of gym-sokoban as (row, col) offsets from the walk's position.
FLOOR_MASKS = (
    ((0, -1), (0, 0), (0, 1)),
    ((-1, 0), (0, 0), (1, 0)),
    ((0, -1), (0, 0), (1, 0)),
    ((0, -1), (0, 0), (1, -1), (1, 0)),
    ((0, 0), (0, 1), (1, 0)),
)
WALK_DIRECTIONS = ((1, 0), (0, 1), (-1, 0), (0, -1))


def carve_floor(dim, uniform, p_change_direction=0.35):
    """Random walk of int(1.7 * (rows + cols)) steps from a random cell, changing direction with
    probability p_change_direction and stamping a random 3x3 mask at each step. `uniform` yields
    floats in [0, 1). Returns a bytearray over flat cells, 1 = floor; the border stays wall."""
    rows, cols = dim
    direction = WALK_DIRECTIONS[int(next(uniform) * 4)]
    r, c = 1 + int(next(uniform) * (rows - 1)), 1 + int(next(uniform) * (cols - 1))
    floor = bytearray(rows * cols)
    for _ in range(int(1.7 * (rows + cols))):
        if next(uniform) < p_change_direction:
            direction = WALK_DIRECTIONS[int(next(uniform) * 4)]
        r, c = r + direction[0], c + direction[1]
        r = 1 if r < 1 else rows - 2 if r > rows - 2 else r  # the walk stays off the border
        c = 1 if c < 1 else cols - 2 if c > cols - 2 else c
        for dr, dc in FLOOR_MASKS[int(next(uniform) * 5)]:
            floor[(r + dr) * cols + c + dc] = 1
    for r in range(rows):  # masks centred next to the border spill onto it: wall it again
        floor[r * cols] = floor[r * cols + cols - 1] = 0
    floor[:cols] = floor[-cols:] = bytes(cols)
    return floor


def reverse_play(cols, floor, targets, player, search_depth):
    """gym-sokoban's reverse search as RAGEN runs it: a depth-first search over pull moves
    (the player steps away, dragging a box that was behind it), first visit wins, states at most
    search_depth - 2 moves deep. The kept state maximises (number of switches between pulled
    boxes) * (total Manhattan displacement) with every target left uncovered; ties go to the
    first found. Returns (player, boxes, displacement, depth); box k started on targets[k]."""
    steps = (-cols, cols, -1, 1)  # Up, Down, Left, Right, the order gym-sokoban tries them
    target_set = frozenset(targets)
    explored = set()
    best = [0, player, targets, 0, 0]  # score, player, boxes, displacement, depth

    # gym-sokoban keys states by the room array, where boxes have no identity and a box never
    # pulled reads differently from one pulled back onto a target. Our key is (player, bits):
    # bit 2 * cell is set for a never-pulled box there, bit 2 * cell + 1 for a pulled one.
    def visit(player, boxes, bits, last_pulled, switches, ttl, depth):
        explored.add((player, bits))
        if switches and player not in target_set and target_set.isdisjoint(boxes):
            moved = 0
            for b, t in zip(boxes, targets):
                moved += abs(b // cols - t // cols) + abs(b % cols - t % cols)
            if switches * moved > best[0]:
                best[:] = [switches * moved, player, boxes, moved, depth]
        ttl -= 1  # the children's budget; gym-sokoban checks it on entry, we before the call
        if ttl <= 0:
            return
        for step in steps:
            ahead = player + step
            if not floor[ahead] or ahead in boxes:
                continue  # a blocked move leaves the state as it is: already explored
            behind = player - step
            if behind in boxes:  # pull: the box behind moves onto the player's cell
                k = boxes.index(behind)
                was_pulled = bits >> (2 * behind + 1) & 1
                child_bits = bits - (1 << (2 * behind + was_pulled)) + (1 << (2 * player + 1))
                # the explored set grows while earlier siblings are searched, so test it now
                if (ahead, child_bits) not in explored and len(explored) < 300_000:
                    visit(ahead, boxes[:k] + (player,) + boxes[k + 1:], child_bits, k,
                          switches + (k != last_pulled), ttl, depth + 1)
            elif (ahead, bits) not in explored and len(explored) < 300_000:
                visit(ahead, boxes, bits, last_pulled, switches, ttl, depth + 1)

    if search_depth > 1:
        visit(player, targets, sum(1 << (2 * t) for t in targets), -1, 0, search_depth - 1, 0)
    return tuple(best[1:])


def drift_player(player, floor, boxes, cols, uniform, move_probability):
    """RAGEN's drift: with move_probability, walk 1-3 random steps onto free cells not visited
    yet, continuing after each step with probability 0.5. Returns (player, steps taken)."""
    if next(uniform) > move_probability:
        return player, 0
    visited = [player]
    for taken in range(1, 4):
        options = [player + step for step in (-cols, cols, -1, 1)
                   if floor[player + step] and player + step not in boxes and player + step not in visited]
        if not options:
            return player, taken - 1
        player = options[int(next(uniform) * len(options))]
        visited.append(player)
        if taken == 3 or next(uniform) > 0.5:
            return player, taken
    return player, 3


def generate_room(dim=(6, 6), num_boxes=1, seed=0, search_depth=30, max_moves=30, max_attempts=1000):
    """A SokobanEnv holding the room of `seed`, solvable within `max_moves`. Attempt i reads
    the i-th block of num_draws uniforms from default_rng(seed), so retries are a function of
    (seed, attempt) and no global state is touched; an attempt is rejected when the floor is
    too small, no box could be moved, or the room is not solvable within max_moves."""
    rows, cols = dim
    num_draws = 3 + 3 * int(1.7 * (rows + cols)) + 1 + num_boxes + 7  # walk, placement, drift
    rng = np.random.default_rng(seed)  # built once: constructing a generator costs ~15 us
    for attempt in range(max_attempts):
        # one vectorised draw per attempt: numpy's scalar calls would dominate the run time
        uniform = iter(rng.random(num_draws).tolist())
        floor = carve_floor(dim, uniform)
        free = [cell for cell, is_floor in enumerate(floor) if is_floor]
        if len(free) <= num_boxes + 1:
            continue
        player = free.pop(int(next(uniform) * len(free)))
        targets = tuple(free.pop(int(next(uniform) * len(free))) for _ in range(num_boxes))
        player, boxes, moved, depth = reverse_play(cols, floor, targets, player, search_depth)
        if moved == 0:
            continue
        player, drift = drift_player(player, floor, boxes, cols, uniform, 0.8 if moved == 1 else 0.5)
        env = SokobanEnv(dim, num_boxes)
        env.walls = frozenset(divmod(i, cols) for i, is_floor in enumerate(floor) if not is_floor)
        env.targets = frozenset(divmod(t, cols) for t in targets)
        env.boxes = tuple(sorted(divmod(b, cols) for b in boxes))
        env.player, env.seed = divmod(player, cols), seed
        # The reverse moves replayed forward solve the room in depth + drift moves; only longer
        # rooms need the solver to decide.
        if depth + drift <= max_moves or solve(env, max_moves) is not None:
            return env
    raise RuntimeError(f"no room for seed {seed} after {max_attempts} attempts")


# -----------------------------------------------------------------------------
# solver


def _board(env):
    """The room as flat indices on a grid padded with one ring of wall, so neighbours never
    leave it, plus each cell's push distance: the fewest pushes that bring a lone box from there
    to some target (None where a box is dead)."""
    width = env.dim[1] + 2
    size = (env.dim[0] + 2) * width
    flat = lambda cell: (cell[0] + 1) * width + cell[1] + 1  # noqa: E731
    open_cell, walls = bytearray(size), env.walls
    for r in range(env.dim[0]):
        row_start = (r + 1) * width + 1
        for c in range(env.dim[1]):
            if (r, c) not in walls:
                open_cell[row_start + c] = 1
    targets = frozenset(map(flat, env.targets))
    push_distance = [None] * size
    frontier = list(targets)
    for t in frontier:
        push_distance[t] = 0
    steps = (-width, width, -1, 1)
    for cell in frontier:  # breadth-first over reverse pushes; the list grows while we walk it
        for step in steps:
            before, player = cell - step, cell - 2 * step
            if open_cell[before] and open_cell[player] and push_distance[before] is None:
                push_distance[before] = push_distance[cell] + 1
                frontier.append(before)
    return width, open_cell, targets, push_distance, flat(env.player), tuple(sorted(map(flat, env.boxes)))


def _search(env, max_depth, all_first_moves):
    """A* over (player, sorted boxes) with h = (sum of push distances) + (steps the player must
    walk before it can push: Manhattan distance to the nearest box, minus 1). h is consistent: a
    walk changes the second term by at most 1, a push moves one box one cell and starts next to
    a box, where the second term is 0. So every expanded state has its exact depth, and the
    search returns a shortest solution, as breadth-first search would, exploring far less.
    Popping in (f, g) order expands every parent on a shortest path before its child, so OR-ing
    first-move bits over parents gives every optimal first move. Returns (length, first-move
    bitmask, one solution) or None when there is none within max_depth."""
    width, open_cell, _, push_distance, player, boxes = _board(env)
    if any(push_distance[b] is None for b in boxes):
        return None
    pushes = sum(push_distance[b] for b in boxes)
    if pushes == 0:
        return 0, 0, []
    h = pushes + _walk_bound(player, boxes, width)
    if h > max_depth:
        return None
    start = (player, boxes)
    node = {start: [0, 0, None, None]}  # state -> [depth, first-move bits, parent, action]
    # (f, g) ascending when every first move is wanted; (f, -g) dives faster for one solution
    sign = 1 if all_first_moves else -1
    queue = [(h, 0, 0, 0, start, pushes)]
    counter = 1
    while queue:
        _, _, _, g, state, pushes = heappop(queue)
        info = node[state]
        if info[0] != g:
            continue  # stale entry: the state was reached more cheaply since
        if pushes == 0:  # solved; every parent of every goal at this depth is expanded by now
            return _solution(node, state, push_distance)
        for a, child, child_pushes, h in _moves(state, pushes, width, open_cell, push_distance):
            child_mask = info[1] if g else 1 << a
            old = node.get(child)
            if old is not None and old[0] <= g + 1:
                if old[0] == g + 1:
                    old[1] |= child_mask
                continue
            if g + 1 + h > max_depth:
                continue
            node[child] = [g + 1, child_mask, state, a]
            heappush(queue, (g + 1 + h, sign * (g + 1), counter, g + 1, child, child_pushes))
            counter += 1
    return None


def _moves(state, pushes, width, open_cell, push_distance):
    """Each legal move from `state` that leaves no box dead: (action index, child state, child's
    sum of push distances, child's h)."""
    player, boxes = state
    for a, step in enumerate((-width, width, -1, 1)):
        ahead = player + step
        if not open_cell[ahead]:
            continue
        if ahead in boxes:
            beyond = ahead + step
            if not open_cell[beyond] or beyond in boxes or push_distance[beyond] is None:
                continue
            moved = (beyond if b == ahead else b for b in boxes)
            child_boxes = (beyond,) if len(boxes) == 1 else tuple(sorted(moved))
            child_pushes = pushes - push_distance[ahead] + push_distance[beyond]
            # the player now stands next to the pushed box
            yield a, (ahead, child_boxes), child_pushes, child_pushes
        else:
            yield a, (ahead, boxes), pushes, pushes + _walk_bound(ahead, boxes, width)


def _walk_bound(player, boxes, width):
    """Steps the player must walk before it can push: Manhattan distance to the nearest box, minus 1."""
    pr, pc = divmod(player, width)
    reach = width * width
    for b in boxes:
        d = abs(pr - b // width) + abs(pc - b % width)
        reach = d if d < reach else reach
    return reach - 1


def _solution(node, goal, push_distance):
    """(length, first-move bits OR-ed over every goal state at the goal's depth, the path to `goal`)
    from _search's table: state -> [depth, first-move bits, parent, action]."""
    length = node[goal][0]
    mask = 0
    for state, (depth, bits, _, _) in node.items():
        if depth == length and sum(push_distance[b] for b in state[1]) == 0:
            mask |= bits
    path, state = [], goal
    while node[state][2] is not None:
        _, _, state, a = node[state]
        path.append(ACTIONS[a])
    return length, mask, path[::-1]


def solve(env, max_depth=30):
    """One shortest solution (a list of canonical actions) from the current state, [] when the
    room is already solved, None when no solution is at most max_depth moves long."""
    result = _search(env, max_depth, all_first_moves=False)
    return None if result is None else result[2]


def optimal_actions(env, max_depth=30):
    """Every first move of some shortest solution (an empty set when the room is solved or has
    no solution within max_depth). Several moves are often optimal: all of them are correct."""
    result = _search(env, max_depth, all_first_moves=True)
    return set() if result is None else {ACTIONS[a] for a in range(4) if result[1] >> a & 1}


# -----------------------------------------------------------------------------
# answer parsing

ANSWER_OPEN = re.compile(r"<answer>", re.IGNORECASE)
ANSWER_CLOSE = re.compile(r"</answer>", re.IGNORECASE)
MAX_ANSWER_CHARS = 64  # a longer tag cannot be one action name; do not normalise megabytes


def _normalise(word):
    # casefold for case-insensitive matching; emoji may come with or without the presentation
    # selector U+FE0F, so it is ignored
    return word.strip().replace("\ufe0f", "").casefold()


def answer_tag(reply, max_chars=MAX_ANSWER_CHARS):
    """The text between the reply's one <answer> and the one </answer> after it (tags
    case-insensitive), or None: no tag, several tags (a reply cannot hedge), or content longer
    than max_chars. Linear time, never raises."""
    if not isinstance(reply, str):
        return None
    opens = [m.end() for m in ANSWER_OPEN.finditer(reply)]
    closes = [m.start() for m in ANSWER_CLOSE.finditer(reply)]
    if len(opens) != 1 or len(closes) != 1 or closes[0] < opens[0]:
        return None
    content = reply[opens[0]:closes[0]]
    return None if max_chars is not None and len(content) > max_chars else content


def parse_answer(reply, names):
    """The canonical direction named in the reply's answer tag, or None. `names` maps each
    canonical direction to the word the environment accepts. The reply must hold exactly one
    <answer> and one </answer> after it (tags case-insensitive): several answer tags are None,
    not "the last one", so a reply cannot hedge. The tag's content, stripped and compared
    case-insensitively, must equal exactly one accepted word; anything else (several actions,
    an unknown word, an empty tag) is None. Linear time, never raises."""
    try:
        content = answer_tag(reply)
        if content is None:
            return None
        content = _normalise(content)
        matches = [action for action, word in names.items() if _normalise(word) == content]
        return matches[0] if content and len(matches) == 1 and matches[0] in ACTION_DELTAS else None
    except Exception:  # a malformed `names` must not crash an evaluation loop either
        return None


# -----------------------------------------------------------------------------
# symmetries

# The dihedral group as signed permutation matrices acting on (row, col) and on move vectors.
SYMMETRY_MATRICES = {
    "identity": ((1, 0), (0, 1)),
    "rot90": ((0, 1), (-1, 0)),  # clockwise: Up becomes Right
    "rot180": ((-1, 0), (0, -1)),
    "rot270": ((0, -1), (1, 0)),
    "flip_lr": ((1, 0), (0, -1)),
    "flip_ud": ((-1, 0), (0, 1)),
    "transpose": ((0, 1), (1, 0)),
    "anti_transpose": ((0, -1), (-1, 0)),
}


def symmetries(grid_text):
    """The 8 rotations and reflections of a rendered grid, identity first, each with the map
    canonical action -> transformed action, so a solution of the grid maps move by move to a
    solution of the transformed grid. Non-square grids also get all 8: the four that swap the
    axes come out with transposed dimensions (cols x rows), still a valid room."""
    rows = [line.split() for line in grid_text.strip().splitlines() if line.strip()]
    n_rows, n_cols = len(rows), len(rows[0])
    out = []
    for (a, b), (c, d) in SYMMETRY_MATRICES.values():
        # offsets keep coordinates non-negative: a -1 coefficient on an axis adds its size - 1
        off_r = (n_rows - 1 if a < 0 else 0) + (n_cols - 1 if b < 0 else 0)
        off_c = (n_rows - 1 if c < 0 else 0) + (n_cols - 1 if d < 0 else 0)
        new_rows, new_cols = (n_rows, n_cols) if a else (n_cols, n_rows)
        grid = [[None] * new_cols for _ in range(new_rows)]
        for r, row in enumerate(rows):
            for col, cell in enumerate(row):
                grid[a * r + b * col + off_r][c * r + d * col + off_c] = cell
        by_delta = {delta: name for name, delta in ACTION_DELTAS.items()}
        action_map = {name: by_delta[(a * dr + b * dc, c * dr + d * dc)] for name, (dr, dc) in ACTION_DELTAS.items()}
        out.append(("\n".join(" ".join(row) for row in grid), action_map))
    return out


def canonical_key(grid_text):
    """The same string for a grid and all its rotations and reflections (the smallest of the
    8), used to keep evaluation rooms, in any orientation, out of the training data."""
    return min(text for text, _ in symmetries(grid_text))


# -----------------------------------------------------------------------------

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.error = lambda message: parser.exit(2, f"env_sokoban.py: error: {message}\n")  # one line, no usage block
    parser.add_argument("--dim", type=int, nargs=2, default=(6, 6), help="room rows and columns")
    parser.add_argument("--boxes", type=int, default=1, help="number of boxes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first room")
    parser.add_argument("--rooms", type=int, default=3, help="how many rooms to print")
    args = parser.parse_args()
    # a room smaller than 4x4 has no floor inside its walls
    if min(args.dim) < 4 or args.boxes < 1 or args.rooms < 1 or args.seed < 0:
        parser.error("--dim needs at least 4 4, --boxes and --rooms at least 1, --seed at least 0")
    for seed in range(args.seed, args.seed + args.rooms):
        env = SokobanEnv(dim=tuple(args.dim), num_boxes=args.boxes)
        try:
            obs, _ = env.reset(seed=seed)
        except RuntimeError as e:  # e.g. more boxes than the room has floor for
            parser.exit(2, f"env_sokoban.py: error: {e} (--dim {args.dim[0]} {args.dim[1]} --boxes {args.boxes})\n")
        print(f"seed {seed}\n{obs}\nsolution: {solve(env)}\noptimal first moves: {sorted(optimal_actions(env))}\n")
