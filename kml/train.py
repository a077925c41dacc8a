"""Meta-training with periodic validation, best/last checkpoints and exact resume, then test evaluation."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from kml import checkpoint
from kml.data.benchmark import make_sampler
from kml.errors import ConfigError
from kml.evaluate import results_table, summarise, task_accuracies, write_results
from kml.learners import build_learner, build_optimizer, describe, method_name
from kml.logger import RunLogger
from kml.loop import MetaTraining, meta_train
from kml.transference import Transference

# Validation and test tasks are drawn from fixed seeds, independent of the training stream.
VAL_SEED_OFFSET, TEST_SEED_OFFSET = 100_003, 200_003


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is visible; use device=cpu or device=auto")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device={name!r} is not valid; choose one of: auto, cpu, cuda")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_episodes(cfg: DictConfig) -> None:
    """Fail before training if any split cannot serve the requested episodes (missing data, too few images)."""
    for split, query in (("train", cfg.train.query), ("val", cfg.eval.query), ("test", cfg.eval.query)):
        make_sampler(list(cfg.benchmark.modes), split, cfg.way, cfg.shot, query, 1,
                     root=cfg.data.root, image_size=cfg.image_size)


def run(cfg: DictConfig, run_dir: Path, logger: RunLogger) -> dict:
    """Train (or load `checkpoint` when eval_only), evaluate on the test split, write results.json."""
    device = pick_device(cfg.device)
    if os.environ.get("SLURM_CPUS_PER_TASK"):  # torch would otherwise use every core of the node
        torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))
    check_episodes(cfg)
    if cfg.eval_only:
        learner = load_for_eval(cfg, device)
    else:
        learner = train(cfg, run_dir, logger, device)
    modes = list(cfg.benchmark.modes)
    per_mode = task_accuracies(learner, modes, "test", cfg, cfg.eval.tasks_per_mode,
                               cfg.seed + TEST_SEED_OFFSET, device, desc="test")
    results = {**summarise(per_mode), "method": method_name(learner), "benchmark": cfg.benchmark.name,
               "shot": int(cfg.shot), "way": int(cfg.way)}
    write_results(run_dir / "results.json", results)
    print(f"\n{results['method']} on {results['benchmark']}, {cfg.way}-way {cfg.shot}-shot (test split)")
    print(results_table(results))
    rows = [[m, s["mean"], s["ci95"], s["n"]] for m, s in results["per_mode"].items()]
    logger.log_table("test/results", ["mode", "accuracy", "ci95", "tasks"],
                     rows + [["overall", *[results["overall"][k] for k in ("mean", "ci95", "n")]]])
    logger.summary({"test/accuracy": results["overall"]["mean"],
                    **{f"test/{m}/accuracy": s["mean"] for m, s in results["per_mode"].items()}})
    return results


def load_for_eval(cfg: DictConfig, device: torch.device):
    if not cfg.checkpoint:
        raise ConfigError("eval_only=true needs checkpoint=PATH (a run's best.pt or last.pt)")
    state = checkpoint.load(cfg.checkpoint)
    # The model is rebuilt from the checkpoint's own config; the benchmark and episodes come from this run.
    saved = OmegaConf.create(state["config"])
    learner = build_learner(OmegaConf.merge(saved, {"way": cfg.way})).to(device)
    learner.load_state_dict(state["model"])
    print(f"evaluating {cfg.checkpoint} (iteration {state['iteration']})")
    return learner


def train(cfg: DictConfig, run_dir: Path, logger: RunLogger, device: torch.device):
    seed_everything(cfg.seed)
    learner = build_learner(cfg).to(device)
    optimizer = build_optimizer(learner, cfg)
    print(describe(learner))
    modes = list(cfg.benchmark.modes)
    sampler = make_sampler(modes, "train", cfg.way, cfg.shot, cfg.train.query, cfg.train.meta_batch,
                           root=cfg.data.root, image_size=cfg.image_size, seed=cfg.seed, policy=cfg.data.mode_policy)

    def compute_gradients(iteration: int) -> dict[str, float]:
        batch = sampler.sample()
        loss, metrics = learner.meta_loss(batch.to(device))
        loss.backward()
        return {"loss": metrics["loss"], "accuracy": metrics["accuracy"],
                **per_mode_accuracy(metrics["task_accuracy"], batch.mode.tolist(), modes)}

    def validate() -> dict[str, float]:
        val = summarise(task_accuracies(learner, modes, "val", cfg, cfg.train.val_tasks_per_mode,
                                        cfg.seed + VAL_SEED_OFFSET, device, desc="validate"))
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
