"""`python -m kml.bench train`: times one meta-iteration (forward + backward + Adam step) of every learner ×
modulation (× MAML order) × path on one fixed meta-batch, and prints the table with its setup."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

from kml.bench.instruments import PeakMemory, count_flops, describe_device, matmul_flops
from kml.bench.reference import higher_meta_loss, higher_status
from kml.bench.table import format_table, print_ratios
from kml.config import CONF_DIR, compose
from kml.data.episodes import Batch
from kml.learners import build_learner, build_optimizer, method_name

PATHS = ("batched", "per-task", "higher")


@dataclass(frozen=True)
class Case:
    learner: str  # maml | protonet
    modulation: str  # none | film | kml
    shot: int
    path: str  # batched | per-task | higher (the reference)
    first_order: bool = False

    @property
    def method(self) -> str:
        """The paper's name, as results.json writes it (MMAML+KML, MProtoNet, ...)."""
        return method_name({"learner": OmegaConf.load(CONF_DIR / "learner" / f"{self.learner}.yaml"),
                            "modulation": OmegaConf.load(CONF_DIR / "modulation" / f"{self.modulation}.yaml")})

    @property
    def order(self) -> str:
        return "-" if self.learner == "protonet" else ("1st" if self.first_order else "2nd")


@dataclass(frozen=True)
class Sizes:
    image: int = 84
    channels: int = 32  # conv4 widths 32-64-128-256, as the MMAML backbone
    embedding: int = 128
    encoder: tuple[int, ...] = (32, 64, 128, 256)
    tasks: int = 10
    way: int = 5
    query: int = 15
    steps: int = 5

    @classmethod
    def quick(cls) -> Sizes:
        return cls(image=16, channels=4, embedding=8, encoder=(4, 4, 8, 8), tasks=2, query=2, steps=1)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Sizes:
        """The command line's sizes: --quick's tiny ones or the defaults, at --image-size if given."""
        sizes = cls.quick() if args.quick else cls()
        return cls(**{**sizes.__dict__, "image": args.image_size}) if args.image_size else sizes


def cases(device: torch.device, run_all: bool, quick: bool, core: bool = False) -> list[Case]:
    """Every combination on a GPU or with --all (--quick: 1-shot only); on a CPU by default, and anywhere
    with `core`, the 1-shot second-order MAML none/KML and ProtoNet none/KML rows, each also as the
    per-task loop, and the references."""
    full = not core and (run_all or quick or device.type == "cuda")
    shots = (1, 5) if not core and (run_all or device.type == "cuda") else (1,)
    modulations = ("none", "film", "kml") if full else ("none", "kml")
    rows = []
    for shot in shots:
        for modulation in modulations:
            orders = (False, True) if full else (False,)
            for first_order in orders:
                for path in ("batched", "per-task"):
                    rows.append(Case("maml", modulation, shot, path, first_order))
            if modulation in ("none", "kml") or run_all:
                rows.append(Case("maml", modulation, shot, "higher"))
        for modulation in modulations:
            for path in ("batched", "per-task"):
                rows.append(Case("protonet", modulation, shot, path))
    return rows


def learner_config(case: Case, sizes: Sizes, fast_path: dict):
    """The config `python launch.py` composes for this row (conf/ of this checkout), at the bench's sizes:
    the batched rows keep conf/learner/fast_path's switches, then the command line's (`fast_path`)."""
    overrides = [f"learner={case.learner}", f"modulation={case.modulation}", f"way={sizes.way}",
                 f"backbone.channels={sizes.channels}", f"learner.fast_path.batched={case.path == 'batched'}"]
    if case.learner == "maml":
        overrides += [f"learner.train_steps={sizes.steps}", f"learner.test_steps={sizes.steps}",
                      f"learner.first_order={case.first_order}"]
    if case.modulation != "none":
        overrides += [f"modulation.embedding_dim={sizes.embedding}",
                      f"modulation.encoder_channels=[{','.join(map(str, sizes.encoder))}]"]
    if case.path == "batched":
        overrides += [f"learner.fast_path.{key}={value}" for key, value in fast_path.items()]
    return compose(overrides)


def learner_and_optimizer(case: Case, sizes: Sizes, device: torch.device, fast_path: dict):
    """The row's learner (seeded, so every path of a row starts from the same weights) and its optimizer."""
    torch.manual_seed(0)
    cfg = learner_config(case, sizes, fast_path)
    learner = build_learner(cfg).to(device)
    return learner, build_optimizer(learner, cfg)


