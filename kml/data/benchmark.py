"""A benchmark is a list of modes (prepared datasets) served together at one image size."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kml.data import released, synthetic
from kml.data.sampler import EpisodeSampler, MultimodalSampler, SplitDataset
from kml.data.store import SPLITS


@dataclass(frozen=True)
class Serving:
    """How prepared data is served (`data.*`): the documented class splits or the released code's, and the
    released loaders' two image bugs, for bug-compatibility (kml.data.released, docs/protocols.md)."""

    class_split: str = "standard"
    fc100_inverted: bool = False
    aircraft_banner: bool = False  # Aircraft from `prepare aircraft_banner` (photos with their banner)

    @classmethod
    def from_config(cls, data) -> Serving:
        return cls(str(data.split), bool(data.fc100_inverted), bool(data.aircraft_banner))


def load_split(modes: list[str], split: str, root: str | Path, image_size: int,
               serving: Serving = Serving()) -> list[SplitDataset]:
    """One split of each mode, served as `serving` says."""
    if any(m in synthetic.MODES for m in modes):
        synthetic.ensure(root, image_size)
    datasets = []
    for mode in modes:
        stored = "aircraft_banner" if serving.aircraft_banner and mode == "aircraft" else mode
        if serving.class_split == "released" and mode in released.RELEASED_SPLITS:
            standard = {s: SplitDataset.load(root, stored, image_size, s) for s in SPLITS}
            names = released.class_lists(mode, {s: d.class_names for s, d in standard.items()})[split]
            dataset = SplitDataset.gather(list(standard.values()), names, split)
        else:
            dataset = SplitDataset.load(root, stored, image_size, split)
        if serving.fc100_inverted and mode == "fc100":
            dataset.images = released.invert_by_wraparound(dataset.images)
        datasets.append(dataset)
    return datasets


def make_sampler(modes: list[str], split: str, way: int, shot: int, query: int, meta_batch: int,
                 root: str | Path = "data", image_size: int = 32, seed: int = 0, policy: str = "balanced",
                 serving: Serving = Serving()) -> MultimodalSampler:
    datasets = load_split(modes, split, root, image_size, serving)
    samplers = [EpisodeSampler(d, way, shot, query, rotate=d.rotate_classes) for d in datasets]
    return MultimodalSampler(samplers, meta_batch, policy=policy, seed=seed)


def sampler_for(cfg, modes: list[str], split: str, query: int, meta_batch: int, seed: int = 0,
                policy: str = "balanced") -> MultimodalSampler:
    """make_sampler with what a run's config fixes for all its samplers: data root and serving switches,
    image size, way and shot."""
    return make_sampler(modes, split, int(cfg.way), int(cfg.shot), int(query), int(meta_batch),
                        root=cfg.data.root, image_size=int(cfg.image_size), seed=seed, policy=policy,
                        serving=Serving.from_config(cfg.data))


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
