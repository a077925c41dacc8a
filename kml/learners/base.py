"""The interface every learner offers the runner, the transference analysis and the benchmarks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kml.data.episodes import Batch
from kml.learners.batched import FastPath, check_backbone, has_batched_forward
from kml.models import LayerModulation, TaskModulator

Modulation = list[LayerModulation | None]


class Learner(nn.Module):
    """A backbone plus an optional task modulator (encoder + generator).

    A learner declares what the builders and the analyses need to know about it:
    needs_head: its backbone ends in a `way`-output linear head (MAML) instead of returning the
        flattened features (ProtoNet); kml.learners.build_learner reads it.
    task_logits(support_x, support_y, query_x, outer_graph): one task's query logits, the per-task
        reference every fast path is tested against, and the term the transference analysis
        differentiates (`outer_graph=False`: no graph back to the meta-parameters is needed).

    meta_loss(batch) -> (loss, metrics): the mean query loss over the batch's tasks, with a graph back to
        every trainable parameter; metrics hold the floats "loss" and "accuracy" and the list
        "task_accuracy" (one float per task, in batch order).
    evaluate(batch) -> [T] query accuracies, without building any outer graph.

    `batch` is a kml.data.episodes.Batch already on the learner's device with float images in [0, 1].
    Call evaluate() plainly or under torch.no_grad(), which it tolerates; MAML needs autograd for its
    inner loop and turns it back on itself.

    The backbone offers `forward(x, modulation=None)`, `layer_shapes` (what a modulator is sized by) and,
    optionally, `batched_forward` for the fast path (kml/models/backbones.py).
    """

    needs_head: bool = False

    def __init__(self, backbone: nn.Module, modulator: TaskModulator | None, way: int,
                 fast_path: FastPath | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.modulator = modulator
        self.way = way
        self.method_name = type(self).__name__  # build_learner sets the paper's name from the config
        self.fast_path = fast_path or FastPath()
        check_backbone(self.fast_path, backbone)

    def runs_batched(self, device: torch.device) -> bool:
        """Whether a batch's tasks run together: the fast path asks for it and the backbone has its own
        `batched_forward` (kml.learners.batched); otherwise the per-task loop."""
        return has_batched_forward(self.backbone) and self.fast_path.use_batched(device)

    def task_modulation(self, images: torch.Tensor) -> Modulation:
        """One task's modulation, computed from its images [N*K, C, H, W] (its support set)."""
        if self.modulator is None:
            return [None] * len(self.backbone.layer_shapes)
        return self.modulator(images)

    def task_logits(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, *, outer_graph: bool = True
    ) -> torch.Tensor:
        raise NotImplementedError

    def task_loss(
        self,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        query_y: torch.Tensor,
        *,
        outer_graph: bool = True,
    ) -> torch.Tensor:
        """One task's meta-training loss: the query loss after the learner has used the support set."""
        logits = self.task_logits(support_x, support_y, query_x, outer_graph=outer_graph)
        return F.cross_entropy(logits, query_y)

    def meta_loss(self, batch: Batch) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def evaluate(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def settings_summary(self) -> str | None:
        """One line on the learner's own settings for the start of a run, or None."""
        return None

    def per_task_meta_loss(self, batch: Batch) -> tuple[torch.Tensor, dict]:
        """meta_loss as the plain loop over tasks: the reference implementation."""
        losses, accuracies = [], []
        for t in range(batch.num_tasks):
            logits = self.task_logits(batch.support_x[t], batch.support_y[t], batch.query_x[t])
            losses.append(F.cross_entropy(logits, batch.query_y[t]))
            accuracies.append(accuracy(logits.detach(), batch.query_y[t]))
        return summarise(torch.stack(losses), torch.stack(accuracies))


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
