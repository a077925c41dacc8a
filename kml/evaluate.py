"""Few-shot evaluation: per-mode and overall accuracy, mean ± 1.96·std/√n over tasks."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from tqdm import tqdm

from kml.data.benchmark import make_sampler
from kml.safe_write import atomic_write


def mean_ci(values: list[float] | torch.Tensor) -> dict:
    x = torch.as_tensor(values, dtype=torch.float64)
    n = x.numel()
    std = x.std(unbiased=True).item() if n > 1 else 0.0
    return {"mean": x.mean().item(), "ci95": 1.96 * std / math.sqrt(n), "n": n}


def task_accuracies(learner, modes: list[str], split: str, cfg, tasks_per_mode: int, seed: int,
                    device: torch.device, desc: str = "eval") -> dict[str, torch.Tensor]:
    """Accuracy of every task, per mode. Same seed, same tasks: comparable across checkpoints and runs."""
    batch_size = int(cfg.eval.meta_batch)
    learner.eval()
    result = {}
    with tqdm(total=tasks_per_mode * len(modes), desc=desc, unit="task", leave=False, mininterval=1.0) as bar:
        for index, mode in enumerate(modes):
            sampler = make_sampler([mode], split, cfg.way, cfg.shot, cfg.eval.query, batch_size,
                                   root=cfg.data.root, image_size=cfg.image_size, seed=seed + 7919 * index)
            accuracies = []
            for done in range(0, tasks_per_mode, batch_size):
                batch = sampler.sample()
                take = min(batch_size, tasks_per_mode - done)
                accuracies.append(learner.evaluate(batch.to(device)).detach().cpu()[:take])
                bar.update(take)
            result[mode] = torch.cat(accuracies)
    learner.train()
    return result


def summarise(per_mode: dict[str, torch.Tensor]) -> dict:
    return {"overall": mean_ci(torch.cat(list(per_mode.values()))),
            "per_mode": {mode: mean_ci(acc) for mode, acc in per_mode.items()}}


def results_table(results: dict) -> str:
    rows = [(mode, s) for mode, s in results["per_mode"].items()] + [("overall", results["overall"])]
    width = max(len(mode) for mode, _ in rows)
    lines = [f"{'mode'.ljust(width)}  accuracy (%)      tasks", "-" * (width + 26)]
    lines += [f"{mode.ljust(width)}  {100 * s['mean']:6.2f} ± {100 * s['ci95']:5.2f}  {s['n']:6d}" for mode, s in rows]
    return "\n".join(lines)


def write_results(path: Path, results: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(results, indent=1).encode()))
