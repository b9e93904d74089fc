"""How often the relative-CoT model reads the four cells around the player right, on the first state
of the first N rooms of each test set (greedy, one reply a room). Run from the repository root:
python results/smollm2/sokoban-cotrelative/probe_around.py MODEL_DIR DATA_DIR [N]"""
import re
import sys

sys.path.insert(0, ".")
import common  # noqa: E402
import env_sokoban as sok  # noqa: E402
import eval as evaluation  # noqa: E402
import make_data  # noqa: E402

DELTAS = {a.lower(): d for a, d in sok.ACTION_DELTAS.items()}  # the trace's order: up, down, left, right
AROUND = re.compile(r"around: up ([a-z ]+), down ([a-z ]+), left ([a-z ]+), right ([a-z ]+)\.")


def truth(grid):
    """The four cells around the player in the words the training traces use (make_data._content)."""
    env = sok.SokobanEnv.from_text(grid)
    return [make_data._content(env, (env.player[0] + dr, env.player[1] + dc)) for dr, dc in DELTAS.values()]


model_dir, data_dir, n = sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 50
tokenizer, model = common.load_tokenizer(model_dir), common.load_model(model_dir, "bf16")
for variant, records in evaluation.load_eval_sets(data_dir, "sokoban", ["id", "large", "twoboxes"], n).items():
    out = evaluation.sample(model, evaluation.prompt_ids(tokenizer, [r["messages"][0]["content"] for r in records]),
                            max_new_tokens=128, temperature=0, stop_strings=["</answer>"], tokenizer=tokenizer)
    cells = whole = parsed = 0
    per_side = dict.fromkeys(DELTAS, 0)
    for record, reply in zip(records, out.texts):
        m = AROUND.search(reply)
        if not m:
            continue
        parsed += 1
        right = [a == b for a, b in zip(m.groups(), truth(record["meta"]["grid"]))]
        cells, whole = cells + sum(right), whole + all(right)
        for side, ok in zip(DELTAS, right):
            per_side[side] += ok
    print(f"{variant}: {len(records)} rooms, {parsed} replies with an 'around' line; cells right "
          f"{cells / max(1, 4 * parsed):.2f}, all four right {whole / max(1, parsed):.2f}; per side "
          + ", ".join(f"{s} {k / max(1, parsed):.2f}" for s, k in per_side.items()))
