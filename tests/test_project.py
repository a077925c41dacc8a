import itertools
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


def names(group):
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


MODES_PER_BENCHMARK = {"2mode": 2, "2mode_dag": 2, "3mode": 3, "5mode": 5, "synthetic": 3, "custom": 2}
# benchmark=custom has no modes of its own: they come from the command line.
GIVEN_MODES = {"custom": ["benchmark.modes=[omniglot,my_scans]"]}


def test_every_benchmark_learner_modulation_and_shot_composes():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        configs = {combo: compose(config_name="config", overrides=[
            f"benchmark={combo[0]}", *GIVEN_MODES.get(combo[0], []), f"learner={combo[1]}", f"modulation={combo[2]}",
            f"shot={combo[3]}"])
            for combo in itertools.product(names("benchmark"), names("learner"), names("modulation"), names("shot"))}
    for (benchmark, learner, modulation, shot), cfg in configs.items():
        assert (cfg.benchmark.name, cfg.learner.name, cfg.modulation.name) == (benchmark, learner, modulation)
        assert cfg.shot == int(shot[0]) and cfg.image_size == cfg.benchmark.image_size
        assert len(cfg.benchmark.modes) == MODES_PER_BENCHMARK.get(benchmark, 1)


@pytest.mark.parametrize("experiment", names("experiment"))
def test_experiments_compose_and_their_sweeps_expand(experiment):

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
        assert cfg.name == experiment
        params = cfg.hydra.sweeper.params or {}
        grid = [[f"{key}={value}" for value in str(values).split(",")] for key, values in params.items()]
        jobs = list(itertools.product(*grid))
        for job in jobs:  # every job of the sweep is a valid configuration
            compose(config_name="config", overrides=[f"experiment={experiment}", *job])
    if experiment.startswith("paper_") and experiment.endswith("_table"):
        assert len(jobs) == 3 * 4 * 2  # modulations × multimodal setups × shots


def test_run_folder_names_are_single_bounded_folders():
    from kml.config import MAX_NAME, folder_name

    assert folder_name("") == "default"
    assert folder_name("data.root=/a/b,seed=1") == "data.root=_a_b,seed=1"
    long_a, long_b = "x=" + "1" * 300, "x=" + "1" * 299 + "2"
    assert len(folder_name(long_a)) == MAX_NAME and folder_name(long_a) != folder_name(long_b)
