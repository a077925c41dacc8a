"""The one inner-loop step every MAML learner takes (few-shot MAML and the meta-mapper).

    θ' = θ − α · clamp(∇_θ L, −c, c)

as torchmeta's `gradient_update_parameters`: a pure function of a parameter dict, so the inner loop is
differentiable (second order) when the gradients keep their graph, and the starting parameters are never
touched.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

Params = dict[str, torch.Tensor]


def sgd_step(
    params: Params,
    loss: torch.Tensor,
    lr: float | Mapping[str, float | torch.Tensor],
    *,
    clamp: float | None = None,
    create_graph: bool = False,
) -> Params:
    """One SGD step on `loss` from `params`.

    lr: one step size, or one per parameter name (a float or a tensor, e.g. learned step sizes).
    clamp: element-wise bound on the gradient (MMAML's ±20 against the occasional exploding step); None: off.
    create_graph: keep the gradients' graph, so the returned parameters can be differentiated through
        the step (second-order MAML); without it the gradients are constants (first order).
    """
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
    step = {}
    for (name, p), g in zip(params.items(), grads, strict=True):
        if clamp is not None:
            g = g.clamp(-clamp, clamp)
        step[name] = p - (lr[name] if isinstance(lr, Mapping) else lr) * g
    return step
