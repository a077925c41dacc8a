"""The reference meta-training step: MAML written with the `higher` library (extra `bench`), timed on the
same model and tasks as ours so that the train table can state our speed-up over it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kml.data.episodes import Batch


def higher_meta_loss(learner, batch: Batch) -> torch.Tensor:
    """The reference: the same Conv4 MAML step written with `higher` (its MAML example's pattern), second
    order: a differentiable SGD inner loop per task with the same clamp, query loss backward per task."""
    import higher

    clip = learner.grad_clip
    inner_opt = torch.optim.SGD(learner.backbone.parameters(), lr=learner.inner_lr)
    total = 0.0
    for t in range(batch.num_tasks):
        modulation = learner.task_modulation(batch.support_x[t])
        with higher.innerloop_ctx(learner.backbone, inner_opt, copy_initial_weights=False) as (model, opt):
            for _ in range(learner.train_steps):
                loss = F.cross_entropy(model(batch.support_x[t], modulation=modulation), batch.support_y[t])
                opt.step(loss, grad_callback=lambda grads: [g.clamp(-clip, clip) for g in grads])
            query_loss = F.cross_entropy(model(batch.query_x[t], modulation=modulation), batch.query_y[t])
            (query_loss / batch.num_tasks).backward()
            total += query_loss.item() / batch.num_tasks
    return torch.tensor(total)


def higher_status() -> str | None:
    """None when `higher` imports, else why not."""
    try:
        import higher  # noqa: F401
    except Exception as error:  # ImportError, or any incompatibility with this torch
        return f"{type(error).__name__}: {error}"
    return None
