"""Evaluation: the study's test sets played with rl.py's KV-cached sampler, and the paper's Table 1.

    python eval.py --model runs/sok-ans/final --task sokoban --data data              # 8 variants x 100 rooms
    python eval.py --model runs/gp-ans/final --task gpoints --data data --out gp.json   # 8 variants x 500 hands
    python eval.py --model runs/sok-ans/final --task sokoban --limit 20 --temperature 0  # quick and greedy
    python eval.py --sweep runs/sok-ans --task sokoban --out sweep.json                  # best step_N (mean w/o Fake)
    python eval.py --report results/*.json --task sokoban --plot table1.png             # one table from --out files
    python eval.py --distill --model TEACHER --task sokoban --data data --samples 16 \
        --out data/sokoban/train_distilled_cot.jsonl                                   # CoT targets from a teacher

Sokoban is multi-turn as in the paper: each turn the model sees only the current state (rendered
by make_data.sokoban_prompt in the style it was trained on) and answers one action; an answer the
environment does not accept moves nothing but uses a turn; 30 turns. `valid` is the per-episode
share of accepted answers, averaged over episodes (an episode without one counts 0).

The sampler (`sample`, `KVCache`, ...) and the rewards (`reward`, `is_correct`) live in rl.py, in
its section "Rollouts: the KV-cache sampler"; they are re-exported here, so `eval.sample` works.
"""
import argparse
import json
import math
import os
import sys

import torch
from tqdm import tqdm

import env_gpoints
import env_sokoban
import make_data
import sft
from rl import (KVCache, Samples, cut_at_stop, is_correct, reward, sample, sample_tokens,  # noqa: F401  (re-exported)
                shared_prefix_len)
from sft import (UserError, check_out_dir, encode_prompts, load_model, load_tokenizer, read_jsonl, refuse,  # noqa: F401
                 resolve_model, trained_style, write_json)

# -----------------------------------------------------------------------------
# Evaluator: multi-turn Sokoban and one-shot General Points on the study's test sets

SOKOBAN_VARIANTS = tuple(env_sokoban.VARIANTS)  # id alpha num rand large twoboxes complex fake
GPOINTS_VARIANTS = tuple(env_gpoints.VARIANTS)  # id all5 all7 all12 regular large five fake
STOP_STRINGS = {"sokoban": ("</answer>",), "gpoints": (), "base": ("</answer>",)}


def prompt_ids(tokenizer, contents):
    """Token ids of each user turn under the model's chat template, ready for the reply (one
    batched tokenizer call for all of them)."""
    return encode_prompts(tokenizer, [[{"role": "user", "content": c}] for c in contents])


def wilson_interval(successes, n, z=1.96):
    """95% Wilson score interval of a binomial proportion: sane at 0 and 1, unlike p +- 2 sigma."""
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def load_eval_sets(data_dir, task, variants, limit=None):
    """{variant: records} from DATA/TASK/eval_VARIANT.jsonl, the first `limit` records of each."""
    sets = {}
    for variant in variants:
        records = read_jsonl(os.path.join(data_dir, task, f"eval_{variant}.jsonl"),
                             check=lambda record: sft.check_prompt_record(record, task))
        sets[variant] = records[:limit] if limit else records
    return sets


class Episode:
    """One multi-turn Sokoban game started from an evaluation record."""

    def __init__(self, variant, record, max_turns):
        meta = record["meta"]
        self.variant, self.names, self.accepted = variant, meta["names"], meta["accepted"]
        self.style = meta.get("style", "full")
        self.env = env_sokoban.SokobanEnv.from_text(meta["grid"], max_steps=max_turns)
        self.start = meta["grid"]
        self.turns = self.valid = self.effective = 0
        self.done, self.success, self.transcript = False, False, []

    def prompt(self):
        return make_data.sokoban_prompt(self.env.render(), self.names, self.style)

    def play(self, reply):
        """Apply one reply: an accepted word moves the player, anything else wastes the turn."""
        action = env_sokoban.parse_answer(reply, self.accepted)
        self.turns += 1
        self.transcript.append(reply)
        if action is not None:
            self.valid += 1
            _, _, solved, _, info = self.env.step(action)
            self.effective += info["action_is_effective"]
            self.success = solved
        self.done = self.success or self.turns >= self.env.max_steps


