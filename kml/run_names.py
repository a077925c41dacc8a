"""Run folder names derived from the command line, so the same command finds (and resumes) the same run."""
from __future__ import annotations

import hashlib

from omegaconf import OmegaConf

MAX_NAME = 120  # well under the 255-byte file name limit


def folder_name(overrides: str) -> str:
    """Hydra's override_dirname made safe as one folder: no '/', bounded length (a hash keeps it unique)."""
    name = overrides.replace("/", "_") or "default"
    if len(name) <= MAX_NAME:
        return name
    return f"{name[:MAX_NAME - 11]}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("kml.folder"):
        OmegaConf.register_new_resolver("kml.folder", folder_name)
