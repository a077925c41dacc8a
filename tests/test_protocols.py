"""The two protocols (docs/protocols.md): each switch of the authors' released code pinned against a hand
computation on tiny tensors, and protocol=released composing everywhere."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from kml.data import released
from kml.data.benchmark import Serving, load_split
from kml.data.prepare import prepare
from kml.data.sampler import SplitDataset
from kml.errors import DataError
from kml.learners import MAML, ProtoNet, build_learner
from kml.learners.protonet import refine_prototypes
from kml.models import KMLGenerator, conv4
from kml.run.loop import MetaTraining, meta_train
from tests import archives
from tests.configs import composed, options, tiny_config

pytestmark = pytest.mark.usefixtures("single_thread")


def squared(a: list[float], b: list[float]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))


def refined_by_hand(prototypes, support, queries, shot, way, released_rows):
    """The soft k-means step written out with Python floats: released_rows picks, for class j, the support
    rows j·K … (j+1)·K − 2 in episode order and divides by K; otherwise every row labelled j (given as
    [j]*K per class, in order) and its count."""
    weights = []
    for q in queries:
        scores = [math.exp(-squared(q, p)) for p in prototypes]
        weights.append([s / sum(scores) for s in scores])
    refined = []
    for j in range(way):
        rows = support[j * shot:(j + 1) * shot - 1] if released_rows else support[j * shot:(j + 1) * shot]
        mass = sum(w[j] for w in weights)
        numerator = [sum(r[d] for r in rows) + sum(w[j] * q[d] for w, q in zip(weights, queries, strict=True))
                     for d in range(len(queries[0]))]
        refined.append([n / (shot + mass) for n in numerator])
    return refined


@pytest.mark.parametrize("shot", [1, 5])
@pytest.mark.parametrize("how", ["released", "corrected"])
def test_transductive_refinement_matches_a_hand_computation(shot, how):
    way, dim = 3, 4
    g = torch.Generator().manual_seed(shot)
    support = torch.randn(way * shot, dim, generator=g, dtype=torch.float64)
    queries = torch.randn(7, dim, generator=g, dtype=torch.float64)
    labels = torch.arange(way).repeat_interleave(shot)
    prototypes = torch.stack([support[labels == j].mean(0) for j in range(way)])
    got = refine_prototypes(prototypes, support, labels, queries, how, way)
    expected = refined_by_hand(prototypes.tolist(), support.tolist(), queries.tolist(), shot, way,
                               released_rows=how == "released")
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))
    if how == "released" and shot == 1:
        # 1-shot: the support image is dropped from the sum, the prototype is a query mean over (1 + mass)
        weights = torch.softmax(-((queries[:, None] - prototypes[None]) ** 2).sum(-1), dim=1)
        torch.testing.assert_close(got, (weights.T @ queries) / (1 + weights.sum(0))[:, None])


def test_released_refinement_takes_rows_in_episode_order_not_by_label():
    """With the support rows shuffled, `released` sums whatever rows sit at j·K … (j+1)·K − 2 (as the
    released code); `corrected` follows the labels and is unchanged by the shuffle."""
    way, shot, dim = 2, 3, 2
    g = torch.Generator().manual_seed(0)
    support = torch.randn(way * shot, dim, generator=g, dtype=torch.float64)
    labels = torch.arange(way).repeat_interleave(shot)
    queries = torch.randn(4, dim, generator=g, dtype=torch.float64)
    prototypes = torch.stack([support[labels == j].mean(0) for j in range(way)])
    order = torch.tensor([3, 0, 4, 1, 5, 2])  # rows of both classes interleaved
    shuffled = support[order]
    released_rows = refine_prototypes(prototypes, shuffled, labels[order], queries, "released", way)
    expected = refined_by_hand(prototypes.tolist(), shuffled.tolist(), queries.tolist(), shot, way, True)
    torch.testing.assert_close(released_rows, torch.tensor(expected, dtype=torch.float64))
    corrected = refine_prototypes(prototypes, support, labels, queries, "corrected", way)
    torch.testing.assert_close(refine_prototypes(prototypes, shuffled, labels[order], queries, "corrected", way),
                               corrected)
    assert not torch.allclose(released_rows, corrected)


@pytest.mark.parametrize("how", ["released", "corrected"])
def test_transductive_protonet_uses_the_refined_prototypes(how):
    torch.manual_seed(0)
    learner = build_learner(tiny_config("protonet", "none", way=3, transductive=how)).double()
    plain = build_learner(tiny_config("protonet", "none", way=3)).double()
    plain.load_state_dict(learner.state_dict())
    g = torch.Generator().manual_seed(1)
    x, q = torch.rand(6, 3, 8, 8, generator=g, dtype=torch.float64), torch.rand(9, 3, 8, 8, generator=g,
                                                                                 dtype=torch.float64)
    y = torch.arange(3).repeat_interleave(2)
    with torch.no_grad():
        support, queries = learner.backbone(x), learner.backbone(q)
        prototypes = torch.stack([support[y == j].mean(0) for j in range(3)])
        refined = refine_prototypes(prototypes, support, y, queries, how, 3)
        expected = -((queries[:, None] - refined[None]) ** 2).sum(-1)
        torch.testing.assert_close(learner.task_logits(x, y, q), expected)
        assert not torch.allclose(plain.task_logits(x, y, q), expected)


def test_query_task_embedding_modulates_the_queries_by_their_own_images():
    torch.manual_seed(0)
    learner = build_learner(tiny_config("protonet", "film", way=2, query_task_embedding=True)).double()
    with torch.no_grad():
        for p in learner.modulator.generator.parameters():
            p.normal_(std=0.3)
    g = torch.Generator().manual_seed(2)
    x, q = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64), torch.rand(6, 3, 8, 8, generator=g,
                                                                                 dtype=torch.float64)
    y = torch.arange(2).repeat_interleave(2)
    with torch.no_grad():
        support = learner.backbone(x, modulation=learner.task_modulation(x))
        queries = learner.backbone(q, modulation=learner.task_modulation(q))
        expected = learner.logits(support, y, queries)
        torch.testing.assert_close(learner.task_logits(x, y, q), expected)
        learner.query_task_embedding = False
        assert not torch.allclose(learner.task_logits(x, y, q), expected)


def test_released_kml_is_w_times_the_reshaped_outer_product_with_the_released_factor_lengths():
    backbone = conv4()  # conv4-32: the widths the released code hard-codes
    torch.manual_seed(0)
    generator = KMLGenerator(128, backbone.layer_shapes, identity=False, factors="released", init="default")
    assert generator.factors == [(32, 27), (192, 96), (384, 192), (768, 384)]
    v = torch.randn(128)
    for layer, (block, modulation) in enumerate(zip(backbone.blocks, generator(v), strict=True)):
        g1, g2 = generator.out_factors[layer](v), generator.in_factors[layer](v)
        outer = [[a * b for b in g2.tolist()] for a in g1.tolist()]  # a×b, row-major
        flat = torch.tensor([value for row in outer for value in row])
        weight = block.conv.weight
        torch.testing.assert_close(modulation.kernel(weight), weight * flat.view(weight.shape))
        torch.testing.assert_close(modulation.bias(block.conv.bias),
                                   block.conv.bias + generator.bias_shifts[layer](v))
    # g1, g2 and g3 per layer: (128 + 1) · (a + b + C_out)
    expected = sum(129 * (a + b + c) for (a, b), c in zip(generator.factors, (32, 64, 128, 256), strict=True))
    assert sum(p.numel() for p in generator.parameters()) == expected == 129 * 2555  # main.py embedding_dims sum to 2555
    # Without the identity term and with PyTorch's init, the modulation is far from the identity.
    assert not torch.allclose(generator(v)[0].kernel_factor, torch.ones(32, 3, 3, 3), atol=0.1)


def test_kml_switches_refuse_what_cannot_work():
    shapes = conv4().layer_shapes
    with pytest.raises(ValueError, match="zeroes every kernel"):
        KMLGenerator(8, shapes, identity=False, init="identity")
    with pytest.raises(ValueError, match="entries"):
        KMLGenerator(8, shapes, factors=[[32, 27], [192, 95], [384, 192], [768, 384]])


def test_xavier_initialisation_of_the_backbone():
    torch.manual_seed(0)
    xavier, default = conv4(num_classes=5, init="xavier"), conv4(num_classes=5)
    layers = [m for m in xavier.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(layers) == 5
    for layer in layers:
        fan_out, fan_in = layer.weight.shape[0], layer.weight[0].numel()
        receptive = layer.weight[0, 0].numel()
        bound = math.sqrt(6 / (fan_in + fan_out * receptive))
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    # PyTorch's default (Kaiming-uniform with a = √5) has a different bound and random biases.
    assert default.blocks[0].conv.bias.abs().sum() > 0
    assert not math.isclose(default.blocks[3].conv.weight.abs().max().item(),
                            xavier.blocks[3].conv.weight.abs().max().item(), rel_tol=0.05)


def test_maml_inner_loop_without_batch_norm_affine_parameters():
    torch.manual_seed(0)
    learner = build_learner(tiny_config("maml", "kml", "backbone.bn_affine=false")).double()
    names = [name for name, _ in learner.backbone.named_parameters()]
    assert not any("norm" in name for name in names) and any("head" in name for name in names)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.arange(2).repeat_interleave(2)
    modulation = learner.task_modulation(x)
    adapted = learner.adapt(x, y, modulation, 1, create_graph=False)
    assert sorted(adapted) == sorted(names)
    # The normalisation itself is still there: each channel of the first block has zero mean, unit variance.
    h = nn.functional.conv2d(x, learner.backbone.blocks[0].conv.weight, learner.backbone.blocks[0].conv.bias,
                             stride=2, padding=1)
    normed = learner.backbone.blocks[0].norm(h)
    torch.testing.assert_close(normed.mean(dim=(0, 2, 3)), torch.zeros(2, dtype=torch.float64), atol=1e-10,
                               rtol=0)


def run_for_learning_rates(tmp_path, iterations: int, halving_every: int | None) -> list[float]:
    """The learning rate each step of a trivial meta-training used, through kml.run.loop.meta_train."""
    cfg = composed("debug=tiny", f"train.iterations={iterations}", f"train.lr_halving_every={halving_every or 'null'}",
                   f"train.val_every={iterations}", f"train.checkpoint_every={iterations}", f"train.log_every={iterations}")
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.8)
    used = []

    def compute_gradients(iteration: int) -> dict[str, float]:
        model.weight.grad = torch.zeros_like(model.weight)
        return {"loss": 0.0}

    class Logger:
        run_dir = tmp_path

        def log(self, *args, **kwargs):
            pass

    def record(step: int) -> None:
        used.append(optimizer.param_groups[0]["lr"])

    meta_train(MetaTraining(model, optimizer, compute_gradients, lambda: {"accuracy": 0.0}, score="accuracy",
                            higher_is_better=True, divergence_hint="-", after_step=record), cfg, tmp_path, Logger())
    return used


def test_learning_rate_halves_every_10000_iterations(tmp_path):
    used = run_for_learning_rates(tmp_path, 20_001, 10_000)
    # As the released code: iteration i (1-based) steps with the halved rate when i % 10000 == 0.
    assert used[:9_999] == [0.8] * 9_999 and used[9_999:19_999] == [0.4] * 10_000 and used[19_999:] == [0.2] * 2
    assert run_for_learning_rates(tmp_path / "never", 10, None) == [0.8] * 10


def test_released_splits_are_deterministic_and_70_15_15():
    names = [f"class_{i:03d}" for i in range(200)]
    standard = {"train": names[:100], "val": names[100:150], "test": names[150:]}
    first = released.class_lists("cub", standard)
    assert {split: len(c) for split, c in first.items()} == {"train": 140, "val": 30, "test": 30}
    assert sorted(sum(first.values(), [])) == names
    # The same split from any order of the same classes (sorted before RandomState(123) shuffles them).
    assert released.class_lists("cub", {"train": names[150:], "val": names[:50], "test": names[50:150]}) == first
    assert released.class_lists("aircraft", {"train": names[:70], "val": names[70:85], "test": names[85:100]})[
        "train"] != names[:70]
    hundred = released.class_lists("aircraft", {"train": names[:70], "val": names[70:85], "test": names[85:100]})
    assert {split: len(c) for split, c in hundred.items()} == {"train": 70, "val": 15, "test": 15}
    characters = [f"alphabet/character{i:04d}" for i in range(1623)]
    omniglot = released.class_lists("omniglot", {"train": characters[:1100], "val": characters[1100:1200],
                                                 "test": characters[1200:]})
    assert omniglot["train"] == characters[:1100] and omniglot["test"] == characters[1100:]
    assert omniglot["val"] == omniglot["test"]  # no validation split: a readout on the test classes


def test_released_split_regroups_prepared_classes():
    def split(names, offset):
        images = torch.arange(offset, offset + 2 * len(names), dtype=torch.uint8).view(-1, 1, 1, 1)
        return SplitDataset(images, torch.arange(len(names)).repeat_interleave(2), names, "cub", "x")

    parts = [split(["a", "b"], 0), split(["c"], 10), split(["d", "e"], 20)]
    gathered = SplitDataset.gather(parts, ["d", "a"], "train")
    assert gathered.class_names == ["d", "a"] and gathered.split == "train"
    assert gathered.images.flatten().tolist() == [20, 21, 0, 1]


def test_fc100_wraparound_inversion():
    pixels = torch.tensor([0, 1, 2, 128, 254, 255], dtype=torch.uint8)
    assert released.invert_by_wraparound(pixels).tolist() == [0, 255, 254, 128, 2, 1]
    # what float pixels 0..255 become through `mul(255).byte()` (ToPILImage): 255·x mod 256
    assert released.invert_by_wraparound(pixels).tolist() == [(255 * int(x)) % 256 for x in pixels]


@pytest.mark.parametrize("benchmark", options("benchmark"))
def test_released_protocol_composes_everywhere(benchmark):
    for learner in options("learner"):
        for modulation in options("modulation"):
            for shot in options("shot"):
                cfg = composed("protocol=released", f"benchmark={benchmark}", f"learner={learner}",
                               f"modulation={modulation}", f"shot={shot}",
                               *(["benchmark.modes=[omniglot]"] if benchmark == "custom" else []))
                assert cfg.eval.checkpoint == "last" and cfg.backbone.init == "xavier"
                if learner == "protonet":
                    assert cfg.learner.transductive == "released" and cfg.train.lr_halving_every == 10000
                if learner == "maml":
                    assert cfg.backbone.bn_affine is False


def test_released_protocol_builds_its_methods_and_specialists():
    learner = build_learner(composed("protocol=released", "learner=protonet", "modulation=kml"))
    assert isinstance(learner, ProtoNet) and learner.transductive == "released" and learner.query_task_embedding
    assert learner.modulator.generator.factors == [(32, 27), (192, 96), (384, 192), (768, 384)]
    maml = build_learner(composed("protocol=released", "learner=maml", "modulation=film"))
    assert isinstance(maml, MAML) and not any("norm" in n for n, _ in maml.backbone.named_parameters())
    omniglot = composed("protocol=released", "learner=maml", "modulation=none", "benchmark=omniglot")
    assert (omniglot.learner.inner_lr, omniglot.learner.train_steps, omniglot.train.iterations) == (0.4, 1, 60000)
    cub = composed("protocol=released", "learner=maml", "modulation=none", "benchmark=cub")
    assert (cub.learner.inner_lr, cub.train.meta_batch, cub.train.iterations) == (0.01, 4, 80000)
    paper = composed("learner=maml", "benchmark=cub")
    assert (paper.learner.inner_lr, paper.train.meta_batch, paper.eval.checkpoint) == (0.05, 10, "best")


# The meta-mapper's switches (kml/mapper/README.md): key -> (paper, released).
MAPPER_SWITCHES = {"mapper.network.head_layout": ("paper", "released"),
                   "mapper.network.activation": ("gelu", "leaky_relu"),
                   "mapper.network.dropout": (0.1, 0.5),
                   "mapper.network.dropout_at_test": (False, True),
                   "mapper.network.init": ("default", "xavier"),
                   "mapper.maml.query_loss_from_step": (5, 2),  # paper: train_steps, the last step only
                   "mapper.optimizer.max_grad_norm": (None, 1.0),
                   "mapper.coco.category": ("dominant", "last_annotation"),
                   "mapper.coco.sampling": ("images", "caption_pairs")}


def test_the_mapper_takes_its_released_switches_from_the_protocol_group():
    """pipeline=mapper holds the paper's values, protocol=released sets every mapper switch
    (conf/protocol/pipeline/released_mapper.yaml) and none of the few-shot protocol's keys: eval.checkpoint=last
    or MAML's 60,000 iterations would change what a mapper run trains and tests."""
    paper, released = composed("pipeline=mapper"), composed("pipeline=mapper", "protocol=released")
    for key, (paper_value, released_value) in MAPPER_SWITCHES.items():
        assert (OmegaConf.select(paper, key), OmegaConf.select(released, key)) == (paper_value, released_value), key
    assert (paper.protocol, released.protocol) == ("paper", "released")
    assert all(released[node] == paper[node] for node in ("train", "eval", "data"))
    assert (released.train.iterations, released.eval.checkpoint) == (20000, "best")
    # A key on the command line still wins over the protocol; the paper's last-step loss follows train_steps.
    assert composed("pipeline=mapper", "protocol=released",
                    "mapper.network.dropout_at_test=false").mapper.network.dropout_at_test is False
    assert composed("pipeline=mapper", "mapper.maml.train_steps=3").mapper.maml.query_loss_from_step == 3


