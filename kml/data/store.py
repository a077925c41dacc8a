"""The prepared-data format: data/<name>/<size>px/<split>.npy (uint8 N×C×H×W, rows grouped by class),
<split>_labels.npy, <split>_classes.json and manifest.json (counts, sizes, sha256 of source and arrays,
and the runtime facts the sampler needs: `channels`, `rotate_classes`).

Everything is written into a hidden temporary folder that is renamed into place only when complete,
so an interrupted preparation never leaves a half-written dataset behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kml.data import registry
from kml.data.errors import DataError
from kml.data.images import decode, to_array
from kml.data.sources import Source

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1


def prepared_dir(root: str | Path, name: str, image_size: int) -> Path:
    return Path(root) / name / f"{image_size}px"


def is_prepared(root: str | Path, name: str, image_size: int) -> bool:
    return (prepared_dir(root, name, image_size) / "manifest.json").is_file()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class PreparedWriter:
    """Fills per-split image arrays row by row; `commit()` checks completeness and publishes atomically.

    `classes[split]` lists (class name, image count); rows of a class are contiguous, in that order.
    `rotate_classes` goes into the manifest for the sampler (a class turned by 90°·k is a new class);
    `split_record`, when given, says how the classes were split (rule and lists) in the manifest's `split`.
    """

    def __init__(self, root, name: str, image_size: int, channels: int,
                 classes: dict[str, list[tuple[str, int]]], source: dict, *, rotate_classes: bool,
                 split_record: dict | None = None):
        self.final = prepared_dir(root, name, image_size)
        self.tmp = self.final.with_name(f".{self.final.name}.tmp-{os.getpid()}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        # Folders this attempt creates (deepest first), removed again if it fails.
        self.created = [p for p in (self.tmp.parent, *self.tmp.parent.parents) if not p.exists()]
        self.tmp.mkdir(parents=True)
        self.name, self.image_size, self.channels, self.source = name, image_size, channels, source
        self.rotate_classes, self.split_record = rotate_classes, split_record
        self.classes = classes
        self.images, self.filled, self.starts = {}, {}, {}
        for split, entries in classes.items():
            counts = np.array([count for _, count in entries], dtype=np.int64)
            self.starts[split] = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
            n = int(counts.sum())
            self.images[split] = np.lib.format.open_memmap(
                self.tmp / f"{split}.npy", mode="w+", dtype=np.uint8, shape=(n, channels, image_size, image_size)
            )
            self.filled[split] = np.zeros(n, dtype=bool)
            np.save(self.tmp / f"{split}_labels.npy", np.repeat(np.arange(len(counts), dtype=np.int64), counts))
            (self.tmp / f"{split}_classes.json").write_text(json.dumps([c for c, _ in entries]))

    def row(self, split: str, class_index: int, image_index: int) -> int:
        return int(self.starts[split][class_index]) + image_index

    def put(self, split: str, row: int, image: np.ndarray) -> None:
        self.images[split][row] = image
        self.filled[split][row] = True

    def commit(self) -> Path:
        manifest = {"format": FORMAT_VERSION, "dataset": self.name, "image_size": self.image_size,
                    "channels": self.channels, "rotate_classes": self.rotate_classes, "source": self.source,
                    **({"split": self.split_record} if self.split_record else {}), "splits": {}}
        for split, images in self.images.items():
            missing = int((~self.filled[split]).sum())
            if missing:
                raise DataError(f"{self.name}: {missing} images of split {split} were never read; the source is incomplete")
            images.flush()
            manifest["splits"][split] = {
                "images": int(images.shape[0]), "classes": len(self.classes[split]),
                "images_sha256": file_sha256(self.tmp / f"{split}.npy"),
                "labels_sha256": file_sha256(self.tmp / f"{split}_labels.npy"),
            }
        self.images.clear()
        (self.tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if self.final.exists():  # an earlier preparation (--force) or a manifest-less leftover
            shutil.rmtree(self.final)
        os.replace(self.tmp, self.final)
        return self.final

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is not None:
            self.images.clear()
            shutil.rmtree(self.tmp, ignore_errors=True)
            for folder in self.created:
                try:
                    folder.rmdir()  # only if still empty
                except OSError:
                    break


def fill_from_files(writer: PreparedWriter, source: Source, files: dict[str, tuple[str, int]],
                    to_image: Callable[[bytes, str], np.ndarray]) -> None:
    """Decode each source file into its (split, row) slot, reading the source once, with a progress bar."""
    with tqdm(total=len(files), desc=f"prepare {writer.name}", unit="img", mininterval=1.0) as bar:
        for name, data in source.stream(files):
            split, row = files[name]
            writer.put(split, row, to_image(data, name))
            bar.update()


def image_reader(size: int, channels: int, **options) -> Callable[[bytes, str], np.ndarray]:
    return lambda data, name: to_array(decode(data, name), size, channels, **options)


def layout(classes: dict[str, list[tuple[str, list[str]]]]) -> tuple[dict, dict]:
    """From split -> [(class, [file names])] build the writer's class counts and the file -> (split, row) map."""
    counts, files = {}, {}
    for split, entries in classes.items():
        counts[split], row = [], 0
        for class_name, names in entries:
            counts[split].append((class_name, len(names)))
            for name in names:
                files[name] = (split, row)
                row += 1
    return counts, files


def load_manifest(root, name: str, image_size: int) -> dict:
    path = prepared_dir(root, name, image_size) / "manifest.json"
    if not path.is_file():
        raise DataError(missing_message(root, name, image_size))
    try:
        return json.loads(path.read_text())
    except ValueError as err:  # cut short or overwritten, like any other file of the folder
        raise DataError(damaged_message(root, name, image_size, path, "not readable JSON")) from err


def missing_message(root, name: str, image_size: int) -> str:
    if name.startswith("synthetic"):
        return f"synthetic data {name} at {image_size}px is missing under {root}; it is generated on first use"
    sizes = sorted(int(p.parent.name.removesuffix("px")) for p in Path(root, name).glob("*px/manifest.json"))
    elsewhere = f" (only at {', '.join(f'{s}px' for s in sizes)}: or set image_size to that)" if sizes else ""
    return (f"dataset {name} at {image_size}px is not prepared under {root}{elsewhere}: "
            f"run `{prepare_command(root, name, image_size)}`")


def damaged_message(root, name: str, image_size: int, path: Path, problem: str) -> str:
    return f"{path} is damaged ({problem}); {repair_hint(root, name, image_size)}"


def repair_hint(root, name: str, image_size: int) -> str:
    if name.startswith("synthetic"):
        return f"delete {prepared_dir(root, name, image_size)}; it is generated again on first use"
    return f"prepare it again: `{prepare_command(root, name, image_size)} --force`"


def prepare_command(root, name: str, image_size: int) -> str:
    what = (f"prepare {name} --source PATH" if name in registry.names()
            else f"prepare folder --name {name} --source DIR")  # not built in: the user's own data
    return f"python -m kml.data {what} --root {root} --image-size {image_size}"
