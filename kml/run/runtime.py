"""What a run sets up before any work: its device, its seeds, its CPU threads and its data."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from kml.data.benchmark import Benchmark, Serving
from kml.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
# The validation and test task streams, apart from each other and from any training seed's stream.
VAL_SEED_OFFSET, TEST_SEED_OFFSET = 100_003, 200_003


def pick_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise ConfigError(f"device={name!r} is not valid; choose one of: {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is visible; use device=cpu or device=auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def use_allocated_cpus() -> None:
    """On SLURM, as many torch threads as the job's CPUs (torch would otherwise use every core of the node)."""
    if os.environ.get("SLURM_CPUS_PER_TASK"):
        torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))


def benchmark_for(cfg) -> Benchmark:
    """The run's modes as the config names them: `benchmark.modes` at `image_size`, `way`-way `shot`-shot,
    served as the `data.*` switches say; each split is opened once, when first asked for."""
    data = cfg.data
    serving = Serving(str(data.split), bool(data.fc100_inverted), bool(data.aircraft_banner), episode_order(cfg))
    return Benchmark(list(cfg.benchmark.modes), data.root, int(cfg.image_size), int(cfg.way), int(cfg.shot), serving)


def episode_order(cfg) -> str:
    """data.episode_order, with `auto` resolved: the released loaders' row order where the released transductive
    rule reads rows by position and K > 1; at K = 1 the rule reads no support row, so the order would change
    nothing but float rounding, and the label order keeps 1-shot runs bit-identical to those before it existed."""
    order = str(cfg.data.get("episode_order", "auto"))
    if order != "auto":
        return order
    released_rule = cfg.get("learner", {}).get("transductive") == "released"
    return "released" if released_rule and int(cfg.shot) > 1 else "by_label"
