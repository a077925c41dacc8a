"""The README's quick path, `python launch.py experiment=mapper_quick`, run as a user runs it (slow: about
three minutes on a 2-core CPU; `make test-slow`)."""
import json

import pytest

from tests.runs import launch


@pytest.mark.slow
def test_quick_experiment_is_clearly_above_chance(tmp_path):
    done = launch(["experiment=mapper_quick", f"data.root={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}",
                   "logger.mode=disabled"], timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (results["benchmark"], results["way"], results["shot"]) == ("novel_names", 2, 1)
    # 2-way: one of the task's two names at random is right half the time; the interval must exclude that.
    assert results["overall"]["mean"] - results["overall"]["ci95"] > 0.5, results["overall"]
    assert results["overall_0step"]["mean"] < 0.2  # the names are bound by adaptation, not known beforehand
