"""Figures of the reports and the transference analysis, drawn without pyplot (no global backend, no
open-figure state)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

POSITIVE, NEGATIVE = "#2a9d8f", "#e76f51"


def _save(figure: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, format="png", dpi=110)
    return path


def _edges(low: float, high: float, bins: int) -> np.ndarray:
    """Bin edges over [low, high] and 1, with an edge at exactly 1, so that every bar is either all
    positive or all negative transfer."""
    pad = max(high - low, 1e-6) * 0.05
    return np.union1d(np.linspace(min(low, 1.0) - pad, max(high, 1.0) + pad, bins + 1), [1.0])


def _lr_histogram(ax, values: np.ndarray, edges: np.ndarray) -> None:
    """Histogram of finite LR values, bars left of 1 (positive transfer) green, the LR = 1 line dashed."""
    _, _, patches = ax.hist(values, bins=edges, color=NEGATIVE, edgecolor="white", linewidth=0.4)
    for patch, left in zip(patches, edges[:-1], strict=True):
        if left < 1.0:
            patch.set_facecolor(POSITIVE)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1)


def lr_histograms(lr: np.ndarray, path: Path, title: str, bins: int = 30) -> Path:
    """One histogram of LR over the sources per target (row of `lr`), in a grid, with the LR = 1 line."""
    targets = lr.shape[0]
    columns = min(targets, 4)
    rows = math.ceil(targets / columns)
    figure = Figure(figsize=(max(4.2 * columns, 5.5), 3.2 * rows + 0.5), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    finite = lr[np.isfinite(lr)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 2.0)
    edges = _edges(low, high, bins)
    for j, ax in enumerate(axes):
        if j >= targets:
            ax.set_visible(False)
            continue
        _lr_histogram(ax, lr[j][np.isfinite(lr[j])], edges)
        positive = float((lr[j] < 1).mean())
        ax.set_title(f"target {j}: {100 * positive:.1f}% positive (LR < 1)", fontsize=10)
        ax.set_xlabel(r"LR = $L_j(\theta_i^{t+1})\,/\,L_j(\theta^t)$")
        ax.set_ylabel("source tasks")
    figure.suptitle(title, fontsize=11)
    return _save(figure, path)


def positive_curve(steps: list[int], fractions: np.ndarray, path: Path, title: str) -> Path:
    """Share of positive transfer (LR < 1) against the training iteration: each target and their mean."""
    figure = Figure(figsize=(5.5, 3.6), layout="constrained")
    ax = figure.subplots()
    fractions = np.asarray(fractions, dtype=float).reshape(len(steps), -1)
    if fractions.shape[1] > 1:
        for j in range(fractions.shape[1]):
            ax.plot(steps, fractions[:, j], color="grey", alpha=0.4, linewidth=0.8, marker=".",
                    label="each target" if j == 0 else None)
    ax.plot(steps, fractions.mean(axis=1), color=POSITIVE, marker="o", linewidth=2, label="mean over targets")
    ax.legend(fontsize=8, loc="lower left")
    ax.axhline(0.5, color="black", linestyle=":", linewidth=0.8)
    ax.set_ylim(0, 1)
    ax.set_xlabel("training iteration")
    ax.set_ylabel("positive transfer (LR < 1)")
    ax.set_title(title, fontsize=10)
    return _save(figure, path)


def transference_grid(grid: dict[str, dict[int, np.ndarray]], path: Path, title: str, bins: int = 30) -> Path:
    """Histograms of LR (all targets pooled) for several runs side by side: a row per run, a column per
    measured iteration, one shared x range so that shifts between methods and over training show."""
    names = list(grid)
    steps = sorted({step for per_step in grid.values() for step in per_step})
    pooled = [lr[np.isfinite(lr)] for per_step in grid.values() for lr in per_step.values()]
    values = np.concatenate(pooled) if pooled else np.array([1.0])
    low, high = np.percentile(values, [0.5, 99.5]) if values.size else (0.0, 2.0)
    edges = _edges(float(low), float(high), bins)
    figure = Figure(figsize=(3.4 * len(steps) + 0.6, 2.2 * len(names) + 0.6), layout="constrained")
    axes = figure.subplots(len(names), len(steps), squeeze=False, sharex=True)
    for r, name in enumerate(names):
        for c, step in enumerate(steps):
            ax = axes[r, c]
            lr = grid[name].get(step)
            if lr is None:
                ax.set_visible(False)
                continue
            _lr_histogram(ax, np.clip(lr[np.isfinite(lr)], edges[0], edges[-1]), edges)  # outliers: end bins
            ax.set_title(f"{name}, iteration {step}: {100 * float((lr < 1).mean()):.0f}% LR < 1", fontsize=9)
            if r == len(names) - 1:
                ax.set_xlabel("LR (< 1: the source step helped the target)")
    figure.suptitle(title, fontsize=11)
    return _save(figure, path)


def learning_curves(curves: dict[str, dict[str, dict[int, list[float]]]], path: Path, title: str,
                    ylabel: str = "validation accuracy (%)", log_iterations: bool = False) -> Path:
    """A panel per setup (each on its own scale), a line per method: the mean over its runs (training seeds)
    at each iteration, with the range of the runs shaded; accuracies in %. `log_iterations`: iterations on a
    log2 axis ticked where tested (milestones that double fall evenly spaced)."""
    figure = Figure(figsize=(7.5 + 4.5 * (len(curves) - 1), 4.6), layout="constrained")
    axes = figure.subplots(1, len(curves), squeeze=False)[0]
    for ax, (setup, methods) in zip(axes, curves.items(), strict=True):
        for method, by_step in methods.items():
            steps = sorted(by_step)
            values = [np.array(by_step[s]) * 100 for s in steps]
            mean = [v.mean() for v in values]
            seeds = max(len(v) for v in values)
            (line,) = ax.plot(steps, mean, marker="o", markersize=3,
                              label=f"{method} ({seeds} seed{'s' * (seeds > 1)})")
            if seeds > 1:
                ax.fill_between(steps, [v.min() for v in values], [v.max() for v in values],
                                color=line.get_color(), alpha=0.15, linewidth=0)
        if log_iterations:
            tested = sorted({step for by_step in methods.values() for step in by_step})
            ax.set_xscale("log", base=2)
            ax.set_xticks(tested, [f"{step:,}" for step in tested])
            ax.minorticks_off()
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.set_title(setup, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle(title, fontsize=11)
    return _save(figure, path)
