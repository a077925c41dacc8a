"""`prepare folder`: your own images as a mode, from torchvision's ImageFolder layout.

The source is a folder, .zip or .tar, possibly wrapped in one top folder, laid out as either
  <class>/<image>                      classes split by --split fractions (seeded) or by --split-file
  {train,val,test}/<class>/<image>     the split as given
Images may sit deeper inside a class folder; hidden and non-image files are ignored. Class names are
sorted before the seeded shuffle, so the same command gives the same split on any machine and file
system; the split and the rule that made it go into the manifest.
Every image is decoded once before anything is written, so that all unreadable files are reported
together, and once more to write it.
"""
from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

from tqdm import tqdm

from kml.data import registry, sources, store, synthetic
from kml.data.errors import DataError, warn
from kml.data.images import decode
from kml.data.prepare import MIN_CLASSES, already_prepared, check_sizes, require_classes, write

DEFAULT_SPLIT = "0.7,0.15,0.15"
# Images a class needs for the default episode: 1 shot (shot=1shot) + 15 queries (train.query, eval.query).
DEFAULT_EPISODE_IMAGES = 1 + 15
LAYOUT = "arrange it as <class>/<image>, or as train/<class>/<image>, val/<class>/<image>, test/<class>/<image>"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # a folder name and an item of benchmark.modes=[...]
_SHOWN = 3  # file names quoted in a message


def prepare(name: str | None, source: str | Path | None, root: str | Path = "data", image_size: int = 84,
            channels: int = 3, split: str | None = None, split_seed: int = 0, split_file: str | Path | None = None,
            skip_unreadable: bool = False, rotate_classes: bool = False, min_classes: int = MIN_CLASSES,
            force: bool = False) -> Path:
    check_name(name)
    if channels not in (1, 3):
        raise DataError(f"--channels must be 1 (grey) or 3 (colour), not {channels}")
    if split is not None and split_file is not None:
        raise DataError("--split and --split-file both choose the split; pass one of them")
    check_sizes(image_size, min_classes)
    if already_prepared(root, name, image_size, force):
        return store.prepared_dir(root, name, image_size)
    if source is None:
        raise DataError("prepare folder needs --source DIR|ARCHIVE: your <class>/<image> images")
    opened = sources.open_source(source)
    found, given = read_layout(opened)
    lists, rule = choose_split(found, given, split, split_seed, split_file, opened.path)
    usable = readable_images({c: found[c] for names in lists.values() for c in names}, opened, skip_unreadable,
                             image_size)
    lists = {s: [c for c in names if c in usable] for s, names in lists.items()}
    require_classes(lists, min_classes, f"{name} has", "add classes, or change --split / --split-file")
    warn_small_classes(usable)
    reader = store.image_reader(image_size, channels)
    return write(name, {s: [(c, usable[c]) for c in names] for s, names in lists.items()},
                 lambda writer, files: store.fill_from_files(writer, opened, files, reader),
                 root, image_size, channels, opened, rotate_classes=rotate_classes,
                 split_record={"rule": rule, "classes": lists})


def choose_split(found: dict[str, list[str]], given: dict[str, list[str]] | None, split: str | None,
                 split_seed: int, split_file: str | Path | None, path: Path) -> tuple[dict[str, list[str]], str]:
    """split -> classes, and the rule that made it (as options that make it again) for the manifest."""
    if given is not None:
        if split is not None or split_file is not None:
            raise DataError(f"{path} has train/val/test folders, which fix the split; "
                            "drop --split / --split-file, or pass the classes as <class>/<image>")
        return given, "as given by the train/val/test folders"
    if split_file is not None:
        return split_by_file(found, Path(split_file).expanduser()), f"--split-file {split_file}"
    fractions = parse_fractions(split or DEFAULT_SPLIT)
    return (split_by_fractions(list(found), fractions, split_seed),
            f"--split {','.join(map(str, fractions))} --split-seed {split_seed}")


def check_name(name: str | None) -> None:
    if not name:
        raise DataError("prepare folder needs --name NAME: the mode's name in benchmark.modes=[...]")
    if not _NAME.fullmatch(name):
        raise DataError(f"--name {name!r} must be letters, digits, _ and - (starting with a letter or digit): "
                        "it names a folder and an item of benchmark.modes=[...]")
    if name in registry.names() or name.startswith("synthetic"):
        raise DataError(f"--name {name!r} is a built-in dataset ({', '.join(registry.names())}, "
                        f"{', '.join(synthetic.MODES)}); choose another name")


def read_layout(source: sources.Source) -> tuple[dict[str, list[str]], dict[str, list[str]] | None]:
    """class -> its image files (sorted), and split -> classes when the source has train/val/test folders."""
    images = [n for n in source.names() if n.lower().endswith(sources.IMAGE_SUFFIXES) and not _hidden(n)]
    paths = {name: name.split("/") for name in images}
    # A single top folder around everything (my_scans.zip holding my_scans/...) is not a level of the layout.
    while paths and len({p[0] for p in paths.values()}) == 1 and min(map(len, paths.values())) > 2:
        paths = {name: p[1:] for name, p in paths.items()}
    tops = {p[0] for p in paths.values() if len(p) > 1}
    splits_given = tops & set(store.SPLITS)
    if splits_given and tops != set(store.SPLITS):
        others = sorted(tops - splits_given) or sorted(set(store.SPLITS) - splits_given)
        raise DataError(f"{source.path} has the split folders {', '.join(sorted(splits_given))} beside or without "
                        f"{', '.join(others)}; {LAYOUT}")
    depth = 3 if splits_given else 2  # folders above the file: [split/]class/
    found: dict[str, list[str]] = defaultdict(list)
    split_of: dict[str, set[str]] = defaultdict(set)
    loose = []
    for name, p in paths.items():
        if len(p) < depth:
            loose.append(name)
            continue
        class_name = p[depth - 2]
        found[class_name].append(name)
        if splits_given:
            split_of[class_name].add(p[0])
    if not found:
        raise DataError(f"{source.path} holds no class folders with images; {LAYOUT}")
    if loose:
        warn(f"{len(loose)} images of {source.path} lie outside any class folder and are left out "
             f"({_first(sorted(loose))})")
    shared = sorted(c for c, s in split_of.items() if len(s) > 1)
    if shared:
        raise DataError(f"{source.path}: class {shared[0]!r} is in more than one of train/val/test "
                        f"({len(shared)} such classes); few-shot splits need disjoint classes: keep each class "
                        "folder in one split")
    given = {s: sorted(c for c in found if s in split_of[c]) for s in store.SPLITS} if splits_given else None
    return {c: sorted(files) for c, files in found.items()}, given


