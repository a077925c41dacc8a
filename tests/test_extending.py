"""CONTRIBUTING.md's recipes, followed to the letter in a copy of the repository: a new modulation, a new
learner and a new backbone are each one Python module plus one YAML, no other file edited, and then train,
evaluate, and are checked by the existing tests on their own (those iterate over what conf/ holds)."""

from __future__ import annotations

import json
import re

import pytest

from tests.runs import repo_copy, run_in

TOY_MODULATION = '''"""A toy modulation: every conv layer's features scaled per channel by tanh(Linear(v))."""
import torch
from torch import nn

from kml.models.modulation import LayerModulation


class ChannelScale(nn.Module):
    def __init__(self, embedding_dim, layer_shapes, bound):
        super().__init__()
        self.bound = bound
        self.heads = nn.ModuleList(nn.Linear(embedding_dim, c_out) for c_out, _, _ in layer_shapes)

    def forward(self, v):
        return [LayerModulation(feature_scale=self.bound * torch.tanh(head(v))) for head in self.heads]
'''

TOY_MODULATION_YAML = '''_target_: kml.models.channel_scale.ChannelScale
name: scale
method_name: "{learner}+Scale"
embedding_dim: 16
encoder_channels: [8, 8, 8, 8]
bound: 0.5
'''

TOY_LEARNER = '''"""A toy learner: prototypes compared by cosine similarity (no inner loop)."""
import torch
import torch.nn.functional as F

from kml.learners.base import Learner


class CosineNet(Learner):
    needs_head = False  # the one declared capability: embeddings, not logits, out of the backbone

    def __init__(self, backbone, modulator, way, *, scale):
        super().__init__(backbone, modulator, way)
        self.scale = scale

    def task_logits(self, support_x, support_y, query_x, *, outer_graph=True):
        modulation = self.task_modulation(support_x)
        support = F.normalize(self.backbone(support_x, modulation=modulation), dim=-1)
        queries = F.normalize(self.backbone(query_x, modulation=modulation), dim=-1)
        one_hot = F.one_hot(support_y, self.way).to(support.dtype)
        prototypes = F.normalize(one_hot.T @ support, dim=-1)
        return self.scale * queries @ prototypes.T

    def meta_loss(self, batch):
        return self.per_task_meta_loss(batch)

    @torch.no_grad()
    def evaluate(self, batch):
        return torch.stack([(self.task_logits(batch.support_x[t], batch.support_y[t], batch.query_x[t])
                             .argmax(-1) == batch.query_y[t]).float().mean() for t in range(batch.num_tasks)])
'''

TOY_LEARNER_YAML = '''_target_: kml.learners.cosine.CosineNet
name: cosine
display_name: CosineNet
scale: 10.0
lr: 0.001
'''


TOY_BACKBONE = '''"""A toy backbone of another shape: two stride-2 convs (BN, ReLU), a spatial mean, an optional head.
It has no batched_forward, so the learners run its tasks one by one."""
import torch.nn.functional as F
from torch import nn

from kml.models.functional import BatchStatNorm2d


class TwoConv(nn.Module):
    def __init__(self, in_channels, channels, num_classes):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(in_channels, channels, 3, stride=2, padding=1),
                                    nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1)])
        self.norms = nn.ModuleList([BatchStatNorm2d(channels), BatchStatNorm2d(2 * channels)])
        self.in_channels = in_channels
        self.head = nn.Linear(2 * channels, num_classes) if num_classes else None

    @property
    def layer_shapes(self):  # what a modulator is sized by: (C_out, C_in, k) per conv
        return [(c.out_channels, c.in_channels, c.kernel_size[0]) for c in self.convs]

    def forward(self, x, modulation=None):
        for conv, norm, m in zip(self.convs, self.norms, modulation or [None, None]):
            weight, bias = (conv.weight, conv.bias) if m is None else (m.kernel(conv.weight), m.bias(conv.bias))
            x = norm(F.conv2d(x, weight, bias, stride=2, padding=1))
            x = F.relu(x if m is None else m.features(x))
        x = x.mean(dim=(2, 3))
        return x if self.head is None else self.head(x)


def two_conv(in_channels=3, channels=16, num_classes=None):
    return TwoConv(in_channels, channels, num_classes)
'''