def model_replies(model, tokenizer, *, temperature=0.5, top_p=1.0, max_new_tokens=256, batch_rows=None,
                  stop_strings=()):
    """A policy for the evaluators: (user prompts, seed) -> one reply each, from `model` through
    the chat template and the batched sampler."""
    def replies(contents, seed):
        prompts = prompt_ids(tokenizer, contents)
        return sample(model, prompts, temperature=temperature, top_p=top_p, seed=seed, max_new_tokens=max_new_tokens,
                      stop_strings=stop_strings, tokenizer=tokenizer, max_batch_rows=batch_rows).texts
    return replies


def evaluate_sokoban(replies, sets, *, seed=0, max_turns=30, show=2, progress=True):
    """The paper's multi-turn protocol. `replies(prompts, seed)` is the policy (model_replies, or
    a scripted one in the tests). Every episode of every variant advances together, one batched
    call per turn; each turn the model sees only the current state's prompt and answers one
    action. Returns {variant: metrics}."""
    episodes = [Episode(v, r, max_turns) for v, records in sets.items() for r in records]
    bar = tqdm(total=max_turns, desc="sokoban turns", disable=not progress, leave=False)
    for turn in range(max_turns):
        active = [e for e in episodes if not e.done]
        if not active:
            break
        for episode, reply in zip(active, replies([e.prompt() for e in active], seed * 1000 + turn)):
            episode.play(reply)
        bar.update(1)
        bar.set_postfix(active=len(active))
    bar.close()
    results = {}
    for variant in sets:
        mine = [e for e in episodes if e.variant == variant]
        n, wins = len(mine), sum(e.success for e in mine)
        results[variant] = dict(
            n=n, success=wins / max(n, 1), success_ci=wilson_interval(wins, n),
            # per-episode shares, then their mean: an episode without one valid turn counts 0
            valid=sum(e.valid / e.turns for e in mine) / max(n, 1),
            effective=sum(e.effective / e.turns for e in mine) / max(n, 1),
            turns=sum(e.turns for e in mine) / max(n, 1),
            examples=[dict(grid=e.start, success=e.success, replies=e.transcript[:5]) for e in mine[:show]])
    return results


def evaluate_gpoints(replies, sets, *, seed=0, show=2, progress=True):
    """One reply per problem, scored by env_gpoints.score: success = +5, valid = reward >= -1.
    values_read: the reply's "number" list holds the hand's values under the scored mapping (as a
    multiset), i.e. the model applied the J/Q/K rule, whether or not its arithmetic then works."""
    items = [(v, r) for v, records in sets.items() for r in records]
    texts = replies([r["messages"][0]["content"] for _, r in items], seed)
    scores = [reward(text, r["meta"]) for (_, r), text in zip(items, texts)]
    results = {}
    for variant in sets:
        mine = [(r, text, s) for (v, r), text, s in zip(items, texts, scores) if v == variant]
        n, wins = len(mine), sum(s == env_gpoints.REWARD_CORRECT for _, _, s in mine)
        results[variant] = dict(
            n=n, success=wins / max(n, 1), success_ci=wilson_interval(wins, n),
            valid=sum(s >= env_gpoints.REWARD_WRONG_RESULT for _, _, s in mine) / max(n, 1),
            values_read=sum(sorted(env_gpoints.parse_numbers(text) or []) == sorted(r["meta"]["values"])
                            for r, text, _ in mine) / max(n, 1),
            examples=[dict(cards=r["meta"]["cards"], score=s, reply=text) for r, text, s in mine[:show]])
    return results


def evaluate_base(replies, sets, *, seed=0, show=2):
    """The tiny base model's skills (make_data.py --tasks base), one column per kind (copy,
    lookup-key, lookup-value, arithmetic) of the held-out records in sets["base"]: success = the
    answer tag's words equal the reference's, valid = the reply has exactly one answer tag."""
    records = sets["base"]
    texts = replies([r["messages"][0]["content"] for r in records], seed)
    results = {}
    for record, text in zip(records, texts):
        m = results.setdefault(record["meta"]["kind"], dict(n=0, success=0, valid=0, replies=[]))
        answer, want = (env_sokoban.answer_tag(t, max_chars=None) for t in (text, record["messages"][1]["content"]))
        m["n"] += 1
        m["valid"] += answer is not None
        m["success"] += answer is not None and answer.split() == want.split()
        if len(m["replies"]) < show:
            m["replies"].append(dict(prompt=record["messages"][0]["content"], reply=text))
    for m in results.values():
        m["success_ci"] = wilson_interval(m["success"], m["n"])
        m["success"], m["valid"] = m["success"] / m["n"], m["valid"] / m["n"]
    return results


