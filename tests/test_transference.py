"""Transference (issue 5): LR against a hand computation, its fixed points, batching, the training hook,
the standalone measurement from a checkpoint and the figures."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from PIL import Image

from kml.analysis import plots, transference
from kml.data.episodes import Batch
from kml.errors import ConfigError
from kml.learners import build_learner
from kml.run import checkpoint
from kml.run.logger import RunLogger
from kml.run.runtime import benchmark_for, pick_device
from kml.run.train import train
from tests import configs
from tests.runs import compose, tiny_overrides

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# (learner, modulation, first order, batched meta_loss as in training: the hand computation's reference)
CASES = [("maml", "kml", False, False), ("maml", "film", True, False), ("maml", "none", False, False),
         ("protonet", "kml", False, False), ("maml", "kml", False, True), ("protonet", "film", False, True)]


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_learner(kind="maml", modulation="kml", first_order=False, batched=False, seed=0):
    torch.manual_seed(seed)
    inner = {"train_steps": 2, "inner_lr": 0.1, "first_order": first_order} if kind == "maml" else {}
    learner = build_learner(configs.tiny_config(kind, modulation, way=3, batched=batched, **inner)).double()
    with torch.no_grad():  # move off the identity modulation so that every parameter matters
        for p in learner.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return learner


def random_tasks(count, seed, way=3, shot=2, query=3, size=16, shuffled_labels=False) -> Batch:
    g = torch.Generator().manual_seed(seed)
    support_y = torch.arange(way).repeat_interleave(shot).expand(count, -1).clone()
    query_y = torch.arange(way).repeat_interleave(query).expand(count, -1).clone()
    if shuffled_labels:  # a different label layout per task (what sampled batches never have)
        support_y = torch.stack([y[torch.randperm(y.numel(), generator=g)] for y in support_y])
        query_y = torch.stack([y[torch.randperm(y.numel(), generator=g)] for y in query_y])
    return Batch(torch.rand(count, way * shot, 3, size, size, generator=g, dtype=torch.float64), support_y,
                 torch.rand(count, way * query, 3, size, size, generator=g, dtype=torch.float64), query_y,
                 torch.zeros(count, dtype=torch.long))


def chunks(batch: Batch, size: int) -> list[Batch]:
    return [Batch(*(t[start:start + size] for t in (batch.support_x, batch.support_y, batch.query_x,
                                                    batch.query_y, batch.mode)))
            for start in range(0, batch.num_tasks, size)]


def hand_lr(learner, sources: Batch, targets: Batch, alpha: float) -> torch.Tensor:
    """The definition, with nothing but meta_loss and one SGD step on a copy of the learner."""
    base = [learner.meta_loss(targets.task(j))[0].item() for j in range(targets.num_tasks)]
    lr = torch.empty(targets.num_tasks, sources.num_tasks, dtype=torch.float64)
    for i in range(sources.num_tasks):
        stepped = copy.deepcopy(learner)
        loss, _ = stepped.meta_loss(sources.task(i))
        grads = torch.autograd.grad(loss, list(stepped.parameters()), allow_unused=True)
        with torch.no_grad():
            for p, g in zip(stepped.parameters(), grads, strict=True):
                if g is not None:
                    p -= alpha * g
        for j in range(targets.num_tasks):
            lr[j, i] = stepped.meta_loss(targets.task(j))[0].item() / base[j]
    return lr


@pytest.mark.parametrize("kind, modulation, first_order, batched", CASES)
def test_lr_equals_the_hand_computation(kind, modulation, first_order, batched):
    learner = tiny_learner(kind, modulation, first_order, batched)
    sources, targets = random_tasks(3, seed=1), random_tasks(2, seed=2)
    state = copy.deepcopy(learner.state_dict())
    rng = torch.get_rng_state()
    result = transference.measure(learner, [sources], targets, alpha=0.5)
    expected = hand_lr(learner, sources, targets, 0.5)
    assert result.lr.shape == (2, 3)
    torch.testing.assert_close(result.lr, expected, rtol=1e-10, atol=0)
    assert not torch.allclose(result.lr, torch.ones_like(result.lr), atol=1e-3)  # the step did change the loss
    torch.testing.assert_close(result.source_loss,
                               torch.tensor([learner.meta_loss(sources.task(i))[0].item() for i in range(3)],
                                            dtype=torch.float64), rtol=1e-12, atol=0)
    # The learner is left exactly as it was: parameters, gradients, global RNG.
    assert all(torch.equal(state[k], v) for k, v in learner.state_dict().items())
    assert all(p.grad is None for p in learner.parameters())
    assert torch.equal(rng, torch.get_rng_state())


@pytest.mark.parametrize("kind, modulation", [("maml", "kml"), ("protonet", "film")])
def test_alpha_zero_is_exactly_one_and_a_step_on_the_target_itself_helps(kind, modulation):
    learner = tiny_learner(kind, modulation)
    targets = random_tasks(2, seed=3)
    unrelated = random_tasks(3, seed=4)
    # Source 0 is target 0 itself (same support and query), then unrelated tasks.
    sources = Batch(*(torch.cat([a[:1], b]) for a, b in zip(
        (targets.support_x, targets.support_y, targets.query_x, targets.query_y, targets.mode),
        (unrelated.support_x, unrelated.support_y, unrelated.query_x, unrelated.query_y, unrelated.mode),
        strict=True)))
    still = transference.measure(learner, chunks(sources, 3), targets, alpha=0.0)
    assert torch.equal(still.lr, torch.ones(2, 4, dtype=torch.float64))
    alpha = 1e-6  # the tiny 16 px nets are sharply curved (1-pixel BN maps): keep the step linear
    small = transference.measure(learner, chunks(sources, 3), targets, alpha=alpha)
    assert small.lr[0, 0] < 1.0
    # To first order in α the step on the target itself changes its loss by −α‖∇L‖².
    loss, _ = learner.meta_loss(targets.task(0))
    squared_norm = sum(g.pow(2).sum() for g in torch.autograd.grad(loss, list(learner.parameters()))).item()
    predicted = 1 - alpha * squared_norm / loss.item()
    assert abs(small.lr[0, 0].item() - predicted) < 0.05 * (1 - predicted)


def test_batched_and_one_by_one_agree():
    learner = tiny_learner("maml", "kml")
    sources, targets = random_tasks(5, seed=5), random_tasks(2, seed=6)
    whole = transference.measure(learner, [sources], targets, alpha=0.3)
    single = transference.measure(learner, chunks(sources, 1), targets, alpha=0.3)
    ragged = transference.measure(learner, chunks(sources, 2), targets, alpha=0.3)
    for other in (single, ragged):
        torch.testing.assert_close(other.lr, whole.lr, rtol=1e-12, atol=0)
        torch.testing.assert_close(other.source_loss, whole.source_loss, rtol=1e-12, atol=0)
    # Tasks with their own label layouts cannot share vmap's unbatched labels: run task by task, same result.
    mixed = random_tasks(3, seed=7, shuffled_labels=True)
    torch.testing.assert_close(transference.measure(learner, [mixed], targets, alpha=0.3).lr,
                               hand_lr(learner, mixed, targets, 0.3), rtol=1e-10, atol=0)


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    assert matplotlib.image.imread(path).shape[-1] in (3, 4)


def test_plots_are_valid_pngs(tmp_path):
    rng = np.random.default_rng(0)
    lr = rng.normal(1.0, 0.05, size=(5, 40))  # five targets: a 4-column grid with hidden spare axes
    lr[0, 0] = np.inf  # a diverged step must not break the figure
    histogram = plots.lr_histograms(lr, tmp_path / "h.png", "a → b, iteration 10")
    curve = plots.positive_curve([10, 20, 30], rng.uniform(size=(3, 5)), tmp_path / "sub" / "c.png", "a → b")
    single = plots.positive_curve([10], np.array([[0.4]]), tmp_path / "one.png", "a → b")
    for path in (histogram, curve, single):
        assert_png(path)


def config_group(group: str, option: str) -> str:
    """`group=option` once conf/config.yaml's defaults list the group, `+group=option` until then."""
    return f"{group}={option}" if group in compose([]) else f"+{group}={option}"


