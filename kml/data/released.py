"""The class splits and image quirks of the authors' released code (`data.split=released` and the
bug-compatibility switches of protocol=released; docs/protocols.md), built at load time from the
prepared standard splits, so one preparation serves both protocols.

- Omniglot: the first 1100 characters train, the other 523 test, no validation split. The released code
  cuts its glob order; here the sorted order of the standard split (whose first 1100 are the same cut),
  since glob order depends on the file system. Validation tasks come from the 523 test characters: they
  are only a progress readout, and selecting a checkpoint on them is refused (kml.config).
- CUB and Aircraft: every class, shuffled with numpy.random.RandomState(123) and cut 70/15/15 % (int()
  of each share, the rest to test). The released code shuffles os.listdir order (CUB) and variants.txt
  order (Aircraft); here sorted names, as neither order is recorded in the prepared data.
- fc100_inverted: the released FC100 loader turns float pixels 0–255 into a PIL image through
  ToPILImage's `mul(255).byte()`, which wraps around: x ↦ 255·x mod 256 = (−x) mod 256, an inversion.
"""
from __future__ import annotations

import numpy as np
import torch

from kml.data.store import SPLITS

RELEASED_SPLITS = ("omniglot", "cub", "aircraft")
SHARES = (70, 15, 15)
RELEASED_SEED = 123


def class_lists(name: str, standard: dict[str, list[str]]) -> dict[str, list[str]]:
    """split -> class names under the released code's split, from the standard split's class lists."""
    if name == "omniglot":
        every = standard["train"] + standard["val"] + standard["test"]
        return {"train": every[:1100], "val": every[1100:], "test": every[1100:]}
    classes = sorted(c for split in SPLITS for c in standard[split])
    np.random.RandomState(RELEASED_SEED).shuffle(classes)
    train, val = (int(share / sum(SHARES) * len(classes)) for share in SHARES[:2])
    return {"train": classes[:train], "val": classes[train:train + val], "test": classes[train + val:]}


def invert_by_wraparound(images: torch.Tensor) -> torch.Tensor:
    """uint8 x ↦ (−x) mod 256: what the released FC100 loader's float→byte conversion does."""
    return (-images.to(torch.int16)).remainder(256).to(torch.uint8)
