"""What one level's bottom-up pass produced (`LevelPass`) and the loss terms read from it.

`HierLevel.bottom_up` returns a `LevelPass`: the level's tokens, its entropy model's logits and
entropies, its segments and (when encoded) its codes and the framed stream of the level above.
`HierLevel.autoencode_terms` reads `forward`'s per-level terms from it (`LevelTerms`);
`level_fields` lays a list of passes out as the per-level fields of the model's outputs.
Shape letters: B batch, T tokens, S segments, D width, V vocab of the level.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .quantizer import QuantizerOutput
from .segmentation import SegmentLayout, UpperStream
from .streaming import LevelStream


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean CE (nats) of `logits (B, T, V)` against `targets (B, T)` over `mask (B, T)`; 0 if empty."""
    if not mask.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[mask].float(), targets[mask])


@dataclass
class LevelPass:
    """One level's bottom-up pass over its tokens (`HierLevel.bottom_up`).

    tokens, valid, positions, fires, H (B, T); entropy_logits (B, T, V) (with grad); layout: the
    segments. When the level was encoded: q (codes (B, S), z (B, S, D), ...), h (B, T, D) encoder
    states and up, the framed token stream of the level above; with `keep_kv`, stream: the level's
    state for streaming generation (its decoder cache is filled top-down by `predict_logits`);
    entropy_h (B, T, D): the entropy model's last hidden states (what `decoder_reads_entropy` reads);
    pooled (B, S, D), when encoded: the pooled vectors the codes were chosen from.
    """

    tokens: torch.Tensor
    valid: torch.Tensor
    positions: torch.Tensor
    entropy_logits: torch.Tensor
    H: torch.Tensor
    layout: SegmentLayout
    fires: torch.Tensor
    q: QuantizerOutput | None = None
    h: torch.Tensor | None = None
    up: UpperStream | None = None
    stream: LevelStream | None = None
    entropy_h: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    escape_q: QuantizerOutput | None = None  # `escape_codebook_size`: the escape codes (B, S)
    escape_mask: torch.Tensor | None = None  # (B, S) True where the decoder reads the escape code
    # (B, S) each segment's escape id as `encode` would give it (`LevelConfig.num_escape_ids`: one digit
    # d0, or K_e + d0 + K_e * d1 with two), read where `escape_mask`; the encode-side choices rewrite it
    escape_id: torch.Tensor | None = None
    escape_deep: torch.Tensor | None = None  # (B, S) training, `escape_depth` 2: reads both digits

    def entropy_loss(self) -> torch.Tensor:
        """Next-token CE (nats) of the entropy model over the pairs inside each row."""
        pair = self.valid[:, 1:] & self.valid[:, :-1]  # (B, T-1)
        return masked_cross_entropy(self.entropy_logits[:, :-1], self.tokens[:, 1:], pair)

    def tokens_per_segment(self) -> torch.Tensor:
        return self.valid.sum().float() / self.layout.seg_mask.sum().clamp(min=1).float()

    def next_token_loss(self, logits: torch.Tensor) -> torch.Tensor:
        """Mean CE (nats) of the level's tokens under `logits (B, T', V)` (T' >= T), where output i
        predicts tokens[i]: the reconstruct CE (T' = T) and the predict CE (T' = T + 1)."""
        return masked_cross_entropy(logits[:, : self.tokens.shape[1]], self.tokens, self.valid)


def level_fields(passes: list[LevelPass]) -> dict:
    """The per-level fields of `HierAEOutput` / `HierAEEncoderOutput`, one entry per run level."""
    return {
        "codes": tuple(p.q.codes for p in passes if p.q is not None),
        "code_mask": tuple(p.layout.seg_mask for p in passes),
        "segment_ids": tuple(p.layout.seg_id for p in passes),
        "level_tokens": tuple(p.tokens for p in passes),
        "level_mask": tuple(p.valid for p in passes),
        "entropy": tuple(p.H for p in passes),
        "pooled": tuple(p.pooled for p in passes if p.pooled is not None),
    }


@dataclass
class LevelTerms:
    """One level's loss terms and statistics in `HierAEModel.forward` (`HierLevel.autoencode_terms`).

    Each a scalar, 0 where the level did not compute it: entropy CE, reconstruct CE, commitment (nats),
    tokens per segment, codebook usage perplexity, dead codes; `reconstruct_logits (B, T, V)` when the
    level was reconstructed. With `escape_train_failed`, in training, the reconstruct CE is the sum of
    the codes-alone pass's and the escape pass's (`HierLevel.codes_alone_term`).
    """

    entropy: torch.Tensor
    reconstruct: torch.Tensor
    commitment: torch.Tensor
    tokens_per_segment: torch.Tensor
    usage_perplexity: torch.Tensor
    dead_codes: torch.Tensor
    reconstruct_logits: torch.Tensor | None = None

    @classmethod
    def skipped(cls, zero: torch.Tensor) -> LevelTerms:
        """A level below `start_level` (stored codes): every term `zero`."""
        return cls(zero, zero, zero, zero, zero, zero)

    @staticmethod
    def stack(terms: list[LevelTerms]) -> dict:
        """The per-level loss fields of `HierAEOutput`: each term stacked to (num_levels,)."""
        return {
            "entropy_loss": torch.stack([t.entropy for t in terms]),
            "reconstruct_loss": torch.stack([t.reconstruct for t in terms]),
            "commitment_loss": torch.stack([t.commitment for t in terms]),
            "reconstruct_logits": tuple(
                t.reconstruct_logits for t in terms if t.reconstruct_logits is not None
            ),
            "tokens_per_segment": torch.stack([t.tokens_per_segment for t in terms]),
            "usage_perplexity": torch.stack([t.usage_perplexity for t in terms]),
            "dead_codes": torch.stack([t.dead_codes for t in terms]),
        }

    @staticmethod
    def weighted_sum(stacked: dict, w: dict[str, float]) -> torch.Tensor:
        """The levels' part of `forward`'s `loss`: each stacked term (`stack`) summed over the levels,
        weighted by `w` (keys entropy, reconstruct, commitment; `check_loss_weights`)."""
        return (
            w["entropy"] * stacked["entropy_loss"].sum()
            + w["reconstruct"] * stacked["reconstruct_loss"].sum()
            + w["commitment"] * stacked["commitment_loss"].sum()
        )
