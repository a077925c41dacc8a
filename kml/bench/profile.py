"""`python -m kml.bench profile`: where one meta-iteration of one learner goes, by phase and by operator.

Phases are timed around the learner's calls (meta-loss forward, its inner loop where it has one, the
backward, the optimizer step). Operators are timed by a `TorchDispatchMode` that puts a `perf_counter`
pair around every aten call, forward and backward alike; torch.profiler's per-operator times were found
inflated several-fold on this project's VMs (BENCHMARKS.md), this timer's only cost is its own Python
call per operator, which shows as the gap between the timed step and the sum of its operators.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kml.bench.reference import higher_meta_loss
from kml.bench.train import Case, Sizes, learner_and_optimizer, random_tasks


class OperatorTimer(TorchDispatchMode):
    """Wall time and calls per aten operator (with `by_shape`: per operator and input shapes)."""

    def __init__(self, by_shape: bool = False) -> None:
        super().__init__()
        self.by_shape = by_shape
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        seconds = time.perf_counter() - start
        key = func.overloadpacket.__name__
        if self.by_shape:
            shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)][:3]
            key = f"{key} {shapes}"
        self.seconds[key] += seconds
        self.calls[key] += 1
        return out


class Phases:
    """Seconds per phase of one step, the learner's inner loop timed by wrapping its adapt methods."""

    def __init__(self, learner) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        for name in ("adapt", "batched_adapt"):
            if hasattr(learner, name):
                setattr(learner, name, self._timed(getattr(learner, name), "  of it: inner loop"))

    def _timed(self, method, phase: str):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - start

        return timed


def profile(args: argparse.Namespace, device: torch.device) -> None:
    sizes = Sizes.from_args(args)
    repeats = args.repeats or (1 if args.quick else 5)
    if args.path == "higher" and args.learner != "maml":
        raise SystemExit("kml.bench profile: --path higher is a MAML reference; use --learner maml")
    case = Case(args.learner, args.modulation, 1, args.path, args.first_order)
    learner, optimizer = learner_and_optimizer(case, sizes, device, {})
    batch = random_tasks(sizes, 1, device)
    phases = Phases(learner)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        if case.path == "higher":  # the reference calls backward task by task inside
            higher_meta_loss(learner, batch)
            phases.seconds["higher, per task"] += time.perf_counter() - start
        else:
            loss, _ = learner.meta_loss(batch)
            backward = time.perf_counter()
            loss.backward()
            phases.seconds["meta-loss forward"] += backward - start
            phases.seconds["backward"] += time.perf_counter() - backward
        optimizer_step = time.perf_counter()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        phases.seconds["optimizer step"] += time.perf_counter() - optimizer_step

    for _ in range(2):  # warm-up
        step()
    phases.seconds.clear()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    per_phase = {phase: seconds / repeats for phase, seconds in phases.seconds.items()}
    timer = OperatorTimer(args.by_shape)
    start = time.perf_counter()
    with timer:
        step()
    timed_step = time.perf_counter() - start

    print(f"profile: {case.method} {case.order} order, {case.path}, {sizes.image}px, 1-shot, meta-batch "
          f"{sizes.tasks}, {torch.get_num_threads()} thread(s); median of {repeats} steps "
          f"{1e3 * statistics.median(times):.1f} ms")
    print("phase                 ms/step (mean)")
    for phase in ("meta-loss forward", "  of it: inner loop", "backward", "higher, per task", "optimizer step"):
        if phase in per_phase:
            print(f"{phase:<20}  {1e3 * per_phase[phase]:8.1f}")
    total = sum(timer.seconds.values())
    print(f"operators of one step under the timer ({1e3 * timed_step:.1f} ms; the operators' own "
          f"{1e3 * total:.1f} ms, {sum(timer.calls.values())} calls):")
    print("      ms   share   calls  operator")
    for key, seconds in sorted(timer.seconds.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"{1e3 * seconds:8.1f}  {seconds / total:6.1%}  {timer.calls[key]:6d}  {key}")
