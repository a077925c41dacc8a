"""Few-shot episodes by tensor indexing into prepared arrays (no image decoding per step)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from kml.data import integrity, registry, store
from kml.data.episodes import Batch
from kml.data.errors import DataError
from kml.errors import ConfigError


class SplitDataset:
    """One split of one prepared dataset: uint8 images [N, C, H, W], rows grouped by class.

    `rotate_classes`: episodes turn each class by a random multiple of 90° (Omniglot's augmentation).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: list[str], name: str, split: str,
                 rotate_classes: bool = False):
        self.images, self.class_names, self.name, self.split = images, class_names, name, split
        self.rotate_classes = rotate_classes
        self.counts = torch.bincount(labels, minlength=len(class_names))
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        if not torch.equal(labels, torch.repeat_interleave(torch.arange(len(class_names)), self.counts)):
            raise DataError(f"{name}/{split}: rows are not grouped by class; prepare the dataset again with --force")

    @classmethod
    def load(cls, root, name: str, image_size: int, split: str, in_memory: bool = True) -> SplitDataset:
        # One clear line (with the prepare command) if the dataset is missing or an array is cut short.
        integrity.check_split(root, name, image_size, split)
        manifest = store.load_manifest(root, name, image_size)
        # Manifests written before the fact was recorded: the registry entry of a built-in dataset has it.
        rotate = manifest["rotate_classes"] if "rotate_classes" in manifest else registry.rotate_classes(name)
        folder = store.prepared_dir(root, name, image_size)
        images = np.load(folder / f"{split}.npy", mmap_mode=None if in_memory else "r")
        labels = torch.from_numpy(np.load(folder / f"{split}_labels.npy")).long()
        names = json.loads((folder / f"{split}_classes.json").read_text())
        # A memory map is wrapped without copying; writes are never made through it.
        return cls(torch.from_numpy(np.asarray(images)) if in_memory else torch.as_tensor(images), labels, names, name,
                   split, rotate_classes=rotate)

    @classmethod
    def gather(cls, datasets: list[SplitDataset], names: list[str], split: str) -> SplitDataset:
        """The classes `names`, in that order, from whichever of `datasets` holds each."""
        where = {name: (d, i) for d in datasets for i, name in enumerate(d.class_names)}
        blocks = [d.images[d.starts[i]: d.starts[i] + d.counts[i]] for d, i in (where[n] for n in names)]
        counts = torch.tensor([len(block) for block in blocks])
        labels = torch.repeat_interleave(torch.arange(len(names)), counts)
        return cls(torch.cat(blocks), labels, list(names), datasets[0].name, split,
                   rotate_classes=datasets[0].rotate_classes)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class EpisodeSampler:
    """N-way K-shot Q-query episodes from one SplitDataset; labels are a fresh permutation per task."""

    def __init__(self, dataset: SplitDataset, way: int, shot: int, query: int, rotate: bool = False):
        where = f"split {dataset.split!r} of {dataset.name}"
        if dataset.num_classes < way:
            raise DataError(f"{where} has {dataset.num_classes} classes, fewer than way={way}; lower `way`")
        smallest = int(dataset.counts.min())
        if smallest < shot + query:
            raise DataError(f"{where} has a class with {smallest} images, fewer than shot+query={shot + query};"
                            " lower `shot` or `eval.query`/`train.query`")
        self.dataset, self.way, self.shot, self.query, self.rotate = dataset, way, shot, query, rotate

    def sample_into(self, support: torch.Tensor, query: torch.Tensor, g: torch.Generator) -> bytes:
        """Write one episode into support [N*K, C', H, W] and query [N*Q, C', H, W] (C' may tile C); returns
        what identifies it: its dataset rows (support then query, label by label) and rotations."""
        d, per_class = self.dataset, self.shot + self.query
        classes = torch.randperm(d.num_classes, generator=g)[: self.way]
        counts = d.counts[classes]
        # Distinct images per class: the smallest random keys among each class's valid rows.
        keys = torch.rand((self.way, int(counts.max())), generator=g)
        keys.masked_fill_(torch.arange(keys.shape[1]) >= counts[:, None], 2.0)
        picks = keys.topk(per_class, dim=1, largest=False).indices + d.starts[classes, None]
        support_rows, query_rows = picks[:, : self.shot].flatten(), picks[:, self.shot :].flatten()
        if not self.rotate and support.shape[1] == d.images.shape[1]:
            # Fast path: gather straight into the output (index_select beats advanced indexing ~5x).
            torch.index_select(d.images, 0, support_rows, out=support)
            torch.index_select(d.images, 0, query_rows, out=query)
            return identity(d, picks, None)
        images = d.images.index_select(0, picks.flatten()).view(self.way, per_class, *d.images.shape[1:])
        if self.rotate:  # a class seen rotated by 90°·r is a new class (Omniglot augmentation)
            turns = torch.randint(4, (self.way,), generator=g)
            for r in turns.unique().tolist():
                if r:
                    chosen = turns == r
                    images[chosen] = torch.rot90(images[chosen], r, dims=(-2, -1))
        support.copy_(images[:, : self.shot].flatten(0, 1).expand_as(support))
        query.copy_(images[:, self.shot :].flatten(0, 1).expand_as(query))
        return identity(d, picks, turns if self.rotate else None)


