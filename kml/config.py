"""The configuration around conf/: its composition for the tools and tests (`compose`, exactly what
`python launch.py <overrides>` builds), and the check of the settings users override (`validate`)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional, get_type_hints

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ValidationError

from kml.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose(overrides: list[str] | tuple[str, ...] = (), conf_dir: Path = CONF_DIR,
            return_hydra_config: bool = False) -> DictConfig:
    """The config `python launch.py *overrides` would run with (with Hydra's own node, e.g. a sweep's
    parameters, when asked)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    for override in overrides:
        message = renamed_task_message(override)
        if message:
            raise ConfigError(message)
    GlobalHydra.instance().clear()  # compose may run inside another initialised Hydra (tests, notebooks)
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)


# The group `task` is now `pipeline` (which runner) and the mapper's settings moved from task.* to mapper.*
# (CONTRIBUTING.md, "One config idiom"). An override in the old spelling stops with one line naming the new
# one, rather than Hydra's error about an unknown group or key.
RENAMED_TASK = ("the config group 'task' was renamed 'pipeline' (task=mapper -> pipeline=mapper) and the "
                "mapper's settings moved from task.* to mapper.* (task.mapper.* -> mapper.network.*, "
                "task.protocol=released -> protocol=released)")
_OLD_TASK_KEY = re.compile(r"(?P<prefix>~|\+\+|\+)?task(?P<path>\.[^=@]*)?(?P<package>@[^=]*)?(?P<value>=.*)?",
                           re.DOTALL)


def renamed_task_message(override: str) -> str | None:
    """The one-line error for a command-line override of the old `task` group or a `task.*` key (with or
    without +, ++ or ~, a sweep's comma list included), naming its new spelling; None for any other."""
    old = _OLD_TASK_KEY.fullmatch(override)
    if old is None or (old["value"] is None and old["prefix"] != "~"):  # `task` alone is no override
        return None
    prefix, path, value = old["prefix"] or "", old["path"] or "", old["value"] or ""
    if path in ("", ".name"):
        new = f"{'~' if prefix == '~' else ''}pipeline{value}"  # a group choice, in the defaults already
    elif path == ".protocol":
        new = f"protocol{value}"
    elif path == ".protocols" or path.startswith(".protocols."):
        new = "protocol=released, or the mapper.* key itself (the released values: conf/protocol/pipeline/released_mapper.yaml)"
    elif path == ".mapper" or path.startswith(".mapper."):
        new = f"{prefix}mapper.network{path[len('.mapper'):]}{value}"
    else:
        new = f"{prefix}mapper{path}{value}"
    return f"{override}: use {new}; {RENAMED_TASK}"


