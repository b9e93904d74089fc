"""study.sh end to end (slow: about 12 minutes on 2 cores; `python -m pytest -q -m slow`)."""
import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quick_study_writes_the_table_and_shows_the_frozen_prompt(tmp_path):
    result = subprocess.run(["bash", "study.sh", "quick"], cwd=ROOT, env={**os.environ, "OUT": str(tmp_path)},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    table = (tmp_path / "results" / "sokoban.md").read_text()
    assert "| Ans. |" in table and "| Diver.+Ans. |" in table and "| *paper* |" in table
    ans = json.loads((tmp_path / "results" / "sokoban-ans.json").read_text())["variants"]
    # the frozen prompt: the answer-only model keeps answering Up/Down/Left/Right, which the
    # Alpha/Num/Rand environments do not accept, while ID and Fake accept them
    assert ans["id"]["valid"] > 0.9 and ans["fake"]["valid"] > 0.9
    assert max(ans[v]["valid"] for v in ("alpha", "num", "rand")) < 0.1