def identity(dataset: SplitDataset, picks: torch.Tensor, turns: torch.Tensor | None) -> bytes:
    """An episode's identity: its dataset and split, its rows [way, shot + query] (row i of class j is the
    image of label j at position i) and its rotations."""
    parts = [f"{dataset.name}/{dataset.split}".encode(), picks.numpy().astype(np.int64).tobytes()]
    if turns is not None:
        parts.append(turns.numpy().astype(np.int64).tobytes())
    return b"|".join(parts)


def released_block_order(task_fingerprint: int, way: int) -> torch.Tensor:
    """The label of each row block as KML-Classification's loaders order them (commit d9db84a): its sampler
    shuffles a task's N·(K+Q) samples (scripts/sampler.py:51), each loader relabels the classes by a random
    bijection and groups the rows by label in order of first appearance in that shuffled list
    (scripts/datasets/*.py, _make_single_batch), so block g holds the label in place g of a uniformly random
    permutation. Drawn here from the task's fingerprint: the same task gets the same order in every run,
    and no sampler's random stream is touched (the tasks stay those of every other run)."""
    seed = task_fingerprint & 0xFFFF_FFFF_FFFF_FFFF
    return torch.from_numpy(np.random.default_rng(seed).permutation(way))


def reorder_blocks(batch: Batch, orders: list[torch.Tensor]) -> Batch:
    """Each task's label blocks (K support rows, Q query rows per label) put in `orders[t]` order, rows keeping
    their labels; the rows within a block keep their (random) order."""
    way = len(orders[0])
    index = torch.stack(orders)  # [T, N]: block g of task t holds label index[t, g]

    def blocks(x: torch.Tensor) -> torch.Tensor:
        grouped = x.unflatten(1, (way, -1))  # [T, N, K, ...]
        taken = grouped[torch.arange(len(orders))[:, None], index]
        return taken.flatten(1, 2).contiguous()

    return Batch(blocks(batch.support_x), blocks(batch.support_y), blocks(batch.query_x), blocks(batch.query_y),
                 batch.mode)


def fingerprint(episode: bytes, support_y: torch.Tensor, query_y: torch.Tensor) -> int:
    """A task's fingerprint: 64 bits of blake2b over its identity and label layout. Two runs met the same
    test task exactly when their fingerprints agree (up to a 2^-64 chance)."""
    digest = hashlib.blake2b(episode, digest_size=8)
    digest.update(support_y.numpy().astype(np.int64).tobytes())
    digest.update(query_y.numpy().astype(np.int64).tobytes())
    return int.from_bytes(digest.digest(), "little", signed=True)


class MultimodalSampler:
    """Meta-batches of T tasks; the mode of each task is chosen round-robin (balanced, as MMAML) or uniformly."""

    POLICIES = ("balanced", "uniform")
    ORDERS = ("by_label", "released")

    def __init__(self, samplers: list[EpisodeSampler], meta_batch: int, policy: str = "balanced",
                 seed: int = 0, channels: int = 3, order: str = "by_label"):
        """order: how a task's rows are laid out. by_label: label j's K support (and Q query) rows are block j.
        released: the blocks in the order KML-Classification's loaders leave them (released_block_order),
        each row keeping its label; the released transductive rule reads support rows by position."""
        if policy not in self.POLICIES:
            raise ConfigError(f"data.mode_policy={policy!r} is not valid; choose one of: {', '.join(self.POLICIES)}")
        if order not in self.ORDERS:
            raise ConfigError(f"data.episode_order={order!r} is not valid; choose one of: auto, {', '.join(self.ORDERS)}")
        sizes = {tuple(s.dataset.images.shape[2:]) for s in samplers}
        if len(sizes) != 1:
            raise DataError(f"modes have different image sizes {sorted(sizes)}; prepare them at one --image-size")
        first = samplers[0]
        self.samplers, self.meta_batch, self.policy, self.channels = samplers, meta_batch, policy, channels
        self.order = order
        self.way, self.shot, self.query = first.way, first.shot, first.query
        self.generator = torch.Generator().manual_seed(seed)
        self.next_mode = 0  # round-robin position, carried across meta-batches
        self.fingerprints = torch.empty(0, dtype=torch.int64)  # of the last batch's tasks (kml.data.sampler.fingerprint)

    def modes_for_batch(self) -> torch.Tensor:
        m, t = len(self.samplers), self.meta_batch
        if self.policy == "uniform":
            return torch.randint(m, (t,), generator=self.generator)
        modes = (self.next_mode + torch.arange(t)) % m
        self.next_mode = (self.next_mode + t) % m
        return modes

    def sample(self) -> Batch:
        t, size = self.meta_batch, self.samplers[0].dataset.images.shape[2:]
        support = torch.empty((t, self.way * self.shot, self.channels, *size), dtype=torch.uint8)
        query = torch.empty((t, self.way * self.query, self.channels, *size), dtype=torch.uint8)
        modes = self.modes_for_batch()
        episodes = [self.samplers[mode].sample_into(support[i], query[i], self.generator)
                    for i, mode in enumerate(modes.tolist())]
        labels = torch.arange(self.way)
        batch = Batch(support, labels.repeat_interleave(self.shot).expand(t, -1).contiguous(),
                      query, labels.repeat_interleave(self.query).expand(t, -1).contiguous(), modes)
        self.fingerprints = torch.tensor([fingerprint(e, batch.support_y[i], batch.query_y[i])
                                          for i, e in enumerate(episodes)], dtype=torch.int64)
        if self.order == "released":  # after the fingerprints: the same task whatever its row order
            batch = reorder_blocks(batch, [released_block_order(f, self.way) for f in self.fingerprints.tolist()])
        return batch

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "next_mode": self.next_mode}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.next_mode = state["next_mode"]
