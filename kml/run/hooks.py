"""What runs beside training attaches here, by config, never by name.

`hooks` in the config maps a name to a node whose `_target_` names a Hook subclass and whose other keys are
its constructor's arguments, as lightning-hydra-template composes callbacks:

    hooks:
      transference: {_target_: kml.analysis.transference.TransferenceHook}   # what transference=on adds

A null entry (`hooks.transference=null`) removes one. The runner builds them before training, calls
`start` once (where a hook checks its settings, so a mistake stops before any work) and `after_step` after
every optimiser step. A hook reads the run through RunContext and must leave the training state as it found
it (the RNG included), or a resumed run would no longer match an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from kml import registry
from kml.data.benchmark import Benchmark
from kml.learners import Learner
from kml.run.logger import RunLogger


@dataclass
class RunContext:
    """What a hook may read of the run: its config, folder, device, logger, data and learner."""

    cfg: DictConfig
    run_dir: Path
    device: torch.device
    logger: RunLogger
    data: Benchmark
    learner: Learner


class Hook:
    """A no-op base: override what the hook needs."""

    def start(self, run: RunContext) -> None:
        """Before the first training step (also when a run resumes)."""

    def after_step(self, run: RunContext, step: int) -> None:
        """After the optimiser step of iteration `step` (1-based)."""


def build_hooks(cfg: DictConfig) -> list[Hook]:
    """The hooks `cfg.hooks` lists, in its order."""
    nodes = cfg.get("hooks") or {}
    return [registry.build(node, f"hooks.{name}") for name, node in nodes.items() if node is not None]
