"""`python -m kml.bench data`: episodes/s of the episode samplers."""

from __future__ import annotations

import torch

from kml.bench.instruments import median_rate
from kml.data import synthetic
from kml.data.benchmark import make_sampler


def _sample(sampler, batches: int) -> None:
    for _ in range(batches):
        sampler.sample()  # dropped at once, as a training loop would


def bench_data(root: str, quick: bool, image_size: int | None = None) -> list[tuple[str, float]]:
    """Episodes/s of 5-way 1-shot 15-query sampling on one core: 3-mode and single-mode."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    size = image_size or (16 if quick else 84)
    synthetic.ensure(root, size)
    rows = []
    for label, modes in [
        ("3-mode synthetic", list(synthetic.MODES)),
        ("1-mode synthetic_shapes", ["synthetic_shapes"]),
    ]:
        sampler = make_sampler(
            modes, "train", way=5, shot=1, query=15, meta_batch=10, root=root, image_size=size
        )
        batches = 5 if quick else 50
        rate = median_rate(lambda s=sampler, n=batches: _sample(s, n), 10 * batches, 3 if quick else 7)
        rows.append((f"{label}, 5-way 1-shot 15-query, {size}px, 1 thread", rate))
    torch.set_num_threads(threads)
    return rows
