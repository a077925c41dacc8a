"""Short meta-training runs on the project's synthetic benchmark (kml.data.synthetic) for learner tests."""
from __future__ import annotations

from pathlib import Path

import torch

from kml.data import synthetic
from kml.data.benchmark import make_sampler
from kml.data.episodes import Batch
from kml.learners import build_learner, build_optimizer
from tests.configs import composed

IMAGE_SIZE = 16


def tasks(root: Path, split: str, count: int, seed: int, shot: int = 1, query: int = 5) -> Batch:
    """`count` float tasks (round-robin over the three modes) from `split`, as the runner hands them over."""
    sampler = make_sampler(list(synthetic.MODES), split, 5, shot, query, count, root=root, image_size=IMAGE_SIZE,
                           seed=seed)
    return sampler.sample().to("cpu")


def train_and_evaluate(root: Path, learner_name: str, modulation: str, iterations: int, channels: int,
                       train_steps: int, seed: int = 0) -> tuple[float, float]:
    """Meta-train a small learner; mean accuracy on 60 held-out test-split tasks before and after."""
    torch.manual_seed(seed)
    overrides = [f"learner={learner_name}", f"modulation={modulation}", "way=5", f"backbone.channels={channels}",
                 "learner.lr=3e-3"]
    if learner_name == "maml":
        overrides += [f"learner.train_steps={train_steps}", "learner.test_steps=5"]
    if modulation != "none":
        overrides += ["modulation.embedding_dim=16", "modulation.encoder_channels=[8,8,16,16]"]
    cfg = composed(*overrides)
    learner = build_learner(cfg)
    optimizer = build_optimizer(learner, cfg)
    held_out = tasks(root, "test", 60, seed + 1)
    initial = learner.evaluate(held_out).mean().item()
    train = make_sampler(list(synthetic.MODES), "train", 5, 1, 5, 4, root=root, image_size=IMAGE_SIZE, seed=seed + 2)
    for _ in range(iterations):
        loss, _ = learner.meta_loss(train.sample().to("cpu"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return initial, learner.evaluate(held_out).mean().item()
