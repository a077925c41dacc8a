"""Conv4 backbones: MMAML's strided Conv4 and Finn et al.'s max-pooled Conv4.

Every parameter lives in an ordinary nn.Module, and forward() reads them only through attribute
access, so `torch.func.functional_call(backbone, params, (x,), {"modulation": m})` runs the very same
network on a MAML inner-loop parameter dict.

A backbone may also offer `batched_forward`: the same network on every task of a meta-batch at once, each
with its own parameters and modulation, which the learners' fast path (kml.learners.batched) runs. A
backbone without one runs through the learners' per-task loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kml.errors import ConfigError
from kml.models import batched_conv
from kml.models.functional import BatchStatNorm2d, fused_batch_norm
from kml.models.modulation import LayerModulation, LayerShape


class ConvBlock(nn.Module):
    """conv3×3 (pad 1) → BN (batch statistics) → modulation → ReLU [→ max-pool 2]."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, max_pool: bool, bn_affine: bool = True
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)
        self.norm = BatchStatNorm2d(out_channels, affine=bn_affine)
        self.max_pool = max_pool

    @property
    def shape(self) -> LayerShape:
        c_out, c_in, k, _ = self.conv.weight.shape
        return c_out, c_in, k

    def forward(self, x: torch.Tensor, modulation: LayerModulation | None = None) -> torch.Tensor:
        weight, bias = self.conv.weight, self.conv.bias
        if modulation is not None:
            # Note: any per-channel bias (and KML's bias shift) is removed again by the batch-statistics
            # BN right below; it is kept because it is part of the published layer and of KML's equation.
            weight, bias = modulation.kernel(weight), modulation.bias(bias)
        y = F.conv2d(x, weight, bias, stride=self.conv.stride, padding=self.conv.padding)
        y = self.norm(y)
        if modulation is not None:
            y = modulation.features(y)
        y = F.relu(y)
        return F.max_pool2d(y, 2) if self.max_pool else y


class Conv4(nn.Module):
    """Four ConvBlocks; with `num_classes` a linear head on the spatial mean (MAML), else the flattened
    feature map is the embedding (ProtoNet).

    init: "default" (PyTorch's initialisation) or "xavier" (Xavier-uniform weights and zero biases for
        the convolutions and the head, as both released codes do).
    bn_affine: False leaves the batch norms without scale and shift (MMAML's released backbone), so
        MAML's inner loop adapts the convolutions and the head only.
    """

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int],
        stride: int,
        max_pool: bool,
        num_classes: int | None = None,
        init: str = "default",
        bn_affine: bool = True,
    ) -> None:
        super().__init__()
        channels = [in_channels, *widths]
        self.in_channels = in_channels
        self.blocks = nn.ModuleList(
            ConvBlock(c_in, c_out, stride, max_pool, bn_affine)
            for c_in, c_out in zip(channels, channels[1:], strict=False)
        )
        self.head = nn.Linear(channels[-1], num_classes) if num_classes is not None else None
        if init == "xavier":
            for layer in self.modules():
                if isinstance(layer, nn.Conv2d | nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)
                    nn.init.zeros_(layer.bias)
        elif init != "default":
            raise ConfigError(f"backbone.init={init!r} is not valid; choose default or xavier")

    @property
    def layer_shapes(self) -> list[LayerShape]:
        return [block.shape for block in self.blocks]

    def forward(
        self, x: torch.Tensor, modulation: Sequence[LayerModulation | None] | None = None
    ) -> torch.Tensor:
        if modulation is None:
            modulation = [None] * len(self.blocks)
        for block, layer_modulation in zip(self.blocks, modulation, strict=True):
            x = block(x, layer_modulation)
        if self.head is None:
            return x.flatten(start_dim=1)
        return self.head(x.mean(dim=(2, 3)))

    def batched_forward(
        self,
        params: dict[str, torch.Tensor],
        x: torch.Tensor,
        modulation: Sequence[LayerModulation | None],
        channels_last: bool = False,
        conv: str = "auto",
    ) -> torch.Tensor:
        """forward() on every task at once: x [T, B, C, H, W] with params [T, ...] (this module's parameter
        names) and each LayerModulation's tensors carrying the task axis T → [T, B, out], `out` the head's
        logits or the flattened feature map, as forward().

        Tasks are laid side by side along the channel axis, [B, T·C, H, W]: each conv runs every task's
        own (adapted, modulated) kernel on its own channels (kml.models.batched_conv, `conv` picks how),
        and batch-statistics BN needs no change in that layout, since its per-channel statistics over
        (B, H, W) are exactly each task's, so one fused call normalises all tasks."""
        tasks, images = x.shape[:2]
        h = x.transpose(0, 1).reshape(images, tasks * x.shape[2], *x.shape[3:])
        if channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        for i, (block, m) in enumerate(zip(self.blocks, modulation, strict=True)):
            prefix = f"blocks.{i}."
            weight, bias = params[prefix + "conv.weight"], params[prefix + "conv.bias"]
            if m is not None:
                weight, bias = m.kernel(weight), m.bias(bias)
            h = batched_conv.conv(conv, h, weight, bias, block.conv.stride[0], block.conv.padding[0])
            norm_weight, norm_bias = params.get(prefix + "norm.weight"), params.get(prefix + "norm.bias")
            if norm_weight is not None:  # [T, C] → the [T·C] channel layout; absent with bn_affine=false
                norm_weight, norm_bias = norm_weight.reshape(-1), norm_bias.reshape(-1)
            h = fused_batch_norm(h, norm_weight, norm_bias, block.norm.eps)
            if m is not None:
                h = m.features(h)  # FiLM's [T, C_out] scale and shift, viewed as the [T·C_out] channels
            h = F.relu(h)
            if block.max_pool:
                h = F.max_pool2d(h, 2)
        if self.head is None:
            return h.reshape(images, tasks, -1).transpose(0, 1)  # [B, T·C, H, W] → [T, B, C·H·W]
        features = h.mean(dim=(2, 3)).view(images, tasks, -1)  # [B, T, C]
        logits = torch.einsum("btc,toc->tbo", features, params["head.weight"])
        return logits + params["head.bias"].unsqueeze(1)


def conv4(
    in_channels: int = 3,
    channels: int = 32,
    num_classes: int | None = None,
    init: str = "default",
    bn_affine: bool = True,
) -> Conv4:
    """MMAML's backbone: stride-2 convs, no pooling, widths channels·(1, 2, 4, 8)."""
    widths = [channels * m for m in (1, 2, 4, 8)]
    return Conv4(in_channels, widths, stride=2, max_pool=False, num_classes=num_classes, init=init,
                 bn_affine=bn_affine)


def conv4_maxpool(
    in_channels: int = 3,
    channels: int = 64,
    num_classes: int | None = None,
    init: str = "default",
    bn_affine: bool = True,
) -> Conv4:
    """Finn et al.'s backbone for 28 px Omniglot: stride-1 convs, max-pool 2 after each, constant width."""
    return Conv4(in_channels, [channels] * 4, stride=1, max_pool=True, num_classes=num_classes, init=init,
                 bn_affine=bn_affine)
