"""The laptop-scale studies of RESULTS.md, run in chunks that fit a working session, their small files kept in
git so that they continue on any machine where they stopped.

    python -m kml.study status             the study's runs, done and to go (and its PLAN.md)
    python -m kml.study run --hours 2      run the next runs, two one-thread runs side by side, never starting
                                           one that would not finish within the hours; each finished run's
                                           small files go to <folder>/runs/ and are committed (--no-commit)
    python -m kml.study report             rebuild every table and figure under <folder>/ from those files
                                           (kml/analysis/study_report.py)
    ... --study 2mode_5shot                another study (default 2mode_1shot; schedule, schedule_maml)

A study is data: conf/study/<name>.yaml names its sweeps (conf/experiment/) and its folder (docs/study for
the 1-shot study); a study whose runs are tested along the way (eval.at) lists those iterations
(`tested_at`: the report adds at_<iteration>/ and schedule.png) and may name a study whose runs its own must
equal where they meet (`same_as`: same_as_<study>.md), and lists the paired differences its report tables
(`differences`: differences.md) and, tested along the way, how far to extrapolate their trend
(`extrapolate_to`: trend.md). The runs are the jobs of those sweeps, each started as
`launch.py experiment=E <its overrides>` in outputs/study/E/<overrides> (so a stopped run resumes there from
last.pt on the same machine). The small files of a finished run are results.json, test_tasks.npz,
metrics.jsonl, .hydra/{overrides,config}.yaml, transference/**/*.npz, milestones/*/{results.json,test_tasks.npz}
and timing.json (its wall time).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from kml.config import CONF_DIR, compose, folder_name
from kml.errors import ConfigError
from kml.run import run_lock

REPO = Path(__file__).resolve().parents[2]
DEFAULT_STUDY = "2mode_1shot"
SMALL_FILES = ("results.json", "test_tasks.npz", "metrics.jsonl", ".hydra/overrides.yaml", ".hydra/config.yaml",
               "transference/**/*.npz", "milestones/*/results.json", "milestones/*/test_tasks.npz")
# Seconds per training iteration with one thread at 32 px, meta-batch 10, on this project's 2-core VM, for a
# first estimate until runs of the kind have finished. 1-shot: python -m kml.bench train --image-size 32.
# 5-shot: 40-iteration runs of each study row with the other core busy (2026-12-06, issue 27), plus their
# validation and test time spread over 1,200 iterations (MAML's 5-step inner loop on 25 images: ~0.1 s a task).
# MAML 5-shot lowered to what the two finished MAML runs took (58.7 min against 78 estimated), FiLM and KML kept
# in the probe's ratio to it.
SECONDS_PER_ITERATION = {("maml", "none", 1): 1.15, ("maml", "film", 1): 1.25, ("maml", "kml", 1): 1.35,
                         ("protonet", "none", 1): 0.47, ("protonet", "film", 1): 0.52, ("protonet", "kml", 1): 0.6,
                         ("maml", "none", 5): 2.45, ("maml", "film", 5): 2.6, ("maml", "kml", 5): 2.75,
                         ("protonet", "none", 5): 0.75, ("protonet", "film", 5): 0.7, ("protonet", "kml", 5): 0.75}
# The query-set task embedding runs the encoder and the modulated backbone a second time (1-shot: 18 against
# 12 minutes; 5-shot probe: 0.94 against 0.60 s an iteration).
QUERY_EMBEDDING_FACTOR = 1.5


@dataclass(frozen=True)
class Study:
    """conf/study/<name>.yaml: the sweeps a study runs and the folder of its small files and report."""

    name: str
    experiments: tuple[str, ...]
    folder: Path
    tested_at: tuple[int, ...] = ()
    same_as: str | None = None
    differences: tuple[tuple[str, str], ...] = ()
    extrapolate_to: int | None = None

    @classmethod
    def load(cls, name: str) -> Study:
        path = CONF_DIR / "study" / f"{name}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in path.parent.glob("*.yaml"))
            raise ConfigError(f"no study {name!r}; choose one of: {', '.join(known)} (conf/study/)")
        node = OmegaConf.load(path)
        return cls(name, tuple(node.experiments), REPO / node.folder, tuple(node.get("tested_at") or ()),
                   node.get("same_as"), tuple(tuple(pair) for pair in node.get("differences") or ()),
                   node.get("extrapolate_to"))


@dataclass(frozen=True)
class Job:
    experiment: str
    overrides: tuple[str, ...]

    @property
    def folder(self) -> str:
        return folder_name(",".join(self.overrides))

    @property
    def kind(self) -> tuple[str, str, str]:
        """(experiment, learner, modulation): runs of one kind take about as long."""
        values = dict(o.split("=", 1) for o in self.overrides)
        return self.experiment, values.get("learner", "maml"), values.get("modulation", "kml")

    def small_files(self, study: Path) -> Path:
        return study / "runs" / self.experiment / self.folder

    def done(self, study: Path) -> bool:
        return (self.small_files(study) / "results.json").is_file()

    def timing(self, study: Path) -> dict | None:
        """The finished run's timing.json ({"seconds", "resumed"}), if it has one."""
        path = self.small_files(study) / "timing.json"
        return json.loads(path.read_text()) if path.is_file() else None


