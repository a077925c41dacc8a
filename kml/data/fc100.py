"""FC100 (Oreshkin et al., NeurIPS 2018): CIFAR-100 split by superclass, 12/4/4 superclasses = 60/20/20
classes, all 600 images of each class (the official train and test pickles together).

Source: the official cifar-100-python.tar.gz or its extracted folder cifar-100-python/{train,test,meta}.
Class names are "superclass/class"; a split lists its superclasses in class_splits.json order and
each superclass's classes sorted by name.
"""
from __future__ import annotations

import io
import pickle
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from kml.data import sources
from kml.data.errors import DataError
from kml.data.images import to_array
from kml.data.prepare import fixed_splits

CHANNELS = 3
DOWNLOADS = ["https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"]
PARTS = ("train", "test", "meta")
CLASSES_PER_SUPERCLASS = 5

# Unpickling can run code. The official pickles hold only dicts, lists, bytes and numpy arrays, so
# only numpy's array reconstruction (and the bytes codec of protocol-2 pickles written by Python 3)
# is allowed: a tampered pickle fails instead of running anything.
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


class CifarSource(sources.Source):
    """The archive or folder, with its three pickles loaded once and kept for `classes` and `fill`."""

    def __init__(self, inner: sources.Source):
        super().__init__(inner.path)
        self.inner = inner
        self._batches: dict[str, dict] | None = None

    def names(self):
        return self.inner.names()

    def stream(self, wanted):
        return self.inner.stream(wanted)

    def sha256(self):
        return self.inner.sha256()

    def batches(self) -> dict[str, dict]:
        if self._batches is None:
            prefix = sources.find_prefix(self.names(), "meta")
            if prefix is None or not all(prefix + part in self.names() for part in PARTS):
                raise DataError(f"{self.path} does not look like CIFAR-100: no cifar-100-python/{{train,test,meta}}; "
                                "pass cifar-100-python.tar.gz or its folder")
            loaded = {}
            for name, data in self.inner.stream([prefix + part for part in PARTS]):
                loaded[name.removeprefix(prefix)] = _unpickle(data, name, self.path)
            self._batches = loaded
        return self._batches


def _unpickle(data: bytes, name: str, path: Path) -> dict:
    try:
        # encoding='bytes': the official pickles were written by Python 2.
        batch = _ArraysOnly(io.BytesIO(data), encoding="bytes").load()
    except Exception as err:  # any failure means a damaged or foreign file
        raise DataError(f"{path}: cannot read the CIFAR pickle {name} ({type(err).__name__}: {err}); "
                        "download cifar-100-python.tar.gz again") from err
    if not isinstance(batch, dict):
        raise DataError(f"{path}: {name} is not a CIFAR-100 pickle; pass cifar-100-python.tar.gz")
    return batch


def open_source(path: Path) -> CifarSource:
    return CifarSource(sources.open_source(path))


def classes(source: CifarSource) -> dict[str, list[tuple[str, list[str]]]]:
    batches = source.batches()
    members: dict[str, set[str]] = defaultdict(set)
    images: dict[str, list[str]] = defaultdict(list)
    try:
        fine_names = [n.decode() for n in batches["meta"][b"fine_label_names"]]
        coarse_names = [n.decode() for n in batches["meta"][b"coarse_label_names"]]
        for part in PARTS[:2]:
            batch = batches[part]
            if np.shape(batch[b"data"]) != (len(batch[b"fine_labels"]), 3 * 32 * 32):
                raise ValueError(f"{part} holds data of shape {np.shape(batch[b'data'])}")
            for index, (f, c) in enumerate(zip(batch[b"fine_labels"], batch[b"coarse_labels"], strict=True)):
                members[coarse_names[c]].add(fine_names[f])
                images[fine_names[f]].append(f"{part}/{index}")  # the key `fill` decodes
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as err:
        raise DataError(f"{source.path}: the CIFAR pickles do not hold CIFAR-100 ({type(err).__name__}: {err}); "
                        "pass the official cifar-100-python.tar.gz") from err
    lists = fixed_splits("fc100")
    expected = {s for names in lists.values() for s in names}
    if set(members) != expected or any(len(m) != CLASSES_PER_SUPERCLASS for m in members.values()):
        raise DataError(f"{source.path}: its superclasses are not the 20 of CIFAR-100 with 5 classes each; "
                        "pass the official cifar-100-python.tar.gz")
    return {split: [(f"{sup}/{fine}", images[fine]) for sup in supers for fine in sorted(members[sup])]
            for split, supers in lists.items()}


def fill(writer, source: CifarSource, files: dict[str, tuple[str, int]], image_size: int) -> None:
    batches = source.batches()
    arrays = {part: np.asarray(batches[part][b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for part in PARTS[:2]}
    for key, (split, row) in tqdm(files.items(), desc="prepare fc100", unit="img", mininterval=1.0):
        part, index = key.split("/")
        image = arrays[part][int(index)]  # RGB planes, already C×32×32
        if image_size != 32:
            image = to_array(Image.fromarray(image.transpose(1, 2, 0)), image_size, CHANNELS)
        writer.put(split, row, image)
