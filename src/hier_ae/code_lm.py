"""The top code LM (DESIGN §5): a causal transformer over the top level's framed code stream.

It reads [BEGIN, u_0, ..., u_{n-1}]; its hidden state at index s, g_s, depends on u_0..u_{s-1}
only and predicts u_s. g_s is the predict-mode context of top-level segment s for the level below.
Its targets are detached codes: it never moves a codebook (codebooks move by EMA only).
Shape letters: B batch, T codes, D width, V vocab (K^R + 3).
"""

from __future__ import annotations

from torch import nn

from .configuration_hier_ae import LevelVocab, TopLMConfig
from .level_pass import masked_cross_entropy
from .segmentation import shift_in_begin
from .transformer import CausalTransformer, positions_from_mask


class CodeLM(nn.Module):
    """The top LM over the stream whose ids are `vocab` (the top level's codes and specials)."""

    def __init__(self, vocab: LevelVocab, cfg: TopLMConfig):
        super().__init__()
        self.pad_id = vocab.pad_id
        self.begin_id = vocab.vocab_size
        self.embed = nn.Embedding(vocab.vocab_size + 1, cfg.hidden_size)  # row V is BEGIN
        self.body = CausalTransformer(
            cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size, None, cfg.rope_theta
        )
        self.head = nn.Linear(cfg.hidden_size, vocab.vocab_size, bias=False)

    def forward(self, inp, inp_valid, positions, kv_out=None):
        h = self.body(self.embed(inp), positions, inp_valid, kv_out=kv_out)  # (B, T+1, D)
        return self.head(h), h  # (B, T+1, V), (B, T+1, D)

    def read_stream(self, tokens, valid, kv_out=None):
        """Read the top code stream `tokens (B, T)` (mask `valid`) as [BEGIN, tokens]: logits
        (B, T+1, V), hidden states (B, T+1, D), the input mask (B, T+1) and the stream's next-code
        CE (nats)."""
        inp, inp_valid = shift_in_begin(tokens, valid, self.begin_id, self.pad_id)  # (B, T+1)
        logits, h = self(inp, inp_valid, positions_from_mask(inp_valid), kv_out=kv_out)
        return logits, h, inp_valid, masked_cross_entropy(logits[:, : tokens.shape[1]], tokens, valid)

    def step(self, tokens, cache, rows):
        """Read one code per row of `rows`; return logits and the hidden state g for the next code."""
        h = self.body.step(self.embed(tokens[:, None]), cache, rows)[:, 0]  # (B', D)
        return self.head(h), h  # (B', V), (B', D)
