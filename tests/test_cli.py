"""Careless input, driven through every script's flags and record fields: each ends as one line
`SCRIPT.py: error: ...` with exit status 2 and nothing written, or is accepted; never a traceback.

The scripts run in this process with the call that starts their work (making OUT, loading the
model, building the files) replaced by one that stops the test there, so a probe costs
milliseconds and an accepted value is seen as accepted without any training."""
import argparse
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402
import eval as evaluation  # noqa: E402
import make_data  # noqa: E402
import rl  # noqa: E402
import sft  # noqa: E402


class WorkStarted(Exception):
    """Raised where a script starts its work: every check has passed."""


def started(*args, **kwargs):
    raise WorkStarted


# the function each script calls once every input is checked (replaced by `started` in the probes)
START = {"sft.py": (sft, "prepare_run_dir"), "rl.py": (rl, "prepare_run_dir"), "eval.py": (evaluation, "load_model"),
         "make_data.py": (make_data, "build_sokoban")}
MODULES = {"sft.py": sft, "rl.py": rl, "eval.py": evaluation, "make_data.py": make_data}


def outcome(script, argv, monkeypatch, capsys):
    """'refused' (asserting the convention: exit 2, one line on stderr) or 'accepted'."""
    module, name = START[script]
    monkeypatch.setattr(module, name, started)
    if script == "make_data.py":
        monkeypatch.setattr(make_data, "build_gpoints", started)
        monkeypatch.setattr(make_data, "build_base", started)
    capsys.readouterr()
    try:
        common.run_cli(lambda: MODULES[script].main(argv), script)
    except WorkStarted:
        return "accepted"
    except SystemExit as e:
        err = capsys.readouterr().err.strip()
        assert e.code == 2, f"{script} {argv}: exit {e.code}, stderr {err[-500:]!r}"
        assert err.startswith(f"{script}: error: ") and "\n" not in err, f"{script} {argv}: not one line: {err!r}"
        return "refused"
    return "accepted"  # a mode that finished without reaching the start point (e.g. a report)


# -----------------------------------------------------------------------------
# fixtures: a small data folder and a tiny model, made once


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli") / "data")
    make_data.main(["--out", out, "--scale", "small", "--style", "compact", "--tasks", "sokoban"])
    return out


@pytest.fixture(scope="module")
def model_dir(data_dir, tmp_path_factory):
    records = common.read_jsonl(os.path.join(data_dir, "sokoban", "train_ans.jsonl"))
    texts = [m["content"] for r in records for m in r["messages"]]
    return make_data.build_tiny_model(str(tmp_path_factory.mktemp("cli") / "tiny"), texts, hidden=32, layers=2, heads=2,
                                ffn=64, vocab=400)


def valid_argv(script, data_dir, model_dir, out):
    sok = os.path.join(data_dir, "sokoban")
    return {
        "sft.py": ["--model", model_dir, "--data", f"{sok}/train_ans.jsonl", "--out", out, "--batch-size", "4",
                   "--micro-batch-size", "2", "--max-steps", "2", "--dtype", "fp32"],
        "rl.py": ["--model", model_dir, "--data", f"{sok}/rl.jsonl", "--out", out, "--prompts-per-step", "2",
                  "--group-size", "2", "--max-steps", "1", "--dtype", "fp32", "--max-new-tokens", "8"],
        "eval.py": ["--model", model_dir, "--task", "sokoban", "--data", data_dir, "--out", f"{out}/r.json",
                    "--limit", "2", "--dtype", "fp32"],
        "make_data.py": ["--out", out, "--scale", "small"],
    }[script]


def parser_of(script):
    if script == "make_data.py":
        parser = {}

        def capture(self, *a, **k):  # make_data builds its parser inside parse_args
            parser["p"] = self
            raise WorkStarted
        orig = argparse.ArgumentParser.parse_args
        argparse.ArgumentParser.parse_args = capture
        try:
            make_data.parse_args([])
        except WorkStarted:
            pass
        finally:
            argparse.ArgumentParser.parse_args = orig
        return parser["p"]
    return MODULES[script].get_parser()


MUST_REFUSE = "must refuse"
EITHER = "either"


