"""kml.inner_loop.sgd_step skips the gradient clamp where it binds nowhere: same values and the same
second-order gradients as clamping always, inside, at and beyond the bound (at it, torch's clamp
passes no gradient, so the bound counts as binding)."""

from __future__ import annotations

import pytest
import torch

from kml.inner_loop import must_clamp, sgd_step

LR = 0.3


def always_clamped_step(params, loss, lr, clamp):
    """The step as written in the paper, every gradient clamped."""
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    return {name: p - lr * g.clamp(-clamp, clamp) for (name, p), g in zip(params.items(), grads, strict=True)}


def step_and_outer_gradient(step, scale, start, clamp):
    """One inner step on loss = Σ scale·p²/2 (inner gradient scale·p), then the gradient of an outer loss
    of the stepped parameters w.r.t. the outer parameter `scale` and the start (second order)."""
    scale = scale.clone().requires_grad_()
    params = {"w": start.clone().requires_grad_()}
    loss = (scale * params["w"] ** 2).sum() / 2
    stepped = step(params, loss, LR, clamp)
    outer = (stepped["w"] ** 3).sum()
    return stepped["w"], torch.autograd.grad(outer, [scale, params["w"]])


@pytest.mark.parametrize(
    "bound, binds",
    [(10.0, False), (2.0, True), (0.5, True)],  # the largest |gradient| below is exactly 2.0
    ids=["inside", "at_the_bound", "beyond"],
)
def test_sgd_step_equals_always_clamping(bound, binds):
    start = torch.tensor([1.0, -0.5, 0.25, 2.0], dtype=torch.float64)
    scale = torch.tensor([2.0, 1.0, -3.0, 0.5], dtype=torch.float64)  # gradients 2, −0.5, −0.75, 1
    assert must_clamp(scale * start, bound) == binds

    def ours(params, loss, lr, clamp):
        return sgd_step(params, loss, lr, clamp=clamp, create_graph=True)

    value, grads = step_and_outer_gradient(ours, scale, start, bound)
    expected_value, expected_grads = step_and_outer_gradient(always_clamped_step, scale, start, bound)
    torch.testing.assert_close(value, expected_value, rtol=0, atol=0)
    for got, expected in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-15, atol=0)
    # Where the clamp binds, the clamped entry passes no gradient to `scale`; elsewhere every entry does.
    assert (grads[0] == 0).any() == binds


def test_sgd_step_with_a_learned_step_size_per_parameter():
    w = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    rate = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    stepped = sgd_step({"w": w}, (w**2).sum(), {"w": rate}, clamp=3.0, create_graph=True)["w"]
    torch.testing.assert_close(stepped, w.detach() - 0.1 * (2 * w.detach()).clamp(-3, 3))
    (d_rate,) = torch.autograd.grad(stepped.sum(), [rate])
    assert d_rate.item() == pytest.approx(-(2.0 - 3.0))


def test_must_clamp_reads_every_element():
    g = torch.zeros(3, 4, 5)
    assert not must_clamp(g, 1.0)
    g[2, 3, 4] = -1.5
    assert must_clamp(g, 1.0)
    g[2, 3, 4] = 1.0  # at the bound: torch's clamp passes no gradient there
    assert must_clamp(g, 1.0)
    g[2, 3, 4] = 0.999
    assert not must_clamp(g, 1.0)


def test_sgd_step_under_vmap_clamps_as_always():
    """kml.analysis.transference runs learners under torch.func.vmap (the inner loop inside torch.func.grad), where
    the skip's data-dependent check cannot run: there the step clamps always, with the numbers and
    second-order gradients of clamping task by task."""
    starts = torch.tensor([[1.0, -0.5], [2.0, 0.25]], dtype=torch.float64)
    scales = torch.tensor([[2.0, 1.0], [0.5, -3.0]], dtype=torch.float64)  # gradients up to 2: binds at 1.5

    def outer(start, scale):
        loss = (scale * start**2).sum() / 2
        stepped = sgd_step({"w": start}, loss, LR, clamp=1.5, create_graph=True)["w"]
        return (stepped**3).sum()

    batched = torch.func.vmap(torch.func.grad(outer))(starts, scales)
    for start, scale, got in zip(starts, scales, batched, strict=True):
        _, (_, expected) = step_and_outer_gradient(always_clamped_step, scale, start, 1.5)
        torch.testing.assert_close(got, expected, rtol=1e-15, atol=0)
