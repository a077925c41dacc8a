"""One process per run folder (kml/run_lock.py): a second job stops with one line, a dead holder's lock is
taken over, and a file system without locks only warns. The kill-and-resume test of test_runner.py runs
the stale-lock case through launch.py."""
import errno
import json
import os
import signal
import socket
import time

import pytest
from omegaconf import OmegaConf

from kml.errors import RunFolderLocked
from kml.run import run_lock
from kml.run.run_lock import RunLock
from tests.runs import error_line, launch, start, tiny_overrides


def holder(run_dir) -> dict:
    return json.loads((run_dir / "run.lock").read_text())


def holds_lock(run_dir, pid: int) -> bool:
    try:
        return holder(run_dir)["pid"] == pid
    except (OSError, ValueError):  # not created, or its holder has not written its details yet
        return False


def test_a_held_folder_is_refused_with_the_holder_until_released(tmp_path):
    first = RunLock(tmp_path)
    first.acquire()
    assert holder(tmp_path)["pid"] == os.getpid()
    # flock conflicts between two open files even within one process, so one process can play both jobs.
    with pytest.raises(RunFolderLocked, match=rf"in use by process {os.getpid()} on host {socket.gethostname()} "
                                              r"since .*hydra\.run\.dir="):
        RunLock(tmp_path).acquire()
    first.release()
    second = RunLock(tmp_path)
    second.acquire()
    second.release()


def test_a_lock_file_without_a_live_holder_is_taken_over(tmp_path):
    (tmp_path / "run.lock").write_text(json.dumps({"pid": 1, "host": "gone", "since": "yesterday"}))
    lock = RunLock(tmp_path)
    lock.acquire()
    assert holder(tmp_path)["pid"] == os.getpid() and holder(tmp_path)["host"] == socket.gethostname()
    lock.release()


def test_held_tells_a_live_holder_without_touching_its_record(tmp_path):
    assert not run_lock.held(tmp_path)  # no run.lock yet
    lock = RunLock(tmp_path)
    lock.acquire()
    record = (tmp_path / "run.lock").read_text()
    assert run_lock.held(tmp_path) and (tmp_path / "run.lock").read_text() == record
    lock.release()
    assert not run_lock.held(tmp_path)  # the file stays, its holder is gone


def test_a_file_system_without_locks_warns_and_runs_unlocked(tmp_path, monkeypatch, capsys):
    def refused(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(run_lock.fcntl, "flock", refused)
    lock = RunLock(tmp_path)
    lock.acquire()
    assert "warning: cannot lock" in capsys.readouterr().err
    lock.release()


def test_second_job_on_a_folder_stops_and_the_first_finishes_untouched(synthetic_root, tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_overrides(synthetic_root) + [f"hydra.run.dir={run_dir}"]
    first = start(args)
    deadline = time.monotonic() + 120
    while not holds_lock(run_dir, first.pid):
        assert time.monotonic() < deadline and first.poll() is None, "the first job never took the lock"
        time.sleep(0.02)
    # Frozen while holding the lock, the first job is still running however slowly the second one starts.
    first.send_signal(signal.SIGSTOP)
    try:
        second = launch(args + ["eval.tasks_per_mode=7"])  # another command, on the same folder
    finally:
        first.send_signal(signal.SIGCONT)
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 0, output[-2000:]

    line = error_line(second)
    assert f"in use by process {first.pid} on host {socket.gethostname()}" in line and "hydra.run.dir=" in line
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for kind in ("train/loss", "val/accuracy"):
        assert [entry["step"] for entry in lines if kind in entry] == [10, 20]
    assert (run_dir / "results.json").is_file()
    # The refused job wrote nothing there, not even Hydra's record of its command.
    assert "eval.tasks_per_mode=7" not in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").eval.tasks_per_mode != 7
