"""Configs for the tests, composed from conf/ exactly as launch.py composes them, so that every default
comes from the YAMLs and every option of a group is tested without editing a test."""

from __future__ import annotations

import copy
from dataclasses import fields
from functools import cache

from omegaconf import OmegaConf

from kml.config import CONF_DIR, compose
from kml.learners.batched import FastPath

FAST_PATH_KEYS = {f.name for f in fields(FastPath)}


def options(group: str) -> list[str]:
    """The options of a config group: its YAML files."""
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def has_target(group: str, option: str) -> bool:
    return "_target_" in OmegaConf.load(CONF_DIR / group / f"{option}.yaml")


def has_fast_path(learner: str) -> bool:
    """Whether a learner's YAML takes the speed switches (conf/learner/fast_path/) into its defaults."""
    defaults = OmegaConf.load(CONF_DIR / "learner" / f"{learner}.yaml").get("defaults", [])
    return any("fast_path" in entry for entry in defaults)


LEARNERS = options("learner")
MODULATIONS = options("modulation")
MODULATED = [m for m in MODULATIONS if has_target("modulation", m)]
COMBINATIONS = [(learner, modulation) for learner in LEARNERS for modulation in MODULATIONS]


def override_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    return str(value)


def tiny_config(learner="maml", modulation="kml", *overrides, channels=2, embedding_dim=4, **keys):
    """debug=tiny at test sizes: `keys` set learner settings (fast-path switches included: batched, conv,
    ...) and `way`; `overrides` are further Hydra overrides. The learner runs the per-task loop, the
    reference implementation, unless `batched` says otherwise (tests/test_batched.py compares the two)."""
    if has_fast_path(learner):
        keys.setdefault("batched", False)
    lines = ["debug=tiny", f"learner={learner}", f"modulation={modulation}", f"backbone.channels={channels}",
             f"way={keys.pop('way', 2)}"]
    if has_target("modulation", modulation):
        lines += [f"modulation.embedding_dim={embedding_dim}", "modulation.encoder_channels=[2,2,4,4]"]
    for key, value in keys.items():
        node = "learner.fast_path" if key in FAST_PATH_KEYS else "learner"
        lines.append(f"{node}.{key}={override_value(value)}")
    return composed(*lines, *overrides)


def composed(*overrides: str):
    """compose(overrides), cached (composition takes ~0.1 s): a fresh copy each call."""
    return copy.deepcopy(_composed(overrides))


@cache
def _composed(overrides: tuple[str, ...]):
    return compose(overrides)
