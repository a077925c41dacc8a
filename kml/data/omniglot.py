"""Omniglot (Lake et al., Science 2015): 1623 handwritten characters of 50 alphabets, 20 drawings each.

Source: the official images_background.zip + images_evaluation.zip (a folder holding both), or a
folder / archive with their extracted layout images_{background,evaluation}/<alphabet>/<characterNN>/*.png.

Split (DESIGN.md, the MMAML protocol): the 1623 class names "alphabet/characterNN" sorted as strings,
the first 1100 for training, the next 100 for validation, the last 423 for testing. A split by count
is only the documented one on the complete set, so anything but all 1623 characters is refused.
"""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from kml.data import sources
from kml.data.errors import DataError

CHANNELS = 1
# The drawings are black strokes on white; stored inverted (bright strokes on zero) as MAML/MMAML do.
READ_OPTIONS = {"invert": True}
DOWNLOADS = [
    "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip",
    "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip",
]
HALVES = {"images_background": 964, "images_evaluation": 659}
SPLIT_SIZES = {"train": 1100, "val": 100, "test": 423}
_DRAWING = re.compile(r"(?:.*/)?(images_background|images_evaluation)/([^/]+)/([^/]+)/[^/]+\.png", re.IGNORECASE)


def open_source(path: Path) -> sources.Source:
    """A folder holding the two official zips is read as one source; anything else as usual."""
    path = Path(path).expanduser()
    zips = [path / f"{half}.zip" for half in HALVES] if path.is_dir() else []
    present = [z for z in zips if z.is_file()]
    if len(present) == 1:
        missing = next(z.name for z in zips if not z.is_file())
        raise DataError(f"{path} holds {present[0].name} but not {missing}; Omniglot needs both: "
                        f"put {missing} beside it, or use --download")
    if present:
        return sources.MultiSource([sources.ZipSource(z) for z in zips])
    return sources.open_source(path)


def classes(source: sources.Source) -> dict[str, list[tuple[str, list[str]]]]:
    drawings: dict[str, list[str]] = defaultdict(list)
    half_of: dict[str, str] = {}
    for name in source.names():
        match = _DRAWING.fullmatch(name)
        if match:
            half, alphabet, character = match.groups()
            key = f"{alphabet}/{character}"
            if half_of.setdefault(key, half) != half:
                raise DataError(f"{source.path}: character {key} appears in both halves; this is not Omniglot")
            drawings[key].append(name)
    if not drawings:
        raise DataError(f"{source.path} does not look like Omniglot: no images_background/<alphabet>/<character>/"
                        "*.png; pass images_background.zip + images_evaluation.zip or their folder")
    found = {half: sum(1 for h in half_of.values() if h == half) for half in HALVES}
    if found != HALVES:
        counts = ", ".join(f"{found[h]} of {n} characters in {h}" for h, n in HALVES.items())
        raise DataError(f"{source.path} holds an incomplete Omniglot ({counts}); pass both official zips, complete "
                        "(the split cuts the sorted list of all 1623 characters: --allow-missing-classes cannot apply)")
    names = sorted(drawings)
    splits, start = {}, 0
    for split, size in SPLIT_SIZES.items():
        splits[split] = [(key, sorted(drawings[key])) for key in names[start:start + size]]
        start += size
    return splits
