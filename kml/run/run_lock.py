"""One process per run folder: launch.py holds an OS lock on <run folder>/run.lock for the whole job.

The same command started twice (a sweep resubmitted while the first is still running, a job script
launched twice) would otherwise train twice into one folder, each overwriting the other's checkpoints.
The second process stops before writing anything of its own, naming the holder (pid, host, since when)
recorded in run.lock.

The lock is `flock`, which the operating system releases when its holder exits in any way, so a job that
crashed, was killed (-9) or was requeued by SLURM leaves nothing to clean up: the next run takes the lock,
overwrites the recorded holder and resumes from last.pt as before. run.lock is never deleted (deleting a
lock file lets two processes lock two different files); its content only names the last holder.
The descriptor is not inherited by subprocesses, so a helper outliving the job cannot keep the lock.

Network file systems: flock is honoured across nodes on NFSv4 (and NFSv3 with lockd), GPFS and Lustre
mounted with `-o flock`. Where locks are local to a node (Lustre `localflock`, BeeGFS by default, NFS
mounted `nolock` or `local_lock=all`), two jobs on different nodes are not stopped. Where the file system
refuses locks altogether, the run warns on one line and goes on unlocked. There is no fallback: a lock
file without flock cannot tell a crashed job (whose folder must resume) from a live job on another node.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from datetime import datetime
from pathlib import Path

from kml.errors import RunFolderLocked
from kml.run.safe_write import disk_full_reported

LOCK_FILE = "run.lock"


class RunLock:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise RunFolderLocked; never waits."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderLocked(self._held_message()) from None
        except OSError as err:  # the file system does not do locks (see the module docstring)
            os.close(fd)
            print(f"warning: cannot lock {self.path} ({err.strerror}); running without a lock, so make sure no "
                  "other job uses this run folder", file=sys.stderr)
            return
        self._fd = fd
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": datetime.now().astimezone().isoformat(timespec="seconds")}
        with disk_full_reported(self.path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)

    def release(self) -> None:
        """Give the lock up (closing the descriptor releases it); a no-op when not held."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _held_message(self) -> str:
        try:
            holder = json.loads(self.path.read_text())
            who = f"process {holder['pid']} on host {holder['host']} since {holder['since']}"
        except (OSError, ValueError, KeyError, TypeError):  # the holder has not written its details yet
            who = "another process"
        return (f"run folder {self.path.parent} is in use by {who} ({LOCK_FILE}); wait for that job to end, or run "
                "this one elsewhere with hydra.run.dir=OTHER_FOLDER (hydra.sweep.dir=... for a -m sweep)")


def held(run_dir: str | Path) -> bool:
    """Whether a live process holds the run folder's lock now (its recorded holder is left as it is)."""
    path = Path(run_dir) / LOCK_FILE
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released again by the close below
    except BlockingIOError:
        return True
    except OSError:  # no locks on this file system: nothing can be known
        return False
    finally:
        os.close(fd)
    return False
