"""The tasks of a meta-batch together: the fast path of MAML and ProtoNet, and its switches.

The backbone runs every task at once through its own `batched_forward` (Conv4's lays the tasks side by
side along the channel axis; kml/models/backbones.py); a backbone without one runs through the per-task
loop, and `describe` says so at the start of a run. An inner step is then ~20 ops on large tensors instead
of ~20·T on small ones, which is what costs on a CPU at small image sizes (per-op dispatch and Python) and
on a GPU (kernel launches). With large images on a CPU the work is compute-bound and the tasks go through
in smaller groups (`tasks_per_pass`), which keeps the activations small.

The gradient of the sum of the tasks' support losses w.r.t. the per-task parameters [T, ...] is each
task's own inner gradient, so the inner loop, its clamp and the second-order graph are the per-task
loop's; tests/test_batched.py checks meta-losses and meta-gradients against it in float64.

The task modulation comes from every task's support images in one batch through the task encoder
(TaskModulator.forward_tasks: shared weights, per-task BN statistics by the fused kernels).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kml.errors import ConfigError
from kml.models import LayerModulation, TaskModulator, batched_conv

Params = dict[str, torch.Tensor]
# One LayerModulation per conv layer whose tensors carry a leading task axis T (None: unmodulated).
BatchedModulation = list[LayerModulation | None]


def _flag(value: Any, key: str, allowed: tuple[str, ...]) -> bool | str:
    if isinstance(value, bool) or value is None:
        return bool(value)
    text = str(value).lower()
    if text in ("true", "false"):
        return text == "true"
    if text not in allowed:
        raise ConfigError(f"learner.fast_path.{key}={value!r} is not valid; choose one of true, false, "
                          f"{', '.join(allowed)}")
    return text


@dataclass(frozen=True)
class FastPath:
    """The speed switches of conf/learner/fast_path/default.yaml (`learner.fast_path.*`; the defaults here
    are that YAML's, tests/test_config.py checks it). They select how, not what, is computed, except
    `autocast` (bfloat16 forward passes); results agree to float rounding.

    batched: run a meta-batch's tasks together (this module); auto = on, on CPU and CUDA, where it was
        measured faster (BENCHMARKS.md), for a backbone that has a `batched_forward`. Off = the plain
        per-task loop, the reference implementation.
    tasks_per_pass: how many tasks go through together; auto = all on a GPU, on a CPU as many as keep
        the input images of a pass under CPU_PASS_BYTES (~4 tasks at 32 px, one at 84 px).
    conv: how a layer's per-task convolutions run (kml.models.batched_conv): auto (a fixed per-shape
        rule), timed (the fastest per shape, measured once per process: not bit-reproducible across
        processes), grouped, per_task or unfold.
    autocast: bfloat16 autocast of the forward passes (meant for CUDA; off by default everywhere).
    channels_last: NHWC activations for the batched convs; auto = on a CPU, for the passes that are
        differentiated at most once (MAML's query pass and first-order inner loop, ProtoNet, evaluation),
        where oneDNN was measured faster in NHWC; the second-order inner loop stays NCHW, where NHWC was
        measured slower (BENCHMARKS.md). Off on a GPU (not measured there yet).
    compile: torch.compile the batched forward (true = inductor, or a backend name) wherever no second
        derivative is taken (ProtoNet, first-order MAML, evaluation): torch.compile cannot differentiate
        its graphs twice, so second-order meta-training always runs eagerly.
    """

    batched: bool | str = "auto"
    tasks_per_pass: int | str = "auto"
    conv: str = "auto"
    autocast: bool = False
    channels_last: bool | str = "auto"
    compile: bool | str = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> FastPath:
        """From the `learner.fast_path` node (every key required: the YAML holds the defaults)."""
        per_pass = cfg["tasks_per_pass"]
        if per_pass != "auto" and (
            isinstance(per_pass, bool) or not isinstance(per_pass, int) or per_pass < 1
        ):
            raise ConfigError(f"learner.fast_path.tasks_per_pass={per_pass!r} is not valid; choose auto or a positive "
                              "integer")
        return cls(
            batched=_flag(cfg["batched"], "batched", ("auto",)),
            tasks_per_pass=per_pass,
            conv=str(_flag(cfg["conv"], "conv", batched_conv.SETTINGS)),
            autocast=bool(_flag(cfg["autocast"], "autocast", ())),
            channels_last=_flag(cfg["channels_last"], "channels_last", ("auto",)),
            compile=_flag(cfg["compile"], "compile", ("inductor", "aot_eager", "eager", "cudagraphs")),
        )

    def passes(self, images: torch.Tensor) -> list[slice]:
        """The task slices that run together, as even as possible (images: [T, B, C, H, W])."""
        tasks = images.shape[0]
        per_pass = self.tasks_per_pass
        if per_pass == "auto":
            per_pass = tasks if images.device.type != "cpu" else cpu_tasks_per_pass(images)
        count = -(-tasks // max(1, min(int(per_pass), tasks)))
        bounds = [round(i * tasks / count) for i in range(count + 1)]
        return [slice(start, stop) for start, stop in zip(bounds, bounds[1:], strict=False)]

    def use_batched(self, device: torch.device) -> bool:
        if self.batched == "auto":
            return device.type in ("cpu", "cuda")
        return bool(self.batched)

    def use_channels_last(self, device: torch.device, *, twice: bool) -> bool:
        """NHWC activations for a pass on `device`; `twice`: it will be differentiated twice."""
        if self.channels_last == "auto":
            return device.type == "cpu" and not twice
        return bool(self.channels_last)

    def precision(self, device: torch.device) -> contextlib.AbstractContextManager:
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def compile_backend(self) -> str | None:
        if not self.compile:
            return None
        return "inductor" if self.compile is True else str(self.compile)


def has_batched_forward(backbone: nn.Module) -> bool:
    return callable(getattr(backbone, "batched_forward", None))


def check_backbone(fast_path: FastPath, backbone: nn.Module) -> None:
    """`batched=true` asks for what a backbone without `batched_forward` cannot do; auto falls back."""
    if fast_path.batched is True and not has_batched_forward(backbone):
        raise ConfigError(f"learner.fast_path.batched=true, but backbone {type(backbone).__name__} has no "
                          "batched_forward; use learner.fast_path.batched=auto or false (the per-task loop)")


def _batched_forward(backbone: nn.Module, params: Params, x: torch.Tensor, modulation: BatchedModulation,
                     channels_last: bool, conv: str) -> torch.Tensor:
    return backbone.batched_forward(params, x, modulation, channels_last, conv)


class BatchedBackbone:
    """The backbone's own batched forward as the fast path asks for it: eager, or compiled (once per backend)."""

    def __init__(self) -> None:
        self._compiled: dict[str, Callable] = {}

    def __call__(
        self,
        fast_path: FastPath,
        backbone: nn.Module,
        params: Params,
        x: torch.Tensor,
        modulation: BatchedModulation,
        *,
        twice: bool,
    ) -> torch.Tensor:
        """`twice`: the caller will differentiate the result twice (second-order MAML), so run eagerly."""
        backend = fast_path.compile_backend()
        channels_last = fast_path.use_channels_last(x.device, twice=twice)
        if backend is None or twice:
            return _batched_forward(backbone, params, x, modulation, channels_last, fast_path.conv)
        if backend not in self._compiled:
            self._compiled[backend] = torch.compile(_batched_forward, backend=backend, dynamic=False)
        # Timing candidates (conv timed) cannot happen inside a traced graph: compiled, it is the rule.
        conv = "auto" if fast_path.conv == "timed" else fast_path.conv
        return self._compiled[backend](backbone, params, x, modulation, channels_last, conv)


def cpu_tasks_per_pass(images: torch.Tensor) -> int:
    """Tasks per pass on a CPU: as many as keep a pass's input images under CPU_PASS_BYTES.

    On this project's 2-core CPU (BENCHMARKS.md) a second-order MAML+KML step at 32 px took the same
    time with 2, 4 or 10 tasks per pass and longer one task at a time; at 84 px one task per pass was
    fastest (5.2 s against 6.5 s with all ten, whose activations are 10× larger and leave the caches).
    """
    per_task = images[0].numel() * images.element_size()
    return max(1, CPU_PASS_BYTES // per_task)


# 4 MiB: ~4 tasks of 75 query images at 32 px (0.9 MiB each), one at 84 px (6.3 MiB).
CPU_PASS_BYTES = 4 * 2**20


def split(modulation: BatchedModulation, parts: list[slice]) -> list[BatchedModulation]:
    """The modulation of each pass's tasks. One torch.split per tensor rather than a slice per pass:
    the backward of a slice builds a zero tensor the size of all T tasks' kernels for every pass, the
    backward of a split concatenates the passes' gradients once."""
    sizes = [part.stop - part.start for part in parts]
    passes: list[BatchedModulation] = [[] for _ in parts]
    for m in modulation:
        fields = [[None] * len(parts) if t is None else torch.split(t, sizes) for t in (m or ())]
        for i, layers in enumerate(passes):
            layers.append(None if m is None else LayerModulation(*(field[i] for field in fields)))
    return passes


def task_modulation(
    modulator: TaskModulator | None, support_x: torch.Tensor, layers: int
) -> BatchedModulation:
    """Every task's modulation from its own support set [T, N·K, C, H, W]."""
    if modulator is None:
        return [None] * layers
    # Contiguous, so that LayerModulation.features can view FiLM's [T, C] as the [T·C] channel layout.
    return [
        LayerModulation(*(None if t is None else t.contiguous() for t in m))
        for m in modulator.forward_tasks(support_x)
    ]


def per_task_parameters(backbone: nn.Module, tasks: int, *, detach: bool = False) -> Params:
    """The backbone's parameters broadcast to [T, ...]: views, so the meta-gradient sums over tasks;
    with `detach`, fresh leaves (evaluation's inner loop, which builds no outer graph)."""
    params = {}
    for name, p in backbone.named_parameters():
        if detach:
            params[name] = p.detach().unsqueeze(0).repeat(tasks, *[1] * p.dim()).requires_grad_()
        else:
            params[name] = p.unsqueeze(0).expand(tasks, *p.shape)
    return params


def task_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[T, B, way] logits, [T, B] labels → [T] mean cross-entropy of each task."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # the loss in float32 under autocast
    losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    return losses.view(labels.shape).mean(dim=1)


def task_accuracies(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=-1) == labels).float().mean(dim=1)
