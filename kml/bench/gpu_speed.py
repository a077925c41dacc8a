"""Step 3 of the GPU check: the train benchmark's core rows (84 px, 5-way 1-shot, meta-batch 10, second
order: MAML, MMAML+KML, ProtoNet, MProtoNet+KML), first with the default switches beside the per-task loop
and the `higher` reference, then with each fast-path switch on its own (batched rows only), all in this
one process so that every variant is compared with the same reference rows. Results go to speed.json
after each variant, and a figure to speed.png at the end."""

from __future__ import annotations

import argparse
import traceback
from pathlib import Path

from kml.bench.gpu_steps import pyplot, write_json


def variants(device_type: str, quick: bool) -> list[tuple[str, list[str]]]:
    """(name, `python -m kml.bench train` flags); the first is the reference run, with every path.
    torch.compile uses inductor on a GPU (Triton), `eager` on a CPU (no C compiler needed); it applies only
    where no second derivative is taken (ProtoNet, evaluation). The compiled variant goes last: its
    compilation is the slowest part, and a step cut short then loses only it."""
    repeats = "1" if quick else "10"
    variant_repeats = "1" if quick else "5"
    backend = "inductor" if device_type == "cuda" else "eager"
    batched = ["--paths", "batched", "--repeats", variant_repeats]
    return [
        ("default switches", ["--paths", "batched,per-task,higher", "--repeats", repeats]),
        ("autocast bf16", [*batched, "--autocast"]),
        ("channels_last", [*batched, "--channels-last", "true"]),
        ("tasks per pass 1", [*batched, "--tasks-per-pass", "1"]),
        (f"compile {backend}", [*batched, "--compile", backend]),
    ]


def row_record(result: dict) -> dict:
    case = result["case"]
    return {"method": case.method, "order": case.order, "shot": case.shot, "path": case.path,
            "ms": result["ms"], "cpu_ms": result["cpu_ms"], "tasks_per_s": result["tasks_per_s"],
            "peak_mb": result["peak_mb"], "gflop": result["gflop"], "flops_per_s": result["flops_per_s"],
            "fp32_ceiling_flops_per_s": result["ceiling_flops_per_s"]}


def speed(args: argparse.Namespace) -> None:
    import torch

    from kml.bench.cli import build_parser, threads
    from kml.bench.reference import higher_status
    from kml.bench.train import bench_train

    device = torch.device(args.device)
    record = {"higher": higher_status() or "imports", "variants": []}
    sizes = ["--quick"] if args.quick else []  # else the train benchmark's defaults: 84 px, meta-batch 10
    for name, flags in variants(device.type, args.quick):
        argv = ["train", "--device", args.device, "--core", *sizes, *flags]
        print(f"\n== {name}: python -m kml.bench {' '.join(argv)}", flush=True)
        entry = {"name": name, "argv": argv, "rows": []}
        try:
            bench_args = build_parser().parse_args(argv)
            with threads(bench_args.threads):
                entry["rows"] = [row_record(result) for result in bench_train(bench_args, device)]
        except Exception as error:  # one switch failing (say, compile) must not lose the others
            traceback.print_exc()
            entry["error"] = f"{type(error).__name__}: {error}"
        record["variants"].append(entry)
        write_json(args.out / "speed.json", record)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    figure(record, args.out / "speed.png")


def figure(record: dict, path: Path) -> None:
    """ms per meta-iteration of each method, one bar per variant (batched) and the references."""
    plt = pyplot()
    if plt is None:
        return
    bars: dict[str, dict[str, float]] = {}  # label -> method -> ms
    for entry in record["variants"]:
        for row in entry["rows"]:
            label = entry["name"] if row["path"] == "batched" else row["path"]
            bars.setdefault(label, {})[row["method"]] = row["ms"]
    methods = sorted({method for values in bars.values() for method in values})
    if not methods:
        return
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(bars)
    for i, (label, values) in enumerate(bars.items()):
        ax.bar([m + i * width for m in range(len(methods))], [values.get(method, 0) for method in methods],
               width, label=label)
    ax.set_xticks([m + 0.4 - width / 2 for m in range(len(methods))], methods)
    ax.set_ylabel("ms per meta-iteration (median)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
