"""Every experiment file runs (slow; `make test-slow`): each conf/experiment/*.yaml as the README shows
it, swept with -m, at debug=tiny sizes, on Omniglot and the mini-ImageNet stand-in of ../shared/data and on
FC100, CUB and Aircraft archives generated in their official layouts (their images are not available
offline). Then kml.report reads every sweep, so a long sweep cannot fail half-way on a setup nobody ran."""

import json

import pytest

from kml.analysis import report
from kml.data.prepare import prepare
from tests import archives
from tests.configs import options
from tests.runs import TINY_SIZE, launch


@pytest.fixture(scope="module")
def every_dataset(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prepare("omniglot", shared_data / "omniglot" / "omniglot_png_full.tar.gz", root, TINY_SIZE)
    prepare("miniimagenet", shared_data / "miniimagenet_subset" / "tinyimagenet64_miniclasses.tar.gz", root,
            TINY_SIZE)
    generated = tmp_path_factory.mktemp("archives")
    per_class = 10  # enough for debug=tiny's 5-shot episodes (5 shots + 5 queries)
    prepare("fc100", archives.cifar100_tar(generated / "cifar-100-python.tar.gz", per_class, per_class), root,
            TINY_SIZE)
    prepare("cub", archives.cub_tar(generated / "CUB_200_2011.tgz", per_class), root, TINY_SIZE)
    prepare("aircraft", archives.aircraft_tar(generated / "fgvc-aircraft-2013b.tar.gz", 2 * per_class), root,
            TINY_SIZE)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_runs_at_debug_size(experiment, every_dataset, tmp_path):
    done = launch(["-m", f"experiment={experiment}", "debug=tiny", f"data.root={every_dataset}",
                   f"hydra.sweep.dir={tmp_path}", "logger.mode=disabled"], timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(path.read_text()) for path in tmp_path.rglob("results.json")]
    assert results and all(0 <= r["overall"]["mean"] <= 1 for r in results)
    assert report.main([str(tmp_path)]) == 0
