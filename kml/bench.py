"""Benchmarks that print numbers (never timed assertions): `python -m kml.bench [data|train] [--quick]`.

data:  episodes/s of the samplers.
train: one meta-iteration (forward + backward + Adam step) of every learner × modulation (× MAML order)
       on one fixed meta-batch: ms, tasks/s, peak memory, achieved FLOP/s and its fraction of this
       device's own dense float32 matmul FLOP/s (measured in the same run), and the ratio to a
       reference MAML step written with the `higher` library (extra `bench`), same model and tasks.
Without an argument both run. Every figure is a median over repeats after warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from kml.data import synthetic
from kml.data.benchmark import make_sampler
from kml.data.episodes import Batch
from kml.learners import build_learner, build_optimizer


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


# --- train --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    learner: str  # maml | protonet
    modulation: str  # none | film | kml
    shot: int
    path: str  # batched | per-task | higher (the reference)
    first_order: bool = False

    @property
    def method(self) -> str:
        names = {"maml": "MAML", "protonet": "ProtoNet"}
        return names[self.learner] + ("" if self.modulation == "none" else f"+{self.modulation.upper()}")

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


def cases(device: torch.device, run_all: bool, quick: bool) -> list[Case]:
    """Every combination on a GPU or with --all (--quick: 1-shot only); on a CPU by default the 1-shot
    second-order MAML none/KML and ProtoNet none/KML rows, each also as the per-task loop, and the
    references."""
    full = run_all or quick or device.type == "cuda"
    shots = (1, 5) if run_all or device.type == "cuda" else (1,)
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


def learner_config(case: Case, sizes: Sizes, fast_path: dict) -> dict:
    learner = {"name": case.learner, "batched": case.path == "batched"}
    if case.learner == "maml":
        learner.update(
            inner_lr=0.05,
            train_steps=sizes.steps,
            test_steps=sizes.steps,
            grad_clip=20.0,
            first_order=case.first_order,
        )
    if case.path == "batched":
        learner.update(fast_path)
    return {
        "way": sizes.way,
        "backbone": {"name": "conv4", "channels": sizes.channels},
        "learner": learner,
        "modulation": {
            "name": case.modulation,
            "embedding_dim": sizes.embedding,
            "encoder_channels": list(sizes.encoder),
        },
    }


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


def higher_meta_loss(learner, batch: Batch) -> torch.Tensor:
    """The reference: the same Conv4 MAML step written with `higher` (its MAML example's pattern), second
    order: a differentiable SGD inner loop per task with the same clamp, query loss backward per task."""
    import higher

    clip = learner.grad_clip
    inner_opt = torch.optim.SGD(learner.backbone.parameters(), lr=learner.inner_lr)
    total = 0.0
    for t in range(batch.num_tasks):
        modulation = learner.task_modulation(batch.support_x[t])
        with higher.innerloop_ctx(learner.backbone, inner_opt, copy_initial_weights=False) as (model, opt):
            for _ in range(learner.train_steps):
                loss = F.cross_entropy(model(batch.support_x[t], modulation=modulation), batch.support_y[t])
                opt.step(loss, grad_callback=lambda grads: [g.clamp(-clip, clip) for g in grads])
            query_loss = F.cross_entropy(model(batch.query_x[t], modulation=modulation), batch.query_y[t])
            (query_loss / batch.num_tasks).backward()
            total += query_loss.item() / batch.num_tasks
    return torch.tensor(total)


def higher_status() -> str | None:
    """None when `higher` imports, else why not."""
    try:
        import higher  # noqa: F401
    except Exception as error:  # ImportError, or any incompatibility with this torch
        return f"{type(error).__name__}: {error}"
    return None


def _conv_backward_flop(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    groups,
    output_mask,
    out_shape=None,
    **kwargs,
) -> int:
    """torch's formula ignores `groups` for the weight gradient (it counts groups× too many FLOPs for the
    batched path's grouped convolutions); this one divides that term by the groups."""

    def t(shape):
        return [shape[1], shape[0], *shape[2:]]

    flops = 0
    if output_mask[0]:
        flops += conv_flop_count(grad_out_shape, w_shape, out_shape[0], not transposed)
    if output_mask[1]:
        first, second = (grad_out_shape, x_shape) if transposed else (x_shape, grad_out_shape)
        flops += conv_flop_count(t(first), t(second), t(out_shape[1]), transposed=False) // groups
    return flops


def count_flops(step: Callable[[], None]) -> int:
    with FlopCounterMode(
        display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop}
    ) as counter:
        step()
    return counter.get_total_flops()