def probes(action):
    """(value, expectation) pairs for one flag, from its type."""
    kind = getattr(action.type, "__name__", None)
    if action.choices is not None:
        return [("bogus", MUST_REFUSE), ("", MUST_REFUSE)]
    if kind == "int" or (action.type and "int" in kind):
        return [("-1", MUST_REFUSE), ("abc", MUST_REFUSE), ("2.5", MUST_REFUSE), ("0", EITHER),
                ("99999999999999999999", EITHER)]
    if kind == "float" or (action.type and "float" in kind):
        return [("-1", MUST_REFUSE), ("nan", MUST_REFUSE), ("inf", MUST_REFUSE), ("abc", MUST_REFUSE),
                ("0", EITHER), ("1e30", EITHER)]
    return [("", MUST_REFUSE)]


SCRIPTS = ["sft.py", "rl.py", "eval.py", "make_data.py"]
SKIP = {"--help", "--truncate", "--no-group-by-length", "--fsdp", "--grad-checkpointing", "--compile", "--resume",
        "--overwrite", "--sok-augment", "--distill",
        # modes that change what the other flags mean: probed below with their own baselines
        "--report", "--plot", "--plot-curves", "--logs", "--sweep", "--distill-from", "--label", "--stop"}
CASES = [(script, a.option_strings[-1], value, expect) for script in SCRIPTS for a in parser_of(script)._actions
         if a.option_strings and a.option_strings[-1] not in SKIP and a.nargs != 0
         for value, expect in probes(a)]


@pytest.mark.parametrize("script,flag,value,expect", CASES,
                         ids=[f"{s}{f}={v or 'EMPTY'}" for s, f, v, _ in CASES])
def test_odd_flag_values(script, flag, value, expect, data_dir, model_dir, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "out")
    argv = valid_argv(script, data_dir, model_dir, out)
    if flag in argv:
        i = argv.index(flag)
        argv = argv[:i] + argv[i + 2:]
    result = outcome(script, argv + [flag, value], monkeypatch, capsys)
    if expect == MUST_REFUSE:
        assert result == "refused", f"{script} {flag} {value!r} was accepted"
    if result == "refused":
        assert not os.path.exists(out), f"{script} {flag} {value!r}: refused after writing {out}"


def test_valid_baselines_are_accepted(data_dir, model_dir, tmp_path, monkeypatch, capsys):
    for script in SCRIPTS:
        assert outcome(script, valid_argv(script, data_dir, model_dir, str(tmp_path / "out")), monkeypatch,
                       capsys) == "accepted", script


# -----------------------------------------------------------------------------
# record fields: a data file with one odd line

GOOD_CHAT = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "meta": {}}
ODD_RECORDS = {
    "null": None, "list": [], "string": "text", "number": 3, "no-messages": {"meta": {}},
    "messages-string": {"messages": "hi"}, "messages-empty": {"messages": []},
    "turn-string": {"messages": ["hi"]}, "no-role": {"messages": [{"content": "q"}]},
    "content-number": {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]},
    "role-odd": {"messages": [{"role": "wizard", "content": "q"}, {"role": "assistant", "content": "a"}]},
    "meta-string": {"messages": GOOD_CHAT["messages"], "meta": "x"},
    "meta-list": {"messages": GOOD_CHAT["messages"], "meta": [1]},
}
PROMPT_ONLY = {  # prompt records (rl.py, eval.py) whose meta lacks what scoring reads
    "meta-no-grid": {"messages": [{"role": "user", "content": "q"}], "meta": {"task": "sokoban", "names": {},
                                                                             "accepted": {}, "optimal": []}},
    "meta-optimal-string": {"messages": [{"role": "user", "content": "q"}],
                            "meta": {"task": "sokoban", "grid": "#", "names": {}, "accepted": {}, "optimal": "Up"}},
}


