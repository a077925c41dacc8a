"""The study's tooling (kml/analysis/study.py): its runs, its chunked runner, and the tables rebuilt from small files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kml.analysis import study, study_report
from kml.data.prepare import prepare
from kml.run.run_lock import RunLock
from tests.test_compare import fabricated_study, write_run


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
    assert study_report.report(tmp_path) == 0
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
    assert study_report.report(tmp_path) == 0
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
    assert study_report.report(tmp_path / "study") == 0
    assert (tmp_path / "study" / "transference_reverse.png").is_file()


def schedule_run(folder, method, seed, tests, reference=None):
    """A fabricated 2-mode run trained to the last iteration of `tests` (iteration -> 10 task accuracies),
    tested along the way at the others (milestones/<iteration>/)."""
    last = max(tests)
    for step, accuracy in sorted(tests.items(), reverse=True):  # the run folder first, then its milestones
        target = folder if step == last else folder / "milestones" / str(step)
        write_run(target, method, "2mode", ["omniglot", "miniimagenet"], [accuracy[:6], accuracy[6:]], seed)
        results = json.loads((target / "results.json").read_text())
        results.update(iteration=step, milestone=step != last)
        (target / "results.json").write_text(json.dumps(results))


def test_a_study_under_way_with_one_methods_runs_reports_them(tmp_path):
    g = np.random.default_rng(2)
    for seed in (0, 1):
        schedule_run(tmp_path / "runs" / f"proto{seed}", "ProtoNet", seed, {s: g.uniform(0.2, 0.8, 10) for s in (1200, 4800)})
    assert study_report.report(tmp_path, (1200, 4800), None, (("MProtoNet+KML", "ProtoNet"),), 30000) == 0
    assert "| ProtoNet |" in (tmp_path / "at_1200" / "report.md").read_text()
    assert not list(tmp_path.rglob("compare_*.md")) and "| ProtoNet" not in (tmp_path / "trend.md").read_text()


def test_a_schedule_study_reports_each_milestone_and_checks_the_runs_it_must_equal(tmp_path):
    g = np.random.default_rng(1)
    reference, ours = tmp_path / "reference", tmp_path / "schedule"
    for seed in (0, 1):
        proto = {step: g.uniform(0.2, 0.8, 10) for step in (1200, 2400, 4800)}
        kml = {step: acc + 0.01 * step / 1200 for step, acc in proto.items()}  # KML − none: +1, +2, +4 points
        schedule_run(ours / "runs" / f"proto{seed}", "ProtoNet", seed, proto)
        schedule_run(ours / "runs" / f"kml{seed}", "MProtoNet+KML", seed, kml)
        # The reference's runs ended at 1,200; seed 1's KML run met one task otherwise.
        write_run(reference / "runs" / f"proto{seed}", "ProtoNet", "2mode", ["omniglot", "miniimagenet"],
                  [proto[1200][:6], proto[1200][6:]], seed)
        ref_kml = kml[1200].copy()
        ref_kml[3] += 0.2 * seed
        write_run(reference / "runs" / f"kml{seed}", "MProtoNet+KML", "2mode", ["omniglot", "miniimagenet"],
                  [ref_kml[:6], ref_kml[6:]], seed)
    for run in (reference / "runs").iterdir():  # written before results.json kept the iteration
        (run / ".hydra").mkdir()
        (run / ".hydra" / "config.yaml").write_text("seed: 0\neval_only: false\ntrain:\n  iterations: 1200\n")

    assert study_report.report(ours, (1200, 2400, 4800), reference, (("MProtoNet+KML", "ProtoNet"),), 30000) == 0
    for step, points in ((1200, "+1.00"), (2400, "+2.00")):
        assert f"| MProtoNet+KML | {points} ± 0.00 (2 seeds)" in (ours / f"at_{step}" / "compare_ProtoNet.md").read_text()
    assert "| MProtoNet+KML | +4.00 ± 0.00 (2 seeds)" in (ours / "compare_ProtoNet.md").read_text()
    assert not (ours / "at_4800").exists()  # the runs' own tests: the report at the top
    assert "| MProtoNet+KML − ProtoNet | 2mode 5w1s | +2.00 / +2.00 | +2.00 ± 0.00 | ± 0.00 |" in \
        (ours / "at_2400" / "differences.md").read_text()
    # +1, +2, +4 at x = 0, 1, 2 doublings: least squares 1.5 per doubling, 7/3 + 1.5·log2(30000/2400) at 30,000.
    trend = (ours / "trend.md").read_text()
    for seed in (0, 1):
        assert f"| MProtoNet+KML − ProtoNet | {seed} | +1.00 | +2.00 | +4.00 | +1.50 | +7.80 |" in trend
    assert "| mean ± t over seeds | +1.00 ± 0.00 | +2.00 ± 0.00 | +4.00 ± 0.00 | +1.50 ± 0.00 | +7.80 ± 0.00 |" in trend
    assert "2.6 doublings past the last test from 3 points" in trend  # log2(30000 / 4800)
    assert (ours / "schedule.png").read_bytes()[:4] == b"\x89PNG"
    same = (ours / "same_as_reference.md").read_text()
    assert "3 of 4 runs met by both studies have identical per-task test accuracies" in same
    assert "| MProtoNet+KML | 2mode 5w1s | 1 | 1200 | 10 | unverified (no fingerprints) | NO |" in same


@pytest.mark.parametrize("name,runs", [("2mode_1shot", 39), ("2mode_5shot", 27), ("schedule", 12), ("schedule_maml", 3)])
def test_every_study_expands_to_its_runs(name, runs):
    """Each study of conf/study/ names sweeps that compose, into the runs its PLAN.md promises; a study tested
    along the way tests each run at every one of its milestones."""
    chosen = study.Study.load(name)
    found = study.jobs(chosen.experiments)
    assert len(found) == len(set(found)) == runs
    for job in found:
        cfg = study.compose([f"experiment={job.experiment}", *job.overrides])
        if chosen.tested_at:  # tested at every milestone, the last one being the run's own end
            assert list(cfg.eval.at) == list(chosen.tested_at) and cfg.train.iterations == chosen.tested_at[-1]
    if name == "schedule_maml":
        assert {job.overrides for job in found} == {("learner=maml", "modulation=kml", "seed=0"),
                                                    ("benchmark=omniglot", "learner=maml", "modulation=none", "seed=0"),
                                                    ("benchmark=miniimagenet", "learner=maml", "modulation=none", "seed=0")}


def test_a_finished_runs_milestones_are_among_its_small_files(tmp_path):
    run_dir = tmp_path / "run"
    for name in ("results.json", "milestones/1200/results.json", "milestones/1200/test_tasks.npz",
                 "transference/reverse/lr_step4.npz", ".hydra/config.yaml", "last.pt", "milestones/1200/other"):
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text(name)
    study.keep_small_files(run_dir, tmp_path / "kept", 60, False)
    kept = sorted(str(p.relative_to(tmp_path / "kept")) for p in (tmp_path / "kept").rglob("*") if p.is_file())
    assert kept == [".hydra/config.yaml", "milestones/1200/results.json", "milestones/1200/test_tasks.npz",
                    "results.json", "timing.json", "transference/reverse/lr_step4.npz"]


@pytest.mark.slow
def test_every_schedule_study_run_starts_on_the_real_data(shared_data, tmp_path):
    """The guard of the schedule study: its 12 runs for a handful of iterations on the real data, tested
    along the way, then its report at each milestone and its figure."""
    root = tmp_path / "data"
    prepare("omniglot", shared_data / "omniglot" / "omniglot_png_full.tar.gz", root, 32)
    prepare("miniimagenet", shared_data / "miniimagenet" / "miniimagenet_ravi_84px.tar.gz", root, 32)
    short = ["train.iterations=4", "train.val_every=2", "eval.at=[2,4]", "train.val_tasks_per_mode=4",
             "eval.tasks_per_mode=10", f"data.root={root}"]
    schedule = study.Study.load("schedule")
    assert len(study.jobs(schedule.experiments)) == 12
    finished = study.run(tmp_path / "study", hours=2, workers=2, extra=short, commit=False,
                         outputs=tmp_path / "outputs", experiments=schedule.experiments)
    assert finished == 12
    assert len(list((tmp_path / "study" / "runs").rglob("milestones/2/test_tasks.npz"))) == 12
    assert study_report.report(tmp_path / "study", (2, 4)) == 0
    assert "| MProtoNet+KML |" in (tmp_path / "study" / "at_2" / "compare_ProtoNet.md").read_text()
    assert "| Multi-ProtoNet |" in (tmp_path / "study" / "at_2" / "compare_MProtoNetpKML.md").read_text()
    assert (tmp_path / "study" / "schedule.png").is_file()
