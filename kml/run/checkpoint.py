"""Atomic checkpoints: written to a temporary file in the same folder, fsynced, then renamed.

A kill or a full disk at any moment leaves either the previous checkpoint or the new one, never a torn
file; a full disk stops the run with one line (kml/safe_write.py).
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from kml.errors import CheckpointError
from kml.learners import Learner, learner_from_state
from kml.run.safe_write import atomic_write

__all__ = ["CheckpointError", "load", "load_learner", "save"]

FORMAT = "kml-checkpoint-1"


def save(state: dict, path: str | Path) -> None:
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a run's best.pt or last.pt")
    try:
        # weights_only=False: our checkpoints hold RNG states and plain config dicts besides tensors
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}); "
                              "delete it to start over or point `checkpoint=` at another one") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a kml checkpoint")
    return state


def load_learner(path: str | Path, way: int, device: torch.device) -> tuple[Learner, dict]:
    """The learner a checkpoint holds, on `device`, with `way` classes, and the checkpoint's state (its
    config and iteration); says which file and iteration it evaluates."""
    state = load(path)
    learner = learner_from_state(state, way).to(device)
    print(f"evaluating {path} (iteration {state['iteration']})")
    return learner, state
