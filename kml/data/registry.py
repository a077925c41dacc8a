"""The dataset registry: one conf/dataset/<name>.yaml per built-in dataset.

An entry names its preparer module in `_target_` (the interface is in kml/data/prepare.py) and states
the dataset's runtime facts, e.g. `rotate_classes`. Adding a dataset is adding a module and its YAML;
nothing here lists them.
"""
from __future__ import annotations

from functools import cache
from pathlib import Path
from types import ModuleType

from hydra.utils import get_object
from omegaconf import OmegaConf

import kml
from kml.data.errors import DataError

CONF_DIR = Path(kml.__file__).resolve().parents[1] / "conf" / "dataset"


def names() -> list[str]:
    return sorted(path.stem for path in CONF_DIR.glob("*.yaml"))


@cache
def entry(name: str) -> dict:
    path = CONF_DIR / f"{name}.yaml"
    if not path.is_file():
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(names())}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def module(name: str) -> ModuleType:
    target = entry(name).get("_target_")
    try:
        return get_object(target)
    except (ImportError, ValueError, TypeError) as err:
        raise DataError(f"conf/dataset/{name}.yaml: its _target_ {target!r} cannot be imported ({err}); "
                        "set it to the dotted path of the dataset's preparer module") from err


def rotate_classes(name: str) -> bool:
    """The registry's word for a built-in dataset; a dataset without an entry (a folder) is not rotated."""
    return name in names() and bool(entry(name).get("rotate_classes", False))
