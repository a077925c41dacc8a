"""Running the real entry point on tiny configs (shared by the runner tests)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kml.config import compose  # noqa: F401  (the config launch.py would see; used by the tests)

REPO = Path(__file__).resolve().parents[1]


def tiny_overrides(data_root: Path, learner: str = "protonet", modulation: str = "none") -> list[str]:
    """A run of a few seconds on the synthetic benchmark (conf/debug/tiny.yaml)."""
    return ["debug=tiny", f"learner={learner}", f"modulation={modulation}", "logger.mode=disabled",
            f"data.root={data_root}"]


def launch(args: list[str], timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "launch.py", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, **popen)


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "launch.py", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