def with_odd_line(src, dst, record, line_no=2):
    lines = open(src, encoding="utf-8").read().splitlines()[:8]
    lines.insert(line_no - 1, json.dumps(record))
    with open(dst, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


@pytest.mark.parametrize("script,source", [("sft.py", "train_ans"), ("rl.py", "rl"), ("eval.py", "eval_id")])
@pytest.mark.parametrize("case", list(ODD_RECORDS) + list(PROMPT_ONLY))
def test_odd_records(script, source, case, data_dir, model_dir, tmp_path, monkeypatch, capsys):
    if case in PROMPT_ONLY and script == "sft.py":
        pytest.skip("a chat record's meta is free")
    record = {**ODD_RECORDS, **PROMPT_ONLY}[case]
    out = str(tmp_path / "out")
    sok = os.path.join(data_dir, "sokoban")
    if script == "eval.py":  # a copy of the data folder whose ID set has the odd line
        copy = tmp_path / "data" / "sokoban"
        copy.mkdir(parents=True)
        for name in os.listdir(sok):
            (copy / name).write_text(open(os.path.join(sok, name), encoding="utf-8").read(), encoding="utf-8")
        with_odd_line(os.path.join(sok, f"{source}.jsonl"), str(copy / f"{source}.jsonl"), record)
        argv = valid_argv(script, str(tmp_path / "data"), model_dir, out)
    else:
        bad = str(tmp_path / f"{source}.jsonl")
        with_odd_line(os.path.join(sok, f"{source}.jsonl"), bad, record)
        argv = valid_argv(script, data_dir, model_dir, out)
        argv[argv.index("--data") + 1] = bad
    assert outcome(script, argv, monkeypatch, capsys) == "refused", f"{script} accepted a {case} record"
    assert not os.path.exists(out)


# -----------------------------------------------------------------------------
# the solvers' command lines (numpy only: run as subprocesses)

SOLVER_PROBES = [("env_sokoban.py", args) for args in (["--dim", "2", "2"], ["--dim", "-3", "6"], ["--boxes", "0"],
                                                       ["--boxes", "-1"], ["--rooms", "-1"], ["--seed", "-1"],
                                                       ["--dim", "6", "6", "--boxes", "40"])] + \
    [("env_gpoints.py", args) for args in (["--cards", "Z", "2", "3", "4"], ["--cards"], ["--cards", "99", "1", "1", "1"],
                                           ["--cards", "1", "2"], ["--target", "-1"], ["--target", "abc"])]


@pytest.mark.parametrize("script,args", SOLVER_PROBES, ids=[f"{s}:{' '.join(a)}" for s, a in SOLVER_PROBES])
def test_solver_clis(script, args):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script)] + args, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert "Traceback" not in proc.stderr, proc.stderr[-800:]
    if proc.returncode != 0:
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# -----------------------------------------------------------------------------
# nothing a careless user does loses a run or a model


def test_out_that_overlaps_an_input_is_refused(data_dir, model_dir, tmp_path, monkeypatch, capsys):
    run = tmp_path / "R"
    shutil.copytree(model_dir, run / "final")
    before = sorted(os.listdir(run / "final"))
    for script in ("sft.py", "rl.py"):
        for out in (run, run / "final", run / "final" / "sub"):
            argv = valid_argv(script, data_dir, str(run / "final"), str(out)) + ["--overwrite"]
            assert outcome(script, argv, monkeypatch, capsys) == "refused", (script, out)
    assert sorted(os.listdir(run / "final")) == before
    data_copy = tmp_path / "d" / "train.jsonl"  # an OUT holding the data file
    data_copy.parent.mkdir()
    shutil.copy(os.path.join(data_dir, "sokoban", "train_ans.jsonl"), data_copy)
    argv = valid_argv("sft.py", data_dir, model_dir, str(data_copy.parent))
    argv[argv.index("--data") + 1] = str(data_copy)
    assert outcome("sft.py", argv + ["--overwrite"], monkeypatch, capsys) == "refused"
    assert data_copy.exists()


def test_run_folder_as_model_loads_its_final(data_dir, model_dir, tmp_path, monkeypatch, capsys):
    run = tmp_path / "R"
    shutil.copytree(model_dir, run / "final")
    loaded = []
    monkeypatch.setattr(evaluation, "load_model", lambda path, *a, **k: loaded.append(path) or started())
    argv = valid_argv("eval.py", data_dir, str(run), str(tmp_path / "o"))
    with pytest.raises(WorkStarted):
        evaluation.main(argv)
    assert loaded == [str(run / "final")]
    assert f"--model {run} is a run folder" in capsys.readouterr().err


