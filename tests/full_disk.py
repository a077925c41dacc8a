"""A disk that fills up, for the DiskFull tests: kml.run.safe_write's files get a write that, once `full` is
set, writes half of what it is given (a torn temporary file) and then fails as the kernel would."""
from __future__ import annotations

import errno
import io
import os


class FullDisk:
    def __init__(self, monkeypatch, code: int = errno.ENOSPC):
        self.full, self.code = False, code
        real_fdopen = os.fdopen
        disk = self

        class FillingFile(io.FileIO):
            def write(self, data):
                if not disk.full:
                    return super().write(data)
                super().write(bytes(data)[: len(data) // 2])
                raise OSError(disk.code, os.strerror(disk.code))

        def fdopen(fd, mode="r", *args, **kwargs):
            if mode != "wb":
                return real_fdopen(fd, mode, *args, **kwargs)
            return io.BufferedWriter(FillingFile(fd, "wb"))

        monkeypatch.setattr(os, "fdopen", fdopen)
