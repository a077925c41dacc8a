"""Step 4 of the GPU check: a real run. Omniglot and mini-ImageNet are prepared at 84 px on the machine
itself (kml.bench.gpu_data says from which archives), a probe times one meta-iteration with the sampler
and without it (one batch kept on the device) so that the two show whether sampling keeps the GPU busy,
then `launch.py benchmark=2mode` trains MMAML+KML for as many iterations as the step's time allows (at
least 300) and tests it on 200 tasks. Results go to real.json as they come; the run's metrics.jsonl is
copied to real_metrics.jsonl and its training curve drawn in real.png."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from kml.bench.gpu_data import choose_data
from kml.bench.gpu_steps import pyplot, write_json

MIN_ITERATIONS = 300
TEST_TASKS = 200  # in all, split evenly between the modes
VAL_TASKS_PER_MODE = 50  # one validation, at the end (it picks best.pt)
REPO = Path(__file__).resolve().parents[2]


def real_run(args: argparse.Namespace) -> None:
    deadline = time.monotonic() + (args.seconds or 600)
    size, out, work = (16 if args.quick else 84), args.out, args.work.resolve()
    os.environ.setdefault("TQDM_MININTERVAL", "10")  # progress lines in a log file, not one per update
    choice = choose_data(args.data_dir, work)
    print(f"data: {choice.note}", flush=True)
    record = {"data": choice.note, "data_kind": choice.kind, "benchmark": choice.benchmark, "image_size": size}
    write_json(out / "real.json", record)
    root = work / f"data_{choice.kind}"  # the stand-in never mixes with the full set's arrays
    record["prepare_s"] = {}
    for dataset, archive in choice.archives.items():
        start = time.monotonic()
        run([sys.executable, "-m", "kml.data", "prepare", dataset, "--source", str(archive), "--root", str(root),
             "--image-size", str(size)])
        record["prepare_s"][dataset] = time.monotonic() - start
        write_json(out / "real.json", record)
    overrides = [f"benchmark={choice.benchmark}", "learner=maml", "modulation=kml", f"device={args.device}",
                 f"image_size={size}", f"data.root={root}", "logger.mode=disabled"]
    if args.quick:
        overrides += ["debug=tiny", "train.query=2", "eval.query=2"]
    record["probe"] = probe(overrides, args.device, 2 if args.quick else 20)
    release_device_memory(args.device)  # the run is another process: leave it the memory the probe held
    print("probe: " + json.dumps(record["probe"]), flush=True)
    write_json(out / "real.json", record)
    modes = 2 if choice.benchmark == "2mode" else 3
    val_tasks, test_tasks = (2, 4) if args.quick else (VAL_TASKS_PER_MODE, math.ceil(TEST_TASKS / modes))
    iterations = 4 if args.quick else plan_iterations(
        deadline - time.monotonic(), record["probe"]["with_data_ms"] / 1e3,
        record["probe"]["eval_ms_per_task"] / 1e3, modes * (val_tasks + test_tasks))
    record["plan"] = {"iterations": iterations, "val_tasks_per_mode": val_tasks, "test_tasks_per_mode": test_tasks}
    write_json(out / "real.json", record)
    run_dir = work / "real_run"
    shutil.rmtree(run_dir, ignore_errors=True)  # a rerun starts afresh (metrics.jsonl would be appended to)
    command = [sys.executable, "launch.py", *overrides, f"train.iterations={iterations}",
               f"train.val_every={iterations}", f"train.val_tasks_per_mode={val_tasks}",
               f"eval.tasks_per_mode={test_tasks}", f"train.log_every={1 if args.quick else 10}",
               "train.resume=false", f"hydra.run.dir={run_dir}"]
    start = time.monotonic()
    # Stopped a little before the step's limit, so that what it did is still summarised below.
    finished = run(command, timeout=max(1.0, deadline - time.monotonic() - 10), check=False)
    record["run"] = {"command": " ".join(command[1:]), "finished": finished, "seconds": time.monotonic() - start,
                     **summarise_run(run_dir)}
    if (run_dir / "metrics.jsonl").is_file():
        shutil.copyfile(run_dir / "metrics.jsonl", out / "real_metrics.jsonl")
    write_json(out / "real.json", record)
    figure(run_dir / "metrics.jsonl", out / "real.png")
    if not finished:
        raise SystemExit("the run did not finish within the step's time (see real.json for what it did)")


def run(command: list[str], timeout: float | None = None, check: bool = True) -> bool:
    """Run `command` from the repository root, its output into this step's log; False if it failed or
    outlasted `timeout`."""
    print(f"$ {' '.join(command)}", flush=True)
    try:
        done = subprocess.run(command, cwd=REPO, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"stopped after {timeout:.0f} s", flush=True)
        return False
    if check and done.returncode != 0:
        raise SystemExit(f"{command[2:5]} failed (exit {done.returncode})")
    return done.returncode == 0


def probe(overrides: list[str], device_name: str, iterations: int) -> dict:
    """Median ms of one meta-iteration of the run's learner on its data: sampling and step (as the training
    loop does it, synchronously), the step alone on one batch kept on the device, and sampling alone; and
    the evaluation's ms per task (to size the run)."""
    import torch

    from kml.config import compose
    from kml.learners import build_learner, build_optimizer
    from kml.run.runtime import benchmark_for, seed_everything

    cfg = compose(overrides)
    device = torch.device(device_name)
    seed_everything(cfg.seed)
    data = benchmark_for(cfg)
    learner = build_learner(cfg).to(device)
    optimizer = build_optimizer(learner, cfg)
    sampler = data.sampler("train", cfg.train.query, cfg.train.meta_batch, seed=cfg.seed, policy=cfg.data.mode_policy)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = learner.meta_loss(batch)
        loss.backward()
        optimizer.step()
        synchronize()

    def seconds(work) -> float:
        start = time.perf_counter()
        work()
        return time.perf_counter() - start

    for _ in range(2):  # warm-up: allocations, cuDNN's choices
        step(sampler.sample().to(device))
    kept = sampler.sample().to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timed = {"with_data_ms": [], "without_data_ms": [], "sampling_ms": []}
    for _ in range(iterations):  # in turns, so that a slow spell weighs on each alike
        timed["with_data_ms"].append(seconds(lambda: step(sampler.sample().to(device))))
        timed["without_data_ms"].append(seconds(lambda: step(kept)))
        timed["sampling_ms"].append(seconds(sampler.sample))
    result = {"iterations": iterations, **{key: 1e3 * statistics.median(values) for key, values in timed.items()}}
    result["sampler_share"] = 1 - result["without_data_ms"] / result["with_data_ms"]
    if device.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    val = data.sampler("val", cfg.eval.query, cfg.eval.meta_batch, seed=1).sample()
    evaluations = [seconds(lambda: (learner.evaluate(val.to(device)), synchronize())) for _ in range(3)]
    result["eval_ms_per_task"] = 1e3 * statistics.median(evaluations) / val.num_tasks
    return result


