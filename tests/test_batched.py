"""The batched fast path (kml/learners/batched.py) computes what the plain per-task loop computes.

Everything here runs in float64 with tiny networks, on the `device` fixture's device where a test takes
it (a CPU unless `--kml-device cuda`: `python -m kml.bench gpu` runs them on a GPU); the `cuda`-marked
checks at the end are skipped without a GPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from kml.config import CONF_DIR
from kml.data.episodes import Batch
from kml.learners import batched, build_learner
from kml.learners.batched import FastPath
from kml.models import batched_conv
from kml.models.functional import batch_norm, fused_batch_norm
from tests.configs import LEARNERS, MODULATIONS, composed, tiny_config
from tests.test_learners import random_batch, randomise_generator

CLIP = 0.05  # small enough to bind on these tiny tasks (checked below)


pytestmark = pytest.mark.usefixtures("single_thread")


def learner_pair(learner_name: str, modulation: str, *overrides: str, channels: int = 2, device=None, **keys):
    """The same float64 learner twice: plain per-task loop and batched (identical parameters), on `device`."""
    torch.manual_seed(0)
    keys = {"inner_lr": 0.5, "train_steps": 2, "grad_clip": CLIP, **keys} if learner_name == "maml" else keys
    loop = build_learner(tiny_config(learner_name, modulation, *overrides, channels=channels, **keys,
                                     batched=False)).double()
    if loop.modulator is not None:
        randomise_generator(loop)
    fast = build_learner(tiny_config(learner_name, modulation, *overrides, channels=channels, **keys,
                                     batched=True)).double()
    fast.load_state_dict(loop.state_dict())
    if device is not None:
        loop, fast = loop.to(device), fast.to(device)
    return loop, fast


def meta_gradients(learner, batch):
    loss, metrics = learner.meta_loss(batch)
    return loss, metrics, torch.autograd.grad(loss, list(learner.parameters()))


def assert_same_meta_step(loop, fast, batch):
    loss_loop, metrics_loop, grads_loop = meta_gradients(loop, batch)
    loss_fast, metrics_fast, grads_fast = meta_gradients(fast, batch)
    torch.testing.assert_close(loss_fast, loss_loop, rtol=1e-10, atol=0)
    assert metrics_fast.keys() == metrics_loop.keys()
    for key, value in metrics_loop.items():
        assert metrics_fast[key] == pytest.approx(value, rel=1e-10), key
    names = [name for name, _ in loop.named_parameters()]
    for name, a, b in zip(names, grads_loop, grads_fast, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-10, msg=name)
    return grads_loop


@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
@pytest.mark.parametrize("modulation", MODULATIONS)
def test_batched_maml_meta_gradients_equal_the_per_task_loop(modulation, first_order, device):
    loop, fast = learner_pair("maml", modulation, first_order=first_order, device=device)
    assert fast.fast_path.use_batched(device) and not loop.fast_path.use_batched(device)
    batch = random_batch(tasks=3, way=2, shot=2, query=3, dtype=torch.float64).to(device)

    # The element-wise clamp binds on some inner-gradient entries and not on others.
    x, y = batch.support_x[0], batch.support_y[0]
    support_loss = F.cross_entropy(loop.backbone(x, modulation=loop.task_modulation(x)), y)
    inner = torch.cat(
        [g.flatten() for g in torch.autograd.grad(support_loss, list(loop.backbone.parameters()))]
    )
    assert (inner.abs() > CLIP).any() and (inner.abs() < CLIP).any()

    grads = assert_same_meta_step(loop, fast, batch)
    assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("conv", ["grouped", "per_task", "unfold", "auto", "timed"])
@pytest.mark.parametrize("tasks_per_pass", [1, 2, "auto"])
def test_every_convolution_method_and_task_grouping_gives_the_same_meta_gradients(conv, tasks_per_pass, device):
    loop, fast = learner_pair("maml", "kml", device=device)
    fast.fast_path = FastPath(batched=True, conv=conv, tasks_per_pass=tasks_per_pass)
    batch = random_batch(tasks=3, dtype=torch.float64).to(device)
    assert len(fast.fast_path.passes(batch.query_x)) == {1: 3, 2: 2, "auto": 1}[tasks_per_pass]
    assert_same_meta_step(loop, fast, batch)
    torch.testing.assert_close(fast.evaluate(batch), loop.evaluate(batch), rtol=0, atol=0)


def test_convolution_methods_agree():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3 * 5, 9, 9, generator=g, dtype=torch.float64)  # 3 tasks, 5 channels each
    weight = torch.randn(3, 6, 5, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(3, 6, generator=g, dtype=torch.float64)
    expected = torch.cat(
        [F.conv2d(x[:, 5 * t : 5 * (t + 1)], weight[t], bias[t], stride=2, padding=1) for t in range(3)],
        dim=1,
    )
    for method in batched_conv.METHODS:
        torch.testing.assert_close(batched_conv.conv(method, x, weight, bias, 2, 1), expected)
    torch.testing.assert_close(
        batched_conv.conv("timed", x, weight, None, 1, 1)[:, :6], F.conv2d(x[:, :5], weight[0], padding=1)
    )


def test_batched_maml_differs_between_orders():
    """The equality above is not vacuous: the batched path's first and second order differ."""
    _, second = learner_pair("maml", "kml")
    _, first = learner_pair("maml", "kml", first_order=True)
    batch = random_batch(tasks=2, dtype=torch.float64)
    g2 = meta_gradients(second, batch)[2]
    g1 = meta_gradients(first, batch)[2]
    assert max((a - b).abs().max().item() for a, b in zip(g1, g2, strict=True)) > 1e-4


