"""A synthetic "novel name" task family: coloured shapes that each task names with made-up words.

Like Frozen's Open-Ended mini-ImageNet, a task binds N classes to N nonsense names ("this is a dax")
that are drawn afresh for every task, so nothing but the support set says which name goes with which
picture. Classes (shape × colour) and names come from disjoint train / val / test pools: a test task
uses classes and names never seen in meta-training, so without adaptation (0 steps) the right answer
is out of reach, and whatever accuracy the adapted mapper gets is the value of adaptation.
"""
from __future__ import annotations

import math

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond")
COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.15, 0.3, 0.95),
           "yellow": (0.95, 0.9, 0.1), "magenta": (0.9, 0.15, 0.85), "cyan": (0.1, 0.85, 0.9),
           "orange": (1.0, 0.55, 0.05), "white": (0.95, 0.95, 0.95)}
NAMES = {
    "train": ("dax", "blicket", "wug", "zorp", "fep", "toma", "kiki", "bouba", "gazzer", "lorp", "mib", "nuv",
              "pilk", "quon", "rast", "sib", "tufa", "vek", "wem", "yoth", "zib", "blap", "crunk", "drel"),
    "val": ("fim", "glorp", "hesk", "jav", "keb", "lum", "mox", "nep"),
    "test": ("pim", "quab", "ris", "slen", "tav", "urk", "vop", "yib"),
}
CLASS_COUNTS = {"train": 32, "val": 8, "test": 8}  # of the 6 × 8 = 48 shape-colour classes
IMAGES_PER_CLASS = 20
TEMPLATE = "this is a {}"
SEED = 2023
VERSION = 1  # bump when rendering changes, so cached features are rebuilt


def names(split: str, pools: str = "shared") -> tuple[str, ...]:
    """The names a task of `split` draws from: "shared", one pool for all splits (as Frozen's nonsense
    words), or "disjoint", names never seen in meta-training (a harder test of adaptation)."""
    if pools not in ("shared", "disjoint"):
        raise ValueError(f"novel_names.names={pools!r} is not valid; choose shared or disjoint")
    return NAMES[split] if pools == "disjoint" else NAMES["train"]


def vocabulary() -> list[str]:
    """Every word a caption of this family can hold (for the tiny word-level tokenizer)."""
    return [*TEMPLATE.format("").split(), *(n for pool in NAMES.values() for n in pool)]


def class_splits() -> dict[str, list[tuple[str, str]]]:
    """Fixed, seeded split of the (shape, colour) classes; never depends on anything but SEED."""
    classes = [(s, c) for s in SHAPES for c in COLOURS]
    order = np.random.default_rng(SEED).permutation(len(classes))
    out, start = {}, 0
    for split, n in CLASS_COUNTS.items():
        out[split] = [classes[i] for i in order[start:start + n]]
        start += n
    return out


def _mask(shape: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r = torch.sqrt(x**2 + y**2)
    masks = {
        "circle": r < 1,
        "square": torch.maximum(x.abs(), y.abs()) < 0.85,
        "triangle": (y > -0.6) & (y < 1 - math.sqrt(3) * x.abs()),
        "cross": ((x.abs() < 0.33) & (y.abs() < 1)) | ((y.abs() < 0.33) & (x.abs() < 1)),
        "ring": (r < 1) & (r > 0.6),
        "diamond": x.abs() + y.abs() < 1.1,
    }
    return masks[shape]


def render(shape: str, colour: str, count: int, size: int, generator: torch.Generator) -> np.ndarray:
    """`count` jittered images of one class: uint8 [count, size, size, 3]."""
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    images = []
    for _ in range(count):
        u = torch.rand(6, generator=generator)
        scale, turn = 0.35 + 0.2 * u[0], (u[1] - 0.5) * 0.6
        cx, cy = (u[2] - 0.5) * 0.5, (u[3] - 0.5) * 0.5
        x, y = (gx - cx) / scale, (gy - cy) / scale
        x, y = math.cos(turn) * x + math.sin(turn) * y, -math.sin(turn) * x + math.cos(turn) * y
        inside = _mask(shape, x, y).float()[..., None]
        fill = (torch.tensor(COLOURS[colour]) + 0.05 * torch.randn(3, generator=generator)).clamp(0, 1)
        background = 0.1 + 0.25 * torch.rand(size, size, 3, generator=generator) * u[4]
        images.append(inside * fill + (1 - inside) * background)
    return (torch.stack(images).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def keys() -> list[str]:
    """The key "split/shape-colour/i" of every image, in the order `images` renders them."""
    return [f"{split}/{shape}-{colour}/{i}" for split, classes in class_splits().items()
            for shape, colour in classes for i in range(IMAGES_PER_CLASS)]


def images(size: int) -> np.ndarray:
    """Every image of every split, uint8 [n, size, size, 3], rows in `keys()` order."""
    generator = torch.Generator().manual_seed(SEED)
    return np.concatenate([render(shape, colour, IMAGES_PER_CLASS, size, generator)
                           for classes in class_splits().values() for shape, colour in classes])