def tiny_config(root: Path, *overrides: str):
    return compose(tiny_overrides(root, "maml", "kml") + [
        "train.iterations=12", "train.val_every=12", "train.checkpoint_every=4", *overrides])


class RecordingLogger(RunLogger):
    def __init__(self, run_dir):
        super().__init__(run_dir, mode="disabled")
        self.images, self.tables, self.calls = [], [], []

    def log(self, metrics, step):
        self.calls.append(("log", step))
        super().log(metrics, step)

    def log_image(self, key, path, step=None):
        self.images.append((key, Path(path), step))
        self.calls.append(("image", step))

    def log_table(self, key, columns, rows):
        self.tables.append((key, columns, rows))
        self.calls.append(("table", None))


def train_tiny(cfg, run_dir: Path):
    logger = RecordingLogger(run_dir)
    learner, _ = train(cfg, run_dir, logger, pick_device("cpu"), benchmark_for(cfg))
    logger.finish()
    return learner, logger


@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory):
    """One tiny MAML+KML training with transference on (after iterations 4 and 12) and the same without."""
    settings = ["transference.iterations=[4,12]", "transference.sources=5", "transference.targets=2",
                "transference.chunk=3", "transference.split=val"]
    on_dir, off_dir = tmp_path_factory.mktemp("on"), tmp_path_factory.mktemp("off")
    on_cfg = tiny_config(synthetic_root, config_group("transference", "on"), *settings)
    off_cfg = tiny_config(synthetic_root, config_group("transference", "off"), *settings)
    assert "transference" in on_cfg.hooks and "transference" not in off_cfg.hooks  # on attaches the hook
    on, on_logger = train_tiny(on_cfg, on_dir)
    off, _ = train_tiny(off_cfg, off_dir)
    return {"on": (on, on_dir, on_logger, on_cfg), "off": (off, off_dir)}


