"""A benchmark is a list of modes (prepared datasets) served together at one image size."""
from __future__ import annotations

from pathlib import Path

from kml.data import synthetic
from kml.data.sampler import EpisodeSampler, MultimodalSampler, SplitDataset
from kml.data.store import SPLITS

# Omniglot classes are augmented by rotations of 90° (a rotated character is a new class).
ROTATED = {"omniglot"}


def load_split(modes: list[str], split: str, root: str | Path, image_size: int) -> list[SplitDataset]:
    if any(m in synthetic.MODES for m in modes):
        synthetic.ensure(root, image_size)
    return [SplitDataset.load(root, mode, image_size, split) for mode in modes]


def make_sampler(modes: list[str], split: str, way: int, shot: int, query: int, meta_batch: int,
                 root: str | Path = "data", image_size: int = 32, seed: int = 0,
                 policy: str = "balanced") -> MultimodalSampler:
    datasets = load_split(modes, split, root, image_size)
    samplers = [EpisodeSampler(d, way, shot, query, rotate=d.name in ROTATED) for d in datasets]
    return MultimodalSampler(samplers, meta_batch, policy=policy, seed=seed)


def summary_table(modes: list[str], root: str | Path, image_size: int) -> str:
    """A plain-text table of each mode's classes and images per split."""
    rows = [("mode", *(f"{s} classes/images" for s in SPLITS))]
    for mode_index, mode in enumerate(modes):
        cells = []
        for split in SPLITS:
            d = load_split([mode], split, root, image_size)[0]
            cells.append(f"{d.num_classes}/{d.images.shape[0]}")
        rows.append((f"{mode_index}: {mode}", *cells))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
