"""Learners (MAML, ProtoNet) and their factories from the Hydra config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import OmegaConf

from kml import registry
from kml.learners.base import Learner
from kml.learners.batched import FastPath
from kml.learners.maml import MAML
from kml.learners.protonet import ProtoNet
from kml.learners.summary import describe, method_name, parameter_counts
from kml.models import build_backbone, build_modulator

__all__ = [
    "MAML",
    "Learner",
    "ProtoNet",
    "build_learner",
    "build_optimizer",
    "describe",
    "learner_from_state",
    "method_name",
    "parameter_counts",
]

# Keys of the `learner` group that configure the run around the learner, not the learner object.
RUN_KEYS = ("lr", "fast_path")


def build_learner(cfg: Mapping[str, Any]) -> Learner:
    """From a composed config: the `learner`, `backbone` and `modulation` groups (each names what it builds
    with `_target_`) and the int `way`. Every setting comes from the YAMLs (conf/, or a checkpoint's copy)."""
    learner_cfg = cfg["learner"]
    learner_class = registry.locate(learner_cfg, "learner")
    way = int(cfg["way"])
    backbone = build_backbone(cfg["backbone"], num_classes=way if learner_class.needs_head else None)
    runtime = {"backbone": backbone, "modulator": build_modulator(cfg["modulation"], backbone), "way": way}
    if "fast_path" in learner_cfg:  # a learner with speed switches lists them (conf/learner/fast_path/)
        runtime["fast_path"] = FastPath.from_config(learner_cfg["fast_path"])
    learner = registry.build(learner_cfg, "learner", exclude=RUN_KEYS, **runtime)
    learner.method_name = method_name(cfg)
    return learner


def build_optimizer(learner: Learner, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Adam over every learner parameter (backbone initialisation, encoder, generator) at `learner.lr`."""
    return torch.optim.Adam(learner.parameters(), lr=float(cfg["learner"]["lr"]))


def learner_from_state(state: Mapping[str, Any], way: int) -> Learner:
    """A learner rebuilt from a checkpoint's stored state (its own config and weights), for evaluation or
    analysis with `way` classes; the episodes are the caller's. Pure: the runner reads the file
    (kml.run.checkpoint.load_learner)."""
    learner = build_learner(OmegaConf.merge(OmegaConf.create(state["config"]), {"way": way}))
    learner.load_state_dict(state["model"])
    return learner
