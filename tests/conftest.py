"""Shared fixtures: the real data folder (../shared/data, or $KML_SHARED_DATA) and real datasets
prepared from it once per test session, all at REAL_IMAGE_SIZE under one root; the device of the tests
that take one (`--kml-device`, cpu by default: `python -m kml.bench gpu` runs them with cuda)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from kml.data.prepare import prepare

SHARED_DATA = Path(os.environ.get("KML_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
REAL_IMAGE_SIZE = 28  # small, to keep the session fast on a CPU


def pytest_addoption(parser):
    parser.addoption("--kml-device", default="cpu", choices=["cpu", "cuda"],
                     help="device of the tests that take the `device` fixture (marked `device`); default cpu")


def pytest_configure(config):
    if config.getoption("--kml-device") == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("--kml-device cuda: no CUDA device is visible")


def pytest_collection_modifyitems(config, items):
    """Tests that take `device` are marked `device` (`-m device` selects them); `cuda`-marked tests are
    skipped where no CUDA device is visible."""
    import torch

    no_cuda = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)
        if no_cuda is not None and item.get_closest_marker("cuda"):
            item.add_marker(no_cuda)


@pytest.fixture(scope="session")
def device(request):
    """Where the device-taking tests run: --kml-device (cpu, or cuda on a GPU machine)."""
    import torch

    return torch.device(request.config.getoption("--kml-device"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set KML_SHARED_DATA to point at it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def real_image_size() -> int:
    return REAL_IMAGE_SIZE


@pytest.fixture(scope="session")
def real_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("real_data")


@pytest.fixture(scope="session")
def prepared_omniglot(shared_data, real_root) -> Path:
    """Root holding omniglot/<REAL_IMAGE_SIZE>px from the full official Omniglot."""
    prepare("omniglot", shared_data / "omniglot" / "omniglot_png_full.tar.gz", real_root, REAL_IMAGE_SIZE)
    return real_root


@pytest.fixture(scope="session")
def prepared_miniimagenet(shared_data, real_root) -> Path:
    """Root holding miniimagenet/<REAL_IMAGE_SIZE>px: the 25-class real stand-in (14/6/5, 500 each)."""
    source = shared_data / "miniimagenet_subset" / "tinyimagenet64_miniclasses.tar.gz"
    prepare("miniimagenet", source, real_root, REAL_IMAGE_SIZE)
    return real_root


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """Root holding the synthetic benchmark at debug=tiny's image size (generated once per session)."""
    from kml.data import synthetic
    from tests.runs import TINY_SIZE

    root = tmp_path_factory.mktemp("synthetic")
    synthetic.ensure(root, TINY_SIZE)
    return root


@pytest.fixture(scope="module")
def single_thread():
    """Tiny networks: intra-op threads only add synchronisation overhead (10× slower on 2 busy cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
