"""From the config to task samplers: meta-training / validation tasks and the test benchmark's tasks.

`mapper.train_data`: coco | novel_names. `mapper.eval_data`: a Frozen benchmark (open_ended_mi, real_name_mi,
fast_vqa, real_fast_vqa) or novel_names. Features are read from (or computed into) the cache first.
"""
from __future__ import annotations

from collections import defaultdict
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import torch

from kml.data.errors import DataError
from kml.mapper import coco, frozen_bench, novel_names
from kml.mapper.episodes import ClassEpisodes, FixedTasks
from kml.mapper.features import cached_features, open_image

TRAIN_DATA = ("coco", "novel_names")
EVAL_DATA = (*frozen_bench.FOLDERS, "novel_names")


def _novel_name_features(cfg, device) -> np.ndarray:
    size = int(cfg.mapper.novel_names.image_size)
    rendered = cache(lambda: novel_names.images(size))  # rendered only when the cache must be (re)built
    return cached_features(cfg.data.root, f"novel_names_v{novel_names.VERSION}_{size}px", cfg.vision,
                           novel_names.keys(), lambda rows: [rendered()[r] for r in rows], device)


def _novel_name_episodes(cfg, split: str, query: int, seed: int, device) -> ClassEpisodes:
    features = _novel_name_features(cfg, device)
    rows = defaultdict(list)
    for row, key in enumerate(novel_names.keys()):
        key_split, label, _ = key.split("/")
        if key_split == split:
            rows[label].append(row)
    caption = lambda rng, row, name: novel_names.TEMPLATE.format(name)  # noqa: E731
    return ClassEpisodes(features, {c: np.array(r) for c, r in rows.items()}, int(cfg.way), int(cfg.shot),
                         query, seed, caption, names=novel_names.names(split, cfg.mapper.novel_names.get("names", "shared")),
                         what=f"novel_names/{split}")


COCO_SAMPLING = ("images", "caption_pairs")


@lru_cache(maxsize=2)  # train and val tasks come from one read of the (large) annotation files
def _read_coco(source: str, max_images: int | None, category: str) -> coco.CocoCaptions:
    return coco.read_coco(source, max_images, category)


def _coco_episodes(cfg, split: str, query: int, seed: int, device) -> ClassEpisodes:
    """Tasks over images (each shown with one of its captions, drawn per task) or, with
    `mapper.coco.sampling=caption_pairs`, over (caption, image) pairs as the released code samples them."""
    spec = cfg.mapper.coco
    if spec.sampling not in COCO_SAMPLING:
        raise DataError(f"mapper.coco.sampling={spec.sampling!r} is not valid; choose one of: {', '.join(COCO_SAMPLING)}")
    data = _read_coco(str(spec.source), spec.get("max_images"), spec.category)
    source = Path(spec.source)
    keys = [str(f.relative_to(source)) for f in data.files]
    features = cached_features(cfg.data.root, "coco_train2017", cfg.vision, keys,
                               lambda rows: [open_image(data.files[r]) for r in rows], device)
    if spec.sampling == "caption_pairs":
        pairs = [(row, text) for row, texts in enumerate(data.captions) for text in texts]
        image_of = np.array([row for row, _ in pairs])
        caption = lambda rng, pair, name: pairs[pair][1]  # noqa: E731
    else:
        image_of = np.arange(len(data.files))
        caption = lambda rng, row, name: data.captions[row][int(rng.integers(len(data.captions[row])))]  # noqa: E731
    items = defaultdict(list)
    for item, row in enumerate(image_of):
        if data.split[row] == split:
            items[data.category[row]].append(item)
    return ClassEpisodes(features, {c: np.array(r) for c, r in items.items()}, int(cfg.way), int(cfg.shot),
                         query, seed, caption, what=f"COCO {split}", feature_rows=image_of)


def training_episodes(cfg, split: str, query: int, seed: int, device: torch.device) -> ClassEpisodes:
    """Meta-training ("train") or validation ("val") tasks of `mapper.train_data`."""
    name = cfg.mapper.train_data
    if name not in TRAIN_DATA:
        raise DataError(f"mapper.train_data={name!r} is not valid; choose one of: {', '.join(TRAIN_DATA)}")
    build = _coco_episodes if name == "coco" else _novel_name_episodes
    return build(cfg, split, query, seed, device)


def question_in_prompt(cfg, name: str) -> bool:
    setting = cfg.mapper.frozen.get("question_in_prompt", "auto")
    return name in frozen_bench.VQA if setting == "auto" else bool(setting)


def _frozen_tasks(cfg, name: str, limit: int, device) -> FixedTasks:
    tasks = frozen_bench.read_frozen(cfg.mapper.frozen.source, name, int(cfg.way), int(cfg.shot))[:limit]
    paths = sorted({p for t in tasks for p in (*t.support_images, t.question_image)})
    row = {p: i for i, p in enumerate(paths)}
    folder = Path(cfg.mapper.frozen.source) / frozen_bench.FOLDERS[name]
    keys = [str(p.relative_to(folder)) if p.is_relative_to(folder) else str(p) for p in paths]
    dataset = f"frozen/{frozen_bench.FOLDERS[name]}_shots_{cfg.shot}_ways_{cfg.way}"
    features = cached_features(cfg.data.root, dataset, cfg.vision, keys,
                               lambda rows: [open_image(paths[r]) for r in rows], device)
    with_question = question_in_prompt(cfg, name)
    return FixedTasks(features, [{"support_rows": [row[p] for p in t.support_images],
                                  "support_text": t.support_captions, "query_row": row[t.question_image],
                                  "prompt": t.question if with_question else "", "answer": t.answer}
                                 for t in tasks])


def test_tasks(cfg, seed: int, device: torch.device) -> tuple[object, int]:
    """(sampler with .task(i), number of tasks) for `mapper.eval_data`."""
    name, limit = cfg.mapper.eval_data, int(cfg.eval.tasks_per_mode)
    if name not in EVAL_DATA:
        raise DataError(f"mapper.eval_data={name!r} is not valid; choose one of: {', '.join(EVAL_DATA)}")
    if name == "novel_names":
        return _novel_name_episodes(cfg, "test", int(cfg.eval.query), seed, device), limit
    tasks = _frozen_tasks(cfg, name, limit, device)
    return tasks, len(tasks)
