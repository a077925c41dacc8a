"""Stateless layers shared by the backbone and the task encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def batch_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float = 1e-5
) -> torch.Tensor:
    """Normalise each channel of x [B, C, H, W] with the statistics of this very batch.

    There are no running statistics, in training or at test time: this is the transductive batch norm of
    the MAML and MMAML originals, where every support or query set is normalised with its own mean and
    variance. Written by hand (no buffers, no in-place updates) so that it composes with
    `torch.func.functional_call`, double backward and `torch.vmap` over tasks (kml.analysis.transference runs whole
    learners under vmap; tests/test_batched.py checks second-order gradients under vmap).
    """
    var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False, keepdim=True)  # one pass for both
    normalised = (x - mean) * torch.rsqrt(var + eps)
    if weight is None:  # no affine parameters (MMAML's released backbone)
        return normalised
    return normalised * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def fused_batch_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float = 1e-5
) -> torch.Tensor:
    """`batch_norm` with torch's fused kernels (forward, backward and double backward): same maths, fewer
    passes over memory, ~20% off a second-order MAML step on CPU.

    Not for use under `torch.vmap`: torch's native batch norm gives wrong second-order gradients there
    (an open upstream bug), which is why the modules use `batch_norm`. The batched MAML / ProtoNet path
    (kml.learners.batched) calls it on plain tensors with tasks laid along the channel axis.
    """
    return F.batch_norm(x, None, None, weight, bias, training=True, momentum=0.0, eps=eps)


def task_batch_norm(
    x: torch.Tensor, tasks: int, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """x [T·B, C, H, W], T tasks of B images each, every task normalised with its own statistics.

    The fused kernels on the [B, T·C, H, W] layout, where per-channel statistics are per-task ones; the
    two layout changes copy whole images, and cost less than `batch_norm`'s passes over strided data.
    """
    images, channels, *spatial = x.shape
    per_task = images // tasks
    y = x.view(tasks, per_task, channels, *spatial).transpose(0, 1).reshape(per_task, tasks * channels, *spatial)
    y = fused_batch_norm(y, weight.repeat(tasks), bias.repeat(tasks), eps)
    return y.view(per_task, tasks, channels, *spatial).transpose(0, 1).reshape(x.shape)


class BatchStatNorm2d(nn.Module):
    """BatchNorm2d holding only its affine parameters (none with affine=False); always uses batch
    statistics (see batch_norm)."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.num_features, self.eps = num_features, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return batch_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        affine = "" if self.weight is not None else ", affine=False"
        return f"{self.num_features}, eps={self.eps}{affine}, batch statistics only"