ENV_EVALUATORS = {"sokoban": evaluate_sokoban, "gpoints": evaluate_gpoints}  # what rl.py --eval-every runs too


def evaluate_model(args, model_path, sets):
    model = load_model(model_path, args.dtype, args.device)
    tokenizer = load_tokenizer(model_path)
    style = trained_style(model_path)
    data_style = next(iter(sets.values()))[0]["meta"].get("style") if sets and next(iter(sets.values())) else None
    if style and data_style and style != data_style:
        print(f"warning: {model_path} was trained on {style!r} prompts but {args.data} holds {data_style!r} ones")
    replies = model_replies(model, tokenizer, temperature=args.temperature, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens, batch_rows=args.batch_rows,
                            stop_strings=STOP_STRINGS[args.task])
    if args.task == "sokoban":
        return evaluate_sokoban(replies, sets, seed=args.seed, max_turns=args.max_turns, show=args.show)
    if args.task == "base":
        return evaluate_base(replies, sets, seed=args.seed, show=args.show)
    return evaluate_gpoints(replies, sets, seed=args.seed, show=args.show)


def average_except_fake(results):
    """The paper's checkpoint-selection score: mean success over every column but Fake."""
    scores = [m["success"] for v, m in results.items() if v != "fake"]
    return sum(scores) / max(len(scores), 1)

# -----------------------------------------------------------------------------
# Reports: Table 1 as Markdown and as a figure, from the JSON files of several runs


