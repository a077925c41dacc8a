"""Integration tests on a real SLURM cluster: Hydra multirun sweeps submitted by `launch.py -m
hydra/launcher=submitit_slurm`, and requeue on SLURM's time-limit signal with resume from last.pt.

Start a local single-node cluster first (as root): `bash tests/slurm/start_cluster.sh`, then
`.venv/bin/python -m pytest -m slurm tests/test_slurm.py`. Without a cluster every test skips.
On a real cluster, point KML_SLURM_PARTITION at a CPU partition and KML_SLURM_TMP at a folder that the
compute nodes share (the runs and the data are written there).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from omegaconf import OmegaConf

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
PARTITION = os.environ.get("KML_SLURM_PARTITION", "debug")
IMAGE_SIZE = 16
SYNTHETIC_MODES = {"synthetic_glyphs", "synthetic_shapes", "synthetic_gratings"}
EVAL_TASKS = 20
# A few seconds per job: protonet without modulation, 8-channel Conv4 at 16 px, 20 iterations.
TINY_RUN = ["learner=protonet", "modulation=none", "backbone.channels=8", f"image_size={IMAGE_SIZE}",
            "train.iterations=20", "train.val_every=10", "train.val_tasks_per_mode=10",
            f"eval.tasks_per_mode={EVAL_TASKS}", "train.meta_batch=2", "logger.mode=disabled"]
# About 100 s of training on one core, however fast that core is: slurmctld checks time limits every 30 s and
# (Slurm 22.05) sends USR2 at the first check that is at most 30 s before `limit - signal_delay_s`: with
# timeout_min=1 and signal_delay_s=10, each stretch of the job lasts 20 to 50 s (a requeued one, restarted ~15 s
# after the check that requeued it, usually ~45 s), so the job is requeued once to three times. A fixed
# iteration count was machine-bound (1800 iterations took 70 s on one machine, 39 s on another), so the
# `long_run` fixture measures this machine's speed on a short run of the same configuration first.
# last.pt is written every 25 iterations (and every 3 s), so each requeued stretch resumes past iteration 0.
LONG_RUN = ["learner=protonet", "modulation=none", "backbone.channels=16", f"image_size={IMAGE_SIZE}",
            "train.val_tasks_per_mode=10", f"eval.tasks_per_mode={EVAL_TASKS}", "train.meta_batch=4",
            "train.checkpoint_every=25", "train.checkpoint_minutes=0.05", "logger.mode=disabled"]
LONG_RUN_SECONDS = 100
CALIBRATION_ITERATIONS = 300
JOB_ID = re.compile(r"^\d+(_\d+)?$")


def _slurm_overrides(partition: str) -> list[str]:
    return ["hydra/launcher=submitit_slurm", f"hydra.launcher.partition={partition}",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]


@pytest.fixture(scope="module")
def partition() -> str:
    if shutil.which("sinfo") is None:
        pytest.skip("SLURM is not installed (no `sinfo`): start a local cluster with "
                    "`sudo bash tests/slurm/start_cluster.sh`")
    try:
        out = subprocess.run(["sinfo", "-h", "-p", PARTITION, "-o", "%t"], capture_output=True, text=True,
                             timeout=30)
    except subprocess.TimeoutExpired:
        pytest.skip("the SLURM cluster does not answer: `sinfo` took over 30 s")
    if out.returncode != 0:
        pytest.skip(f"the SLURM cluster does not answer: sinfo: {out.stderr.strip() or out.returncode}")
    states = out.stdout.split()  # a trailing '*' means not responding; down/drain nodes take no jobs
    if not any(state in ("idle", "mix", "alloc") for state in states):
        pytest.skip(f"partition {PARTITION!r} has no usable node (sinfo states: {states or 'none'}); "
                    "set KML_SLURM_PARTITION or run tests/slurm/start_cluster.sh")
    return PARTITION


@pytest.fixture(scope="module")
def shared_tmp(tmp_path_factory) -> Path:
    """Where runs and data go: a folder the compute nodes see (the same machine, for the local cluster)."""
    if os.environ.get("KML_SLURM_TMP"):
        path = Path(os.environ["KML_SLURM_TMP"]) / f"kml-slurm-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        yield path
        shutil.rmtree(path, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("slurm")


@pytest.fixture(scope="module")
def data_root(shared_tmp, partition) -> Path:
    """The synthetic benchmark, generated once here so that concurrent jobs do not race to generate it."""
    from kml.data import synthetic

    root = shared_tmp / "data"
    synthetic.ensure(root, IMAGE_SIZE)
    return root


@pytest.fixture(scope="module")
def long_run(data_root, shared_tmp) -> list[str]:
    """LONG_RUN with as many iterations as take LONG_RUN_SECONDS here, timed on a short run outside SLURM
    (one thread, as the job gets) between its first and last logged training steps."""
    run_dir = shared_tmp / "calibration"
    command = [_python(), "launch.py", *LONG_RUN, f"train.iterations={CALIBRATION_ITERATIONS}",
               f"train.val_every={CALIBRATION_ITERATIONS}", f"data.root={data_root}", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"the calibration run failed\n{_tail(proc.stdout)}{_tail(proc.stderr)}"
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in steps if "train/loss" in row]
    rate = (steps[-1]["step"] - steps[0]["step"]) / (steps[-1]["time"] - steps[0]["time"])
    iterations = max(CALIBRATION_ITERATIONS, 100 * math.ceil(rate * LONG_RUN_SECONDS / 100))
    return [*LONG_RUN, f"train.iterations={iterations}", f"train.val_every={iterations}"]


@pytest.fixture
def sweep_dir(shared_tmp):
    path = shared_tmp / f"sweep-{uuid.uuid4().hex[:8]}"
    yield path
    _cancel_jobs(path)  # only matters when the test failed or timed out with jobs still queued
    shutil.rmtree(path, ignore_errors=True)


def _submitit_folders(sweep_dir: Path) -> list[str]:
    """Names of .submitit/<SLURM job id> folders: an array's own id (its sbatch script) and each task's."""
    folder = sweep_dir / ".submitit"
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and JOB_ID.match(p.name)) \
        if folder.is_dir() else []


def _job_ids(sweep_dir: Path) -> list[str]:
    """SLURM ids of the jobs submitit ran (one per sweep job; `ARRAY_TASK` for arrays)."""
    return [name for name in _submitit_folders(sweep_dir)
            if (sweep_dir / ".submitit" / name / f"{name}_submitted.pkl").is_file()]


def _cancel_jobs(sweep_dir: Path) -> None:
    ids = _submitit_folders(sweep_dir)
    if ids:  # only those still queued or running: a finished job's record stays as it ended
        subprocess.run(["scancel", "--state=PENDING,RUNNING,SUSPENDED", *ids], capture_output=True, timeout=30)


def _python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _launch(overrides: list[str], sweep_dir: Path, timeout: float) -> subprocess.CompletedProcess:
    """`python launch.py -m OVERRIDES` from the repository root, as a user would run it."""
    # One intra-op thread per job, as cpus_per_task=1 asks (torch would otherwise use every core of the node).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [_python(), "launch.py", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    try:
        return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the sweep did not finish in {timeout:.0f} s (squeue: {_squeue(sweep_dir)})\n"
                    f"{_tail(err.stdout)}{_tail(err.stderr)}\n{_job_logs(sweep_dir)}")


def _squeue(sweep_dir: Path) -> str:
    ids = _submitit_folders(sweep_dir)
    if not ids:
        return "no job submitted"
    out = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T %r"], capture_output=True, text=True,
                         timeout=30)
    return out.stdout.strip() or "no job left in the queue"


def _tail(text: str | bytes | None, lines: int = 30) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    # Without slurmdbd, submitit's status polls through sacct fail harmlessly (it waits for the result files).
    kept = [line for line in (text or "").splitlines() if "sacct" not in line
            and "accounting storage is disabled" not in line]
    return "\n".join(kept[-lines:]) + "\n"


def _job_logs(sweep_dir: Path) -> str:
    out = []
    for path in sorted((sweep_dir / ".submitit").glob("*/*_log.*")):
        out.append(f"--- {path.name}\n{_tail(path.read_text(errors='replace').replace(chr(13), chr(10)), 15)}")
    return "".join(out) or "no job logs"


def _run_folders(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in sweep_dir.glob("*/results.json"))


def _check_results(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["per_mode"]) == SYNTHETIC_MODES
    for stats in [results["overall"], *results["per_mode"].values()]:
        assert 0.0 <= stats["mean"] <= 1.0 and stats["ci95"] >= 0.0
    assert {stats["n"] for stats in results["per_mode"].values()} == {EVAL_TASKS}
    assert results["overall"]["n"] == EVAL_TASKS * len(SYNTHETIC_MODES)
    assert (results["benchmark"], results["way"], results["shot"]) == ("synthetic", 5, 1)
    return results


def _submitit_log(sweep_dir: Path, job_id: str) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((sweep_dir / ".submitit" / job_id).glob("*_log.out")))


def test_sweep_runs_each_job_through_slurm(partition, data_root, sweep_dir):
    name = f"slurm_sweep_{uuid.uuid4().hex[:8]}"
    proc = _launch([*_slurm_overrides(partition), "seed=0,1", *TINY_RUN, f"data.root={data_root}", f"name={name}"],
                   sweep_dir, timeout=240)
    report = f"{_tail(proc.stdout)}{_tail(proc.stderr)}\n{_job_logs(sweep_dir)}"
    assert proc.returncode == 0, report

    run_dirs = _run_folders(sweep_dir)
    assert len(run_dirs) == 2, report
    seeds = set()
    for run_dir in run_dirs:
        _check_results(run_dir)
        assert (run_dir / "metrics.jsonl").is_file() and (run_dir / "last.pt").is_file()
        config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        assert config.name == name and Path(config.data.root) == data_root
        seeds.add(config.seed)
    assert seeds == {0, 1}

    # Through SLURM: one sbatch array of two tasks, each started by SLURM's srun with its SLURM job id.
    job_ids = _job_ids(sweep_dir)
    array_ids = {job_id.split("_")[0] for job_id in job_ids}
    assert len(job_ids) == 2 and len(array_ids) == 1, job_ids
    submission = next((sweep_dir / ".submitit").glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --array=0-1" in submission and f"#SBATCH --partition={partition}" in submission
    for job_id in job_ids:
        log = _submitit_log(sweep_dir, job_id)
        assert f"Starting with JobEnvironment(job_id={job_id}," in log, report
        assert "Job completed successfully" in log, report


def test_timeout_requeues_the_job_which_resumes_from_last_checkpoint(partition, data_root, long_run,
                                                                       sweep_dir):
    # SLURM sends USR2 ahead of the 1-minute limit; submitit calls the launcher's checkpoint(), requeues the
    # job (up to max_num_timeout times), and the requeued job finds last.pt in the same run folder.
    overrides = [*_slurm_overrides(partition), "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=10",
                 "hydra.launcher.max_num_timeout=10", "seed=0", *long_run, f"data.root={data_root}",
                 f"name=slurm_requeue_{uuid.uuid4().hex[:8]}"]
    proc = _launch(overrides, sweep_dir, timeout=480)
    report = f"{_tail(proc.stdout)}{_tail(proc.stderr)}\n{_job_logs(sweep_dir)}"
    assert proc.returncode == 0, report

    run_dirs = _run_folders(sweep_dir)
    assert len(run_dirs) == 1, report
    _check_results(run_dirs[0])
    [job_id] = _job_ids(sweep_dir)
    log = _submitit_log(sweep_dir, job_id)
    # submitit's own lines start with "submitit " (Hydra's logging repeats some of them in its own format).
    requeues = re.findall(r"^submitit INFO .* - Requeued job \S+ \((\d+) remaining timeouts\)", log, flags=re.M)
    assert requeues, ("the job finished before SLURM's time-limit signal reached it (training was faster than "
                      "the calibration run measured: raise LONG_RUN_SECONDS)\n" + report)
    assert "this job is timed-out" in log, report
    resumes = [(Path(path), int(it)) for path, it in re.findall(r"resuming from (.+) at iteration (\d+)", log)]
    assert resumes and all(path == run_dirs[0] / "last.pt" for path, _ in resumes), report
    assert max(it for _, it in resumes) > 0, report
    starts = re.findall(rf"^submitit INFO .* - Starting with JobEnvironment\(job_id={job_id},", log, flags=re.M)
    assert len(starts) == len(requeues) + 1, report
    assert "Job completed successfully" in log, report

    # slurmctld's own record, where the cluster keeps one (tests/slurm/start_cluster.sh writes jobcomp/filetxt):
    # each requeued run of the job is logged when it ends (the last run's line may still be on its way).
    jobcomp = _jobcomp_file()
    if jobcomp is not None and "_" not in job_id:
        records = [line for line in jobcomp.read_text(errors="replace").splitlines()
                   if line.startswith(f"JobId={job_id} ")]
        assert len(records) >= len(requeues), records


def _jobcomp_file() -> Path | None:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    config = dict(re.findall(r"^(\w+)\s*=\s*(.*?)\s*$", out.stdout, flags=re.M))
    path = Path(config.get("JobCompLoc", ""))
    return path if config.get("JobCompType") == "jobcomp/filetxt" and path.is_file() else None
