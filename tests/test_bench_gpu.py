"""`python -m kml.bench gpu`, the GPU check, kept from rotting on a CPU: with --device cpu and tiny sizes
every step runs and writes its files, a step past its limit is stopped (with what it started) and marked
so while the next step still runs, and the summary lists every step. Also what the check leans on: the
data fallbacks, the sizing of the run and of the carried parts, and the device calls BENCHMARKS.md gives.
Nothing here times anything; the check's figures come from a GPU machine."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from kml.bench import gpu
from kml.bench.gpu_data import (
    MANIFEST,
    MINIIMAGENET,
    OMNIGLOT,
    STAND_IN,
    choose_data,
    part_name,
    split_archive,
)
from kml.bench.gpu_pack import CARRY_LIMIT, FALLBACK, MARGIN, device_calls, part_sizes
from kml.bench.gpu_real import MIN_ITERATIONS, plan_iterations
from tests.archives import SPLITS, colour_of, omniglot_drawing, solid_jpeg, write_tar_gz

REPO = Path(__file__).resolve().parents[1]


def omniglot_tar(path: Path, drawings: int = 3) -> Path:
    """Omniglot in the layout of ../shared/data's archive: ./images_{background,evaluation}/<alphabet>/
    <character>/*.png, all 1623 characters (the split needs them), `drawings` each."""
    png, files = omniglot_drawing(), {}
    for half, alphabets, characters in (("background", 30, 964), ("evaluation", 20, 659)):
        for k in range(characters):
            alphabet, character = f"{half.title()}_Script_{k % alphabets:02d}", f"character{k // alphabets + 1:02d}"
            for d in range(drawings):
                files[f"./images_{half}/{alphabet}/{character}/{k:04d}_{d + 1:02d}.png"] = png
    return write_tar_gz(path, files)


def miniimagenet_tar(path: Path, per_class: int = 3) -> Path:
    """mini-ImageNet in the layout of ../shared/data's archive: mini-imagenet/{train,val,test}/<wnid>/*.jpg."""
    files, index = {}, 0
    for split in ("train", "val", "test"):
        for wnid in SPLITS["miniimagenet"][split]:
            for i in range(per_class):
                files[f"mini-imagenet/{split}/{wnid}/{wnid}{i:08d}.jpg"] = solid_jpeg(colour_of(index))
            index += 1
    return write_tar_gz(path, files)


@pytest.fixture(scope="module")
def carried(tmp_path_factory) -> Path:
    """A .gpu/data as `gpu-pack` leaves it, tiny: Omniglot, and mini-ImageNet in two parts with their manifest."""
    folder = tmp_path_factory.mktemp("carried")
    omniglot_tar(folder / OMNIGLOT)
    whole = miniimagenet_tar(tmp_path_factory.mktemp("whole") / MINIIMAGENET)
    split_archive(whole, folder, [whole.stat().st_size // 2, 0])
    return folder


def check(tmp_path: Path, *options: str) -> tuple[int, dict]:
    out = tmp_path / "out"
    code = gpu.main(["--device", "cpu", "--quick", "--out", str(out), "--work", str(tmp_path / "work"),
                     "--budget-minutes", "10", *options])
    return code, json.loads((out / "summary.json").read_text())


def test_every_step_runs_on_a_cpu_and_writes_its_files(tmp_path, carried):
    mirror = tmp_path / "mirror"
    code, summary = check(tmp_path, "--data-dir", str(carried), "--mirror", str(mirror))
    out = tmp_path / "out"
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == ["env", "correctness", "speed", "real"]
    assert {name: s["status"] for name, s in steps.items()} == dict.fromkeys(steps, "ok")
    assert code == 0
    assert all(0 < s["limit_s"] <= 600 and s["seconds"] <= s["limit_s"] for s in steps.values())
    assert summary["machine"]["torch"] and summary["machine"]["python"] and summary["finished"]

    env = steps["env"]["results"]
    assert env["ceilings_tflops"]["fp32"] > 0 and env["ceilings_tflops"]["bf16"] > 0
    assert env["ceilings_tflops"]["tf32"] is None  # a CUDA mode
    assert "install: skipped" in (out / "env.log").read_text()

    tests = steps["correctness"]["results"]
    assert tests["passed"] == 3 and tests["failures"] == tests["errors"] == 0  # protonet_equals, 3 modulations

    speed = steps["speed"]["results"]
    assert [v["name"] for v in speed["variants"]] == ["default switches", "autocast bf16", "channels_last",
                                                       "tasks per pass 1", "compile eager"]
    methods = {"MAML", "MMAML+KML", "ProtoNet", "MProtoNet+KML"}
    default = speed["variants"][0]["rows"]
    assert {r["method"] for r in default if r["path"] == "batched"} == methods
    assert {r["method"] for r in default if r["path"] == "per-task"} == methods
    if speed["higher"] == "imports":
        assert {r["method"] for r in default if r["path"] == "higher"} == {"MAML", "MMAML+KML"}
    for variant in speed["variants"]:
        assert "error" not in variant, variant
        assert {r["method"] for r in variant["rows"]} == methods
        assert all(r["ms"] > 0 and r["gflop"] > 0 and r["order"] in ("2nd", "-") for r in variant["rows"])
    for variant in speed["variants"][1:]:
        assert {r["path"] for r in variant["rows"]} == {"batched"}

    real = steps["real"]["results"]
    assert real["data_kind"] == "full" and "joined from 2 parts (sha256 checked)" in real["data"]
    assert real["data"] in (out / "real.log").read_text()  # the log says which data it used
    assert set(real["prepare_s"]) == {"omniglot", "miniimagenet"}
    probe = real["probe"]
    assert probe["with_data_ms"] > 0 and probe["without_data_ms"] > 0 and probe["sampling_ms"] > 0
    assert real["run"]["finished"] and real["run"]["iterations_done"] == real["plan"]["iterations"] == 4
    assert real["run"]["loop_ms_per_iteration"] > 0
    assert real["run"]["test"]["overall"]["n"] == 2 * real["plan"]["test_tasks_per_mode"]
    assert set(real["run"]["test"]["per_mode"]) == {"omniglot", "miniimagenet"}
    assert len((out / "real_metrics.jsonl").read_text().splitlines()) >= 4

    written = {p.name for p in out.iterdir()}
    logs = {f"{name}.log" for name in steps}
    assert logs | {"env.json", "correctness.xml", "speed.json", "speed.png", "real.json", "real.png",
                   "summary.md", "summary.json", "logs.tar.gz"} <= written
    assert all(p.is_file() and re.fullmatch(r"[A-Za-z0-9._-]+", p.name) for p in out.iterdir())  # flat, plain
    with tarfile.open(out / "logs.tar.gz") as tar:
        assert logs | {"speed.json", "real.json"} <= set(tar.getnames())
    assert {"summary.md", "summary.json", "logs.tar.gz", "speed.png", "real.png"} == {p.name for p in mirror.iterdir()}
    markdown = (out / "summary.md").read_text()
    for step in steps.values():
        assert f"| {step['title']} | **ok** |" in markdown
    for text in (summary["machine"]["torch"], "Matmul ceiling", "3 passed", "| compile eager | ProtoNet | batched |",
                 "Data: Omniglot", "ms per iteration with the sampler", "Test (8 tasks)"):
        assert text in markdown, text


def test_a_step_past_its_limit_is_cut_short_and_the_next_still_runs(tmp_path, monkeypatch):
    """The env step replaced by one that starts a grandchild and sleeps: at its 3 s limit both are ended,
    its log keeps what it printed, and correctness still runs. A later call into the same --out keeps the
    records of the steps it does not run."""
    sleeper = ("import subprocess, sys, time; grandchild = subprocess.Popen([sys.executable, '-c', "
               "'import time; time.sleep(120)']); print('pids', grandchild.pid, flush=True); time.sleep(120)")
    steps = tuple(dataclasses.replace(s, commands=lambda args, limit: [[sys.executable, "-c", sleeper]])
                  if s.name == "env" else s for s in gpu.STEPS)
    monkeypatch.setattr(gpu, "STEPS", steps)
    code, summary = check(tmp_path, "--steps", "env,correctness", "--limit", "env=3")
    statuses = {s["name"]: s["status"] for s in summary["steps"]}
    assert statuses == {"env": "cut short", "correctness": "ok", "speed": "not run", "real": "not run"}
    assert code == 1
    log = (tmp_path / "out" / "env.log").read_text()
    assert "[cut short: the step's limit of 3 s was reached]" in log
    grandchild = int(re.search(r"pids (\d+)", log).group(1))
    assert not alive(grandchild)  # ended with its step (it would sleep two minutes)
    assert "**cut short**" in (tmp_path / "out" / "summary.md").read_text()

    _, later = check(tmp_path, "--steps", "env", "--limit", "env=1")
    statuses = {s["name"]: s["status"] for s in later["steps"]}
    assert statuses == {"env": "cut short", "correctness": "ok (earlier call)", "speed": "not run",
                        "real": "not run"}


def alive(pid: int) -> bool:
    """Running (a zombie that no init reaps has ended too)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state != "Z"


def test_the_real_run_says_which_data_it_falls_back_to(tmp_path):
    data, whole = tmp_path / "data", tmp_path / MINIIMAGENET
    data.mkdir()
    (data / OMNIGLOT).write_bytes(b"omniglot")
    whole.write_bytes(bytes(range(256)) * 8)
    split_archive(whole, data, [1000, 0])
    full = choose_data(data, tmp_path / "work")
    assert (full.kind, full.benchmark) == ("full", "2mode")
    assert full.archives["miniimagenet"].read_bytes() == whole.read_bytes()  # joined as it was cut

    (data / part_name(2)).unlink()  # the second call found a fresh machine
    assert choose_data(data, tmp_path / "work2").kind == "synthetic"
    (data / STAND_IN).write_bytes(b"stand-in")
    stand_in = choose_data(data, tmp_path / "work2")
    assert (stand_in.kind, stand_in.benchmark) == ("stand-in", "2mode")
    assert part_name(2) in stand_in.note and "STAND-IN" in stand_in.note

    (data / part_name(2)).write_bytes(b"x" * (whole.stat().st_size - 1000))  # right size, wrong bytes
    damaged = choose_data(data, tmp_path / "work3")
    assert damaged.kind == "stand-in" and "sha256" in damaged.note
    (data / OMNIGLOT).unlink()
    nothing = choose_data(data, tmp_path / "work3")
    assert nothing.benchmark == "synthetic" and OMNIGLOT in nothing.note


def test_the_run_takes_the_time_left_and_at_least_300_iterations():
    assert plan_iterations(10, 1.0, 0.01, 300) == MIN_ITERATIONS
    assert plan_iterations(600, 0.2, 0.02, 300) > plan_iterations(300, 0.2, 0.02, 300) > MIN_ITERATIONS


def test_the_archive_parts_fit_the_device_calls():
    tree, wheels, omniglot, archive = 3_400_000, 420_000, 6_434_044, 118_661_211  # as of packing, bytes
    sizes = part_sizes(archive, tree + wheels + omniglot, tree)
    assert len(sizes) == 2 and sum(sizes) == archive
    assert tree + wheels + omniglot + sizes[0] <= CARRY_LIMIT - MARGIN
    assert tree + sizes[1] <= CARRY_LIMIT - MARGIN
    assert len(part_sizes(archive, 40 * 2**20, 40 * 2**20)) == 5  # a bigger tree: more calls
    assert [c.steps for c in device_calls(3)] == ["env,correctness,speed", "env", "env,real"]


def test_benchmarks_md_gives_the_calls_gpu_pack_prints():
    text = (REPO / "BENCHMARKS.md").read_text()
    calls = [*device_calls(2), FALLBACK]
    for call in calls:
        assert call.command in text and json.dumps(list(call.carry)) in text and f"{call.timeout_s}" in text
        assert len(call.command) < 2000
    assert MANIFEST in text
    # 15 minutes of device time hold a start (up to two minutes), both calls and a rerun of either, each
    # call taking its budget and ~20 s more (the interpreter, the transfers); its timeout_s caps it.
    seconds = [60 * c.budget_minutes + 20 for c in calls[:2]]
    assert 120 + sum(seconds) + max(seconds) <= 15 * 60
    assert all(60 * c.budget_minutes + 20 < c.timeout_s for c in calls)


def test_device_test_files_lists_every_test_that_takes_a_device():
    """The correctness step collects only DEVICE_TEST_FILES; a test file with a `cuda`-marked test or a
    test taking `device` must be listed there."""
    takes_device = re.compile(r"def test_\w+\([^)]*\bdevice\b|pytest\.mark\.cuda")
    found = {f"tests/{p.name}" for p in (REPO / "tests").glob("test_*.py") if takes_device.search(p.read_text())}
    found.discard("tests/test_bench_gpu.py")  # the regex itself, above
    assert found == set(gpu.DEVICE_TEST_FILES)


def test_the_check_starts_without_the_dependencies_it_installs():
    """On a bare GPU machine hydra and omegaconf arrive with the env step: the entry and the env step's
    child must import without them."""
    script = ("import sys; sys.modules['omegaconf'] = None; sys.modules['hydra'] = None\n"
              "from kml.bench import cli, gpu, gpu_steps, gpu_data, gpu_report\n"
              "cli.main(['gpu', '--help'])")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--budget-minutes" in done.stdout
