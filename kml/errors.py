"""The one home of the errors a user can fix from the message alone.

launch.py and the command-line tools print a UserError as one line (`error: ...`) without a traceback;
anything else is a bug and keeps its traceback. Each subclass names where the problem lies.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do, on one line
    (whitespace collapsed), as the command line prints it after `error: `."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class ConfigError(UserError, ValueError):
    """A setting that cannot work (an unknown option, an impossible value, a missing companion key)."""


class DataError(UserError):
    """A dataset that is missing, damaged or cannot serve the requested episodes."""


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated or not kml's."""


class TrainingDiverged(UserError, RuntimeError):
    """A non-finite training loss; the last good checkpoint is kept."""


class RunFolderLocked(UserError):
    """Another live process holds the run folder's lock (kml/run_lock.py); nothing was written."""


class DiskFull(UserError):
    """A run file could not be written (no space, quota exceeded, I/O error); earlier files are intact."""
