"""MAML on the meta-mapper only: the inner loop adapts the mapper to a task's support captions, the outer
loop learns the mapper's initialisation from the query captions after adaptation. The frozen models
receive no gradient and are never updated.

First order by default (the inner gradients are treated as constants, so no second derivatives flow
through the frozen LM); `first_order=False` backpropagates through the inner loop.

The outer objective is the query loss after the last inner step (the paper's equation) or, with
`query_loss_from_step=2` and 5 steps, the mean of the query losses after steps 2..5 (the released code's).
`max_grad_norm` clips the norm of the whole meta-gradient (the released code clips at 1.0); either way its
norm before clipping is reported.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call

from kml.inner_loop import sgd_step
from kml.mapper.episodes import Task
from kml.mapper.frozen_lm import FrozenLM
from kml.mapper.mapper import MetaMapper
from kml.mapper.metrics import caption_template, exact_match, name_match

Params = dict[str, torch.Tensor]


class MapperMAML(nn.Module):
    def __init__(self, mapper: MetaMapper, lm: FrozenLM, inner_lr: float = 0.01, train_steps: int = 5,
                 test_steps: int = 5, first_order: bool = True, query_loss_from_step: int | None = None,
                 max_grad_norm: float | None = None):
        super().__init__()
        self.mapper = mapper
        self.lm = lm  # a plain object: not a submodule, so not in state_dict() nor switched by .train()
        self.inner_lr, self.train_steps, self.test_steps = inner_lr, train_steps, test_steps
        self.first_order = first_order
        self.query_loss_from_step = train_steps if query_loss_from_step is None else query_loss_from_step
        if not 0 <= self.query_loss_from_step <= train_steps:  # 0: the mapper before adaptation
            raise ValueError(f"query_loss_from_step={query_loss_from_step} is not an inner step (0..{train_steps})")
        self.max_grad_norm = max_grad_norm
        if not first_order:
            # Second order differentiates through the LM's backward pass; fused attention kernels have no
            # double backward, the plain implementation has (same numbers, more memory).
            lm.model.set_attn_implementation("eager")

    @property
    def device(self) -> torch.device:
        return self.mapper.prefix.device

    def prefix(self, params: Params, features: torch.Tensor) -> torch.Tensor:
        return functional_call(self.mapper, params, (features.to(self.device),))

    def loss(self, params: Params, features: torch.Tensor, prompts: list[str], targets: list[str]) -> torch.Tensor:
        return self.lm.loss(self.prefix(params, features), self.lm.batch(prompts, targets))

    def support_loss(self, params: Params, task: Task) -> torch.Tensor:
        return self.loss(params, task.support, [""] * len(task.support_text), task.support_text)

    def adapt(self, task: Task, steps: int, params: Params | None = None,
              create_graph: bool = False) -> tuple[list[Params], list[float]]:
        """`steps` SGD steps on the support loss from `params` (default: the mapper's own). Returns the
        parameters after each step, the start included (so [-1] is the adapted mapper), and the support
        loss before each step and after the last."""
        trajectory = [dict(self.mapper.named_parameters()) if params is None else params]
        losses = []
        for _ in range(steps):
            loss = self.support_loss(trajectory[-1], task)
            trajectory.append(sgd_step(trajectory[-1], loss, self.inner_lr, create_graph=create_graph))
            losses.append(loss.item())
        with torch.no_grad():
            losses.append(self.support_loss(trajectory[-1], task).item())
        return trajectory, losses

    def query_loss(self, trajectory: list[Params], task: Task) -> torch.Tensor:
        """The outer objective of one task: the mean query loss after inner steps query_loss_from_step..last."""
        return torch.stack([self.loss(params, task.query, task.query_prompt, task.query_answer)
                            for params in trajectory[self.query_loss_from_step:]]).mean()

    def meta_backward(self, tasks: list[Task]) -> dict[str, float]:
        """Accumulates the meta-gradient of the mean outer objective over `tasks` into the mapper's .grad,
        then clips its norm; one task's graph at a time, so memory does not grow with the meta-batch."""
        totals = {"loss": 0.0, "support_loss_before": 0.0, "support_loss_after": 0.0}
        for task in tasks:
            trajectory, losses = self.adapt(task, self.train_steps, create_graph=not self.first_order)
            query = self.query_loss(trajectory, task)
            if not torch.isfinite(query):
                return {**totals, "loss": float("nan")}
            (query / len(tasks)).backward()
            totals["loss"] += query.item() / len(tasks)
            totals["support_loss_before"] += losses[0] / len(tasks)
            totals["support_loss_after"] += losses[-1] / len(tasks)
        # An infinite bound only measures the norm: clipping is a switch, the norm is always worth a look.
        norm = nn.utils.clip_grad_norm_(self.mapper.parameters(), self.max_grad_norm or math.inf)
        return {**totals, "grad_norm": norm.item()}

    def answer(self, params: Params, features: torch.Tensor, prompts: list[str], max_new_tokens: int) -> list[str]:
        with torch.no_grad():
            ids = self.lm.generate(self.prefix(params, features), prompts, max_new_tokens)
        return [self.lm.decode(t) for t in ids]

    def evaluate(self, task: Task, max_new_tokens: int = 24, steps: int | None = None) -> dict:
        """Name-match and exact-match accuracy (kml.mapper.metrics) on the query before (0 steps) and after
        adapting on the support set, with the mapper in eval mode (dropout off unless the mapper keeps it
        at test). The mapper's own parameters are left untouched."""
        was_training = self.mapper.training
        self.mapper.eval()
        try:
            start = {n: p.detach().requires_grad_() for n, p in self.mapper.named_parameters()}
            before = self.answer(start, task.query, task.query_prompt, max_new_tokens)
            with torch.enable_grad():
                trajectory, losses = self.adapt(task, self.test_steps if steps is None else steps, start)
            fast = trajectory[-1]
            with torch.no_grad():
                query_loss = self.loss(fast, task.query, task.query_prompt, task.query_answer).item()
            after = self.answer(fast, task.query, task.query_prompt, max_new_tokens)
        finally:
            self.mapper.train(was_training)
        template = caption_template(task.support_text)

        def score(predictions: list[str], exact: bool) -> float:
            hits = [exact_match(p, a) if exact else name_match(p, a, template)
                    for p, a in zip(predictions, task.query_answer, strict=True)]
            return sum(hits) / len(hits)

        return {"accuracy": score(after, False), "accuracy_0step": score(before, False),
                "accuracy_exact": score(after, True), "accuracy_0step_exact": score(before, True),
                "query_loss": query_loss, "support_loss_before": losses[0], "support_loss_after": losses[-1],
                "predictions": after, "predictions_0step": before}
