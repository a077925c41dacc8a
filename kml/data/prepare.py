"""`prepare`: official archive -> the prepared format of kml.data.store (your own folders: kml/data/folder.py).

A built-in dataset is an entry of the registry, conf/dataset/<name>.yaml, whose `_target_` names a module
exposing
  CHANNELS: int                       stored channels (Omniglot 1, others 3)
  DOWNLOADS: list[str]                official addresses (empty when there is none)
  classes(source) -> {split: [(class name, [file keys])]}   fixed splits, raising DataError on a wrong layout
and optionally
  READ_OPTIONS: dict                  extra arguments of images.to_array (crop_bottom, invert)
  open_source(path) -> Source         when the source is not a single folder or archive
  fill(writer, source, files, image_size)   when images are not one file each (CIFAR pickles)
and whose YAML states the runtime facts written into the manifest (`rotate_classes`).
Split membership always comes from fixed lists (class_splits.json's, read by `fixed_splits`, or a
module's own), never from the order of files in a source; rows follow the order of those lists. A source lacking classes
of those lists is refused (`MissingClasses`) unless --allow-missing-classes takes the classes present.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path

from kml.data import registry, sources, store
from kml.data.download import fetch
from kml.data.errors import DataError, warn

# The default `way`: a split with fewer classes cannot serve a single episode.
MIN_CLASSES = 5


class MissingClasses(DataError):
    """A source without some classes of a dataset's fixed lists. `present` is the split of the classes it
    has, and `note` says how many of each split that is, for --allow-missing-classes to go on with."""

    def __init__(self, message: str, present: dict[str, list[tuple[str, list[str]]]], note: str):
        super().__init__(message)
        self.present, self.note = present, note


def prepare(name: str, source: str | Path | None = None, root: str | Path = "data", image_size: int = 84,
            download: bool = False, force: bool = False, allow_missing_classes: bool = False,
            min_classes: int = MIN_CLASSES) -> Path:
    module = registry.module(name)
    check_sizes(image_size, min_classes)
    if already_prepared(root, name, image_size, force):
        return store.prepared_dir(root, name, image_size)
    if download:
        source = _download(name, module, Path(source) if source else Path(root) / "downloads" / name)
    if source is None:
        raise DataError(f"prepare {name} needs --source PATH (the official archive or its folder) or --download")
    source = Path(source).expanduser()
    opened = getattr(module, "open_source", sources.open_source)(source)
    try:
        classes = module.classes(opened)
    except MissingClasses as partial:
        if not allow_missing_classes:
            raise
        warn(partial.note)
        classes = partial.present
    require_classes(classes, min_classes, f"{source} holds", "pass a more complete archive")

    def fill(writer, files):
        if hasattr(module, "fill"):
            module.fill(writer, opened, files, image_size)
        else:
            reader = store.image_reader(image_size, module.CHANNELS, **getattr(module, "READ_OPTIONS", {}))
            store.fill_from_files(writer, opened, files, reader)
    return write(name, classes, fill, root, image_size, module.CHANNELS, opened,
                 rotate_classes=registry.rotate_classes(name))


def check_sizes(image_size: int, min_classes: int) -> None:
    if image_size < 1:
        raise DataError(f"--image-size must be a positive number of pixels, not {image_size}")
    if min_classes < 2:
        raise DataError(f"--min-classes must be at least 2 (the smallest way of an episode), not {min_classes}")


def already_prepared(root, name: str, image_size: int, force: bool) -> bool:
    if store.is_prepared(root, name, image_size) and not force:
        print(f"{name} is already prepared at {store.prepared_dir(root, name, image_size)}; "
              "nothing to do (--force to redo)")
        return True
    return False


def require_classes(classes: dict[str, list], min_classes: int, where: str, fix: str) -> None:
    """Refuse a split that cannot serve a `min_classes`-way episode, naming every short split."""
    short = [f"{split} {len(classes.get(split, []))}" for split in store.SPLITS
             if len(classes.get(split, [])) < min_classes]
    if short:
        raise DataError(f"{where} too few classes for {min_classes}-way episodes ({', '.join(short)}); "
                        f"{fix}, or pass --min-classes N to allow N-way episodes at most")


def write(name: str, classes: dict[str, list[tuple[str, list[str]]]],
          fill: Callable[[store.PreparedWriter, dict[str, tuple[str, int]]], None], root, image_size: int,
          channels: int, source: sources.Source, rotate_classes: bool, split_record: dict | None = None) -> Path:
    """Lay the classes out, let `fill` put every image in its row, and publish atomically."""
    counts, files = store.layout(classes)
    info = {"path": str(source.path.resolve()), "sha256": source.sha256()}
    with store.PreparedWriter(root, name, image_size, channels, counts, info, rotate_classes=rotate_classes,
                              split_record=split_record) as writer:
        fill(writer, files)
        path = writer.commit()
    summary = ", ".join(f"{s} {len(c)} classes" for s, c in classes.items())
    print(f"prepared {name} at {path}: {summary}")
    return path


def _download(name: str, module, folder: Path) -> Path:
    if not module.DOWNLOADS:
        raise DataError(f"{name} has no official download address; obtain it yourself and pass it with --source")
    paths = [fetch(url, folder / url.rsplit("/", 1)[-1]) for url in module.DOWNLOADS]
    return paths[0] if len(paths) == 1 else folder


@cache
def fixed_splits(name: str) -> dict[str, list[str]]:
    """The documented class lists of a dataset (split -> class names) from class_splits.json."""
    entry = json.loads((Path(__file__).with_name("class_splits.json")).read_text())[name]
    return {split: entry[split] for split in store.SPLITS}


def split_by_lists(name: str, found: dict[str, list[str]], source: sources.Source, allow_missing: bool = False,
                   lists: dict[str, list[str]] | None = None) -> dict[str, list[tuple[str, list[str]]]]:
    """Arrange found class -> files by the fixed lists (by default the dataset's in class_splits.json);
    a missing class raises MissingClasses unless allowed."""
    lists = lists or fixed_splits(name)
    present = {split: [(c, sorted(found[c])) for c in names if c in found] for split, names in lists.items()}
    total = sum(len(names) for names in lists.values())
    missing = [c for names in lists.values() for c in names if c not in found]
    if not missing:
        return present
    counts = ", ".join(f"{split} {len(present[split])}/{len(names)}" for split, names in lists.items())
    note = (f"{len(missing)} of the {total} {name} classes are missing from {source.path}; "
            f"preparing the {total - len(missing)} present ({counts})")
    if not allow_missing:
        raise MissingClasses(f"{source.path} lacks {len(missing)} of the {total} {name} classes (e.g. {missing[0]!r};"
                             f" present: {counts}); pass the complete official archive, or --allow-missing-classes "
                             "to prepare the classes present", present, note)
    warn(note)
    return present
