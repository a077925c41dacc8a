"""python -m kml.data prepare NAME --source PATH [--root DIR] [--image-size N] [--download] [--force]
python -m kml.data verify [NAME ...] [--root DIR]"""
from __future__ import annotations

import argparse
import sys

from kml.data import integrity, store
from kml.data.errors import DataError
from kml.data.prepare import REAL_DATASETS, prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kml.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare", help="prepare a dataset from its official archive or folder")
    p.add_argument("name", choices=REAL_DATASETS)
    p.add_argument("--source", help="official archive, or a folder with its layout")
    p.add_argument("--root", default="data", help="where prepared data lives (default: data)")
    p.add_argument("--image-size", type=int, default=84, help="side of the square images (default: 84)")
    p.add_argument("--download", action="store_true", help="fetch the official archive first")
    p.add_argument("--force", action="store_true", help="prepare again even if already prepared")
    v = commands.add_parser("verify", help="recompute the sha256 of every prepared array against its manifest")
    v.add_argument("names", nargs="*", metavar="NAME", help="datasets to check (default: all under --root)")
    v.add_argument("--root", default="data", help="where prepared data lives (default: data)")
    args = parser.parse_args(argv)
    try:
        if args.command == "verify":
            return verify(args.root, args.names)
        prepare(args.name, args.source, args.root, args.image_size, args.download, args.force)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)  # a DataError message is always one line
        return 2
    return 0


def verify(root: str, names: list[str]) -> int:
    """Print each prepared dataset and size OK or DAMAGED (which files, how to repair); 1 if any is damaged."""
    damaged = 0
    for folder in integrity.prepared_folders(root, names):
        label = f"{folder.parent.name}/{folder.name}"
        problems = integrity.damaged_arrays(folder)
        if problems:
            damaged += 1
            fix = store.repair_hint(root, folder.parent.name, int(folder.name.removesuffix("px")))
            print(f"{label}: DAMAGED {', '.join(problems)}; {fix}", flush=True)
        else:
            print(f"{label}: OK", flush=True)
    return 1 if damaged else 0


if __name__ == "__main__":
    sys.exit(main())
