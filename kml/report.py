"""`python -m kml.report DIR... [--out DIR] [--published] [--modes]`: the paper-style table of a sweep.

Reads every results.json under the given folders. Rows are methods, columns are setups
(benchmark, way, shot), or with --modes each mode of a setup and its overall; a cell is test accuracy
mean ± 95% CI. Single-mode runs are also
combined into Multi-<method> rows (one specialist per mode, as the paper's Multi-MAML / Multi-ProtoNet)
for every multi-mode setup whose modes all have a specialist.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

from kml import plots
from kml.published import METHODS, PUBLISHED, SOURCE

# `benchmark=custom benchmark.modes=[...]` is one name for any list of modes: such runs are set apart by their modes.
CUSTOM_BENCHMARK = "custom"


def benchmark_name(r: dict) -> str:
    """The setup a run belongs to: its benchmark, or for a custom one its modes (e.g. omniglot+my_scans)."""
    return "+".join(r["per_mode"]) if r["benchmark"] == CUSTOM_BENCHMARK else r["benchmark"]


def find_results(folders: list[str]) -> list[dict]:
    runs = []
    for folder in folders:
        path = Path(folder)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; pass run or sweep folders (e.g. outputs/NAME)")
        for file in sorted(path.rglob("results.json")):
            runs.append({**json.loads(file.read_text()), "path": str(file.parent)})
    return runs


def pooled(parts: list[dict]) -> dict:
    """Mean ± 1.96·std/√n over the union of the tasks behind several {mean, ci95, n} summaries."""
    n = sum(p["n"] for p in parts)
    mean = sum(p["mean"] * p["n"] for p in parts) / n
    sq = sum((p["n"] - 1) * (p["ci95"] * math.sqrt(p["n"]) / 1.96) ** 2 + p["n"] * (p["mean"] - mean) ** 2
             for p in parts)
    std = math.sqrt(sq / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "ci95": 1.96 * std / math.sqrt(n), "n": n}


def multi_rows(runs: list[dict]) -> list[dict]:
    """Multi-<method>: per-mode specialists (single-mode runs) assembled for each multi-mode setup."""
    specialists = {}
    for r in runs:
        if len(r["per_mode"]) == 1:
            mode = next(iter(r["per_mode"]))
            specialists[(r["method"], mode, r["way"], r["shot"])] = r["per_mode"][mode]
    setups = {(benchmark_name(r), tuple(r["per_mode"]), r["way"], r["shot"]) for r in runs if len(r["per_mode"]) > 1}
    rows = []
    for method in sorted({m for m, *_ in specialists}):
        for benchmark, modes, way, shot in sorted(setups):
            parts = [specialists.get((method, mode, way, shot)) for mode in modes]
            if all(parts):
                rows.append({"method": f"Multi-{method}", "benchmark": benchmark, "way": way, "shot": shot,
                             "per_mode": dict(zip(modes, parts, strict=True)), "overall": pooled(parts),
                             "path": "(specialists)"})
    return rows


def summaries(r: dict, modes: bool) -> list[tuple[str, dict]]:
    """(mode, {mean, ci95, n}) cells of one run: overall only, or every mode and then overall."""
    if not modes:
        return [("overall", r["overall"])]
    return list(r["per_mode"].items()) + ([("overall", r["overall"])] if len(r["per_mode"]) > 1 else [])


def published_value(method: str, benchmark: str, way: int, shot: int, mode: str) -> tuple[float, float] | None:
    """(mean, ci95) in % as published; the paper reports overall accuracies only."""
    return PUBLISHED.get((method, benchmark, way, shot)) if mode == "overall" else None


def build_table(runs: list[dict], published: bool, modes: bool = False
                ) -> tuple[list[str], list[list[str]], list[dict]]:
    """(header, rows of formatted cells, flat records for CSV). With `modes`, every mode gets a column."""
    records, multimodal = [], set()
    for r in runs + multi_rows(runs):
        setup = f"{benchmark_name(r)} {r['way']}w{r['shot']}s"
        if len(r["per_mode"]) > 1:
            multimodal.add(setup)
        for mode, summary in summaries(r, modes):
            records.append({"method": r["method"], "setup": setup, "mode": mode, "source": "ours", **summary})
            value = published_value(r["method"], r["benchmark"], r["way"], r["shot"], mode) if published else None
            if value is not None:
                records.append({"method": r["method"], "setup": setup, "mode": mode, "source": "paper",
                                "mean": value[0] / 100, "ci95": value[1] / 100, "n": None})

    def column(rec: dict) -> str:
        return f"{rec['setup']} {rec['mode']}" if modes else rec["setup"]

    # Multimodal setups first, then the specialists' own; within a setup its modes, then overall.
    order = {column(rec): (rec["setup"] not in multimodal, rec["setup"], rec["mode"] == "overall", rec["mode"])
             for rec in records}
    columns = sorted(order, key=order.get)
    keys = sorted({(rec["method"], rec["source"]) for rec in records},
                  key=lambda k: (method_order(k[0]), k[1] != "ours"))
    cells = {}
    for rec in records:  # several seeds of one cell: keep them all, pooled
        cells.setdefault((rec["method"], rec["source"], column(rec)), []).append(rec)
    rows = []
    for method, source in keys:
        row = [method if source == "ours" else f"{method} (paper)"]
        for name in columns:
            found = cells.get((method, source, name))
            if not found:
                row.append("")
            elif source == "paper":
                row.append(f"{100 * found[0]['mean']:.2f} ± {100 * found[0]['ci95']:.2f}")
            else:
                s = pooled(found) if len(found) > 1 else found[0]
                row.append(f"{100 * s['mean']:.2f} ± {100 * s['ci95']:.2f}")
        rows.append(row)
    return ["method", *columns], rows, records


def transference_by_method(runs: list[dict]) -> dict[str, dict[int, np.ndarray]]:
    """method -> {iteration: LR matrix} from the runs' transference/lr_step<N>.npz files, in the paper's order."""
    grid = {}
    for r in runs:
        for file in Path(r["path"], "transference").glob("lr_step*.npz"):
            grid.setdefault(r["method"], {})[int(file.stem.removeprefix("lr_step"))] = np.load(file)["lr"]
    return {m: grid[m] for m in sorted(grid, key=method_order)}


def method_order(method: str) -> tuple:
    """The paper's row order: MAML, Multi-MAML, MMAML, MMAML+KML, ProtoNet, …; other names after them, each
    followed by its Multi- row."""
    base = method.removeprefix("Multi-")
    rank = METHODS.index(base) if base in METHODS else len(METHODS)
    return (rank, base if rank == len(METHODS) else "", method.startswith("Multi-"), method)


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def plain(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kml.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="run or sweep folders holding results.json files")
    parser.add_argument("--out", help="where to write report.csv and report.md (default: the first folder)")
    parser.add_argument("--published", action="store_true", help=f"add the published numbers ({SOURCE})")
    parser.add_argument("--modes", action="store_true", help="a column per mode beside each setup's overall")
    parser.add_argument("--transference", metavar="PNG",
                        help="also draw the runs' transference histograms (a row per method, a column per step)")
    args = parser.parse_args(argv)
    try:
        runs = find_results(args.folders)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not runs:
        print(f"error: no results.json under {' '.join(args.folders)}; did the runs finish?", file=sys.stderr)
        return 2
    header, rows, records = build_table(runs, args.published, args.modes)
    out = Path(args.out or args.folders[0])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "report.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "setup", "mode", "source", "mean", "ci95", "n"])
        writer.writeheader()
        writer.writerows(records)
    note = f"\n\nPaper numbers: {SOURCE}\n" if args.published else "\n"
    (out / "report.md").write_text(markdown(header, rows) + note)
    print(plain(header, rows))
    if args.transference:
        grid = transference_by_method(runs)
        if grid:
            setups = sorted({f"{benchmark_name(r)} {r['way']}w{r['shot']}s" for r in runs
                             if Path(r["path"], "transference").is_dir()})
            title = f"transference on {', '.join(setups)}: LR of one outer step on a source task, per target"
            print(f"wrote {plots.transference_grid(grid, Path(args.transference), title)}")
        else:
            print("no transference measurements (transference/lr_step*.npz) under these runs", file=sys.stderr)
    print(f"\n{len(runs)} runs; wrote {out / 'report.csv'} and {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
