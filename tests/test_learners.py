"""MAML and ProtoNet learners: gradients, inner loop, support-only encoding, factories, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kml import registry
from kml.data.episodes import Batch
from kml.learners import (
    build_learner,
    build_optimizer,
    describe,
    method_name,
    parameter_counts,
)
from kml.learners.base import detach_modulation
from kml.models import KMLGenerator
from tests.configs import COMBINATIONS, composed, tiny_config
from tests.synthetic_training import tasks, train_and_evaluate

pytestmark = pytest.mark.usefixtures("single_thread")


def random_batch(tasks=2, way=2, shot=2, query=3, size=8, dtype=torch.float32, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(way)
    return Batch(
        support_x=torch.rand(tasks, way * shot, 3, size, size, generator=g, dtype=dtype),
        support_y=labels.repeat_interleave(shot).expand(tasks, -1).clone(),
        query_x=torch.rand(tasks, way * query, 3, size, size, generator=g, dtype=dtype),
        query_y=labels.repeat_interleave(query).expand(tasks, -1).clone(),
        mode=torch.arange(tasks),
    )


def randomise_generator(learner, std=0.3):
    """Fresh generators are the identity; the gradient checks want a modulation that actually acts."""
    with torch.no_grad():
        for p in learner.modulator.generator.parameters():
            p.normal_(std=std)


def directional_derivative(learner, batch, params, direction, eps=1e-7):
    """Central difference in float64. eps is small because ReLU kinks and batch-statistics BN over a few
    images make these tiny meta-losses sharp; at 1e-7 the truncation error is ~1e-9 relative."""
    with torch.no_grad():
        for p, d in zip(params, direction, strict=True):
            p.add_(eps * d)
        plus = learner.meta_loss(batch)[0]
        for p, d in zip(params, direction, strict=True):
            p.sub_(2 * eps * d)
        minus = learner.meta_loss(batch)[0]
        for p, d in zip(params, direction, strict=True):
            p.add_(eps * d)
    return ((plus - minus) / (2 * eps)).item()


@pytest.mark.parametrize("modulation", ["film", "kml"])
def test_second_order_meta_gradient_matches_finite_differences(modulation):
    torch.manual_seed(0)
    learner = build_learner(
        tiny_config(modulation=modulation, inner_lr=0.5, train_steps=2, grad_clip=None)
    ).double()
    randomise_generator(learner)
    batch = random_batch(dtype=torch.float64)
    groups = {
        "backbone": list(learner.backbone.parameters()),
        "modulator": list(learner.modulator.parameters()),
    }
    for name, params in groups.items():
        direction = [torch.randn_like(p) for p in params]
        learner.first_order = False
        second = torch.autograd.grad(learner.meta_loss(batch)[0], params)
        learner.first_order = True
        first = torch.autograd.grad(learner.meta_loss(batch)[0], params)
        learner.first_order = False
        numeric = directional_derivative(learner, batch, params, direction)
        analytic = sum((g * d).sum() for g, d in zip(second, direction, strict=True)).item()
        first_order = sum((g * d).sum() for g, d in zip(first, direction, strict=True)).item()
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8), name
        # The check can tell the orders apart: first order misses the inner-loop curvature.
        assert abs(first_order - numeric) > 100 * abs(analytic - numeric), name


def test_first_order_gradient_is_the_query_gradient_at_the_adapted_parameters():
    torch.manual_seed(0)
    learner = build_learner(tiny_config(first_order=True, inner_lr=0.5, train_steps=3)).double()
    randomise_generator(learner)
    batch = random_batch(dtype=torch.float64)
    learner.meta_loss(batch)[0].backward()
    got = {name: p.grad.clone() for name, p in learner.named_parameters()}

    # Reference: treat the inner gradients as constants, i.e. d(adapted)/d(start) = I, and let the
    # modulation act on the query forward only.
    learner.zero_grad()
    reference = {name: torch.zeros_like(p) for name, p in learner.backbone.named_parameters()}
    for t in range(batch.num_tasks):
        modulation = learner.task_modulation(batch.support_x[t])
        start = {name: p.detach().requires_grad_() for name, p in learner.backbone.named_parameters()}
        adapted = learner.adapt(
            batch.support_x[t],
            batch.support_y[t],
            detach_modulation(modulation),
            learner.train_steps,
            create_graph=False,
            params=start,
        )
        leaves = {name: p.detach().requires_grad_() for name, p in adapted.items()}
        loss = F.cross_entropy(learner.logits(leaves, batch.query_x[t], modulation), batch.query_y[t])
        (loss / batch.num_tasks).backward()
        for name, leaf in leaves.items():
            reference[name] += leaf.grad
    for name, p in learner.named_parameters():
        expected = reference[name.removeprefix("backbone.")] if name.startswith("backbone.") else p.grad
        torch.testing.assert_close(got[name], expected, msg=name)
    assert any(got[name].abs().sum() > 0 for name in got if name.startswith("modulator.encoder"))


@pytest.mark.parametrize("modulation", ["none", "kml"])
def test_inner_loop_lowers_the_support_loss(modulation, synthetic_root):
    torch.manual_seed(0)
    cfg = tiny_config(modulation=modulation, channels=8, embedding_dim=16, way=5)
    learner = build_learner(cfg)
    batch = tasks(synthetic_root, "train", 3, seed=0, shot=5)
    for t in range(batch.num_tasks):
        x, y = batch.support_x[t], batch.support_y[t]
        modulation_t = learner.task_modulation(x)
        before = F.cross_entropy(learner.backbone(x, modulation=modulation_t), y)
        adapted = learner.adapt(x, y, modulation_t, learner.train_steps, create_graph=False)
        after = F.cross_entropy(learner.logits(adapted, x, modulation_t), y)
        assert after < 0.9 * before


def test_inner_gradient_clamp_is_applied():
    torch.manual_seed(0)
    clip = 1e-3
    learner = build_learner(tiny_config(grad_clip=clip, inner_lr=0.5))
    batch = random_batch()
    x, y = batch.support_x[0], batch.support_y[0]
    modulation = learner.task_modulation(x)
    start = dict(learner.backbone.named_parameters())
    grads = torch.autograd.grad(
        F.cross_entropy(learner.backbone(x, modulation=modulation), y), list(start.values())
    )
    assert max(g.abs().max() for g in grads) > 10 * clip  # the clamp binds
    adapted = learner.adapt(x, y, modulation, 1, create_graph=False)
    for (name, p), g in zip(start.items(), grads, strict=True):
        torch.testing.assert_close(adapted[name], p - learner.inner_lr * g.clamp(-clip, clip), msg=name)
    learner.grad_clip = None
    unclamped = learner.adapt(x, y, modulation, 1, create_graph=False)
    assert any(not torch.allclose(adapted[name], unclamped[name]) for name in start)


def record_outputs(learner, method_name):
    """Replace learner.<method_name> by a wrapper that keeps every result it returns."""
    outputs, original = [], getattr(learner, method_name)

    def recording(*args, **kwargs):
        outputs.append(original(*args, **kwargs))
        return outputs[-1]

    setattr(learner, method_name, recording)
    return outputs


def record_first_arguments(learner, method_name):
    """Replace learner.<method_name> by a wrapper that keeps the first argument of every call."""
    arguments, original = [], getattr(learner, method_name)

    def recording(*args, **kwargs):
        arguments.append(args[0])
        return original(*args, **kwargs)

    setattr(learner, method_name, recording)
    return arguments


def flat_tensors(value):
    """The tensors inside a modulation list / parameter dict / tensor, in a fixed order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [t for item in value if item is not None for t in flat_tensors(item)]


