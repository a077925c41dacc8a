"""Visual features computed once with the frozen encoder and cached, so meta-training never runs it.

    DATA_ROOT/mapper/features/<dataset>/<vision id>/features.npy   float16 [n, T, d], memory-mapped
                                                  /keys.json       the image of each row
                                                  /manifest.json   encoder, feature kind, shape, keys hash

The vision id names the encoder, its feature kind and a hash of where its weights come from, so changing
the encoder never reuses stale features. A cache is written in a temporary folder and renamed into place
when complete: an interrupted run recomputes it instead of reading half a file.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from kml.data.errors import DataError
from kml.mapper.encoders import load_vision, visual_features

VERSION = 1
_IDENTITY_KEYS = ("random", "seed", "hub", "local_dir", "features")


def vision_id(spec: Mapping) -> str:
    identity = {k: _plain(spec.get(k)) for k in _IDENTITY_KEYS}
    if identity["local_dir"]:  # the folder's name, not its path: moving data.root keeps the cache
        identity["local_dir"] = Path(str(identity["local_dir"])).name
    identity = json.dumps(identity, sort_keys=True)
    return f"{spec.get('name', 'vision')}-{spec.get('features', 'pooled')}-{_sha1(identity)[:8]}"


def _plain(value):
    return dict(value) if isinstance(value, Mapping) else value


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError as err:
        raise DataError(f"image {path} is missing; the annotation names it, so the image folder is "
                        "incomplete (re-extract the archive)") from err
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"image {path} cannot be decoded ({type(err).__name__}); replace the file") from err


def cached_features(root: str | Path, dataset: str, spec: Mapping, keys: Sequence[str],
                    fetch: Callable[[Sequence[int]], list], device: torch.device | str = "cpu") -> np.ndarray:
    """Features of the images `fetch(rows)` returns (PIL images or uint8 HWC arrays), one row per key."""
    if not keys:
        raise DataError(f"{dataset}: no images to compute features of")
    folder = Path(root) / "mapper" / "features" / dataset / vision_id(spec)
    digest = _sha1("\n".join(keys))
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest.get("version") == VERSION and manifest.get("keys_sha1") == digest:
            return np.load(folder / "features.npy", mmap_mode="r")
    except (OSError, ValueError):
        pass  # no cache yet, or a damaged one: recompute
    model, processor, kind = load_vision(spec, device)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    batch, array = int(spec.get("batch_size", 64)), None
    try:
        for start in tqdm(range(0, len(keys), batch), desc=f"features {dataset}", unit="batch", leave=False):
            rows = range(start, min(start + batch, len(keys)))
            pixels = processor(images=fetch(rows), return_tensors="pt")["pixel_values"].to(device)
            values = visual_features(model, pixels, kind).float().cpu().numpy()
            if array is None:
                array = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float16,
                                                  shape=(len(keys), *values.shape[1:]))
            array[start:start + len(rows)] = values
        array.flush()
        (tmp / "keys.json").write_text(json.dumps(list(keys)))
        (tmp / "manifest.json").write_text(json.dumps({
            "version": VERSION, "vision": {k: _plain(spec.get(k)) for k in ("name", *_IDENTITY_KEYS)},
            "shape": list(array.shape), "keys_sha1": digest}, indent=1))
        del array
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return np.load(folder / "features.npy", mmap_mode="r")
