"""Segment pooling: one vector per segment from the encoder states of that segment only.

No dense (B, S, T) mask is ever built. Each segment's tokens are gathered into a block of
`max_segment_len` slots, so memory is O(T * max_segment_len), and a segment can only ever see its
own tokens. Worked example (L = max_segment_len = 4):

    seg_id  0 0 1 1 1 2          pos  0 1 0 1 2 0
    blocks  seg 0: [h0 h1 -  -]  seg 1: [h2 h3 h4 -]  seg 2: [h5 - - -]     (B, S, L, D)
    slots   seg 0: [1  1  0  0]  seg 1: [1  1  1  0]  seg 2: [1  0 0 0]     (B, S, L)

Shape letters: B batch, T tokens, S segments, L slots per segment, D width, H heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .transformer import MLP


def gather_segments(h: torch.Tensor, seg_id: torch.Tensor, pos: torch.Tensor, num_segments: int, slots: int):
    """Scatter token states `h (B, T, D)` into per-segment blocks `(B, S, L, D)` and a slot mask.

    `seg_id (B, T)` is -1 on padding (those tokens are dropped); `pos (B, T)` is the offset in the segment.
    """
    B, T, D = h.shape
    S, L = num_segments, slots
    if int(pos.max().item() if pos.numel() else 0) >= L:
        raise AssertionError(f"a segment is longer than max_segment_len={L}: the boundary rule must cap it")
    real = seg_id >= 0  # (B, T)
    rows = torch.arange(B, device=h.device)[:, None]  # (B, 1)
    flat = (rows * S + seg_id.clamp(min=0)) * L + pos  # (B, T) index into B*S*L
    sink = B * S * L
    flat = torch.where(real, flat, torch.full_like(flat, sink))  # padding goes to a sink row
    blocks = h.new_zeros(B * S * L + 1, D)  # (B*S*L + 1, D)
    blocks = blocks.index_copy(0, flat.reshape(-1), h.reshape(B * T, D))
    slot_mask = torch.zeros(B * S * L + 1, dtype=torch.bool, device=h.device)
    slot_mask[flat.reshape(-1)] = True
    blocks = blocks[:sink].view(B, S, L, D)  # (B, S, L, D)
    slot_mask = slot_mask[:sink].view(B, S, L)  # (B, S, L)
    return blocks, slot_mask


def states_before_segments(
    h: torch.Tensor, valid: torch.Tensor, seg_start: torch.Tensor, seg_mask: torch.Tensor
):
    """The state at the token just before each segment `(B, S, D)`, zero where there is none.

    h (B, T, D), valid (B, T), seg_start / seg_mask (B, S) from the segment layout. A segment's
    previous token is `seg_start - 1`; a row's first segment (or one after padding) gets zeros, as
    does a padded segment. Toy example, h[t] = t (D = 1), valid = [0 1 1 1 1] (left padding),
    segments "t1 t2 | t3 t4": seg_start = [1 3] -> [[0], [2]] (t0 is padding, t2 ends segment 0).
    """
    B, T, D = h.shape
    prev = seg_start - 1  # (B, S)
    idx = prev.clamp(min=0)  # (B, S)
    ok = seg_mask & (prev >= 0) & valid.gather(1, idx)  # (B, S)
    before = h.gather(1, idx[..., None].expand(B, idx.shape[1], D))  # (B, S, D)
    return before * ok[..., None].to(h.dtype)


class SegmentMixer(nn.Module):
    """A pre-norm transformer layer over the slots of each segment, bidirectional inside it.

    Every slot sees the whole segment (and nothing outside it) before pooling. The code is read only
    once its segment is closed, so this stays causal at the segment level and streaming still works.
    blocks (B, S, L, D), slot_mask (B, S, L) -> (B, S, L, D).
    """

    def __init__(self, dim: int, num_heads: int, intermediate: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.RMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.norm2 = nn.RMSNorm(dim)
        self.mlp = MLP(dim, intermediate)

    def forward(self, blocks: torch.Tensor, slot_mask: torch.Tensor) -> torch.Tensor:
        B, S, L, D = blocks.shape
        H = self.num_heads
        q, k, v = (
            self.qkv(self.norm1(blocks)).view(B, S, L, 3, H, D // H).permute(3, 0, 1, 4, 2, 5)
        )  # (B, S, H, L, hd)
        keys = slot_mask.clone()
        keys[..., 0] = True  # an empty (padded) segment reads its slot 0; callers mask it
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keys[:, :, None, None, :])  # (B, S, H, L, hd)
        blocks = blocks + self.proj(y.transpose(2, 3).reshape(B, S, L, D))  # (B, S, L, D)
        return blocks + self.mlp(self.norm2(blocks))


class SegmentPooling(nn.Module):
    """One vector per segment from its slots: `blocks (B, S, L, D)`, `slot_mask (B, S, L)` -> (B, S, D).

    Before the read: `slots`, a learned embedding per slot (the token's offset in its segment)
    added to the states, so the pooled vector can say in which order the segment's tokens came;
    `mix_layers` `SegmentMixer` layers over the slots. The read (`mode`):

    - "query": multi-head attention of one learned query over the filled slots (a weighted mean
      of their values per head);
    - "concat": the L slots concatenated in order (empty slots zero) through an MLP
      (L * D -> intermediate -> D), which keeps every slot's state apart.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        slots: int,
        use_slot_embed: bool = True,
        mix_layers: int = 0,
        intermediate: int = 0,
        mode: str = "query",
    ):
        super().__init__()
        self.mode = mode
        self.num_heads = num_heads
        self.slot_embed = nn.Embedding(slots, dim) if use_slot_embed else None
        self.mixers = nn.ModuleList(SegmentMixer(dim, num_heads, intermediate) for _ in range(mix_layers))
        self.head_dim = dim // num_heads
        self.norm = nn.RMSNorm(dim)
        if mode == "query":
            self.query = nn.Parameter(torch.zeros(dim))
            self.kv = nn.Linear(dim, 2 * dim, bias=False)
            self.out = nn.Linear(dim, dim, bias=False)
        else:
            self.concat = nn.Sequential(
                nn.Linear(slots * dim, intermediate), nn.GELU(), nn.Linear(intermediate, dim)
            )

    def forward(self, blocks: torch.Tensor, slot_mask: torch.Tensor) -> torch.Tensor:
        B, S, L, D = blocks.shape
        if self.slot_embed is not None:
            blocks = blocks + self.slot_embed.weight[:L].to(blocks.dtype)  # (B, S, L, D)
        for mixer in self.mixers:
            blocks = mixer(blocks, slot_mask)  # (B, S, L, D)
        if self.mode == "concat":
            x = self.norm(blocks) * slot_mask[..., None]  # (B, S, L, D), empty slots zero
            return self.concat(x.reshape(B, S, L * D))  # (B, S, D)
        H, hd = self.num_heads, self.head_dim
        k, v = (
            self.kv(self.norm(blocks)).view(B, S, L, 2, H, hd).permute(3, 0, 1, 4, 2, 5)
        )  # (B, S, H, L, hd)
        q = self.query.view(1, 1, H, 1, hd).expand(B, S, H, 1, hd)  # (B, S, H, 1, hd)
        # an empty (padded) segment attends to its slot 0 so the result stays finite; callers mask it
        mask = slot_mask.clone()
        mask[..., 0] = True
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, :, None, None, :])  # (B, S, H, 1, hd)
        return self.out(y.reshape(B, S, D))  # (B, S, D)