@pytest.mark.parametrize("learner_name", ["maml", "protonet"])
def test_encoder_sees_the_support_set_only(learner_name):
    torch.manual_seed(0)
    learner = build_learner(tiny_config(learner_name, "film"))
    randomise_generator(learner)
    encoder_inputs = []
    learner.modulator.encoder.register_forward_pre_hook(lambda module, args: encoder_inputs.append(args[0]))
    batch = random_batch(tasks=3)
    learner.meta_loss(batch)
    learner.evaluate(batch)
    assert len(encoder_inputs) == 2 * batch.num_tasks
    for i, images in enumerate(encoder_inputs):
        assert torch.equal(images, batch.support_x[i % batch.num_tasks])

    # Same support sets, other query images: the modulation and everything computed from the support
    # set (adapted parameters / prototypes) stay bit-identical, the query loss does not.
    changed = Batch(
        batch.support_x, batch.support_y, random_batch(tasks=3, seed=1).query_x, batch.query_y, batch.mode
    )
    modulations = record_outputs(learner, "task_modulation")
    # MAML: the adapted parameters; ProtoNet: the support features its prototypes are made of.
    support_side = (record_outputs(learner, "adapt") if learner_name == "maml"
                    else record_first_arguments(learner, "logits"))
    losses = [learner.meta_loss(b)[0] for b in (batch, changed)]
    assert len(modulations) == len(support_side) == 2 * batch.num_tasks
    for first, second in zip(
        modulations[:3] + support_side[:3], modulations[3:] + support_side[3:], strict=True
    ):
        assert all(torch.equal(a, b) for a, b in zip(flat_tensors(first), flat_tensors(second), strict=True))
    assert not torch.allclose(losses[0], losses[1])


