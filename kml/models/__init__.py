"""Backbones, the task encoder and the modulation generators, plus builders from Hydra config groups."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kml.models.conv4 import Conv4, ConvBlock, conv4, conv4_maxpool
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

_BACKBONES = {"conv4": conv4, "conv4_maxpool": conv4_maxpool}
_GENERATORS = {"film": FiLMGenerator, "kml": KMLGenerator}


def build_backbone(cfg: Mapping[str, Any], num_classes: int | None = None) -> Conv4:
    """From the `backbone` group: name (conv4 | conv4_maxpool), channels, in_channels (default 3)."""
    if cfg["name"] not in _BACKBONES:
        raise ValueError(f"unknown backbone {cfg['name']!r}; choose one of {sorted(_BACKBONES)}")
    kwargs = {key: int(cfg[key]) for key in ("in_channels", "channels") if cfg.get(key) is not None}
    return _BACKBONES[cfg["name"]](num_classes=num_classes, **kwargs)


def build_modulator(cfg: Mapping[str, Any], backbone: Conv4, in_channels: int = 3) -> TaskModulator | None:
    """From the `modulation` group: name (none | film | kml), embedding_dim, encoder_channels."""
    name = cfg["name"]
    if name == "none":
        return None
    if name not in _GENERATORS:
        raise ValueError(f"unknown modulation {name!r}; choose one of ['none', *{sorted(_GENERATORS)}]")
    embedding_dim = int(cfg.get("embedding_dim", 128))
    encoder_channels = [int(c) for c in cfg.get("encoder_channels", (32, 64, 128, 256))]
    encoder = TaskEncoder(in_channels, encoder_channels, embedding_dim)
    return TaskModulator(encoder, _GENERATORS[name](embedding_dim, backbone.layer_shapes))
