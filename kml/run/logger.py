"""Run logging: always a local metrics.jsonl; Weights & Biases on top when enabled.

W&B is an observer, never a dependency of training: every call into it is guarded, and a
failure turns it off with one warning while the run carries on (and metrics.jsonl keeps all).
metrics.jsonl is the record: a full disk while writing it stops the run (DiskFull), with no torn line.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import time
import warnings
from pathlib import Path

from kml.errors import ConfigError
from kml.run.safe_write import append

MODES = ("online", "offline", "disabled")


def resolve_mode(mode: str | None) -> str:
    """`auto`/None: online when an API key is configured, else offline."""
    if mode in (None, "auto"):
        has_key = bool(os.environ.get("WANDB_API_KEY")) or "api.wandb.ai" in _netrc()
        return "online" if has_key else "offline"
    if mode not in MODES:
        raise ConfigError(f"logger.mode={mode!r} is not valid; choose one of: auto, {', '.join(MODES)}")
    return mode


def _netrc() -> str:
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return path.read_text(errors="ignore") if path.is_file() else ""


class RunLogger:
    def __init__(self, run_dir: Path, mode: str | None = "auto", project: str = "kml", entity: str | None = None,
                 group: str | None = None, name: str | None = None, tags: list[str] | None = None,
                 config: dict | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        # A raw descriptor, one write per line: a full disk cuts the failed line off again (kml/safe_write.py).
        self._jsonl = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.wandb = None
        mode = resolve_mode(mode)
        if mode != "disabled":
            self._start_wandb(mode, project, entity, group, name, tags, config)

    def _start_wandb(self, mode, project, entity, group, name, tags, config):
        import wandb

        # A stable id kept in the run folder makes a resumed run continue the same W&B run.
        id_file = self.run_dir / "wandb_id.txt"
        if not id_file.exists():
            id_file.write_text(secrets.token_hex(4))
        kwargs = dict(project=project, entity=entity, group=group, name=name, tags=tags, config=config,
                      dir=str(self.run_dir), id=id_file.read_text().strip(), resume="allow")
        for attempt in (mode, "offline") if mode == "online" else (mode,):
            try:
                settings = wandb.Settings(init_timeout=60, silent=True)
                self.wandb = wandb.init(mode=attempt, settings=settings, **kwargs)
                return
            except Exception as err:  # noqa: BLE001 - any W&B failure must not stop training
                warnings.warn(f"W&B {attempt} start failed ({err}); continuing without it" if attempt == "offline"
                              else f"W&B online start failed ({err}); retrying offline", stacklevel=3)

    def _guard(self, action, *args, **kwargs):
        if self.wandb is None:
            return
        try:
            action(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            warnings.warn(f"W&B logging failed ({err}); turning W&B off, metrics.jsonl continues", stacklevel=3)
            self.wandb = None

    def log(self, metrics: dict, step: int) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        line = json.dumps({"step": step, "time": time.time(), **clean}) + "\n"
        append(self._jsonl, line.encode(), self.metrics_path)
        self._guard(lambda: self.wandb.log(metrics, step=step))

    def log_table(self, key: str, columns: list[str], rows: list[list]) -> None:
        def table():
            import wandb

            self.wandb.log({key: wandb.Table(columns=columns, data=rows)})

        self._guard(table)

    def log_image(self, key: str, path: Path, step: int | None = None) -> None:
        def image():
            import wandb

            self.wandb.log({key: wandb.Image(str(path))}, step=step)

        self._guard(image)

    def summary(self, values: dict) -> None:
        self._guard(lambda: self.wandb.summary.update(values))

    def finish(self, exit_code: int = 0) -> None:
        os.close(self._jsonl)
        self._guard(lambda: self.wandb.finish(exit_code=exit_code))
        self.wandb = None
