"""How the benchmarks measure: median rates, FLOPs, peak memory, the device's matmul ceiling, and a
one-line description of the device, so that every table states what it ran on."""

from __future__ import annotations

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

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count


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


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read())
            model = found.group(1) if found else model
    return f"CPU {model}, {os.cpu_count()} cores"
