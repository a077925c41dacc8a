"""A tiny procedurally generated multimodal few-shot problem for learner tests.

Three modes whose classes look nothing alike (Gaussian blobs, coloured gratings, colour quadrants);
a class is one random prototype image and its examples are noisy, shifted, brightness-jittered copies.
Train and held-out classes are separate draws, so held-out tasks contain unseen classes.
"""

from __future__ import annotations

import math

import torch

from kml.data.episodes import Batch
from kml.learners import build_learner, build_optimizer

MODES = ("blobs", "gratings", "quadrants")


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.arange(size, dtype=torch.float32)
    return torch.meshgrid(coords, coords, indexing="ij")


def _blobs(size: int, rng: torch.Generator) -> torch.Tensor:
    ys, xs = _grid(size)
    image = torch.zeros(size, size)
    for _ in range(3):
        cy, cx = (torch.rand(2, generator=rng) * (size - 4) + 2).tolist()
        sigma = 1.0 + 2.0 * torch.rand(1, generator=rng).item()
        image += torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * sigma**2))
    return image.clamp(max=1).expand(3, size, size)


def _grating(size: int, rng: torch.Generator) -> torch.Tensor:
    ys, xs = _grid(size)
    theta, freq, phase = (torch.rand(3, generator=rng) * torch.tensor([math.pi, 0.25, 2 * math.pi])).tolist()
    wave = 0.5 + 0.5 * torch.sin(
        2 * math.pi * (freq + 0.08) * (xs * math.cos(theta) + ys * math.sin(theta)) + phase
    )
    tint = 0.3 + 0.7 * torch.rand(3, 1, 1, generator=rng)
    return wave * tint


def _quadrants(size: int, rng: torch.Generator) -> torch.Tensor:
    colours = torch.rand(3, 2, 2, generator=rng)
    return colours.repeat_interleave(size // 2, dim=1).repeat_interleave(size // 2, dim=2)


_PROTOTYPES = {"blobs": _blobs, "gratings": _grating, "quadrants": _quadrants}


class ToyMultimodalTasks:
    """Samples `Batch`es of N-way K-shot tasks, one mode per task, round-robin over the modes."""

    def __init__(
        self, image_size: int = 16, classes_per_mode: int = 40, noise: float = 0.5, seed: int = 0
    ) -> None:
        self.image_size, self.noise = image_size, noise
        self.prototypes = {}  # split -> [modes, classes, 3, S, S]
        for split_index, split in enumerate(("train", "test")):
            rng = torch.Generator().manual_seed(seed * 1000 + split_index)
            self.prototypes[split] = torch.stack(
                [
                    torch.stack([_PROTOTYPES[mode](image_size, rng) for _ in range(classes_per_mode)])
                    for mode in MODES
                ]
            )

    def _examples(self, prototypes: torch.Tensor, count: int, rng: torch.Generator) -> torch.Tensor:
        """[way, 3, S, S] → [way * count, 3, S, S] uint8, grouped by class."""
        images = prototypes.repeat_interleave(count, dim=0)
        shifts = torch.randint(-2, 3, (images.shape[0], 2), generator=rng).tolist()
        images = torch.stack(
            [image.roll(tuple(shift), dims=(1, 2)) for image, shift in zip(images, shifts, strict=True)]
        )
        images = images + 0.1 * torch.randn(images.shape[0], 1, 1, 1, generator=rng)
        images = images + self.noise * torch.randn(images.shape, generator=rng)
        return (images.clamp(0, 1) * 255).round().to(torch.uint8)

    def sample(
        self,
        num_tasks: int,
        way: int = 5,
        shot: int = 1,
        query: int = 5,
        split: str = "train",
        rng: torch.Generator | None = None,
        first_mode: int = 0,
    ) -> Batch:
        """A float batch in [0, 1] on the CPU, as the runner hands it to learners."""
        rng = rng if rng is not None else torch.Generator().manual_seed(0)
        pool = self.prototypes[split]
        tasks = []
        for t in range(num_tasks):
            mode = (first_mode + t) % len(MODES)
            classes = torch.randperm(pool.shape[1], generator=rng)[:way]
            labels = torch.arange(way)
            tasks.append(
                (
                    self._examples(pool[mode, classes], shot, rng),
                    labels.repeat_interleave(shot),
                    self._examples(pool[mode, classes], query, rng),
                    labels.repeat_interleave(query),
                    mode,
                )
            )
        support_x, support_y, query_x, query_y, modes = zip(*tasks, strict=True)
        return Batch(
            support_x=torch.stack(support_x),
            support_y=torch.stack(support_y),
            query_x=torch.stack(query_x),
            query_y=torch.stack(query_y),
            mode=torch.tensor(modes),
        ).to("cpu")


def train_and_evaluate(
    learner_name: str, modulation: str, iterations: int, channels: int, train_steps: int, seed: int = 0
) -> tuple[float, float]:
    """Meta-train a small learner on the toy problem; mean held-out accuracy before and after."""
    torch.manual_seed(seed)
    cfg = {
        "way": 5,
        "backbone": {"name": "conv4", "channels": channels},
        "learner": {"name": learner_name, "train_steps": train_steps, "test_steps": 5, "lr": 3e-3},
        "modulation": {"name": modulation, "embedding_dim": 16, "encoder_channels": [8, 8, 16, 16]},
    }
    learner = build_learner(cfg)
    optimizer = build_optimizer(learner, cfg)
    tasks = ToyMultimodalTasks(seed=seed)
    held_out = tasks.sample(60, split="test", rng=torch.Generator().manual_seed(seed + 1))
    initial = learner.evaluate(held_out).mean().item()
    rng = torch.Generator().manual_seed(seed + 2)
    for i in range(iterations):
        loss, _ = learner.meta_loss(tasks.sample(4, rng=rng, first_mode=i))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return initial, learner.evaluate(held_out).mean().item()
