"""The meta-mapper, the frozen-LM wrapper and MAML on the mapper, with tiny models built from configs."""
import math
from types import SimpleNamespace

import pytest
import torch
from torch.func import functional_call

from kml.mapper import tiny
from kml.mapper.episodes import Task
from kml.mapper.frozen_lm import FrozenLM
from kml.mapper.maml import MapperMAML
from kml.mapper.mapper import MetaMapper, embedding_scale, head_layout, parameter_count
from kml.run.mapper import build_learner
from tests.mapper_fixtures import mapper_config, single_thread, tiny_lm  # noqa: F401  (fixtures)

VISUAL = 24


def make_task(lm: FrozenLM, generator: torch.Generator, tokens: int = 1) -> Task:
    names = ["dax", "wug"]
    support = torch.randn(2, tokens, VISUAL, generator=generator)
    return Task(support, [f"this is a {n}" for n in names], support.clone(), ["", ""],
                [f"this is a {n}" for n in names])


def learner_for(lm: FrozenLM, seed: int = 0, **kwargs) -> MapperMAML:
    torch.manual_seed(seed)
    mapper = MetaMapper(VISUAL, lm.embed_dim, prefix_length=4, heads=4, dropout=0.1,
                        output_scale=embedding_scale(lm.model))
    return MapperMAML(mapper, lm, **kwargs)


@pytest.mark.parametrize("visual, embed, prefix", [(512, 768, 4), (32, 64, 2), (768, 576, 8)])
def test_parameter_count_formula(visual, embed, prefix):
    mapper = MetaMapper(visual, embed, prefix_length=prefix, heads=8)
    assert sum(p.numel() for p in mapper.parameters()) == parameter_count(visual, embed, prefix)


def test_paper_sized_mapper_has_about_two_million_parameters():
    # CLIP ViT-B/32 image embeddings (512) into GPT-2 (768) with a 4-token prefix.
    assert parameter_count(512, 768, 4) == 1_777_664


def test_head_layouts_for_clip_and_gpt2():
    # Paper: 8 heads of 768/8 = 96. Released: d_v/8 = 64-wide heads over the 768-d projections, i.e. 12
    # heads, and the attention divided by √512 (its `dim_V`), not by √64.
    assert head_layout(512, 768, 8, "paper") == (96, math.sqrt(96))
    assert head_layout(512, 768, 8, "released") == (64, math.sqrt(512))
    with pytest.raises(ValueError, match="equal heads"):
        head_layout(512, 768, 7, "paper")


def test_released_attention_equals_a_hand_computation():
    torch.manual_seed(0)
    mapper = MetaMapper(16, 24, prefix_length=2, heads=8, layout="released", activation="leaky_relu").eval()
    visual = torch.randn(3, 1, 16)
    x = torch.cat([mapper.prefix.expand(3, -1, -1), visual], 1)  # the standardisation is the identity here
    q, k, v = mapper.query(x), mapper.key(x), mapper.value(x)
    heads = []
    for h in range(12):  # 24 / (16 / 8) = 12 heads of width 2
        part = slice(2 * h, 2 * h + 2)
        weights = torch.softmax(q[..., part] @ k[..., part].transpose(1, 2) / 4.0, -1)  # √16 = 4
        heads.append(q[..., part] + weights @ v[..., part])
    h = mapper.norm1(torch.cat(heads, -1))
    expected = mapper.norm2(h + torch.nn.functional.leaky_relu(mapper.out(h)))[:, :2]
    assert torch.allclose(mapper(visual), expected, atol=1e-6)


def test_released_initialisation_and_dropout_at_test():
    torch.manual_seed(0)
    mapper = MetaMapper(512, 768, heads=8, dropout=0.5, output_scale=0.1, init="xavier",
                        dropout_at_test=True).eval()
    for layer in (mapper.query, mapper.key, mapper.value, mapper.out):
        bound = math.sqrt(6 / sum(layer.weight.shape))  # Xavier-uniform
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.95 * bound
        assert not layer.bias.any()
    assert 0.9 < mapper.prefix.std() < 1.1 and torch.equal(mapper.norm2.weight, torch.ones(768))
    visual = torch.randn(2, 1, 512)
    assert not torch.equal(mapper(visual), mapper(visual))  # dropout stays on in eval mode


