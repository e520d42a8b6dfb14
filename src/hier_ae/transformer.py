"""Causal transformer blocks shared by every module of `hier_ae`.

One stack, `CausalTransformer`, serves the entropy models, encoders and decoders (sliding-window
attention over the tokens of one level) and the top code LM (full causal attention over codes, or a
sliding window of `top_lm.window` codes).

Sliding-window attention over a long row is computed in blocks of `W` queries that see their own
block and the previous one, so memory is O(T * 2W), never O(T^2): a 64k-byte row fits (rows of at most
4 windows, e.g. the 256-byte training rows, take one fused call with a band mask). Query `t` sees keys
`p` with `t - W < p <= t` (W keys, itself included) that are not padding.

Worked example, W = 3, T = 7 (one row, no padding). Blocks of 3 queries: [0 1 2] [3 4 5] [6 . .].
Query 4 (block 1, offset i = 1) reads the keys of blocks 0 and 1 concatenated, key offsets
m = 0..5 = positions 0..5, and keeps m with i < m <= i + W, i.e. m in {2, 3, 4} = positions 2, 3, 4.

Shape letters (DESIGN §2): B batch, T tokens, D width, H heads, W window, nb blocks, hd head size.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


@functools.cache
def _inv_freq(head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """theta^(-2i / head_dim) for i < head_dim / 2 (hd/2,): made once per shape and device, not per
    call (a streamed step would rebuild it in every layer); a plain tensor, never saved for backward."""
    with torch.inference_mode(False), torch.no_grad():
        return 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for integer `positions (B, T)`; computed on the fly (no buffer to lose on load),
    once per stack (`CausalTransformer`), since every layer rotates by the same positions."""
    angles = positions.to(torch.float32)[..., None] * _inv_freq(head_dim, float(theta), positions.device)
    return angles.cos()[:, None], angles.sin()[:, None]  # (B, 1, T, hd/2) each


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x1, x2) of the two halves of the head dimension. x: (..., B, H, T, hd), cos and
    sin (B, 1, T, hd/2)."""
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, H, T, hd/2) each
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (B, H, T, hd)
    return out.to(x.dtype)


def _blocked_keys(x: torch.Tensor, W: int) -> torch.Tensor:
    """(B, H, nb*W, hd) -> (B, H, nb, 2W, hd): each block's keys are the previous block then its own."""
    B, H, TT, hd = x.shape
    blocks = x.view(B, H, TT // W, W, hd)  # (B, H, nb, W, hd)
    prev = F.pad(blocks, (0, 0, 0, 0, 1, 0))[:, :, :-1]  # (B, H, nb, W, hd) block j-1 (zeros for j=0)
    return torch.cat([prev, blocks], dim=3)  # (B, H, nb, 2W, hd)


# rows up to this many windows long take the band-masked fused call (see `attention_mask`)
BANDED_ROW_FACTOR = 4


def attention_mask(key_valid: torch.Tensor, window: int | None) -> torch.Tensor | None:
    """The mask every layer of one stack uses for a forward pass over whole rows (built once per pass).

    `key_valid (B, T)` bool marks real tokens (padding False). Query t sees keys p with
    p <= t (and t - p < window for a windowed stack) that are real, and always itself, so fully
    padded rows give finite values (which callers ignore). Three forms, one rule:
      None                 the fused causal kernel is exact: no window or T <= window, and only right
                           padding (padding keys come after every real query);
      (B, 1, T, T)         a dense mask over the row: rows of at most `BANDED_ROW_FACTOR` windows
                           (a band) or left-padded rows without a window (generation prompts);
      (B, 1, nb, W, 2W)    a long windowed row in blocks of W queries that see the previous block and
                           their own (O(T W) memory, not O(T^2)).
    On 2 CPU cores, W = 64: (8, 4, 128, 16) blocked 0.74 ms, band mask 0.58 ms; (8, 4, 256, 16) 1.7 and
    1.8 ms; (16, 4, 512, 16) 11 and 15 ms (band measured with a larger factor).

    Toy example, W = 2, T = 3, one row, key_valid = [F, T, T] (left padding):
    dense rows (query t over keys 0..2): t=0 [1 0 0] (itself only), t=1 [0 1 0], t=2 [0 1 1].
    """
    B, T = key_valid.shape
    dev = key_valid.device
    if window is None or T <= window:
        right_padded_only = bool((key_valid[:, 1:] <= key_valid[:, :-1]).all()) if T > 1 else True
        if right_padded_only:
            return None
    if window is None or T <= BANDED_ROW_FACTOR * window:
        t = torch.arange(T, device=dev)
        allowed = t[None, :] <= t[:, None]  # (T, T) causal
        if window is not None:
            allowed = allowed & (t[:, None] - t[None, :] < window)  # the band
        mask = allowed[None] & key_valid[:, None, :]  # (B, T, T)
        return (mask | torch.eye(T, dtype=torch.bool, device=dev)[None])[:, None]  # (B, 1, T, T)
    W = window
    nb = (T + W - 1) // W
    kv = F.pad(key_valid, (0, nb * W - T), value=False).view(B, nb, W)  # (B, nb, W)
    kv = torch.cat([F.pad(kv, (0, 0, 1, 0), value=False)[:, :-1], kv], dim=2)  # (B, nb, 2W) prev + own
    i = torch.arange(W, device=dev)[:, None]  # query offset in block
    m = torch.arange(2 * W, device=dev)[None, :]  # key offset in [prev block, own block]
    band = (m > i) & (m <= i + W)  # (W, 2W)
    mask = (band[None, None] & kv[:, :, None, :]) | (m == i + W)[None, None]  # (B, nb, W, 2W) + self
    return mask[:, None]  # (B, 1, nb, W, 2W)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention of q, k, v (B, H, T, hd) under a mask from `attention_mask` -> (B, H, T, hd)."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if mask.dim() == 4:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    B, H, T, hd = q.shape
    nb, W = mask.shape[2], mask.shape[3]
    pad = nb * W - T
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))  # (B, H, nb*W, hd)
    # blocks become batch rows: a 4-D call takes the fused CPU kernel (1.7x faster than the 5-D one on
    # 2 cores, (64, 4, 2800, 16) and W = 64), at the price of three copies
    qb = q.view(B, H, nb, W, hd).transpose(1, 2).reshape(B * nb, H, W, hd)  # (B*nb, H, W, hd)
    kb, vb = (
        _blocked_keys(t, W).transpose(1, 2).reshape(B * nb, H, 2 * W, hd) for t in (k, v)
    )  # (B*nb, H, 2W, hd)
    out = F.scaled_dot_product_attention(
        qb, kb, vb, attn_mask=mask.reshape(B * nb, 1, W, 2 * W)
    )  # (B*nb, H, W, hd)
    return out.view(B, nb, H, W, hd).transpose(1, 2).reshape(B, H, nb * W, hd)[:, :, :T]  # (B, H, T, hd)


