"""Finished runs as the reports read them: results.json (and beside it test_tasks.npz, metrics.jsonl,
transference/) under any folders, and the names a run is filed under."""

from __future__ import annotations

import json
from pathlib import Path

# `benchmark=custom benchmark.modes=[...]` is one name for any list of modes: such runs are set apart by their modes.
CUSTOM_BENCHMARK = "custom"


def find_results(folders: list[str]) -> list[dict]:
    """Every results.json under `folders`, each with its folder as "path"."""
    runs = []
    for folder in folders:
        path = Path(folder)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; pass run or sweep folders (e.g. outputs/NAME)")
        for file in sorted(path.rglob("results.json")):
            runs.append({**json.loads(file.read_text()), "path": str(file.parent)})
    return runs


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
    config = Path(run["path"]) / ".hydra" / "config.yaml"
    if config.is_file():
        import yaml

        return int(yaml.safe_load(config.read_text()).get("seed", 0))
    return 0