class PeakMemory:
    """Peak memory growth over a block: CUDA max_memory_allocated, or on Linux the process's peak RSS
    (VmHWM) after resetting it (/proc/self/clear_refs) with freed heap returned (malloc_trim); elsewhere
    getrusage's max RSS growth (a lower bound: 0 unless this block sets a new process-wide peak)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS growth"

    @staticmethod
    def _status_kb(key: str) -> int:
        with open("/proc/self/status") as status:
            return int(re.search(rf"{key}:\s+(\d+)", status.read()).group(1))

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # resets VmHWM to the current RSS
            self.start, self.reader = self._status_kb("VmRSS") * 1024, lambda: self._status_kb("VmHWM") * 1024
        except OSError:
            scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
            self.reader = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
            self.start = self.reader()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.start
        else:
            self.bytes = max(0, self.reader() - self.start)


def matmul_flops(device: torch.device, quick: bool) -> float:
    """This device's dense float32 matmul FLOP/s (n×n @ n×n, median of repeats): the ceiling."""
    n = 512 if quick else (8192 if device.type == "cuda" else 2048)
    a, b = (torch.randn(n, n, device=device) for _ in range(2))

    def work():
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()

    return median_rate(work, 2 * n**3, 3 if quick else 7, warmup=2)


def measure(case: Case, sizes: Sizes, device: torch.device, repeats: int, fast_path: dict) -> dict:
    torch.manual_seed(0)
    cfg = learner_config(case, sizes, fast_path)
    learner = build_learner(cfg).to(device)
    optimizer = build_optimizer(learner, cfg)
    batch = random_tasks(sizes, case.shot, device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if case.path == "higher":
            higher_meta_loss(learner, batch)
        else:
            loss, _ = learner.meta_loss(batch)
            loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: first-touch allocations, and conv auto's one-off timing of its candidates
    flops = count_flops(step)  # the second warm-up
    with PeakMemory(device) as memory:  # the third
        step()
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    seconds = statistics.median(times)
    return {
        "case": case,
        "ms": 1e3 * seconds,
        "cpu_ms": 1e3 * statistics.median(cpu_times),
        "tasks_per_s": sizes.tasks / seconds,
        "peak_mb": memory.bytes / 2**20,
        "gflop": flops / 1e9,
        "flops_per_s": flops / seconds,
    }


COLUMNS = [
    "method",
    "order",
    "shot",
    "path",
    "ms/iter",
    "CPU ms",
    "tasks/s",
    "peak MB",
    "GFLOP/iter",
    "GFLOP/s",
    "of matmul",
    "ref/ours",
]


def format_table(results: list[dict], ceiling: float) -> list[str]:
    reference = {
        (r["case"].modulation, r["case"].shot): r["ms"] for r in results if r["case"].path == "higher"
    }
    rows = [COLUMNS]
    for r in results:
        case = r["case"]
        ratio = (
            reference.get((case.modulation, case.shot))
            if case.learner == "maml" and not case.first_order and case.path != "higher"
            else None
        )
        rows.append(
            [
                case.method,
                case.order,
                f"{case.shot}-shot",
                case.path,
                f"{r['ms']:.1f}",
                f"{r['cpu_ms']:.1f}",
                f"{r['tasks_per_s']:.1f}",
                f"{r['peak_mb']:.0f}",
                f"{r['gflop']:.3g}",
                f"{r['flops_per_s'] / 1e9:.1f}",
                f"{r['flops_per_s'] / ceiling:.1%}",
                "-" if ratio is None else f"{ratio / r['ms']:.2f}x",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(
            cell.ljust(w) if i < 4 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def bench_train(args: argparse.Namespace, device: torch.device) -> list[dict]:
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.image_size:
        sizes = Sizes(**{**sizes.__dict__, "image": args.image_size})
    repeats = args.repeats or (1 if args.quick else (10 if device.type == "cuda" else 3))
    fast_path = {
        key: value
        for key, value in (
            ("autocast", args.autocast),
            ("channels_last", args.channels_last),
            ("compile", args.compile),
        )
        if value
    }
    problem = higher_status()
    todo = cases(device, args.all, args.quick)
    if problem is not None:
        todo = [c for c in todo if c.path != "higher"]
    load = os.getloadavg()
    ceiling = matmul_flops(device, args.quick)
    results = []
    for case in todo:
        results.append(measure(case, sizes, device, repeats, fast_path))
        if args.verbose:
            print(format_table(results, ceiling)[-1], flush=True)
    print(
        f"train: one meta-iteration (forward + backward + Adam step) per row; median of {repeats} after 3 "
        f"warm-ups (the second counts FLOPs, the third peak memory); CPU ms = process CPU time, which "
        f"other processes on the machine inflate less than wall time"
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
        f"  path: batched = kml.learners.batched (tasks together){', ' + str(fast_path) if fast_path else ''}; "
        "per-task = the plain loop; higher = reference (higher 0.2.1, second order)"
    )
    print(
        f"  peak MB: {PeakMemory(device).method}; FLOPs: torch FlopCounterMode (grouped-conv backward "
        f"corrected); matmul ceiling {ceiling / 1e9:.1f} GFLOP/s (float32)"
    )
    if problem is not None:
        print(f"  reference: `higher` does not import ({problem}); the per-task loop rows are the reference")
    if not (args.all or args.quick or device.type == "cuda"):
        print(
            "  CPU default: 1-shot, second-order MAML and ProtoNet, none and KML only (--all for every row)"
        )
    for line in format_table(results, ceiling):
        print(line)
    print_ratios(results)
    return results


def print_ratios(results: list[dict]) -> None:
    """Speed-ups of the batched rows over the per-task loop and the reference, by wall and CPU time."""
    by_key = {
        (r["case"].learner, r["case"].modulation, r["case"].shot, r["case"].first_order, r["case"].path): r
        for r in results
    }
    for (learner, modulation, shot, first_order, path), ours in by_key.items():
        if path != "batched":
            continue
        order = "" if learner == "protonet" else (" 1st order" if first_order else " 2nd order")
        parts = []
        for other, label in (("per-task", "the per-task loop"), ("higher", "the higher reference")):
            theirs = by_key.get((learner, modulation, shot, first_order, other))
            if theirs is not None:
                parts.append(
                    f"{theirs['ms'] / ours['ms']:.2f}x {label} (CPU time {theirs['cpu_ms'] / ours['cpu_ms']:.2f}x)"
                )
        if parts:
            print(f"  speed-up of batched {learner}+{modulation} {shot}-shot{order}: " + ", ".join(parts))


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read())
            model = found.group(1) if found else model
    return f"CPU {model}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m kml.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["data", "train"], nargs="?", help="default: both")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a smoke test)")
    parser.add_argument(
        "--all", action="store_true", help="on a CPU too: 1- and 5-shot, every modulation and order"
    )
    parser.add_argument("--image-size", type=int, help="default 84 (16 with --quick)")
    parser.add_argument(
        "--repeats", type=int, help="timed repeats (default 3 on CPU, 10 on CUDA, 1 with --quick)"
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for train (0 = torch's default)")
    parser.add_argument("--autocast", action="store_true", help="batched rows: bfloat16 autocast")
    parser.add_argument(
        "--channels-last", action="store_true", help="batched rows: channels_last activations"
    )
    parser.add_argument(
        "--compile", help="batched rows: torch.compile backend (where no 2nd derivative is taken)"
    )
    parser.add_argument("--verbose", action="store_true", help="print each row as it is measured")
    parser.add_argument("--root", default="data", help="where synthetic data is cached")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    if args.what in (None, "data"):
        rows = bench_data(args.root, args.quick, args.image_size)
        width = max(len(r[0]) for r in rows)
        print(f"{'sampler'.ljust(width)}  episodes/s  vs 1000/s goal")
        for label, rate in rows:
            print(f"{label.ljust(width)}  {rate:10.0f}  {rate / 1000:6.2f}x")
    if args.what in (None, "train"):
        if args.what is None:
            print()
        threads = torch.get_num_threads()
        if args.threads:
            torch.set_num_threads(args.threads)
        try:
            bench_train(args, device)
        finally:
            torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