def test_protocol_released_sets_every_mapper_switch(tiny_lm):  # noqa: F811
    learner = build_learner(mapper_config(["protocol=released"]), tiny_lm, visual_dim=32)
    mapper = learner.mapper
    assert (mapper.head_width, mapper.attention_scale) == (4, math.sqrt(32))  # 32 / 8, √d_v
    assert mapper.activation is torch.nn.functional.leaky_relu and mapper.dropout == 0.5 and mapper.dropout_at_test
    assert torch.equal(mapper.norm2.weight, torch.ones(32)) and not mapper.query.bias.any()  # Xavier init
    assert (learner.query_loss_from_step, learner.max_grad_norm) == (2, 1.0)
    paper = build_learner(mapper_config(["protocol=released", "mapper.network.init=default"]), tiny_lm, 32)
    assert paper.mapper.query.bias.any()  # one switch overridden, the rest as released
    assert paper.mapper.dropout_at_test and paper.query_loss_from_step == 2


def test_tiny_encoders_have_the_configured_shapes(tiny_lm):  # noqa: F811
    vision, processor = tiny.tiny_vision({"hidden_size": 32, "image_size": 32})
    pixels = processor(images=[torch.zeros(20, 20, 3).numpy()], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32)
    out = vision(pixel_values=pixels)
    assert out.pooler_output.shape == (1, 32) and out.last_hidden_state.shape == (1, 17, 32)
    assert tiny_lm.embed_dim == 32 and tiny_lm.tokens("this is a dax") == tiny_lm.tokens("this is a dax")
    assert len(tiny_lm.tokens("this is a dax")) == 4 and tiny_lm.eos not in tiny_lm.tokens("this is a dax")


def test_mapper_output_shape_and_functional_forward_equals_module_forward(tiny_lm):  # noqa: F811
    learner = learner_for(tiny_lm).eval()
    visual = torch.randn(3, 5, VISUAL)
    prefix = learner.mapper(visual)
    assert prefix.shape == (3, 4, tiny_lm.embed_dim)
    params = dict(learner.mapper.named_parameters())
    assert torch.equal(functional_call(learner.mapper, params, (visual,)), prefix)
    shifted = {n: p + 0.1 for n, p in params.items()}
    assert not torch.allclose(functional_call(learner.mapper, shifted, (visual,)), prefix)


def test_dropout_is_off_in_eval_mode_and_on_in_training(tiny_lm):  # noqa: F811
    learner = learner_for(tiny_lm)
    visual = torch.randn(4, 1, VISUAL)
    learner.mapper.train()
    assert not torch.equal(learner.mapper(visual), learner.mapper(visual))
    learner.mapper.eval()
    assert torch.equal(learner.mapper(visual), learner.mapper(visual))
    assert not tiny_lm.model.training  # the frozen LM is never put in training mode


def test_evaluation_runs_without_dropout_and_restores_the_mode(tiny_lm):  # noqa: F811
    learner = learner_for(tiny_lm)
    task = make_task(tiny_lm, torch.Generator().manual_seed(0))
    learner.mapper.train()
    first, second = learner.evaluate(task, 6), learner.evaluate(task, 6)
    assert first["predictions"] == second["predictions"] and first["query_loss"] == second["query_loss"]
    assert learner.mapper.training