# The keys users override, with their types: a structured config (OmegaConf checks the types) plus the
# value rules OmegaConf cannot express (`_RULES`). Keys not listed here are checked where they are used.
class Device(Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class LoggerMode(Enum):
    auto = "auto"
    online = "online"
    offline = "offline"
    disabled = "disabled"


class Checkpoint(Enum):
    best = "best"
    last = "last"


class EpisodeOrder(Enum):
    auto = "auto"
    by_label = "by_label"
    released = "released"


class ClassSplit(Enum):
    standard = "standard"
    released = "released"


@dataclass
class TrainSchema:
    iterations: int = MISSING
    meta_batch: int = MISSING
    query: int = MISSING
    log_every: int = MISSING
    val_every: int = MISSING
    val_tasks_per_mode: int = MISSING
    checkpoint_every: int = MISSING
    checkpoint_minutes: float = MISSING
    resume: bool = MISSING
    lr_halving_every: Optional[int] = None  # noqa: UP045 (OmegaConf reads typing.Optional)


@dataclass
class EvalSchema:
    query: int = MISSING
    tasks_per_mode: int = MISSING
    meta_batch: int = MISSING
    seed: int = MISSING
    checkpoint: Checkpoint = MISSING
    std_ddof: int = MISSING


@dataclass
class DataSchema:
    root: str = MISSING
    mode_policy: str = MISSING
    split: ClassSplit = MISSING
    fc100_inverted: bool = MISSING
    aircraft_banner: bool = MISSING
    episode_order: EpisodeOrder = EpisodeOrder.auto


@dataclass
class LoggerSchema:
    mode: LoggerMode = MISSING


@dataclass
class Schema:
    seed: int = MISSING
    device: Device = MISSING
    way: int = MISSING
    shot: int = MISSING
    image_size: int = MISSING
    eval_only: bool = MISSING
    train: TrainSchema = field(default_factory=TrainSchema)
    eval: EvalSchema = field(default_factory=EvalSchema)
    data: DataSchema = field(default_factory=DataSchema)
    logger: LoggerSchema = field(default_factory=LoggerSchema)


# key -> (holds for a valid value, what is allowed); keys absent from a config are skipped.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "way": (lambda v: v >= 2, "an integer ≥ 2 (a task needs two classes)"),
    "shot": (lambda v: v >= 1, "an integer ≥ 1"),
    "image_size": (lambda v: v >= 8, "an integer ≥ 8 (pixels)"),
    "train.meta_batch": (lambda v: v >= 1, "an integer ≥ 1"),
    "train.query": (lambda v: v >= 1, "an integer ≥ 1"),
    "train.log_every": (lambda v: v >= 1, "an integer ≥ 1"),
    "train.val_every": (lambda v: v >= 1, "an integer ≥ 1"),
    "train.val_tasks_per_mode": (lambda v: v >= 1, "an integer ≥ 1"),
    "train.lr_halving_every": (lambda v: v is None or v >= 1, "null or an integer ≥ 1"),
    "eval.query": (lambda v: v >= 1, "an integer ≥ 1"),
    "eval.tasks_per_mode": (lambda v: v >= 1, "an integer ≥ 1"),
    "eval.meta_batch": (lambda v: v >= 1, "an integer ≥ 1"),
    "eval.std_ddof": (lambda v: v in (0, 1), "0 or 1"),
    "learner.lr": (lambda v: v > 0, "a number > 0"),
    "learner.inner_lr": (lambda v: v > 0, "a number > 0"),
    "learner.train_steps": (lambda v: v >= 1, "an integer ≥ 1"),
    "learner.test_steps": (lambda v: v >= 0, "an integer ≥ 0"),
    "mapper.optimizer.lr": (lambda v: v > 0, "a number > 0"),
    "mapper.maml.inner_lr": (lambda v: v > 0, "a number > 0"),
}


def validate(cfg: DictConfig) -> None:
    """Stop before any work, with one line naming the key, the value and what is allowed, when a setting
    has the wrong type or an impossible value."""
    if "task" in cfg:  # set by a YAML of the user's own (an override would have stopped in compose or launch.py)
        raise ConfigError(f"the config sets a top-level task node, which nothing reads any more: {RENAMED_TASK}")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        hint = MISSING_HINTS.get(missing[0], "set it on the command line")
        raise ConfigError(f"{missing[0]} has no value (??? in its YAML); {hint}")
    try:
        OmegaConf.merge(OmegaConf.structured(Schema), _project(OmegaConf.to_container(cfg, resolve=True), Schema))
    except ValidationError as err:
        value = OmegaConf.select(cfg, err.full_key)
        raise ConfigError(f"{err.full_key}={value!r} is not valid: {err.msg.splitlines()[0]}") from None
    for key, (holds, allowed) in _RULES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not _holds(holds, value):
            raise ConfigError(f"{key}={value!r} is not valid: {allowed}")
    iterations = cfg.train.iterations
    if not (isinstance(iterations, int) and (iterations >= 1 or (iterations == 0 and cfg.eval_only))):
        raise ConfigError(f"train.iterations={iterations!r} is not valid: an integer ≥ 1 (0 only with "
                          "eval_only=true)")
    if cfg.data.split == "released" and cfg.eval.checkpoint == "best" and "omniglot" in cfg.benchmark.modes:
        raise ConfigError("data.split=released has no Omniglot validation classes (its validation tasks come "
                          "from the test classes), so eval.checkpoint=best would select on test data; use "
                          "eval.checkpoint=last, as protocol=released does")


_ABSENT = object()
MISSING_HINTS = {"benchmark.modes": "list the prepared datasets to run together, e.g. "
                                    "benchmark=custom 'benchmark.modes=[omniglot,my_scans]'"}


def _project(values: dict, schema: type) -> dict:
    """The part of a plain config the schema dataclass lists (the config holds many more keys)."""
    projected, types = {}, get_type_hints(schema)
    for f in fields(schema):
        if f.name in values:
            value, kind = values[f.name], types[f.name]
            projected[f.name] = _project(value, kind) if is_dataclass(kind) and isinstance(value, dict) else value
    return projected


def _holds(holds: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(holds(value))
    except TypeError:  # a string where a number belongs
        return False


# Run folder names derived from the command line (conf/config.yaml's `${kml.folder:...}`), so the same
# command finds (and resumes) the same run. Part of the config: the folder is a config value.
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
