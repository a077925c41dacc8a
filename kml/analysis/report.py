"""`python -m kml.report DIR... [--out DIR] [--published] [--modes] [--compare METHOD ...] [--at ITERATION]
[--curves PNG] [--schedule PNG] [--transference PNG]`: the paper-style table of a sweep, paired comparisons
and figures.

Reads every results.json under the given folders. Rows are methods, columns are setups
(benchmark, way, shot), or with --modes each mode of a setup and its overall; a cell is test accuracy
mean ± 95% CI over tasks, or with several training seeds the mean over seeds ± a t-interval over seeds.
Single-mode runs are also combined into Multi-<method> rows (one specialist per mode, as the paper's
Multi-MAML / Multi-ProtoNet) for every multi-mode setup whose modes all have a specialist.
--compare METHOD adds each method's difference from METHOD, paired over identical test tasks
(kml.analysis.compare); --curves draws validation accuracy against iteration, mean and range over seeds.
--at ITERATION reads, instead of each run's own test, every test taken at that iteration: the milestones
of runs tested along the way (eval.at) and the own tests of runs that ended there, paired alike;
--schedule draws test accuracy against the iterations the runs were tested at.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import numpy as np

from kml.analysis import compare, plots
from kml.analysis.published import METHODS, PUBLISHED, SOURCE
from kml.analysis.runs import benchmark_name, find_results, iterations_tested, label, run_seed, setup_name

__all__ = ["build_table", "find_results", "main", "multi_rows", "pooled"]


def pooled(parts: list[dict]) -> dict:
    """Mean ± 1.96·std/√n over the union of the tasks behind several {mean, ci95, n} summaries."""
    n = sum(p["n"] for p in parts)
    mean = sum(p["mean"] * p["n"] for p in parts) / n
    sq = sum((p["n"] - 1) * (p["ci95"] * math.sqrt(p["n"]) / 1.96) ** 2 + p["n"] * (p["mean"] - mean) ** 2
             for p in parts)
    std = math.sqrt(sq / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "ci95": 1.96 * std / math.sqrt(n), "n": n}


def multi_rows(runs: list[dict]) -> list[dict]:
    """Multi-<method>: per-mode specialists (single-mode runs) assembled for each multi-mode setup, per
    training seed."""
    specialists = {}
    for r in runs:
        if len(r["per_mode"]) == 1:
            mode = next(iter(r["per_mode"]))
            specialists[(label(r), mode, r["way"], r["shot"], run_seed(r))] = r["per_mode"][mode]
    setups = {(benchmark_name(r), tuple(r["per_mode"]), r["way"], r["shot"]) for r in runs if len(r["per_mode"]) > 1}
    rows = []
    for method, seed in sorted({(m, seed) for m, *_, seed in specialists}):
        for benchmark, modes, way, shot in sorted(setups):
            parts = [specialists.get((method, mode, way, shot, seed)) for mode in modes]
            if all(parts):
                rows.append({"method": f"Multi-{method}", "benchmark": benchmark, "way": way, "shot": shot,
                             "per_mode": dict(zip(modes, parts, strict=True)), "overall": pooled(parts),
                             "seed": seed, "path": "(specialists)"})
    return rows


def summaries(r: dict, modes: bool) -> list[tuple[str, dict]]:
    """(mode, {mean, ci95, n}) cells of one run: overall only, or every mode and then overall."""
    if not modes:
        return [("overall", r["overall"])]
    return list(r["per_mode"].items()) + ([("overall", r["overall"])] if len(r["per_mode"]) > 1 else [])


def published_value(method: str, benchmark: str, way: int, shot: int, mode: str) -> tuple[float, float] | None:
    """(mean, ci95) in % as published; the paper reports overall accuracies only."""
    return PUBLISHED.get((method, benchmark, way, shot)) if mode == "overall" else None


def cell(found: list[dict]) -> str:
    """One method's cell: one training seed: mean ± 95% CI over its tasks (pooled if it ran twice);
    several seeds: the mean over seeds ± a t-interval over seeds, which carries the training-seed variance."""
    by_seed = {}
    for rec in found:
        by_seed.setdefault(rec["seed"], []).append(rec)
    if len(by_seed) == 1:
        s = pooled(found) if len(found) > 1 else found[0]
        return f"{100 * s['mean']:.2f} ± {100 * s['ci95']:.2f}"
    s = compare.across_seeds([pooled(recs)["mean"] for recs in by_seed.values()])
    return f"{100 * s['mean']:.2f} ± {100 * s['ci95']:.2f} ({s['seeds']} seeds)"


def build_table(runs: list[dict], published: bool, modes: bool = False
                ) -> tuple[list[str], list[list[str]], list[dict]]:
    """(header, rows of formatted cells, flat records for CSV). With `modes`, every mode gets a column.
    Runs of another protocol than the paper's are rows of their own (`ProtoNet [released]`); the paper's
    numbers are one `(paper)` row per method."""
    records, multimodal = [], set()
    for r in runs + multi_rows(runs):
        setup = setup_name(r)
        if len(r["per_mode"]) > 1:
            multimodal.add(setup)
        method = r["method"] if r["method"].startswith("Multi-") else label(r)
        for mode, summary in summaries(r, modes):
            records.append({"method": method, "setup": setup, "mode": mode, "source": "ours",
                            "seed": run_seed(r), **summary})
            value = published_value(r["method"], r["benchmark"], r["way"], r["shot"], mode) if published else None
            if value is not None:
                records.append({"method": r["method"].split(" [")[0], "setup": setup, "mode": mode,
                                "source": "paper", "seed": None, "mean": value[0] / 100, "ci95": value[1] / 100,
                                "n": None})

    def column(rec: dict) -> str:
        return f"{rec['setup']} {rec['mode']}" if modes else rec["setup"]

    # Multimodal setups first, then the specialists' own; within a setup its modes, then overall.
    order = {column(rec): (rec["setup"] not in multimodal, rec["setup"], rec["mode"] == "overall", rec["mode"])
             for rec in records}
    columns = sorted(order, key=order.get)
    keys = sorted({(rec["method"], rec["source"]) for rec in records},
                  key=lambda k: (method_order(k[0]), k[1] != "ours"))
    cells = {}
    for rec in records:
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
                row.append(cell(found))
        rows.append(row)
    return ["method", *columns], rows, records


def transference_by_method(runs: list[dict], folder: str = "transference") -> dict[str, dict[int, np.ndarray]]:
    """method -> {iteration: LR matrix} from the runs' <folder>/lr_step<N>.npz files, in the paper's order
    (folder transference/reverse: the measurements the other way round)."""
    grid = {}
    for r in runs:
        for file in Path(r["path"], folder).glob("lr_step*.npz"):
            steps = grid.setdefault(label(r), {})
            step, lr = int(file.stem.removeprefix("lr_step")), np.load(file)["lr"]
            # Several runs of one method (seeds) measured at one step: their targets are pooled.
            steps[step] = np.concatenate([steps[step], lr]) if step in steps else lr
    return {m: grid[m] for m in sorted(grid, key=method_order)}


def transference_grids(runs: list[dict]) -> list[tuple[str, list[str], dict[str, dict[int, np.ndarray]]]]:
    """Each measured direction's (folder, its `source → target (split)` labels, method -> iteration -> LR):
    the one read of the runs' transference files that the figures and the table share."""
    found = []
    for folder in ("transference", "transference/reverse"):
        grid = transference_by_method(runs, folder)
        if grid:
            files = [file for r in runs for file in Path(r["path"], folder).glob("lr_step*.npz")]
            found.append((folder, sorted({direction(file) for file in files}), grid))
    return found


