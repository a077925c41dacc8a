"""The train benchmark's output: the per-row table and the speed-ups of the batched path."""

from __future__ import annotations

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
                f"{r['flops_per_s'] / 1e9:.3g}",  # 3 digits: --quick rows are a fraction of a GFLOP/s
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
