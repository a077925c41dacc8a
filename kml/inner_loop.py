"""The one inner-loop step every MAML learner takes (few-shot MAML and the meta-mapper).

    θ' = θ − α · clamp(∇_θ L, −c, c)

as torchmeta's `gradient_update_parameters`: a pure function of a parameter dict, so the inner loop is
differentiable (second order) when the gradients keep their graph, and the starting parameters are never
touched.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch._C._functorch import is_functorch_wrapped_tensor

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
        if clamp is not None and must_clamp(g, clamp):
            g = g.clamp(-clamp, clamp)
        step[name] = p - (lr[name] if isinstance(lr, Mapping) else lr) * g
    return step


def must_clamp(g: torch.Tensor, clamp: float) -> bool:
    """Whether the step must apply clamp(g, −c, c). On a CPU: only where the clamp touches an element,
    one at or beyond the bound (torch's clamp passes no gradient at |g| = c); where every |g| < c it is the
    identity in value and in gradient, so skipping it is exact, and the one-pass check costs less than the
    clamp's forward and backward passes over weight-sized tensors (BENCHMARKS.md). Elsewhere always (True
    whether or not it binds): the check would stall a GPU on a host sync, and under torch.func transforms
    (kml.analysis.transference runs learners under vmap) it would be data-dependent control flow."""
    if g.device.type != "cpu" or is_functorch_wrapped_tensor(g):
        return True
    low, high = torch.aminmax(g.detach())
    return bool(low <= -clamp) or bool(high >= clamp)