def transference_table(grids: list[tuple[str, list[str], dict]]) -> tuple[list[str], list[list[str]]]:
    """Methods × (direction, iteration) of `transference_grids`: the share of source tasks whose outer step
    helped the target (LR < 1), in %, with the number of (target, source) pairs it is taken over."""
    cells, columns = {}, []
    for _, directions, grid in grids:
        way = " / ".join(directions)
        for method, steps in grid.items():
            for step, lr in steps.items():
                cells[method, way, step] = f"{100 * (lr < 1).mean():.0f}% ({lr.size})"
        columns += [(way, step) for step in sorted({step for steps in grid.values() for step in steps})]
    methods = sorted({m for m, _, _ in cells}, key=method_order)
    rows = [[m, *[cells.get((m, way, step), "") for way, step in columns]] for m in methods]
    return ["LR < 1", *[f"{way}, it. {step}" for way, step in columns]], rows


def direction(file: Path) -> str:
    """`source → target (split)` of one saved measurement."""
    with np.load(file) as saved:
        return f"{saved['source_mode']} → {saved['target_mode']} ({saved['split']})"


def method_order(method: str) -> tuple:
    """The paper's row order: MAML, Multi-MAML, MMAML, MMAML+KML, ProtoNet, …; other names after them, each
    followed by its Multi- row; a protocol's rows (`ProtoNet [released]`) right after the method's."""
    name, _, protocol = method.partition(" [")
    base = name.removeprefix("Multi-")
    rank = METHODS.index(base) if base in METHODS else len(METHODS)
    return (rank, base if rank == len(METHODS) else "", name.startswith("Multi-"), protocol, method)


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def plain(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def comparison_table(rows: list[dict], modes: bool) -> tuple[list[str], list[list[str]]]:
    """Methods × setups (× modes) of method − baseline differences in points (kml.analysis.compare.format_difference)."""
    shown = [r for r in rows if modes or r["mode"] == "overall"]
    columns = sorted({(r["setup"], r["mode"] == "overall", r["mode"]) for r in shown})
    names = [f"{setup} {mode}" if modes else setup for setup, _, mode in columns]
    methods = sorted({r["method"] for r in shown}, key=method_order)
    cells = {(r["method"], r["setup"], r["mode"]): compare.format_difference(r) for r in shown}
    table = [[m, *[cells.get((m, setup, mode), "") for setup, _, mode in columns]] for m in methods]
    return [f"vs {shown[0]['baseline']}", *names], table


def write_comparisons(rows: list[dict], out: Path, modes: bool) -> None:
    baseline = rows[0]["baseline"]
    header, table = comparison_table(rows, modes)
    slug = baseline.replace(" ", "_").replace("[", "").replace("]", "").replace("+", "p")
    note = ("\n\nDifference from " + baseline + " in accuracy points, paired over identical test tasks; with several "
            "training seeds the mean of the per-seed differences ± a t-interval over seeds.\n")
    unverified = sum(not r["verified"] for r in rows if r["mode"] == "overall")
    if unverified:
        note += (f"\n{unverified} of {sum(r['mode'] == 'overall' for r in rows)} comparisons are unverified: a run in "
                 "them has no test-task fingerprints (written before they were recorded), so the pairing rests on "
                 "identical settings alone.\n")
    (out / f"compare_{slug}.md").write_text(markdown(header, table) + note)
    with open(out / f"compare_{slug}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "baseline", "setup", "mode", "seeds", "mean", "ci95_over_seeds", "seed",
                         "paired_mean", "paired_ci95", "tasks"])
        for r in rows:
            for p in r["per_seed"]:
                writer.writerow([r["method"], baseline, r["setup"], r["mode"], r["seeds"], r["mean"], r["ci95"],
                                 p["seed"], p["mean"], p["ci95"], p["n"]])
    print(f"\n{plain(header, table)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kml.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="run or sweep folders holding results.json files")
    parser.add_argument("--out", help="where to write report.csv and report.md (default: the first folder)")
    parser.add_argument("--published", action="store_true", help=f"add the published numbers ({SOURCE})")
    parser.add_argument("--modes", action="store_true", help="a column per mode beside each setup's overall")
    parser.add_argument("--compare", action="append", default=[], metavar="METHOD",
                        help="differences from this method, paired over identical test tasks (repeatable; "
                             "a row's name, e.g. MAML, 'ProtoNet [released]')")
    parser.add_argument("--at", type=int, metavar="ITERATION",
                        help="the tests taken at this iteration (milestones included) instead of the runs' own")
    parser.add_argument("--curves", metavar="PNG", help="draw validation accuracy against iteration per method")
    parser.add_argument("--schedule", metavar="PNG", help="draw test accuracy against the iterations tested at")
    parser.add_argument("--transference", metavar="PNG",
                        help="also draw the runs' transference histograms (a row per method, a column per step)")
    args = parser.parse_args(argv)
    try:
        runs = find_results(args.folders, args.at)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not runs:
        tested = iterations_tested(args.folders)
        at = f" tested at iteration {args.at} (tested at: {', '.join(map(str, tested)) or 'none'})" if args.at else ""
        print(f"error: no results.json{at} under {' '.join(args.folders)}; did the runs finish?", file=sys.stderr)
        return 2
    header, rows, records = build_table(runs, args.published, args.modes)
    out = Path(args.out or args.folders[0])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "report.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "setup", "mode", "source", "seed", "mean", "ci95", "n"])
        writer.writeheader()
        writer.writerows(records)
    note = f"\n\nPaper numbers: {SOURCE}\n" if args.published else "\n"
    (out / "report.md").write_text(markdown(header, rows) + note)
    print(plain(header, rows))
    tests = compare.test_records(runs) if args.compare else []
    for baseline in args.compare:
        try:
            differences = compare.compare(tests, baseline)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if not differences:
            known = ", ".join(sorted({t.method for t in tests})) or "none (no test_tasks.npz)"
            print(f"error: no run of --compare {baseline!r} shares a setup and seed with another method; "
                  f"methods with test tasks: {known}", file=sys.stderr)
            return 2
        write_comparisons(differences, out, args.modes)
    if args.schedule:
        curves = compare.accuracy_at_iterations(args.folders)
        drawn = plots.learning_curves(curves, Path(args.schedule), "test accuracy at the iterations tested",
                                      "test accuracy (%)", log_iterations=True)
        print(f"wrote {drawn}")
    own = find_results(args.folders) if args.at else runs  # training curves are whole runs'
    if args.curves:
        curves = compare.validation_curves(own)
        if curves:
            ordered = {setup: {m: methods[m] for m in sorted(methods, key=method_order)}
                       for setup, methods in sorted(curves.items(), key=lambda item: -len(item[1]))}  # widest first
            print(f"wrote {plots.learning_curves(ordered, Path(args.curves), 'validation accuracy')}")
        else:
            print("no validation accuracy in the runs' metrics.jsonl", file=sys.stderr)
    if args.transference:
        figure = Path(args.transference)
        grids = transference_grids(own)
        if not grids:
            print("no transference measurements (transference/lr_step*.npz) under these runs", file=sys.stderr)
        for folder, directions, grid in grids:
            path = figure if folder == "transference" else figure.with_name(f"{figure.stem}_reverse{figure.suffix}")
            title = f"transference {', '.join(directions)}: LR of one outer step on a source task, per target"
            print(f"wrote {plots.transference_grid(grid, path, title)}")
        if grids:
            table = figure.with_suffix(".md")
            table.write_text(markdown(*transference_table(grids)) + "\n\nShare of the source tasks whose outer step "
                             "lowered the target's query loss (LR < 1: positive transfer), over (target, source) pairs.\n")
            print(f"wrote {table}")
    print(f"\n{len(runs)} runs; wrote {out / 'report.csv'} and {out / 'report.md'}")
    return 0