def sliding_window_attention(q, k, v, window: int, key_valid: torch.Tensor) -> torch.Tensor:
    """Causal attention where query t sees keys in (t - window, t]. q, k, v: (B, H, T, hd)."""
    return attend(q, k, v, attention_mask(key_valid, window))


def full_causal_attention(q, k, v, key_valid: torch.Tensor) -> torch.Tensor:
    """Causal attention over the whole row (the top LM, over codes). q, k, v: (B, H, T, hd)."""
    return attend(q, k, v, attention_mask(key_valid, None))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def _qkv(self, x, rot):
        """x (B, T, D), rot = `rotary_cos_sin` of the positions -> q, k, v (B, H, T, hd)."""
        B, T, D = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, H, T, hd)
        q, k = apply_rotary(qkv[:2], *rot).unbind(0)  # q and k rotated in one call: (B, H, T, hd) each
        return q, k, qkv[2]

    def forward(self, x, rot, mask, kv_out=None):
        """x (B, T, D); `mask` from `attention_mask` (built once per stack pass)."""
        B, T, D = x.shape
        q, k, v = self._qkv(x, rot)
        if kv_out is not None:
            kv_out.append((k, v))  # the prefill of a KVStore
        y = attend(q, k, v, mask)  # (B, H, T, hd)
        return self.out(y.transpose(1, 2).reshape(B, T, D))  # (B, T, D)

    def step(self, x, rot, cache, layer: int):
        """One new position per row of the cache's open step (`KVStore.open_step`), attending to the
        cached keys. x (B', 1, D)."""
        Bp, _, D = x.shape
        q, k, v = self._qkv(x, rot)  # (B', H, 1, hd)
        cache.write(layer, k, v)
        keys, values, mask = cache.read(layer)  # (B', H, W', hd), mask (B', W') or None (all valid)
        y = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=None if mask is None else mask[:, None, None, :]
        )  # (B', H, 1, hd)
        return self.out(y.transpose(1, 2).reshape(Bp, 1, D))  # (B', 1, D)


class MLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.down(F.silu(gate) * up)  # (B, T, D)


class Block(nn.Module):
    """Pre-norm transformer block, with an optional per-position context read.

    The context read is cross-attention to ONE context vector per position (the code of the
    segment being predicted, DESIGN §4). With a single key the softmax weight is exactly 1, so the
    read reduces to `out(value(norm(c)))`; we compute that directly instead of a 1-key softmax.
    """

    def __init__(self, dim, num_heads, intermediate, context_dim: int | None = None, dropout=0.0):
        super().__init__()
        self.dropout = dropout  # residual dropout on the attention and MLP outputs, in training only
        self.attn_norm = nn.RMSNorm(dim)
        self.attn = SelfAttention(dim, num_heads)  # rotary tables and the window's mask come from the stack
        self.context_dim = context_dim
        if context_dim is not None:
            self.ctx_norm = nn.RMSNorm(context_dim)
            self.ctx_value = nn.Linear(context_dim, dim, bias=False)
            self.ctx_out = nn.Linear(dim, dim, bias=False)
        self.mlp_norm = nn.RMSNorm(dim)
        self.mlp = MLP(dim, intermediate)

    def _drop(self, y):
        return F.dropout(y, self.dropout, self.training) if self.dropout else y

    def forward(self, x, rot, mask, context=None, kv_out=None):
        x = x + self._drop(self.attn(self.attn_norm(x), rot, mask, kv_out))
        return self._tail(x, context)

    def step(self, x, rot, cache, layer, context=None):
        x = x + self._drop(self.attn.step(self.attn_norm(x), rot, cache, layer))
        return self._tail(x, context)

    def _tail(self, x, context):
        if self.context_dim is not None:
            x = x + self.ctx_out(self.ctx_value(self.ctx_norm(context)))  # (B, T, D)
        return x + self._drop(self.mlp(self.mlp_norm(x)))


class CausalTransformer(nn.Module):
    """A stack of `Block`s with a final norm. Input and output: (B, T, D)."""

    def __init__(
        self,
        dim: int,
        num_layers: int,
        num_heads: int,
        intermediate: int,
        window: int | None,
        rope_theta: float,
        context_dim: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.head_dim, self.rope_theta, self.window = dim // num_heads, rope_theta, window
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, intermediate, context_dim, dropout) for _ in range(num_layers)
        )
        self.norm = nn.RMSNorm(dim)

    def forward(self, x, positions, key_valid, context=None, kv_out=None):
        """Whole rows. With `kv_out` (a list), each layer appends its rotated (keys, values)."""
        rot = rotary_cos_sin(positions, self.head_dim, self.rope_theta)  # the same for every layer
        mask = attention_mask(key_valid, self.window)  # the same for every layer
        for block in self.blocks:
            x = block(x, rot, mask, context, kv_out)
        return self.norm(x)

    def step(self, x, cache, rows, context=None):
        """One new position for each row in `rows` (B',): x (B', 1, D) -> (B', 1, D), via `cache`."""
        rot = rotary_cos_sin(cache.next_positions(rows)[:, None], self.head_dim, self.rope_theta)  # (B', 1)
        cache.open_step(rows, self.window)
        for i, block in enumerate(self.blocks):
            x = block.step(x, rot, cache, i, context)
        cache.advance(rows)
        return self.norm(x)


def positions_from_mask(valid: torch.Tensor) -> torch.Tensor:
    """Position ids that count only real tokens, so left padding does not shift positions.

    valid = [0, 0, 1, 1, 1] -> positions [0, 0, 0, 1, 2]
    """
    return (valid.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
