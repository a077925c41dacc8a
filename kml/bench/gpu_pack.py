"""`python -m kml.bench gpu-pack`: run here, before the GPU check's device calls. It fills the ignored
folder .gpu/ with what those calls carry, since the GPU machine reaches no network and a call carries at
most 64 MiB with the working tree:

  .gpu/whl/   the wheels of the project's dependencies that the machine's Python 3.12 lacks (the versions
              installed here; antlr4-python3-runtime 4.9.3, which omegaconf needs, exists only as a source
              archive and is built into a pure-Python wheel here);
  .gpu/data/  the Omniglot archive, the full mini-ImageNet archive cut into parts that fit one call each
              with a manifest of sizes and sha256 (kml.bench.gpu_data joins them there), and the 25-class
              mini-ImageNet stand-in for the fallback call;

then prints the device calls with what each carries and its size against the limit.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kml.bench.gpu_data import MANIFEST, MINIIMAGENET, OMNIGLOT, STAND_IN, find, part_name, split_archive

REPO = Path(__file__).resolve().parents[2]
CARRY_LIMIT = 64 * 2**20  # the working tree and the carried paths of one device call
MARGIN = 256 * 2**10  # for files the tree gains between packing and calling
# Missing on the GPU machine (/work/.library/device/KINDS.md lists what it has), needed by the check.
WHEELS = ("hydra-core", "omegaconf", "antlr4-python3-runtime", "higher")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
GPU_DIR = ".gpu"


@dataclass(frozen=True)
class Call:
    steps: str
    budget_minutes: float
    timeout_s: int
    carry: tuple[str, ...]

    @property
    def command(self) -> str:
        return (f"python3 -m kml.bench gpu --install --steps {self.steps} --budget-minutes {self.budget_minutes:g} "
                f"--mirror $OUT")


def device_calls(parts: int = 2) -> list[Call]:
    """The calls of one GPU check: the first runs steps 1-3 carrying the wheels, Omniglot and the first part
    of mini-ImageNet, the last the real run once the last part is there; a call between only carries a
    part. Later calls find the wheels and earlier parts where the first left them (the machine is still
    warm), which leaves their 64 MiB to the parts. Budgets leave room for one rerun in 15 minutes of device
    time (a start takes 1-2 of them)."""
    data = f"{GPU_DIR}/data"
    first = (f"{GPU_DIR}/whl", f"{data}/{OMNIGLOT}", f"{data}/{part_name(1)}", f"{data}/{MANIFEST}")
    calls = [Call("env,correctness,speed", 3.5, 270, first)]
    calls += [Call("env", 0.5, 60, (f"{data}/{part_name(k)}", f"{data}/{MANIFEST}")) for k in range(2, parts)]
    calls.append(Call("env,real", 4.0, 300, (f"{data}/{part_name(parts)}", f"{data}/{MANIFEST}")))
    return calls


FALLBACK = Call("env,real", 4.0, 300, (f"{GPU_DIR}/whl", f"{GPU_DIR}/data/{OMNIGLOT}", f"{GPU_DIR}/data/{STAND_IN}"))


def fetch_wheels(dest: Path) -> list[Path]:
    """One wheel per name of WHEELS, at the version installed here, for CPython 3.12 on x86-64 Linux."""
    dest.mkdir(parents=True, exist_ok=True)
    wheels = []
    for name in WHEELS:
        version = importlib.metadata.version(name)
        stem = name.replace("-", "_").lower()
        for stale in dest.glob("*.whl"):  # two versions of one package stop the install there
            wheel_name, wheel_version = stale.name.lower().split("-")[:2]
            if wheel_name == stem and wheel_version != version:
                stale.unlink()
        found = sorted(dest.glob(f"{stem}-{version}-*.whl"), key=lambda p: p.name.lower())
        if not found:
            download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp",
                        *(flag for platform in PLATFORMS for flag in ("--platform", platform)), "-d", str(dest),
                        f"{name}=={version}"]
            if subprocess.run(download, capture_output=True).returncode != 0:
                print(f"{name}=={version}: no wheel published; building one from its source archive")
                subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest),
                                f"{name}=={version}"], check=True)
            found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
        if not found:
            raise SystemExit(f"no wheel of {name}=={version} in {dest}")
        wheels.append(found[0])
    return wheels


def tree_bytes() -> int:
    """What every call carries besides its paths: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    paths = [REPO / name for name in listed if name]
    return sum(path.lstat().st_size for path in paths if path.is_symlink() or path.is_file())


def part_sizes(archive_bytes: int, first_call_bytes: int, later_call_bytes: int) -> list[int]:
    """Sizes of the parts so that call 1 (with `first_call_bytes` besides its part) and each later call
    (`later_call_bytes`) stay within CARRY_LIMIT less MARGIN."""
    room_first, room_later = (CARRY_LIMIT - MARGIN - fixed for fixed in (first_call_bytes, later_call_bytes))
    if room_first <= 0 or room_later <= 0:
        raise SystemExit("the working tree and the wheels alone fill a device call")
    sizes, left = [min(room_first, archive_bytes)], archive_bytes - min(room_first, archive_bytes)
    while left > 0:
        sizes.append(min(room_later, left))
        left -= sizes[-1]
    return sizes


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def pack_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kml.bench gpu-pack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data",
                        help="where the archives are (default ../shared/data)")
    args = parser.parse_args(argv)
    gpu, data = REPO / GPU_DIR, REPO / GPU_DIR / "data"
    wheels = fetch_wheels(gpu / "whl")
    print("wheels: " + ", ".join(f"{w.name} ({w.stat().st_size / 2**10:.0f} KiB)" for w in wheels))
    archives = {name: find(args.shared, name) for name in (OMNIGLOT, MINIIMAGENET, STAND_IN)}
    absent = [name for name, path in archives.items() if path is None]
    if absent:
        raise SystemExit(f"not in {args.shared}: {', '.join(absent)}")
    data.mkdir(parents=True, exist_ok=True)
    for name in (OMNIGLOT, STAND_IN):
        if not (data / name).is_file() or (data / name).stat().st_size != archives[name].stat().st_size:
            shutil.copyfile(archives[name], data / name)
    manifest_bytes = 1024  # written below; a generous bound
    tree, wheel_bytes = tree_bytes(), size_of(gpu / "whl")
    sizes = part_sizes(archives[MINIIMAGENET].stat().st_size,
                       tree + wheel_bytes + (data / OMNIGLOT).stat().st_size + manifest_bytes,
                       tree + manifest_bytes)
    for stale in data.glob(f"{MINIIMAGENET}.part*"):
        stale.unlink()
    split_archive(archives[MINIIMAGENET], data, sizes)
    print(f"working tree {tree / 2**20:.2f} MiB; {MINIIMAGENET} in {len(sizes)} parts")
    for number, call in enumerate(device_calls(len(sizes)), 1):
        carried = tree + sum(size_of(REPO / path) for path in call.carry)
        print(f"\ncall {number}: {carried / 2**20:.2f} MiB of {CARRY_LIMIT / 2**20:.0f}\n  command: {call.command}\n"
              f"  timeout_s: {call.timeout_s}\n  carry: {json.dumps(list(call.carry))}")
    print(f"\nthe next call at once after each (a machine stays warm 30 s). If the last call's reply says its\n"
          f"machine was not warm (the first call's files are gone), the fallback call:\n"
          f"  command: {FALLBACK.command}\n  timeout_s: {FALLBACK.timeout_s}\n  carry: {json.dumps(list(FALLBACK.carry))}")
    return 0
