"""kml.loop.meta_train: best.pt follows the score in the right direction; a non-finite loss stops."""
import pytest
import torch
from omegaconf import OmegaConf

from kml import checkpoint
from kml.errors import TrainingDiverged
from kml.logger import RunLogger
from kml.loop import MetaTraining, meta_train

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