@pytest.mark.parametrize("modulation", MODULATIONS)
def test_batched_maml_evaluate_equals_the_per_task_loop(modulation, device):
    loop, fast = learner_pair("maml", modulation, test_steps=3, way=3, device=device)
    batch = random_batch(tasks=4, way=3, shot=2, query=4, dtype=torch.float64, seed=3).to(device)
    expected = loop.evaluate(batch)
    torch.testing.assert_close(fast.evaluate(batch), expected, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(fast.evaluate(batch), expected, rtol=0, atol=0)
    with torch.inference_mode():
        inference_batch = Batch(*(t.clone() for t in vars(batch).values()))
        torch.testing.assert_close(fast.evaluate(inference_batch), expected, rtol=0, atol=0)
    assert all(p.grad is None for p in fast.parameters())


def test_batched_adapt_equals_adapt_task_by_task(device):
    loop, fast = learner_pair("maml", "kml", device=device)
    batch = random_batch(tasks=3, dtype=torch.float64).to(device)
    modulation = batched.task_modulation(fast.modulator, batch.support_x, len(fast.backbone.blocks))
    adapted = fast.batched_adapt(
        batch.support_x,
        batch.support_y,
        modulation,
        2,
        create_graph=False,
        params=batched.per_task_parameters(fast.backbone, 3),
    )
    for t in range(3):
        x, y = batch.support_x[t], batch.support_y[t]
        expected = loop.adapt(x, y, loop.task_modulation(x), 2, create_graph=False)
        for name, value in expected.items():
            torch.testing.assert_close(adapted[name][t], value, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("modulation", MODULATIONS)
def test_batched_protonet_equals_the_per_task_loop(modulation, device):
    loop, fast = learner_pair("protonet", modulation, way=3, device=device)
    batch = random_batch(tasks=3, way=3, shot=2, query=2, dtype=torch.float64).to(device)
    assert_same_meta_step(loop, fast, batch)
    torch.testing.assert_close(fast.evaluate(batch), loop.evaluate(batch), rtol=0, atol=0)


def test_batch_norm_is_correct_under_vmap_to_second_order():
    """kml.models.functional.batch_norm under vmap over tasks, differentiated twice (a Hessian-vector
    product through a per-task inner gradient), equals the task-by-task computation; the fused batch
    norm of the batched path equals it outside vmap."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 2, 5, 5, generator=g, dtype=torch.float64)  # [tasks, images, C, H, W]
    weight = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    gamma = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    direction = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)

    def loss(w, images, norm=batch_norm):
        h = norm(F.conv2d(images, w, padding=1), gamma, torch.zeros(3, dtype=torch.float64))
        return (torch.tanh(h) ** 2).mean()

    def inner_gradient_dot(w, images):
        return (torch.func.grad(loss)(w, images) * direction).sum()

    vmapped = torch.func.vmap(inner_gradient_dot, in_dims=(None, 0))(weight, x).sum()
    hvp_vmap = torch.autograd.grad(vmapped, (weight, gamma))
    for norm in (batch_norm, fused_batch_norm):
        total = 0
        for t in range(3):
            (grad,) = torch.autograd.grad(loss(weight, x[t], norm), weight, create_graph=True)
            total = total + (grad * direction).sum()
        hvp_loop = torch.autograd.grad(total, (weight, gamma))
        for a, b in zip(hvp_vmap, hvp_loop, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert hvp_vmap[0].abs().sum() > 0 and hvp_vmap[1].abs().sum() > 0


def test_fast_path_flags_and_config_defaults():
    yaml = OmegaConf.load(CONF_DIR / "learner" / "fast_path" / "default.yaml")
    assert FastPath.from_config(yaml) == FastPath()  # the dataclass defaults are the YAML's
    parsed = FastPath.from_config(
        {**yaml, "batched": "auto", "autocast": "false", "channels_last": True, "compile": "aot_eager"}
    )
    assert parsed == FastPath(batched="auto", autocast=False, channels_last=True, compile="aot_eager")
    assert parsed.use_batched(torch.device("cpu")) and parsed.compile_backend() == "aot_eager"
    assert FastPath(compile=True).compile_backend() == "inductor" and FastPath().compile_backend() is None
    assert FastPath.from_config({**yaml, "tasks_per_pass": 3, "conv": "unfold"}) == FastPath(
        tasks_per_pass=3, conv="unfold"
    )
    for key in ("batched", "compile", "conv", "tasks_per_pass"):
        with pytest.raises(ValueError, match=key):
            FastPath.from_config({**yaml, key: "sometimes"})
    with pytest.raises(ValueError, match="tasks_per_pass"):
        FastPath.from_config({**yaml, "tasks_per_pass": 0})
    for learner_name in LEARNERS:  # what launch.py runs: the measured defaults (BENCHMARKS.md)
        learner = build_learner(composed(f"learner={learner_name}"))
        assert learner.fast_path == FastPath(batched="auto", channels_last="auto")
    auto = FastPath(channels_last="auto")
    assert auto.use_channels_last(torch.device("cpu"), twice=False)
    assert not auto.use_channels_last(torch.device("cpu"), twice=True)
    assert not auto.use_channels_last(torch.device("cuda"), twice=False)


@pytest.mark.parametrize("learner_name", ["maml", "protonet"])
def test_bfloat16_autocast_runs_on_cpu(learner_name):
    torch.manual_seed(0)
    learner = build_learner(tiny_config(learner_name, "kml", batched=True, autocast=True, channels=4))
    batch = random_batch(tasks=2, size=16)
    loss, metrics = learner.meta_loss(batch)
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and 0 <= metrics["accuracy"] <= 1
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in learner.parameters())
    accuracies = learner.evaluate(batch)
    assert accuracies.shape == (2,) and ((accuracies >= 0) & (accuracies <= 1)).all()


@pytest.mark.parametrize(
    "learner_name, channels_last, first_order",
    [("maml", True, False), ("maml", "auto", False), ("maml", "auto", True), ("protonet", "auto", False)],
)
def test_channels_last_gives_the_same_meta_gradients(learner_name, channels_last, first_order, device):
    """NHWC everywhere, or (auto) only in the passes differentiated at most once: same meta-step."""
    keys = {"first_order": first_order} if learner_name == "maml" else {}
    loop, fast = learner_pair(learner_name, "film", device=device, **keys)
    fast.fast_path = FastPath(batched=True, channels_last=channels_last)
    batch = random_batch(tasks=2, size=12, dtype=torch.float64).to(device)
    assert_same_meta_step(loop, fast, batch)
    torch.testing.assert_close(fast.evaluate(batch), loop.evaluate(batch), rtol=0, atol=0)


@pytest.mark.parametrize("learner_name, first_order", [("protonet", False), ("maml", True), ("maml", False)])
def test_compiled_forward_gives_the_same_meta_gradients(learner_name, first_order, device):
    """`compile` traces the batched forward with torch.compile (here its `eager` backend: no C compiler
    needed); second-order MAML keeps its inner loop eager (twice-differentiated) and still agrees."""
    keys = {"first_order": first_order} if learner_name == "maml" else {}
    loop, fast = learner_pair(learner_name, "kml", device=device, **keys)
    fast.fast_path = FastPath(batched=True, compile="eager")
    batch = random_batch(tasks=2, dtype=torch.float64).to(device)
    assert_same_meta_step(loop, fast, batch)
    torch.testing.assert_close(fast.evaluate(batch), loop.evaluate(batch), rtol=0, atol=0)
    assert "eager" in fast._batched_backbone._compiled


def test_higher_reference_of_the_benchmark_matches_our_meta_gradients(device):
    pytest.importorskip("higher")
    from kml.bench.reference import higher_meta_loss

    loop, _ = learner_pair("maml", "kml", device=device)
    batch = random_batch(tasks=2, dtype=torch.float64).to(device)
    _, _, expected = meta_gradients(loop, batch)
    loop.zero_grad()
    higher_meta_loss(loop, batch)
    for (name, p), g in zip(loop.named_parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-7, atol=1e-10, msg=name)


@pytest.mark.cuda
@pytest.mark.parametrize("modulation", MODULATIONS)
def test_batched_maml_on_cuda_equals_the_per_task_loop(modulation):
    loop, fast = learner_pair("maml", modulation)
    loop, fast = loop.cuda(), fast.cuda()
    batch = random_batch(tasks=3, dtype=torch.float64).to("cuda", torch.float64)
    assert_same_meta_step(loop, fast, batch)


@pytest.mark.cuda
@pytest.mark.parametrize("channels_last", [False, True])
def test_bfloat16_autocast_on_cuda(channels_last):
    torch.manual_seed(0)
    learner = build_learner(
        tiny_config("maml", "kml", batched=True, autocast=True, channels=8, channels_last=channels_last)
    ).cuda()
    batch = random_batch(tasks=4, size=32).to("cuda")
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in learner.parameters())


def test_the_auto_convolution_rule_by_shape():
    def pick(x_shape, w_shape):
        return batched_conv.rule(torch.empty(x_shape), torch.empty(w_shape), stride=2, padding=1)

    assert pick((75, 30, 32, 32), (10, 32, 3, 3, 3)) == "per_task"  # first layer, query set
    assert pick((5, 30, 32, 32), (10, 32, 3, 3, 3)) == "grouped"
    assert pick((5, 1280, 4, 4), (10, 256, 128, 3, 3)) == "unfold"  # 2×2 output, support set
    assert pick((75, 640, 8, 8), (10, 128, 64, 3, 3)) == "grouped"
    assert pick((75, 3, 84, 84), (1, 32, 3, 3, 3)) == "grouped"  # one task: a plain convolution


# Every switch of the two protocols that changes what is computed (docs/protocols.md), with each modulation.
PROTOCOL_SWITCHES = {
    "protonet": [("learner.transductive=released",), ("learner.transductive=corrected",),
                 ("learner.query_task_embedding=true",),
                 ("learner.transductive=released", "learner.query_task_embedding=true")],
    "maml": [("backbone.bn_affine=false",), ("backbone.init=xavier",)],
}
KML_SWITCHES = [("modulation.identity=false", "modulation.init=default"), ("modulation.factors=released",)]


@pytest.mark.parametrize("learner_name, switches", [(name, s) for name, cases in PROTOCOL_SWITCHES.items()
                                                    for s in cases])
@pytest.mark.parametrize("modulation", MODULATIONS)
def test_the_released_switches_keep_batched_and_per_task_equal(learner_name, switches, modulation, device):
    loop, fast = learner_pair(learner_name, modulation, *switches, way=3, device=device)
    batch = random_batch(tasks=3, way=3, shot=2, query=2, dtype=torch.float64).to(device)
    assert_same_meta_step(loop, fast, batch)
    torch.testing.assert_close(fast.evaluate(batch), loop.evaluate(batch), rtol=0, atol=0)


@pytest.mark.parametrize("learner_name", LEARNERS)
@pytest.mark.parametrize("switches", KML_SWITCHES)
def test_the_released_kml_keeps_batched_and_per_task_equal(learner_name, switches, device):
    loop, fast = learner_pair(learner_name, "kml", *switches, channels=4, device=device)
    batch = random_batch(tasks=3, dtype=torch.float64).to(device)
    assert_same_meta_step(loop, fast, batch)
