"""CUB-200-2011 (Wah et al. 2011): 11,788 photos of 200 bird species, with the Meta-Dataset class
split 140/30/30 (class_splits.json), all images of each class.

Source: the official CUB_200_2011.tgz or its folder: CUB_200_2011/images.txt (`<image id> <path>`),
classes.txt (`<class id> <class name>`), image_class_labels.txt (`<image id> <class id>`) and
images/<class name>/<file>.jpg.
"""
from __future__ import annotations

from collections import defaultdict

from kml.data.errors import DataError
from kml.data.prepare import split_by_lists
from kml.data.sources import Source, find_prefix

CHANNELS = 3
DOWNLOADS = ["https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"]
INDEX_FILES = ("images.txt", "classes.txt", "image_class_labels.txt")


def classes(source: Source) -> dict[str, list[tuple[str, list[str]]]]:
    names = source.names()
    prefix = find_prefix(names, "image_class_labels.txt")
    if prefix is None or not all(prefix + f in names for f in INDEX_FILES):
        raise DataError(f"{source.path} does not look like CUB-200-2011: no CUB_200_2011/{{{','.join(INDEX_FILES)}}}; "
                        "pass CUB_200_2011.tgz or the folder it extracts to")
    paths = _pairs(source, prefix + "images.txt")
    class_names = _pairs(source, prefix + "classes.txt")
    labels = _pairs(source, prefix + "image_class_labels.txt")
    present = set(names)
    found: dict[str, list[str]] = defaultdict(list)
    for image_id, path in paths.items():
        class_name = class_names.get(labels.get(image_id, ""))
        if class_name is None or not path.startswith(class_name + "/"):
            raise DataError(f"{source.path}: image {image_id} ({path}) has no consistent class in "
                            "image_class_labels.txt and classes.txt; the source is damaged, download it again")
        if prefix + "images/" + path not in present:
            raise DataError(f"{source.path}: images.txt lists {path} but there is no images/{path}; "
                            "the source is incomplete, download it again")
        found[class_name].append(prefix + "images/" + path)
    return split_by_lists("cub", found, source)


def _pairs(source: Source, name: str) -> dict[str, str]:
    """Lines `<id> <value>` as id -> value."""
    pairs = {}
    for number, line in enumerate(source.read(name).decode("utf-8").splitlines(), 1):
        if line.strip():
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise DataError(f"{source.path}: line {number} of {name} is not `<id> <value>`; download it again")
            pairs[parts[0]] = parts[1].strip()
    return pairs
