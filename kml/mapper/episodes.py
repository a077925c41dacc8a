"""Few-shot captioning tasks over cached features: sampled N-way K-shot tasks, or a benchmark's fixed ones.

Task `i` of a sampler is a pure function of (seed, i), so training resumes exactly from the iteration
number alone and validation / test tasks are the same for every run and checkpoint.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kml.data.errors import DataError


@dataclass
class Task:
    support: torch.Tensor       # [S, T, d] visual features
    support_text: list[str]     # one caption per support image
    query: torch.Tensor         # [Q, T, d]
    query_prompt: list[str]     # text the LM reads after the prefix ("" when none)
    query_answer: list[str]     # the target caption / answer


def gather(features: np.ndarray, rows: Sequence[int]) -> torch.Tensor:
    return torch.from_numpy(np.asarray(features[np.asarray(rows)], dtype=np.float32))


class ClassEpisodes:
    """N classes, K support + Q query items each. An item is a feature row, or with `feature_rows` an index
    into it (e.g. one item per (image, caption) pair, several sharing an image). `caption(rng, item, name)`
    gives an item's text, where `name` is the task's name for its class (from `names`, drawn afresh per
    task) or None."""

    def __init__(self, features: np.ndarray, rows_by_class: dict[str, np.ndarray], way: int, shot: int,
                 query: int, seed: int, caption: Callable[[np.random.Generator, int, str | None], str],
                 names: Sequence[str] | None = None, what: str = "dataset",
                 feature_rows: np.ndarray | None = None):
        usable = {c: r for c, r in rows_by_class.items() if len(r) >= shot + query}
        if len(usable) < way:
            raise DataError(f"{what}: only {len(usable)} classes have {shot + query} images (shot + query), "
                            f"a {way}-way task needs {way}; use more images or fewer ways/shots/queries")
        if names is not None and len(names) < way:
            raise DataError(f"{what}: {len(names)} names cannot label a {way}-way task")
        self.features, self.classes = features, sorted(usable)
        self.rows, self.feature_rows = usable, feature_rows
        self.way, self.shot, self.query, self.seed = way, shot, query, seed
        self.caption, self.names = caption, names

    def _features(self, items: Sequence[int]) -> torch.Tensor:
        return gather(self.features, items if self.feature_rows is None else self.feature_rows[list(items)])

    def task(self, index: int) -> Task:
        rng = np.random.default_rng([self.seed, index])
        chosen = rng.choice(len(self.classes), self.way, replace=False)
        names = rng.choice(len(self.names), self.way, replace=False) if self.names is not None else None
        support, query = [], []
        for slot, c in enumerate(chosen):
            rows = rng.choice(self.rows[self.classes[c]], self.shot + self.query, replace=False)
            name = self.names[names[slot]] if names is not None else None
            support += [(int(r), name) for r in rows[:self.shot]]
            query += [(int(r), name) for r in rows[self.shot:]]
        order = rng.permutation(len(support))  # no class order for the inner loop to lean on
        support = [support[i] for i in order]
        return Task(self._features([r for r, _ in support]), [self.caption(rng, r, n) for r, n in support],
                    self._features([r for r, _ in query]), [""] * len(query),
                    [self.caption(rng, r, n) for r, n in query])


class FixedTasks:
    """A benchmark's own tasks (e.g. the Frozen files): support rows and texts, one query each."""

    def __init__(self, features: np.ndarray, tasks: list[dict]):
        self.features, self.tasks = features, tasks

    def __len__(self) -> int:
        return len(self.tasks)

    def task(self, index: int) -> Task:
        t = self.tasks[index]
        return Task(gather(self.features, t["support_rows"]), list(t["support_text"]),
                    gather(self.features, [t["query_row"]]), [t["prompt"]], [t["answer"]])