def jobs(experiments: tuple[str, ...] | None = None) -> list[Job]:
    """Every job of the sweeps (default: the default study's), as Hydra's basic sweeper expands them."""
    experiments = Study.load(DEFAULT_STUDY).experiments if experiments is None else experiments
    found = []
    for experiment in experiments:
        cfg = compose([f"experiment={experiment}"], return_hydra_config=True)
        params = cfg.hydra.sweeper.params or {}
        grid = [[f"{key}={value}" for value in str(values).split(",")] for key, values in sorted(params.items())]
        found += [Job(experiment, tuple(sorted(job))) for job in itertools.product(*grid)]
    return found


def estimate(job: Job, study: Path, done: list[Job]) -> float:
    """Seconds: the mean wall time of finished runs of the same kind, else the per-iteration table."""
    timings = [j.timing(study) for j in done if j.kind == job.kind]
    seen = [t["seconds"] for t in timings if t and not t.get("resumed")]  # a resumed run's time: its last part
    if seen:
        return sum(seen) / len(seen)
    cfg = compose([f"experiment={job.experiment}", *job.overrides])
    _, learner, modulation = job.kind
    per_iteration = SECONDS_PER_ITERATION.get((learner, modulation, int(cfg.shot)), 1.4 * int(cfg.shot))
    if cfg.learner.get("query_task_embedding") and modulation != "none":
        per_iteration *= QUERY_EMBEDDING_FACTOR
    measurements = len(cfg.transference.iterations) if "transference" in (cfg.get("hooks") or {}) else 0
    milestones = len([step for step in cfg.eval.at if step < int(cfg.train.iterations)])
    return 1.15 * per_iteration * int(cfg.train.iterations) + 150 + 200 * measurements + 60 * milestones


def write_plan(study: Path, all_jobs: list[Job]) -> str:
    """docs/study/PLAN.md: every run, done (with its wall time) or to go (with its estimate)."""
    done = [j for j in all_jobs if j.done(study)]
    lines = ["# The study's runs: done and to go", "",
             "Written by `python -m kml.study status` / `run`; each run's small files are under `runs/`.", "",
             "| experiment | run | state | minutes |", "|---|---|---|---:|"]
    left = spent = 0.0
    for job in all_jobs:
        if job.done(study):
            took = job.timing(study) or {"seconds": float("nan")}
            state = "done (resumed: minutes of the last part)" if took.get("resumed") else "done"
            lines.append(f"| {job.experiment} | {job.folder} | {state} | {took['seconds'] / 60:.0f} |")
            # A resumed run's first part was not timed: count it as long as the estimate for its kind.
            spent += estimate(job, study, done) if took.get("resumed") else took["seconds"]
        else:
            seconds = estimate(job, study, done)
            left += seconds
            lines.append(f"| {job.experiment} | {job.folder} | to go | ~{seconds / 60:.0f} |")
    summary = (f"{len(done)} of {len(all_jobs)} runs done in about {spent / 3600:.1f} CPU-hours; "
               f"about {left / 3600:.1f} CPU-hours to go "
               f"({left / 7200:.1f} hours with two one-thread runs side by side).")
    lines += ["", summary, ""]
    study.mkdir(parents=True, exist_ok=True)
    (study / "PLAN.md").write_text("\n".join(lines))
    return summary


def keep_small_files(run_dir: Path, target: Path, seconds: float, resumed: bool) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for pattern in SMALL_FILES:
        for file in run_dir.glob(pattern):
            destination = target / file.relative_to(run_dir)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, destination)
    (target / "timing.json").write_text(json.dumps({"seconds": round(seconds, 1), "resumed": resumed}))


