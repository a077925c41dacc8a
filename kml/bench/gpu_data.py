"""The real data of the GPU check's real run: which archives travel, how the full mini-ImageNet archive,
larger than one device call may carry (64 MiB), is cut into parts here and joined there, and which data
the run falls back to when a part is missing.

One device call carries the Omniglot archive and the first part, the next call (on the same warm machine,
where files that git ignores stay between calls) the second; the parts are joined and checked against
the sha256 that the manifest written here records. A part missing (the second call got a fresh machine)
means the 25-class stand-in if it was carried, else the synthetic benchmark; the log says which.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

OMNIGLOT = "omniglot_png_full.tar.gz"
MINIIMAGENET = "miniimagenet_ravi_84px.tar.gz"  # full mini-ImageNet, 100 classes x 600 photos, 84 px JPEG
STAND_IN = "tinyimagenet64_miniclasses.tar.gz"  # 25 of its classes from Tiny-ImageNet, 64 px: a stand-in
MANIFEST = MINIIMAGENET + ".parts.json"
CHUNK = 1 << 20


def part_name(index: int) -> str:
    return f"{MINIIMAGENET}.part{index}"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def split_archive(archive: Path, dest: Path, part_sizes: list[int]) -> dict:
    """Cut `archive` into consecutive parts of `part_sizes` bytes (the last takes the rest) in `dest`, and
    write the manifest that `join_parts` checks them with."""
    dest.mkdir(parents=True, exist_ok=True)
    parts = []
    with open(archive, "rb") as source:
        for index, size in enumerate(part_sizes, 1):
            last = index == len(part_sizes)
            path = dest / part_name(index)
            with open(path, "wb") as out:
                left = None if last else size
                while left is None or left > 0:
                    block = source.read(CHUNK if left is None else min(CHUNK, left))
                    if not block:
                        break
                    out.write(block)
                    left = None if left is None else left - len(block)
            parts.append({"name": path.name, "size": path.stat().st_size})
    manifest = {"archive": archive.name, "size": archive.stat().st_size, "sha256": sha256(archive), "parts": parts}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def find(data_dir: Path, name: str) -> Path | None:
    """`name` in data_dir, or one folder down (the layout of ../shared/data)."""
    for path in (data_dir / name, *sorted(data_dir.glob(f"*/{name}"))):
        if path.is_file():
            return path
    return None


def join_parts(data_dir: Path, dest: Path) -> tuple[Path | None, str]:
    """The full mini-ImageNet archive: as carried, or joined from its parts into `dest` and checked;
    None and why not when a part is missing or the join does not match the manifest."""
    whole = find(data_dir, MINIIMAGENET)
    if whole is not None:
        return whole, f"full mini-ImageNet archive {whole}"
    manifest_path = find(data_dir, MANIFEST)
    if manifest_path is None:
        return None, f"no full mini-ImageNet archive nor its parts' manifest ({MANIFEST}) in {data_dir}"
    manifest = json.loads(manifest_path.read_text())
    parts = [(manifest_path.parent / p["name"], p["size"]) for p in manifest["parts"]]
    missing = [f"{path.name} ({size / 2**20:.1f} MiB)" for path, size in parts
               if not path.is_file() or path.stat().st_size != size]
    if missing:
        return None, (f"mini-ImageNet parts incomplete: {', '.join(missing)} missing or of another size of "
                      f"{len(parts)} (the second device call found a fresh machine?)")
    joined = dest / manifest["archive"]
    if not (joined.is_file() and joined.stat().st_size == manifest["size"]):  # joined by an earlier call
        dest.mkdir(parents=True, exist_ok=True)
        with open(joined, "wb") as out:
            for path, _ in parts:
                with open(path, "rb") as part:
                    shutil.copyfileobj(part, out, CHUNK)
    if sha256(joined) != manifest["sha256"]:
        joined.unlink()
        return None, f"the {len(parts)} mini-ImageNet parts joined do not match the manifest's sha256"
    return joined, f"full mini-ImageNet, joined from {len(parts)} parts (sha256 checked)"


@dataclass
class DataChoice:
    benchmark: str  # 2mode (Omniglot + mini-ImageNet) or synthetic
    archives: dict[str, Path] = field(default_factory=dict)  # dataset -> archive to prepare it from
    note: str = ""  # what was used and why, for the log and the summary
    kind: str = "synthetic"  # full | stand-in | synthetic: also the folder its prepared arrays go to


def choose_data(data_dir: Path, work: Path) -> DataChoice:
    omniglot = find(data_dir, OMNIGLOT)
    mini, mini_note = join_parts(data_dir, work / "archives")
    if omniglot is not None and mini is not None:
        return DataChoice("2mode", {"omniglot": omniglot, "miniimagenet": mini},
                          f"Omniglot ({omniglot}) + {mini_note}", "full")
    stand_in = find(data_dir, STAND_IN)
    if omniglot is not None and stand_in is not None:
        return DataChoice("2mode", {"omniglot": omniglot, "miniimagenet": stand_in},
                          f"Omniglot ({omniglot}) + the mini-ImageNet STAND-IN ({stand_in}: 25 classes, "
                          f"Tiny-ImageNet photos at 64 px; not the full set), because: {mini_note}", "stand-in")
    missing = "" if omniglot else f"no {OMNIGLOT} in {data_dir}; "
    return DataChoice("synthetic", {}, f"the SYNTHETIC benchmark (no real data to run on: {missing}{mini_note}"
                      f"{'' if stand_in else f'; no {STAND_IN}'})", "synthetic")
