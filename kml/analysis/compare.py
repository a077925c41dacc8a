"""Paired comparisons of runs against a baseline method (`python -m kml.report DIR... --compare METHOD`).

Every run of one setup met the same test tasks (they come from eval.seed, not the training seed; each run
keeps every task's accuracy in test_tasks.npz), so two methods compare task by task:

- within one training seed: the mean of the per-task differences, ± 1.96·std/√n over tasks. This says
  whether two trained models differ, not whether the methods do: it ignores how much another training
  seed would have moved either of them.
- across training seeds: the mean of the per-seed mean differences, ± a t-interval over seeds
  (t_{0.975, seeds−1}·std/√seeds). This carries the training-seed variance and is the figure to rest a
  claim on; with one seed there is none. Every seed meets the same tasks, so it leaves out how much
  another draw of test tasks would move a number: task_sampling_halfwidth, a bootstrap over the tasks.

Multi-<method> rows are assembled from single-mode specialists (per seed, in the setup's mode order),
whose test tasks are the multimodal run's tasks of that mode (kml.run.evaluate.mode_seed).

Runs keep a fingerprint of every test task (its images' dataset rows, rotations and labels, hashed): two
runs whose fingerprints differ are refused, naming both. Runs written before fingerprints were recorded
are paired on their settings alone, as before, and their comparisons are marked unverified.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kml.analysis.runs import every_test, label, run_seed, setup_name, tested_at

# t_{0.975, df} for df = 1 … 30: the two-sided 95% quantiles of Student's t (standard tables).
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


@dataclass
class TestRecord:
    """One run's test tasks: accuracy [n] and the index of each task's mode into `modes`."""

    method: str
    setup: str
    seed: int
    eval_seed: int
    modes: list[str]
    accuracy: np.ndarray
    mode: np.ndarray
    fingerprint: np.ndarray | None = None  # [n] int64, None for runs written before they were recorded
    source: str = ""  # the run folder(s), to name in an error

    def on(self, mode: str) -> np.ndarray:
        return self.accuracy if mode == "overall" else self.accuracy[self.mode == self.modes.index(mode)]


def test_records(runs: list[dict]) -> list[TestRecord]:
    """The runs that kept test_tasks.npz, plus Multi- records assembled from their specialists."""
    records = []
    for run in runs:
        path = Path(run["path"]) / "test_tasks.npz"
        if path.is_file():
            with np.load(path) as saved:
                records.append(TestRecord(label(run), setup_name(run), run_seed(run), int(saved["eval_seed"]),
                                          [str(m) for m in saved["modes"]], saved["accuracy"], saved["mode"],
                                          saved["fingerprint"] if "fingerprint" in saved else None, str(run["path"])))
    specialists = {(r.method, r.modes[0], r.seed, r.setup.split(" ", 1)[1]): r for r in records if len(r.modes) == 1}
    multi = []
    for r in records:
        if len(r.modes) < 2:
            continue
        shape = r.setup.split(" ", 1)[1]  # "5w1s"
        for method in sorted({m for m, *_ in specialists}):
            parts = [specialists.get((method, mode, r.seed, shape)) for mode in r.modes]
            key = (f"Multi-{method}", r.setup, r.seed)
            if all(parts) and key not in {(m.method, m.setup, m.seed) for m in multi}:
                fingerprints = [p.fingerprint for p in parts]
                multi.append(TestRecord(key[0], r.setup, r.seed, parts[0].eval_seed, list(r.modes),
                                        np.concatenate([p.accuracy for p in parts]),
                                        np.concatenate([np.full(len(p.accuracy), i) for i, p in enumerate(parts)]),
                                        None if any(f is None for f in fingerprints) else np.concatenate(fingerprints),
                                        " + ".join(p.source for p in parts)))
    return records + multi


def paired(difference: np.ndarray) -> dict:
    """Mean ± 1.96·std/√n of per-task differences."""
    n = len(difference)
    std = float(np.std(difference, ddof=1)) if n > 1 else 0.0
    return {"mean": float(np.mean(difference)), "ci95": 1.96 * std / math.sqrt(n), "n": n}


def task_sampling_halfwidth(values: np.ndarray, draws: int = 2000, seed: int = 0,
                            groups: np.ndarray | None = None) -> float:
    """How much the sampling of the test tasks alone moves a mean: the half-width of the central 95% of
    `draws` bootstrap means of `values` (one per task; the unit is theirs), the tasks resampled with
    replacement. For a paired difference pass the per-task differences of two runs that met the same
    tasks, so that the pairing is kept. `groups` (e.g. TestRecord.mode) resamples within each group,
    keeping its size: the test set has a fixed number of tasks per mode.

    The interval over training seeds (across_seeds) does not carry this: every seed meets the same tasks."""
    values = np.asarray(values, dtype=np.float64)
    groups = np.zeros(len(values), dtype=np.int64) if groups is None else np.asarray(groups)
    if len(values) == 0 or len(groups) != len(values):
        raise ValueError(f"need one group per value and at least one value ({len(values)} values, {len(groups)} groups)")
    rng = np.random.default_rng(seed)
    sums = np.zeros(draws)
    for group in np.unique(groups):
        members = values[groups == group]
        for start in range(0, draws, 500):  # at most 500 × n indices at a time
            rows = min(500, draws - start)
            sums[start:start + rows] += members[rng.integers(0, len(members), (rows, len(members)))].sum(axis=1)
    low, high = np.percentile(sums / len(values), [2.5, 97.5])
    return float(high - low) / 2


def across_seeds(values: list[float]) -> dict:
    """Mean ± t-interval over seeds (ci95 None with one seed: no estimate of the seed variance)."""
    k = len(values)
    if k < 2:
        return {"mean": float(values[0]), "ci95": None, "seeds": k}
    t = T_975[k - 2] if k - 1 <= len(T_975) else 1.96
    return {"mean": float(np.mean(values)), "ci95": t * float(np.std(values, ddof=1)) / math.sqrt(k), "seeds": k}


def compare(records: list[TestRecord], baseline: str) -> list[dict]:
    """For every method and setup where the baseline ran too: the paired differences per seed and their
    mean over seeds, per mode and overall (fractions, method − baseline)."""
    by_key = {(r.method, r.setup, r.seed): r for r in records}
    rows = []
    for setup in sorted({r.setup for r in records}):
        for method in sorted({r.method for r in records if r.setup == setup and r.method != baseline}):
            pairs = []
            for seed in sorted({r.seed for r in records if r.setup == setup}):
                ours, theirs = by_key.get((method, setup, seed)), by_key.get((baseline, setup, seed))
                if ours is None or theirs is None:
                    continue
                if ours.eval_seed != theirs.eval_seed or ours.modes != theirs.modes or \
                        len(ours.accuracy) != len(theirs.accuracy):
                    raise ValueError(f"{method} and {baseline} on {setup}, seed {seed}, met different test tasks "
                                     "(another eval.seed, mode list or task count); rerun with the same eval.*")
                check_same_tasks(ours, theirs)
                pairs.append((seed, ours, theirs))
            if not pairs:
                continue
            verified = all(ours.fingerprint is not None and theirs.fingerprint is not None for _, ours, theirs in pairs)
            for mode in [*pairs[0][1].modes, "overall"] if len(pairs[0][1].modes) > 1 else ["overall"]:
                per_seed = [{"seed": seed, **paired(ours.on(mode) - theirs.on(mode))} for seed, ours, theirs in pairs]
                rows.append({"method": method, "baseline": baseline, "setup": setup, "mode": mode,
                             "per_seed": per_seed, "verified": verified, **across_seeds([p["mean"] for p in per_seed])})
    return rows


def difference_rows(records: list[TestRecord], pairs: list[tuple[str, str]]) -> list[list[str]]:
    """A row per (method, baseline) pair that both ran on a multi-mode setup: the overall paired difference
    of each seed, their mean ± the t-interval over seeds, and the half-width that test-task sampling alone
    adds to that mean (task_sampling_halfwidth of the per-task differences averaged over seeds), in points."""
    multimodal = {r.setup for r in records if len(r.modes) > 1}
    table = []
    for method, baseline in pairs:
        for row in compare(records, baseline):
            if row["method"] != method or row["mode"] != "overall" or row["setup"] not in multimodal:
                continue
            by_key = {(r.method, r.seed): r for r in records if r.setup == row["setup"]}
            seeds = [p["seed"] for p in row["per_seed"]]
            per_task = np.mean([by_key[(method, s)].accuracy - by_key[(baseline, s)].accuracy for s in seeds], axis=0)
            sampling = task_sampling_halfwidth(per_task, groups=by_key[(method, seeds[0])].mode)
            per_seed = " / ".join(f"{100 * p['mean']:+.2f}" for p in row["per_seed"])
            interval = "(one seed)" if row["ci95"] is None else f"± {100 * row['ci95']:.2f}"
            table.append([f"{method} − {baseline}", row["setup"], per_seed,
                          f"{100 * row['mean']:+.2f} {interval}", f"± {100 * sampling:.2f}"])
    return table


def check_same_tasks(ours: TestRecord, theirs: TestRecord) -> None:
    """Refuse a pair whose fingerprints say they met different test tasks (both must have them to tell)."""
    if ours.fingerprint is None or theirs.fingerprint is None:
        return
    differ = np.flatnonzero(ours.fingerprint != theirs.fingerprint)
    if len(differ):
        raise ValueError(f"{ours.source} and {theirs.source} met different test tasks ({len(differ)} of "
                         f"{len(ours.fingerprint)} fingerprints "
                         f"differ, the first at task {differ[0]}); they cannot be paired")


def format_difference(row: dict) -> str:
    """`+1.23 ± 0.80 (3 seeds)` in accuracy points; one seed: the within-seed paired interval, marked."""
    if row["ci95"] is None:
        within = row["per_seed"][0]
        return f"{100 * row['mean']:+.2f} ± {100 * within['ci95']:.2f} (1 seed, paired over tasks)"
    return f"{100 * row['mean']:+.2f} ± {100 * row['ci95']:.2f} ({row['seeds']} seeds)"


def validation_curves(runs: list[dict]) -> dict[str, dict[str, dict[int, list[float]]]]:
    """setup -> method -> iteration -> the validation accuracies of its runs (one per seed) at that
    iteration, from every run's metrics.jsonl. Setups are kept apart: a specialist's single-mode accuracy
    is on another scale than a multimodal model's."""
    curves: dict[str, dict[str, dict[int, list[float]]]] = {}
    for run in runs:
        path = Path(run["path"]) / "metrics.jsonl"
        if not path.is_file():
            continue
        seen = {}
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("val/accuracy") is not None:
                seen[int(entry["step"])] = float(entry["val/accuracy"])  # a resumed run logs a step once more
        for step, value in seen.items():
            curves.setdefault(setup_name(run), {}).setdefault(label(run), {}).setdefault(step, []).append(value)
    return curves


def accuracy_at_iterations(folders: list[str]) -> dict[str, dict[str, dict[int, list[float]]]]:
    """setup -> method -> iteration -> the overall test accuracies of its runs (one per seed) at every
    iteration some run was tested at, Multi- rows included; multi-mode setups only when there are any (a
    specialist's single-mode accuracy is on another scale)."""
    curves: dict[str, dict[str, dict[int, list[float]]]] = {}
    multimodal = set()
    tests = [(tested_at(run), run) for run in every_test(folders)]  # each results.json read once
    for step in sorted({step for step, _ in tests if step is not None}):
        for record in test_records([run for at, run in tests if at == step]):
            by_step = curves.setdefault(record.setup, {}).setdefault(record.method, {})
            by_step.setdefault(step, []).append(float(record.accuracy.mean()))
            if len(record.modes) > 1:
                multimodal.add(record.setup)
    return {setup: methods for setup, methods in curves.items() if setup in multimodal} if multimodal else curves
