"""Prepare a dataset once, into the memory-mappable arrays that runs read; check prepared arrays.

  python -m kml.data prepare NAME --source PATH [--root DIR] [--image-size N] [--download] [--force]
                                  [--allow-missing-classes] [--min-classes N]
  python -m kml.data prepare folder --name NAME --source DIR|ARCHIVE [--channels 1|3]
                                  [--split 0.7,0.15,0.15 --split-seed 0 | --split-file FILE]
                                  [--skip-unreadable] [--rotate-classes] [--root DIR] [--image-size N] ...
  python -m kml.data verify [NAME ...] [--root DIR]

NAME is a built-in dataset (conf/dataset/NAME.yaml); `folder` prepares your own <class>/<image> tree.
"""
from __future__ import annotations

import argparse
import sys

from kml.data import folder, integrity, registry, store
from kml.data.prepare import MIN_CLASSES, prepare
from kml.errors import DataError, UserError

FOLDER = "folder"
# Options of one kind of preparation that the other kind would silently ignore.
FOLDER_ONLY = ("name", "channels", "split", "split_seed", "split_file", "skip_unreadable", "rotate_classes")
OFFICIAL_ONLY = ("download", "allow_missing_classes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kml.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare", help="prepare a built-in dataset from its official archive, or a folder")
    p.add_argument("dataset", metavar="NAME", choices=[*registry.names(), FOLDER],
                   help=f"one of {', '.join(registry.names())}, or {FOLDER}")
    p.add_argument("--source", help="official archive, or a folder with its layout; for `folder`: your images")
    p.add_argument("--root", default="data", help="where prepared data lives (default: data)")
    p.add_argument("--image-size", type=int, default=84, help="side of the square images (default: 84)")
    p.add_argument("--force", action="store_true", help="prepare again even if already prepared")
    p.add_argument("--min-classes", type=int, default=MIN_CLASSES,
                   help=f"refuse a split with fewer classes, the most `way` it could serve (default: {MIN_CLASSES})")
    built_in = p.add_argument_group("built-in datasets")
    built_in.add_argument("--download", action="store_true", help="fetch the official archive first")
    built_in.add_argument("--allow-missing-classes", action="store_true",
                          help="prepare a partial archive: the classes present of each fixed split")
    own = p.add_argument_group("folder: your own <class>/<image> or train|val|test/<class>/<image> tree")
    own.add_argument("--name", help="the new mode's name, as in benchmark.modes=[omniglot,NAME]")
    own.add_argument("--channels", type=int, help="1 (grey) or 3 (colour; default)")
    own.add_argument("--split", help=f"train,val,test fractions of the classes (default: {folder.DEFAULT_SPLIT})")
    own.add_argument("--split-seed", type=int, help="seed of the class shuffle behind --split (default: 0)")
    own.add_argument("--split-file", help='JSON {"train": [classes], "val": [...], "test": [...]}')
    own.add_argument("--skip-unreadable", action="store_true", help="leave out images that cannot be decoded")
    own.add_argument("--rotate-classes", action="store_true",
                     help="treat each class turned by 90°·k as a new class in episodes (as Omniglot)")
    v = commands.add_parser("verify", help="recompute the sha256 of every prepared array against its manifest")
    v.add_argument("names", nargs="*", metavar="NAME", help="datasets to check (default: all under --root)")
    v.add_argument("--root", default="data", help="where prepared data lives (default: data)")
    args = parser.parse_args(argv)
    try:
        if args.command == "verify":
            return verify(args.root, args.names)
        prepare_dataset(args)
    except UserError as err:  # a missing archive, a bad option, a registry entry that cannot be imported
        print(f"error: {err}", file=sys.stderr)  # always one line
        return 2
    return 0


def prepare_dataset(args: argparse.Namespace) -> None:
    """A built-in dataset or a folder, each with only its own options."""
    is_folder = args.dataset == FOLDER
    own, built_in = ({o: getattr(args, o) for o in options if _given(getattr(args, o))}
                     for options in (FOLDER_ONLY, OFFICIAL_ONLY))
    misplaced = built_in if is_folder else own
    if misplaced:
        raise DataError(f"--{next(iter(misplaced)).replace('_', '-')} is only for "
                        f"{'built-in datasets' if is_folder else 'prepare folder'}; drop it")
    common = {"root": args.root, "image_size": args.image_size, "min_classes": args.min_classes, "force": args.force}
    if is_folder:
        folder.prepare(own.pop("name", None), args.source, **common, **own)
    else:
        prepare(args.dataset, args.source, **common, **built_in)


def _given(value) -> bool:
    """Set on the command line: not the None or False default (0 is a value given)."""
    return value is not None and value is not False


def verify(root: str, names: list[str]) -> int:
    """Print each prepared dataset and size OK or DAMAGED (which files, how to repair); 1 if any is damaged."""
    damaged = 0
    for prepared in integrity.prepared_folders(root, names):
        label = f"{prepared.parent.name}/{prepared.name}"
        problems = integrity.damaged_arrays(prepared)
        if problems:
            damaged += 1
            fix = store.repair_hint(root, prepared.parent.name, int(prepared.name.removesuffix("px")))
            print(f"{label}: DAMAGED {', '.join(problems)}; {fix}", flush=True)
        else:
            print(f"{label}: OK", flush=True)
    return 1 if damaged else 0


if __name__ == "__main__":
    sys.exit(main())
