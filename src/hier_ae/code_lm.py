"""The top code LM (DESIGN §5): a causal transformer over the top level's framed code stream.

It reads [BEGIN, u_0, ..., u_{n-1}]; its hidden state at index s, g_s, depends on u_0..u_{s-1}
only and predicts u_s. g_s is the predict-mode context of top-level segment s for the level below.
Its targets are detached codes: it never moves a codebook (codebooks move by EMA only).
With `reads_pooled` its input at each code also adds a learned map of the segment's pooled vector
(`UpperStream.vectors`; zeros at BEGIN and specials), so it reads what the code was chosen from.
Shape letters: B batch, T codes, D width, V vocab (K^R + 3), Dv the top level's width.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .configuration_hier_ae import LevelVocab, TopLMConfig
from .level_pass import masked_cross_entropy
from .segmentation import shift_in_begin
from .transformer import CausalTransformer, positions_from_mask


class CodeLM(nn.Module):
    """The top LM over the stream whose ids are `vocab` (the top level's codes and specials)."""

    def __init__(self, vocab: LevelVocab, cfg: TopLMConfig, vector_dim: int):
        super().__init__()
        self.pad_id = vocab.pad_id
        self.begin_id = vocab.vocab_size
        self.embed = nn.Embedding(vocab.vocab_size + 1, cfg.hidden_size)  # row V is BEGIN
        # `reads_pooled`: the pooled vector of each code's segment, mapped to the LM's width
        self.pooled_in = nn.Linear(vector_dim, cfg.hidden_size, bias=False) if cfg.reads_pooled else None
        self.body = CausalTransformer(
            cfg.hidden_size,
            cfg.num_layers,
            cfg.num_heads,
            cfg.intermediate_size,
            cfg.window,
            cfg.rope_theta,
            dropout=cfg.dropout,
        )
        self.head = nn.Linear(cfg.hidden_size, vocab.vocab_size, bias=False)

    def _embed(self, inp, vectors):
        """Input embeddings (B, T, D); `vectors (B, T, Dv)` aligned with `inp` (zeros where none)."""
        x = self.embed(inp)
        if self.pooled_in is None:
            return x
        if vectors is None:
            raise ValueError(
                "this top LM reads pooled vectors (top_lm.reads_pooled=True): pass the stream's "
                "vectors (UpperStream.vectors), which stored codes alone do not carry."
            )
        return x + self.pooled_in(vectors.to(self.pooled_in.weight.dtype)).to(x.dtype)

    def forward(self, inp, inp_valid, positions, kv_out=None, vectors=None):
        """inp, inp_valid, positions (B, T+1); vectors (B, T+1, Dv) with `reads_pooled`."""
        h = self.body(self._embed(inp, vectors), positions, inp_valid, kv_out=kv_out)  # (B, T+1, D)
        return self.head(h), h  # (B, T+1, V), (B, T+1, D)

    def read_stream(self, tokens, valid, kv_out=None, vectors=None):
        """Read the top code stream `tokens (B, T)` (mask `valid`; `vectors (B, T, Dv)` with
        `reads_pooled`) as [BEGIN, tokens]: logits (B, T+1, V), hidden states (B, T+1, D), the input
        mask (B, T+1) and the stream's next-code CE (nats)."""
        inp, inp_valid = shift_in_begin(tokens, valid, self.begin_id, self.pad_id)  # (B, T+1)
        if vectors is not None:  # BEGIN reads zeros (the stream starts at index 0: see shift_in_begin)
            vectors = F.pad(vectors, (0, 0, 1, 0))  # (B, T+1, Dv)
        logits, h = self(inp, inp_valid, positions_from_mask(inp_valid), kv_out=kv_out, vectors=vectors)
        return logits, h, inp_valid, masked_cross_entropy(logits[:, : tokens.shape[1]], tokens, valid)

    def step(self, tokens, cache, rows, vectors=None):
        """Read one code per row of `rows` (with `reads_pooled`, its pooled vector `vectors (B', Dv)`,
        None for specials); return logits and the hidden state g for the next code."""
        if self.pooled_in is not None and vectors is None:
            vectors = self.embed.weight.new_zeros(tokens.shape[0], self.pooled_in.in_features)
        vec = None if vectors is None else vectors[:, None]  # (B', 1, Dv)
        h = self.body.step(self._embed(tokens[:, None], vec), cache, rows)[:, 0]  # (B', D)
        return self.head(h), h  # (B', V), (B', D)