def _hidden(name: str) -> bool:
    """macOS and editors leave files such as .DS_Store, ._x.jpg and __MACOSX/ that are not images."""
    return any(part.startswith(".") or part == "__MACOSX" for part in name.split("/"))


def parse_fractions(text: str) -> tuple[float, float, float]:
    try:
        fractions = tuple(float(x) for x in text.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"--split {text} must be three fractions train,val,test that sum to 1, "
                        f"e.g. --split {DEFAULT_SPLIT}")
    return fractions


def split_by_fractions(classes: list[str], fractions: tuple[float, float, float], seed: int) -> dict[str, list[str]]:
    """Shuffle the sorted class names with `seed` and cut them by the cumulative fractions."""
    order = sorted(classes)
    random.Random(seed).shuffle(order)
    first = round(len(order) * fractions[0])
    second = round(len(order) * (fractions[0] + fractions[1]))
    return {"train": sorted(order[:first]), "val": sorted(order[first:second]), "test": sorted(order[second:])}


def split_by_file(found: dict[str, list[str]], path: Path) -> dict[str, list[str]]:
    """A JSON {"train": [classes], "val": [...], "test": [...]}; classes keep the file's order."""
    fix = 'write {"train": [class, ...], "val": [...], "test": [...]}'
    try:
        lists = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"--split-file {path} cannot be read as JSON ({err}); {fix}") from err
    if (not isinstance(lists, dict) or sorted(lists) != sorted(store.SPLITS)
            or not all(isinstance(names, list) and all(isinstance(c, str) for c in names) for names in lists.values())):
        raise DataError(f"--split-file {path} is not an object of three class lists; {fix}")
    named = Counter(c for names in lists.values() for c in names)
    twice = sorted(c for c, n in named.items() if n > 1)
    if twice:
        raise DataError(f"--split-file {path} names {len(twice)} classes more than once (e.g. {twice[0]!r}); "
                        "put each class in one split")
    absent = sorted(c for c in named if c not in found)
    if absent:
        raise DataError(f"--split-file {path} names {len(absent)} classes that have no folder in the source "
                        f"(e.g. {absent[0]!r}); correct the file or the source")
    unlisted = sorted(c for c in found if c not in named)
    if unlisted:
        warn(f"{len(unlisted)} classes of the source are in no list of {path} and are left out ({_first(unlisted)})")
    return {s: lists[s] for s in store.SPLITS}


def readable_images(found: dict[str, list[str]], source: sources.Source, skip_unreadable: bool,
                    image_size: int) -> dict[str, list[str]]:
    """Decode every image once: refuse (or with skip_unreadable leave out) those that cannot be read,
    and warn when sizes differ. Returns class -> readable files, without classes left empty."""
    wanted = [f for files in found.values() for f in files]
    sizes, unreadable = Counter(), []
    for name, data in tqdm(source.stream(wanted), total=len(wanted), desc="check images", unit="img",
                           mininterval=1.0):
        try:
            sizes[decode(data, name).size] += 1
        except DataError:
            unreadable.append(name)
    unreadable.sort()
    if unreadable and not skip_unreadable:
        raise DataError(f"{len(unreadable)} of the {len(wanted)} images cannot be read as images "
                        f"({_first(unreadable)}); repair or remove them, or pass --skip-unreadable to leave them out")
    if unreadable:
        warn(f"leaving out {len(unreadable)} unreadable images ({_first(unreadable)})")
    if len(sizes) > 1:
        common = ", ".join(f"{w}×{h}" for (w, h), _ in sizes.most_common(_SHOWN))
        warn(f"the images come in {len(sizes)} sizes (e.g. {common}); all are resized to {image_size}×{image_size}, "
             "stretching those that are not square: crop them to one shape first if that matters")
    bad = set(unreadable)
    usable = {c: [f for f in files if f not in bad] for c, files in found.items()}
    return {c: files for c, files in usable.items() if files}


def warn_small_classes(found: dict[str, list[str]]) -> None:
    """At run time every class of a split must hold shot + query images; say so now, with the numbers."""
    small = {c: len(files) for c, files in found.items() if len(files) < DEFAULT_EPISODE_IMAGES}
    if not small:
        return
    smallest = min(small, key=lambda c: (small[c], c))
    count = small[smallest]
    fix = (f"add images or remove such classes: a class of {count} image cannot serve any episode" if count < 2 else
           f"add images, or run 1-shot with train.query and eval.query at most {count - 1}")
    warn(f"{len(small)} classes have fewer than {DEFAULT_EPISODE_IMAGES} images, what a default 1-shot 15-query "
         f"episode takes (smallest: {smallest!r} with {count}); {fix}")


def _first(names: list[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (", …" if len(names) > _SHOWN else "")