def run_sft(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "sft.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


def test_divergence_stops_the_run_and_keeps_the_last_checkpoint(data_dir, model_dir, tmp_path):
    out = tmp_path / "out"
    argv = valid_argv("sft.py", data_dir, model_dir, str(out))
    proc = run_sft(*argv, "--max-steps", 6, "--lr", "1e30", "--grad-clip", 0, "--save-every", 1)
    err = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and err.startswith("sft.py: error: step ") and "diverged" in err, proc.stderr[-800:]
    assert not (out / "final").exists()
    kept = common.latest_checkpoint(str(out))
    assert kept and kept in err
    assert all(torch.isfinite(t).all() for t in load_file(os.path.join(kept, "model.safetensors")).values())


def test_resume_with_changed_data_is_refused(data_dir, model_dir, tmp_path, monkeypatch, capsys):
    data = tmp_path / "train.jsonl"
    shutil.copy(os.path.join(data_dir, "sokoban", "train_ans.jsonl"), data)
    out = tmp_path / "out"
    argv = valid_argv("sft.py", data_dir, model_dir, str(out))
    argv[argv.index("--data") + 1] = str(data)
    proc = run_sft(*argv, "--max-steps", 3, "--save-every", 1, "--stop-after", 1)
    assert proc.returncode == 0, proc.stderr[-800:]
    assert outcome("sft.py", argv + ["--resume"], monkeypatch, capsys) == "accepted"  # the same data resumes
    lines = data.read_text().splitlines()
    data.write_text("\n".join([lines[1], lines[0]] + lines[2:]) + "\n")  # same path, same size, other bytes
    assert outcome("sft.py", argv + ["--resume"], monkeypatch, capsys) == "refused"


def test_one_run_per_output_folder(tmp_path):
    out = str(tmp_path / "out")
    common.prepare_run_dir(out, False, True, 1)  # this process holds the lock now, and may take it again
    common.prepare_run_dir(out, True, True, 1)
    common._LOCKS.pop(os.path.realpath(out)).close()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); f.write('pid 1 on h'); f.flush(); print('held', flush=True); "
                               "time.sleep(60)", os.path.join(out, ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(common.UserError, match="in use by another run"):
            common.prepare_run_dir(out, True, True, 1)
    finally:
        holder.kill()
        holder.wait()
    common.prepare_run_dir(out, True, True, 1)  # its process is gone, and with it the lock
    assert open(os.path.join(out, ".lock")).read().split()[1] == str(os.getpid())
    common._LOCKS.pop(os.path.realpath(out)).close()


def test_sweep_skips_a_corrupt_checkpoint_and_resumes(data_dir, model_dir, tmp_path, monkeypatch, capsys):
    run, out = tmp_path / "R", str(tmp_path / "res" / "sweep.json")
    shutil.copytree(model_dir, run / "step_1")
    shutil.copytree(model_dir, run / "step_2")
    weights = run / "step_2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    argv = ["--sweep", str(run), "--task", "sokoban", "--data", data_dir, "--variants", "id", "--limit", "1",
            "--max-new-tokens", "8", "--max-turns", "2", "--dtype", "fp32", "--out", out]
    evaluation.main(argv)
    result = json.load(open(out))
    assert [c["step"] for c in result["curve"]] == [1] and [s["step"] for s in result["skipped"]] == [2]
    assert "step_2" in capsys.readouterr().err
    monkeypatch.setattr(evaluation, "evaluate_model", started)  # a second sweep re-evaluates nothing
    evaluation.main(argv)
    assert "kept from" in capsys.readouterr().out


def test_resume_from_a_truncated_checkpoint_is_refused(data_dir, model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    argv = valid_argv("sft.py", data_dir, model_dir, str(out))
    proc = run_sft(*argv, "--max-steps", 3, "--save-every", 1, "--stop-after", 2)
    assert proc.returncode == 0, proc.stderr[-800:]
    state = out / "step_2" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    assert outcome("sft.py", argv + ["--resume"], monkeypatch, capsys) == "refused"


@pytest.mark.parametrize("var", ["STEPS=abc", "LIMIT=-3", "SEED=1.5"])
def test_study_refuses_odd_sizes(var, tmp_path):
    name, value = var.split("=")
    proc = subprocess.run(["bash", os.path.join(ROOT, "study.sh"), "quick"], capture_output=True, text=True,
                          env=dict(os.environ, **{name: value}, OUT=str(tmp_path / "s")), timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == f"study.sh: error: {var}: a whole number"
    assert not (tmp_path / "s").exists()
