"""Prepared arrays checked against their manifest.

Opening a split costs nothing extra: each array's shape and dtype (from its .npy header) and its byte size
are compared with what the manifest implies, which catches a copy cut short or a file synced half-way
before NumPy fails on it. `python -m kml.data verify` recomputes every array's sha256 (a read of the
whole dataset), which also catches bytes changed in place.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from kml.data import store
from kml.data.errors import DataError

HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
# Each split's arrays, by the manifest key of their sha256.
ARRAYS = {"images_sha256": "{split}.npy", "labels_sha256": "{split}_labels.npy"}


def check_split(root, name: str, image_size: int, split: str) -> None:
    """Raise DataError (naming the file and the repair command) when an array of the split does not have
    the shape, dtype and byte size its manifest implies."""
    manifest = store.load_manifest(root, name, image_size)
    folder = store.prepared_dir(root, name, image_size)
    n = manifest["splits"][split]["images"]
    expected = {f"{split}.npy": ((n, manifest["channels"], image_size, image_size), np.dtype(np.uint8)),
                f"{split}_labels.npy": ((n,), np.dtype(np.int64))}
    for file, (shape, dtype) in expected.items():
        problem = array_problem(folder / file, shape, dtype)
        if problem:
            raise DataError(store.damaged_message(root, name, image_size, folder / file, problem))


def array_problem(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> str | None:
    """What is wrong with the .npy file at `path` given the array it should hold, or None."""
    try:
        with open(path, "rb") as f:
            reader = HEADER_READERS.get(np.lib.format.read_magic(f))
            if reader is None:
                return "an unknown .npy format version"
            found_shape, _, found_dtype = reader(f)
            size, expected_size = os.fstat(f.fileno()).st_size, f.tell() + int(np.prod(shape)) * dtype.itemsize
    except FileNotFoundError:
        return "missing"
    except ValueError:  # a header cut short or overwritten
        return "not a NumPy array file"
    if found_shape != shape or found_dtype != dtype:
        return f"holds {found_dtype} {found_shape} where the manifest says {dtype} {shape}"
    if size != expected_size:
        return f"{size} bytes where its array needs {expected_size}: {'cut short' if size < expected_size else 'too long'}"
    return None


def prepared_folders(root, names: list[str]) -> list[Path]:
    """The prepared <name>/<size>px folders under root, of the given datasets (all when none given)."""
    folders = sorted(manifest.parent for manifest in Path(root).glob("*/*px/manifest.json"))
    if not names:
        if not folders:
            raise DataError(f"no prepared datasets under {root}; pass the folder they live in with --root")
        return folders
    for name in names:
        if not any(folder.parent.name == name for folder in folders):
            raise DataError(f"{name} is not prepared under {root}; pass the folder it lives in with --root")
    return [folder for folder in folders if folder.parent.name in names]


def damaged_arrays(folder: Path) -> list[str]:
    """Each array of a prepared folder whose sha256 differs from its manifest's, as 'file (why)'."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except ValueError:
        return ["manifest.json (not readable JSON)"]
    damaged = []
    for split, entry in manifest["splits"].items():
        for key, pattern in ARRAYS.items():
            path = folder / pattern.format(split=split)
            if not path.is_file():
                damaged.append(f"{path.name} (missing)")
            elif store.file_sha256(path) != entry[key]:
                damaged.append(f"{path.name} (sha256 differs from the manifest)")
    return damaged
