"""Backbones, task encoder and modulation generators."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from kml.models import (
    FiLMGenerator,
    KMLGenerator,
    LayerModulation,
    TaskEncoder,
    TaskModulator,
    batch_norm,
    conv4,
    conv4_maxpool,
)
from kml.models.functional import task_batch_norm


def random_kml_modulation(backbone, embedding_dim=6, seed=0):
    torch.manual_seed(seed)
    generator = KMLGenerator(embedding_dim, backbone.layer_shapes)
    for p in generator.parameters():
        nn.init.normal_(p, std=0.3)
    return generator, generator(torch.randn(embedding_dim))


@pytest.mark.parametrize("build, size", [(conv4, 16), (conv4_maxpool, 28)])
@pytest.mark.parametrize("num_classes", [None, 5])
def test_functional_call_runs_the_same_network(build, size, num_classes):
    torch.manual_seed(0)
    backbone = build(channels=4, num_classes=num_classes)
    x = torch.rand(6, 3, size, size)
    _, modulation = random_kml_modulation(backbone)
    own = dict(backbone.named_parameters())
    for mod in (None, modulation):
        assert torch.equal(
            functional_call(backbone, own, (x,), {"modulation": mod}), backbone(x, modulation=mod)
        )
    # A different parameter dict must give what a module holding those parameters gives.
    scaled = copy.deepcopy(backbone)
    with torch.no_grad():
        for p in scaled.parameters():
            p.mul_(1.5).add_(0.1)
    scaled_params = dict(scaled.named_parameters())
    expected = scaled(x, modulation=modulation)
    torch.testing.assert_close(
        functional_call(backbone, scaled_params, (x,), {"modulation": modulation}), expected
    )
    assert not torch.allclose(backbone(x, modulation=modulation), expected)


def test_backbone_shapes_and_widths():
    x84 = torch.rand(2, 3, 84, 84)
    assert conv4().layer_shapes == [(32, 3, 3), (64, 32, 3), (128, 64, 3), (256, 128, 3)]
    assert conv4()(x84).shape == (2, 256 * 6 * 6)  # 84 → 42 → 21 → 11 → 6, no pooling
    assert conv4(num_classes=5)(x84).shape == (2, 5)  # head on the spatial mean: any image size
    assert conv4_maxpool().layer_shapes == [(64, 3, 3)] + [(64, 64, 3)] * 3
    assert conv4_maxpool()(torch.rand(2, 3, 28, 28)).shape == (2, 64)  # 28 → 14 → 7 → 3 → 1
    assert conv4(in_channels=1, channels=8).layer_shapes[0] == (8, 1, 3)


def test_batch_norm_always_uses_the_batch_statistics():
    torch.manual_seed(0)
    x = torch.randn(7, 4, 5, 5) * 3 + 2
    weight, bias = torch.rand(4) + 0.5, torch.randn(4)
    y = batch_norm(x, weight, bias)
    reference = F.batch_norm(x, None, None, weight, bias, training=True)
    torch.testing.assert_close(y, reference)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), bias)
    # The module behaves the same in eval mode: there are no running statistics to switch to.
    backbone = conv4(channels=4)
    x16 = torch.rand(5, 3, 16, 16)
    train_out = backbone(x16)
    assert torch.equal(backbone.eval()(x16), train_out)
    assert len(list(backbone.buffers())) == 0


def test_kml_with_zero_generator_is_no_modulation():
    torch.manual_seed(0)
    backbone = conv4(channels=4, num_classes=3)
    generator, _ = random_kml_modulation(backbone)
    with torch.no_grad():
        for p in generator.parameters():
            p.zero_()
    x = torch.rand(6, 3, 16, 16)
    assert torch.equal(backbone(x, modulation=generator(torch.randn(6))), backbone(x))


@pytest.mark.parametrize("generator_class", [FiLMGenerator, KMLGenerator])
def test_fresh_generators_start_at_the_identity(generator_class):
    torch.manual_seed(0)
    backbone = conv4(channels=4, num_classes=3)
    generator = generator_class(8, backbone.layer_shapes)
    x = torch.rand(6, 3, 16, 16)
    assert torch.equal(backbone(x, modulation=generator(torch.rand(8))), backbone(x))


def test_kml_with_rank_one_gamma_times_ones_is_output_channel_scaling():
    """The paper's algebra: W ⊙ (1 + γ ⊗ 1) scales output channel c by (1 + γ_c), i.e. FiLM's scale
    (with β = 0) applied to the conv output, here on a conv without BN."""
    torch.manual_seed(0)
    c_out, c_in, k = 5, 3, 3
    generator = KMLGenerator(4, [(c_out, c_in, k)])
    with torch.no_grad():
        generator.out_factors[0].weight.normal_()
        generator.out_factors[0].bias.normal_()
        generator.in_factors[0].weight.zero_()
        generator.in_factors[0].bias.fill_(1.0)  # g2(v) = 1
    v = torch.randn(4)
    (kml,) = generator(v)
    gamma = generator.out_factors[0](v)
    weight, bias = torch.randn(c_out, c_in, k, k), torch.randn(c_out)
    x = torch.randn(2, c_in, 9, 9)

    modulated = F.conv2d(x, kml.kernel(weight), kml.bias(bias), padding=1)
    scaled = F.conv2d(x, weight, padding=1) * (1 + gamma).view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
    torch.testing.assert_close(modulated, scaled)
    film = LayerModulation(feature_scale=gamma, feature_shift=torch.zeros(c_out))
    torch.testing.assert_close(
        modulated, film.features(F.conv2d(x, weight, padding=1)) + bias.view(1, -1, 1, 1)
    )
    assert not torch.allclose(modulated, F.conv2d(x, weight, bias, padding=1))


def test_kml_modulation_formula():
    torch.manual_seed(0)
    generator = KMLGenerator(4, [(5, 3, 3)])
    for p in generator.parameters():
        nn.init.normal_(p)
    v = torch.randn(4)
    (modulation,) = generator(v)
    g1, g2, g3 = (
        layers[0](v) for layers in (generator.out_factors, generator.in_factors, generator.bias_shifts)
    )
    weight, bias = torch.randn(5, 3, 3, 3), torch.randn(5)
    for o in range(5):
        for i in range(3):
            for a in range(3):
                for b in range(3):
                    expected = weight[o, i, a, b] * (1 + g1[o] * g2[i * 9 + a * 3 + b])
                    torch.testing.assert_close(modulation.kernel(weight)[o, i, a, b], expected)
    torch.testing.assert_close(modulation.bias(bias), bias + g3)


def test_film_modulation_formula():
    torch.manual_seed(0)
    generator = FiLMGenerator(4, [(5, 3, 3)])
    for p in generator.parameters():
        nn.init.normal_(p)
    v, y = torch.randn(4), torch.randn(2, 5, 3, 3)
    gamma, beta = generator.heads[0](v).chunk(2)
    (modulation,) = generator(v)
    torch.testing.assert_close(
        modulation.features(y), y * (1 + gamma.view(1, -1, 1, 1)) + beta.view(1, -1, 1, 1)
    )
    assert modulation.kernel_factor is None and modulation.bias_shift is None


def test_task_batch_norm_normalises_each_task_with_its_own_statistics():
    torch.manual_seed(0)
    tasks, images = 3, 4
    x = (torch.randn(tasks * images, 5, 6, 6, dtype=torch.float64) * 3 + 2).requires_grad_()
    weight = (torch.rand(5, dtype=torch.float64) + 0.5).requires_grad_()
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    y = task_batch_norm(x, tasks, weight, bias)
    expected = torch.cat([batch_norm(part, weight, bias) for part in x.split(images)])
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    probe = torch.randn_like(y)
    grads = torch.autograd.grad((y * probe).sum(), (x, weight, bias))
    expected_grads = torch.autograd.grad((expected * probe).sum(), (x, weight, bias))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("generator_class", [FiLMGenerator, KMLGenerator])
def test_modulator_forward_tasks_equals_forward_task_by_task(generator_class):
    torch.manual_seed(0)
    encoder = TaskEncoder(in_channels=3, channels=(4, 4, 8, 8), embedding_dim=6)
    generator = generator_class(6, conv4(channels=2).layer_shapes)
    for p in generator.parameters():
        nn.init.normal_(p, std=0.3)
    modulator = TaskModulator(encoder, generator).double()
    support = torch.rand(3, 5, 3, 16, 16, dtype=torch.float64)
    together = modulator.forward_tasks(support)
    for t in range(3):
        for layer, alone in zip(together, modulator(support[t]), strict=True):
            for field, (a, b) in zip(LayerModulation._fields, zip(layer, alone, strict=True), strict=True):
                assert (a is None) == (b is None), field
                if a is not None:
                    torch.testing.assert_close(a[t], b, rtol=1e-10, atol=1e-12, msg=field)


def test_task_encoder_embeds_a_set():
    torch.manual_seed(0)
    encoder = TaskEncoder(in_channels=3, channels=(4, 4, 8, 8), embedding_dim=6)
    support = torch.rand(10, 3, 16, 16)
    v = encoder(support)
    assert v.shape == (6,) and (v >= 0).all()
    # A set function: the order of the support images does not matter.
    torch.testing.assert_close(encoder(support[torch.randperm(10)]), v)
    assert TaskEncoder(3, (32, 64, 128, 256), 128)(torch.rand(5, 3, 84, 84)).shape == (128,)


def test_kml_parameter_reduction_for_the_default_backbone():
    generator = KMLGenerator(128, conv4().layer_shapes)
    outputs_factorised = sum(c_out + c_in * 9 + c_out for c_out, c_in, _ in conv4().layer_shapes)
    assert sum(p.numel() for p in generator.parameters()) == 129 * outputs_factorised == 129 * 3003
    full = generator.full_generator_parameters()
    assert full == 129 * (32 * 27 + 32 + 64 * 288 + 64 + 128 * 576 + 128 + 256 * 1152 + 256)
    assert full / (129 * 3003) == pytest.approx(129.34, abs=0.01)
