"""The frozen language model as the mapper sees it: prefix-conditioned caption loss and greedy generation.

A sequence is [visual prefix (L embeddings)] [prompt tokens] [target tokens + EOS]; only target tokens
(EOS included, so the model learns where to stop) carry loss. Generation is greedy and stops at EOS,
per sequence, which the reference implementation did not do. Decoding reuses the key/value cache through
transformers' `cache` argument (5.24 on; the older `past_key_values` name goes in 5.40).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TokenBatch:
    ids: torch.Tensor          # [B, S] prompt then target, right-padded
    attention: torch.Tensor    # [B, S] 1 on real tokens
    is_target: torch.Tensor    # [B, S] True where the token is to be predicted


class FrozenLM:
    """Wraps a frozen causal LM and its tokenizer. Not an nn.Module, so a learner's `.train()` and
    `state_dict()` never reach the frozen weights."""

    def __init__(self, model, tokenizer, max_target_tokens: int = 24):
        self.model, self.tokenizer = model, tokenizer
        self.eos = int(tokenizer.eos_token_id)
        self.pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos)
        self.max_target_tokens = max_target_tokens

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def embed_dim(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]

    def tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def target(self, text: str) -> list[int]:
        """Target ids ending in EOS; long captions are cut so that EOS always fits."""
        return self.tokens(text)[: self.max_target_tokens - 1] + [self.eos]

    def batch(self, prompts: list[str], targets: list[str]) -> TokenBatch:
        rows = [(self.tokens(p), self.target(t)) for p, t in zip(prompts, targets, strict=True)]
        width = max(len(p) + len(t) for p, t in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        attention = torch.zeros(len(rows), width, dtype=torch.long)
        is_target = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, (p, t) in enumerate(rows):
            ids[i, :len(p) + len(t)] = torch.tensor(p + t)
            attention[i, :len(p) + len(t)] = 1
            is_target[i, len(p):len(p) + len(t)] = True
        device = self.device
        return TokenBatch(ids.to(device), attention.to(device), is_target.to(device))

    def loss(self, prefix: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
        """Mean cross-entropy over the target tokens, given prefix embeddings [B, L, d]."""
        embeds = torch.cat([prefix, self.model.get_input_embeddings()(batch.ids)], dim=1)
        ones = torch.ones(prefix.shape[:2], dtype=batch.attention.dtype, device=prefix.device)
        logits = self.model(inputs_embeds=embeds, attention_mask=torch.cat([ones, batch.attention], 1)).logits
        # The logit at position j predicts the token at j + 1: text token i sits at L + i.
        predicted = logits[:, prefix.shape[1] - 1:-1]
        return F.cross_entropy(predicted[batch.is_target].float(), batch.ids[batch.is_target])

    @torch.no_grad()
    def generate(self, prefix: torch.Tensor, prompts: list[str], max_new_tokens: int = 24) -> list[list[int]]:
        """Greedy continuation of [prefix; prompt] for each row, each stopping at its first EOS (not returned)."""
        out: list[list[int] | None] = [None] * len(prompts)
        by_length: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):  # equal-length prompts run together: no padding inside the prompt
            by_length.setdefault(len(self.tokens(p)), []).append(i)
        for rows in by_length.values():
            ids = [self.tokens(prompts[i]) for i in rows]
            found = self._greedy(prefix[rows], torch.tensor(ids, dtype=torch.long, device=prefix.device),
                                 max_new_tokens)
            for i, tokens in zip(rows, found, strict=True):
                out[i] = tokens
        return out

    def _greedy(self, prefix: torch.Tensor, prompt: torch.Tensor, max_new_tokens: int) -> list[list[int]]:
        embed = self.model.get_input_embeddings()
        inputs = torch.cat([prefix, embed(prompt)], dim=1)
        done = torch.zeros(len(prefix), dtype=torch.bool, device=prefix.device)
        generated, cache = [], None
        for _ in range(max_new_tokens):
            result = self.model(inputs_embeds=inputs, cache=cache, use_cache=True)
            cache = result.cache
            token = result.logits[:, -1].argmax(-1)
            token = torch.where(done, torch.full_like(token, self.eos), token)
            generated.append(token)
            done |= token == self.eos
            if done.all():
                break
            inputs = embed(token[:, None])
        rows = torch.stack(generated, 1).tolist() if generated else [[] for _ in range(len(prefix))]
        return [r[: r.index(self.eos)] if self.eos in r else r for r in rows]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