def random_tasks(sizes: Sizes, shot: int, device: torch.device) -> Batch:
    """One fixed meta-batch of random images: conv timings do not depend on pixel values."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(sizes.way)

    def images(per_task: int) -> torch.Tensor:
        shape = (sizes.tasks, per_task, 3, sizes.image, sizes.image)
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)

    return Batch(
        support_x=images(sizes.way * shot),
        support_y=labels.repeat_interleave(shot).expand(sizes.tasks, -1).clone(),
        query_x=images(sizes.way * sizes.query),
        query_y=labels.repeat_interleave(sizes.query).expand(sizes.tasks, -1).clone(),
        mode=torch.zeros(sizes.tasks, dtype=torch.int64),
    ).to(device)


class Row:
    """One table row: its learner, optimizer and meta-batch, warmed up, with FLOPs and peak memory counted."""

    def __init__(self, case: Case, sizes: Sizes, device: torch.device, batch: Batch, fast_path: dict) -> None:
        self.case, self.sizes, self.device, self.batch = case, sizes, device, batch
        self.learner, self.optimizer = learner_and_optimizer(case, sizes, device, fast_path)
        self.step()  # warm-up: first-touch allocations, and conv auto's one-off timing of its candidates
        self.flops = count_flops(self.step)  # the second warm-up
        with PeakMemory(device) as memory:  # the third
            self.step()
        self.peak_bytes = memory.bytes
        self.times: list[float] = []
        self.cpu_times: list[float] = []

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.case.path == "higher":
            higher_meta_loss(self.learner, self.batch)
        else:
            loss, _ = self.learner.meta_loss(self.batch)
            loss.backward()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def timed_step(self) -> None:
        start, cpu_start = time.perf_counter(), time.process_time()
        self.step()
        self.times.append(time.perf_counter() - start)
        self.cpu_times.append(time.process_time() - cpu_start)

    def result(self) -> dict:
        seconds = statistics.median(self.times)
        return {
            "case": self.case,
            "ms": 1e3 * seconds,
            "cpu_ms": 1e3 * statistics.median(self.cpu_times),
            "tasks_per_s": self.sizes.tasks / seconds,
            "peak_mb": self.peak_bytes / 2**20,
            "gflop": self.flops / 1e9,
            "flops_per_s": self.flops / seconds,
        }


def measure(todo: list[Case], sizes: Sizes, device: torch.device, repeats: int, fast_path: dict) -> list[dict]:
    """Every row's median time over `repeats`, the repeats taken in turns (row 1, row 2, …, row 1, …):
    a slow spell of a shared machine then weighs on every row alike instead of on whichever row it hit,
    so the ratios compare rows measured side by side."""
    batches: dict[int, Batch] = {}
    rows = []
    for case in todo:
        if case.shot not in batches:
            batches[case.shot] = random_tasks(sizes, case.shot, device)
        rows.append(Row(case, sizes, device, batches[case.shot], fast_path))
    for _ in range(repeats):
        for row in rows:
            row.timed_step()
    return [row.result() for row in rows]


def bench_train(args: argparse.Namespace, device: torch.device) -> list[dict]:
    sizes = Sizes.from_args(args)
    repeats = args.repeats or (1 if args.quick else (10 if device.type == "cuda" else 3))
    fast_path = {
        key: value
        for key, value in (
            ("autocast", args.autocast),
            ("channels_last", args.channels_last),
            ("compile", args.compile),
            ("tasks_per_pass", args.tasks_per_pass),
        )
        if value is not None and value is not False
    }
    problem = higher_status()
    todo = [c for c in cases(device, args.all, args.quick, args.core) if c.path in args.paths]
    if problem is not None:
        todo = [c for c in todo if c.path != "higher"]
    load = os.getloadavg()
    ceiling = matmul_flops(device, args.quick)
    results = []
    # Rows of one shot are timed in turns (see `measure`); shots one after the other, to hold less memory.
    for shot in sorted({case.shot for case in todo}):
        done = len(results)
        results += measure([c for c in todo if c.shot == shot], sizes, device, repeats, fast_path)
    for result in results:
        result["ceiling_flops_per_s"] = ceiling  # what `of matmul` divides by, for callers (kml.bench.gpu_speed)
        if args.verbose:
            print("\n".join(format_table(results, ceiling)[2 + done :]), flush=True)
    print(
        f"train: one meta-iteration (forward + backward + Adam step) per row; median of {repeats}, taken in "
        f"turns across the rows, after 3 warm-ups (the second counts FLOPs, the third peak memory); CPU ms = "
        f"process CPU time, which other processes on the machine inflate less than wall time"
    )
    print(
        f"  device {describe_device(device)}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"load average {load[0]:.2f} before / {os.getloadavg()[0]:.2f} after"
    )
    print(
        f"  conv4 {sizes.channels}-{2 * sizes.channels}-{4 * sizes.channels}-{8 * sizes.channels}, "
        f"{sizes.image}px, {sizes.way}-way, {sizes.query} queries, meta-batch {sizes.tasks}, {sizes.steps} inner "
        f"steps (clamp ±20), random images; encoder {'-'.join(map(str, sizes.encoder))}, v ∈ R^{sizes.embedding}"
    )
    print(
        f"  path: batched = kml.learners.batched (tasks together; switches of conf/learner/*.yaml"
        f"{', then ' + str(fast_path) if fast_path else ''}); "
        "per-task = the plain loop; higher = reference (higher 0.2.1, second order)"
    )
    print(
        f"  peak MB: {PeakMemory(device).method}; FLOPs: torch FlopCounterMode (grouped-conv backward "
        f"corrected); matmul ceiling {ceiling / 1e9:.1f} GFLOP/s (float32)"
    )
    if problem is not None:
        print(f"  reference: `higher` does not import ({problem}); the per-task loop rows are the reference")
    if args.core or not (args.all or args.quick or device.type == "cuda"):
        print(
            f"  {'--core' if args.core else 'CPU default'}: 1-shot, second-order MAML and ProtoNet, none and "
            "KML only (--all for every row)"
        )
    if set(args.paths) != set(PATHS):
        print(f"  paths: {', '.join(args.paths)} only")
    for line in format_table(results, ceiling):
        print(line)
    print_ratios(results)
    return results
