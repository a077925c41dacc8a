"""Names and parameter budgets of a learner, for logs and results."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from kml.learners.base import Learner
from kml.learners.batched import has_batched_forward
from kml.models import KMLGenerator


def method_name(cfg: Mapping[str, Any]) -> str:
    """The paper's name of a learner × modulation pair, from their YAMLs: the learner's `display_name`
    (MAML) put into the modulation's `method_name` template (M{learner}+KML → MMAML+KML). A YAML without
    them still gets a name: the option names, e.g. `maml+newmod`."""
    learner, modulation = cfg["learner"], cfg["modulation"]
    learner_name = str(learner.get("display_name") or learner["name"])
    template = modulation.get("method_name") or f"{{learner}}+{modulation['name']}"
    return str(template).replace("{learner}", learner_name)


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
    modulator = "no modulation" if learner.modulator is None else type(learner.modulator.generator).__name__
    lines = [f"{learner.method_name} ({type(learner).__name__}, {modulator}), {learner.way}-way, "
             f"backbone widths {widths}"]
    if learner.settings_summary():
        lines.append(learner.settings_summary())
    if learner.fast_path.batched is not False and not has_batched_forward(learner.backbone):
        lines.append(f"fast path: backbone {type(learner.backbone).__name__} has no batched_forward, so the tasks "
                     "of a batch run one by one (the per-task loop)")
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
