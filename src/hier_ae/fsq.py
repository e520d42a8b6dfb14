"""Finite scalar quantisation of segment vectors (Mentzer et al. 2023), a level's other quantiser.

A segment vector `x (D,)` is projected to `d = len(levels)` numbers; number i is bounded to an
interval that rounds to exactly `L_i` integers and rounded with a straight-through gradient; the
rounded numbers, scaled to about [-1, 1], are projected back to `D` (the decoder's context `z`).
There is no codebook to learn, collapse or restart: every one of the `prod(L_i)` codes exists by
construction. The id passed to the level above is the mixed-radix number of the digits
`q_i + L_i // 2` in `[0, L_i)`. Worked example, levels (8, 5):

    bounded (1.2, -1.7) -> rounded (1, -2) -> digits (1 + 4, -2 + 2) = (5, 0) -> code 5 + 0 * 8 = 5
    code 13 -> digits (13 % 8, 13 // 8 % 5) = (5, 1) -> rounded (1, -1) -> scaled (1/4, -1/2)

Same interface as `quantizer.VectorQuantizer` (`forward(x, mask) -> QuantizerOutput`, `lookup`,
`split_codes`, `apply_ema_update`), so a level holds either. Depends only on torch (remote code).
Shape letters: B batch, S segments, D width, d FSQ dims.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .configuration_hier_ae import MAX_COMPOSITE_CODES, check_fsq_levels
from .quantizer import QuantizerOutput


class FSQGrid:
    """FSQ's rounding of d numbers to the grid of `levels` (no parameters; also the peer's, bench/ae_peer.py).

    Number i is bounded to an interval that rounds to exactly L_i integers, rounded with a
    straight-through gradient and scaled by 1 / (L_i // 2) to about [-1, 1]; a grid point's index is
    the mixed-radix number of its digits `q_i + L_i // 2`. Tensors of the levels are made on use,
    not held as buffers: `from_pretrained` builds modules on the meta device. `max_codes` bounds the
    grid's size (a level's codes are the vocabulary of the level above); the peer, whose codes go
    nowhere, passes None.
    """

    def __init__(self, levels, max_codes: int | None = MAX_COMPOSITE_CODES):
        self.levels = check_fsq_levels(levels, max_codes)
        self.num_codes = math.prod(self.levels)
        self._basis = tuple(math.prod(self.levels[:i]) for i in range(len(self.levels)))

    def _levels(self, device) -> torch.Tensor:
        return torch.tensor(self.levels, device=device)  # (d,)

    def bound(self, y: torch.Tensor) -> torch.Tensor:
        """y (..., d) -> values in an interval that rounds to exactly the L_i integers of each dim:
        {-L/2, .., L/2 - 1} for even L, {-(L-1)/2, .., (L-1)/2} for odd L; y = 0 maps to 0."""
        levels = self._levels(y.device)  # (d,)
        half = (levels - 1) * (1 - 1e-3) / 2  # (d,) 1e-3 keeps tanh's ends inside the interval
        offset = (levels % 2 == 0).float() * 0.5  # (d,) even L: the integers sit 1/2 lower
        shift = torch.atanh(offset / half)  # (d,)
        return torch.tanh(y + shift) * half - offset

    def round(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y (..., d) -> (the rounded grid point scaled to about [-1, 1] (..., d), with a
        straight-through gradient; its index (...))."""
        b = self.bound(y)
        q = b + (b.round() - b).detach()  # forward rounds, backward is the identity
        return q / (self._levels(y.device) // 2), self.index(q)

    def index(self, q: torch.Tensor) -> torch.Tensor:
        """Integer (unscaled) grid points (..., d) -> indices (...) in [0, prod L)."""
        levels = self._levels(q.device)
        digits = (q.detach().round().long() + levels // 2).clamp(min=0)  # (..., d) in [0, L_i)
        return (digits * torch.tensor(self._basis, device=q.device)).sum(dim=-1)

    def digits(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (...) -> digits (..., d) in [0, L_i). Levels (8, 5): 13 -> (5, 1)."""
        basis = torch.tensor(self._basis, device=indices.device)
        return indices.long()[..., None] // basis % self._levels(indices.device)

    def scaled(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (...) -> the scaled grid points (..., d) that `round` gives for them."""
        half = self._levels(indices.device) // 2  # (d,)
        return (self.digits(indices) - half).float() / half


class FiniteScalarQuantizer(nn.Module):
    """FSQ with learned projections D -> d -> D. `levels`: L_i per FSQ dim (e.g. (8, 8, 8): 512 codes)."""

    def __init__(self, dim: int, levels):
        super().__init__()
        self.grid = FSQGrid(levels)
        self.dim = dim
        self.fsq_levels = self.grid.levels
        self.num_codes = self.grid.num_codes
        self.depth = 1  # one composite id per segment, as a depth-1 VectorQuantizer
        self.codebook_size = self.num_codes
        self.down = nn.Linear(dim, len(self.fsq_levels))
        self.up = nn.Linear(len(self.fsq_levels), dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, levels={self.fsq_levels}, num_codes={self.num_codes}"

    # ---- ids ------------------------------------------------------------------------------
    def split_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Composite ids (...) -> the id itself as one digit (..., 1), as a depth-1 VectorQuantizer."""
        self._check_codes(codes)
        return codes.long()[..., None]

    def fsq_digits(self, codes: torch.Tensor) -> torch.Tensor:
        """Composite ids (...) -> per-dim digits (..., d) in [0, L_i). Levels (8, 5): 13 -> (5, 1)."""
        self._check_codes(codes)
        return self.grid.digits(codes)  # (..., d)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Composite ids (B, S) -> fp32 vectors (B, S, D), what `forward` gives for those codes."""
        self._check_codes(codes)
        return self.up(self.grid.scaled(codes).to(self.up.weight.dtype)).float()  # (B, S, D)

    # ---- forward --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> QuantizerOutput:
        """Quantise `x (B, S, D)` where `mask (B, S)` is True, in fp32 with autocast off."""
        if x.ndim != 3 or mask.shape != x.shape[:2]:
            raise ValueError(
                f"x must be (B, S, D) and mask (B, S), got {tuple(x.shape)} and {tuple(mask.shape)}"
            )
        valid = mask.bool()  # (B, S)
        with torch.autocast(device_type=x.device.type, enabled=False):
            x32 = torch.where(valid[..., None], x.float(), 0.0)  # (B, S, D)
            scaled, idx = self.grid.round(self.down(x32))  # (B, S, d), (B, S)
            codes = torch.where(valid, idx, 0)  # (B, S)
            z = torch.where(valid[..., None], self.up(scaled), 0.0)  # (B, S, D)
            with torch.no_grad():
                hist = torch.bincount(codes[valid], minlength=self.num_codes).float()
                p = hist / hist.sum().clamp(min=1)
                perplexity = torch.where(valid.any(), torch.exp(-torch.special.xlogy(p, p).sum()), 0.0)
        zero = x32.sum() * 0.0  # no commitment term: the bounded projection cannot drift away
        return QuantizerOutput(
            z=z,
            codes=codes,
            digits=codes[..., None],
            commitment=zero,
            usage_perplexity=perplexity,
            dead_codes=self.dead_code_count().to(x.device),
        )

    def dead_code_count(self) -> torch.Tensor:
        """Always 0: FSQ has no codebook to die, every code exists by construction."""
        return torch.zeros((), dtype=torch.long)

    def apply_ema_update(self) -> dict:
        """Nothing to fold in (FSQ has no codebook statistics); the trainer calls it for every level."""
        return {}

    def _check_codes(self, codes: torch.Tensor) -> None:
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ValueError(f"codes must be an integer tensor, got dtype {codes.dtype}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.num_codes):
            raise ValueError(
                f"codes must lie in [0, {self.num_codes}) (FSQ levels {list(self.fsq_levels)}), "
                f"got values in [{int(codes.min())}, {int(codes.max())}]"
            )
