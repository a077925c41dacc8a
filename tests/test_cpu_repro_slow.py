"""Guard for the laptop-scale reproduction sweep of RESULTS.md (slow; `make test-slow`).

Runs both sweeps of the experiment exactly as documented, on the real data, with a handful of
iterations and tasks per job, then the report: every method and specialist must produce results and
the transference histograms, so the hour-long command does not fail half-way.
"""
import json

import pytest

from kml import report
from kml.data.prepare import prepare
from tests.runs import launch

SHORT = ["train.iterations=4", "train.val_every=2", "train.val_tasks_per_mode=4", "eval.tasks_per_mode=8",
         "logger.mode=disabled"]


@pytest.mark.slow
def test_cpu_repro_sweeps_run_end_to_end(shared_data, tmp_path):
    root = tmp_path / "data"
    prepare("omniglot", shared_data / "omniglot" / "omniglot_png_full.tar.gz", root, 32)
    prepare("miniimagenet", shared_data / "miniimagenet_subset" / "tinyimagenet64_miniclasses.tar.gz", root, 32)
    sweeps = {"cpu_repro_1shot": ["transference.iterations=[2,4]", "transference.sources=4"],
              "cpu_repro_specialists": []}
    for experiment, extra in sweeps.items():
        done = launch(["-m", f"experiment={experiment}", f"data.root={root}",
                       f"hydra.sweep.dir={tmp_path / experiment}", *SHORT, *extra], timeout=3600)
        assert done.returncode == 0, done.stderr[-3000:]

    results = {}
    for file in tmp_path.rglob("results.json"):
        r = json.loads(file.read_text())
        results[(r["method"], r["benchmark"])] = r
        assert r["overall"]["n"] == 8 * len(r["per_mode"]) and r["way"] == 5 and r["shot"] == 1
    methods = ["MAML", "MMAML", "MMAML+KML", "ProtoNet", "MProtoNet", "MProtoNet+KML"]
    assert {(m, "2mode") for m in methods} | {(m, b) for m in ("MAML", "ProtoNet")
                                             for b in ("omniglot", "miniimagenet")} == set(results)
    histograms = sorted(p.name for p in (tmp_path / "cpu_repro_1shot").rglob("transference/*.npz"))
    assert histograms == sorted(["lr_step2.npz", "lr_step4.npz"] * len(methods))
    assert report.main([str(tmp_path / "cpu_repro_1shot"), str(tmp_path / "cpu_repro_specialists"),
                        "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "report.md").read_text()
    assert "Multi-MAML" in table and "Multi-ProtoNet" in table and "MMAML+KML" in table
