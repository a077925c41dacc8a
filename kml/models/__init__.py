"""Backbones, the task encoder and the modulation generators, plus builders from Hydra config groups."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kml import registry
from kml.models.backbones import Conv4, ConvBlock, conv4, conv4_maxpool
from kml.models.encoder import TaskEncoder
from kml.models.functional import BatchStatNorm2d, batch_norm
from kml.models.modulation import FiLMGenerator, KMLGenerator, LayerModulation, TaskModulator

__all__ = [
    "BatchStatNorm2d",
    "Conv4",
    "ConvBlock",
    "FiLMGenerator",
    "KMLGenerator",
    "LayerModulation",
    "TaskEncoder",
    "TaskModulator",
    "batch_norm",
    "build_backbone",
    "build_modulator",
    "conv4",
    "conv4_maxpool",
]


def build_backbone(cfg: Mapping[str, Any], num_classes: int | None = None) -> Conv4:
    """The `backbone` group's `_target_` with its settings; `num_classes` adds a head (MAML)."""
    return registry.build(cfg, "backbone", num_classes=num_classes)


def build_modulator(cfg: Mapping[str, Any], backbone: Conv4) -> TaskModulator | None:
    """The `modulation` group: none (no `_target_`), or the task encoder (embedding_dim, encoder_channels)
    and the generator its `_target_` names, sized by the backbone's conv layers."""
    if not registry.has_target(cfg):
        return None
    embedding_dim = int(cfg["embedding_dim"])
    encoder = TaskEncoder(backbone.in_channels, [int(c) for c in cfg["encoder_channels"]], embedding_dim)
    generator = registry.build(cfg, "modulation", exclude={"encoder_channels"},
                               layer_shapes=backbone.layer_shapes)
    return TaskModulator(encoder, generator)
