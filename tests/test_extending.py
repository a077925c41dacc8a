"""CONTRIBUTING.md's recipes, followed to the letter in a copy of the repository: a new modulation and a new
learner are each one Python module plus one YAML, no other file edited, and then train, evaluate, and are
checked by the existing tests on their own (those iterate over what conf/ holds)."""

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
