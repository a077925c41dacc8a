"""Task-conditioned modulation of the backbone: none, FiLM (MMAML) and Kernel ModuLation (KML).

A generator maps the task embedding v (one vector per task) to one `LayerModulation` per conv layer;
the backbone applies it. With `init: identity` (the default) both generators start at the identity
modulation, so a freshly built modulated learner computes exactly what the unmodulated one computes:
training starts from plain MAML / ProtoNet and the generator learns only the task-specific deviation,
instead of first having to undo random, task-dependent perturbations of every layer. `init: default`
keeps PyTorch's initialisation, as the authors' released code does (docs/protocols.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from kml.errors import ConfigError

# (C_out, C_in, k) of one conv layer; the generators are sized from the backbone's list of these.
LayerShape = tuple[int, int, int]


class LayerModulation(NamedTuple):
    """What to change in one conv layer; None fields leave that part untouched.

    A NamedTuple (not a dataclass) because torch's pytree utilities, and so torch.func.vmap (the
    transference analysis runs learners under it), understand NamedTuples out of the box.
    """

    # KML's factor, shaped like the conv weight: Ŵ = W ⊙ factor, with factor = 1 + M_l (paper) or M_l
    # (released code). Stored with the 1 already added because a MAML inner loop applies it at every
    # step, and each `1 +` would be one more pass over the kernel, forward and backward.
    kernel_factor: torch.Tensor | None = None
    bias_shift: torch.Tensor | None = None  # KML g3(v) [C_out]: b̂ = b + shift
    feature_scale: torch.Tensor | None = None  # FiLM γ [C_out], applied after BN: y·(1 + γ) + β
    feature_shift: torch.Tensor | None = None  # FiLM β [C_out]

    def kernel(self, weight: torch.Tensor) -> torch.Tensor:
        return weight if self.kernel_factor is None else weight * self.kernel_factor

    def bias(self, bias: torch.Tensor | None) -> torch.Tensor | None:
        if self.bias_shift is None:
            return bias
        return self.bias_shift if bias is None else bias + self.bias_shift

    def features(self, y: torch.Tensor) -> torch.Tensor:
        if self.feature_scale is not None:
            y = y * (1 + self.feature_scale.view(1, -1, 1, 1))
        if self.feature_shift is not None:
            y = y + self.feature_shift.view(1, -1, 1, 1)
        return y

    def detach(self) -> LayerModulation:
        return LayerModulation(*(None if t is None else t.detach() for t in self))


INITS = ("identity", "default")


def _check_init(init: str) -> None:
    if init not in INITS:
        raise ConfigError(f"modulation.init={init!r} is not valid; choose one of {', '.join(INITS)}")


class FiLMGenerator(nn.Module):
    """MMAML's FiLM: (γ_l, β_l) = Linear_l(v), applied after the BN of layer l."""

    def __init__(self, embedding_dim: int, layer_shapes: Sequence[LayerShape], init: str = "identity") -> None:
        super().__init__()
        _check_init(init)
        self.heads = nn.ModuleList(nn.Linear(embedding_dim, 2 * c_out) for c_out, _, _ in layer_shapes)
        if init == "identity":
            for head in self.heads:
                # Zero output layer: γ = β = 0 is the identity modulation (see the module docstring).
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def forward(self, v: torch.Tensor) -> list[LayerModulation]:
        modulations = []
        for head in self.heads:
            gamma, beta = head(v).chunk(2, dim=-1)
            modulations.append(LayerModulation(feature_scale=gamma, feature_shift=beta))
        return modulations


