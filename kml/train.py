"""Meta-training with periodic validation, best/last checkpoints and exact resume, then test evaluation."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from kml.data.benchmark import sampler_for
from kml.errors import ConfigError
from kml.evaluate import evaluate_and_report, summarise, task_accuracies
from kml.learners import build_learner, build_optimizer, describe, load_learner
from kml.logger import RunLogger
from kml.loop import MetaTraining, meta_train
from kml.runtime import VAL_SEED_OFFSET, pick_device, seed_everything, use_allocated_cpus
from kml.transference import Transference


def check_episodes(cfg: DictConfig) -> None:
    """Fail before training if any split cannot serve the requested episodes (missing data, too few images)."""
    for split, query in (("train", cfg.train.query), ("val", cfg.eval.query), ("test", cfg.eval.query)):
        sampler_for(cfg, list(cfg.benchmark.modes), split, query, 1)


def run(cfg: DictConfig, run_dir: Path, logger: RunLogger) -> dict:
    """Train (or load `checkpoint` when eval_only), evaluate on the test split, write results.json."""
    device = pick_device(cfg.device)
    use_allocated_cpus()
    check_episodes(cfg)
    if cfg.eval_only:
        if not cfg.checkpoint:
            raise ConfigError("eval_only=true needs checkpoint=PATH (a run's best.pt or last.pt)")
        learner = load_learner(cfg.checkpoint, cfg.way, device)
    else:
        learner = train(cfg, run_dir, logger, device)
    return evaluate_and_report(learner, cfg, run_dir, logger, device)


def train(cfg: DictConfig, run_dir: Path, logger: RunLogger, device: torch.device):
    seed_everything(cfg.seed)
    learner = build_learner(cfg).to(device)
    optimizer = build_optimizer(learner, cfg)
    print(describe(learner))
    modes = list(cfg.benchmark.modes)
    sampler = sampler_for(cfg, modes, "train", cfg.train.query, cfg.train.meta_batch, seed=cfg.seed,
                          policy=cfg.data.mode_policy)

    def compute_gradients(iteration: int) -> dict[str, float]:
        batch = sampler.sample()
        loss, metrics = learner.meta_loss(batch.to(device))
        loss.backward()
        return {"loss": metrics["loss"], "accuracy": metrics["accuracy"],
                **per_mode_accuracy(metrics["task_accuracy"], batch.mode.tolist(), modes)}

    def validate() -> dict[str, float]:
        val = summarise(task_accuracies(learner, modes, "val", cfg, cfg.train.val_tasks_per_mode,
                                        cfg.eval.seed + VAL_SEED_OFFSET, device, desc="validate"))
        return {"accuracy": val["overall"]["mean"], **{f"{m}/accuracy": s["mean"] for m, s in val["per_mode"].items()}}

    analysis = Transference(cfg, device)  # measures at transference.iterations when transference=on
    meta_train(MetaTraining(learner, optimizer, compute_gradients, validate, score="accuracy",
                            higher_is_better=True, divergence_hint="lower learner.lr?", resumable={"sampler": sampler},
                            after_step=lambda step: analysis.maybe_measure(learner, step, logger),
                            progress=("loss", "accuracy")), cfg, run_dir, logger)
    return learner


def per_mode_accuracy(task_accuracy: list[float], task_mode: list[int], modes: list[str]) -> dict[str, float]:
    """Mean training accuracy of each mode present in the meta-batch, as train/<mode>/accuracy (multimodal only)."""
    if len(modes) == 1:
        return {}
    totals = {}
    for accuracy, mode in zip(task_accuracy, task_mode, strict=True):
        totals.setdefault(modes[mode], []).append(accuracy)
    return {f"{mode}/accuracy": sum(values) / len(values) for mode, values in totals.items()}
