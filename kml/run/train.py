"""Few-shot meta-training (`pipeline=fewshot`): periodic validation, best/last checkpoints, exact resume, the
configured hooks after every step, tests at the milestones of eval.at, then the test evaluation."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig

from kml.data.benchmark import Benchmark
from kml.errors import ConfigError
from kml.learners import build_learner, build_optimizer, describe
from kml.run.checkpoint import load_learner
from kml.run.evaluate import evaluate_and_report, summarise, task_accuracies
from kml.run.hooks import RunContext, build_hooks
from kml.run.logger import RunLogger
from kml.run.loop import MetaTraining, meta_train
from kml.run.runtime import VAL_SEED_OFFSET, benchmark_for, pick_device, seed_everything, use_allocated_cpus


def run(cfg: DictConfig, run_dir: Path, logger: RunLogger) -> dict:
    """Train (or load `checkpoint` when eval_only), evaluate on the test split, write results.json."""
    device = pick_device(cfg.device)
    use_allocated_cpus()
    data = benchmark_for(cfg)
    # Fail before training if any split cannot serve its episodes (missing data, too few images).
    data.check({"train": cfg.train.query, "val": cfg.eval.query, "test": cfg.eval.query})
    if cfg.eval_only:
        if not cfg.checkpoint:
            raise ConfigError("eval_only=true needs checkpoint=PATH (a run's best.pt or last.pt)")
        learner, state = load_learner(cfg.checkpoint, cfg.way, device)
        return evaluate_and_report(learner, data, cfg, run_dir, logger, device, None, state["iteration"])
    milestones = milestone_iterations(cfg)  # before training: a wrong list fails at once
    learner, weights_iteration = train(cfg, run_dir, logger, device, data, milestones)
    return evaluate_and_report(learner, data, cfg, run_dir, logger, device, int(cfg.train.iterations),
                               weights_iteration)


def milestone_iterations(cfg: DictConfig) -> tuple[int, ...]:
    """eval.at as sorted iterations, each in 1..train.iterations (the last one is the run's own test)."""
    iterations, at = int(cfg.train.iterations), cfg.eval.get("at") or []
    if not isinstance(at, (list, ListConfig)) or not all(isinstance(step, int) and 0 < step <= iterations
                                                         for step in at):
        raise ConfigError(f"eval.at={at}: give a list of iterations from 1 to train.iterations={iterations}, "
                          "e.g. eval.at=[1200,2400,4800]")
    return tuple(sorted(set(at)))


def train(cfg: DictConfig, run_dir: Path, logger: RunLogger, device: torch.device, data: Benchmark,
          milestones: tuple[int, ...] = ()) -> tuple[torch.nn.Module, int]:
    """The trained learner (holding the weights eval.checkpoint names) and the iteration they are from."""
    seed_everything(cfg.seed)
    learner = build_learner(cfg).to(device)
    optimizer = build_optimizer(learner, cfg)
    print(describe(learner))
    modes = data.modes
    sampler = data.sampler("train", cfg.train.query, cfg.train.meta_batch, seed=cfg.seed, policy=cfg.data.mode_policy)

    def compute_gradients(iteration: int) -> dict[str, float]:
        batch = sampler.sample()
        loss, metrics = learner.meta_loss(batch.to(device))
        loss.backward()
        return {"loss": metrics["loss"], "accuracy": metrics["accuracy"],
                **per_mode_accuracy(metrics["task_accuracy"], batch.mode.tolist(), modes)}

    def validate() -> dict[str, float]:
        val = summarise(task_accuracies(learner, data, "val", cfg, cfg.train.val_tasks_per_mode,
                                        cfg.eval.seed + VAL_SEED_OFFSET, device, desc="validate"))
        return {"accuracy": val["overall"]["mean"], **{f"{m}/accuracy": s["mean"] for m, s in val["per_mode"].items()}}

    context = RunContext(cfg, run_dir, device, logger, data, learner)
    hooks = build_hooks(cfg)
    for hook in hooks:
        hook.start(context)

    def after_step(step: int) -> None:
        for hook in hooks:
            hook.after_step(context, step)

    def test(step: int, folder: Path, weights_iteration: int) -> None:
        # The test draws nothing from the training's random streams: with or without milestones, the same run.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            evaluate_and_report(learner, data, cfg, folder, logger, device, step, weights_iteration, milestone=True)

    weights_iteration = meta_train(
        MetaTraining(learner, optimizer, compute_gradients, validate, score="accuracy", higher_is_better=True,
                     divergence_hint="lower learner.lr?", resumable={"sampler": sampler}, after_step=after_step,
                     progress=("loss", "accuracy"), test_at=milestones, test=test), cfg, run_dir, logger)
    return learner, weights_iteration


def per_mode_accuracy(task_accuracy: list[float], task_mode: list[int], modes: list[str]) -> dict[str, float]:
    """Mean training accuracy of each mode present in the meta-batch, as train/<mode>/accuracy (multimodal only)."""
    if len(modes) == 1:
        return {}
    totals = {}
    for accuracy, mode in zip(task_accuracy, task_mode, strict=True):
        totals.setdefault(modes[mode], []).append(accuracy)
    return {f"{mode}/accuracy": sum(values) / len(values) for mode, values in totals.items()}
