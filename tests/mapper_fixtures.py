"""Shared pieces of the mapper tests: tiny frozen models (no download), configs, files in official formats."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from kml.mapper.encoders import load_lm
from kml.mapper.frozen_lm import FrozenLM

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models: one thread is faster than two (and far faster on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_lm() -> FrozenLM:
    """The `lm=tiny` model, built (a few seconds of pretraining) once per session."""
    model, tokenizer = load_lm(mapper_config([]).lm)
    return FrozenLM(model, tokenizer)


def mapper_config(overrides: list[str]):
    """The composed config of `pipeline=mapper vision=tiny lm=tiny` plus `overrides`."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=["pipeline=mapper", "vision=tiny", "lm=tiny", *overrides])


def write_image(path: Path, colour: tuple[int, int, int], size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), colour, dtype=np.uint8)).save(path)


def write_coco(root: Path, categories: int = 3, images_per_category: int = 4) -> Path:
    """A COCO 2017 layout: annotations/captions_train2017.json, instances_train2017.json, train2017/*.jpg."""
    images, captions, instances = [], [], []
    for c in range(categories):
        for i in range(images_per_category):
            image_id = 1 + c * 100 + i
            name = f"{image_id:012d}.jpg"
            write_image(root / "train2017" / name, (60 * c, 40 * i, 90))
            images.append({"id": image_id, "file_name": name, "height": 16, "width": 16})
            captions += [{"id": 10 * image_id + k, "image_id": image_id, "caption": f"A thing {c} seen {k}, view {i}."}
                         for k in range(2)]
            # A stray second-category box, last: the dominant (most frequent) category must win, unless
            # the released rule (the last annotation's category) is asked for.
            instances += [{"id": 3 * image_id + k, "image_id": image_id, "category_id": c + 1,
                           "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0} for k in range(2)]
            instances.append({"id": 3 * image_id + 2, "image_id": image_id, "category_id": (c + 1) % categories + 1,
                              "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0})
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "captions_train2017.json").write_text(json.dumps(
        {"info": {}, "licenses": [], "images": images, "annotations": captions}))
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(
        {"info": {}, "licenses": [], "images": images, "annotations": instances,
         "categories": [{"id": c + 1, "name": f"cat{c}", "supercategory": "x"} for c in range(categories)]}))
    return root


def write_frozen(source: Path, folder: str = "open_ended_mi", way: int = 2, shot: int = 1, tasks: int = 3,
                 question: str = "what is this?", answers: str = "caption") -> Path:
    """A Frozen benchmark folder: <folder>_shots_K_ways_N_all_questions.json and its jpg images. The
    support captions are "this is a <name>"; the answer is the full caption (`answers="caption"`) or the
    bare name ("name", as the released files)."""
    base = source / folder
    entries = []
    for x in range(tasks):
        entry = {}
        names = ["dax", "blicket", "wug", "zorp", "fep"][:way]
        for i in range(way * shot):
            image = f"{folder}_shots_{shot}_ways_{way}_id_{x}_image_{i + 1}.jpg"
            write_image(base / image, (200 * (i % way), 50, 50))
            entry[f"image_{i + 1}"], entry[f"caption_{i + 1}"] = image, f"this is a {names[i % way]}"
        entry["question_image"] = f"{folder}_shots_{shot}_ways_{way}_id_{x}_question.jpg"
        write_image(base / entry["question_image"], (0, 50, 50))
        entry["question"] = question
        entry["answer"] = {"caption": f"this is a {names[0]}", "name": names[0]}[answers]
        entries.append(entry)
    path = base / f"{folder}_shots_{shot}_ways_{way}_all_questions.json"
    path.write_text(json.dumps(entries))
    return path