@pytest.mark.parametrize("answers, by_name, exact", [
    (["this is a dax", "this is a wug"], 0.5, 0.5),   # full captions: both figures agree
    (["dax", "wug"], 0.5, 0.0),                       # bare names (the Frozen files): only names can match
])
def test_evaluation_scores_both_answer_forms(tiny_lm, monkeypatch, answers, by_name, exact):  # noqa: F811
    learner = learner_for(tiny_lm)
    monkeypatch.setattr(learner, "answer", lambda *args: ["this is a dax", "this is a dax"])
    features = torch.randn(2, 1, VISUAL)
    task = Task(features, ["this is a dax", "this is a wug"], features, ["", ""], answers)
    result = learner.evaluate(task, 6)
    assert (result["accuracy"], result["accuracy_exact"]) == (by_name, exact)
    assert (result["accuracy_0step"], result["accuracy_0step_exact"]) == (by_name, exact)


@pytest.mark.parametrize("first_order", [True, False])
def test_inner_loop_lowers_the_support_loss(tiny_lm, first_order):  # noqa: F811
    learner = learner_for(tiny_lm, inner_lr=0.01, first_order=first_order).eval()
    task = make_task(tiny_lm, torch.Generator().manual_seed(1))
    trajectory, losses = learner.adapt(task, 5, create_graph=not first_order)
    assert len(trajectory) == 6 and losses[-1] < 0.5 * losses[0], losses
    assert losses[1] < losses[0]
    assert all(p.grad_fn is not None for p in trajectory[-1].values())  # fast weights stay connected to the init


def test_frozen_models_get_no_gradient_and_do_not_change(tiny_lm):  # noqa: F811
    learner = learner_for(tiny_lm, inner_lr=0.05)
    before = {n: p.clone() for n, p in tiny_lm.model.named_parameters()}
    mapper_before = {n: p.clone() for n, p in learner.mapper.named_parameters()}
    optimizer = torch.optim.AdamW(learner.mapper.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(2)
    for _ in range(2):
        optimizer.zero_grad()
        learner.meta_backward([make_task(tiny_lm, generator) for _ in range(2)])
        optimizer.step()
    assert all(not p.requires_grad and p.grad is None for p in tiny_lm.model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in tiny_lm.model.named_parameters())
    assert all(p.grad is not None for p in learner.mapper.parameters())
    assert any(not torch.equal(p, mapper_before[n]) for n, p in learner.mapper.named_parameters())
    assert set(learner.state_dict()) == {f"mapper.{k}" for k in learner.mapper.state_dict()}


def test_second_order_meta_gradient_differs_from_first_order(tiny_lm):  # noqa: F811
    task = make_task(tiny_lm, torch.Generator().manual_seed(3))
    grads = {}
    for first_order in (True, False):
        learner = learner_for(tiny_lm, seed=4, inner_lr=0.05, first_order=first_order, train_steps=2).eval()
        learner.meta_backward([task])
        grads[first_order] = torch.cat([p.grad.flatten() for p in learner.mapper.parameters()])
    assert torch.isfinite(grads[False]).all()
    assert not torch.allclose(grads[True], grads[False])


def flat_grad(learner: MapperMAML) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in learner.mapper.parameters()])


