import json

import numpy as np
import pytest
import torch

from kml.data import synthetic
from kml.data.benchmark import make_sampler
from kml.data.sampler import SplitDataset

SIZE = 32  # the benchmark's own default size


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic")
    synthetic.ensure(path, SIZE)
    return path


def test_splits_and_counts(root):
    for mode in synthetic.MODES:
        for split, classes in synthetic.CLASSES.items():
            d = SplitDataset.load(root, mode, SIZE, split)
            assert d.num_classes == classes >= 50
            assert d.images.shape[0] == classes * synthetic.IMAGES_PER_CLASS
            assert d.images.shape[-2:] == (SIZE, SIZE)
        names = [set(SplitDataset.load(root, mode, SIZE, s).class_names) for s in synthetic.CLASSES]
        assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])


def test_deterministic_and_cached(root, tmp_path):
    synthetic.ensure(tmp_path, SIZE)
    for mode in synthetic.MODES:
        a = json.loads((root / mode / f"{SIZE}px" / "manifest.json").read_text())["splits"]
        b = json.loads((tmp_path / mode / f"{SIZE}px" / "manifest.json").read_text())["splits"]
        assert a == b
    before = (tmp_path / synthetic.MODES[0] / f"{SIZE}px" / "train.npy").stat().st_mtime_ns
    synthetic.ensure(tmp_path, SIZE)
    assert (tmp_path / synthetic.MODES[0] / f"{SIZE}px" / "train.npy").stat().st_mtime_ns == before


def test_within_class_variation(root):
    for mode in synthetic.MODES:
        images = SplitDataset.load(root, mode, SIZE, "train").images[: synthetic.IMAGES_PER_CLASS].float()
        assert (images - images.mean(0)).abs().mean() > 5  # images of one class are not copies


def test_modes_differ_in_statistics(root):
    """A linear classifier on per-image colour and texture statistics tells the modes apart."""
    def stats(split):
        x = make_sampler(list(synthetic.MODES), split, 5, 1, 5, 60, root=root, image_size=SIZE).sample().query_x
        x = x.float().flatten(0, 1) / 255
        roughness = (x[..., 1:] - x[..., :-1]).abs().mean((2, 3))
        greyness = (x[:, 0] - x[:, 1]).abs().mean((1, 2))[:, None]
        return torch.cat([x.mean((2, 3)), x.std((2, 3)), roughness, greyness], 1)

    mode_of_row = torch.arange(60).remainder(3).repeat_interleave(25)  # balanced round-robin
    train, test = stats("train"), stats("test")
    mean, std = train.mean(0), train.std(0)
    torch.manual_seed(0)
    classifier = torch.nn.Linear(train.shape[1], 3)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(classifier((train - mean) / std), mode_of_row).backward()
        optimizer.step()
    accuracy = (classifier((test - mean) / std).argmax(1) == mode_of_row).float().mean()
    assert accuracy > 0.95


def test_classes_are_learnable_by_nearest_neighbour(root):
    """5-way 5-shot nearest class mean on raw pixels is far above chance in every mode."""
    for mode in synthetic.MODES:
        batch = make_sampler([mode], "test", 5, 5, 5, 50, root=root, image_size=SIZE, seed=1).sample()
        s, q = batch.support_x.float().flatten(2), batch.query_x.float().flatten(2)
        means = s.view(50, 5, 5, -1).mean(2)
        accuracy = (torch.cdist(q, means).argmin(-1) == batch.query_y).float().mean()
        assert accuracy > 0.4, (mode, accuracy)  # chance is 0.2


def test_pixels_use_the_range(root):
    for mode in synthetic.MODES:
        images = np.load(root / mode / f"{SIZE}px" / "train.npy", mmap_mode="r")
        assert images.min() < 30 and images.max() > 220
