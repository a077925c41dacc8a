"""Learners (MAML, ProtoNet) and their factories from the Hydra config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from kml.learners.base import Learner
from kml.learners.batched import FastPath
from kml.learners.maml import MAML
from kml.learners.protonet import ProtoNet
from kml.learners.summary import METHOD_NAMES, describe, method_name, parameter_counts
from kml.models import build_backbone, build_modulator

__all__ = [
    "MAML",
    "METHOD_NAMES",
    "Learner",
    "ProtoNet",
    "build_learner",
    "build_optimizer",
    "describe",
    "method_name",
    "parameter_counts",
]

DEFAULT_OUTER_LR = 1e-3


def build_learner(cfg: Mapping[str, Any]) -> Learner:
    """From a config with the groups `backbone`, `learner`, `modulation` and the int `way`.

    Keys missing from a group take the defaults of conf/<group>/*.yaml, so tests can pass small dicts.
    """
    way = int(cfg["way"])
    learner_cfg, backbone_cfg = cfg["learner"], cfg["backbone"]
    name = learner_cfg["name"]
    if name not in ("maml", "protonet"):
        raise ValueError(f"unknown learner {name!r}; choose maml or protonet")
    backbone = build_backbone(backbone_cfg, num_classes=way if name == "maml" else None)
    modulator = build_modulator(
        cfg["modulation"], backbone, in_channels=int(backbone_cfg.get("in_channels", 3))
    )
    # The speed switches (batched, autocast, channels_last, compile); missing keys = the plain per-task loop.
    fast_path = FastPath.from_config(learner_cfg)
    if name == "protonet":
        return ProtoNet(backbone, modulator, way, fast_path=fast_path)
    grad_clip = learner_cfg.get("grad_clip", 20.0)
    return MAML(
        backbone,
        modulator,
        way,
        inner_lr=float(learner_cfg.get("inner_lr", 0.05)),
        train_steps=int(learner_cfg.get("train_steps", 5)),
        test_steps=int(learner_cfg.get("test_steps", 5)),
        grad_clip=None if grad_clip is None else float(grad_clip),
        first_order=bool(learner_cfg.get("first_order", False)),
        fast_path=fast_path,
    )


def build_optimizer(learner: Learner, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Adam over every learner parameter (backbone initialisation, encoder, generator) at `learner.lr`."""
    return torch.optim.Adam(learner.parameters(), lr=float(cfg["learner"].get("lr", DEFAULT_OUTER_LR)))
