"""The embedded synthetic multimodal benchmark: three procedurally generated modes, no download.

- glyphs:   bright pen strokes on black (Omniglot-like), one stroke set per class, 1 channel
- shapes:   a coloured blob with a class-specific outline on coloured noise (object-like)
- gratings: oriented coloured sinusoidal gratings and plaids (texture-like)

Each class is drawn from a class prototype with per-image jitter (pose, thickness, colour, phase,
noise), so there is within-class variation to generalise over, and the modes differ in their
image statistics, which is what a task encoder needs to tell them apart. Generation is
deterministic from GENERATOR_SEED and is cached under data/ in the prepared-data format.
"""
from __future__ import annotations

import math

import torch

from kml.data import store

MODES = ("synthetic_glyphs", "synthetic_shapes", "synthetic_gratings")
CLASSES = {"train": 200, "val": 50, "test": 50}
IMAGES_PER_CLASS = 20
GENERATOR_SEED = 2021
VERSION = 1  # bump when the generator changes, so cached data is rebuilt
_CHUNK = 64  # classes rendered at once; bounds memory at large image sizes


def ensure(root, image_size: int) -> None:
    """Generate (once) every synthetic mode at `image_size`."""
    for name in MODES:
        path = store.prepared_dir(root, name, image_size) / "manifest.json"
        if path.is_file() and store.load_manifest(root, name, image_size)["source"].get("version") == VERSION:
            continue
        generate(root, name, image_size)


def generate(root, name: str, image_size: int):
    render, channels = _RENDERERS[name]
    g = torch.Generator().manual_seed(GENERATOR_SEED + MODES.index(name))
    classes = {s: [(f"{name.split('_')[1]}_{s}_{i:03d}", IMAGES_PER_CLASS) for i in range(n)]
               for s, n in CLASSES.items()}
    source = {"generator": "kml.data.synthetic", "seed": GENERATOR_SEED, "version": VERSION, "sha256": None}
    grid = _grid(image_size)
    with store.PreparedWriter(root, name, image_size, channels, classes, source, rotate_classes=False) as writer:
        for split, n in CLASSES.items():
            for first in range(0, n, _CHUNK):
                count = min(_CHUNK, n - first)
                images = render(count, grid, g)  # [count, IMAGES_PER_CLASS, C, S, S] in [0, 1]
                rows = writer.row(split, first, 0)
                flat = (images.clamp(0, 1) * 255).round().to(torch.uint8).flatten(0, 1).numpy()
                for offset, image in enumerate(flat):
                    writer.put(split, rows + offset, image)
        return writer.commit()


def _grid(size: int) -> torch.Tensor:
    """Pixel centres in [-1, 1]², shape [S, S, 2] as (x, y)."""
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([x, y], -1)


def _uniform(g, shape, low, high):
    return torch.rand(shape, generator=g) * (high - low) + low


def _pose(grid, g, n_classes, max_turn, scale_range, shift):
    """Per-image random similarity transform of the grid: [n, I, S, S, 2] coordinates in class space."""
    shape = (n_classes, IMAGES_PER_CLASS)
    turn = _uniform(g, shape, -max_turn, max_turn)
    scale = _uniform(g, shape, *scale_range)
    offset = _uniform(g, (*shape, 2), -shift, shift)
    cos, sin = torch.cos(turn) / scale, torch.sin(turn) / scale
    p = grid - offset[:, :, None, None, :]
    x, y = p[..., 0], p[..., 1]
    return torch.stack([cos[..., None, None] * x + sin[..., None, None] * y,
                        -sin[..., None, None] * x + cos[..., None, None] * y], -1)


