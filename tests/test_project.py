import re
import tomllib
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0].lower()


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert {_name(r): r for r in pip} == {_name(r): r for r in wanted}


def benchmark_names():
    return sorted(p.stem for p in (ROOT / "conf" / "benchmark").glob("*.yaml"))


@pytest.mark.parametrize("benchmark", benchmark_names())
@pytest.mark.parametrize("shot", ["1shot", "5shot"])
def test_every_benchmark_and_shot_composes(benchmark, shot):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"benchmark={benchmark}", f"shot={shot}"])
    assert cfg.benchmark.name == benchmark and cfg.shot == int(shot[0])
    assert len(cfg.benchmark.modes) == {"2mode": 2, "2mode_dag": 2, "3mode": 3, "5mode": 5, "synthetic": 3}.get(
        benchmark, 1)
    assert cfg.image_size == cfg.benchmark.image_size


def test_run_folder_names_are_single_bounded_folders():
    from kml.run_names import MAX_NAME, folder_name

    assert folder_name("") == "default"
    assert folder_name("data.root=/a/b,seed=1") == "data.root=_a_b,seed=1"
    long_a, long_b = "x=" + "1" * 300, "x=" + "1" * 299 + "2"
    assert len(folder_name(long_a)) == MAX_NAME and folder_name(long_a) != folder_name(long_b)