def test_bug_compatible_serving_of_fc100_and_aircraft(tmp_path):
    """data.fc100_inverted serves FC100 wrapped around as the released loader does; data.aircraft_banner
    serves the `aircraft` mode from `prepare aircraft_banner`, whose photos keep the red banner that the
    standard preparation crops (archives.aircraft_photo: blue sky, red banner)."""
    root = tmp_path / "data"
    prepare("fc100", archives.cifar100_tar(tmp_path / "cifar.tar.gz", 6, 6), root, 8)
    plain = load_split(["fc100"], "train", root, 8)[0].images
    inverted = load_split(["fc100"], "train", root, 8, Serving(fc100_inverted=True))[0].images
    assert torch.equal(inverted, released.invert_by_wraparound(plain)) and not torch.equal(inverted, plain)
    source = archives.aircraft_tar(tmp_path / "aircraft.tar.gz", 6)
    prepare("aircraft", source, root, 16)
    prepare("aircraft_banner", source, root, 16)
    cropped = load_split(["aircraft"], "train", root, 16)[0]
    banner = load_split(["aircraft"], "train", root, 16, Serving(aircraft_banner=True))[0]
    assert cropped.class_names == banner.class_names
    red = lambda images: (images[:, 0].float() - images[:, 2].float()).mean(dim=0)  # noqa: E731
    assert red(banner.images)[-3:].mean() > 100 and red(cropped.images).max() < 50
    with pytest.raises(DataError, match="prepare aircraft_banner"):
        load_split(["aircraft"], "train", tmp_path / "empty", 16, Serving(aircraft_banner=True))

