"""`prepare`: official archive or folder -> the prepared format of kml.data.store.

Each real dataset is a module kml/data/<name>.py exposing
  CHANNELS: int                       stored channels (Omniglot 1, others 3)
  DOWNLOADS: list[str]                official addresses (empty when there is none)
  classes(source) -> {split: [(class name, [file keys])]}   fixed splits, raising DataError on a wrong layout
and optionally
  READ_OPTIONS: dict                  extra arguments of images.to_array (crop_bottom, invert)
  open_source(path) -> Source         when the source is not a single folder or archive
  fill(writer, source, files, image_size)   when images are not one file each (CIFAR pickles)
Split membership always comes from the fixed lists of class_splits.json (`fixed_splits`), never
from the order of files in a source; rows follow the order of those lists.
"""
from __future__ import annotations

import importlib
import json
from functools import cache
from pathlib import Path

from kml.data import sources, store
from kml.data.download import fetch
from kml.data.errors import DataError, warn

REAL_DATASETS = ("omniglot", "miniimagenet", "fc100", "cub", "aircraft")


def dataset_module(name: str):
    if name not in REAL_DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(REAL_DATASETS)}")
    return importlib.import_module(f"kml.data.{name}")


def prepare(name: str, source: str | Path | None = None, root: str | Path = "data", image_size: int = 84,
            download: bool = False, force: bool = False) -> Path:
    module = dataset_module(name)
    if image_size < 1:
        raise DataError(f"--image-size must be a positive number of pixels, not {image_size}")
    target = store.prepared_dir(root, name, image_size)
    if store.is_prepared(root, name, image_size) and not force:
        print(f"{name} is already prepared at {target}; nothing to do (--force to redo)")
        return target
    if download:
        source = _download(name, module, Path(source) if source else Path(root) / "downloads" / name)
    if source is None:
        raise DataError(f"prepare {name} needs --source PATH (the official archive or its folder) or --download")
    source = Path(source).expanduser()
    opened = getattr(module, "open_source", sources.open_source)(source)
    classes = module.classes(opened)
    empty = [split for split in store.SPLITS if not classes.get(split)]
    if empty:
        raise DataError(f"{source} holds no {name} classes of split {', '.join(empty)}; "
                        "pass the complete official archive")
    counts, files = store.layout(classes)
    info = {"path": str(source.resolve()), "sha256": opened.sha256()}
    with store.PreparedWriter(root, name, image_size, module.CHANNELS, counts, info) as writer:
        if hasattr(module, "fill"):
            module.fill(writer, opened, files, image_size)
        else:
            reader = store.image_reader(image_size, module.CHANNELS, **getattr(module, "READ_OPTIONS", {}))
            store.fill_from_files(writer, opened, files, reader)
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


def split_by_lists(name: str, found: dict[str, list[str]], source: sources.Source,
                   allow_missing: bool = False) -> dict[str, list[tuple[str, list[str]]]]:
    """Arrange found class -> files by the fixed lists; a missing class is an error unless allowed."""
    lists = fixed_splits(name)
    total = sum(len(names) for names in lists.values())
    missing = [c for names in lists.values() for c in names if c not in found]
    if missing and not allow_missing:
        raise DataError(f"{source.path} lacks {len(missing)} of the {total} {name} classes (e.g. {missing[0]!r}); "
                        "pass the complete official archive")
    if missing:
        present = ", ".join(f"{split} {sum(c in found for c in names)}/{len(names)}" for split, names in lists.items())
        warn(f"{len(missing)} of the {total} {name} classes are missing from {source.path}; "
             f"preparing the {total - len(missing)} present ({present})")
    return {split: [(c, sorted(found[c])) for c in names if c in found] for split, names in lists.items()}
