"""MAML with optional task modulation (MAML / MMAML / MMAML+KML)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from kml.data.episodes import Batch
from kml.errors import ConfigError
from kml.inner_loop import sgd_step
from kml.learners import batched
from kml.learners.base import Learner, Modulation, accuracy, detach_modulation, summarise
from kml.learners.batched import FastPath
from kml.models import TaskModulator

Params = dict[str, torch.Tensor]


class MAML(Learner):
    """Inner loop on the backbone's parameters (convs, BN affine, head) only.

    The encoder and the generator are outer-loop parameters: the modulation is computed once per task,
    from its support set, and held fixed while the backbone adapts.

    `fast_path` (kml.learners.batched.FastPath) selects how, not what, is computed: with `batched` the
    tasks of a meta-batch run together (same meta-loss and meta-gradients as the per-task loop below).
    """

    needs_head = True

    def __init__(
        self,
        backbone: nn.Module,
        modulator: TaskModulator | None,
        way: int,
        *,
        inner_lr: float,
        train_steps: int,
        test_steps: int,
        grad_clip: float | None,
        first_order: bool,
        fast_path: FastPath | None = None,
    ) -> None:
        if backbone.head is None or backbone.head.out_features != way:
            raise ConfigError(f"learner=maml needs a backbone with a {way}-output head (backbone.num_classes)")
        super().__init__(backbone, modulator, way, fast_path)
        self.inner_lr = float(inner_lr)
        self.train_steps = int(train_steps)
        self.test_steps = int(test_steps)
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.first_order = bool(first_order)
        self._batched_backbone = batched.BatchedBackbone()

    def logits(self, params: Params, x: torch.Tensor, modulation: Modulation) -> torch.Tensor:
        return functional_call(self.backbone, params, (x,), {"modulation": modulation})

    def adapt(
        self,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        modulation: Modulation,
        steps: int,
        *,
        create_graph: bool,
        params: Params | None = None,
    ) -> Params:
        """`steps` SGD steps on the support loss from `params` (default: the backbone's own).

        With create_graph the returned parameters keep the second-order graph back to the starting
        parameters and the modulation; without it the inner gradients are constants, which is
        first-order MAML (the adapted parameters still depend on the starting ones with Jacobian I).
        """
        if params is None:
            params = dict(self.backbone.named_parameters())
        # The inner loop is gradient descent, so it needs autograd even inside a caller's no_grad block
        # (then only the outer graph is missing, as the caller asked).
        with torch.enable_grad():
            for _ in range(steps):
                loss = F.cross_entropy(self.logits(params, support_x, modulation), support_y)
                params = self._inner_step(params, loss, create_graph)
        return params

    def _inner_step(self, params: Params, loss: torch.Tensor, create_graph: bool) -> Params:
        """One SGD step of the inner loop (per task, or all tasks at once when `loss` sums their losses)."""
        return sgd_step(params, loss, self.inner_lr, clamp=self.grad_clip, create_graph=create_graph)

    def settings_summary(self) -> str:
        clip = "off" if self.grad_clip is None else f"±{self.grad_clip:g}"
        order = "first" if self.first_order else "second"
        return (f"inner loop: lr {self.inner_lr:g}, {self.train_steps} train / {self.test_steps} test steps, "
                f"gradient clamp {clip}, {order} order")

    def task_logits(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, *, outer_graph: bool = True
    ) -> torch.Tensor:
        """Query logits after `train_steps` inner steps on the support set (second order unless
        first_order, and only with `outer_graph`)."""
        modulation = self.task_modulation(support_x)
        # First order drops every path through the inner gradients, and the modulation reaches the
        # adapted parameters only through them, so the inner loop may as well see it detached (this
        # also lets autograd free each inner step's graph right away).
        inner_modulation = detach_modulation(modulation) if self.first_order else modulation
        params = self.adapt(support_x, support_y, inner_modulation, self.train_steps,
                            create_graph=outer_graph and not self.first_order)
        return self.logits(params, query_x, modulation)

    def meta_loss(self, batch: Batch) -> tuple[torch.Tensor, dict]:
        device = batch.support_x.device
        with self.fast_path.precision(device):
            if self.runs_batched(device):
                return self._batched_meta_loss(batch)
            return self.per_task_meta_loss(batch)

    def evaluate(self, batch: Batch) -> torch.Tensor:
        device = batch.support_x.device
        # Inference tensors cannot be saved for backward, so leave inference mode (should the caller be in
        # it) and copy the support set out of it for the inner loop.
        with torch.inference_mode(False), self.fast_path.precision(device):
            if self.runs_batched(device):
                return self._batched_evaluate(batch)
            return self._per_task_evaluate(batch)

    def _per_task_evaluate(self, batch: Batch) -> torch.Tensor:
        accuracies = []
        for t in range(batch.num_tasks):
            support_x, support_y = batch.support_x[t].clone(), batch.support_y[t].clone()
            with torch.no_grad():
                modulation = self.task_modulation(support_x)
            start = {name: p.detach().requires_grad_() for name, p in self.backbone.named_parameters()}
            params = self.adapt(
                support_x, support_y, modulation, self.test_steps, create_graph=False, params=start
            )
            with torch.no_grad():
                logits = self.logits(params, batch.query_x[t], modulation)
            accuracies.append(accuracy(logits, batch.query_y[t]))
        return torch.stack(accuracies)

    # The batched path: every tensor carries the task axis T in front (kml/learners/batched.py).

    def batched_adapt(
        self,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        modulation: batched.BatchedModulation,
        steps: int,
        *,
        create_graph: bool,
        params: Params,
    ) -> Params:
        """`adapt` for all tasks at once: support [T, N·K, ...], params [T, ...]."""
        with torch.enable_grad():
            for _ in range(steps):
                logits = self._batched_backbone(
                    self.fast_path, self.backbone, params, support_x, modulation, twice=create_graph
                )
                # The sum over tasks: its gradient w.r.t. task t's parameters is task t's own inner gradient.
                loss = batched.task_losses(logits, support_y).sum()
                params = self._inner_step(params, loss, create_graph)
        return params

    def _batched_meta_loss(self, batch: Batch) -> tuple[torch.Tensor, dict]:
        modulation = batched.task_modulation(self.modulator, batch.support_x, len(self.backbone.layer_shapes))
        losses, accuracies = [], []
        parts = self.fast_path.passes(batch.query_x)
        for part, part_modulation in zip(parts, batched.split(modulation, parts), strict=True):
            # As in the per-task loop: first order may let the inner loop see the modulation detached.
            part_inner = detach_modulation(part_modulation) if self.first_order else part_modulation
            with torch.enable_grad():  # as `adapt`: the inner loop differentiates inside a caller's no_grad too
                start = batched.per_task_parameters(self.backbone, part.stop - part.start)
            params = self.batched_adapt(
                batch.support_x[part],
                batch.support_y[part],
                part_inner,
                self.train_steps,
                create_graph=not self.first_order,
                params=start,
            )
            logits = self._batched_backbone(
                self.fast_path,
                self.backbone,
                params,
                batch.query_x[part],
                part_modulation,
                twice=False,
            )
            losses.append(batched.task_losses(logits, batch.query_y[part]))
            accuracies.append(batched.task_accuracies(logits.detach(), batch.query_y[part]))
        return summarise(torch.cat(losses), torch.cat(accuracies))

    def _batched_evaluate(self, batch: Batch) -> torch.Tensor:
        support_x, support_y = batch.support_x.clone(), batch.support_y.clone()
        with torch.no_grad():
            modulation = batched.task_modulation(self.modulator, support_x, len(self.backbone.layer_shapes))
        accuracies = []
        parts = self.fast_path.passes(batch.query_x)
        for part, part_modulation in zip(parts, batched.split(modulation, parts), strict=True):
            start = batched.per_task_parameters(self.backbone, part.stop - part.start, detach=True)
            params = self.batched_adapt(
                support_x[part],
                support_y[part],
                part_modulation,
                self.test_steps,
                create_graph=False,
                params=start,
            )
            with torch.no_grad():
                logits = self._batched_backbone(
                    self.fast_path, self.backbone, params, batch.query_x[part], part_modulation, twice=False
                )
            accuracies.append(batched.task_accuracies(logits, batch.query_y[part]))
        return torch.cat(accuracies)
