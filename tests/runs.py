"""Running the real entry point on tiny configs (shared by the runner tests)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from kml.config import CONF_DIR, compose  # noqa: F401  (compose: the config launch.py would see)

REPO = Path(__file__).resolve().parents[1]
TINY_SIZE = int(OmegaConf.load(CONF_DIR / "debug" / "tiny.yaml").image_size)  # debug=tiny's images


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


def error_line(done: subprocess.CompletedProcess) -> str:
    """The one `error:` line of a run that stopped on a user error (exit code 2, no traceback)."""
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return lines[0]