TOY_BACKBONE_YAML = '''_target_: kml.models.two_conv.two_conv
name: two_conv
channels: 16
in_channels: 3
'''


def passed(done) -> int:
    found = re.search(r"(\d+) passed", done.stdout)
    assert done.returncode == 0 and found, done.stdout[-3000:] + done.stderr[-3000:]
    return int(found.group(1))


def results(repo, run_dir) -> dict:
    return json.loads((repo / run_dir / "results.json").read_text())


@pytest.mark.parametrize("learner", ["maml", "protonet"])
def test_a_new_modulation_is_one_module_and_one_yaml(tmp_path, synthetic_root, learner):
    repo = repo_copy(tmp_path / "repo")
    (repo / "kml" / "models" / "channel_scale.py").write_text(TOY_MODULATION)
    (repo / "conf" / "modulation" / "scale.yaml").write_text(TOY_MODULATION_YAML)
    done = run_in(repo, ["launch.py", "debug=tiny", f"learner={learner}", "modulation=scale", "logger.mode=disabled",
                         f"data.root={synthetic_root}", "hydra.run.dir=run"])
    assert done.returncode == 0, done.stderr[-3000:]
    name = {"maml": "MAML+Scale", "protonet": "ProtoNet+Scale"}[learner]
    assert results(repo, "run")["method"] == name and 0 <= results(repo, "run")["overall"]["mean"] <= 1
    if learner == "maml":  # the existing tests pick it up: the batched path against the per-task loop, …
        done = run_in(repo, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_batched.py",
                             "tests/test_learners.py", "-k", "scale and not learns"])
        assert passed(done) >= 8


def test_a_new_learner_is_one_module_and_one_yaml(tmp_path, synthetic_root):
    repo = repo_copy(tmp_path / "repo")
    (repo / "kml" / "learners" / "cosine.py").write_text(TOY_LEARNER)
    (repo / "conf" / "learner" / "cosine.yaml").write_text(TOY_LEARNER_YAML)
    # Trained, evaluated, and measured by the transference analysis, which needs only task_logits.
    done = run_in(repo, ["launch.py", "debug=tiny", "learner=cosine", "modulation=kml", "transference=on",
                         "logger.mode=disabled", f"data.root={synthetic_root}", "hydra.run.dir=run"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert results(repo, "run")["method"] == "MCosineNet+KML"
    assert sorted(p.name for p in (repo / "run" / "transference").glob("lr_step*.npz")) == [
        "lr_step10.npz", "lr_step20.npz"]
    done = run_in(repo, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_learners.py",
                         "tests/test_config.py", "-k", "cosine and not learns"])
    assert passed(done) >= 6


@pytest.mark.parametrize("learner, modulation", [("maml", "kml"), ("protonet", "film")])
def test_a_new_backbone_is_one_module_and_one_yaml(tmp_path, synthetic_root, learner, modulation):
    """A backbone of another shape, without a batched forward of its own, trains and evaluates through launch.py
    with the fast path left on auto: the learners fall back to the per-task loop and the log says so once."""
    repo = repo_copy(tmp_path / "repo")
    (repo / "kml" / "models" / "two_conv.py").write_text(TOY_BACKBONE)
    (repo / "conf" / "backbone" / "two_conv.yaml").write_text(TOY_BACKBONE_YAML)
    done = run_in(repo, ["launch.py", "debug=tiny", f"learner={learner}", f"modulation={modulation}",
                         "backbone=two_conv", "learner.fast_path.batched=auto", "logger.mode=disabled",
                         f"data.root={synthetic_root}", "hydra.run.dir=run"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("backbone TwoConv has no batched_forward") == 1, done.stdout[-3000:]
    assert 0 <= results(repo, "run")["overall"]["mean"] <= 1
    # Asked for outright, the batched path is refused in one line instead of running the wrong network.
    done = run_in(repo, ["launch.py", "debug=tiny", f"learner={learner}", "backbone=two_conv",
                         "learner.fast_path.batched=true", "logger.mode=disabled", f"data.root={synthetic_root}",
                         "hydra.run.dir=run_batched"])
    assert done.returncode == 2 and "error: learner.fast_path.batched=true, but backbone TwoConv has no " \
        "batched_forward" in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]
