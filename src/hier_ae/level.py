"""One level of the hierarchy: entropy model, boundary rule, encoder, pooling, quantiser, decoder.

The data flow of a level over its tokens `x (B, T)` (bytes at level 0, framed codes above):

    entropy model -> H[t] (bits) -> boundary rule -> segments
    encoder -> h (B, T, D) -> learned-query pooling per segment -> (B, S, D) -> quantiser -> codes, z
    decoder([BEGIN, x], context = z of the segment being predicted) -> logits (B, T, V)

The segmenting and encoding path runs in fp32 with autocast off (DESIGN §3, precision), so bf16
never changes a segment or a code. Shape letters: B batch, T tokens, S segments, D width, V vocab.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_hier_ae import LevelConfig, LevelVocab
from .pooling import LearnedQueryPooling, gather_segments
from .quantizer import VectorQuantizer
from .segmentation import SegmentLayout, boundary_starts, rule_fires, segment_layout
from .transformer import CausalTransformer

LN2 = math.log(2.0)


def fp32_region(device: torch.device):
    """Autocast off: the segmenting and encoding path must not depend on the compute dtype."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return nullcontext()


def entropy_bits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last axis, in bits. (B, T, V) -> (B, T)."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    return -(logp.exp() * logp).sum(dim=-1) / LN2  # (B, T)


class TokenLM(nn.Module):
    """Embedding + causal transformer + head: the entropy model (predicts x[t+1] at t)."""

    def __init__(self, vocab: int, cfg: LevelConfig, num_layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, cfg.hidden_size)
        self.body = CausalTransformer(
            cfg.hidden_size, num_layers, cfg.num_heads, cfg.intermediate_size, cfg.window, cfg.rope_theta
        )
        self.head = nn.Linear(cfg.hidden_size, vocab, bias=False)

    def forward(self, tokens, valid, positions, doc_ids=None, kv_out=None):
        h = self.body(self.embed(tokens).float(), positions, valid, doc_ids, kv_out=kv_out)  # (B, T, D)
        return self.head(h)  # (B, T, V)

    def step(self, tokens, cache, rows):
        """One new token per row of `rows`: (B',) -> logits (B', V) for the token after it."""
        h = self.body.step(self.embed(tokens[:, None]).float(), cache, rows)  # (B', 1, D)
        return self.head(h[:, 0])


class TokenEncoder(nn.Module):
    """Embedding + causal transformer: h[t] depends on x[0..t] only."""

    def __init__(self, vocab: int, cfg: LevelConfig):
        super().__init__()
        self.embed = nn.Embedding(vocab, cfg.hidden_size)
        self.body = CausalTransformer(
            cfg.hidden_size,
            cfg.encoder_layers,
            cfg.num_heads,
            cfg.intermediate_size,
            cfg.window,
            cfg.rope_theta,
        )

    def forward(self, tokens, valid, positions, doc_ids=None, kv_out=None):
        return self.body(self.embed(tokens).float(), positions, valid, doc_ids, kv_out=kv_out)  # (B, T, D)

    def step(self, tokens, cache, rows):
        return self.body.step(self.embed(tokens[:, None]).float(), cache, rows)[:, 0]  # (B', D)


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
        self.body = CausalTransformer(
            cfg.hidden_size,
            cfg.decoder_layers,
            cfg.num_heads,
            cfg.intermediate_size,
            cfg.window,
            cfg.rope_theta,
            context_dim=context_dim,
        )
        self.head = nn.Linear(cfg.hidden_size, vocab, bias=False)

    def _embed(self, inp, offsets):
        x = self.embed(inp)  # (B, n, D)
        if self.offset_embed is not None:
            assert offsets is not None, (
                "segment_offsets: the decoder needs the offset of each predicted token"
            )
            x = x + self.offset_embed(offsets)  # (B, n, D)
        return x

    def forward(self, inp, inp_valid, positions, context, doc_ids=None, kv_out=None, offsets=None):
        """inp (B, T+1) = [BEGIN, x]; `offsets (B, T+1)`: offset of the token output i predicts in
        its segment (read only with `segment_offsets`; see `decoder_offsets`)."""
        x = self._embed(inp, offsets)  # (B, T+1, D)
        h = self.body(x, positions, inp_valid, doc_ids, context.to(x.dtype), kv_out=kv_out)  # (B, T+1, D)
        return self.head(h), h  # (B, T+1, V), (B, T+1, D)

    def step(self, tokens, context, cache, rows, offsets=None):
        """Read one token per row of `rows` with the context (B', D) and offset (B',) of the token
        to predict."""
        x = self._embed(tokens[:, None], None if offsets is None else offsets[:, None])  # (B', 1, D)
        h = self.body.step(x, cache, rows, context[:, None].to(x.dtype))[:, 0]  # (B', D)
        return self.head(h), h  # (B', V), (B', D)


