"""Finished runs as the reports read them: results.json (and beside it test_tasks.npz, metrics.jsonl,
transference/) under any folders, and the names a run is filed under.

A run tested at milestones (eval.at) keeps each test in milestones/<iteration>/ with its own results.json
and test_tasks.npz; its own results.json is its test at its last iteration. A report reads the runs' own
tests, or with `at` every test taken at that iteration, milestone or not: a 4,800-iteration run's test at
1,200 pairs with a 1,200-iteration run's test."""

from __future__ import annotations

import json
from pathlib import Path

# `benchmark=custom benchmark.modes=[...]` is one name for any list of modes: such runs are set apart by their modes.
CUSTOM_BENCHMARK = "custom"


def find_results(folders: list[str], at: int | None = None) -> list[dict]:
    """Every run's own test under `folders` (at=None), or every test taken at iteration `at`; each with
    the folder of its results.json as "path"."""
    return [run for run in every_test(folders) if (not run.get("milestone") if at is None else tested_at(run) == at)]


def every_test(folders: list[str]) -> list[dict]:
    """Every results.json under `folders`, the milestones' included."""
    tests = []
    for folder in folders:
        path = Path(folder)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; pass run or sweep folders (e.g. outputs/NAME)")
        tests += [{**json.loads(file.read_text()), "path": str(file.parent)} for file in sorted(path.rglob("results.json"))]
    return tests


def iterations_tested(folders: list[str]) -> list[int]:
    """Every iteration at which some run under `folders` was tested (its milestones and its last)."""
    return sorted({step for step in map(tested_at, every_test(folders)) if step is not None})


def tested_at(run: dict) -> int | None:
    """How many iterations the tested model had trained: results.json's, else (runs written before it was
    recorded) the run's train.iterations; None for an eval_only test of a checkpoint."""
    if "iteration" in run:
        return run["iteration"]
    saved = saved_config(run)
    return None if saved is None or saved.get("eval_only") else int(saved["train"]["iterations"])


def saved_config(run: dict) -> dict | None:
    """The run folder's .hydra/config.yaml, for what results.json did not record before it had it."""
    config = Path(run["path"]) / ".hydra" / "config.yaml"
    if not config.is_file():
        return None
    import yaml

    return yaml.safe_load(config.read_text())


def benchmark_name(run: dict) -> str:
    """The setup a run belongs to: its benchmark, or for a custom one its modes (e.g. omniglot+my_scans)."""
    return "+".join(run["per_mode"]) if run["benchmark"] == CUSTOM_BENCHMARK else run["benchmark"]


def setup_name(run: dict) -> str:
    return f"{benchmark_name(run)} {run['way']}w{run['shot']}s"


def label(run: dict) -> str:
    """The row a run belongs to: its method, marked with its protocol unless it is the paper's, and with
    its `variant` when it has one (e.g. `ProtoNet [released]`, `ProtoNet [transductive]`)."""
    marks = [run.get("protocol", "paper"), run.get("variant")]
    return " ".join([run["method"], *(f"[{m}]" for m in marks if m and m != "paper")])


def run_seed(run: dict) -> int:
    """The training seed: results.json's, else the run folder's Hydra config (runs written before it had one)."""
    if "seed" in run:
        return int(run["seed"])
    saved = saved_config(run)
    return int(saved.get("seed", 0)) if saved else 0
