"""kml.run.loop.meta_train: best.pt follows the score in the right direction; a non-finite loss stops; a full
disk stops with one line and the same call resumes."""
import re

import pytest
import torch
from omegaconf import OmegaConf

from kml.errors import DiskFull, TrainingDiverged
from kml.run import checkpoint
from kml.run.logger import RunLogger
from kml.run.loop import MetaTraining, meta_train
from tests.full_disk import FullDisk

CFG = OmegaConf.create({"train": {"iterations": 8, "log_every": 2, "val_every": 2, "checkpoint_every": 100,
                                  "checkpoint_minutes": 5, "resume": True, "lr_halving_every": None},
                        "eval": {"checkpoint": "best"}})
SCORES = [0.5, 0.2, 0.9, 0.4]  # validation after iterations 2, 4, 6, 8


def job(losses=None) -> MetaTraining:
    model = torch.nn.Linear(2, 1)
    scores = iter(SCORES)

    def compute_gradients(iteration: int) -> dict:
        model(torch.ones(1, 2)).sum().backward()
        return {"loss": losses[iteration] if losses else 1.0}

    return MetaTraining(model, torch.optim.SGD(model.parameters(), lr=0.1), compute_gradients,
                        lambda: {"score": next(scores)}, score="score", higher_is_better=True, divergence_hint="")


@pytest.mark.parametrize("higher_is_better, best_step", [(True, 6), (False, 4)])
def test_best_checkpoint_follows_the_score(tmp_path, higher_is_better, best_step):
    training = job()
    training.higher_is_better = higher_is_better
    meta_train(training, CFG, tmp_path, RunLogger(tmp_path, mode="disabled"))
    best = checkpoint.load(tmp_path / "best.pt")
    assert best["iteration"] == best_step and best["best_val"] == SCORES[best_step // 2 - 1]
    assert checkpoint.load(tmp_path / "last.pt")["iteration"] == 8


def test_non_finite_loss_stops_before_the_step(tmp_path):
    training = job(losses=[1.0, 1.0, 1.0, float("inf"), 1.0, 1.0, 1.0, 1.0])
    with pytest.raises(TrainingDiverged, match="loss is inf at iteration 4"):
        meta_train(training, CFG, tmp_path, RunLogger(tmp_path, mode="disabled"))
    assert checkpoint.load(tmp_path / "last.pt")["iteration"] == 2  # written with the validation at 2


@pytest.mark.parametrize("full_at, failing, intact", [(4, "last.pt", 2), (6, "best.pt", 4)])
def test_a_full_disk_stops_with_one_line_and_the_same_call_resumes(tmp_path, monkeypatch, capsys,
                                                                   full_at, failing, intact):
    disk = FullDisk(monkeypatch)
    torch.manual_seed(0)
    training = job()
    scores = training.validate

    def validate_as_the_disk_fills() -> dict:  # validation runs every 2 iterations, before that step's saves
        validations.append(1)
        if 2 * len(validations) == full_at:
            disk.full = True
        return scores()
    validations = []
    training.validate = validate_as_the_disk_fills
    last = tmp_path / "last.pt"
    with pytest.raises(DiskFull, match=re.escape(f"could not write {tmp_path / failing} (No space left on device; ")
                       + f".*the previous checkpoint {re.escape(str(last))} is intact"):
        meta_train(training, CFG, tmp_path, RunLogger(tmp_path, mode="disabled"))
    assert checkpoint.load(last)["iteration"] == intact

    disk.full = False
    meta_train(job(), CFG, tmp_path, RunLogger(tmp_path, mode="disabled"))
    assert f"resuming from {last} at iteration {intact}" in capsys.readouterr().out
    torch.manual_seed(0)
    meta_train(job(), CFG, tmp_path / "whole", RunLogger(tmp_path / "whole", mode="disabled"))
    resumed, whole = checkpoint.load(last), checkpoint.load(tmp_path / "whole" / "last.pt")
    assert resumed["iteration"] == 8 and all(torch.equal(resumed["model"][k], whole["model"][k]) for k in whole["model"])
