"""Benchmarks that print numbers (never timed assertions): `python -m kml.bench data [--quick]`."""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from kml.data import synthetic
from kml.data.benchmark import make_sampler


def median_rate(work, units: int, repeats: int, warmup: int = 2) -> float:
    """Median of `units` per second over `repeats` timed calls after `warmup` calls."""
    for _ in range(warmup):
        work()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        rates.append(units / (time.perf_counter() - start))
    return statistics.median(rates)


def _sample(sampler, batches: int) -> None:
    for _ in range(batches):
        sampler.sample()  # dropped at once, as a training loop would


def bench_data(root: str, quick: bool) -> list[tuple[str, float]]:
    """Episodes/s of 5-way 1-shot 15-query sampling on one core: 3-mode and single-mode."""
    torch.set_num_threads(1)
    size = 32 if quick else 84
    synthetic.ensure(root, size)
    rows = []
    for label, modes in [("3-mode synthetic", list(synthetic.MODES)), ("1-mode synthetic_shapes", ["synthetic_shapes"])]:
        sampler = make_sampler(modes, "train", way=5, shot=1, query=15, meta_batch=10, root=root, image_size=size)
        batches = 5 if quick else 50
        rate = median_rate(lambda s=sampler, n=batches: _sample(s, n), 10 * batches, 3 if quick else 7)
        rows.append((f"{label}, 5-way 1-shot 15-query, {size}px, 1 thread", rate))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kml.bench", description=__doc__)
    parser.add_argument("what", choices=["data"], nargs="?", default="data")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a smoke test)")
    parser.add_argument("--root", default="data", help="where synthetic data is cached")
    args = parser.parse_args(argv)
    rows = bench_data(args.root, args.quick)
    width = max(len(r[0]) for r in rows)
    print(f"{'sampler'.ljust(width)}  episodes/s  vs 1000/s goal")
    for label, rate in rows:
        print(f"{label.ljust(width)}  {rate:10.0f}  {rate / 1000:6.2f}x")


if __name__ == "__main__":
    main()