def commit_files(paths: list[Path], message: str, attempts: int = 5) -> None:
    """Commit these paths only (`git commit -- paths`: whatever else is staged stays staged), retrying while
    another git command holds the index."""
    names = [str(p) for p in paths]
    for attempt in range(attempts):
        added = subprocess.run(["git", "add", *names], cwd=REPO, capture_output=True, text=True)
        committed = added.returncode == 0 and subprocess.run(
            ["git", "commit", "-q", "-m", message, "--", *names], cwd=REPO, capture_output=True, text=True
        ).returncode == 0
        if committed:
            return
        time.sleep(2 + 3 * attempt)
    print(f"study: could not commit {' '.join(names)}; commit them yourself", flush=True)


def run(study: Path, hours: float, workers: int, extra: list[str], commit: bool, outputs: Path,
        experiments: tuple[str, ...] | None = None) -> int:
    """Run the pending jobs of `experiments` (default: the default study's) in `workers` one-thread queues until
    none is left that fits the time; returns how many finished."""
    all_jobs = jobs(experiments)
    pending = [j for j in all_jobs if not j.done(study)]
    deadline = time.monotonic() + 3600 * hours
    lock, finished, failures = threading.Lock(), [], []

    def next_job() -> Job | None:
        with lock:
            done = [j for j in all_jobs if j.done(study)]
            for job in list(pending):
                if run_lock.held(outputs / job.experiment / job.folder):
                    pending.remove(job)  # another runner (or a hand-started launch.py) has it
                    print(f"study: skip {job.experiment} {job.folder}: running in another process", flush=True)
                elif time.monotonic() + estimate(job, study, done) <= deadline:
                    pending.remove(job)
                    return job
            return None

    def worker() -> None:
        while (job := next_job()) is not None:
            run_dir = outputs / job.experiment / job.folder  # experiments share overrides (and so folder names)
            command = [sys.executable, str(REPO / "launch.py"), f"experiment={job.experiment}", *job.overrides,
                       *extra, f'hydra.run.dir="{run_dir}"', "logger.mode=disabled"]  # quoted: the folder has = and ,
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_SILENT": "true"}
            resumed = (run_dir / "last.pt").is_file()  # a chunk stopped mid-run: launch.py resumes from it
            started = time.monotonic()
            print(f"study: start {job.experiment} {job.folder}", flush=True)
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir.with_name(f"{job.folder}.log"), "w") as log:
                done = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            seconds = time.monotonic() - started
            if done.returncode != 0:
                failures.append(job)
                print(f"study: FAILED {job.experiment} {job.folder} (exit {done.returncode}; "
                      f"see {run_dir.with_name(job.folder + '.log')})", flush=True)
                continue
            with lock:
                keep_small_files(run_dir, job.small_files(study), seconds, resumed)
                finished.append(job)
                summary = write_plan(study, all_jobs)
                print(f"study: done {job.experiment} {job.folder} in {seconds / 60:.1f} min; {summary}", flush=True)
                if commit:
                    commit_files([job.small_files(study), study / "PLAN.md"],
                                 f"study: {job.experiment} {job.folder} ({seconds / 60:.0f} min)")

    outputs.mkdir(parents=True, exist_ok=True)
    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
        time.sleep(1)  # the two first jobs are not taken in the same instant
    for thread in threads:
        thread.join()
    print(f"study: {len(finished)} runs finished, {len(failures)} failed; {write_plan(study, all_jobs)}")
    return len(finished)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kml.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["status", "run", "report"])
    parser.add_argument("--study", default=DEFAULT_STUDY, help="which study (conf/study/NAME.yaml)")
    parser.add_argument("--hours", type=float, default=2.0, help="run: start no run that would end later")
    parser.add_argument("--workers", type=int, default=2, help="run: one-thread runs side by side")
    parser.add_argument("--no-commit", action="store_true", help="run: leave the finished runs' files uncommitted")
    parser.add_argument("--study-dir", help="where the small files live (default: the study's folder)")
    parser.add_argument("--outputs", default=str(REPO / "outputs" / "study"), help="the runs' own folders")
    parser.add_argument("extra", nargs="*", help="run: further overrides for every run (e.g. debug=tiny)")
    args = parser.parse_args(argv)
    try:
        chosen = Study.load(args.study)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    study = Path(args.study_dir) if args.study_dir else chosen.folder
    if args.command == "status":
        print(write_plan(study, jobs(chosen.experiments)))
        return 0
    if args.command == "run":
        run(study, args.hours, args.workers, args.extra, not args.no_commit, Path(args.outputs), chosen.experiments)
        return 0
    from kml.analysis.study_report import report  # matplotlib: only for the report

    return report(study, chosen.tested_at, Study.load(chosen.same_as).folder if chosen.same_as else None,
                  chosen.differences, chosen.extrapolate_to)

