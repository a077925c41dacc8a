"""Names and parameter budgets of a learner, for logs and results."""

from __future__ import annotations

from torch import nn

from kml.learners.base import Learner
from kml.models import KMLGenerator

# The paper's method names for each learner × modulation pair.
METHOD_NAMES = {
    ("maml", "none"): "MAML",
    ("maml", "film"): "MMAML",
    ("maml", "kml"): "MMAML+KML",
    ("protonet", "none"): "ProtoNet",
    ("protonet", "film"): "MProtoNet",
    ("protonet", "kml"): "MProtoNet+KML",
}


def method_name(learner: Learner) -> str:
    return METHOD_NAMES[(learner.kind, learner.modulation_kind)]


def _count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def parameter_counts(learner: Learner) -> dict[str, int | float]:
    """Parameters of backbone, encoder and generator; for KML also what a non-factorised linear generator
    emitting each layer's whole M_l (C_out·C_in·k·k) and bias shift from v would need, and the ratio."""
    modulator = learner.modulator
    counts: dict[str, int | float] = {
        "backbone": _count(learner.backbone),
        "encoder": _count(None if modulator is None else modulator.encoder),
        "generator": _count(None if modulator is None else modulator.generator),
    }
    if modulator is not None and isinstance(modulator.generator, KMLGenerator):
        counts["full_generator"] = modulator.generator.full_generator_parameters()
        counts["reduction_factor"] = counts["full_generator"] / counts["generator"]
    return counts


def describe(learner: Learner) -> str:
    """A few lines for the start of a run: method, hyper-parameters, parameter budget."""
    widths = [shape[0] for shape in learner.backbone.layer_shapes]
    lines = [
        f"{method_name(learner)} ({learner.kind} + {learner.modulation_kind}), {learner.way}-way, "
        f"backbone widths {widths}"
    ]
    if learner.kind == "maml":
        clip = "off" if learner.grad_clip is None else f"±{learner.grad_clip:g}"
        order = "first" if learner.first_order else "second"
        lines.append(
            f"inner loop: lr {learner.inner_lr:g}, {learner.train_steps} train / {learner.test_steps} "
            f"test steps, gradient clamp {clip}, {order} order"
        )
    counts = parameter_counts(learner)
    lines.append(
        "parameters: "
        + ", ".join(f"{name} {counts[name]:,}" for name in ("backbone", "encoder", "generator"))
        + f", total {_count(learner):,}"
    )
    if "full_generator" in counts:
        lines.append(
            f"KML: a non-factorised generator would need {counts['full_generator']:,} parameters "
            f"({counts['reduction_factor']:.1f}× more)"
        )
    return "\n".join(lines)
