"""The networks of one level: entropy model, encoder and decoder (DESIGN §3, §4).

`TokenLM` (the entropy model) and `TokenEncoder` read a level's tokens `x (B, T)`; `SegmentDecoder`
reads `[BEGIN, x]` with one context vector per position. Each has a whole-row `forward` and a
one-position `step` through a `KVStore`. How a level uses them is `level.HierLevel`.
Shape letters: B batch, T tokens, D width, V vocab of the level.
"""

from __future__ import annotations

import torch
from torch import nn

from .configuration_hier_ae import LevelConfig
from .hash_ngrams import HashNgramEmbedding
from .transformer import CausalTransformer


class TokenLM(nn.Module):
    """Embedding + causal transformer + head: the entropy model (predicts x[t+1] at t)."""

    def __init__(self, vocab: int, cfg: LevelConfig, num_layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, cfg.hidden_size)
        window = cfg.window if cfg.entropy_window is None else cfg.entropy_window
        self.body = CausalTransformer(
            cfg.hidden_size, num_layers, cfg.num_heads, cfg.intermediate_size, window, cfg.rope_theta
        )
        self.head = nn.Linear(cfg.hidden_size, vocab, bias=False)

    def forward(self, tokens, valid, positions, kv_out=None):
        """-> logits (B, T, V) and the last hidden states (B, T, D)."""
        h = self.body(self.embed(tokens).float(), positions, valid, kv_out=kv_out)  # (B, T, D)
        return self.head(h), h  # (B, T, V), (B, T, D)

    def step(self, tokens, cache, rows):
        """One new token per row of `rows`: (B',) -> logits (B', V) for the token after it and the
        hidden state (B', D)."""
        h = self.body.step(self.embed(tokens[:, None]).float(), cache, rows)[:, 0]  # (B', D)
        return self.head(h), h  # (B', V), (B', D)


class TokenEncoder(nn.Module):
    """Embedding + causal transformer: h[t] depends on x[0..t] only.

    With `encoder_scope: segment` the row-level transformer is absent (`body` None): h[t] is the
    token's embedding, and the segment-local layers run inside the pooling (`SegmentPooling`).
    """

    def __init__(self, vocab: int, cfg: LevelConfig):
        super().__init__()
        self.embed = nn.Embedding(vocab, cfg.hidden_size)
        self.body = None
        if cfg.encoder_scope == "row":
            self.body = CausalTransformer(
                cfg.hidden_size,
                cfg.encoder_layers,
                cfg.num_heads,
                cfg.intermediate_size,
                cfg.window,
                cfg.rope_theta,
            )

    def forward(self, tokens, valid, positions, kv_out=None):
        x = self.embed(tokens).float()  # (B, T, D)
        return x if self.body is None else self.body(x, positions, valid, kv_out=kv_out)  # (B, T, D)

    def step(self, tokens, cache, rows):
        x = self.embed(tokens[:, None]).float()  # (B', 1, D)
        return (x if self.body is None else self.body.step(x, cache, rows))[:, 0]  # (B', D)


