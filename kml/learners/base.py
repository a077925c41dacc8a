"""The interface every learner offers the runner."""

from __future__ import annotations

import torch
from torch import nn

from kml.data.episodes import Batch
from kml.models import Conv4, LayerModulation, TaskModulator

Modulation = list[LayerModulation | None]


class Learner(nn.Module):
    """A backbone plus an optional task modulator (encoder + generator).

    meta_loss(batch) -> (loss, metrics): the mean query loss over the batch's tasks, with a graph back to
        every trainable parameter; metrics hold the floats "loss" and "accuracy" and the list
        "task_accuracy" (one float per task, in batch order).
    evaluate(batch) -> [T] query accuracies, without building any outer graph.

    `batch` is a kml.data.episodes.Batch already on the learner's device with float images in [0, 1].
    Call evaluate() plainly or under torch.no_grad(), which it tolerates; MAML needs autograd for its
    inner loop and turns it back on itself.
    """

    kind: str = ""  # "maml" | "protonet"

    def __init__(self, backbone: Conv4, modulator: TaskModulator | None, way: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.modulator = modulator
        self.way = way

    @property
    def modulation_kind(self) -> str:
        return "none" if self.modulator is None else self.modulator.kind

    def task_modulation(self, support_x: torch.Tensor) -> Modulation:
        """One task's modulation, computed from its support images [N*K, C, H, W] only."""
        if self.modulator is None:
            return [None] * len(self.backbone.blocks)
        return self.modulator(support_x)

    def meta_loss(self, batch: Batch) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def evaluate(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError


def detach_modulation(modulation: Modulation) -> Modulation:
    return [None if m is None else m.detach() for m in modulation]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=-1) == labels).float().mean()


def summarise(losses: torch.Tensor, accuracies: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Mean loss over the [T] task losses (kept differentiable) and metrics for logging: mean loss and
    accuracy as floats, and every task's accuracy (the runner averages those per mode)."""
    loss = losses.mean()
    # One device→host copy for all numbers: a sync per iteration, not one per metric.
    values = torch.cat([loss.detach().view(1), accuracies.mean().view(1), accuracies.detach()]).tolist()
    return loss, {"loss": values[0], "accuracy": values[1], "task_accuracy": values[2:]}
