import json

import pytest
import wandb

from kml.run.logger import RunLogger, resolve_mode


def test_auto_mode_is_offline_without_an_api_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    with pytest.raises(ValueError, match="choose one of: auto, online, offline, disabled"):
        resolve_mode("sometimes")


def test_a_failing_wandb_start_warns_and_metrics_jsonl_still_records(monkeypatch, tmp_path):
    tried = []

    def broken_init(**kwargs):
        tried.append(kwargs["mode"])
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(UserWarning) as warned:
        logger = RunLogger(tmp_path, mode="online")
    messages = [str(w.message) for w in warned]
    assert any("retrying offline" in m for m in messages) and any("continuing without it" in m for m in messages)
    assert tried == ["online", "offline"] and logger.wandb is None
    logger.log({"train/loss": 1.5, "bad": float("nan")}, step=3)
    logger.finish(0)
    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line)["train/loss"] == 1.5 and json.loads(line)["bad"] is None


def test_a_failing_wandb_log_turns_wandb_off(tmp_path):
    class Broken:
        def log(self, *args, **kwargs):
            raise OSError("disk full")

    logger = RunLogger(tmp_path, mode="disabled")
    logger.wandb = Broken()
    with pytest.warns(UserWarning, match="turning W&B off"):
        logger.log({"x": 1.0}, step=1)
    assert logger.wandb is None
    logger.log({"x": 2.0}, step=2)  # goes on without W&B
    logger.finish(0)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
