"""The configuration: YAML as the single source of defaults, and the typed check of what users override."""

from __future__ import annotations

import inspect
import re

import pytest
from omegaconf import OmegaConf, open_dict

from kml import registry
from kml.config import CONF_DIR, compose, validate
from kml.errors import ConfigError
from tests.configs import composed, options
from tests.runs import error_line, launch, tiny_overrides

GROUPS_WITH_TARGETS = ("learner", "modulation", "backbone")


@pytest.mark.parametrize("group", GROUPS_WITH_TARGETS)
def test_python_defaults_equal_the_yaml(group):
    """A constructor default that is also a YAML key must be the YAML's value, so no default differs
    between the Python API and launch.py (most constructors have none: the YAML is the only source)."""
    checked = 0
    for option in options(group):
        node = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
        if "_target_" not in node:
            continue
        parameters = inspect.signature(registry.locate(node, group)).parameters
        for key, value in registry.settings(node).items():
            if key in parameters and parameters[key].default is not inspect.Parameter.empty:
                assert parameters[key].default == value, f"{group}/{option}: {key}"
                checked += 1
    assert checked > 0 or group == "learner"  # the learners' settings are all required arguments


def test_a_yaml_key_the_target_does_not_take_is_one_clear_error():
    with pytest.raises(ConfigError, match="learner.train_steps is not a setting of kml.learners.protonet.ProtoNet"):
        from kml.learners import build_learner

        build_learner(composed("learner=protonet", "+learner.train_steps=3"))


REJECTED = [
    ("image_size=abc", "image_size='abc' is not valid"),
    ("image_size=4", "image_size=4 is not valid: an integer ≥ 8"),
    ("train.iterations=-5", "train.iterations=-5 is not valid: an integer ≥ 1 (0 only with eval_only=true)"),
    ("train.iterations=0", "train.iterations=0 is not valid"),
    ("way=1", "way=1 is not valid: an integer ≥ 2"),
    ("way=2.5", "way=2.5 is not valid"),
    ("learner.lr=0", "learner.lr=0 is not valid: a number > 0"),
    ("learner.inner_lr=-0.1", "learner.inner_lr=-0.1 is not valid: a number > 0"),
    ("learner.lr=fast", "learner.lr='fast' is not valid"),
    ("logger.mode=loud", "logger.mode='loud' is not valid: Invalid value 'loud', expected one of [auto, online, "
                         "offline, disabled]"),
    ("device=tpu", "device='tpu' is not valid: Invalid value 'tpu', expected one of [auto, cpu, cuda]"),
    ("eval.checkpoint=worst", "eval.checkpoint='worst' is not valid"),
    ("train.lr_halving_every=0", "train.lr_halving_every=0 is not valid"),
]


@pytest.mark.parametrize("override, message", REJECTED, ids=[o for o, _ in REJECTED])
def test_typed_config_rejects_nonsense(override, message):
    with pytest.raises(ConfigError) as caught:
        validate(composed(override))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_defaults_and_sensible_settings_pass():
    for overrides in ([], ["train.iterations=0", "eval_only=true"], ["learner=protonet", "shot=5shot"],
                      ["protocol=released", "benchmark=2mode"], ["pipeline=mapper", "way=2"], ["debug=tiny"]):
        validate(composed(*overrides))


def test_a_custom_benchmark_without_modes_says_how_to_give_them():
    with pytest.raises(ConfigError, match=r"benchmark.modes has no value .* 'benchmark.modes=\[omniglot,my_scans\]'"):
        validate(composed("benchmark=custom"))
    validate(composed("benchmark=custom", "benchmark.modes=[omniglot,my_scans]"))


def test_released_splits_refuse_selecting_on_omniglot_test_classes():
    with pytest.raises(ConfigError, match="eval.checkpoint=best would select on test data"):
        validate(composed("data.split=released", "benchmark=2mode"))


def test_launch_stops_before_any_work_with_one_line(synthetic_root, tmp_path):
    for i, override in enumerate(("image_size=abc", "way=1", "train.iterations=-5")):
        done = launch(tiny_overrides(synthetic_root) + [override, f"hydra.run.dir={tmp_path / str(i)}"])
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-1500:]
        assert override.split("=")[0] in errors[0]
        assert not (tmp_path / str(i) / "metrics.jsonl").exists()  # nothing was started


def test_an_unknown_protocol_names_the_valid_ones(synthetic_root, tmp_path):
    done = launch(tiny_overrides(synthetic_root) + ["protocol=mine", f"hydra.run.dir={tmp_path}"])
    assert done.returncode != 0 and "Could not find 'protocol/mine'" in done.stderr
    assert "paper" in done.stderr and "released" in done.stderr


@pytest.mark.parametrize("old, new", [("task=mapper", "pipeline=mapper"),
                                      ("task.mapper.prefix_length=2", "mapper.network.prefix_length=2")])
def test_the_old_task_spelling_stops_with_one_line_naming_the_new_one(old, new, tmp_path):
    line = error_line(launch([old, f"hydra.run.dir={tmp_path}"]))  # exit status 2, no traceback
    assert f"{old}: use {new};" in line and "'task' was renamed 'pipeline'" in line
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # stopped before Hydra made the run folder


@pytest.mark.parametrize("old, new", [("task.protocol=released", "protocol=released"),
                                      ("+task.maml.inner_lr=0.1", "+mapper.maml.inner_lr=0.1"),
                                      ("~task", "~pipeline"), ("task=mapper,fewshot", "pipeline=mapper,fewshot")])
def test_compose_refuses_the_old_task_spelling(old, new):
    with pytest.raises(ConfigError, match=f"^{re.escape(old)}: use {re.escape(new)};"):
        compose([old])


def test_a_task_node_from_a_yaml_is_refused():
    cfg = composed("pipeline=mapper")
    with open_dict(cfg):
        cfg.task = {"maml": {"inner_lr": 0.1}}  # what an experiment file of the old spelling would add
    with pytest.raises(ConfigError, match="'task' was renamed 'pipeline'"):
        validate(cfg)


def test_the_meta_mappers_python_defaults_equal_its_yaml():
    from kml.mapper.maml import MapperMAML

    maml = composed("pipeline=mapper").mapper.maml
    parameters = inspect.signature(MapperMAML).parameters
    checked = [key for key in ("inner_lr", "train_steps", "test_steps", "first_order") if key in parameters]
    assert checked and all(parameters[key].default == maml[key] for key in checked)