def release_device_memory(device_name: str) -> None:
    import gc

    import torch

    gc.collect()
    if device_name == "cuda":
        torch.cuda.empty_cache()


def plan_iterations(seconds_left: float, iteration_s: float, eval_s_per_task: float, eval_tasks: int,
                    overhead_s: float = 30.0) -> int:
    """As many iterations as fit in what is left once the run's start (`overhead_s`: imports, data, CUDA)
    and its evaluation are paid, with a fifth kept in reserve; never fewer than MIN_ITERATIONS."""
    available = seconds_left - overhead_s - 1.5 * eval_tasks * eval_s_per_task
    return max(MIN_ITERATIONS, int(0.8 * available / iteration_s) if available > 0 else 0)


def summarise_run(run_dir: Path) -> dict:
    """Iterations done, ms per iteration in the training loop (with its data) from the time stamps of
    metrics.jsonl, and the test results if the run got that far."""
    summary: dict = {}
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        train = [r for r in map(json.loads, metrics.read_text().splitlines()) if "train/loss" in r]
        if train:
            summary["iterations_done"] = train[-1]["step"]
            summary["final_train_loss"], summary["final_train_accuracy"] = train[-1]["train/loss"], train[-1].get(
                "train/accuracy")
        if len(train) >= 2:
            steps, seconds = train[-1]["step"] - train[0]["step"], train[-1]["time"] - train[0]["time"]
            summary["loop_ms_per_iteration"] = 1e3 * seconds / steps
    results = run_dir / "results.json"
    if results.is_file():
        test = json.loads(results.read_text())
        summary["test"] = {"overall": test["overall"], "per_mode": test["per_mode"]}
    return summary


def figure(metrics: Path, path: Path) -> None:
    """Training loss and accuracy against the iteration."""
    plt = pyplot()
    if plt is None:
        return
    if not metrics.is_file():
        return
    train = [r for r in map(json.loads, metrics.read_text().splitlines()) if "train/loss" in r]
    if not train:
        return
    fig, (loss, accuracy) = plt.subplots(1, 2, figsize=(9, 3.5))
    steps = [r["step"] for r in train]
    loss.plot(steps, [r["train/loss"] for r in train])
    loss.set(xlabel="iteration", ylabel="training loss")
    accuracy.plot(steps, [r.get("train/accuracy") for r in train])
    accuracy.set(xlabel="iteration", ylabel="training accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
