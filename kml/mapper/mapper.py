"""The meta-mapper: learnable prefix tokens that attend, as a set, over the visual tokens of one image.

    X = [P; v]                      P ∈ R^{L×d_v} learnable, v ∈ R^{T×d_v} frozen visual features
    Q, K, V = X W_q, X W_k, X W_v   each d_v → d_e (the language model's embedding size)
    H = LN_1(Q + softmax(Q Kᵀ/s) V)             multi-head (set attention block)
    O = LN_2(H + GELU(H W_o))
    prefix = O[:L]                  fed to the frozen LM as `inputs_embeds` before the text

Choices where the released code differs, each a switch (the first value is the default):
- head_layout "paper": `heads` heads of d_h = d_e/heads, s = √d_h. "released": the released code splits
  the d_e-wide projections into heads of d_h = d_v/heads and scales by s = √d_v, so CLIP (d_v = 512) and
  GPT-2 (d_e = 768) with 8 heads give 12 heads of 64 scaled by √512.
- activation "gelu" | "leaky_relu" (released).
- dropout follows `self.training`, so `eval()` turns it off; `dropout_at_test=True` keeps it on, as the
  released code (whose p is 0.5, and which drops after the second residual sum rather than its branch).
- init "default": PyTorch's layer initialisation, prefix N(0, 1/d_v), final layer-norm gain at the LM's
  embedding scale (see below). "xavier" (released): Xavier-uniform weights, zero biases, prefix N(0, 1),
  unit gains.

This is the only learned part (about 1.8M parameters for CLIP ViT-B/32 embeddings and GPT-2, L = 4).
Visual features are first standardised per dimension with fixed statistics of the training features
(buffers, saved with the mapper): frozen encoders' features share one dominant direction (mean pairwise
cosine 0.99 for the tiny CLIP of the tests), so inner-loop SGD would move every image's prefix alike and
could not bind names to classes in a few steps; standardised, a few steps suffice.
All parameters are plain module parameters, so MAML's fast weights are a dict passed to
`torch.func.functional_call`.
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


HEAD_LAYOUTS = ("paper", "released")
ACTIVATIONS = {"gelu": F.gelu, "leaky_relu": F.leaky_relu}
INITS = ("default", "xavier")


def head_layout(visual_dim: int, embed_dim: int, heads: int, layout: str = "paper") -> tuple[int, float]:
    """(width of one head, the attention's divisor) of a `layout`; ValueError when the widths do not fit."""
    if layout not in HEAD_LAYOUTS:
        raise ValueError(f"mapper head_layout={layout!r} is not valid; choose one of: {', '.join(HEAD_LAYOUTS)}")
    if layout == "paper":
        width, scale, fits = embed_dim // heads, math.sqrt(embed_dim // heads), embed_dim % heads == 0
    else:  # the released code sizes heads by the visual width but splits the LM-wide projections
        width, scale = visual_dim // heads, math.sqrt(visual_dim)
        fits = width > 0 and embed_dim % width == 0
    if not fits:
        raise ValueError(f"mapper heads={heads} with head_layout={layout} does not split the LM embedding size "
                         f"{embed_dim} (visual size {visual_dim}) into equal heads")
    return width, scale


class MetaMapper(nn.Module):
    def __init__(self, visual_dim: int, embed_dim: int, prefix_length: int = 4, heads: int = 8,
                 dropout: float = 0.0, output_scale: float = 1.0, layout: str = "paper",
                 activation: str = "gelu", dropout_at_test: bool = False, init: str = "default"):
        super().__init__()
        if activation not in ACTIVATIONS or init not in INITS:
            raise ValueError(f"mapper activation={activation!r} / init={init!r} is not valid; choose an "
                             f"activation of {', '.join(ACTIVATIONS)} and an init of {', '.join(INITS)}")
        self.head_width, self.attention_scale = head_layout(visual_dim, embed_dim, heads, layout)
        self.prefix_length, self.dropout, self.dropout_at_test = prefix_length, dropout, dropout_at_test
        self.activation = ACTIVATIONS[activation]
        self.prefix = nn.Parameter(torch.randn(prefix_length, visual_dim))
        self.query = nn.Linear(visual_dim, embed_dim)
        self.key = nn.Linear(visual_dim, embed_dim)
        self.value = nn.Linear(visual_dim, embed_dim)
        self.out = nn.Linear(embed_dim, embed_dim)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)
        with torch.no_grad():
            if init == "xavier":
                for layer in (self.query, self.key, self.value, self.out):
                    nn.init.xavier_uniform_(layer.weight)
                    nn.init.zeros_(layer.bias)
            else:
                self.prefix.div_(math.sqrt(visual_dim))  # the scale of the standardised features beside it
                # Layer norm leaves unit-variance vectors, far larger than a typical LM's token embeddings;
                # starting the final gain at the embeddings' scale lets the prefix look like text to the
                # frozen LM from step 0.
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
        split = lambda t: t.unflatten(-1, (-1, self.head_width)).transpose(1, 2)  # noqa: E731  [B, h, L+T, d_h]
        # Written out rather than F.scaled_dot_product_attention: the fused CPU kernel has no double
        # backward, which second-order MAML needs.
        qh, kh, vh = split(q), split(k), split(v)
        weights = torch.softmax(qh @ kh.transpose(-1, -2) / self.attention_scale, dim=-1)
        h = q + (weights @ vh).transpose(1, 2).flatten(-2)
        drop = self.training or self.dropout_at_test
        h = self.norm1(F.dropout(h, self.dropout, drop))
        h = self.norm2(h + F.dropout(self.activation(self.out(h)), self.dropout, drop))
        return h[:, :self.prefix_length]


def embedding_scale(lm) -> float:
    """Root-mean-square entry of the LM's input embedding matrix (the `output_scale` of the mapper)."""
    weight = lm.get_input_embeddings().weight
    return weight.detach().float().pow(2).mean().sqrt().item()
