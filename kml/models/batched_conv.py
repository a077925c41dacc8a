"""Per-task convolutions on the batched path's layout, three ways, and a per-shape choice between them.

Input [B, T·C_in, H, W] (task t owns channels t·C_in … (t+1)·C_in − 1), weight [T, C_out, C_in, k, k],
bias [T, C_out] → [B, T·C_out, H', W']. All three compute the same thing (tests/test_batched.py):

- grouped:  one grouped convolution (groups = T). One op, but oneDNN's grouped kernels run at a
            fraction of its plain ones on a CPU, worst at small feature maps and in the backward.
- per_task: T plain convolutions on the task slices, stacked: T ops, each at oneDNN's full speed.
- unfold:   im2col (F.unfold) and one batched matmul over tasks: good when a feature map is tiny (the
            last layers) or has few channels (the first), where direct convolutions are inefficient.

No method wins everywhere, and on this project's CPU most shapes are a near tie (BENCHMARKS.md).
`auto` is a fixed rule from those measurements (per_task for the first layer on many images, unfold for
2×2 outputs on few images, grouped otherwise; grouped on a GPU: one kernel instead of T), so every
process computes the same bits. `timed` instead measures the candidates' forward + backward once per
shape on the actual tensors, as cudnn.benchmark does, and keeps the fastest for the process.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

Conv = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, int, int], torch.Tensor]
METHODS = ("grouped", "per_task", "unfold")
SETTINGS = ("auto", "timed", *METHODS)
# `timed`'s choices for this process: (shapes, bias, stride, padding, dtype, input needs grad) → method
_CHOICES: dict[tuple, str] = {}


def grouped(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int):
    tasks = weight.shape[0]
    return F.conv2d(
        x,
        weight.reshape(-1, *weight.shape[2:]),
        None if bias is None else bias.reshape(-1),
        stride=stride,
        padding=padding,
        groups=tasks,
    )


def per_task(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int):
    images, tasks = x.shape[0], weight.shape[0]
    inputs = x.view(images, tasks, -1, *x.shape[2:]).unbind(1)
    biases = [None] * tasks if bias is None else bias.unbind(0)
    outputs = [
        F.conv2d(xt.contiguous(), wt, bt, stride=stride, padding=padding)
        for xt, wt, bt in zip(inputs, weight.unbind(0), biases, strict=True)
    ]
    y = torch.stack(outputs, dim=1)  # [B, T, C_out, H', W']
    return y.view(images, -1, *y.shape[3:])


def unfold(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int):
    images, _, height, width = x.shape
    tasks, c_out, c_in, k, _ = weight.shape
    out_h, out_w = (height + 2 * padding - k) // stride + 1, (width + 2 * padding - k) // stride + 1
    columns = F.unfold(x, k, padding=padding, stride=stride)  # [B, T·C_in·k·k, H'·W']
    columns = columns.view(images, tasks, c_in * k * k, out_h * out_w).permute(1, 2, 0, 3)
    columns = columns.reshape(tasks, c_in * k * k, images * out_h * out_w)
    y = torch.bmm(weight.reshape(tasks, c_out, c_in * k * k), columns)  # [T, C_out, B·H'·W']
    if bias is not None:
        y = y + bias.unsqueeze(2)
    y = y.view(tasks, c_out, images, out_h * out_w).permute(2, 0, 1, 3)
    return y.reshape(images, tasks * c_out, out_h, out_w)


_METHODS: dict[str, Conv] = {"grouped": grouped, "per_task": per_task, "unfold": unfold}


def conv(
    setting: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int
) -> torch.Tensor:
    """The batched convolution by `setting`: one of METHODS, auto (a fixed rule, below) or timed."""
    if setting == "auto":
        setting = rule(x, weight, stride, padding)
    elif setting == "timed":
        key = (tuple(x.shape), tuple(weight.shape), bias is None, stride, padding, x.dtype, x.requires_grad)
        if key not in _CHOICES:
            _CHOICES[key] = fastest(x, weight, bias, stride, padding)
        setting = _CHOICES[key]
    return _METHODS[setting](x, weight, bias, stride, padding)


def rule(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int) -> str:
    """`auto`: what `timed` picked on this project's CPU where it picked consistently (BENCHMARKS.md);
    a fixed rule, so that a run computes bit-identical numbers in every process (exact resume)."""
    images, tasks, c_in, k = x.shape[0], weight.shape[0], weight.shape[2], weight.shape[3]
    if x.device.type != "cpu" or tasks == 1:
        return "grouped"
    out_pixels = ((x.shape[2] + 2 * padding - k) // stride + 1) * (
        (x.shape[3] + 2 * padding - k) // stride + 1
    )
    if c_in <= 4 and images >= 16:
        return "per_task"  # the first layer on the query set
    if out_pixels <= 4 and images <= 32:
        return "unfold"  # the last layer on small images and support sets
    return "grouped"


def fastest(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int
) -> str:
    """The method with the shortest forward + backward on copies of these tensors (best of 3 runs,
    robust against other processes on the machine). Costs a few forward/backward passes per shape."""
    with torch.enable_grad():
        x_copy = x.detach().requires_grad_(x.requires_grad)
        weight_copy = weight.detach().requires_grad_()
        bias_copy = None if bias is None else bias.detach().requires_grad_()
        inputs = [t for t in (x_copy, weight_copy, bias_copy) if t is not None and t.requires_grad]
        times = {}
        for name, method in _METHODS.items():
            if name == "per_task" and weight.shape[0] == 1:
                continue  # one task: the same plain convolution as grouped
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                y = method(x_copy, weight_copy, bias_copy, stride, padding)
                torch.autograd.grad(y, inputs, torch.ones_like(y))
                best = min(best, time.perf_counter() - start)
            times[name] = best
    return min(times, key=times.get)

