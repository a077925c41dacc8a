"""`python -m kml.bench transference`: the transference analysis' throughput and its cost on a training
run, for the model `python launch.py` trains (MMAML+KML, conv4-32, 5-way 1-shot, 15 queries, 32 px
synthetic): source-target pairs per second in chunks of transference.chunk and one source at a time, a
training iteration, and the cost of the default measurements (sources × targets at each of
transference.iterations) on a run of max(iterations) iterations."""

from __future__ import annotations

import statistics
import time

import torch

from kml.analysis.transference import measure, take
from kml.config import compose
from kml.data import synthetic
from kml.data.benchmark import make_sampler
from kml.data.episodes import Batch
from kml.learners import build_learner, build_optimizer


def _median_seconds(work, repeats: int) -> float:
    work()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_transference(root: str, quick: bool, device: torch.device) -> list[tuple[str, float, str]]:
    """(what, value, unit) rows."""
    cfg = compose()
    settings = cfg.transference
    size, count, repeats = (16, 4, 1) if quick else (int(cfg.image_size), 2 * int(settings.chunk), 3)
    chunk = min(int(settings.chunk), count)
    synthetic.ensure(root, size)
    torch.manual_seed(0)
    learner = build_learner(cfg).to(device)
    modes = list(cfg.benchmark.modes)

    def tasks(mode: str, split: str, n: int, query: int) -> Batch:
        sampler = make_sampler([mode], split, cfg.way, cfg.shot, query, n, root=root, image_size=size, seed=1)
        return sampler.sample().to(device)

    sources = tasks(modes[0], "train", count, cfg.train.query)
    targets = tasks(modes[min(1, len(modes) - 1)], settings.split, 4, cfg.eval.query)

    def pairs_per_second(size: int, target: Batch) -> float:
        parts = [take(Batch(sources.support_x[i:], sources.support_y[i:], sources.query_x[i:],
                            sources.query_y[i:], sources.mode[i:]), size) for i in range(0, count, size)]
        return count * target.num_tasks / _median_seconds(lambda: measure(learner, parts, target, 1e-3), repeats)

    one_target = take(targets, 1)
    batched = pairs_per_second(chunk, one_target)
    where = f"{size}px, {device}, {torch.get_num_threads()} threads"
    rows = [(f"pairs/s, chunks of {chunk}, 1 target ({where})", batched, "pairs/s"),
            (f"pairs/s, chunks of {chunk}, 4 targets", pairs_per_second(chunk, targets), "pairs/s"),
            ("pairs/s, one source at a time, 1 target", pairs_per_second(1, one_target), "pairs/s")]
    optimizer = build_optimizer(learner, cfg)
    batch = tasks(modes[0], "train", int(cfg.train.meta_batch), cfg.train.query)

    def iteration() -> None:
        loss, _ = learner.meta_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    iteration_s = _median_seconds(iteration, repeats + 2)
    pairs, run = int(settings.sources) * int(settings.targets), max(int(i) for i in settings.iterations)
    # At 1 target (the default) this is the measured time; with more, each source gradient serves several
    # targets, so the estimate is an upper bound.
    measurement_s = pairs / batched
    measurements = len(settings.iterations)
    return rows + [
        (f"training iteration (meta-batch {cfg.train.meta_batch})", iteration_s, "s"),
        (f"one default measurement ({settings.sources} sources x {settings.targets} target)", measurement_s, "s"),
        ("  the same in training iterations", measurement_s / iteration_s, "iterations"),
        (f"overhead of {measurements} measurements on a {run:,}-iteration run",
         100 * measurements * measurement_s / (run * iteration_s), "%"),
    ]


def print_rows(rows: list[tuple[str, float, str]]) -> None:
    width = max(len(label) for label, _, _ in rows)
    for label, value, unit in rows:
        print(f"{label.ljust(width)}  {value:10.3g} {unit}")
