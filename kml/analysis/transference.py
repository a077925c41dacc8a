"""Transference between few-shot tasks (Abdollahzadeh et al., NeurIPS 2021): does one outer step on a
source task help or hurt a target task?

    LR_{i→j} = L_j(Q_j; θ_i^{t+1}, S_j) / L_j(Q_j; θ^t, S_j),   θ_i^{t+1} = θ^t − α ∇_θ L_i(Q_i; θ^t, S_i)

L(Q; θ, S) is a task's meta-training loss, the very term `meta_loss` averages over a meta-batch: the query
loss after adapting θ on the support set (MAML: the learner's inner loop with its training steps and its
first/second order; ProtoNet: prototypes of S). θ is every meta-parameter: backbone initialisation, encoder
and generator. LR < 1 is positive transfer.

The analysis leaves the training state alone: it runs the learner's public methods on copies of the
parameters through torch.func.functional_call, draws its tasks from its own seeded samplers, and restores
the global RNG. Source tasks are processed in chunks, vectorised with torch.func.vmap: the per-source
gradients are vmap(grad) over a chunk, the targets' losses vmap over the chunk's stepped parameters. It
always uses the learners' per-task methods in the parameters' dtype, whatever their fast path (batched,
autocast, compile) is set to: same losses, and no reduced-precision noise in ratios that are close to 1.

During training, `transference=on` attaches TransferenceHook (kml.run.hooks), which measures after the
optimiser step of each iteration listed in `transference.iterations`; `python launch.py pipeline=transference
checkpoint=PATH` measures a saved model once (`run`). Each measurement writes
transference/lr_step{N}.npz, a histogram per target and the positive-transfer curve so far, and logs them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.func import functional_call, grad, grad_and_value, vmap
from tqdm import tqdm

from kml.analysis import plots
from kml.data.benchmark import Benchmark
from kml.data.episodes import Batch
from kml.errors import ConfigError
from kml.learners import Learner
from kml.run.checkpoint import load_learner
from kml.run.hooks import Hook, RunContext
from kml.run.logger import RunLogger
from kml.run.runtime import benchmark_for, pick_device
from kml.run.safe_write import atomic_write

# The analysis draws its own tasks, apart from the training, validation and test streams of kml/run/train.py.
SOURCE_SEED_OFFSET, TARGET_SEED_OFFSET = 300_007, 400_009
SPLITS = ("val", "test")
FOLDER = "transference"

Params = dict[str, torch.Tensor]


class _TaskLoss(nn.Module):
    """One task's meta-training loss (the learner's own `task_loss`), as a module around the learner so
    that functional_call can run it on any parameter dict (its keys are the learner's parameter names
    prefixed with "learner.")."""

    def __init__(self, learner: Learner) -> None:
        super().__init__()
        self.learner = learner

    def forward(self, support_x, support_y, query_x, query_y, outer_graph: bool) -> torch.Tensor:
        return self.learner.task_loss(support_x, support_y, query_x, query_y, outer_graph=outer_graph)


def meta_parameters(learner: Learner) -> Params:
    """Copies of every meta-parameter, keyed for _TaskLoss."""
    return {f"learner.{name}": p.detach().clone() for name, p in learner.named_parameters()}


def _task_tensors(batch: Batch) -> tuple[torch.Tensor, ...]:
    return batch.support_x, batch.support_y, batch.query_x, batch.query_y


def source_gradients(module: _TaskLoss, params: Params, sources: Batch) -> tuple[Params, torch.Tensor]:
    """∇_θ L_i and L_i at θ for every task i of `sources`: ([T, ...] per parameter, [T])."""

    def loss(p, *task):
        return functional_call(module, p, task, {"outer_graph": True})

    # The labels go in unbatched: ProtoNet's one_hot checks their range, a data-dependent step that vmap
    # cannot batch. Sampled batches share one label layout across tasks; a batch that does not is run
    # task by task.
    if not all(torch.equal(y, y[:1].expand_as(y)) for y in (sources.support_y, sources.query_y)):
        parts = [source_gradients(module, params, sources.task(t)) for t in range(sources.num_tasks)]
        return ({name: torch.cat([g[name] for g, _ in parts]) for name in params},
                torch.cat([losses for _, losses in parts]))
    batched = vmap(grad_and_value(loss), in_dims=(None, 0, None, 0, None))
    return batched(params, sources.support_x, sources.support_y[0], sources.query_x, sources.query_y[0])


def target_losses(module: _TaskLoss, stacked: Params, target: Batch) -> torch.Tensor:
    """L_j(Q_j; θ_c, S_j) of the one task in `target` for each θ_c of `stacked` ([C, ...] per parameter)."""

    def loss(p, *task):
        return functional_call(module, p, task, {"outer_graph": False})

    def without_outer_gradient(p, *task):
        # MAML's inner loop calls torch.autograd.grad, which works under vmap only inside a torch.func.grad
        # level. The differentiated output here is a constant, so no outer backward pass is ever computed.
        def constant_and_loss(q):
            value = loss(q, *task)
            return value.new_zeros(()), value

        return grad(constant_and_loss, has_aux=True)(p)[1]

    task = [t[0] for t in _task_tensors(target)]
    return vmap(without_outer_gradient, in_dims=(0, None, None, None, None))(stacked, *task)


@dataclass
class Measurement:
    lr: torch.Tensor  # [targets, sources]: LR_{i→j} at row j, column i
    target_loss: torch.Tensor  # [targets]: L_j(Q_j; θ^t, S_j)
    source_loss: torch.Tensor  # [sources]: L_i(Q_i; θ^t, S_i)

    def positive_fraction(self) -> torch.Tensor:
        """[targets]: the share of sources with LR < 1."""
        return (self.lr < 1).double().mean(dim=1)


def measure(learner: Learner, source_chunks: Iterable[Batch], targets: Batch, alpha: float,
            progress: bool = False, chunks: int | None = None) -> Measurement:
    """LR of every (target, source) pair; sources arrive in chunks (each one vmap pass), all on the
    learner's device in its dtype. The learner's parameters and gradients are not touched."""
    module = _TaskLoss(learner)
    params = meta_parameters(learner)
    target_tasks = [targets.task(j) for j in range(targets.num_tasks)]
    # L_j(θ^t) per chunk size: the denominator goes through the very same vmap, at the same size, as the
    # numerators, so equal parameters give bit-equal losses (α = 0 gives LR = 1 exactly).
    base: dict[int, torch.Tensor] = {}
    ratios, source_loss = [], []
    for chunk in tqdm(source_chunks, desc="transference", unit="chunk", total=chunks, leave=False,
                      disable=not progress):
        grads, losses = source_gradients(module, params, chunk)
        size = chunk.num_tasks
        if size not in base:
            repeated = {name: p.unsqueeze(0).repeat(size, *[1] * p.dim()) for name, p in params.items()}
            base[size] = torch.stack([target_losses(module, repeated, t) for t in target_tasks])
        stepped = {name: p - alpha * grads[name] for name, p in params.items()}
        moved = torch.stack([target_losses(module, stepped, t) for t in target_tasks])
        ratios.append((moved / base[size]).detach().cpu())
        source_loss.append(losses.detach().cpu())
    if not ratios:
        raise ValueError("no source tasks")
    return Measurement(lr=torch.cat(ratios, dim=1), target_loss=next(iter(base.values()))[:, 0].detach().cpu(),
                       source_loss=torch.cat(source_loss))


def take(batch: Batch, n: int) -> Batch:
    """The first n tasks of a batch."""
    return Batch(batch.support_x[:n], batch.support_y[:n], batch.query_x[:n], batch.query_y[:n], batch.mode[:n])


class Transference:
    """The analysis as configured by the `transference` group (see conf/transference/off.yaml), drawing its
    tasks from the run's opened data."""

    def __init__(self, cfg: DictConfig, device: torch.device, data: Benchmark, training: bool = True) -> None:
        settings = cfg.transference
        self.iterations = {int(i) for i in settings.iterations}
        self.cfg, self.device, self.data = cfg, device, data
        self.source_mode, self.target_mode = self._modes(cfg)
        # (source, target, folder) of each measurement: the configured direction, and with `reverse` the
        # other way round too (transference/reverse/).
        self.directions = [(self.source_mode, self.target_mode, FOLDER)]
        if settings.get("reverse", False):
            self.directions.append((self.target_mode, self.source_mode, f"{FOLDER}/reverse"))
        if settings.split not in SPLITS:
            raise ConfigError(f"transference.split={settings.split!r}; choose one of {', '.join(SPLITS)}")
        if int(settings.sources) < 1 or int(settings.targets) < 1 or int(settings.chunk) < 1:
            raise ConfigError("transference.sources, .targets and .chunk must be at least 1")
        if training and not any(1 <= i <= cfg.train.iterations for i in self.iterations):
            raise ConfigError(f"transference.iterations={sorted(self.iterations)} has none in 1..train.iterations="
                              f"{cfg.train.iterations}, so nothing would be measured; set e.g. "
                              f"transference.iterations=[{cfg.train.iterations}]")

    @staticmethod
    def _modes(cfg: DictConfig) -> tuple[str, str]:
        modes, settings = list(cfg.benchmark.modes), cfg.transference
        chosen = []
        for key, default in (("source_mode", modes[0]), ("target_mode", modes[min(1, len(modes) - 1)])):
            mode = settings[key] if settings[key] is not None else default
            if mode not in modes:
                raise ConfigError(f"transference.{key}={mode!r} is not a mode of benchmark "
                                  f"{cfg.benchmark.name}; choose one of: {', '.join(modes)}")
            chosen.append(str(mode))
        return chosen[0], chosen[1]

    def source_chunks(self, mode: str, dtype: torch.dtype) -> Iterator[Batch]:
        """The same source tasks at every measurement (a fresh sampler from the same seed)."""
        cfg, settings = self.cfg, self.cfg.transference
        chunk, total = int(settings.chunk), int(settings.sources)
        sampler = self.data.sampler("train", cfg.train.query, chunk, seed=int(settings.seed) + SOURCE_SEED_OFFSET,
                                    modes=[mode])
        for done in range(0, total, chunk):
            yield take(sampler.sample(), total - done).to(self.device, dtype)

    def target_tasks(self, mode: str, dtype: torch.dtype) -> Batch:
        cfg, settings = self.cfg, self.cfg.transference
        sampler = self.data.sampler(settings.split, cfg.eval.query, int(settings.targets),
                                    seed=int(settings.seed) + TARGET_SEED_OFFSET, modes=[mode])
        return sampler.sample().to(self.device, dtype)

    def alpha(self, learner_cfg) -> float:
        """transference.alpha, or when null the outer learning rate of the learner measured."""
        alpha = self.cfg.transference.alpha
        return float(learner_cfg["lr"] if alpha is None else alpha)

    def measure(self, learner: Learner, step: int, logger: RunLogger, alpha: float | None = None) -> dict:
        """Measure every direction, save transference[/reverse]/lr_step{step}.npz and the plots under
        logger.run_dir, log them; returns the first direction's summary."""
        alpha = self.alpha(self.cfg.learner) if alpha is None else alpha
        summaries = [self._measure_direction(learner, step, logger, alpha, *direction)
                     for direction in self.directions]
        return summaries[0]

    def _measure_direction(self, learner: Learner, step: int, logger: RunLogger, alpha: float, source: str,
                           target: str, folder_name: str) -> dict:

        dtype = next(learner.parameters()).dtype
        devices = [self.device] if self.device.type == "cuda" else []
        started = time.perf_counter()
        chunks = math.ceil(self.cfg.transference.sources / self.cfg.transference.chunk)
        with torch.random.fork_rng(devices=devices):
            result = measure(learner, self.source_chunks(source, dtype), self.target_tasks(target, dtype), alpha,
                             progress=True, chunks=chunks)
        seconds = time.perf_counter() - started
        folder = Path(logger.run_dir) / folder_name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"lr_step{step}.npz"
        arrays = {"lr": result.lr.numpy(), "target_loss": result.target_loss.numpy(),
                  "source_loss": result.source_loss.numpy(), "source_mode": source, "target_mode": target,
                  "alpha": alpha, "step": step, "split": self.cfg.transference.split,
                  "seed": int(self.cfg.transference.seed)}
        atomic_write(path, lambda f: np.savez(f, **arrays))
        label = f"{source} → {target} ({self.cfg.transference.split})"
        histogram = plots.lr_histograms(result.lr.numpy(), folder / f"histogram_step{step}.png",
                                        f"{label}, iteration {step}, α = {alpha:g}")
        steps, fractions = history(folder)
        curve = plots.positive_curve(steps, fractions, folder / "positive_fraction.png", label)
        fraction = result.positive_fraction()
        key = folder_name.replace("/", "_")  # transference, transference_reverse
        summary = {f"{key}/positive_fraction": fraction.mean().item(),
                   f"{key}/lr_median": result.lr.median().item(),
                   f"{key}/lr_mean": result.lr.mean().item(),
                   f"{key}/target_loss": result.target_loss.mean().item(),
                   f"{key}/pairs_per_second": result.lr.numel() / seconds}
        # The table first: log_table has no step, and W&B moves its step on after a step-less log, so after
        # anything logged at `step` it would reject the training's own metrics of this iteration.
        rows = [[j, i, float(lr)] for j, row in enumerate(result.lr.tolist()) for i, lr in enumerate(row)]
        logger.log_table(f"{key}/lr_step{step}", ["target", "source", "lr"], rows)
        logger.log(summary, step)
        logger.log_image(f"{key}/histogram", histogram, step)
        logger.log_image(f"{key}/positive_fraction_curve", curve, step)
        tqdm.write(f"transference {source} → {target} at iteration {step}: {100 * fraction.mean().item():.1f}% "
                   f"positive ({result.lr.shape[1]} sources × {result.lr.shape[0]} targets, {seconds:.1f} s)")
        return {**summary, "step": step, "alpha": alpha, "path": str(path), "seconds": seconds}


