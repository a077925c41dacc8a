"""Uniform read-only access to a dataset source: a folder, a .zip, or a .tar[.gz|.bz2|.xz].

Tar archives are read sequentially (`stream`), because random access into a compressed tar
re-decompresses from the start for every member. Opening a tar reads it once in full: that
lists it, keeps its small text files (split lists, annotations) in memory so that reading them
costs no further pass, and lets the compressor's checksum catch a damaged archive before any
output is written.
"""
from __future__ import annotations

import hashlib
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from kml.data.errors import DataError

# What a broken archive raises, depending on where the damage is.
_BROKEN = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError)
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# Small non-image members of a tar are kept from the listing pass (CUB's images.txt is ~0.5 MB).
_KEEP_BYTES = 4 << 20
# What torchvision's ImageFolder reads, plus GIF.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


class Source:
    def __init__(self, path: Path):
        self.path = path

    def names(self) -> list[str]:
        """Every regular file, as a '/'-separated path relative to the source."""
        raise NotImplementedError

    def stream(self, wanted: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        """Yield (name, bytes) for each wanted file, in whatever order is cheapest."""
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        for _, data in self.stream([name]):
            return data
        raise DataError(f"{self.path}: has no file {name}")

    def sha256(self) -> str:
        """Content hash of an archive; for a folder, a hash of its listing (names and sizes)."""
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    def broken(self, err: Exception) -> DataError:
        detail = repr(str(err)[:160])[1:-1]  # some messages quote raw archive bytes
        return DataError(f"{self.path} is truncated or corrupted ({type(err).__name__}: {detail}); download it again")


class FolderSource(Source):
    def names(self) -> list[str]:
        return sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file())

    def stream(self, wanted):
        for name in wanted:
            yield name, (self.path / name).read_bytes()

    def sha256(self) -> str:
        h = hashlib.sha256()
        for name in self.names():
            h.update(f"{name}:{(self.path / name).stat().st_size}\n".encode())
        return h.hexdigest()


class ZipSource(Source):
    """Damage inside a member shows up when it is read (zip checks each member's CRC)."""

    def __init__(self, path: Path):
        super().__init__(path)
        try:
            self._zip = zipfile.ZipFile(path)
            self._raw = {_clean(i.filename): i.filename for i in self._zip.infolist() if not i.is_dir()}
        except _BROKEN as err:
            raise self.broken(err) from err
        self._names = sorted(self._raw)

    def names(self):
        return self._names

    def stream(self, wanted):
        try:
            for name in wanted:
                yield name, self._zip.read(self._raw[name])
        except _BROKEN as err:
            raise self.broken(err) from err


class TarSource(Source):
    def __init__(self, path: Path):
        super().__init__(path)
        self._small: dict[str, bytes] = {}
        names = []
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    name = _clean(member.name)
                    names.append(name)
                    if member.size <= _KEEP_BYTES and not name.lower().endswith(IMAGE_SUFFIXES):
                        self._small[name] = tar.extractfile(member).read()
                # Read on to the end so that gzip/bz2/xz verify their checksum and length.
                for _ in iter(lambda: tar.fileobj.read(1 << 20), b""):
                    pass
        except _BROKEN as err:
            raise self.broken(err) from err
        self._names = sorted(names)

    def names(self):
        return self._names

    def stream(self, wanted):
        rest = set()
        for name in wanted:
            if name in self._small:
                yield name, self._small[name]
            else:
                rest.add(name)
        if not rest:
            return
        try:
            with tarfile.open(self.path, "r|*") as tar:
                for member in tar:
                    name = _clean(member.name)
                    if member.isfile() and name in rest:
                        yield name, tar.extractfile(member).read()
        except _BROKEN as err:
            raise self.broken(err) from err


def _clean(name: str) -> str:
    return name.replace("\\", "/").removeprefix("./").lstrip("/")


def open_source(path: str | Path) -> Source:
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"source {path} does not exist: pass the downloaded archive or its folder to --source")
    if path.is_dir():
        return FolderSource(path)
    # The suffix decides first, so that a truncated .zip (no central directory) is reported as damaged.
    if path.name.lower().endswith(".zip") or zipfile.is_zipfile(path):
        return ZipSource(path)
    if path.name.lower().endswith(_TAR_SUFFIXES) or _is_tar(path):
        return TarSource(path)  # a damaged tar fails inside with a clear message
    raise DataError(f"{path} is not a folder, a .zip or a .tar archive; pass the dataset's official archive")


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except _BROKEN:
        return False


def find_prefix(names: list[str], marker: str) -> str | None:
    """The folder prefix under which `marker` (a relative path) sits, e.g. 'CUB_200_2011/' for 'images.txt'.

    The shallowest match wins, so a copy nested deeper (e.g. inside a backup folder) is not preferred.
    """
    matches = [name[: len(name) - len(marker)] for name in names
               if name == marker or name.endswith("/" + marker)]
    return min(matches, key=lambda prefix: (prefix.count("/"), prefix)) if matches else None


class MultiSource(Source):
    """Several sources seen as one (e.g. Omniglot's images_background.zip + images_evaluation.zip)."""

    def __init__(self, parts: list[Source]):
        super().__init__(parts[0].path.parent)
        self.parts = parts
        self._owner = {name: part for part in parts for name in part.names()}

    def names(self):
        return sorted(self._owner)

    def stream(self, wanted):
        wanted = set(wanted)
        for part in self.parts:
            yield from part.stream([n for n in part.names() if n in wanted])

    def sha256(self) -> str:
        return hashlib.sha256("".join(part.sha256() for part in self.parts).encode()).hexdigest()
