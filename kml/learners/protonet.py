"""Prototypical networks with optional task modulation (ProtoNet / MProtoNet / MProtoNet+KML)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kml.data.episodes import Batch
from kml.learners import batched
from kml.learners.base import Learner, Modulation, accuracy, summarise
from kml.learners.batched import FastPath
from kml.models import Conv4, TaskModulator


class ProtoNet(Learner):
    """logits = −‖f(query) − mean_k f(support of class k)‖², f the modulated backbone; no inner loop.

    Support and query go through the backbone separately, so each set is normalised with its own batch
    statistics (as MAML's support and query forwards are) and the support-side computation, prototypes
    included, cannot depend on the query images.

    With `fast_path.batched` all tasks of a batch go through the backbone together (same numbers).
    """

    kind = "protonet"

    def __init__(
        self, backbone: Conv4, modulator: TaskModulator | None, way: int, fast_path: FastPath | None = None
    ) -> None:
        if backbone.head is not None:
            raise ValueError("ProtoNet embeds with the flattened features: build the backbone without a head")
        super().__init__(backbone, modulator, way)
        self.fast_path = fast_path or FastPath()
        self._batched_backbone = batched.BatchedBackbone()

    def prototypes(
        self, support_x: torch.Tensor, support_y: torch.Tensor, modulation: Modulation
    ) -> torch.Tensor:
        """Class means of the support embeddings: [way, D]."""
        embeddings = self.backbone(support_x, modulation=modulation)
        one_hot = F.one_hot(support_y, self.way).to(embeddings.dtype)  # [N*K, way]
        return (one_hot.T @ embeddings) / one_hot.sum(dim=0).unsqueeze(1)

    def query_logits(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor
    ) -> torch.Tensor:
        """One task: [N*Q, way] logits."""
        modulation = self.task_modulation(support_x)
        prototypes = self.prototypes(support_x, support_y, modulation)
        queries = self.backbone(query_x, modulation=modulation)
        # The explicit difference (not ‖q‖² − 2q·p + ‖p‖²) avoids cancellation between large terms.
        return -(queries.unsqueeze(1) - prototypes.unsqueeze(0)).pow(2).sum(dim=-1)

    def batched_query_logits(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor
    ) -> torch.Tensor:
        """All tasks at once: support [T, N·K, ...], query [T, N·Q, ...] → [T, N·Q, way] logits."""
        modulation = batched.task_modulation(self.modulator, support_x, len(self.backbone.blocks))
        logits = []
        parts = self.fast_path.passes(query_x)
        for part, part_modulation in zip(parts, batched.split(modulation, parts), strict=True):
            params = batched.per_task_parameters(self.backbone, part.stop - part.start)
            support = self._batched_backbone(
                self.fast_path, self.backbone, params, support_x[part], part_modulation, twice=False
            )
            one_hot = F.one_hot(support_y[part], self.way).to(support.dtype)  # [T, N*K, way]
            prototypes = (one_hot.transpose(1, 2) @ support) / one_hot.sum(dim=1).unsqueeze(2)
            queries = self._batched_backbone(
                self.fast_path, self.backbone, params, query_x[part], part_modulation, twice=False
            )
            logits.append(-(queries.unsqueeze(2) - prototypes.unsqueeze(1)).pow(2).sum(dim=-1))
        return torch.cat(logits)

    def meta_loss(self, batch: Batch) -> tuple[torch.Tensor, dict]:
        device = batch.support_x.device
        with self.fast_path.precision(device):
            if self.fast_path.use_batched(device):
                logits = self.batched_query_logits(batch.support_x, batch.support_y, batch.query_x)
                losses = batched.task_losses(logits, batch.query_y)
                return summarise(losses, batched.task_accuracies(logits.detach(), batch.query_y))
            return self._per_task_meta_loss(batch)

    def _per_task_meta_loss(self, batch: Batch) -> tuple[torch.Tensor, dict]:
        losses, accuracies = [], []
        for t in range(batch.num_tasks):
            logits = self.query_logits(batch.support_x[t], batch.support_y[t], batch.query_x[t])
            losses.append(F.cross_entropy(logits, batch.query_y[t]))
            accuracies.append(accuracy(logits.detach(), batch.query_y[t]))
        return summarise(torch.stack(losses), torch.stack(accuracies))

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> torch.Tensor:
        device = batch.support_x.device
        with self.fast_path.precision(device):
            if self.fast_path.use_batched(device):
                logits = self.batched_query_logits(batch.support_x, batch.support_y, batch.query_x)
                return batched.task_accuracies(logits, batch.query_y)
            return self._per_task_evaluate(batch)

    def _per_task_evaluate(self, batch: Batch) -> torch.Tensor:
        return torch.stack(
            [
                accuracy(
                    self.query_logits(batch.support_x[t], batch.support_y[t], batch.query_x[t]),
                    batch.query_y[t],
                )
                for t in range(batch.num_tasks)
            ]
        )
