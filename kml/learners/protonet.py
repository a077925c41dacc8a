"""Prototypical networks with optional task modulation (ProtoNet / MProtoNet / MProtoNet+KML)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kml.data.episodes import Batch
from kml.errors import ConfigError
from kml.learners import batched
from kml.learners.base import Learner, summarise
from kml.learners.batched import FastPath
from kml.models import TaskModulator

TRANSDUCTIVE = ("none", "released", "corrected")


class ProtoNet(Learner):
    """logits = −‖f(query) − p_k‖², p_k the mean of f(support of class k), f the modulated backbone; no
    inner loop.

    Support and query go through the backbone separately, so each set is normalised with its own batch
    statistics (as MAML's support and query forwards are) and, by default, the support-side computation,
    prototypes included, cannot depend on the query images.

    Two switches reproduce the authors' released code (KML-Classification; docs/protocols.md), where the
    published ProtoNet-family numbers come from:
    transductive: after the prototypes are built, each is recomputed once from the query set (a soft
        k-means step): p_j = (S_j + Σ_q w_qj f_q) / (K + Σ_q w_qj), w = softmax over classes of
        −‖f_q − p_j‖². "released": S_j sums the support rows j·K … (j+1)·K − 2 in episode order, one row
        short (in 1-shot S_j is empty), as the released code does (whose loaders leave the row blocks in a
        random order, so at K > 1 those rows are another class's four times in five in 5-way;
        `data.episode_order=released`, on by default with this rule, reproduces that order); "corrected": S_j sums every support
        feature labelled j; "none": no refinement (the paper's equations).
    query_task_embedding: the query features (and so the refinement) are computed under a modulation
        from the query images' own task embedding, as the released code does; the support features
        keep the support set's.

    With `fast_path.batched` all tasks of a batch go through the backbone together (same numbers).
    """

    def __init__(
        self,
        backbone: nn.Module,
        modulator: TaskModulator | None,
        way: int,
        *,
        transductive: str,
        query_task_embedding: bool,
        fast_path: FastPath | None = None,
    ) -> None:
        if backbone.head is not None:
            raise ConfigError("learner=protonet embeds with the flattened features: build the backbone without a head")
        if transductive not in TRANSDUCTIVE:
            raise ConfigError(f"learner.transductive={transductive!r} is not valid; choose one of "
                              f"{', '.join(TRANSDUCTIVE)}")
        super().__init__(backbone, modulator, way, fast_path)
        self.transductive = transductive
        self.query_task_embedding = bool(query_task_embedding)
        self._batched_backbone = batched.BatchedBackbone()

    def settings_summary(self) -> str | None:
        if self.transductive == "none" and not self.query_task_embedding:
            return None
        embedding = "query images' own" if self.query_task_embedding else "support set's"
        return (f"transductive prototypes: {self.transductive}; query features under the {embedding} "
                "task embedding")

    def task_logits(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, *, outer_graph: bool = True
    ) -> torch.Tensor:
        """One task: [N*Q, way] logits (no inner loop, so `outer_graph` changes nothing)."""
        support_modulation = self.task_modulation(support_x)
        support = self.backbone(support_x, modulation=support_modulation)
        query_modulation = self.task_modulation(query_x) if self.query_task_embedding else support_modulation
        queries = self.backbone(query_x, modulation=query_modulation)
        return self.logits(support, support_y, queries)

    def logits(self, support: torch.Tensor, support_y: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Features of one task [N*K, D] / [N*Q, D], or of T tasks with a leading T → [..., N*Q, way]."""
        prototypes = class_means(support, support_y, self.way)
        if self.transductive != "none":
            prototypes = refine_prototypes(prototypes, support, support_y, queries, self.transductive, self.way)
        return -squared_distances(queries, prototypes)

    def batched_query_logits(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor
    ) -> torch.Tensor:
        """All tasks at once: support [T, N·K, ...], query [T, N·Q, ...] → [T, N·Q, way] logits."""
        layers = len(self.backbone.layer_shapes)
        support_modulation = batched.task_modulation(self.modulator, support_x, layers)
        query_modulation = (batched.task_modulation(self.modulator, query_x, layers)
                            if self.query_task_embedding else support_modulation)
        logits = []
        parts = self.fast_path.passes(query_x)
        for part, part_support, part_query in zip(parts, batched.split(support_modulation, parts),
                                                  batched.split(query_modulation, parts), strict=True):
            params = batched.per_task_parameters(self.backbone, part.stop - part.start)
            support = self._batched_backbone(
                self.fast_path, self.backbone, params, support_x[part], part_support, twice=False
            )
            queries = self._batched_backbone(
                self.fast_path, self.backbone, params, query_x[part], part_query, twice=False
            )
            logits.append(self.logits(support, support_y[part], queries))
        return torch.cat(logits)

    def meta_loss(self, batch: Batch) -> tuple[torch.Tensor, dict]:
        device = batch.support_x.device
        with self.fast_path.precision(device):
            if self.runs_batched(device):
                logits = self.batched_query_logits(batch.support_x, batch.support_y, batch.query_x)
                losses = batched.task_losses(logits, batch.query_y)
                return summarise(losses, batched.task_accuracies(logits.detach(), batch.query_y))
            return self.per_task_meta_loss(batch)

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> torch.Tensor:
        device = batch.support_x.device
        with self.fast_path.precision(device):
            if self.runs_batched(device):
                logits = self.batched_query_logits(batch.support_x, batch.support_y, batch.query_x)
            else:
                logits = torch.stack([self.task_logits(batch.support_x[t], batch.support_y[t], batch.query_x[t])
                                      for t in range(batch.num_tasks)])
        return batched.task_accuracies(logits, batch.query_y)


def class_means(features: torch.Tensor, labels: torch.Tensor, way: int) -> torch.Tensor:
    """[..., n, D] features, [..., n] labels → [..., way, D] class means."""
    one_hot = F.one_hot(labels, way).to(features.dtype)  # [..., n, way]
    return (one_hot.transpose(-1, -2) @ features) / one_hot.sum(dim=-2).unsqueeze(-1)


def squared_distances(queries: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """[..., q, D] and [..., way, D] → [..., q, way]. The explicit difference (not ‖q‖² − 2q·p + ‖p‖²)
    avoids cancellation between large terms."""
    return (queries.unsqueeze(-2) - prototypes.unsqueeze(-3)).pow(2).sum(dim=-1)


def refine_prototypes(
    prototypes: torch.Tensor, support: torch.Tensor, support_y: torch.Tensor, queries: torch.Tensor, how: str,
    way: int,
) -> torch.Tensor:
    """One soft k-means step from the query set (see ProtoNet): (S_j + Σ_q w_qj f_q) / (K_j + Σ_q w_qj)."""
    weights = torch.softmax(-squared_distances(queries, prototypes), dim=-1)  # [..., q, way]
    weighted_sum = weights.transpose(-1, -2) @ queries  # [..., way, D]
    mass = weights.sum(dim=-2).unsqueeze(-1)  # [..., way, 1]
    if how == "corrected":
        one_hot = F.one_hot(support_y, way).to(support.dtype)
        support_sum = one_hot.transpose(-1, -2) @ support
        count = one_hot.sum(dim=-2).unsqueeze(-1)
    else:  # released: rows j·K … (j+1)·K − 2 of the episode, whatever their labels; divided by K
        shot = support.shape[-2] // way
        support_sum = support.unflatten(-2, (way, shot))[..., : shot - 1, :].sum(dim=-2)
        count = shot
    return (support_sum + weighted_sum) / (count + mass)
