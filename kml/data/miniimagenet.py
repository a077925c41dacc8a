"""mini-ImageNet (Vinyals et al. 2016) with the Ravi & Larochelle (2017) class split, 64/16/20 classes.

Two source layouts, as a folder or an archive, possibly under one top folder:
  (a) the common distribution: images/*.jpg with train.csv, val.csv, test.csv (`filename,label`);
      every listed image of a Ravi class is used (600 per class in the full set);
  (b) an ImageNet-style class-folder tree <wnid>/**/*.JPEG (ILSVRC train, Tiny-ImageNet train/...):
      every image under a folder named after a Ravi wnid is used; absent classes are left out with a
      warning. Such a tree holds other photos than mini-ImageNet's 600 per class: a stand-in.
The csv files only name each image's class: split membership comes from class_splits.json.
There is no official download address.
"""
from __future__ import annotations

import csv
import io
import re
from collections import defaultdict

from kml.data.errors import DataError, warn
from kml.data.prepare import fixed_splits, split_by_lists
from kml.data.sources import Source, find_prefix

CHANNELS = 3
DOWNLOADS: list[str] = []
CSV_FILES = ("train.csv", "val.csv", "test.csv")
_WNID = re.compile(r"n\d{8}")
_JPEG = (".jpg", ".jpeg")


def classes(source: Source) -> dict[str, list[tuple[str, list[str]]]]:
    names = source.names()
    ravi = {wnid for wnids in fixed_splits("miniimagenet").values() for wnid in wnids}
    prefix = find_prefix(names, "train.csv")
    if prefix is not None and all(prefix + f in names for f in CSV_FILES):
        found = _from_csv(source, names, prefix, ravi)
    else:
        found = _from_class_folders(names, ravi)
    if not found:
        raise DataError(f"{source.path} does not look like mini-ImageNet: neither images/*.jpg with "
                        f"{', '.join(CSV_FILES)} nor <wnid>/**/*.JPEG folders of Ravi classes; pass one of these")
    return split_by_lists("miniimagenet", found, source, allow_missing=True)


def _from_csv(source: Source, names: list[str], prefix: str, ravi: set[str]) -> dict[str, list[str]]:
    images = {name.rsplit("/", 1)[-1]: name for name in names
              if name.lower().endswith(_JPEG) and name.rsplit("/", 2)[-2:-1] == ["images"]}
    found: dict[str, list[str]] = defaultdict(list)
    for csv_name in CSV_FILES:
        rows = _read_csv(source, prefix + csv_name)
        split = csv_name.removesuffix(".csv")
        outside = sorted({label for _, label in rows} - set(fixed_splits("miniimagenet")[split]))
        if outside:
            warn(f"{csv_name} lists {len(outside)} classes outside the Ravi {split} split (e.g. {outside[0]}); "
                 "using the split of kml/data/class_splits.json")
        for filename, label in rows:
            if label not in ravi:
                raise DataError(f"{source.path}: {csv_name} names class {label!r}, not a mini-ImageNet class; "
                                "pass the mini-ImageNet csv files of Ravi & Larochelle")
            if filename not in images:
                raise DataError(f"{source.path}: {csv_name} lists {filename} but there is no images/{filename}; "
                                "the source is incomplete, download it again")
            found[label].append(images[filename])
    return found


def _read_csv(source: Source, name: str) -> list[tuple[str, str]]:
    reader = csv.reader(io.StringIO(source.read(name).decode("utf-8-sig")))
    header = next(reader, None)
    if header is None or [h.strip() for h in header[:2]] != ["filename", "label"]:
        raise DataError(f"{source.path}: {name} does not start with the header `filename,label`; "
                        "pass the mini-ImageNet csv files of Ravi & Larochelle")
    return [(row[0].strip(), row[1].strip()) for row in reader if len(row) >= 2]


def _from_class_folders(names: list[str], ravi: set[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for name in names:
        if not name.lower().endswith(_JPEG):
            continue
        # The innermost folder named like a wnid is the class (train/<wnid>/images/x.JPEG).
        wnids = [part for part in name.split("/")[:-1] if _WNID.fullmatch(part)]
        if wnids and wnids[-1] in ravi:
            found[wnids[-1]].append(name)
    return found
