"""A benchmark is a list of modes (prepared datasets) served together at one image size."""
from __future__ import annotations

from pathlib import Path

from kml.data import released, synthetic
from kml.data.sampler import EpisodeSampler, MultimodalSampler, SplitDataset
from kml.data.store import SPLITS


def load_split(modes: list[str], split: str, root: str | Path, image_size: int, class_split: str = "standard",
               fc100_inverted: bool = False) -> list[SplitDataset]:
    """One split of each mode. class_split "released" regroups the classes of Omniglot, CUB and Aircraft
    as the authors' code does; fc100_inverted serves FC100 as its released loader does (kml.data.released)."""
    if any(m in synthetic.MODES for m in modes):
        synthetic.ensure(root, image_size)
    datasets = []
    for mode in modes:
        if class_split == "released" and mode in released.RELEASED_SPLITS:
            standard = {s: SplitDataset.load(root, mode, image_size, s) for s in SPLITS}
            names = released.class_lists(mode, {s: d.class_names for s, d in standard.items()})[split]
            dataset = SplitDataset.gather(list(standard.values()), names, split)
        else:
            dataset = SplitDataset.load(root, mode, image_size, split)
        if fc100_inverted and mode == "fc100":
            dataset.images = released.invert_by_wraparound(dataset.images)
        datasets.append(dataset)
    return datasets


def make_sampler(modes: list[str], split: str, way: int, shot: int, query: int, meta_batch: int,
                 root: str | Path = "data", image_size: int = 32, seed: int = 0, policy: str = "balanced",
                 class_split: str = "standard", fc100_inverted: bool = False) -> MultimodalSampler:
    datasets = load_split(modes, split, root, image_size, class_split, fc100_inverted)
    samplers = [EpisodeSampler(d, way, shot, query, rotate=d.rotate_classes) for d in datasets]
    return MultimodalSampler(samplers, meta_batch, policy=policy, seed=seed)


def sampler_for(cfg, modes: list[str], split: str, query: int, meta_batch: int, seed: int = 0,
                policy: str = "balanced") -> MultimodalSampler:
    """make_sampler with what a run's config fixes for all its samplers: data root and serving switches,
    image size, way and shot."""
    return make_sampler(modes, split, int(cfg.way), int(cfg.shot), int(query), int(meta_batch),
                        root=cfg.data.root, image_size=int(cfg.image_size), seed=seed, policy=policy,
                        class_split=cfg.data.split, fc100_inverted=bool(cfg.data.fc100_inverted))


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
