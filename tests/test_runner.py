"""The experiment runner through its real entry point (launch.py) on tiny synthetic configs."""
import json
import signal
import time

import pytest
import torch
import yaml

from kml.analysis import report
from kml.run import checkpoint
from kml.run.train import per_mode_accuracy
from tests.runs import launch, start, tiny_overrides


def read_results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.parametrize("learner, modulation", [("protonet", "kml"), ("maml", "film")])
def test_end_to_end_training_writes_results(synthetic_root, tmp_path, learner, modulation):
    run_dir = tmp_path / "run"
    done = launch(tiny_overrides(synthetic_root, learner, modulation) + [f"hydra.run.dir={run_dir}"])
    assert done.returncode == 0, done.stderr[-2000:]
    results = read_results(run_dir)
    assert results["method"] == {"protonet": "MProtoNet+KML", "maml": "MMAML"}[learner]
    assert (results["benchmark"], results["way"], results["shot"]) == ("synthetic", 5, 1)
    assert set(results["per_mode"]) == {"synthetic_glyphs", "synthetic_shapes", "synthetic_gratings"}
    for summary in [results["overall"], *results["per_mode"].values()]:
        assert 0.0 <= summary["mean"] <= 1.0 and summary["ci95"] >= 0.0
    assert results["overall"]["n"] == 36 and all(s["n"] == 12 for s in results["per_mode"].values())
    assert "overall" in done.stdout and "accuracy (%)" in done.stdout
    assert {"best.pt", "last.pt", "metrics.jsonl", ".hydra"} <= {p.name for p in run_dir.iterdir()}
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in line for line in lines) and any("val/accuracy" in line for line in lines)
    # Training accuracy is logged per mode too, each a mean of accuracies in [0, 1].
    per_mode = {key for line in lines for key in line if key.startswith("train/synthetic_")}
    assert per_mode == {f"train/{m}/accuracy" for m in results["per_mode"]}
    assert all(0.0 <= line[key] <= 1.0 for line in lines for key in per_mode & set(line))
    assert checkpoint.load(run_dir / "last.pt")["iteration"] == 20


def test_per_mode_training_accuracy_averages_each_modes_tasks():
    modes = ["a", "b", "c"]
    assert per_mode_accuracy([1.0, 0.5, 0.0, 0.25], [0, 1, 0, 1], modes) == {"a/accuracy": 0.5, "b/accuracy": 0.375}
    assert per_mode_accuracy([1.0, 0.0], [0, 0], ["a"]) == {}  # single-mode runs have only train/accuracy