class SegmentDecoder(nn.Module):
    """Predicts a level's tokens from [BEGIN, x] with one context vector per position (DESIGN §4).

    Input index i holds x[i - 1] (index 0: BEGIN), so output i predicts x[i] and reads the context of
    the segment x[i] belongs to. The embedding has V + 1 rows; row V is BEGIN.
    """

    def __init__(self, vocab: int, cfg: LevelConfig, context_dim: int):
        super().__init__()
        self.begin_id = vocab
        self.embed = nn.Embedding(vocab + 1, cfg.hidden_size)
        # `segment_offsets`: input i also adds the offset of x[i] (the token it predicts) in its segment
        self.offset_embed = (
            nn.Embedding(cfg.max_segment_len, cfg.hidden_size) if cfg.segment_offsets else None
        )
        # `decoder_ngrams`: input i also adds the hashed n-grams of the inputs ending at i
        self.ngrams = (
            HashNgramEmbedding(cfg.decoder_ngrams, cfg.ngram_buckets, cfg.hidden_size, cfg.ngram_dropout)
            if cfg.decoder_ngrams
            else None
        )
        # `decoder_reads_entropy`: input i also adds a map of the entropy model's state at the token
        # it reads (zero at BEGIN)
        self.entropy_in = (
            nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False) if cfg.decoder_reads_entropy else None
        )
        # `decoder_code_embedding`: a learned vector per code id, which the level adds to the code's
        # codebook vector where the decoder reads a code (`HierLevel.code_context`)
        self.code_embed = nn.Embedding(cfg.num_codes, context_dim) if cfg.decoder_code_embedding else None
        # and one per escape code digit: row r * K_e + d for digit d at depth r (`escape_depth` depths)
        Ke = cfg.escape_codebook_size * cfg.escape_depth
        self.escape_embed = nn.Embedding(Ke, context_dim) if Ke and cfg.decoder_code_embedding else None
        self.body = CausalTransformer(
            cfg.hidden_size,
            cfg.decoder_layers,
            cfg.num_heads,
            cfg.intermediate_size,
            cfg.window,
            cfg.rope_theta,
            context_dim=context_dim,
            dropout=cfg.decoder_dropout,
        )
        self.head = nn.Linear(cfg.hidden_size, vocab, bias=False)

    @property
    def history(self) -> int:
        """How many earlier inputs a streamed `step` must be given (`decoder_ngrams`; else 0)."""
        return 0 if self.ngrams is None else self.ngrams.history

    def _embed(self, inp, offsets, ids=None, history=None, entropy_h=None):
        x = self.embed(inp)  # (B, n, D)
        if self.entropy_in is not None:
            assert entropy_h is not None, (
                "decoder_reads_entropy: the decoder needs the entropy model's state at each input"
            )
            x = x + self.entropy_in(entropy_h.detach().to(self.entropy_in.weight.dtype)).to(x.dtype)
        if self.ngrams is not None:
            assert ids is not None, "decoder_ngrams: the decoder needs its input ids (-1 = none)"
            x = x + self.ngrams(ids, history).to(x.dtype)  # (B, n, D)
        if self.offset_embed is not None:
            assert offsets is not None, (
                "segment_offsets: the decoder needs the offset of each predicted token"
            )
            x = x + self.offset_embed(offsets)  # (B, n, D)
        return x

    def forward(self, inp, inp_valid, positions, context, kv_out=None, offsets=None, entropy_h=None):
        """inp (B, T+1) = [BEGIN, x]; `offsets (B, T+1)`: offset of the token output i predicts in
        its segment (read only with `segment_offsets`; see `decoder_offsets`); `entropy_h (B, T+1, D)`:
        the entropy model's state at each input, zero at BEGIN (read only with `decoder_reads_entropy`;
        see `entropy_at_inputs`)."""
        ids = None if self.ngrams is None else inp.masked_fill(~inp_valid.bool(), -1)  # (B, T+1): no padding
        x = self._embed(inp, offsets, ids, entropy_h=entropy_h)  # (B, T+1, D)
        h = self.body(x, positions, inp_valid, context.to(x.dtype), kv_out=kv_out)  # (B, T+1, D)
        return self.head(h), h  # (B, T+1, V), (B, T+1, D)

    def step(self, tokens, context, cache, rows, offsets=None, history=None, entropy_h=None):
        """Read one token per row of `rows` with the context (B', D) and offset (B',) of the token
        to predict; `history (B', self.history)`: the inputs before it (-1 = none; `decoder_ngrams`);
        `entropy_h (B', D)`: the entropy model's state at the token (`decoder_reads_entropy`)."""
        off = None if offsets is None else offsets[:, None]
        ent = None if entropy_h is None else entropy_h[:, None]
        x = self._embed(tokens[:, None], off, tokens[:, None], history, ent)  # (B', 1, D)
        h = self.body.step(x, cache, rows, context[:, None].to(x.dtype))[:, 0]  # (B', D)
        return self.head(h), h  # (B', V), (B', D)


def entropy_at_inputs(entropy_h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The entropy model's states laid out as the decoder's input [BEGIN, x] (`shift_in_begin`):
    input i holds x[i - 1], so it reads entropy_h[i - 1]; BEGIN and padding read zeros.
    entropy_h (B, T, D), valid (B, T) -> (B, T+1, D).

    Example, one row with left padding: valid [0 1 1], states [e0 e1 e2]; the input is
    [pad, BEGIN, x1, x2], which reads [0, 0, e1, e2] (BEGIN sits where padding's e0 lands: zero).
    """
    B, _, D = entropy_h.shape
    kept = entropy_h * valid[..., None].to(entropy_h.dtype)  # (B, T, D) zero on padding
    return torch.cat([kept.new_zeros(B, 1, D), kept], dim=1)  # (B, T+1, D)
