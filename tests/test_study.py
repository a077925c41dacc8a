"""The study's tooling (kml/analysis/study.py): its runs, its chunked runner, and the tables rebuilt from small files."""

from __future__ import annotations

import json

import pytest

from kml.analysis import study
from kml.data.prepare import prepare
from kml.run.run_lock import RunLock
from tests.test_compare import fabricated_study


def test_the_study_is_every_row_with_three_seeds():
    jobs = study.jobs()
    assert len(jobs) == len({(j.experiment, j.folder) for j in jobs}) == 6 * 3 + 2 * 2 * 3 + 2 * 3 + 3
    seeds = {}
    for job in jobs:
        values = dict(o.split("=", 1) for o in job.overrides)
        row = (job.experiment.removesuffix("_seeds"), values["learner"], values["modulation"],
               values.get("benchmark"))
        seeds.setdefault(row, set()).add(values["seed"])
    assert all(found == {"0", "1", "2"} for found in seeds.values()) and len(seeds) == 6 + 4 + 2 + 1


def test_tables_and_figures_are_rebuilt_from_the_small_files_alone(tmp_path, capsys):
    fabricated_study(tmp_path / "runs" / "study_2mode_joint")
    assert study.report(tmp_path) == 0
    for name in ("report.md", "report.csv", "compare_MAML.md", "compare_MAML.csv", "curves.png"):
        assert (tmp_path / name).is_file(), name
    assert "MMAML+KML" in (tmp_path / "compare_MAML.md").read_text()
    assert "+2.00 ±" in (tmp_path / "compare_ProtoNet.md").read_text()  # ProtoNet [released] − ProtoNet, omniglot
    assert not (tmp_path / "compare_MMAML.md").exists()  # a baseline the runs lack is left out, not an error
    against_specialists = (tmp_path / "compare_Multi-MAML.md").read_text()  # built from the MAML specialists
    assert "| MMAML+KML | -5.00 ± 0.00 (1 seed, paired over tasks) | +15.00 ± 0.00 (1 seed, paired over tasks) |" \
        in against_specialists


def test_report_compares_each_row_with_the_row_one_switch_away(tmp_path):
    fabricated_study(tmp_path / "runs" / "study_2mode_joint")
    for path in (tmp_path / "runs" / "study_2mode_joint").glob("kml*/results.json"):  # MMAML+KML → MMAML
        path.write_text(path.read_text().replace('"MMAML+KML"', '"MMAML"'))
    assert study.report(tmp_path) == 0
    table = (tmp_path / "compare_MMAML.md").read_text()
    assert table.startswith("| vs MMAML |") and "-10.00 ± 0.00 (3 seeds)" in table  # MAML − MMAML, omniglot


def test_plan_lists_done_and_pending_runs(tmp_path):
    jobs = study.jobs()
    done = jobs[0].small_files(tmp_path)
    done.mkdir(parents=True)
    (done / "results.json").write_text("{}")
    (done / "timing.json").write_text(json.dumps({"seconds": 600}))
    summary = study.write_plan(tmp_path, jobs)
    plan = (tmp_path / "PLAN.md").read_text()
    assert summary.startswith(f"1 of {len(jobs)} runs done in about 0.2 CPU-hours")
    assert f"| {jobs[0].folder} | done | 10 |" in plan
    assert plan.count("| to go |") == len(jobs) - 1


def test_a_resumed_run_does_not_set_the_estimate_of_its_kind(tmp_path):
    """A chunk stopped mid-run resumes it in the next; only that last part is timed, so it must not make
    the runs of its kind look short (the runner would then start runs that cannot finish in time)."""
    jobs = study.jobs()
    first, same_kind = next((a, b) for a in jobs for b in jobs if a != b and a.kind == b.kind)
    done = first.small_files(tmp_path)
    done.mkdir(parents=True)
    (done / "results.json").write_text("{}")
    (done / "timing.json").write_text(json.dumps({"seconds": 60, "resumed": True}))
    assert study.estimate(same_kind, tmp_path, [first]) > 600
    (done / "timing.json").write_text(json.dumps({"seconds": 60, "resumed": False}))
    assert study.estimate(same_kind, tmp_path, [first]) == 60
    study.write_plan(tmp_path, jobs)
    assert "| done |" in (tmp_path / "PLAN.md").read_text()


def test_the_runner_leaves_runs_under_way_in_another_process_alone(tmp_path, capsys):
    """Two runners on one machine (or a runner beside a hand-started launch.py) never start one run twice."""
    locks = [RunLock(tmp_path / "outputs" / job.experiment / job.folder) for job in study.jobs()]
    for lock in locks:
        lock.acquire()
    try:
        finished = study.run(tmp_path / "study", hours=2, workers=1, extra=[], commit=False,
                             outputs=tmp_path / "outputs")
    finally:
        for lock in locks:
            lock.release()
    out = capsys.readouterr().out
    assert finished == 0 and out.count("study: skip ") == len(locks) and "study: start" not in out


@pytest.mark.slow
def test_every_study_run_starts_on_the_real_data(shared_data, tmp_path):
    """The guard of the 14-hour study: every one of its runs, for a handful of iterations on Omniglot and
    the full mini-ImageNet at 32 px, through the chunk runner, then the rebuild of every table and figure."""
    root = tmp_path / "data"
    prepare("omniglot", shared_data / "omniglot" / "omniglot_png_full.tar.gz", root, 32)
    prepare("miniimagenet", shared_data / "miniimagenet" / "miniimagenet_ravi_84px.tar.gz", root, 32)
    short = ["train.iterations=4", "train.val_every=2", "train.val_tasks_per_mode=4", "eval.tasks_per_mode=10",
             "transference.sources=4", "transference.iterations=[2,4]", f"data.root={root}"]
    finished = study.run(tmp_path / "study", hours=2, workers=2, extra=short, commit=False,
                         outputs=tmp_path / "outputs")
    assert finished == len(study.jobs())
    reverse = list((tmp_path / "study" / "runs").rglob("transference/reverse/lr_step4.npz"))
    assert len(reverse) == 6 and all("study_2mode_joint/" in str(path) for path in reverse)  # seed 0 only
    # Every run trained in its own folder: the transductive rows are no joint rows resumed.
    variants = [json.loads(path.read_text()).get("variant")
                for path in (tmp_path / "study" / "runs" / "study_2mode_transductive").rglob("results.json")]
    assert variants == ["transductive"] * 6
    assert study.report(tmp_path / "study") == 0
    assert (tmp_path / "study" / "transference_reverse.png").is_file()