def _glyphs(n, grid, g, strokes=3, points=24):
    # A class is a few quadratic Bezier strokes; images jitter the control points, the pose and the pen.
    control = _uniform(g, (n, 1, strokes, 3, 2), -0.65, 0.65)
    control = control + 0.06 * torch.randn((n, IMAGES_PER_CLASS, strokes, 3, 2), generator=g)
    t = torch.linspace(0, 1, points)[:, None]
    p0, p1, p2 = control.unbind(-2)
    curve = ((1 - t) ** 2 * p0[..., None, :] + 2 * (1 - t) * t * p1[..., None, :] + t**2 * p2[..., None, :])
    curve = curve.flatten(2, 3)  # [n, I, strokes*points, 2]
    coords = _pose(grid, g, n, 0.2, (0.9, 1.1), 0.1).flatten(2, 3)  # [n, I, S*S, 2]
    distance = torch.cdist(coords, curve).amin(-1)
    pen = _uniform(g, (n, IMAGES_PER_CLASS, 1), 0.07, 0.11)
    ink = torch.sigmoid((pen - distance) / 0.015)
    size = grid.shape[0]
    return ink.view(n, IMAGES_PER_CLASS, 1, size, size)


def _shapes(n, grid, g, harmonics=4):
    # Outline r(θ) = base + Σ a_k cos(kθ + φ_k) per class; fill, background tint and noise vary per image.
    amplitude = _uniform(g, (n, 1, harmonics), 0.0, 0.22) * (torch.rand((n, 1, harmonics), generator=g) < 0.7)
    phase = _uniform(g, (n, 1, harmonics), 0, 2 * math.pi)
    fill = torch.rand((n, 1, 3), generator=g)
    tint = torch.rand((n, 1, 3), generator=g) * 0.5
    coords = _pose(grid, g, n, math.pi, (0.85, 1.15), 0.15)
    radius = coords.norm(dim=-1)
    angle = torch.atan2(coords[..., 1], coords[..., 0])
    k = torch.arange(2, harmonics + 2, dtype=torch.float32)
    outline = 0.5 + (amplitude[:, :, None, None, :] * torch.cos(k * angle[..., None] + phase[:, :, None, None, :])).sum(-1)
    inside = torch.sigmoid((outline - radius) / 0.02)[:, :, None]  # [n, I, 1, S, S]
    colour = (fill + 0.08 * torch.randn((n, IMAGES_PER_CLASS, 3), generator=g))[..., None, None]
    noise = tint[..., None, None] + 0.4 * torch.rand((n, IMAGES_PER_CLASS, 3, *grid.shape[:2]), generator=g)
    return inside * colour + (1 - inside) * noise


def _gratings(n, grid, g):
    # Orientation, frequency and two colours define a class; half the classes are plaids (two gratings).
    angle = _uniform(g, (n, 1, 2), 0, math.pi) + 0.05 * torch.randn((n, IMAGES_PER_CLASS, 2), generator=g)
    frequency = _uniform(g, (n, 1, 2), 1.5, 6.0) * _uniform(g, (n, IMAGES_PER_CLASS, 1), 0.95, 1.05)
    plaid = (torch.rand((n, 1, 1), generator=g) < 0.5).float()
    weights = torch.cat([torch.ones(n, 1, 1), plaid], -1)
    phase = _uniform(g, (n, IMAGES_PER_CLASS, 2), 0, 2 * math.pi)
    direction = torch.stack([torch.cos(angle), torch.sin(angle)], -1)  # [n, I, 2, 2]
    projection = torch.einsum("hwc,nikc->nikhw", grid, direction)
    waves = torch.sin(math.pi * frequency[..., None, None] * projection + phase[..., None, None])
    s = 0.5 + 0.5 * (weights[..., None, None] * waves).sum(2) / weights.sum(-1)[..., None, None]
    colours = torch.rand((n, 1, 2, 3), generator=g)
    contrast = _uniform(g, (n, IMAGES_PER_CLASS, 1, 1, 1), 0.7, 1.0)
    a, b = colours[:, :, 0, :, None, None], colours[:, :, 1, :, None, None]
    image = b + (a - b) * (0.5 + contrast * (s[:, :, None] - 0.5))
    return image + 0.02 * torch.randn(image.shape, generator=g)


_RENDERERS = {"synthetic_glyphs": (_glyphs, 1), "synthetic_shapes": (_shapes, 3), "synthetic_gratings": (_gratings, 3)}
