"""The one extension mechanism: a config group option is a YAML whose `_target_` names what it builds.

conf/learner/maml.yaml says `_target_: kml.learners.maml.MAML`, conf/modulation/kml.yaml names its generator,
conf/backbone/conv4.yaml its factory, conf/dataset/omniglot.yaml its preparer module. A new learner,
modulation, backbone or dataset is therefore one Python module plus one YAML (CONTRIBUTING.md); nothing
else holds a list of them. The YAML's keys are the constructor's arguments, so the YAML is the single
source of their defaults (tests/test_config.py checks that any Python default agrees with it).
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Mapping
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from kml.errors import ConfigError

# Keys of a group option that describe it rather than configure the object it builds.
DESCRIPTIVE_KEYS = frozenset({"_target_", "name", "method_name", "display_name"})


def has_target(node: Mapping[str, Any]) -> bool:
    return node.get("_target_") is not None


def locate(node: Mapping[str, Any], group: str) -> Any:
    """The class, function or module `node._target_` names."""
    if not has_target(node):
        raise ConfigError(f"{group}={node.get('name')!r} has no _target_; its YAML must name what it builds")
    try:
        return get_object(str(node["_target_"]))
    except Exception as err:  # ImportError, AttributeError, or whatever the module raises on import
        raise ConfigError(f"{group}._target_={node['_target_']!r} cannot be imported ({err})") from err


def settings(node: Mapping[str, Any], exclude: Collection[str] = ()) -> dict[str, Any]:
    """The node's configuring keys as plain Python values (interpolations resolved)."""
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    return {key: value for key, value in plain.items() if key not in DESCRIPTIVE_KEYS and key not in exclude}


def build(node: Mapping[str, Any], group: str, *, exclude: Collection[str] = (), **runtime: Any) -> Any:
    """`_target_(**YAML keys, **runtime)`: the YAML's settings (less `exclude`) plus what only exists at run
    time (the backbone a learner wraps, the layer shapes a generator is sized by). A YAML key the target
    does not take is a ConfigError naming the valid ones, not a TypeError deep in a constructor."""
    target = locate(node, group)
    kwargs = {**settings(node, exclude), **runtime}
    parameters = inspect.signature(target).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        unknown = sorted(set(kwargs) - set(parameters))
        if unknown:
            valid = sorted(set(parameters) - set(runtime))
            raise ConfigError(f"{group}.{unknown[0]} is not a setting of {node['_target_']}; "
                              f"its settings are: {', '.join(valid)}")
    try:
        return target(**kwargs)
    except ConfigError:
        raise
    except ValueError as err:
        # A constructor refusing a setting: the user's to fix, so one line naming the group, not a
        # traceback. Project code raises ConfigError itself; this covers third-party and new modules.
        raise ConfigError(f"{group}={node.get('name', node['_target_'])!r}: {err}") from err
