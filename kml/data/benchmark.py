"""A benchmark is a list of modes (prepared datasets) served together at one image size."""
from __future__ import annotations

import copy
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
    episode_order: str = "by_label"  # by_label | released: a task's row blocks as the released loaders order them


class Benchmark:
    """The modes of a run at one image size and episode shape (way, shot), each split of each mode opened
    once, on first use, and shared by every sampler drawn from it: the run's check, training, validation,
    test and analyses all read the same arrays. Datasets are read-only to samplers, so sharing is exact."""

    def __init__(self, modes: list[str], root: str | Path, image_size: int, way: int, shot: int,
                 serving: Serving = Serving()):
        self.modes, self.root, self.image_size = list(modes), root, int(image_size)
        self.way, self.shot, self.serving = int(way), int(shot), serving
        self._opened: dict[tuple[str, str], SplitDataset] = {}  # (stored name, split) -> as prepared
        self._served: dict[tuple[str, str], SplitDataset] = {}  # (mode, split) -> as served
        if any(m in synthetic.MODES for m in self.modes):
            synthetic.ensure(root, self.image_size)

    def _open(self, stored: str, split: str) -> SplitDataset:
        if (stored, split) not in self._opened:
            self._opened[stored, split] = SplitDataset.load(self.root, stored, self.image_size, split)
        return self._opened[stored, split]

    def split(self, mode: str, split: str) -> SplitDataset:
        """One split of one mode, served as `serving` says."""
        if (mode, split) in self._served:
            return self._served[mode, split]
        serving = self.serving
        stored = "aircraft_banner" if serving.aircraft_banner and mode == "aircraft" else mode
        if serving.class_split == "released" and mode in released.RELEASED_SPLITS:
            standard = {s: self._open(stored, s) for s in SPLITS}
            names = released.class_lists(mode, {s: d.class_names for s, d in standard.items()})[split]
            dataset = SplitDataset.gather(list(standard.values()), names, split)
        else:
            dataset = self._open(stored, split)
        if serving.fc100_inverted and mode == "fc100":
            dataset = copy.copy(dataset)  # the opened arrays stay as prepared
            dataset.images = released.invert_by_wraparound(dataset.images)
        self._served[mode, split] = dataset
        return dataset

    def sampler(self, split: str, query: int, meta_batch: int, seed: int = 0, policy: str = "balanced",
                modes: list[str] | None = None) -> MultimodalSampler:
        """Meta-batches of `meta_batch` tasks with `query` queries per class from `split` of `modes` (default:
        all the benchmark's)."""
        datasets = [self.split(mode, split) for mode in (self.modes if modes is None else modes)]
        samplers = [EpisodeSampler(d, self.way, self.shot, int(query), rotate=d.rotate_classes) for d in datasets]
        return MultimodalSampler(samplers, int(meta_batch), policy=policy, seed=seed, order=self.serving.episode_order)

    def check(self, queries: dict[str, int]) -> None:
        """Fail before any work if a split cannot serve its episodes (missing data, too few classes or
        images): `queries` maps each split to its queries per class."""
        for split, query in queries.items():
            self.sampler(split, query, 1)


def load_split(modes: list[str], split: str, root: str | Path, image_size: int,
               serving: Serving = Serving()) -> list[SplitDataset]:
    """One split of each mode, served as `serving` says."""
    benchmark = Benchmark(modes, root, image_size, way=2, shot=1, serving=serving)
    return [benchmark.split(mode, split) for mode in modes]


def make_sampler(modes: list[str], split: str, way: int, shot: int, query: int, meta_batch: int,
                 root: str | Path = "data", image_size: int = 32, seed: int = 0, policy: str = "balanced",
                 serving: Serving = Serving()) -> MultimodalSampler:
    return Benchmark(modes, root, image_size, way, shot, serving).sampler(split, query, meta_batch, seed, policy)


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
