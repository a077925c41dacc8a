"""`python -m kml.study report`: a study's tables and figures, rebuilt from its runs' small files alone
(kml/analysis/study.py runs the study and keeps those files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kml.analysis import report as tables
from kml.analysis.compare import across_seeds, compare, difference_rows, test_records
from kml.analysis.runs import find_results, tested_at
from kml.analysis.study import REPO


def report(study: Path, milestones: tuple[int, ...] = (), same_as: Path | None = None,
           differences: tuple[tuple[str, str], ...] = (), horizon: int | None = None) -> int:
    """Every table and figure of RESULTS.md, from the small files alone: the runs' own tests in `study`,
    their tests at the other iterations of `milestones` in at_<iteration>/ with schedule.png, the check
    against the study in `same_as` in same_as_<its folder>.md, the (method, baseline) `differences`
    in differences.md beside each report, and with a `horizon`, their trend over the milestones in trend.md."""
    runs = str(study / "runs")
    own = find_results([runs]) if Path(runs).is_dir() else []
    extra = ["--schedule", str(study / "schedule.png")] if milestones else []
    done = tables.main([runs, "--out", str(study), "--modes", "--published", *baselines(own), *extra,
                        "--curves", str(study / "curves.png"), "--transference", str(study / "transference.png")])
    if differences and done == 0:
        write_differences(study, own, differences)
    tested: dict[int | None, list[dict]] = {}  # iteration -> the tests taken there
    for run in own:
        tested.setdefault(tested_at(run), []).append(run)
    for step in sorted(set(milestones) - set(tested)):
        at = tested[step] = find_results([runs], step)
        if at and done == 0:
            done = tables.main([runs, "--out", str(study / f"at_{step}"), "--modes", "--at", str(step),
                                *baselines(at)])
            if differences and done == 0:
                write_differences(study / f"at_{step}", at, differences)
    if differences and horizon and len(milestones) > 1 and done == 0:
        write_trend(study, {step: tested.get(step, []) for step in milestones}, differences, horizon)
    if same_as is not None and done == 0:
        print(write_same_as(study, same_as))
    return done


def baselines(runs: list[dict]) -> list[str]:
    """--compare for the plain learners (the paper's question) and the rows one switch away: FiLM (is KML
    better?), MProtoNet+KML (how much does transduction add to it?) and the specialists (is one model for all
    modes better than one per mode?); those the runs have."""
    present = {t.method for t in test_records(runs)}
    if len(present) < 2:  # a study under way may have one method's runs only: nothing to compare yet
        return []
    wanted = ("MAML", "ProtoNet", "MMAML", "MProtoNet", "MProtoNet+KML", "Multi-MAML", "Multi-ProtoNet")
    return [arg for method in wanted if method in present for arg in ("--compare", method)]


def write_differences(folder: Path, runs: list[dict], pairs: tuple[tuple[str, str], ...]) -> None:
    """differences.md: the study's chosen paired differences, overall, per seed and across seeds, with what
    the sampling of the test tasks adds (RESULTS.md's tables)."""
    rows = difference_rows(test_records(runs), list(pairs))
    header = ["difference", "setup", "per seed", "mean ± t-interval over seeds", "test-task sampling (bootstrap)"]
    note = ("Overall accuracy points, paired over identical test tasks. The last column is the half-width of "
            "the 95% bootstrap interval of the seed mean when only the test tasks are resampled (within each "
            "mode, 2,000 draws): what another draw of test tasks would add, which the seed interval leaves out.")
    (folder / "differences.md").write_text(tables.markdown(header, rows) + "\n\n" + note + "\n")


def write_trend(study: Path, tested: dict[int, list[dict]], pairs: tuple[tuple[str, str], ...], horizon: int) -> None:
    """trend.md: each chosen overall difference at every milestone (`tested`: the tests taken there), per seed,
    and the straight line through a seed's differences against log2(iterations): its slope per doubling and
    where it would be at `horizon` if it went on, each a mean ± t-interval over the seeds tested at every
    milestone."""
    steps = sorted(tested)
    gaps: dict[tuple[str, str], dict[int, dict[int, float]]] = {}  # pair -> seed -> iteration -> points
    for step in steps:
        records = test_records(tested[step])
        multimodal = {r.setup for r in records if len(r.modes) > 1}
        for method, baseline in pairs:
            for row in compare(records, baseline):
                if row["method"] == method and row["mode"] == "overall" and row["setup"] in multimodal:
                    for p in row["per_seed"]:
                        gaps.setdefault((method, baseline), {}).setdefault(p["seed"], {})[step] = 100 * p["mean"]
    x, ahead = np.log2(steps), np.log2(horizon)
    rows = []
    for (method, baseline), by_seed in gaps.items():
        fitted = []
        for seed, at in sorted(by_seed.items()):
            if len(at) < len(steps):  # not tested at every milestone yet
                continue
            y = [at[step] for step in steps]
            slope, intercept = np.polyfit(x, y, 1)
            fitted.append([*y, slope, intercept + slope * ahead])
            rows.append([f"{method} − {baseline}", str(seed), *(f"{v:+.2f}" for v in fitted[-1])])
        if len(fitted) > 1:
            rows.append([f"{method} − {baseline}", "mean ± t over seeds",
                         *(f"{d['mean']:+.2f} ± {d['ci95']:.2f}" for d in map(across_seeds, zip(*fitted, strict=True)))])
    header = ["difference", "seed", *(f"at {step:,}" for step in steps), "slope per doubling",
              f"line at {horizon:,}"]
    note = (f"Overall accuracy points, paired over identical test tasks. The line is fitted per seed by least squares "
            f"to the differences against log2(iterations); \"line at {horizon:,}\" is where it would be if it went "
            f"on, an extrapolation of {np.log2(horizon / steps[-1]):.1f} doublings past the last test from "
            f"{len(steps)} points, which assumes the trend stays straight in log-iterations.")
    (study / "trend.md").write_text(tables.markdown(header, rows) + "\n\n" + note + "\n")


def write_same_as(study: Path, reference: Path) -> str:
    """same_as_<reference folder>.md: each run of `reference` against this study's test of the same method,
    setup and seed at the same iteration (these runs are the reference's, trained on), task by task."""
    theirs = find_results([str(reference / "runs")])
    shown = reference.relative_to(REPO) if reference.is_relative_to(REPO) else reference
    lines = [f"# This study's tests against {shown}'s, where they meet", "",
             "Same method, setup and training seed, tested at the reference run's last iteration; the per-task "
             "accuracies compared one by one.", "",
             "| method | setup | seed | iteration | tasks | identical tasks | identical accuracies | this (%) | "
             "reference (%) |", "|---|---|---|---:|---:|---|---|---:|---:|"]
    met = identical = 0
    for step in sorted({tested_at(run) for run in theirs} - {None}):
        ours = {(r.method, r.setup, r.seed): r for r in test_records(find_results([str(study / "runs")], step))
                if not r.method.startswith("Multi-")}
        for ref in test_records([run for run in theirs if tested_at(run) == step]):
            mine = ours.get((ref.method, ref.setup, ref.seed))
            if mine is None:  # not met, or a Multi- row (its specialists are compared one by one)
                continue
            same_size = len(mine.accuracy) == len(ref.accuracy)
            tasks = ("unverified (no fingerprints)" if mine.fingerprint is None or ref.fingerprint is None else
                     "yes" if same_size and np.array_equal(mine.fingerprint, ref.fingerprint) else "NO")
            equal = same_size and np.array_equal(mine.accuracy, ref.accuracy)
            met, identical = met + 1, identical + equal
            lines.append(f"| {ref.method} | {ref.setup} | {ref.seed} | {step} | {len(ref.accuracy)} | {tasks} | "
                         f"{'yes' if equal else 'NO'} | {100 * mine.accuracy.mean():.2f} | "
                         f"{100 * ref.accuracy.mean():.2f} |")
    summary = f"{identical} of {met} runs met by both studies have identical per-task test accuracies"
    (study / f"same_as_{reference.name}.md").write_text("\n".join([*lines, "", summary + ".", ""]))
    return f"{summary} (wrote {study / f'same_as_{reference.name}.md'})"