def format_table(results, title=""):
    """A Markdown table in the paper's layout: variants as columns, success with its 95% Wilson
    interval, then validity."""
    variants = list(results)
    lines = [f"| {title} | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
    lines.append("| success | " + " | ".join(
        f"{m['success']:.2f} [{m['success_ci'][0]:.2f}, {m['success_ci'][1]:.2f}]" for m in results.values()) + " |")
    lines.append("| valid | " + " | ".join(f"{m['valid']:.2f}" for m in results.values()) + " |")
    if all("values_read" in m for m in results.values()):
        lines.append("| values read | " + " | ".join(f"{m['values_read']:.2f}" for m in results.values()) + " |")
    return "\n".join(lines)


# The paper's Table 1 (Qwen2.5-7B), success rates, for side-by-side reports.
PAPER_TABLE1 = {
    "sokoban": {"Ans.": (.98, 0, 0, 0, .64, .35, .19, .93), "Diver.+Ans.": (.91, .92, .89, .84, .53, .33, .09, 0),
                "CoT": (1, .73, .80, .22, .53, .57, .28, .03), "Diver.+CoT": (1, .97, .98, 1, .74, .58, .40, 0),
                "RL (warm)": (.90, .76, .69, .55, .34, .36, .10, 0)},
    "gpoints": {"Ans.": (.61, .23, .25, .07, .06, .02, .00, .01), "Diver.+Ans.": (.78, .71, .70, .09, .07, .03, .01, 0),
                "CoT": (.95, .90, .90, .85, .86, .80, .26, 0), "Diver.+CoT": (.96, .93, .93, .90, .89, .84, .29, 0),
                "RL (warm)": (.93, .80, .87, .82, .80, .69, .22, .05)},
}


def format_report(task, rows):
    """One Markdown table from several result files: a row per method (success, and the paper's
    success below it where the method is one of Table 1's), variants as columns. General Points
    results that hold `values_read` get a second table of it."""
    variants = SOKOBAN_VARIANTS if task == "sokoban" else GPOINTS_VARIANTS
    lines = ["| method | " + " | ".join(variants) + " | mean w/o Fake |", "|---|" + "---|" * (len(variants) + 1)]
    for label, results in rows:
        cells = [f"{results[v]['success']:.2f}" if v in results else "-" for v in variants]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {average_except_fake(results):.2f} |")
        paper = PAPER_TABLE1[task].get(label)
        if paper:
            mean = sum(paper[:-1]) / (len(paper) - 1)
            lines.append("| *paper* | " + " | ".join(f"*{x:.2f}*" for x in paper) + f" | *{mean:.2f}* |")
    if all("values_read" in m for _, results in rows for m in results.values()):
        lines += ["",
                  "values read (the reply's \"number\" list holds the hand's values under the scored J/Q/K rule):", "",
                  "| method | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
        for label, results in rows:
            cells = [f"{results[v]['values_read']:.2f}" if v in results else "-" for v in variants]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_report(task, rows, path):
    """Table 1 as a figure: one panel per method, success per variant, ours beside the paper's
    (where the method is one of Table 1's rows). Needs matplotlib (an optional extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install matplotlib") from None
    variants = SOKOBAN_VARIANTS if task == "sokoban" else GPOINTS_VARIANTS
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 1.9 * len(rows) + 0.6), sharex=True, squeeze=False)
    x = range(len(variants))
    for ax, (label, results) in zip(axes[:, 0], rows):
        ours = [results[v]["success"] if v in results else 0.0 for v in variants]
        paper = PAPER_TABLE1[task].get(label)
        width = 0.4 if paper else 0.6
        ax.bar([i - (width / 2 if paper else 0) for i in x], ours, width, label="this run", color="tab:blue")
        if paper:
            ax.bar([i + width / 2 for i in x], paper, width, label="paper", color="lightgray", edgecolor="gray",
                   hatch="//")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("success")
        ax.set_title(label, loc="left", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(loc="upper right", fontsize=8, ncol=2)
    axes[-1, 0].set_xticks(list(x), variants)
    fig.tight_layout()
    make_data.write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120), binary=True)
    plt.close(fig)


def read_report_rows(task, paths):
    """(label, results) of every --out or --sweep file (a sweep's best checkpoint) for the --report
    table. A file of another benchmark is refused; files of the base model's skills (task 'base',
    e.g. a study's base.json) are not rows of the table: they are skipped, with a note naming them."""
    rows, skipped = [], []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: not an eval.py --out file ({e})") from None
        if not isinstance(saved, dict) or "task" not in saved or not ("variants" in saved or "curve" in saved):
            raise UserError(f"{path}: not an eval.py --out file (no task and variants)")
        if saved["task"] == "base":
            skipped.append(path)
            continue
        if saved["task"] != task:
            raise UserError(f"{path} holds {saved['task']} results, not {task} ones: pass --task {saved['task']} or "
                            "other files")
        if "curve" in saved:  # an --sweep file: its best checkpoint is the row
            results = next(c["results"] for c in saved["curve"] if c["path"] == saved["best"])
        else:
            results = saved["variants"]
        rows.append((saved.get("label") or os.path.splitext(os.path.basename(path))[0], results))
    if skipped:
        print(f"eval.py: note: skipped {', '.join(skipped)}: the base model's skills (task 'base'), not a row of the "
              "table", file=sys.stderr)
    if not rows:
        raise UserError(f"no {task} results among the --report files")
    return rows

# -----------------------------------------------------------------------------
# Teacher-distilled CoT: the paper's rejection sampling from a (RL-tuned) teacher


def distill(model, tokenizer, records, *, samples=16, temperature=1.0, max_new_tokens=1024, seed=0,
            batch_prompts=64, progress=True):
    """For every SFT/RL record, sample `samples` replies and keep the first correct one (Sokoban:
    well formed and an optimal move; GP: +5). Returns (records in make_data.py's SFT format, yield)."""
    kept = []
    task = records[0]["meta"]["task"] if records else "sokoban"
    for start in tqdm(range(0, len(records), batch_prompts), desc="distill", disable=not progress):
        chunk = records[start:start + batch_prompts]
        prompts = prompt_ids(tokenizer, [r["messages"][0]["content"] for r in chunk])
        out = sample(model, prompts, n=samples, temperature=temperature, max_new_tokens=max_new_tokens,
                     stop_strings=STOP_STRINGS[task], tokenizer=tokenizer, seed=seed + start)
        for i, record in enumerate(chunk):
            replies = out.texts[i * samples:(i + 1) * samples]
            good = next((r for r in replies if is_correct(r, record["meta"])), None)
            if good is not None:
                meta = dict(record["meta"], distilled=True)
                kept.append(dict(messages=[record["messages"][0], dict(role="assistant", content=good.strip())],
                                 meta=meta))
    return kept, len(kept) / max(len(records), 1)

# -----------------------------------------------------------------------------
# command line: one function per mode


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model",
                        help="a model directory (sft.py / rl.py output or a Hugging Face chat model), a hub id, or "
                        "'smollm2'")
    parser.add_argument("--task", choices=("sokoban", "gpoints", "base"), required=True,
                        help="which benchmark ('base': the tiny base model's held-out copy/lookup/arithmetic examples)")
    parser.add_argument("--data", default="data", help="make_data.py's output directory (eval sets in DATA/TASK/)")
    parser.add_argument("--out", default=None,
                        help="JSON file for the raw numbers and sample replies (distill: the SFT file)")
    parser.add_argument("--variants", nargs="+", default=None, help="test sets to run (default: all eight)")
    parser.add_argument("--limit", type=int, default=None, help="first N records of each test set, for quick runs")
    group = parser.add_argument_group("decoding")
    group.add_argument("--temperature", type=float, default=0.5,
                       help="sampling temperature (the paper's 0.5); 0 is greedy")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    group.add_argument("--seed", type=int, default=0, help="sampling seed")
    group.add_argument("--max-new-tokens", type=int, default=None,
                       help="reply cap (default 256 Sokoban, 512 GP, 1024 distill)")
    group.add_argument("--max-turns", type=int, default=30, help="Sokoban turns per episode")
    group.add_argument("--batch-rows", type=int, default=None, help="cap on rows decoded at once (GPU memory)")
    group.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                       help="weights dtype (default bf16 on CUDA, fp32 on CPU)")
    group.add_argument("--show", type=int, default=2, help="episodes per variant whose replies go into --out")
    group.add_argument("--label", default=None,
                       help="the method's name in --out and in --report tables (e.g. 'Diver.+CoT')")
    parser.add_argument("--report", nargs="+", metavar="JSON",
                        help="print one table from several --out files (no model needed)")
    parser.add_argument("--plot", metavar="PNG",
                        help="with --report: also draw the table as a figure, ours beside the paper's (needs "
                        "matplotlib)")
    group = parser.add_argument_group("checkpoint selection and distillation")
    group.add_argument("--sweep", metavar="RUN_DIR",
                       help="evaluate every RUN_DIR/step_N and report the best (mean success without Fake)")
    group.add_argument("--distill", action="store_true", help="rejection-sample CoT targets from --model (a teacher)")
    group.add_argument("--distill-from", default="train_ans", help="which DATA/TASK/NAME.jsonl prompts to distill")
    group.add_argument("--samples", type=int, default=16,
                       help="distill: replies sampled per prompt (paper: 16 Sokoban, 3 GP)")
    return parser


def check_args(args):
    """Reject values that make no sense and an --out that cannot be written, before any model is loaded."""
    if args.report:
        refuse([(args.model or args.sweep or args.distill,
                 "--report reads result files only: leave out --model, --sweep and --distill")])
        if args.plot:
            check_out_dir(os.path.dirname(os.path.abspath(args.plot)), f"--plot {args.plot}")
        return
    variants = SOKOBAN_VARIANTS if args.task == "sokoban" else GPOINTS_VARIANTS if args.task == "gpoints" else ()
    positive = [("--limit", args.limit), ("--max-new-tokens", args.max_new_tokens), ("--batch-rows", args.batch_rows)]
    refuse([
        (args.sweep and (args.model or args.distill),
         "--sweep evaluates RUN_DIR's step_N checkpoints: leave out --model and --distill"),
        (not args.sweep and not args.model, "--model is required (or --sweep RUN_DIR, or --report FILES)"),
        (args.distill and args.task == "base",
         "--distill makes Sokoban or General Points targets: --task sokoban or gpoints"),
        (args.sweep and not os.path.isdir(args.sweep), f"--sweep: run directory not found: {args.sweep}"),
        *[(value is not None and value < 1, f"{flag} must be >= 1 (got {value})") for flag, value in positive],
        (min(args.max_turns, args.samples) < 1, "--max-turns and --samples must be >= 1"),
        (args.show < 0, "--show must be >= 0"),
        (args.temperature < 0, f"--temperature must be >= 0, 0 being greedy (got {args.temperature})"),
        (not 0 < args.top_p <= 1, f"--top-p must be in (0, 1] (got {args.top_p})"),
        (args.variants and args.task == "base", "--variants: the base task has one set (base/eval.jsonl)"),
        (args.variants and not set(args.variants) <= set(variants),
         f"--variants: unknown {', '.join(sorted(set(args.variants or ()) - set(variants)))}; {args.task} has "
         f"{' '.join(variants)}"),
        (args.out and os.path.isdir(args.out), f"--out {args.out} is a directory: name a file"),
    ])
    if args.out:
        check_out_dir(os.path.dirname(os.path.abspath(args.out)), f"--out {args.out}")


def main(argv=None):
    args = get_parser().parse_args(argv)
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    check_args(args)
    if args.report:
        return run_report(args)
    if args.model:
        args.model = resolve_model(args.model)
    if args.distill:
        return run_distill(args)
    args.max_new_tokens = args.max_new_tokens or (256 if args.task == "sokoban" else 512)
    if args.task == "base":
        sets = {"base": read_jsonl(os.path.join(args.data, "base", "eval.jsonl"))[:args.limit]}
    else:
        variants = args.variants or (SOKOBAN_VARIANTS if args.task == "sokoban" else GPOINTS_VARIANTS)
        sets = load_eval_sets(args.data, args.task, variants, args.limit)
    return run_sweep(args, sets) if args.sweep else run_evaluation(args, sets)


def run_evaluation(args, sets):
    """Plain evaluation (--task base included): the table, and the numbers in --out."""
    results = evaluate_model(args, args.model, sets)
    print(format_table(results, args.task))
    if args.task != "base":  # the base's columns are skills, and there is no Fake among them
        print(f"mean success without Fake: {average_except_fake(results):.3f}")
    if args.out:
        write_json(args.out, dict(task=args.task, model=args.model, label=args.label,
                                  average_except_fake=average_except_fake(results), variants=results, args=vars(args)))


def run_sweep(args, sets):
    """--sweep RUN_DIR: every RUN_DIR/step_N evaluated; the best by mean success without Fake (the
    paper's checkpoint selection; the earlier step on a tie)."""
    steps = sweep_checkpoints(args.sweep)
    if not steps:
        raise UserError(f"no step_N checkpoints in {args.sweep}")
    curve = []
    for step, path in steps:
        results = evaluate_model(args, path, sets)
        curve.append(dict(step=step, path=path, average=average_except_fake(results), results=results))
        print(f"step {step}: mean success without Fake {curve[-1]['average']:.3f}")
        best = max(curve, key=lambda c: (c["average"], -c["step"]))
        if args.out:  # after every checkpoint, so that a stopped sweep keeps what it measured
            write_json(args.out, dict(task=args.task, run=args.sweep, label=args.label, best=best["path"],
                                      best_step=best["step"], curve=curve, args=vars(args)))
    print(f"\nbest: {best['path']} (mean success without Fake {best['average']:.3f})\n")
    print(format_table(best["results"], f"{args.task} step {best['step']}"))


def sweep_checkpoints(run_dir):
    """[(step, path)] of RUN_DIR's step_N/ checkpoints and its final/ (at the run's last step), by step."""
    steps = sft.step_dirs(run_dir)
    final = os.path.join(run_dir, "final")
    if os.path.isfile(os.path.join(final, "trainer_state.pt")):
        state = torch.load(os.path.join(final, "trainer_state.pt"), map_location="cpu", mmap=True, weights_only=False)
        steps.append((int(state["step"]), final))
    return steps


def run_report(args):
    """--report FILES: one table from --out / --sweep files, no model needed; --plot draws it too."""
    rows = read_report_rows(args.task, args.report)
    print(format_report(args.task, rows))
    if args.plot:
        plot_report(args.task, rows, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)


def run_distill(args):
    """--distill: data generation, the teacher's first correct reply to each prompt of
    DATA/TASK/--distill-from.jsonl, written as SFT records."""
    args.max_new_tokens = args.max_new_tokens or 1024
    path = os.path.join(args.data, args.task, f"{args.distill_from}.jsonl")
    records = read_jsonl(path)
    if not records:
        raise UserError(f"no records in {path}")
    model, tokenizer = load_model(args.model, args.dtype, args.device), load_tokenizer(args.model)
    kept, share = distill(model, tokenizer, records, samples=args.samples, max_new_tokens=args.max_new_tokens,
                          seed=args.seed)
    out = args.out or os.path.join(args.data, args.task, "train_distilled_cot.jsonl")
    make_data.write_jsonl(out, kept)
    print(f"distilled {len(kept)} of {len(records)} prompts ({share:.1%} kept) -> {out}")


if __name__ == "__main__":
    sft.run_cli(main, "eval.py")
