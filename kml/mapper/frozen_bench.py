"""The Frozen few-shot benchmarks (Tsimpoukelli et al., 2021) as released, one folder per benchmark:

    SOURCE/open_ended_mi/open_ended_mi_shots_1_ways_2_all_questions.json
    SOURCE/open_ended_mi/<the images the JSON names, paths relative to that folder>

The JSON is a list of tasks, each a dict with `image_1` … `image_{N·K}` and `caption_1` … `caption_{N·K}`
(the support set), `question_image`, `question` and `answer` (the one query). Image keys are collected
by their number, so a 0-based file reads the same. Benchmarks: open_ended_mi (Open-Ended mini-ImageNet,
made-up names), real_name_mi (Real-Name mini-ImageNet), fast_vqa (Fast-VQA) and real_fast_vqa, the
release's guided_vqa (Real-Fast-VQA: real names, Visual Genome questions).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from kml.data.errors import DataError

FOLDERS = {"open_ended_mi": "open_ended_mi", "real_name_mi": "real_name_mi", "fast_vqa": "fast_vqa",
           "real_fast_vqa": "guided_vqa", "guided_vqa": "guided_vqa"}
VQA = {"fast_vqa", "real_fast_vqa", "guided_vqa"}
_SUPPORT_KEY = re.compile(r"^image_(\d+)$")


@dataclass
class FrozenTask:
    support_images: list[Path]
    support_captions: list[str]
    question_image: Path
    question: str
    answer: str


def benchmark_file(source: str | Path, name: str, way: int, shot: int) -> Path:
    if name not in FOLDERS:
        raise DataError(f"unknown Frozen benchmark {name!r}; choose one of: {', '.join(FOLDERS)}")
    folder = Path(source) / FOLDERS[name]
    path = folder / f"{FOLDERS[name]}_shots_{shot}_ways_{way}_all_questions.json"
    if path.is_file():
        return path
    found = sorted(folder.glob(f"*_shots_{shot}_ways_{way}_all_questions.json"))
    if len(found) == 1:
        return found[0]
    present = ", ".join(p.name for p in sorted(folder.glob("*_all_questions.json"))) or "none"
    raise DataError(f"{path} not found (files there: {present}); download {FOLDERS[name]}.tar.gz of the "
                    f"Frozen benchmarks and extract it into {Path(source)}")


def _image(folder: Path, value, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise DataError(f"{where} is not an image file name")
    path = folder / value
    # Some copies keep a top-level folder in the names; the images themselves sit beside the JSON.
    return path if path.is_file() or not (folder / Path(value).name).is_file() else folder / Path(value).name


def read_frozen(source: str | Path, name: str, way: int, shot: int) -> list[FrozenTask]:
    path = benchmark_file(source, name, way, shot)
    try:
        entries = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON ({type(err).__name__}); re-extract the archive") from err
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path} should hold a non-empty list of tasks")
    tasks = []
    for number, entry in enumerate(entries):
        where = f"{path.name}, task {number}"
        if not isinstance(entry, dict):
            raise DataError(f"{where} is not a dict")
        slots = sorted(int(m.group(1)) for k in entry if (m := _SUPPORT_KEY.match(k)))
        if len(slots) != way * shot:
            raise DataError(f"{where} has {len(slots)} support images, expected way×shot = {way}×{shot}")
        missing = [k for k in ("question_image", "answer", *(f"caption_{i}" for i in slots)) if k not in entry]
        if missing:
            raise DataError(f"{where} lacks {', '.join(missing)}")
        tasks.append(FrozenTask(
            support_images=[_image(path.parent, entry[f"image_{i}"], f"{where}, image_{i}") for i in slots],
            support_captions=[str(entry[f"caption_{i}"]) for i in slots],
            question_image=_image(path.parent, entry["question_image"], f"{where}, question_image"),
            question=str(entry.get("question") or ""), answer=str(entry["answer"])))
    return tasks
