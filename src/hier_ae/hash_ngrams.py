"""Hashed n-gram embeddings of a token stream (as BLT's byte encoder has them, Pagnoni et al. 2024).

Each position gets, for every n in `ngrams`, the embedding of the n-gram of tokens ending there,
hashed into `buckets` rows: a lookup table of recent context that costs no matrix products, so a
small byte-level module sees more of what came before than its width holds. An n-gram that reaches
before the row's first token (or over padding) adds nothing, which keeps the causal contracts:
a position's embedding depends on its own and earlier tokens only, and left padding changes nothing.

Token ids are given with -1 where there is no token. Worked example, ngrams (2, 3), one row
`ids = [7, 8, 9]` with no history:

    position 0: 2-gram (-1, 7) and 3-gram (-1, -1, 7) reach before the row: 0
    position 1: 2-gram (7, 8) -> table_2[hash(7, 8)]; 3-gram (-1, 7, 8): 0
    position 2: table_2[hash(8, 9)] + table_3[hash(7, 8, 9)]

Streaming reads one position at a time with the `history` of the max(ngrams) - 1 ids before it
(-1 = none): `forward([[9]], history=[[7, 8]])` equals position 2 above (tests/test_hash_ngrams.py).
Shape letters: B rows, T positions, D width, h history length.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

_PRIME = 2_147_483_647  # 2^31 - 1: every power below it, every term of the hash below 2^48 in int64
_BASE = 1_000_003


@cache
def _powers(n: int, device: torch.device) -> torch.Tensor:
    """BASE^(n-1-k) mod PRIME for k = 0 .. n-1, (n,) int64 (made once per n and device: the hash runs
    every streamed step); a plain tensor, never saved for backward."""
    with torch.inference_mode(False):
        powers = [pow(_BASE, n - 1 - k, _PRIME) for k in range(n)]
        return torch.tensor(powers, dtype=torch.long, device=device)


def ngram_hash(windows: torch.Tensor, buckets: int) -> torch.Tensor:
    """(..., n) non-negative ids -> (...,) bucket in [0, buckets): the polynomial hash
    sum_k (id_k + 1) * BASE^(n-1-k) mod PRIME, in one product with the powers reduced mod PRIME (the
    value a rolling hash reducing at every step gives; each term < 2^48 for ids < 2^17, so int64
    holds the sum). Example, n = 2: (7, 8) -> (8 * BASE + 9) mod PRIME, then mod `buckets`.
    """
    scale = _powers(windows.shape[-1], windows.device)  # (n,)
    return ((windows.long() + 1) * scale).sum(dim=-1) % _PRIME % buckets


class HashNgramEmbedding(nn.Module):
    """Sum over n in `ngrams` of table_n[hash(n-gram ending at each position)]; 0 where it reaches
    before the first token."""

    def __init__(self, ngrams: list[int], buckets: int, dim: int, dropout: float = 0.0):
        super().__init__()
        self.ngrams = tuple(ngrams)
        self.buckets = buckets
        self.dropout = dropout  # on the summed embeddings, in training only
        self.tables = nn.ModuleList(nn.Embedding(buckets, dim) for _ in self.ngrams)
        for table in self.tables:
            nn.init.normal_(table.weight, std=0.02)

    @property
    def history(self) -> int:
        """How many ids before the first position the longest n-gram reads."""
        return max(self.ngrams) - 1

    def forward(self, ids: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, T), -1 where no token; history (B, h) of the ids before ids[:, 0] (None: none).
        -> (B, T, D)."""
        B, T = ids.shape
        h = self.history
        if history is None:
            history = ids.new_full((B, h), -1)
        full = torch.cat([history.to(ids.dtype), ids], dim=1)  # (B, h + T)
        out = None
        for n, table in zip(self.ngrams, self.tables):
            windows = full[:, h - n + 1 :].unfold(1, n, 1)  # (B, T, n): the n-gram ending at each position
            present = (windows >= 0).all(dim=-1)  # (B, T)
            e = table(ngram_hash(windows.clamp(min=0), self.buckets)) * present[..., None]  # (B, T, D)
            out = e if out is None else out + e
        return F.dropout(out, self.dropout, self.training) if self.dropout else out


def last_ids(ids: torch.Tensor, last: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` ids ending at position `last (B,)` of each row, -1 before position 0 (the history
    a streamed step reads after a prefill). ids (B, T) -> (B, count).

    Example: ids [[5, 6, 7]], last [1], count 3 -> [[-1, 5, 6]].
    """
    idx = last[:, None] - count + 1 + torch.arange(count, device=ids.device)[None, :]  # (B, count)
    got = ids.gather(1, idx.clamp(min=0))  # (B, count)
    return torch.where(idx >= 0, got, torch.full_like(got, -1))


def shift_in(recent: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The history after reading `ids (B,)`: the last h ids of [recent, ids]. recent (B, h) -> (B, h).

    Example: recent [[-1, 5]], ids [6] -> [[5, 6]].
    """
    return torch.cat([recent, ids[:, None].to(recent.dtype)], dim=1)[:, 1:]