def test_killed_run_resumes_to_the_same_result(synthetic_root, tmp_path):
    args = tiny_overrides(synthetic_root, "maml", "kml") + ["train.iterations=30", "train.checkpoint_every=2",
                                                            "eval.at=[28]"]
    reference = launch(args + [f"hydra.run.dir={tmp_path / 'whole'}"])
    assert reference.returncode == 0, reference.stderr[-2000:]

    interrupted = tmp_path / "interrupted"
    process = start(args + [f"hydra.run.dir={interrupted}"])
    deadline = time.monotonic() + 120
    while not (interrupted / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = checkpoint.load(interrupted / "last.pt")["iteration"]
    assert 0 < killed_at < 30, "the kill must land mid-training for this test to mean anything"
    assert not (interrupted / "results.json").exists()
    # The killed job's lock is left behind, naming it; the same command takes it over.
    assert json.loads((interrupted / "run.lock").read_text())["pid"] == process.pid

    resumed = launch(args + [f"hydra.run.dir={interrupted}"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"at iteration {killed_at}" in resumed.stdout + resumed.stderr
    assert json.loads((interrupted / "run.lock").read_text())["pid"] != process.pid
    assert read_results(interrupted) == read_results(tmp_path / "whole")
    # The milestone it was killed before is tested once, on resume, as the uninterrupted run tested it.
    assert "iteration 28" in resumed.stdout and killed_at < 28
    assert read_results(interrupted / "milestones" / "28") == read_results(tmp_path / "whole" / "milestones" / "28")
    a = checkpoint.load(tmp_path / "whole" / "last.pt")["model"]
    b = checkpoint.load(interrupted / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_only_from_checkpoint_reproduces_the_test_result(synthetic_root, tmp_path):
    train_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    assert launch(tiny_overrides(synthetic_root) + [f"hydra.run.dir={train_dir}"]).returncode == 0
    # The model comes from the checkpoint's own config, even when this command names other groups.
    done = launch(tiny_overrides(synthetic_root, "maml", "kml") + [
        "eval_only=true", f"checkpoint={train_dir / 'best.pt'}", f"hydra.run.dir={eval_dir}"])
    assert done.returncode == 0, done.stderr[-2000:]
    evaluated, trained = read_results(eval_dir), read_results(train_dir)
    # The same test of the same weights; how long they had trained a checkpoint alone cannot say.
    assert evaluated.pop("iteration") is None and trained.pop("iteration") == 20
    assert evaluated == trained and evaluated["weights_iteration"] == checkpoint.load(train_dir / "best.pt")["iteration"]
    assert not (eval_dir / "last.pt").exists()


@pytest.mark.parametrize("launcher", ["basic", "submitit_local"])
def test_multirun_sweep(synthetic_root, tmp_path, launcher):
    sweep = tmp_path / "sweep"
    done = launch(["-m", f"hydra/launcher={launcher}", "seed=0,1", f"hydra.sweep.dir={sweep}",
                   *tiny_overrides(synthetic_root)], timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {yaml.safe_load((p.parent / ".hydra" / "config.yaml").read_text())["seed"]: p
            for p in sweep.glob("*/results.json")}
    assert sorted(runs) == [0, 1]
    # Each job locks its own folder, not the sweep's.
    assert all((path.parent / "run.lock").is_file() for path in runs.values()) and not (sweep / "run.lock").exists()
    first, second = (json.loads(runs[seed].read_text()) for seed in (0, 1))
    assert first["overall"] != second["overall"]  # different seeds really ran
    assert report.main([str(sweep)]) == 0 and (sweep / "report.md").is_file()


def test_wandb_offline_run_folder(synthetic_root, tmp_path):
    run_dir = tmp_path / "run"
    args = [a for a in tiny_overrides(synthetic_root) if not a.startswith("logger.mode")]
    done = launch(args + ["logger.mode=offline", "logger.tags=[smoke]", f"hydra.run.dir={run_dir}"])
    assert done.returncode == 0, done.stderr[-2000:]
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    assert offline.name.endswith(run_id) and (offline / f"run-{run_id}.wandb").stat().st_size > 0
    assert list((offline / "files" / "media" / "table").glob("test/results_*.table.json"))


def test_each_split_of_each_mode_is_opened_once_per_run(synthetic_root, tmp_path, monkeypatch):
    """The check, training, every validation, the test and the transference hook share one opened copy of
    each split (before, every validation and every sampler opened its splits again)."""
    from kml.config import compose
    from kml.data.sampler import SplitDataset
    from kml.run import train
    from kml.run.logger import RunLogger

    opened = []
    load = SplitDataset.load.__func__

    def counting_load(cls, root, name, image_size, split, *args, **kwargs):
        opened.append((name, split))
        return load(cls, root, name, image_size, split, *args, **kwargs)

    monkeypatch.setattr(SplitDataset, "load", classmethod(counting_load))
    cfg = compose(tiny_overrides(synthetic_root) + ["transference=on", "train.val_every=5"])
    logger = RunLogger(tmp_path, mode="disabled")
    train.run(cfg, tmp_path, logger)  # 4 validations, transference at 10 and 20, the test
    logger.finish()
    modes = ("synthetic_glyphs", "synthetic_shapes", "synthetic_gratings")
    assert sorted(opened) == sorted((mode, split) for mode in modes for split in ("train", "val", "test"))
