"""Tiny stand-ins for CLIP-vision and GPT-2, built from `transformers` configs (no download).

They let the whole pipeline (and `python launch.py pipeline=mapper vision=tiny lm=tiny`) run on a CPU.
The tokenizer is word-level over a fixed vocabulary, so the synthetic task family's words (its made-up
names included) are single tokens. A randomly initialised LM is nearly uniform whatever its input (its
logits are tiny), which no prefix can steer; so the tiny LM is first trained for a couple of hundred
steps on the caption language (see `pretrain`), standing in for a pretrained LM that knows its words. It
knows every name equally: which name fits an image it can only learn from the prefix. Everything is
seeded, so the same config gives the same frozen model.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from kml.mapper.novel_names import NAMES, TEMPLATE, vocabulary

SPECIAL = ("<pad>", "<eos>", "<unk>")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's published pixel statistics
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def word_tokenizer(words: Iterable[str] | None = None) -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer; `<eos>` ends every target, `<pad>` fills batches."""
    vocab = {w: i for i, w in enumerate(dict.fromkeys([*SPECIAL, *(words or vocabulary())]))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


def tiny_lm(tokenizer, spec: Mapping | None = None, seed: int = 0) -> GPT2LMHeadModel:
    """The frozen tiny LM of `spec`; built once per process (it is never modified), so runs and tests
    that share a config share its few seconds of pretraining."""
    key = json.dumps({**dict(spec or {}), "seed": seed, "vocab": tokenizer.get_vocab()}, sort_keys=True)
    if key not in _BUILT:
        _BUILT[key] = _build_lm(tokenizer, dict(spec or {}), seed)
    return _BUILT[key]


_BUILT: dict[str, GPT2LMHeadModel] = {}


def _build_lm(tokenizer, spec: dict, seed: int) -> GPT2LMHeadModel:
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=int(spec.get("positions", 64)),
                        n_embd=int(spec.get("hidden_size", 32)), n_layer=int(spec.get("layers", 2)),
                        n_head=int(spec.get("heads", 4)), bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng():  # the same seed gives the same frozen model, whatever ran before
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
        pretrain(model, tokenizer, int(spec.get("pretrain_steps", 600)), lead=int(spec.get("lead", 4)))
    return model.eval()


def pretrain(model, tokenizer, steps: int, lead: int = 4, batch: int = 32, lr: float = 1e-2) -> None:
    """Next-token training on "<name> <unk>… this is a <name> EOS": a lead of `lead` tokens (where the
    visual prefix will sit, so it should equal the mapper's prefix length) that starts with the name.
    A real LM predicts a word it has just seen in its context more readily; this in-context cue is what a
    prefix can steer (an LM trained on uninformative leads learns to ignore whatever precedes the caption,
    and nothing could steer it). Loss on the caption only."""
    if steps <= 0:
        return
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    names = [n for pool in NAMES.values() for n in pool]
    captions = torch.tensor([encode(TEMPLATE.format(n)) + [tokenizer.eos_token_id] for n in names])
    name_ids = torch.tensor([encode(n)[0] for n in names])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # matrices this small: thread hand-offs cost more than the arithmetic
    try:
        _pretrain_steps(model, optimizer, steps, batch, lead, names, captions, name_ids, tokenizer.unk_token_id)
    finally:
        torch.set_num_threads(threads)
    optimizer.zero_grad(set_to_none=True)


def _pretrain_steps(model, optimizer, steps, batch, lead, names, captions, name_ids, filler) -> None:
    column = torch.arange(lead + captions.shape[1])
    for _ in range(steps):
        which = torch.randint(len(names), (batch,))
        ids = torch.where(column == 0, name_ids[which, None], filler)
        in_caption = (column >= lead) & (column < lead + captions.shape[1])
        offset = (column - lead).clamp(0, captions.shape[1] - 1)
        ids = torch.where(in_caption, captions[which][:, offset], ids)
        logits = model(input_ids=ids).logits[:, :-1]
        loss = F.cross_entropy(logits.flatten(0, 1), torch.where(in_caption, ids, -100)[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def tiny_vision(spec: Mapping | None = None, seed: int = 0) -> tuple[CLIPVisionModel, CLIPImageProcessor]:
    spec = dict(spec or {})
    size = int(spec.get("image_size", 32))
    config = CLIPVisionConfig(hidden_size=int(spec.get("hidden_size", 32)),
                              intermediate_size=int(spec.get("intermediate_size", 64)),
                              num_hidden_layers=int(spec.get("layers", 2)),
                              num_attention_heads=int(spec.get("heads", 4)),
                              image_size=size, patch_size=int(spec.get("patch_size", 8)))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPVisionModel(config).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                   image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    return model, processor
