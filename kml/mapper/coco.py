"""COCO captions in the official 2017 layout, grouped by object category for N-way captioning tasks.

    SOURCE/annotations/captions_train2017.json   {"images": [{"id", "file_name", ...}],
                                                  "annotations": [{"id", "image_id", "caption"}]}
    SOURCE/annotations/instances_train2017.json  {"annotations": [{"image_id", "category_id", ...}],
                                                  "categories": [{"id", "name", ...}]}
    SOURCE/train2017/000000000009.jpg ...

A task is N categories with K + Q images each, every image shown with one of its captions, as the
paper's episodic COCO training. An image belongs to the category with the most instance annotations
in it (ties: the lower category id), or with `category="last_annotation"` to the category of its last
annotation in the file (the released code's rule: it keeps overwriting); images without instances are
not used. Validation tasks come from a fixed hold-out of train2017 (image id divisible by 50, about 2%),
so val2017 is not needed.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from kml.data.errors import DataError

LAYOUT = "SOURCE/annotations/captions_train2017.json, SOURCE/annotations/instances_train2017.json, SOURCE/train2017/"
HOLDOUT_EVERY = 50
CATEGORY_RULES = ("dominant", "last_annotation")


@dataclass
class CocoCaptions:
    files: list[Path]              # image paths, sorted by image id
    captions: list[list[str]]      # per image, at least one
    category: list[str]            # per image: its dominant category name
    split: list[str]               # per image: "train" or "val" (the hold-out)


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise DataError(f"COCO {what} not found at {path}; expected the official layout {LAYOUT}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON ({type(err).__name__}); re-download the COCO annotations") \
            from err
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataError(f"{path} is not a COCO {what} file: it has no 'annotations' list")
    return data


def read_coco(source: str | Path, max_images: int | None = None, category: str = "dominant") -> CocoCaptions:
    if category not in CATEGORY_RULES:
        raise DataError(f"mapper.coco.category={category!r} is not valid; choose one of: {', '.join(CATEGORY_RULES)}")
    source = Path(source)
    captions_file = source / "annotations" / "captions_train2017.json"
    instances_file = source / "annotations" / "instances_train2017.json"
    captions = _read_json(captions_file, "captions")
    instances = _read_json(instances_file, "instances (for the categories that make N-way tasks)")
    if not isinstance(captions.get("images"), list):
        raise DataError(f"{captions_file} is not a COCO captions file: it has no 'images' list")
    try:
        by_image = defaultdict(list)
        for a in captions["annotations"]:
            by_image[int(a["image_id"])].append(" ".join(str(a["caption"]).split()))
        counts, last = defaultdict(Counter), {}
        for a in instances["annotations"]:
            counts[int(a["image_id"])][int(a["category_id"])] += 1
            last[int(a["image_id"])] = int(a["category_id"])
        names = {int(c["id"]): str(c["name"]) for c in instances.get("categories", [])}
        files = {int(im["id"]): im["file_name"] for im in captions["images"]}
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"COCO annotations under {source / 'annotations'} miss a field ({err}); each caption "
                        "needs image_id and caption, each instance image_id and category_id") from err
    out = CocoCaptions([], [], [], [])
    for image_id in sorted(files):
        if not by_image.get(image_id) or not counts.get(image_id):
            continue
        top = last[image_id] if category == "last_annotation" else \
            max(counts[image_id].items(), key=lambda kv: (kv[1], -kv[0]))[0]
        if top not in names:
            raise DataError(f"{instances_file}: category id {top} is not in its 'categories' list")
        out.files.append(source / "train2017" / files[image_id])
        out.captions.append(by_image[image_id])
        out.category.append(names[top])
        out.split.append("val" if image_id % HOLDOUT_EVERY == 0 else "train")
        if max_images and len(out.files) >= max_images:
            break
    if not out.files:
        raise DataError(f"no COCO image under {source} has both a caption and an instance annotation")
    return out
