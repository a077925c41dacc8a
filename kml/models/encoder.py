"""The task encoder h of MMAML / KML: support images of one task → task embedding v."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kml.models.functional import BatchStatNorm2d, task_batch_norm


class TaskEncoder(nn.Module):
    """4 × [conv3×3 stride 2 → BN → ReLU], spatial mean, Linear + ReLU per image, mean over images.

    The learners give it the support set, so the query set cannot influence v. The official KML code also
    feeds it the query images, which leaks query information into the modulation; ProtoNet's
    `query_task_embedding=true` (protocol=released) reproduces that by encoding the query images too.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], embedding_dim: int) -> None:
        super().__init__()
        widths = [in_channels, *channels]
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1)
            for c_in, c_out in zip(widths, widths[1:], strict=False)
        )
        # Batch statistics over the task's support images, like the backbone (see functional.batch_norm).
        self.norms = nn.ModuleList(BatchStatNorm2d(c) for c in channels)
        self.project = nn.Linear(channels[-1], embedding_dim)
        self.embedding_dim = embedding_dim

    def forward(self, support_x: torch.Tensor) -> torch.Tensor:
        """support_x [N*K, C, H, W] of one task → v [embedding_dim]."""
        h = support_x
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = F.relu(norm(conv(h)))
        return self._embedding(h, tasks=1)[0]

    def forward_tasks(self, support_x: torch.Tensor) -> torch.Tensor:
        """support_x [T, N*K, C, H, W] of T tasks → v [T, embedding_dim]: the same as `forward` task by
        task, with the tasks' images in one batch (the weights are shared) and per-task BN statistics.
        The batched learners' path; not for use under vmap (see functional.fused_batch_norm)."""
        tasks = support_x.shape[0]
        h = support_x.flatten(0, 1)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = F.relu(task_batch_norm(conv(h), tasks, norm.weight, norm.bias, norm.eps))
        return self._embedding(h, tasks)

    def _embedding(self, h: torch.Tensor, tasks: int) -> torch.Tensor:
        """Feature maps [T·N*K, C, H, W] → spatial mean, Linear + ReLU per image, mean over each task's images."""
        per_image = F.relu(self.project(h.mean(dim=(2, 3))))
        return per_image.view(tasks, -1, per_image.shape[-1]).mean(dim=1)
