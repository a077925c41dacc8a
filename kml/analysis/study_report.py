"""`python -m kml.study report`: a study's tables and figures, rebuilt from its runs' small files alone
(kml/analysis/study.py runs the study and keeps those files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kml.analysis import report as tables
from kml.analysis.compare import difference_rows, test_records
from kml.analysis.runs import find_results, tested_at
from kml.analysis.study import REPO


def report(study: Path, milestones: tuple[int, ...] = (), same_as: Path | None = None,
           differences: tuple[tuple[str, str], ...] = ()) -> int:
    """Every table and figure of RESULTS.md, from the small files alone: the runs' own tests in `study`,
    their tests at the other iterations of `milestones` in at_<iteration>/ with schedule.png, the check
    against the study in `same_as` in same_as_<its folder>.md, and the (method, baseline) `differences`
    in differences.md beside each report."""
    runs = str(study / "runs")
    own = find_results([runs]) if Path(runs).is_dir() else []
    extra = ["--schedule", str(study / "schedule.png")] if milestones else []
    done = tables.main([runs, "--out", str(study), "--modes", "--published", *baselines(own), *extra,
                        "--curves", str(study / "curves.png"), "--transference", str(study / "transference.png")])
    if differences and done == 0:
        write_differences(study, own, differences)
    for step in sorted(set(milestones) - {tested_at(run) for run in own}):
        at = find_results([runs], step)
        if at and done == 0:
            done = tables.main([runs, "--out", str(study / f"at_{step}"), "--modes", "--at", str(step),
                                *baselines(at)])
            if differences and done == 0:
                write_differences(study / f"at_{step}", at, differences)
    if same_as is not None and done == 0:
        print(write_same_as(study, same_as))
    return done


def baselines(runs: list[dict]) -> list[str]:
    """--compare for the plain learners (the paper's question) and the rows one switch away: FiLM (is KML
    better?), MProtoNet+KML (how much does transduction add to it?) and the specialists (is one model for all
    modes better than one per mode?); those the runs have."""
    present = {t.method for t in test_records(runs)}
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