class HierLevel(nn.Module):
    """All modules of one level, plus its boundary state (a persistent buffer)."""

    def __init__(self, cfg: LevelConfig, vocab: LevelVocab, upper_dim: int):
        super().__init__()
        self.cfg = cfg
        self.vocab = vocab
        D = cfg.hidden_size
        self.entropy_model = TokenLM(vocab.vocab_size, cfg, cfg.entropy_layers)
        self.encoder = TokenEncoder(vocab.vocab_size, cfg)
        self.pooling = LearnedQueryPooling(
            D,
            cfg.pooling_heads,
            slots=cfg.max_segment_len if cfg.segment_offsets else None,
            mix_layers=cfg.segment_mixer_layers,
            intermediate=cfg.intermediate_size,
        )
        self.quantizer = VectorQuantizer(
            dim=D,
            codebook_size=cfg.codebook_size,
            depth=cfg.codebook_depth,
            beta=cfg.beta,
            ema_decay=cfg.ema_decay,
            restart_dead_codes=cfg.restart_dead_codes,
            dead_after_steps=cfg.dead_after_steps,
            pool_size=cfg.restart_pool_size,
        )
        self.decoder = SegmentDecoder(vocab.vocab_size, cfg, context_dim=D)
        # predict mode: the context of a segment is the upper model's hidden state g_s (width of the
        # level above or of the top LM), mapped to this level's width
        self.context_proj = nn.Linear(upper_dim, D, bias=False)
        # theta (threshold mode) or delta (delta mode); adapted in training only when a target is set
        start = cfg.threshold if cfg.boundary_mode == "threshold" else cfg.delta
        self.register_buffer("boundary_value", torch.tensor(float(start)), persistent=True)
        # set by the stage runner (DESIGN §8): a frozen entropy model also freezes the threshold, a
        # frozen codebook gathers no EMA statistics, so the codes the next level reads stay fixed
        self.entropy_frozen = False
        self.codebook_frozen = False

    # ---- boundaries ------------------------------------------------------------------------
    def rule(self, entropy, tokens, prev_entropy=None, valid=None):
        value = self.boundary_value.item()
        return rule_fires(
            entropy,
            tokens,
            self.vocab.eos_id,
            self.cfg.boundary_mode,
            value,
            value,
            prev_entropy=prev_entropy,
            valid=valid,
        )

    def segment(self, tokens, valid, positions, doc_ids=None, kv_out=None):
        """Entropy-model logits (with grad), entropies in bits, the segment layout and the rule's
        firings `fires (B, T)` (fires[t]: x[t + 1] opens a segment), the last three without grad."""
        with fp32_region(tokens.device):
            logits = self.entropy_model(tokens, valid, positions, doc_ids, kv_out=kv_out)  # (B, T, V)
            with torch.no_grad():
                H = entropy_bits(logits)  # (B, T)
                fires = self.rule(H, tokens, valid=valid)  # (B, T)
                starts = boundary_starts(fires, valid, self.cfg.max_segment_len)  # (B, T)
                layout = segment_layout(starts, valid)
                self._adapt_threshold(valid, layout)
        return logits, H, layout, fires

    @torch.no_grad()
    def _adapt_threshold(self, valid, layout: SegmentLayout):
        """Steer tokens per segment toward the target with a running controller (training only).

        Too long segments (mean > target) lower the threshold, so more positions fire.
        """
        target = self.cfg.target_tokens_per_segment
        if target is None or not self.training or self.entropy_frozen:
            return
        mean_len = valid.sum().float() / layout.num_segments.sum().clamp(min=1).float()
        step = self.cfg.threshold_adapt_rate * (target - mean_len) / target
        self.boundary_value.add_(step).clamp_(min=0.0)

    # ---- encode ----------------------------------------------------------------------------
    def encode_segments(
        self, tokens, valid, positions, layout: SegmentLayout, doc_ids=None, kv_out=None, return_states=False
    ):
        """Encoder -> pooling -> quantiser. Returns the quantiser output (codes, z, stats) and, with
        `return_states`, the encoder states (B, T, D) too."""
        with fp32_region(tokens.device):
            h = self.encoder(tokens, valid, positions, doc_ids, kv_out=kv_out)  # (B, T, D)
            S = layout.seg_mask.shape[1]
            blocks, slots = gather_segments(h, layout.seg_id, layout.pos, S, self.cfg.max_segment_len)
            pooled = self.pooling(blocks, slots)  # (B, S, D)
            was_training = self.quantizer.training
            self.quantizer.training = was_training and not self.codebook_frozen
            try:
                q = self.quantizer(pooled, layout.seg_mask)
            finally:
                self.quantizer.training = was_training
        return (q, h) if return_states else q

    # ---- decode ----------------------------------------------------------------------------
    def decoder_context(
        self, seg_ctx: torch.Tensor, seg_id: torch.Tensor, next_ctx: torch.Tensor | None = None
    ):
        """Per-position context for the decoder input [BEGIN, x] (T + 1 positions).

        Output i predicts x[i], so it reads seg_ctx[seg_id[i]]; the extra last position (predicting
        the token after the row) reads `next_ctx (B, D)` when given, else zeros.
        seg_ctx (B, S, D), seg_id (B, T) with -1 on padding -> (B, T+1, D).
        """
        B, T = seg_id.shape
        D = seg_ctx.shape[-1]
        idx = seg_id.clamp(min=0)[..., None].expand(B, T, D)  # (B, T, D)
        ctx = seg_ctx.gather(1, idx) * (seg_id >= 0)[..., None]  # (B, T, D)
        last = next_ctx[:, None] if next_ctx is not None else ctx.new_zeros(B, 1, D)
        return torch.cat([ctx, last], dim=1)  # (B, T+1, D)