def test_protonet_logits_match_a_hand_computation():
    torch.manual_seed(0)
    learner = build_learner(tiny_config("protonet", "kml", way=3))
    randomise_generator(learner)
    batch = random_batch(tasks=1, way=3, shot=2, query=2)
    x, y, q = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    with torch.no_grad():
        modulation = learner.task_modulation(x)
        support = learner.backbone(x, modulation=modulation).tolist()
        queries = learner.backbone(q, modulation=modulation).tolist()
        logits = learner.task_logits(x, y, q)
    for i, query in enumerate(queries):
        for c in range(3):
            members = [s for s, label in zip(support, y.tolist(), strict=True) if label == c]
            mean = [sum(values) / len(members) for values in zip(*members, strict=True)]
            distance = sum((a - b) ** 2 for a, b in zip(query, mean, strict=True))
            assert logits[i, c].item() == pytest.approx(-distance, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("learner_name, modulation", COMBINATIONS)
def test_evaluate_needs_no_outer_graph(learner_name, modulation):
    torch.manual_seed(0)
    learner = build_learner(tiny_config(learner_name, modulation))
    batch = random_batch(tasks=3)
    before = {name: p.clone() for name, p in learner.named_parameters()}
    plain = learner.evaluate(batch)
    with torch.no_grad():
        under_no_grad = learner.evaluate(batch)
    with torch.inference_mode():
        inference_batch = Batch(*(t.clone() for t in vars(batch).values()))
        under_inference = learner.evaluate(inference_batch)
    assert plain.shape == (3,) and ((plain >= 0) & (plain <= 1)).all()
    assert not plain.requires_grad
    assert torch.equal(plain, under_no_grad) and torch.equal(plain, under_inference)
    for name, p in learner.named_parameters():
        assert p.grad is None and torch.equal(p, before[name])


@pytest.mark.parametrize("learner_name, modulation", COMBINATIONS)
def test_meta_loss_reaches_every_trainable_parameter(learner_name, modulation):
    torch.manual_seed(0)
    learner = build_learner(tiny_config(learner_name, modulation, embedding_dim=8))
    loss, metrics = learner.meta_loss(random_batch())
    assert set(metrics) >= {"loss", "accuracy"} and metrics["loss"] == pytest.approx(loss.item())
    loss.backward()
    for name, p in learner.named_parameters():
        assert p.grad is not None, name
    # The identity initialisation must not be a dead end: the generators' output layers learn from step one.
    if modulation == "kml":
        assert all(layer.weight.grad.abs().sum() > 0 for layer in learner.modulator.generator.out_factors)
    if modulation == "film":
        assert all(head.weight.grad.abs().sum() > 0 for head in learner.modulator.generator.heads)


def load_config(learner, modulation, backbone="conv4", way=5):
    return composed(f"learner={learner}", f"modulation={modulation}", f"backbone={backbone}", f"way={way}")


@pytest.mark.parametrize("learner_name, modulation", COMBINATIONS)
def test_config_groups_build_their_methods(learner_name, modulation):
    cfg = load_config(learner_name, modulation)
    learner = build_learner(cfg)
    assert isinstance(learner, registry.locate(cfg.learner, "learner"))
    assert learner.method_name == method_name(cfg) and learner.method_name in describe(learner)
    assert (learner.backbone.head is not None) == type(learner).needs_head
    counts = parameter_counts(learner)
    assert (counts["encoder"] > 0) == registry.has_target(cfg.modulation)
    assert ("reduction_factor" in counts) == isinstance(getattr(learner.modulator, "generator", None), KMLGenerator)
    optimizer = build_optimizer(learner, cfg)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == cfg.learner.lr
    assert sum(p.numel() for p in optimizer.param_groups[0]["params"]) == sum(
        p.numel() for p in learner.parameters()
    )


def test_maml_takes_mmaml_defaults_from_its_yaml():
    learner = build_learner(load_config("maml", "kml"))
    assert (learner.inner_lr, learner.train_steps, learner.test_steps) == (0.05, 5, 5)
    assert (learner.grad_clip, learner.first_order) == (20.0, False)
    assert learner.backbone.head.out_features == 5


def test_method_names_and_kml_reduction_of_the_default_model():
    names = {build_learner(load_config(lrn, mod, "conv4_maxpool")).method_name for lrn, mod in COMBINATIONS}
    assert names == {"MAML", "MMAML", "MMAML+KML", "ProtoNet", "MProtoNet", "MProtoNet+KML"}
    counts = parameter_counts(build_learner(load_config("maml", "kml")))
    assert counts["generator"] == 129 * 3003
    assert counts["reduction_factor"] == pytest.approx(388416 / 3003)


@pytest.mark.parametrize("learner_name, modulation", COMBINATIONS)
def test_every_method_learns_the_synthetic_benchmark(learner_name, modulation, synthetic_root):
    # Two inner steps while training (five when evaluating) keep the second-order MAML runs at ~10 s each.
    iterations = 80 if learner_name == "maml" else 150
    initial, final = train_and_evaluate(synthetic_root, learner_name, modulation, iterations, channels=8,
                                        train_steps=2)
    chance = 1 / 5
    assert final >= 1.5 * chance, (initial, final)
    assert final >= initial + 0.1, (initial, final)


@pytest.mark.slow
@pytest.mark.parametrize("learner_name, modulation", COMBINATIONS)
def test_every_method_learns_the_synthetic_benchmark_long(learner_name, modulation, synthetic_root):
    initial, final = train_and_evaluate(synthetic_root, learner_name, modulation, 600, channels=16, train_steps=5,
                                        seed=1)
    assert final >= 0.5, (initial, final)
