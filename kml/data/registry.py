"""The built-in datasets: one conf/dataset/<name>.yaml each, located like every other extension (kml.registry).

An entry's `_target_` names the dataset's preparer module (its interface is in kml/data/prepare.py), and
its other keys are the dataset's runtime facts, e.g. `rotate_classes`. Adding a dataset is adding a module
and its YAML; nothing here lists them.
"""
from __future__ import annotations

from functools import cache
from types import ModuleType

from omegaconf import OmegaConf

from kml.config import CONF_DIR
from kml.data.errors import DataError
from kml.registry import locate

DATASET_DIR = CONF_DIR / "dataset"


def names() -> list[str]:
    return sorted(path.stem for path in DATASET_DIR.glob("*.yaml"))


@cache
def entry(name: str) -> dict:
    path = DATASET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(names())}")
    return {"name": name, **OmegaConf.to_container(OmegaConf.load(path), resolve=True)}


def module(name: str) -> ModuleType:
    return locate(entry(name), "dataset")


def rotate_classes(name: str) -> bool:
    """The registry's word for a built-in dataset; a dataset without an entry (a folder) is not rotated."""
    return name in names() and bool(entry(name).get("rotate_classes", False))
