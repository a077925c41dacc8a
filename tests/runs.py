"""Running the real entry point on tiny configs (shared by the runner tests)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_SIZE = 16


def tiny_overrides(data_root: Path, learner: str = "protonet", modulation: str = "none") -> list[str]:
    """A run of a few seconds on the synthetic benchmark."""
    return [f"learner={learner}", f"modulation={modulation}", "backbone.channels=8", f"image_size={TINY_SIZE}",
            "train.iterations=20", "train.val_every=10", "train.val_tasks_per_mode=6", "train.meta_batch=2",
            "train.query=5", "eval.tasks_per_mode=12", "eval.meta_batch=6", "eval.query=5",
            "++modulation.embedding_dim=16", "++modulation.encoder_channels=[8,8,8,8]",
            "++learner.train_steps=1", "++learner.test_steps=1", "logger.mode=disabled", f"data.root={data_root}"]


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


def compose(overrides: list[str]):
    """The config launch.py would see, without running it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)
