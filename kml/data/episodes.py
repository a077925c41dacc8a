"""The meta-batch that samplers produce and learners consume."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Batch:
    """T few-shot tasks; images stay uint8 until `to()` so sampling and transfer stay cheap."""

    support_x: torch.Tensor  # [T, N*K, C, H, W]
    support_y: torch.Tensor  # [T, N*K] int64, labels 0..N-1
    query_x: torch.Tensor  # [T, N*Q, C, H, W]
    query_y: torch.Tensor  # [T, N*Q] int64
    mode: torch.Tensor  # [T] int64, index into the benchmark's mode list

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Batch:
        """Move to `device`; uint8 images become `dtype` in [0, 1]."""

        def move(t: torch.Tensor) -> torch.Tensor:
            t = t.to(device, non_blocking=True)
            return t.to(dtype).div_(255) if t.dtype == torch.uint8 else t

        return Batch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})

    def task(self, i: int) -> Batch:
        """Task i as a batch of one (keeps the leading T axis)."""
        return Batch(**{f.name: getattr(self, f.name)[i : i + 1] for f in fields(self)})
