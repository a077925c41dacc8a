import pytest
import torch

from kml.data.errors import DataError
from kml.data.sampler import EpisodeSampler, MultimodalSampler, SplitDataset


def numbered_dataset(classes=10, per_class=20, channels=1, size=8, name="toy"):
    """Every image is filled with its own row number, so episodes can be traced back to rows."""
    n = classes * per_class
    images = torch.arange(n, dtype=torch.int64).view(n, 1, 1, 1).expand(n, channels, size, size) % 256
    labels = torch.arange(classes).repeat_interleave(per_class)
    return SplitDataset(images.to(torch.uint8).contiguous(), labels, [f"c{i}" for i in range(classes)], name, "train")


def rows_of(x):
    return x[:, 0, 0, 0].long()


def test_shapes_labels_and_disjoint_support_query():
    d = numbered_dataset()
    sampler = MultimodalSampler([EpisodeSampler(d, way=5, shot=2, query=3)], meta_batch=4, seed=1)
    batch = sampler.sample()
    assert batch.support_x.shape == (4, 10, 3, 8, 8) and batch.query_x.shape == (4, 15, 3, 8, 8)
    assert batch.support_x.dtype == torch.uint8 and batch.mode.tolist() == [0, 0, 0, 0]
    for t in range(4):
        assert torch.equal(torch.bincount(batch.support_y[t]), torch.full((5,), 2))
        assert torch.equal(torch.bincount(batch.query_y[t]), torch.full((5,), 3))
        s_rows, q_rows = rows_of(batch.support_x[t]), rows_of(batch.query_x[t])
        assert len(set(s_rows.tolist()) | set(q_rows.tolist())) == 25  # no image used twice
        # every label maps to exactly one class, and different labels to different classes
        s_class, q_class = s_rows // 20, q_rows // 20
        for label in range(5):
            owners = torch.cat([s_class[batch.support_y[t] == label], q_class[batch.query_y[t] == label]])
            assert owners.unique().numel() == 1
        assert s_class.unique().numel() == 5


def test_one_channel_is_tiled_to_three():
    d = numbered_dataset(channels=1)
    batch = MultimodalSampler([EpisodeSampler(d, 5, 1, 1)], meta_batch=1).sample()
    assert torch.equal(batch.support_x[:, :, 0], batch.support_x[:, :, 2])


def test_labels_are_permuted_across_tasks():
    d = numbered_dataset(classes=10)
    batch = MultimodalSampler([EpisodeSampler(d, 5, 1, 1)], meta_batch=50, seed=0).sample()
    class_of_label0 = rows_of(batch.support_x[:, 0]) // 20
    assert class_of_label0.unique().numel() > 5


def test_same_seed_same_episodes_and_state_resume():
    def make(seed):
        return MultimodalSampler([EpisodeSampler(numbered_dataset(), 5, 1, 5)], meta_batch=3, seed=seed)

    a, b, c = make(7), make(7), make(8)
    first_a, first_b, first_c = a.sample(), b.sample(), c.sample()
    assert torch.equal(first_a.query_x, first_b.query_x)
    assert not torch.equal(first_a.query_x, first_c.query_x)
    state = a.state_dict()
    expected = a.sample()
    b.load_state_dict(state)
    assert torch.equal(b.sample().support_x, expected.support_x)


def test_balanced_modes_are_exactly_round_robin():
    modes = [EpisodeSampler(numbered_dataset(name=f"m{i}"), 5, 1, 1) for i in range(3)]
    sampler = MultimodalSampler(modes, meta_batch=4, policy="balanced")
    drawn = torch.cat([sampler.sample().mode for _ in range(6)])
    assert drawn.tolist() == [i % 3 for i in range(24)]


def test_uniform_modes_in_expected_proportions():
    modes = [EpisodeSampler(numbered_dataset(name=f"m{i}"), 5, 1, 1) for i in range(3)]
    sampler = MultimodalSampler(modes, meta_batch=300, policy="uniform", seed=3)
    counts = torch.bincount(torch.cat([sampler.modes_for_batch() for _ in range(10)]), minlength=3)
    # 3000 draws: each count is 1000 ± ~26 (1 sd); 5 sd would be a broken sampler
    assert (counts - 1000).abs().max() < 130
    assert len(set(counts.tolist())) > 1  # not secretly round-robin


def test_rotation_is_per_class_and_a_multiple_of_90_degrees():
    n = 5 * 4
    images = torch.arange(n * 16, dtype=torch.uint8).view(n, 1, 4, 4)
    d = SplitDataset(images, torch.arange(5).repeat_interleave(4), list("abcde"), "omniglot", "train")
    g = torch.Generator().manual_seed(0)
    support, query = torch.empty(5, 3, 4, 4, dtype=torch.uint8), torch.empty(15, 3, 4, 4, dtype=torch.uint8)
    seen = set()
    for _ in range(20):
        EpisodeSampler(d, 5, 1, 3, rotate=True).sample_into(support, query, g)
        episode = torch.cat([support.view(5, 1, 3, 4, 4), query.view(5, 3, 3, 4, 4)], 1)[:, :, 0]
        for per_class in episode:
            rows = [int(img.min()) // 16 for img in per_class]
            turns = set()
            for img, row in zip(per_class, rows, strict=True):
                original = images[row, 0]
                match = [r for r in range(4) if torch.equal(torch.rot90(original, r, (-2, -1)), img)]
                assert match, "image is not a rotation of its source"
                turns.add(match[0])
            assert len(turns) == 1  # one rotation per class per task
            seen |= turns
    assert seen == {0, 1, 2, 3}


def test_too_few_classes_or_images_is_a_clear_error():
    d = numbered_dataset(classes=4, per_class=6)
    with pytest.raises(DataError, match="4 classes, fewer than way=5"):
        EpisodeSampler(d, way=5, shot=1, query=1)
    with pytest.raises(DataError, match="fewer than shot\\+query=7"):
        EpisodeSampler(d, way=3, shot=2, query=5)


def test_missing_dataset_names_the_prepare_command(tmp_path):
    with pytest.raises(DataError, match="python -m kml.data prepare omniglot"):
        SplitDataset.load(tmp_path, "omniglot", 28, "train")
