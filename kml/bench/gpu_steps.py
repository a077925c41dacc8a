"""The bodies of the GPU check's steps, each run in a child process of `python -m kml.bench gpu`:

  python -m kml.bench.gpu_steps env|speed|real --out DIR --device cuda|cpu [--quick] [step options]

A child writes its results to DIR/<step>.json as they come (an atomic replace after each part), so that
a step stopped at its time limit still leaves what it had measured; its printed lines go to DIR/<step>.log
(the parent redirects them). `env` is here; `speed` is kml.bench.gpu_speed, `real` kml.bench.gpu_real.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path


def write_json(path: Path, data: dict) -> None:
    """Replace `path` atomically: a reader (or a kill at the time limit) never sees half a file."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(partial, path)


def pyplot():
    """matplotlib's pyplot on the Agg backend, or None (said once) where matplotlib is missing: a figure is
    a bonus, never a reason for a step to fail."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as missing:
        print(f"no figure: {missing}")
        return None
    return plt


def matmul_tflops(device, precision: str, n: int, repeats: int) -> float:
    """Median TFLOP/s of an n×n @ n×n product at `precision`: fp32 (IEEE), tf32 (fp32 tensors on tensor
    cores) or bf16. set_float32_matmul_precision is the switch that torch 2.11 (the GPU machine's) and
    later both honour."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    try:
        seconds = []
        for i in range(3 + repeats):  # three warm-ups
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:
                seconds.append(time.perf_counter() - start)
    finally:
        torch.set_float32_matmul_precision(before)
    return 2 * n**3 / statistics.median(seconds) / 1e12


def environment(args: argparse.Namespace) -> None:
    """Step 1's measurements: versions, the device and its memory, and the matmul ceilings every other
    figure is compared with."""
    import torch

    from kml.bench.instruments import describe_device

    device = torch.device(args.device)
    facts = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": describe_device(device),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        facts |= {"memory_gib": round(properties.total_memory / 2**30, 1), "multiprocessors":
                  properties.multi_processor_count, "capability": f"{properties.major}.{properties.minor}"}
    else:
        facts["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    record = {"facts": facts, "ceilings_tflops": {}, "matmul_size": None}
    print("environment: " + ", ".join(f"{key} {value}" for key, value in facts.items()), flush=True)
    write_json(args.out / "env.json", record)
    n = (1024 if device.type == "cuda" else 256) if args.quick else (8192 if device.type == "cuda" else 2048)
    record["matmul_size"] = n
    for precision in ("fp32", "tf32", "bf16"):
        if precision == "tf32" and device.type != "cuda":
            record["ceilings_tflops"][precision] = None  # a CUDA tensor-core mode
            print("  tf32: n/a on a CPU", flush=True)
            continue
        rate = matmul_tflops(device, precision, n, 3 if args.quick else 10)
        record["ceilings_tflops"][precision] = rate
        print(f"  matmul ceiling {precision}: {rate:.2f} TFLOP/s ({n}x{n}x{n}, median of repeats)", flush=True)
        write_json(args.out / "env.json", record)
    write_json(args.out / "env.json", record)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kml.bench.gpu_steps", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["env", "speed", "real"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the CPU test of the check)")
    parser.add_argument("--work", type=Path, help="real: where archives are joined, data prepared, the run kept")
    parser.add_argument("--data-dir", type=Path, help="real: where the carried archives are")
    parser.add_argument("--seconds", type=float, help="real: this step's time limit, to size the run")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.step == "env":
        environment(args)
    elif args.step == "speed":
        from kml.bench.gpu_speed import speed

        speed(args)
    else:
        from kml.bench.gpu_real import real_run

        real_run(args)


if __name__ == "__main__":
    main()