class KMLGenerator(nn.Module):
    """Kernel ModuLation: Ŵ_l = W_l ⊙ (1 + M_l), M_l = reshape(g1_l(v) ⊗ g2_l(v)), b̂_l = b_l + g3_l(v),
    all g linear.

    identity: False drops the identity term, Ŵ_l = W_l ⊙ M_l (the authors' released code).
    factors: the lengths (a, b) of g1_l and g2_l per layer, with a·b = C_out·C_in·k·k; the a×b outer
        product is reshaped row-major to the kernel's shape. None: (C_out, C_in·k·k), the paper's
        reading (g1 over output channels, g2 over input taps). "released": the authors' code's lengths,
        (C_out, C_in·k·k) for the first layer and (k·C_out, k·C_in) after it, which is its hard-coded
        (32, 27), (192, 96), (384, 192), (768, 384) for conv4-32 and the same rule for other widths.
    init: "identity" starts at M = 0 and a zero shift (g1 = g3 = 0); "default" keeps PyTorch's init.

    The rank-one factorisation needs a + b outputs per layer instead of C_out·C_in·k·k
    (see `full_generator_parameters`).
    """

    def __init__(
        self,
        embedding_dim: int,
        layer_shapes: Sequence[LayerShape],
        identity: bool = True,
        factors: Sequence[Sequence[int]] | str | None = None,
        init: str = "identity",
    ) -> None:
        super().__init__()
        _check_init(init)
        if not identity and init == "identity":
            raise ConfigError("modulation.identity=false with init=identity makes M = 0, which zeroes every "
                             "kernel; use modulation.init=default (as the released code)")
        self.embedding_dim = embedding_dim
        self.layer_shapes = [tuple(shape) for shape in layer_shapes]
        self.identity = identity
        if factors is None:
            factors = [(c_out, c_in * k * k) for c_out, c_in, k in self.layer_shapes]
        elif factors == "released":
            factors = [(c_out, c_in * k * k) if i == 0 else (k * c_out, k * c_in)
                       for i, (c_out, c_in, k) in enumerate(self.layer_shapes)]
        self.factors = [tuple(int(n) for n in pair) for pair in factors]
        if len(self.factors) != len(self.layer_shapes):
            raise ConfigError(f"modulation.factors has {len(self.factors)} pairs for {len(self.layer_shapes)} layers; "
                              "give one (out, in) pair per conv layer, or null (the paper) or released")
        for (a, b), (c_out, c_in, k) in zip(self.factors, self.layer_shapes, strict=True):
            if a * b != c_out * c_in * k * k:
                raise ConfigError(f"modulation.factors pair ({a}, {b}) has {a * b} entries, not the "
                                 f"{c_out * c_in * k * k} of a ({c_out}, {c_in}, {k}, {k}) kernel; its product must match")
        self.out_factors = nn.ModuleList(nn.Linear(embedding_dim, a) for a, _ in self.factors)
        self.in_factors = nn.ModuleList(nn.Linear(embedding_dim, b) for _, b in self.factors)
        self.bias_shifts = nn.ModuleList(nn.Linear(embedding_dim, c_out) for c_out, _, _ in layer_shapes)
        if init == "identity":
            for layer in (*self.out_factors, *self.bias_shifts):
                # g1 = g3 = 0 makes M = 0 and the shift 0: the identity modulation (module docstring).
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        # g2 keeps PyTorch's default random init on purpose. M = g1 ⊗ g2 is bilinear, so zeroing both
        # factors would be a saddle where each factor's gradient (∝ the other factor) is zero forever.
        # A constant g2 = 1 would not do either: M = γ ⊗ 1 only rescales output channels, which the
        # batch-statistics BN that follows every conv cancels, so g1 would get (almost) no gradient.

    def forward(self, v: torch.Tensor) -> list[LayerModulation]:
        modulations = []
        for (c_out, c_in, k), g1, g2, g3 in zip(
            self.layer_shapes, self.out_factors, self.in_factors, self.bias_shifts, strict=True
        ):
            # The outer product g1 ⊗ g2, for one task's v [D] or for every task's v [T, D] at once.
            outer = g1(v).unsqueeze(-1) * g2(v).unsqueeze(-2)
            kernel_factor = outer.view(*v.shape[:-1], c_out, c_in, k, k)
            if self.identity:
                kernel_factor = kernel_factor + 1
            modulations.append(LayerModulation(kernel_factor=kernel_factor, bias_shift=g3(v)))
        return modulations

    def full_generator_parameters(self) -> int:
        """Parameters of a non-factorised linear generator emitting every layer's whole M_l and bias shift."""
        return sum(
            (self.embedding_dim + 1) * (c_out * c_in * k * k + c_out) for c_out, c_in, k in self.layer_shapes
        )


class TaskModulator(nn.Module):
    """Task encoder followed by a generator: support images of one task → one modulation per conv layer."""

    def __init__(self, encoder: nn.Module, generator: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.generator = generator

    def forward(self, support_x: torch.Tensor) -> list[LayerModulation]:
        return self.generator(self.encoder(support_x))

    def forward_tasks(self, support_x: torch.Tensor) -> list[LayerModulation]:
        """Support images [T, N*K, C, H, W] of T tasks → modulations whose tensors lead with T (the
        generators are linear maps, so they take every task's v [T, D] as they take one v [D])."""
        return self.generator(self.encoder.forward_tasks(support_x))
