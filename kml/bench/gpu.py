"""`python -m kml.bench gpu`: the GPU check, built to run within a device call's few minutes.

  python -m kml.bench gpu [--install] [--steps env,correctness,speed,real] [--budget-minutes 8]
                          [--out .gpu/out] [--mirror $OUT] [--device cuda] [--limit STEP=SECONDS] [--quick]

Steps, in this order, each a child process with its own time limit (its share of what is left of the
budget, unless --limit sets it), stopped with everything it started when the limit comes, so that a hung
CUDA call costs one step, not the check:
  env          --install: pip installs the carried wheels (.gpu/whl) and the project (`pip install -e .`,
               as the README); then versions, the device and its memory, matmul TFLOP/s at fp32, TF32, bf16
  correctness  the tests marked `cuda` and those that take a device (the float64 batched-versus-per-task
               equivalences, every learner, modulation and order), with --kml-device set to the device
  speed        `kml.bench train --core` with the default switches beside `higher`, then each switch
  real         Omniglot + mini-ImageNet prepared at 84 px there, MMAML+KML on 2mode for as many iterations
               as the limit allows (at least 300), a 200-task test, time per iteration with and without data
Each writes <step>.log and <step>.json (and figures) in --out as it goes; summary.md and summary.json,
rewritten after every step, list every step (steps of an earlier call into the same --out are kept) with
the machine, driver, torch and CUDA versions; logs.tar.gz holds every file. `gpu-pack`, run here first,
gathers what the device calls carry and prints them (BENCHMARKS.md, section GPU check).

This module and kml.bench.gpu_report import only the standard library (and torch): on a bare GPU machine
the project's other dependencies arrive with the env step.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kml.bench import gpu_report

REPO = Path(__file__).resolve().parents[2]
# The test files holding `cuda`-marked tests or tests that take the `device` fixture (a test keeps this
# list complete); only they are collected, so that no other test file's imports (wandb) must be carried.
DEVICE_TEST_FILES = ("tests/test_batched.py",)
QUICK_TESTS = "protonet_equals"  # --quick: the tests of one small group (-k)


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    share: float  # of the budget, relative to the other steps selected
    commands: Callable[[argparse.Namespace, float], list[list[str]]]  # (args, limit seconds) -> command lines
    files: tuple[str, ...]  # what it writes in --out besides its log (removed before it runs again)


def child(args: argparse.Namespace, step: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kml.bench.gpu_steps", step, "--out", str(args.out), "--device", args.device,
            *(["--quick"] if args.quick else []), *extra]


def env_commands(args: argparse.Namespace, limit: float) -> list[list[str]]:
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-cache-dir"]
    commands = []
    if args.install:
        wheels = sorted(str(w) for w in args.wheels.glob("*.whl"))
        if wheels:  # into a folder of their own (on PYTHONPATH), as the device notes advise
            commands.append([*pip, "--no-compile", "--upgrade", "--target", str(args.site), *wheels])
        commands.append([*pip, "--no-build-isolation", "-e", str(REPO)])  # the README's `pip install -e .`
    return [*commands, child(args, "env")]


def correctness_commands(args: argparse.Namespace, limit: float) -> list[list[str]]:
    return [[sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-m", "cuda or device",
             "--kml-device", args.device, "--junitxml", str(args.out / "correctness.xml"),
             *(["-k", QUICK_TESTS] if args.quick else []), *DEVICE_TEST_FILES]]


def speed_commands(args: argparse.Namespace, limit: float) -> list[list[str]]:
    return [child(args, "speed")]


def real_commands(args: argparse.Namespace, limit: float) -> list[list[str]]:
    return [child(args, "real", "--work", str(args.work), "--data-dir", str(args.data_dir), "--seconds", f"{limit:.0f}")]


STEPS = (
    Step("env", "1. Environment", 1, env_commands, ("env.json",)),
    Step("correctness", "2. Correctness on the device", 2, correctness_commands, ("correctness.xml",)),
    Step("speed", "3. Speed", 3, speed_commands, ("speed.json", "speed.png")),
    Step("real", "4. Real run", 4, real_commands, ("real.json", "real.png", "real_metrics.jsonl")),
)


def stop(process: subprocess.Popen) -> None:
    """End the step's child and everything it started (its own process group)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(step: Step, args: argparse.Namespace, limit: float, environment: dict) -> dict:
    """Run the step's commands in turn within `limit` seconds, their output into <step>.log."""
    record = {"name": step.name, "title": step.title, "limit_s": limit, "started": now(), "commands": []}
    for name in step.files:
        (args.out / name).unlink(missing_ok=True)
    start = time.monotonic()
    status = "ok"
    with open(args.out / f"{step.name}.log", "w") as log:
        if step.name == "env" and not args.install:
            log.write("install: skipped (no --install): the running Python's packages are used\n")
        for command in step.commands(args, limit):
            log.write(f"$ {shlex.join(command)}\n")
            log.flush()
            # A process group of its own, to end it with all it started; not a session of its own, which
            # would outlive a device call that ends first.
            process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, process_group=0)
            try:
                code = process.wait(timeout=max(0.0, start + limit - time.monotonic()))
            except subprocess.TimeoutExpired:
                stop(process)
                log.write(f"\n[cut short: the step's limit of {limit:.0f} s was reached]\n")
                record["commands"].append({"command": shlex.join(command), "exit": None})
                status = "cut short"
                break
            record["commands"].append({"command": shlex.join(command), "exit": code})
            if code != 0:
                status = "failed"  # and the step's next commands still run: each reports on its own
    record |= {"status": status, "seconds": time.monotonic() - start, "results": results(step, args.out)}
    return record


