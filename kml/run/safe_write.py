"""Writing run files (checkpoints, results.json, metrics.jsonl) so that a full disk neither leaves a
half-written file nor ends in a traceback.

A write that fails for lack of space (ENOSPC, or EDQUOT: a cluster quota) or with an I/O error (EIO: what
a network file system reports when its server ran out of space) becomes one DiskFull line: which file,
how much space is free there, and that the run folder's last.pt is intact, so the same command resumes.
Any other OSError (a permission, a missing folder) is a different problem and is raised unchanged.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from kml.errors import DiskFull

DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: mkstemp's files are private (0600), a run's files get the user's usual mode


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Replace `path` with what `write(file)` writes, all or nothing: a temporary file in the same folder,
    fsynced, then renamed over it. A failure (or a kill) at any moment leaves the previous file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with disk_full_reported(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)  # as open() would create it: colleagues may read a shared run folder
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def append(fd: int, data: bytes, path: Path) -> None:
    """Append all of `data` to the file open at `fd` (O_APPEND), or none of it: a failed write is cut off
    again, so the file keeps ending with a complete line."""
    with disk_full_reported(path):
        end = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view):]
        except BaseException:
            with suppress(OSError):  # if even that fails, the original error is the one to report
                os.ftruncate(fd, end)
            raise


@contextmanager
def disk_full_reported(path: Path) -> Iterator[None]:
    """Turn a failed write of `path` for lack of space into DiskFull; let every other error through."""
    try:
        yield
    except Exception as err:
        cause = disk_error(err)
        if cause is None:
            raise
        raise DiskFull(f"could not write {path} ({cause.strerror}; {free_space(path.parent)} free there); "
                       f"nothing was half-written and {resume_hint(path.parent)}") from err


def disk_error(err: BaseException | None) -> OSError | None:
    """The out-of-space OSError in `err`'s chain, if any: torch.save may report a failed write of its zip
    writer as a RuntimeError ("unexpected pos ...") raised while handling the OSError."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
            return err
        err = err.__cause__ or err.__context__
    return None


def free_space(folder: Path) -> str:
    try:
        free = float(shutil.disk_usage(folder).free)
    except OSError:
        return "unknown space"
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    while free >= 1024 and len(units) > 1:
        free, units = free / 1024, units[1:]
    return f"{free:.0f} B" if units[0] == "B" else f"{free:.1f} {units[0]}"


def resume_hint(run_dir: Path) -> str:
    last = run_dir / "last.pt"
    if last.is_file():
        return f"the previous checkpoint {last} is intact: free some space and run the same command to resume"
    return "no checkpoint is lost: free some space and run the same command again"
