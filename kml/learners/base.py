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
        every trainable parameter; metrics hold floats, at least "loss" and "accuracy".
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

    def meta_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def evaluate(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError


def detach_modulation(modulation: Modulation) -> Modulation:
    return [None if m is None else m.detach() for m in modulation]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=-1) == labels).float().mean()


def summarise(
    losses: list[torch.Tensor], accuracies: list[torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean loss over tasks (kept differentiable) and float metrics for logging."""
    loss = torch.stack(losses).mean()
    # One device→host copy for both numbers: a sync per iteration, not one per metric.
    loss_value, accuracy_value = torch.stack([loss.detach(), torch.stack(accuracies).mean()]).tolist()
    return loss, {"loss": loss_value, "accuracy": accuracy_value}
