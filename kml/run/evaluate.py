"""Few-shot evaluation: per-mode and overall accuracy, mean ± 1.96·std/√n over tasks, and the record of
every test task's accuracy (test_tasks.npz) that paired comparisons between runs rest on."""
from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from kml.data.benchmark import Benchmark
from kml.run.logger import RunLogger
from kml.run.runtime import TEST_SEED_OFFSET
from kml.run.safe_write import atomic_write


def mean_ci(values: list[float] | torch.Tensor, ddof: int = 1) -> dict:
    """Mean and 1.96·std/√n; `ddof` 1 is the sample standard deviation, 0 numpy's default (released code)."""
    x = torch.as_tensor(values, dtype=torch.float64)
    n = x.numel()
    std = x.std(correction=ddof).item() if n > ddof else 0.0
    return {"mean": x.mean().item(), "ci95": 1.96 * std / math.sqrt(n), "n": n}


def evaluate_tasks(learner, data: Benchmark, split: str, cfg, tasks_per_mode: int, seed: int,
                   device: torch.device, desc: str = "eval") -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Accuracy and fingerprint (kml.data.sampler.fingerprint) of every task, per mode. Same seed, same tasks:
    comparable across checkpoints and runs, and the fingerprints prove it."""
    batch_size = int(cfg.eval.meta_batch)
    learner.eval()
    accuracy, fingerprint = {}, {}
    with tqdm(total=tasks_per_mode * len(data.modes), desc=desc, unit="task", leave=False, mininterval=1.0) as bar:
        for mode in data.modes:
            sampler = data.sampler(split, cfg.eval.query, batch_size, seed=seed + mode_seed(mode), modes=[mode])
            accuracies, fingerprints = [], []
            for done in range(0, tasks_per_mode, batch_size):
                batch = sampler.sample()
                take = min(batch_size, tasks_per_mode - done)
                accuracies.append(learner.evaluate(batch.to(device)).detach().cpu()[:take])
                fingerprints.append(sampler.fingerprints[:take])
                bar.update(take)
            accuracy[mode], fingerprint[mode] = torch.cat(accuracies), torch.cat(fingerprints)
    learner.train()
    return accuracy, fingerprint


def task_accuracies(learner, data: Benchmark, split: str, cfg, tasks_per_mode: int, seed: int,
                    device: torch.device, desc: str = "eval") -> dict[str, torch.Tensor]:
    """Accuracy of every task, per mode (evaluate_tasks without the fingerprints)."""
    return evaluate_tasks(learner, data, split, cfg, tasks_per_mode, seed, device, desc)[0]


def mode_seed(mode: str) -> int:
    """A mode's offset of the evaluation seed, from its name alone: a mode meets the same tasks in every
    benchmark it is part of, so a specialist and a multimodal run compare task by task."""
    return zlib.crc32(mode.encode()) % 1_000_003


def summarise(per_mode: dict[str, torch.Tensor], ddof: int = 1) -> dict:
    return {"overall": mean_ci(torch.cat(list(per_mode.values())), ddof),
            "per_mode": {mode: mean_ci(acc, ddof) for mode, acc in per_mode.items()}}


def results_table(results: dict) -> str:
    rows = [(mode, s) for mode, s in results["per_mode"].items()] + [("overall", results["overall"])]
    width = max(len(mode) for mode, _ in rows)
    lines = [f"{'mode'.ljust(width)}  accuracy (%)      tasks", "-" * (width + 26)]
    lines += [f"{mode.ljust(width)}  {100 * s['mean']:6.2f} ± {100 * s['ci95']:5.2f}  {s['n']:6d}" for mode, s in rows]
    return "\n".join(lines)


def write_results(path: Path, results: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(results, indent=1).encode()))


def write_test_tasks(path: Path, per_mode: dict[str, torch.Tensor], seed: int,
                     fingerprints: dict[str, torch.Tensor]) -> None:
    """Every test task's accuracy, mode and fingerprint, in task order: two runs met the same tasks when their
    fingerprints agree, so their arrays compare pairwise (python -m kml.report --compare checks it)."""
    arrays = {"accuracy": torch.cat(list(per_mode.values())).numpy(),
              "mode": np.concatenate([np.full(len(acc), i) for i, acc in enumerate(per_mode.values())]),
              "modes": np.array(list(per_mode)), "eval_seed": seed,
              "fingerprint": torch.cat([fingerprints[mode] for mode in per_mode]).numpy()}
    atomic_write(path, lambda f: np.savez(f, **arrays))


def evaluate_and_report(learner, data: Benchmark, cfg: DictConfig, folder: Path, logger: RunLogger,
                        device: torch.device, iteration: int | None, weights_iteration: int,
                        milestone: bool = False) -> dict:
    """A test of the learner: eval.tasks_per_mode tasks per mode from eval.seed, results.json and
    test_tasks.npz in `folder`, the table printed and logged. `iteration`: how far training had gone (None for
    eval_only); `weights_iteration`: the iteration the tested weights are from (best.pt's, or `iteration`).
    The run's own test (its folder) logs a W&B table and summary; a milestone's (milestones/<iteration>/) logs
    test/ accuracies at its iteration, so a run's test accuracy plots against iterations."""
    seed = int(cfg.eval.seed)
    per_mode, fingerprints = evaluate_tasks(learner, data, "test", cfg, cfg.eval.tasks_per_mode, seed + TEST_SEED_OFFSET,
                               device, desc="test")
    results = {**summarise(per_mode, int(cfg.eval.std_ddof)), "method": learner.method_name,
               "benchmark": cfg.benchmark.name, "shot": int(cfg.shot), "way": int(cfg.way),
               "protocol": cfg.get("protocol", "paper"), "variant": cfg.get("variant"), "seed": int(cfg.seed),
               "eval_seed": seed, "iteration": iteration, "weights_iteration": weights_iteration,
               "milestone": milestone}
    folder.mkdir(parents=True, exist_ok=True)
    write_test_tasks(folder / "test_tasks.npz", per_mode, seed, fingerprints)
    write_results(folder / "results.json", results)  # last: a milestone with results.json is complete
    at = f"iteration {iteration}" if iteration is not None else "checkpoint"
    weights = "" if weights_iteration == iteration else f", weights of iteration {weights_iteration}"
    print(f"\n{results['method']} on {results['benchmark']}, {cfg.way}-way {cfg.shot}-shot (test split, {at}{weights})")
    print(results_table(results))
    accuracies = {"test/accuracy": results["overall"]["mean"],
                  **{f"test/{m}/accuracy": s["mean"] for m, s in results["per_mode"].items()}}
    if milestone:
        logger.log(accuracies, iteration)
        return results
    rows = [[m, s["mean"], s["ci95"], s["n"]] for m, s in results["per_mode"].items()]
    logger.log_table("test/results", ["mode", "accuracy", "ci95", "tasks"],
                     rows + [["overall", *[results["overall"][k] for k in ("mean", "ci95", "n")]]])
    logger.summary(accuracies)
    return results
