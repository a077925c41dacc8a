"""Transference throughput and training overhead on the default model:

    .venv/bin/python benchmarks/transference.py [--quick] [--root data] [--device cpu] [--threads N]

Prints numbers only (no timed assertions); see kml.transference.benchmark for what is measured.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from kml.transference import benchmark  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="16 px, 4 sources, one repeat (a smoke test)")
    parser.add_argument("--root", default="data", help="where synthetic data is cached")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = benchmark(args.root, args.quick, args.device)
    width = max(len(label) for label, _, _ in rows)
    for label, value, unit in rows:
        print(f"{label.ljust(width)}  {value:10.3g} {unit}")


if __name__ == "__main__":
    main()
