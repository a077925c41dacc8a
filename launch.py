"""The one entry point: `python launch.py [overrides]` (Hydra; `-m` for sweeps)."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from kml.data.errors import DataError


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from kml.data.benchmark import summary_table

    try:
        print(f"benchmark {cfg.benchmark.name}: {cfg.way}-way {cfg.shot}-shot at {cfg.image_size}px")
        print(summary_table(list(cfg.benchmark.modes), cfg.data.root, cfg.image_size))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