def assert_identical(a, b) -> None:
    """Equal nested state (dicts, lists, tensors, numbers), tensors bit for bit."""
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_identical(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_identical(x, y)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    else:
        assert a == b


def test_training_with_transference_ends_exactly_as_without(trained):
    on, on_dir, _, _ = trained["on"]
    off, off_dir = trained["off"]
    last_on, last_off = checkpoint.load(on_dir / "last.pt"), checkpoint.load(off_dir / "last.pt")
    assert last_on["iteration"] == last_off["iteration"] == 12
    for key in ("model", "optimizer", "torch_rng", "sampler"):
        assert_identical(last_on[key], last_off[key])
    assert all(torch.equal(a, b) for a, b in zip(on.state_dict().values(), off.state_dict().values(), strict=True))
    assert not (off_dir / transference.FOLDER).exists()


def test_training_measurements_are_saved_plotted_and_logged(trained):
    _, run_dir, logger, cfg = trained["on"]
    folder = run_dir / transference.FOLDER
    for step in (4, 12):
        with np.load(folder / f"lr_step{step}.npz") as saved:
            assert saved["lr"].shape == (2, 5) and np.isfinite(saved["lr"]).all()
            assert (str(saved["source_mode"]), str(saved["target_mode"])) == ("synthetic_glyphs", "synthetic_shapes")
            assert float(saved["alpha"]) == cfg.learner.lr and int(saved["step"]) == step
        assert_png(folder / f"histogram_step{step}.png")
    assert_png(folder / "positive_fraction.png")
    assert transference.history(folder)[0] == [4, 12]
    assert [(key, step) for key, _, step in logger.images] == [
        ("transference/histogram", 4), ("transference/positive_fraction_curve", 4),
        ("transference/histogram", 12), ("transference/positive_fraction_curve", 12)]
    assert all(path.is_file() for _, path, _ in logger.images)
    assert [(key, len(rows)) for key, _, rows in logger.tables] == [
        ("transference/lr_step4", 10), ("transference/lr_step12", 10)]
    # W&B advances its step after a step-less log (log_table): the table must come before anything logged
    # at the measured step, or W&B would drop the training metrics of that iteration.
    for step in (4, 12):
        first_at_step = next(i for i, call in enumerate(logger.calls) if call[1] == step)
        assert logger.calls[first_at_step - 1] == ("table", None)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [line for line in lines if "transference/positive_fraction" in line]
    assert [line["step"] for line in logged] == [4, 12]
    assert all(0.0 <= line["transference/positive_fraction"] <= 1.0 for line in logged)


def test_standalone_measurement_of_a_checkpoint_reproduces_the_training_one(trained, synthetic_root, tmp_path):
    _, run_dir, _, _ = trained["on"]
    # Other groups named on purpose: the model comes from the checkpoint, the settings from this command.
    cfg = tiny_config(synthetic_root, "learner=protonet", config_group("transference", "off"),
                      "transference.sources=5", "transference.targets=2", "transference.chunk=5",
                      "transference.split=val", f"checkpoint={run_dir / 'last.pt'}")
    logger = RecordingLogger(tmp_path)
    result = transference.run(cfg, tmp_path, logger)
    logger.finish()
    assert result["step"] == 12 and result["alpha"] == 0.001  # the checkpoint's outer lr
    with np.load(tmp_path / "transference" / "lr_step12.npz") as alone, \
            np.load(run_dir / "transference" / "lr_step12.npz") as during:
        np.testing.assert_allclose(alone["lr"], during["lr"], rtol=1e-5)
    assert_png(tmp_path / "transference" / "histogram_step12.png")


def test_reverse_measures_the_other_direction_as_a_swapped_configuration_would(trained, synthetic_root, tmp_path):
    _, run_dir, _, _ = trained["on"]
    settings = ["transference.sources=4", "transference.targets=1", "transference.chunk=4", "transference.split=val",
                f"checkpoint={run_dir / 'last.pt'}"]
    both = tiny_config(synthetic_root, config_group("transference", "off"), "transference.reverse=true", *settings)
    transference.run(both, tmp_path / "both", RunLogger(tmp_path / "both", mode="disabled"))
    swapped = tiny_config(synthetic_root, config_group("transference", "off"), "transference.source_mode=synthetic_shapes",
                          "transference.target_mode=synthetic_glyphs", *settings)
    transference.run(swapped, tmp_path / "swapped", RunLogger(tmp_path / "swapped", mode="disabled"))
    with np.load(tmp_path / "both" / "transference" / "reverse" / "lr_step12.npz") as reverse, \
            np.load(tmp_path / "swapped" / "transference" / "lr_step12.npz") as direct, \
            np.load(tmp_path / "both" / "transference" / "lr_step12.npz") as forward:
        assert (str(reverse["source_mode"]), str(reverse["target_mode"])) == ("synthetic_shapes", "synthetic_glyphs")
        assert str(forward["source_mode"]) == "synthetic_glyphs"
        np.testing.assert_allclose(reverse["lr"], direct["lr"], rtol=1e-6)
    assert_png(tmp_path / "both" / "transference" / "reverse" / "positive_fraction.png")


def test_bad_settings_name_the_choices(synthetic_root, tmp_path):
    cfg = tiny_config(synthetic_root, config_group("transference", "on"), "transference.target_mode=fc100")
    with pytest.raises(ConfigError, match="not a mode of benchmark synthetic; choose one of: synthetic_glyphs"):
        transference.Transference(cfg, torch.device("cpu"), benchmark_for(cfg))
    cfg = tiny_config(synthetic_root, config_group("transference", "on"), "transference.split=train")
    with pytest.raises(ConfigError, match="choose one of val, test"):
        transference.Transference(cfg, torch.device("cpu"), benchmark_for(cfg))
    cfg = tiny_config(synthetic_root, config_group("transference", "on"), "transference.iterations=[13,5000]")
    with pytest.raises(ConfigError, match=r"none in 1..train.iterations=12, so nothing would be measured"):
        transference.Transference(cfg, torch.device("cpu"), benchmark_for(cfg))
    cfg = tiny_config(synthetic_root, config_group("transference", "off"))
    assert "transference" not in cfg.hooks  # off attaches no hook: its default iterations (past 12) are never checked
    logger = RunLogger(tmp_path, mode="disabled")
    with pytest.raises(ConfigError, match="checkpoint=PATH"):
        transference.run(cfg, tmp_path, logger)
    logger.finish(1)
