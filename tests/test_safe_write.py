"""kml/safe_write.py: a write that fails for lack of space keeps the previous file, leaves no temporary file
behind and ends in one DiskFull line; other OS errors pass through unchanged."""
import errno
import json
import os
import re
import stat

import pytest
import torch

from kml.errors import DiskFull
from kml.run import checkpoint
from kml.run.evaluate import write_results
from kml.run.logger import RunLogger
from kml.run.safe_write import atomic_write
from tests.full_disk import FullDisk

WRITERS = {"checkpoint": (lambda path, value: checkpoint.save({"model": {"w": torch.full((4096,), value)}}, path),
                          lambda path: checkpoint.load(path)["model"]["w"][0].item()),
           "results": (lambda path, value: write_results(path, {"overall": {"mean": value}}),
                       lambda path: json.loads(path.read_text())["overall"]["mean"])}


@pytest.mark.parametrize("writer", WRITERS)
def test_a_full_disk_keeps_the_previous_file_and_says_so(tmp_path, monkeypatch, writer):
    write, read = WRITERS[writer]
    path = tmp_path / ("last.pt" if writer == "checkpoint" else "results.json")
    write(path, 0.5)
    disk = FullDisk(monkeypatch)
    disk.full = True
    with pytest.raises(DiskFull) as caught:
        write(path, 0.25)  # torch.save may wrap the failed write in a RuntimeError
    message = str(caught.value)
    assert message.startswith(f"could not write {path} (No space left on device; ")
    assert re.search(r"; \d+(\.\d)? (B|KiB|MiB|GiB|TiB) free there\); nothing was half-written and ", message)
    hint = (f"the previous checkpoint {path} is intact: free some space and run the same command to resume"
            if writer == "checkpoint" else "no checkpoint is lost: free some space and run the same command again")
    assert message.endswith(hint)
    assert read(path) == 0.5 and [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    disk.full = False
    write(path, 0.25)
    assert read(path) == 0.25


@pytest.mark.parametrize("code", [errno.EDQUOT, errno.EIO])
def test_a_quota_or_an_io_error_at_fsync_is_a_full_disk_too(tmp_path, monkeypatch, code):
    def failing_fsync(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(DiskFull, match=re.escape(os.strerror(code))):
        atomic_write(tmp_path / "results.json", lambda f: f.write(b"{}"))
    assert list(tmp_path.iterdir()) == []


def test_other_os_errors_pass_through(tmp_path, monkeypatch):
    FullDisk(monkeypatch, errno.EACCES).full = True
    with pytest.raises(PermissionError):
        atomic_write(tmp_path / "results.json", lambda f: f.write(b"{}"))


def test_a_full_disk_leaves_metrics_jsonl_without_a_torn_line(tmp_path, monkeypatch):
    logger = RunLogger(tmp_path, mode="disabled")
    logger.log({"train/loss": 1.0}, step=1)
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(DiskFull, match=f"could not write {re.escape(str(tmp_path / 'metrics.jsonl'))}"):
        logger.log({"train/loss": 2.0}, step=2)
    monkeypatch.setattr(os, "write", real_write)
    logger.log({"train/loss": 3.0}, step=3)  # what a resumed run appends
    logger.finish(1)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 3]


def test_files_get_the_mode_open_would_give_them(tmp_path):
    """mkstemp makes private files; a checkpoint or results.json in a shared run folder must be readable by
    whoever may read the folder, as any file the user creates."""
    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write(tmp_path / "results.json", lambda f: f.write(b"{}"))
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == 0o666 & ~umask
