"""The released code's row order at K > 1 (docs/protocols.md): KML-Classification's loaders leave a task's label
blocks in a random order, and its transductive refinement reads support rows by position; data.episode_order
reproduces it without changing the tasks."""

import pytest
import torch

from kml.learners.protonet import refine_prototypes
from tests.configs import composed


def test_released_block_order_is_a_uniform_permutation_fixed_by_the_task():
    """Block g holds the label in place g of a random permutation (the released loaders' first-appearance
    order): in 5-way, block j holds label j one time in five, and a task always gets the same order."""
    from kml.data.sampler import released_block_order

    orders = torch.stack([released_block_order(f, 5) for f in range(4000)])
    assert all(sorted(o.tolist()) == list(range(5)) for o in orders[:50])
    own = (orders == torch.arange(5)).double().mean().item()
    assert abs(own - 0.2) < 0.02  # 4000·5 draws: the standard error of a share of 0.2 is 0.003
    assert torch.equal(released_block_order(123, 5), released_block_order(123, 5))


def test_released_episode_order_moves_whole_label_blocks_and_keeps_the_tasks(synthetic_root):
    """The same tasks (images, labels, fingerprints) as label order, only their row blocks moved."""
    from kml.data.benchmark import Benchmark, Serving
    from kml.data.sampler import released_block_order

    def sample(order):
        data = Benchmark(["synthetic_glyphs"], synthetic_root, 16, way=5, shot=5, serving=Serving(episode_order=order))
        sampler = data.sampler("train", query=3, meta_batch=4, seed=1)
        return sampler.sample(), sampler.fingerprints

    (plain, plain_fp), (moved, moved_fp) = sample("by_label"), sample("released")
    assert torch.equal(plain_fp, moved_fp)
    for t, fp in enumerate(moved_fp.tolist()):
        order = released_block_order(fp, 5)
        assert torch.equal(moved.support_y[t], order.repeat_interleave(5))
        assert torch.equal(moved.query_y[t], order.repeat_interleave(3))
        for g, label in enumerate(order.tolist()):
            assert torch.equal(moved.support_x[t, 5 * g:5 * g + 5], plain.support_x[t, 5 * label:5 * label + 5])
            assert torch.equal(moved.query_x[t, 3 * g:3 * g + 3], plain.query_x[t, 3 * label:3 * label + 3])
    assert not torch.equal(moved.support_y, plain.support_y)  # in 4 tasks, some block moved


def test_released_five_shot_rule_by_hand_with_shuffled_classes():
    """5-way 5-shot in the released row order: prototype j adds the first K − 1 rows of block j, which hold
    images of label order[j] (here never j), and divides by K + mass, as KML-Classification's _update_proto
    (scripts/trainer.py:123-134, 166-168) does; `corrected` sums label j's own K rows over K + mass."""
    from kml.data.episodes import Batch
    from kml.data.sampler import reorder_blocks

    way, shot, dim = 5, 5, 3
    g = torch.Generator().manual_seed(7)
    features = torch.randn(way * shot, dim, generator=g, dtype=torch.float64) + torch.arange(way).repeat_interleave(
        shot)[:, None].double()  # label j's rows near j, so the classes are told apart
    queries = torch.randn(10, dim, generator=g, dtype=torch.float64) * 2
    labels = torch.arange(way).repeat_interleave(shot)
    order = torch.tensor([2, 0, 4, 1, 3])  # block g holds label order[g]: a derangement
    batch = reorder_blocks(Batch(features[None, :, None, None, :], labels[None], queries[None, :, None, None, :],
                                 torch.arange(way).repeat_interleave(2)[None], torch.zeros(1, dtype=torch.long)),
                           [order])
    support, support_y, queries = batch.support_x[0, :, 0, 0], batch.support_y[0], batch.query_x[0, :, 0, 0]
    prototypes = torch.stack([features[labels == j].mean(0) for j in range(way)])  # class means: order-free
    got = refine_prototypes(prototypes, support, support_y, queries, "released", way)
    weights = torch.softmax(-((queries[:, None] - prototypes[None]) ** 2).sum(-1), dim=1)
    for j in range(way):
        own_rows = features[labels == order[j]][: shot - 1]  # block j: label order[j]'s rows, last one dropped
        expected = (own_rows.sum(0) + weights[:, j] @ queries) / (shot + weights[:, j].sum())
        torch.testing.assert_close(got[j], expected)
    corrected = refine_prototypes(prototypes, support, support_y, queries, "corrected", way)
    for j in range(way):
        expected = (features[labels == j].sum(0) + weights[:, j] @ queries) / (shot + weights[:, j].sum())
        torch.testing.assert_close(corrected[j], expected)


@pytest.mark.parametrize("shot, learner_overrides, expected", [
    (5, ["learner=protonet", "learner.transductive=released"], "released"),
    (1, ["learner=protonet", "learner.transductive=released"], "by_label"),
    (5, ["learner=protonet", "learner.transductive=corrected"], "by_label"),
    (5, ["learner=protonet", "learner.transductive=released", "data.episode_order=by_label"], "by_label"),
    (5, ["learner=maml"], "by_label"),
])
def test_episode_order_auto_follows_the_released_rule_at_k_above_one(shot, learner_overrides, expected):
    from kml.run.runtime import episode_order

    assert episode_order(composed(f"shot={shot}shot", *learner_overrides)) == expected
