"""FGVC-Aircraft 2013b (Maji et al. 2013): 10,000 photos of 100 aircraft variants, with the
Meta-Dataset variant split 70/15/15 (class_splits.json), all images of each variant (trainval + test).

Source: the official fgvc-aircraft-2013b.tar.gz or its folder: fgvc-aircraft-2013b/data/variants.txt,
data/images_variant_{trainval,test}.txt (`<image id> <variant name, may hold spaces>`) and
data/images/<image id>.jpg.
"""
from __future__ import annotations

from collections import defaultdict

from kml.data.errors import DataError
from kml.data.prepare import split_by_lists
from kml.data.sources import Source, find_prefix

CHANNELS = 3
# Every photo carries a 20-pixel copyright banner along its bottom edge; it is cut off.
READ_OPTIONS = {"crop_bottom": 20}
DOWNLOADS = ["https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz"]
LISTS = ("images_variant_trainval.txt", "images_variant_test.txt")


def classes(source: Source) -> dict[str, list[tuple[str, list[str]]]]:
    names = source.names()
    prefix = find_prefix(names, "data/variants.txt")
    if prefix is None or not all(f"{prefix}data/{f}" in names for f in LISTS):
        raise DataError(f"{source.path} does not look like FGVC-Aircraft: no fgvc-aircraft-2013b/data/variants.txt "
                        f"with {' and '.join(LISTS)}; pass fgvc-aircraft-2013b.tar.gz or the folder it extracts to")
    variants = {line.strip() for line in source.read(prefix + "data/variants.txt").decode("utf-8").splitlines()}
    present = set(names)
    found: dict[str, list[str]] = defaultdict(list)
    for list_name in LISTS:
        for number, line in enumerate(source.read(f"{prefix}data/{list_name}").decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            image_id, _, variant = line.strip().partition(" ")
            if variant not in variants:
                raise DataError(f"{source.path}: line {number} of {list_name} names no variant of variants.txt; "
                                "the source is damaged, download it again")
            path = f"{prefix}data/images/{image_id}.jpg"
            if path not in present:
                raise DataError(f"{source.path}: {list_name} lists image {image_id} but there is no "
                                f"data/images/{image_id}.jpg; the source is incomplete, download it again")
            found[variant].append(path)
    return split_by_lists("aircraft", found, source)
