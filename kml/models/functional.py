"""Stateless layers shared by the backbone and the task encoder."""

from __future__ import annotations

import torch
from torch import nn


def batch_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Normalise each channel of x [B, C, H, W] with the statistics of this very batch.

    There are no running statistics, in training or at test time: this is the transductive batch norm of
    the MAML and MMAML originals, where every support or query set is normalised with its own mean and
    variance. Written by hand (no buffers, no in-place updates) so that it composes with
    `torch.func.functional_call`, double backward and, later, `torch.vmap` over tasks.
    """
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    normalised = (x - mean) * torch.rsqrt(var + eps)
    return normalised * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


class BatchStatNorm2d(nn.Module):
    """BatchNorm2d holding only its affine parameters; always uses batch statistics (see batch_norm)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return batch_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}, batch statistics only"
