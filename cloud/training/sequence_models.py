"""Sequence classifiers for data shaped ``(N, T, F)``: GRU, LSTM and a Transformer encoder.

Why these forms: each is written so litert-torch lowers it to a compact LiteRT graph.

- Inputs longer than :data:`MAX_STEPS` are cut into patches of consecutive steps
  (:class:`Patchify`): litert-torch has no loop op, so the unrolled length is the graph's
  size (100 steps of a GRU were ~2,000 ops; 25 patches are ~470).
- The recurrent models project the whole (patched) sequence with one ``Linear`` per gate
  before the time loop (one ``FULLY_CONNECTED`` per gate, not per step), and keep the
  gates as separate ``Linear`` layers rather than one sliced wide one (each slice would be
  an op per step). The weights are shared across steps, so int8 weights shrink the file.
- The Transformer's self-attention is spelled out (``FULLY_CONNECTED`` for q/k/v,
  ``BATCH_MATMUL`` + ``SOFTMAX``) instead of ``nn.MultiheadAttention``, so the lowered ops
  are known and every weight sits in a ``Linear`` that ai-edge-quantizer's per-op
  recipes can address (``cloud/quantization/sequence.py``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

SEQUENCE_ARCHS = ("gru", "lstm", "transformer")


#: Longest sequence unrolled into the graph; longer inputs are cut into patches (below).
MAX_STEPS = 32


def patch_size(steps: int) -> int:
    """Time steps per patch so that at most :data:`MAX_STEPS` patches remain."""
    return max(1, math.ceil(steps / MAX_STEPS))


class Patchify(nn.Module):
    """``(N, T, F)`` → ``(N, ceil(T/p), p*F)``: consecutive steps side by side.

    Why: LiteRT has no loop op that litert-torch emits, so a recurrence is unrolled per
    step (and attention is quadratic in steps); a 100-step input would be ~2,000 ops.
    Patching (as in PatchTST) keeps every step's information in a wider feature vector
    while bounding the unrolled length. The tail is zero-padded to a whole patch.
    """

    def __init__(self, steps: int, features: int) -> None:
        super().__init__()
        self.size = patch_size(steps)
        self.pad = (-steps) % self.size
        self.steps = (steps + self.pad) // self.size
        self.features = features * self.size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = nn.functional.pad(x, (0, 0, 0, self.pad))
        return x.reshape(x.shape[0], self.steps, self.features)


class _RecurrentClassifier(nn.Module):
    """Shared by the GRU and LSTM: patching, one input projection per gate for all steps at
    once, an explicit cell loop, a linear head."""

    gates: int

    def __init__(self, input_shape: tuple[int, int], num_classes: int, hidden: int) -> None:
        super().__init__()
        self.patch = Patchify(*input_shape)
        self.hidden = hidden
        # One Linear per gate (not one sliced wide Linear): a slice per gate per step
        # would be an op each in the unrolled graph.
        self.input_gates = nn.ModuleList(
            nn.Linear(self.patch.features, hidden) for _ in range(self.gates)
        )
        self.hidden_gates = nn.ModuleList(
            nn.Linear(hidden, hidden, bias=False) for _ in range(self.gates)
        )
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x)
        # (N, T', H) per gate, then one UNPACK per gate instead of a SLICE per step.
        per_gate = [g(x).unbind(dim=1) for g in self.input_gates]
        h = x.new_zeros(x.shape[0], self.hidden)
        c = x.new_zeros(x.shape[0], self.hidden)
        for t in range(self.patch.steps):
            h, c = self.cell([gate[t] for gate in per_gate], h, c)
        out: torch.Tensor = self.head(h)
        return out

    def cell(
        self, xs: list[torch.Tensor], h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step; returns the new hidden (and, for the LSTM, cell) state."""
        raise NotImplementedError


class GRUClassifier(_RecurrentClassifier):
    """A one-layer GRU over time; the last hidden state feeds a linear head."""

    gates = 3

    def cell(
        self, xs: list[torch.Tensor], h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """PyTorch's GRU equations (reset gate applied to the recurrent term)."""
        wr, wz, wn = self.hidden_gates
        r = torch.sigmoid(xs[0] + wr(h))
        z = torch.sigmoid(xs[1] + wz(h))
        n = torch.tanh(xs[2] + r * wn(h))
        return n + z * (h - n), c


class LSTMClassifier(_RecurrentClassifier):
    """A one-layer LSTM over time; the last hidden state feeds a linear head."""

    gates = 4

    def cell(
        self, xs: list[torch.Tensor], h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """PyTorch's LSTM equations (input, forget, cell, output gates)."""
        i, f, g, o = (x + w(h) for x, w in zip(xs, self.hidden_gates, strict=True))
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class SelfAttention(nn.Module):
    """Multi-head self-attention written out with plain linear layers and matmuls."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (N, heads, T, head_dim)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        mixed = (weights @ v).permute(0, 2, 1, 3).reshape(n, t, d)
        out: torch.Tensor = self.out(mixed)
        return out


class EncoderBlock(nn.Module):
    """Pre-norm Transformer encoder block: attention and a feed-forward, each residual."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        out: torch.Tensor = x + self.drop(self.ff(self.norm2(x)))
        return out


class TransformerClassifier(nn.Module):
    """Linear embedding + learned positions, encoder blocks, mean pool over time, head."""

    def __init__(
        self,
        input_shape: tuple[int, int],
        num_classes: int,
        dim: int = 64,
        heads: int = 4,
        layers: int = 2,
    ) -> None:
        super().__init__()
        self.patch = Patchify(*input_shape)
        self.embed = nn.Linear(self.patch.features, dim)
        self.position = nn.Parameter(torch.zeros(1, self.patch.steps, dim))
        nn.init.normal_(self.position, std=0.02)
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads) for _ in range(layers)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.embed(self.patch(x)) + self.position)
        out: torch.Tensor = self.head(self.norm(h).mean(dim=1))
        return out


def build_sequence_model(
    arch: str, input_shape: tuple[int, int], num_classes: int, width: int | None
) -> nn.Module:
    """``gru``/``lstm`` (``width`` = hidden units, default 64) or ``transformer``
    (``width`` = model dimension, default 64, 4 heads, 2 blocks)."""
    if arch == "gru":
        return GRUClassifier(input_shape, num_classes, hidden=width or 64)
    if arch == "lstm":
        return LSTMClassifier(input_shape, num_classes, hidden=width or 64)
    if arch == "transformer":
        dim = width or 64
        return TransformerClassifier(input_shape, num_classes, dim=dim, heads=4 if dim >= 16 else 1)
    raise ValueError(f"not a sequence architecture: {arch!r}")
