"""The meta-training loop every task of launch.py shares: progress bar, logging, periodic validation with
a best checkpoint, tests at milestones, an atomic last checkpoint for exact resume, and a stop on a
non-finite loss."""
from __future__ import annotations

import copy
import math
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from kml.errors import TrainingDiverged
from kml.run import checkpoint
from kml.run.logger import RunLogger


@dataclass
class MetaTraining:
    """What differs between tasks; `meta_train` does the rest.

    compute_gradients(iteration) -> metrics: fills the gradients of `optimizer`'s parameters for the
        0-based iteration and returns its metrics (floats, with "loss"); the loop then steps the optimizer.
    validate() -> floats logged under val/; `score` names the one that picks best.pt.
    resumable: further objects with state_dict()/load_state_dict() that last.pt must hold (the sampler).
    after_step(step): called after each optimizer step (the transference analysis).
    test(step, folder, weights_iteration): at each iteration of `test_at` before the last, a test of the
        weights the run would be tested with had it stopped there (`tested_weights`; they are from
        `weights_iteration`), written into `folder` (run_dir/milestones/<step>/); the run's own test after the
        loop is its test at the last iteration.
    """

    model: torch.nn.Module  # what the checkpoints hold
    optimizer: torch.optim.Optimizer
    compute_gradients: Callable[[int], dict[str, float]]
    validate: Callable[[], dict[str, float]]
    score: str
    higher_is_better: bool
    divergence_hint: str  # which setting to lower when the loss blows up
    resumable: dict = field(default_factory=dict)
    after_step: Callable[[int], None] | None = None
    progress: tuple[str, ...] = ("loss",)  # metrics shown on the progress bar
    test_at: tuple[int, ...] = ()
    test: Callable[[int, Path, int], None] | None = None


def milestone_folder(run_dir: Path, step: int) -> Path:
    return run_dir / "milestones" / str(step)


def tested_weights(cfg: DictConfig, best_path: Path) -> str:
    """Which weights a test at this point takes: `best` (eval.checkpoint=best and a validation has saved
    best.pt: the best validation so far) or `current` (eval.checkpoint=last, or no validation yet)."""
    return "best" if cfg.eval.checkpoint == "best" and best_path.exists() else "current"


def meta_train(job: MetaTraining, cfg: DictConfig, run_dir: Path, logger: RunLogger) -> int:
    """Train to cfg.train.iterations, resuming from run_dir/last.pt when present; ends holding best.pt's
    weights when validation ran and eval.checkpoint is `best`, the final weights when it is `last`, and
    returns the iteration those weights are from.
    Training metrics are logged as means over the steps since the last log. With train.lr_halving_every
    = N the learning rate is halved before the step of every N-th iteration (as the released code).

    A test at a milestone comes after that iteration's validation and before its last.pt, so a resumed run
    starts past the milestones it has tested and retrains to the one it was killed in; a milestone whose
    results.json exists (killed between the test and last.pt) is not tested again. A run that starts over
    drops the milestones of the run it replaces."""
    last, best_path = run_dir / "last.pt", run_dir / "best.pt"
    config = OmegaConf.to_container(cfg, resolve=True)
    start, best = 0, None  # best: the best validation score so far, as validate() returned it

    def improves(score: float) -> bool:
        return best is None or (score > best if job.higher_is_better else score < best)

    if last.exists() and cfg.train.resume:
        state = checkpoint.load(last)
        job.model.load_state_dict(state["model"])
        job.optimizer.load_state_dict(state["optimizer"])
        for name, obj in job.resumable.items():
            obj.load_state_dict(state[name])
        torch.set_rng_state(state["torch_rng"])
        start, best = state["iteration"], state["best_val"]
        print(f"resuming from {last} at iteration {start}")
    elif (run_dir / "milestones").exists():
        shutil.rmtree(run_dir / "milestones")  # tested by the run this one starts over from

    def save_last(iteration: int) -> None:
        checkpoint.save({"model": job.model.state_dict(), "optimizer": job.optimizer.state_dict(),
                         **{name: obj.state_dict() for name, obj in job.resumable.items()},
                         "torch_rng": torch.get_rng_state(), "iteration": iteration, "best_val": best,
                         "config": config}, last)

    def test_milestone(step: int) -> None:
        folder = milestone_folder(run_dir, step)
        if (folder / "results.json").exists():
            print(f"iteration {step}: tested before the run was stopped ({folder})")
            return
        if tested_weights(cfg, best_path) == "current":
            job.test(step, folder, step)
            return
        training_state = copy.deepcopy(job.model.state_dict())
        saved = checkpoint.load(best_path)
        job.model.load_state_dict(saved["model"])
        try:
            job.test(step, folder, saved["iteration"])
        finally:
            job.model.load_state_dict(training_state)

    iterations, saved_at = int(cfg.train.iterations), time.monotonic()
    halving_every = cfg.train.lr_halving_every
    window = defaultdict(list)  # metric -> values since the last log
    bar = tqdm(range(start, iterations), initial=start, total=iterations, desc="meta-train", unit="it")
    for it in bar:
        step = it + 1
        job.optimizer.zero_grad(set_to_none=True)
        metrics = job.compute_gradients(it)
        if not math.isfinite(metrics["loss"]):
            raise TrainingDiverged(f"loss is {metrics['loss']} at iteration {step}; stopped, the last good "
                                   f"checkpoint is {last if last.exists() else 'none'} ({job.divergence_hint})")
        if halving_every and step % halving_every == 0:
            for group in job.optimizer.param_groups:  # saved with the optimizer in last.pt: resumes as is
                group["lr"] *= 0.5
        job.optimizer.step()
        if job.after_step:
            job.after_step(step)
        for key, value in metrics.items():
            window[key].append(value)
        if step % cfg.train.log_every == 0 or step == iterations:
            means = {key: sum(values) / len(values) for key, values in window.items()}
            window.clear()
            logger.log({f"train/{key}": value for key, value in means.items()}, step)
            bar.set_postfix({key: f"{means[key]:.3f}" for key in job.progress})
        validate = step % cfg.train.val_every == 0 or step == iterations
        if validate:
            val = job.validate()
            logger.log({f"val/{key}": value for key, value in val.items()}, step)
            if improves(val[job.score]):
                best = val[job.score]
                checkpoint.save({"model": job.model.state_dict(), "iteration": step, "best_val": best,
                                 "config": config}, best_path)
        milestone = step in job.test_at and step < iterations
        if milestone:
            test_milestone(step)
        if validate or milestone or step % cfg.train.checkpoint_every == 0 or \
                time.monotonic() - saved_at > 60 * cfg.train.checkpoint_minutes:
            save_last(step)
            saved_at = time.monotonic()
    bar.close()
    if tested_weights(cfg, best_path) == "current":
        return iterations
    saved = checkpoint.load(best_path)
    job.model.load_state_dict(saved["model"])
    return saved["iteration"]