def history(folder: Path) -> tuple[list[int], np.ndarray]:
    """Every measurement saved in `folder` (a resumed run included): steps and [measurements, targets]
    positive fractions, in step order."""
    found = []
    for path in folder.glob("lr_step*.npz"):
        with np.load(path) as saved:
            found.append((int(saved["step"]), (saved["lr"] < 1).mean(axis=1)))
    found.sort(key=lambda item: item[0])
    return [s for s, _ in found], np.array([f for _, f in found])


class TransferenceHook(Hook):
    """`transference=on`: measure during training, after the optimiser step of each of
    `transference.iterations` (its settings are checked when the run starts, before any training)."""

    def start(self, run: RunContext) -> None:
        self.analysis = Transference(run.cfg, run.device, run.data)

    def after_step(self, run: RunContext, step: int) -> None:
        if step in self.analysis.iterations:
            self.analysis.measure(run.learner, step, run.logger)


def run(cfg: DictConfig, run_dir: Path, logger: RunLogger) -> dict:
    """`python launch.py pipeline=transference checkpoint=PATH`: measure a saved model once."""
    if "transference" not in cfg:
        raise ConfigError("pipeline=transference needs the transference group: add +transference=off")
    device = pick_device(cfg.device)
    analysis = Transference(cfg, device, benchmark_for(cfg), training=False)
    if not cfg.checkpoint:
        raise ConfigError("pipeline=transference needs checkpoint=PATH (a run's best.pt or last.pt)")
    learner, state = load_learner(cfg.checkpoint, cfg.way, device)
    # α defaults to the outer learning rate the checkpoint was trained with.
    alpha = analysis.alpha(state["config"]["learner"])
    return analysis.measure(learner, int(state["iteration"]), logger, alpha=alpha)