def test_multi_step_query_loss_equals_a_hand_computation(tiny_lm):  # noqa: F811
    task = make_task(tiny_lm, torch.Generator().manual_seed(5))
    learner = learner_for(tiny_lm, seed=6, inner_lr=0.05, train_steps=3, query_loss_from_step=2).eval()
    metrics = learner.meta_backward([task])
    # By hand: three first-order SGD steps on the support loss, the query losses after steps 2 and 3 averaged.
    start = dict(learner.mapper.named_parameters())
    params, after = start, []
    for _ in range(3):
        grads = torch.autograd.grad(learner.support_loss(params, task), list(params.values()))
        params = {n: p - 0.05 * g for (n, p), g in zip(params.items(), grads, strict=True)}
        after.append(learner.loss(params, task.query, task.query_prompt, task.query_answer))
    expected = (after[1] + after[2]) / 2
    assert metrics["loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert abs(after[2].item() - expected.item()) > 1e-3  # the last step alone would be another number
    by_hand = torch.cat([g.flatten() for g in torch.autograd.grad(expected, list(start.values()))])
    assert torch.allclose(flat_grad(learner), by_hand, rtol=1e-4, atol=1e-7)


def test_gradient_norm_clipping_binds(tiny_lm):  # noqa: F811
    task = make_task(tiny_lm, torch.Generator().manual_seed(7))
    free = learner_for(tiny_lm, seed=8, inner_lr=0.05).eval()
    unclipped = free.meta_backward([task])["grad_norm"]
    assert unclipped > 1.0 and flat_grad(free).norm().item() == pytest.approx(unclipped, rel=1e-5)
    clipped = learner_for(tiny_lm, seed=8, inner_lr=0.05, max_grad_norm=1.0).eval()
    assert clipped.meta_backward([task])["grad_norm"] == pytest.approx(unclipped, rel=1e-5)  # before clipping
    assert flat_grad(clipped).norm().item() == pytest.approx(1.0, rel=1e-4)
    assert torch.allclose(flat_grad(clipped), flat_grad(free) / unclipped, rtol=1e-4, atol=1e-8)  # same direction


class ScriptedLM(torch.nn.Module):
    """A causal LM stub that emits a fixed token script, whatever its input, counting its calls. It speaks
    only transformers' current cache API (`cache=` in, `.cache` out), as the real models since 5.24."""

    def __init__(self, script, vocab=10, dim=4):
        super().__init__()
        self.embed, self.script, self.vocab, self.calls = torch.nn.Embedding(vocab, dim), script, vocab, 0

    def get_input_embeddings(self):
        return self.embed

    def forward(self, inputs_embeds, cache=None, use_cache=True, attention_mask=None):
        token = self.script[min(self.calls, len(self.script) - 1)]
        assert cache == (self.calls or None)  # each step hands back the cache the previous one returned
        self.calls += 1
        logits = torch.zeros(inputs_embeds.shape[0], inputs_embeds.shape[1], self.vocab)
        logits[:, -1, token] = 1.0
        return SimpleNamespace(logits=logits, cache=self.calls)


def test_generation_stops_at_eos():
    tokenizer = SimpleNamespace(eos_token_id=2, pad_token_id=0)
    stub = ScriptedLM([5, 6, 2, 7, 7, 7])
    lm = FrozenLM(stub, tokenizer)
    assert lm.generate(torch.zeros(1, 3, 4), [""], max_new_tokens=20) == [[5, 6]]
    assert stub.calls == 3  # nothing is generated past EOS
    capped = FrozenLM(ScriptedLM([5, 6, 2]), tokenizer)
    assert capped.generate(torch.zeros(1, 3, 4), [""], max_new_tokens=1) == [[5]]


# transformers warns (FutureWarning) when the deprecated `past_key_values` argument is passed: an error here.
@pytest.mark.filterwarnings("error::FutureWarning")
def test_cached_greedy_generation_equals_recomputing_the_whole_sequence(tiny_lm):  # noqa: F811
    prefix = torch.randn(2, 4, tiny_lm.embed_dim) * embedding_scale(tiny_lm.model)
    found = tiny_lm.generate(prefix, ["this is", "this is"], max_new_tokens=6)
    embed = tiny_lm.model.get_input_embeddings()
    for row, tokens in enumerate(found):
        ids = tiny_lm.tokens("this is")
        for _ in range(6):
            sequence = torch.cat([prefix[row:row + 1], embed(torch.tensor([ids]))], 1)
            token = int(tiny_lm.model(inputs_embeds=sequence).logits[0, -1].argmax())
            if token == tiny_lm.eos:
                break
            ids.append(token)
        assert ids[2:] == tokens


def test_caption_loss_counts_target_tokens_only(tiny_lm):  # noqa: F811
    batch = tiny_lm.batch(["what is this ?", ""], ["this is a dax", "this is a wug"])
    assert batch.is_target.sum(1).tolist() == [5, 5]  # 4 words + EOS each, prompts excluded
    assert batch.ids[0, 4:9].tolist() == tiny_lm.target("this is a dax")
    assert batch.attention.sum(1).tolist() == [9, 5]