def results(step: Step, out: Path) -> dict | None:
    if step.name == "correctness":
        return gpu_report.junit_counts(out / "correctness.xml")
    return gpu_report.load_json(out / f"{step.name}.json")


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def machine() -> dict:
    """Where the check ran: host, CPU, GPU, driver, CUDA and torch versions (torch is imported, never
    initialised on the GPU here: the steps' children own the device)."""
    import torch

    facts = {"host": platform.node(), "system": platform.platform(), "python": platform.python_version(),
             "torch": torch.__version__, "cuda (torch)": torch.version.cuda, "cpu cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            facts["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        facts["cpu"] = platform.processor()
    try:
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        gpu, driver, memory = (part.strip() for part in query.stdout.splitlines()[0].split(","))
        facts |= {"gpu": gpu, "driver": driver, "gpu memory": memory}
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        facts["gpu"] = "none seen by nvidia-smi"
    return facts


def limits(text: list[str]) -> dict[str, float]:
    parsed = {}
    for item in text:
        name, _, seconds = item.partition("=")
        if name not in {s.name for s in STEPS} or not seconds:
            raise argparse.ArgumentTypeError(f"--limit {item}: expected STEP=SECONDS, STEP one of the steps")
        parsed[name] = float(seconds)
    return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kml.bench gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [s.name for s in STEPS]
    parser.add_argument("--steps", default=",".join(names), help=f"comma-separated, of {', '.join(names)}")
    parser.add_argument("--budget-minutes", type=float, default=8.0, help="for all the steps together")
    parser.add_argument("--limit", action="append", default=[], metavar="STEP=SECONDS",
                        help="a step's own limit instead of its share of the budget")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: the check of the check itself (the test suite runs it so, with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: every step in seconds")
    parser.add_argument("--install", action="store_true",
                        help="env step: pip install the wheels of --wheels and the project (-e) first")
    parser.add_argument("--out", type=Path, default=REPO / ".gpu" / "out", help="logs, results, summary")
    parser.add_argument("--mirror", type=Path, help="where the summary and logs.tar.gz are copied after each step")
    parser.add_argument("--work", type=Path, default=REPO / ".gpu" / "work",
                        help="real step: joined archives, prepared data, the run folder (large)")
    parser.add_argument("--data-dir", type=Path, default=REPO / ".gpu" / "data",
                        help="real step: the carried archives (or a tree like ../shared/data)")
    parser.add_argument("--wheels", type=Path, default=REPO / ".gpu" / "whl", help="--install: the wheels")
    parser.add_argument("--site", type=Path, default=REPO / ".gpu" / "site",
                        help="--install: where the wheels are installed (put on the steps' PYTHONPATH)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    chosen = [name for name in args.steps.split(",") if name]
    unknown = sorted(set(chosen) - {s.name for s in STEPS})
    if unknown:
        parser.error(f"--steps: unknown {', '.join(unknown)}")
    try:
        explicit = limits(args.limit)
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    for name in ("out", "work", "data_dir", "wheels", "site"):
        setattr(args, name, getattr(args, name).resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    selected = [s for s in STEPS if s.name in chosen]
    # The children import the project from this checkout, and the carried wheels from --site.
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO), str(args.site), *filter(None, [os.environ.get("PYTHONPATH")])]))
    environment.setdefault("PYTHONUNBUFFERED", "1")
    if args.quick:  # tiny networks: more threads only add synchronisation
        environment.setdefault("OMP_NUM_THREADS", "1")
    earlier = {s["name"]: s for s in (gpu_report.load_json(args.out / "summary.json") or {}).get("steps", [])}
    summary = {"command": "python -m kml.bench gpu " + shlex.join(argv if argv is not None else sys.argv[1:]),
               "started": now(), "finished": None, "device": args.device, "budget_minutes": args.budget_minutes,
               "machine": machine(), "steps": []}
    records = {s.name: earlier.get(s.name, {"name": s.name, "title": s.title, "status": "not run"}) for s in STEPS}
    for record in records.values():
        if record["status"] != "not run" and not record.get("earlier"):
            record["earlier"] = True  # from an earlier call into this --out
            record["status"] += " (earlier call)"
    for step in selected:  # until it has run: a summary of a call cut off says which steps it never reached
        records[step.name] = {"name": step.name, "title": step.title, "status": "pending"}
    summary["steps"] = list(records.values())
    gpu_report.write(args.out, summary, args.mirror)  # the machine's facts, even if the first step hangs
    reserve = 2 if args.quick else 15  # the last summary and the tar, after the last step
    deadline = time.monotonic() + 60 * args.budget_minutes - reserve
    for index, step in enumerate(selected):
        left = deadline - time.monotonic()
        shares = sum(s.share for s in selected[index:])
        limit = explicit.get(step.name, max(0.0, left) * step.share / shares)
        if limit <= 0:
            records[step.name] = {"name": step.name, "title": step.title, "status": "not run (budget spent)"}
            continue
        print(f"[{now()}] {step.title}: limit {limit:.0f} s", flush=True)
        records[step.name] = run_step(step, args, limit, environment)
        print(f"[{now()}] {step.title}: {records[step.name]['status']} in {records[step.name]['seconds']:.0f} s",
              flush=True)
        summary["steps"] = list(records.values())
        gpu_report.write(args.out, summary, args.mirror)
    summary |= {"steps": list(records.values()), "finished": now()}
    gpu_report.write(args.out, summary, args.mirror)
    print(gpu_report.render(summary), flush=True)
    return 0 if all(records[s.name]["status"] == "ok" for s in selected) else 1


def pack_main(argv: list[str] | None = None) -> int:
    from kml.bench.gpu_pack import pack_main as pack

    return pack(argv)
