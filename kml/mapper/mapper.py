"""The meta-mapper: learnable prefix tokens that attend, as a set, over the visual tokens of one image.

    X = [P; v]                      P ∈ R^{L×d_v} learnable, v ∈ R^{T×d_v} frozen visual features
    Q, K, V = X W_q, X W_k, X W_v   each d_v → d_e (the language model's embedding size)
    H = LN_1(Q + softmax(Q Kᵀ/√d_h) V)           multi-head, d_h = d_e / heads (set attention block)
    O = LN_2(H + GELU(H W_o))
    prefix = O[:L]                  fed to the frozen LM as `inputs_embeds` before the text

This is the only learned part (about 1.8M parameters for CLIP ViT-B/32 embeddings and GPT-2, L = 4).
Visual features are first standardised per dimension with fixed statistics of the training features
(buffers, saved with the mapper): frozen encoders' features share one dominant direction (mean pairwise
cosine 0.99 for the tiny CLIP of the tests), so inner-loop SGD would move every image's prefix alike and
could not bind names to classes in a few steps; standardised, a few steps suffice.
Dropout follows `self.training`, so `eval()` turns it off; the reference implementation's dropout stayed
on at test time. All parameters are plain module parameters, so MAML's fast weights are a dict passed
to `torch.func.functional_call`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def parameter_count(visual_dim: int, embed_dim: int, prefix_length: int) -> int:
    """L·d_v (prefix) + 3·(d_v·d_e + d_e) (Q, K, V) + d_e² + d_e (output) + 4·d_e (two layer norms)."""
    return prefix_length * visual_dim + 3 * (visual_dim * embed_dim + embed_dim) + embed_dim**2 + 5 * embed_dim


class MetaMapper(nn.Module):
    def __init__(self, visual_dim: int, embed_dim: int, prefix_length: int = 4, heads: int = 8,
                 dropout: float = 0.0, output_scale: float = 1.0):
        super().__init__()
        if embed_dim % heads:
            raise ValueError(f"the LM embedding size {embed_dim} is not divisible by mapper.heads={heads}")
        self.prefix_length, self.heads, self.dropout = prefix_length, heads, dropout
        self.prefix = nn.Parameter(torch.randn(prefix_length, visual_dim) / math.sqrt(visual_dim))
        self.query = nn.Linear(visual_dim, embed_dim)
        self.key = nn.Linear(visual_dim, embed_dim)
        self.value = nn.Linear(visual_dim, embed_dim)
        self.out = nn.Linear(embed_dim, embed_dim)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)
        # Layer norm leaves unit-variance vectors, far larger than a typical LM's token embeddings; starting
        # the final gain at the embeddings' scale lets the prefix look like text to the frozen LM from step 0.
        with torch.no_grad():
            self.norm2.weight.fill_(output_scale)
        self.register_buffer("feature_mean", torch.zeros(visual_dim))
        self.register_buffer("feature_std", torch.ones(visual_dim))

    @torch.no_grad()
    def set_feature_statistics(self, features) -> None:
        """Per-dimension mean and std over every token of `features` [n, T, d_v] (e.g. a memory-mapped cache)."""
        total = total_sq = 0.0
        count = 0
        for start in range(0, len(features), 4096):  # chunks: a token cache can be tens of GB
            chunk = torch.from_numpy(np.asarray(features[start:start + 4096], dtype=np.float64))
            chunk = chunk.reshape(-1, len(self.feature_mean))
            total, total_sq, count = total + chunk.sum(0), total_sq + chunk.pow(2).sum(0), count + len(chunk)
        mean = total / count
        self.feature_mean.copy_(mean)
        self.feature_std.copy_((total_sq / count - mean**2).clamp_min(1e-12).sqrt().clamp_min(1e-6))

    def forward(self, visual: torch.Tensor) -> torch.Tensor:
        """visual [B, T, d_v] → prefix embeddings [B, L, d_e]."""
        batch = visual.shape[0]
        visual = (visual.to(self.prefix.dtype) - self.feature_mean) / self.feature_std
        x = torch.cat([self.prefix.expand(batch, -1, -1), visual], dim=1)
        q, k, v = self.query(x), self.key(x), self.value(x)
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731  [B, h, L+T, d_h]
        # Written out rather than F.scaled_dot_product_attention: the fused CPU kernel has no double
        # backward, which second-order MAML needs.
        qh, kh, vh = split(q), split(k), split(v)
        weights = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1]), dim=-1)
        h = q + (weights @ vh).transpose(1, 2).flatten(-2)
        h = self.norm1(F.dropout(h, self.dropout, self.training))
        h = self.norm2(h + F.dropout(F.gelu(self.out(h)), self.dropout, self.training))
        return h[:, :self.prefix_length]


def embedding_scale(lm) -> float:
    """Root-mean-square entry of the LM's input embedding matrix (the `output_scale` of the mapper)."""
    weight = lm.get_input_embeddings().weight
    return weight.detach().float().pow(2).mean().sqrt().item()
