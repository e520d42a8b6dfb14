"""One level of the hierarchy: its networks, its boundary state, and every per-level step.

The data flow of a level over its tokens `x (B, T)` (bytes at level 0, framed codes above):

    entropy model -> H[t] (bits) -> boundary rule -> segments
    encoder -> h (B, T, D) -> learned-query pooling per segment -> (B, S, D) -> quantiser -> codes, z
      (the nearest code, or with `code_choice_candidates` the one of the k nearest that the decoder
      reconstructs the segment best from: `choose_codes`)
    codes of the completed segments, framed [bos] codes [eos] -> the token stream of the level above
    decoder([BEGIN, x], context of the segment being predicted) -> logits (B, T + 1, V)
      (its input may also add hashed n-grams of x, `decoder_ngrams`, and a map of the entropy
      model's hidden state at each x, `decoder_reads_entropy`)

`HierLevel.bottom_up` is that pass (what `forward`, `predict` and `encode` share; its result is a
`level_pass.LevelPass`); the context is the segment's own code in reconstruct mode
(`reconstruct_logits`, and `autoencode_terms`, the level's loss terms in `forward`) and the hidden
state of the level above in predict mode (`predict_logits`). `step` reads one token (streaming
generation) and `regenerate` decodes a level from its codes. The model (`modeling_hier_ae.py`) only
chains levels.

The segmenting and encoding path runs in fp32 with autocast off (DESIGN §3, precision), so bf16
never changes a segment or a code. Shape letters: B batch, T tokens, S segments, D width, V vocab,
L slots per segment (max_segment_len).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from .code_choice_stream import CodeChoiceStream, open_code_choice_stream
from .configuration_hier_ae import LevelConfig, LevelVocab
from .fsq import FiniteScalarQuantizer
from .hash_ngrams import last_ids, shift_in
from .kv_cache import KVStore
from .level_modules import SegmentDecoder, TokenEncoder, TokenLM, entropy_at_inputs
from .level_pass import LevelPass, LevelTerms
from .pooling import SegmentPooling, gather_segments, states_before_segments
from .quantizer import VectorQuantizer
from .segmentation import (
    SegmentLayout,
    UpperStream,
    boundary_starts,
    budget_fires,
    budget_rule,
    closed_segments,
    decoder_offsets,
    first_real,
    frame_upper_stream,
    hold_short_segments,
    last_real,
    rule_fires,
    segment_closes,
    segment_last_tokens,
    segment_layout,
    shift_in_begin,
    surprisal_bits,
    utf8_owed,
    utf8_owed_step,
)
from .streaming import LevelStream, open_level_stream
from .transformer import positions_from_mask

LN2 = math.log(2.0)
# `code_choice_candidates`: candidates whose segment CE is within this many nats of the lowest count
# as tied, and ties go to the nearer code. Far above float32 rounding (a trained decoder's CE of a
# segment is often ~1e-7 nats under several candidates, and the cached step and the whole row round
# it differently), far below a difference that matters (1e-3 nats = 0.0014 bits a segment).
CHOICE_TOLERANCE = 1e-3


def fp32_region(device: torch.device):
    """Autocast off: the segmenting and encoding path must not depend on the compute dtype."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return nullcontext()


def pick_candidate(ce: torch.Tensor) -> torch.Tensor:
    """The candidate each segment takes: the nearest (lowest index along dim 0) whose CE is within
    `CHOICE_TOLERANCE` of the lowest. ce (k, ...) -> (...). Toy example, k = 3, one segment with
    CEs [2.0, 1.0, 1.0005]: the lowest is 1.0, candidates 1 and 2 are within 1e-3, so candidate 1;
    with [1e-7, 3e-8, 5e-7] every candidate is within it, so candidate 0 (the nearest code)."""
    within = ce <= ce.min(dim=0, keepdim=True).values + CHOICE_TOLERANCE  # (k, ...)
    return within.float().argmax(dim=0)  # the first True (argmax takes the first maximum)


def pick_fewest_misses(misses: torch.Tensor, ce: torch.Tensor) -> torch.Tensor:
    """The candidate each segment takes: of those with the fewest argmax misses, `pick_candidate` by CE.
    misses, ce (k, ...) -> (...). Toy example, k = 3: misses [1, 0, 0], CEs [0.2, 0.9, 0.5] -> 2."""
    fewest = misses == misses.min(dim=0, keepdim=True).values  # (k, ...)
    return pick_candidate(ce.masked_fill(~fewest, float("inf")))


def entropy_bits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last axis, in bits. (B, T, V) -> (B, T)."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    return -(logp.exp() * logp).sum(dim=-1) / LN2  # (B, T)


def nearest_codes(codebook: torch.Tensor, vec: torch.Tensor, k: int) -> torch.Tensor:
    """The k nearest rows of `codebook (K, D)` to each vector `vec (..., D)`, nearest first: (..., k)."""
    cb = codebook.float()  # (K, D)
    dist = cb.pow(2).sum(-1) - 2.0 * vec.float() @ cb.T  # (..., K): ||v - c||^2 - ||v||^2
    return dist.topk(k, dim=-1, largest=False, sorted=True).indices


def segment_ce(logits: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor, seg_id: torch.Tensor, S: int):
    """Summed CE (nats) of each segment's tokens: logits (N, T, V) (output i predicts tokens[i]), tokens,
    valid, seg_id (N, T) -> (N, S). Toy example: seg_id [0 0 1], per-token CE [.1 .3 .9] -> [.4 .9]."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), tokens, reduction="none") * valid  # (N, T)
    return ce.new_zeros(ce.shape[0], S).scatter_add_(1, seg_id.clamp(min=0), ce)


def segment_misses(
    logits: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor, seg_id: torch.Tensor, S: int
) -> torch.Tensor:
    """How many of each segment's tokens the argmax of `logits (N, T, V)` misses (output i predicts
    tokens[i]): tokens, valid, seg_id (N, T) -> (N, S) long. Toy example: seg_id [0 0 1], tokens a b c,
    argmax a x x -> [1, 1]."""
    miss = ((logits.argmax(-1) != tokens) & valid).long()  # (N, T)
    return miss.new_zeros(miss.shape[0], S).scatter_add_(1, seg_id.clamp(min=0), miss)


def wrong_in(p: LevelPass, logits: torch.Tensor) -> torch.Tensor:
    """(B, S) bool: the valid segments with some token whose argmax in `logits (B, T, V)` (output i
    predicts tokens[i]) is not the token. Toy example: tokens a b c, segments [a b] [c], argmax a x c
    -> [True, False]."""
    seg_mask = p.layout.seg_mask
    return (segment_misses(logits, p.tokens, p.valid, p.layout.seg_id, seg_mask.shape[1]) > 0) & seg_mask


def _ema_quantizer(cfg: LevelConfig, codebook_size: int, depth: int) -> VectorQuantizer:
    """An EMA VQ codebook of the level's width with the level's EMA and restart settings."""
    return VectorQuantizer(
        dim=cfg.hidden_size,
        codebook_size=codebook_size,
        depth=depth,
        beta=cfg.beta,
        ema_decay=cfg.ema_decay,
        restart_dead_codes=cfg.restart_dead_codes,
        dead_after_steps=cfg.dead_after_steps,
        pool_size=cfg.restart_pool_size,
        new_code_dead_after_steps=cfg.new_code_dead_after_steps,
    )


class HierLevel(nn.Module):
    """All modules of one level, plus its boundary state (a persistent buffer)."""

    def __init__(self, cfg: LevelConfig, vocab: LevelVocab, upper_dim: int):
        super().__init__()
        self.cfg = cfg
        self.vocab = vocab  # this level's token ids
        self.upper_vocab = LevelVocab.of_codes(cfg.num_codes)  # the ids of the stream of its codes
        D = cfg.hidden_size
        self.entropy_model = TokenLM(vocab.vocab_size, cfg, cfg.entropy_layers)
        self.encoder = TokenEncoder(vocab.vocab_size, cfg)
        # a segment-scope encoder is `encoder_layers` bidirectional layers over the segment's slots
        local_layers = cfg.encoder_layers if cfg.encoder_scope == "segment" else 0
        self.pooling = SegmentPooling(
            D,
            cfg.pooling_heads,
            slots=cfg.max_segment_len,
            use_slot_embed=cfg.segment_offsets,
            mix_layers=local_layers + cfg.segment_mixer_layers,
            intermediate=cfg.intermediate_size,
            mode=cfg.pooling,
        )
        self.quantizer = (
            FiniteScalarQuantizer(D, cfg.fsq_levels)
            if cfg.quantizer == "fsq"
            else _ema_quantizer(cfg, cfg.codebook_size, cfg.codebook_depth)
        )
        # `escape_codebook_size`: the escape codes' codebook (`escape_depth` depths), with the level's
        # EMA settings
        Ke = cfg.escape_codebook_size
        self.escape_quantizer = _ema_quantizer(cfg, Ke, cfg.escape_depth) if Ke else None
        # `predictive_codes`: the pooled vector's prediction from the encoder state before the segment
        self.code_predictor = nn.Linear(D, D, bias=False) if cfg.predictive_codes else None
        self.decoder = SegmentDecoder(vocab.vocab_size, cfg, context_dim=D)
        # predict mode: the context of a segment is the upper model's hidden state g_s (width of the
        # level above or of the top LM), mapped to this level's width
        self.context_proj = nn.Linear(upper_dim, D, bias=False)
        # theta (threshold mode; the budget in budget mode) or delta (delta mode); adapted in training
        # only when a target is set
        self.register_buffer("boundary_value", torch.tensor(float(cfg.boundary_start)), persistent=True)
        # set by the stage runner (DESIGN §8): a frozen entropy model also freezes the threshold, a
        # frozen codebook gathers no EMA statistics, so the codes the next level reads stay fixed
        self.entropy_frozen = False
        self.codebook_frozen = False
        # set by the model on its top level when the top LM reads pooled vectors (`TopLMConfig.reads_pooled`):
        # the framed stream then carries each code's pooled vector
        self.frames_pooled = False

    # ---- boundaries ------------------------------------------------------------------------
    def rule(self, entropy, tokens, prev_entropy=None, valid=None, owed=None):
        """Threshold and delta modes (stateless); budget mode goes through `budget_step` / `budget_fires`.

        With `utf8_boundaries`, nothing opens while a UTF-8 character is open: `owed` (B, T) is what
        `utf8_owed` gives for `tokens` (computed from them when None: whole rows only)."""
        value = self.boundary_value.item()
        fires = rule_fires(
            entropy,
            tokens,
            self.vocab.eos_id,
            self.cfg.boundary_mode,
            value,
            value,
            prev_entropy=prev_entropy,
            valid=valid,
        )
        if self.cfg.utf8_boundaries:
            fires = fires & ((utf8_owed(tokens) if owed is None else owed) == 0)
        return fires

    def budget_step(self, bits, prev_logp, first, toks, ent_logits, H):
        """Budget mode, one token per row (streaming and decode): the rule's firing, the open segment's
        bits with this token's surprisal added, and the entropy model's log-probabilities for the next.

        bits (B',) the open segment's surprisal before this token (0 when it opens a segment);
        prev_logp (B', V) what the entropy model predicted for this token; first (B',) bool (or a
        bool): this is the row's first token (nothing predicted it: surprisal 0, as `surprisal_bits`);
        toks (B',); ent_logits (B', V) after this token; H (B',) their entropy in bits.
        """
        s = -prev_logp.gather(-1, toks[:, None])[:, 0] / LN2  # (B',)
        bits = bits + torch.where(torch.as_tensor(first, device=s.device), torch.zeros_like(s), s)
        fires = budget_rule(bits, H, toks == self.vocab.eos_id, self.boundary_value.item())
        return fires, bits, F.log_softmax(ent_logits.float(), dim=-1)

    def segment(self, tokens, valid, positions, kv_out=None):
        """Entropy-model logits (with grad), entropies in bits, the segment layout, the rule's
        firings `fires (B, T)` (fires[t]: x[t + 1] opens a segment), the last three without grad, and
        the entropy model's last hidden states (B, T, D)."""
        with fp32_region(tokens.device):
            # (B, T, V), (B, T, D)
            logits, hidden = self.entropy_model(tokens, valid, positions, kv_out=kv_out)
            with torch.no_grad():
                H = entropy_bits(logits)  # (B, T)
                is_eos = tokens == self.vocab.eos_id  # (B, T)
                if self.cfg.boundary_mode == "budget":  # a scan: the length bounds are in it already
                    s = surprisal_bits(logits, tokens, valid)  # (B, T)
                    budget = self.boundary_value.item()
                    L, m = self.cfg.max_segment_len, self.cfg.min_segment_len
                    fires = budget_fires(s, H, is_eos, valid, budget, m, L)  # (B, T)
                else:
                    fires = self.rule(H, tokens, valid=valid)  # (B, T)
                    fires = hold_short_segments(
                        fires, is_eos, valid, self.cfg.min_segment_len, self.cfg.max_segment_len
                    )  # (B, T)
                starts = boundary_starts(fires, valid, self.cfg.max_segment_len)  # (B, T)
                layout = segment_layout(starts, valid)
                self._adapt_threshold(valid, layout)
        return logits, H, layout, fires, hidden

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
    def pool_segments(self, p: LevelPass, kv_out=None):
        """Encoder -> pooling: the encoder states h (B, T, D) and the pooled vector of each segment
        (B, S, D) (with `predictive_codes`, minus its prediction from the state before the segment)."""
        layout = p.layout
        with fp32_region(p.tokens.device):
            h = self.encoder(p.tokens, p.valid, p.positions, kv_out=kv_out)  # (B, T, D)
            S = layout.seg_mask.shape[1]
            blocks, slots = gather_segments(h, layout.seg_id, layout.pos, S, self.cfg.max_segment_len)
            pooled = self.pooling(blocks, slots)  # (B, S, D)
            if self.code_predictor is not None:  # code what the context does not predict
                before = states_before_segments(h, p.valid, layout.seg_start, layout.seg_mask)  # (B, S, D)
                pooled = pooled - self.code_predictor(before)
        return h, pooled

    def encode_segments(self, p: LevelPass, kv_out=None, choice_kv=None):
        """Encoder -> pooling -> quantiser: the quantiser output (codes, z, stats), the encoder
        states h (B, T, D) and the pooled vectors the codes were chosen from (B, S, D). With
        `code_choice_candidates` the decoder chooses each code among the nearest (`choose_codes`;
        `choice_kv`, a list, receives its passes' keys and values: a streaming prefill)."""
        h, pooled = self.pool_segments(p, kv_out=kv_out)
        with fp32_region(p.tokens.device):
            chosen = {}
            if self.cfg.code_choice_candidates:
                chosen["codes"] = self.choose_codes(p, pooled, kv_out=choice_kv)  # (B, S)
            with self._codebook_updates(self.quantizer):
                q = self.quantizer(pooled, p.layout.seg_mask, **chosen)
        return q, h, pooled

    @contextmanager
    def _codebook_updates(self, quantizer: nn.Module):
        """Runs a quantiser of this level in training mode (gathering EMA statistics) only while the
        level trains and its codebooks are not frozen (`codebook_frozen`)."""
        was_training = quantizer.training
        quantizer.training = was_training and not self.codebook_frozen
        try:
            yield
        finally:
            quantizer.training = was_training

    # ---- escape codes (variable rate) ----------------------------------------------------------
    def escape_segments(self, p: LevelPass) -> None:
        """The escape codes of `escape_codebook_size` (`p.escape_q`): a second codebook quantises what
        the segment's code leaves of its pooled vector, `pooled - codebook[code]`. `p.escape_mask
        (B, S)` says which segments' contexts read them: in training each valid segment with
        `escape_train_rate`; otherwise none (`choose_escapes` picks them for `encode`). `p.escape_id`
        starts at each segment's nearest first digit. With `escape_depth` 2, `p.escape_deep (B, S)`
        says which escaped segments read the second digit too: in training each with
        `escape_deep_train_rate` (the ones `escape_train_failed` adds read one digit); otherwise none."""
        seg_mask = p.layout.seg_mask
        with fp32_region(p.tokens.device):
            residual = p.pooled.float() - self.quantizer.lookup(p.q.codes)  # (B, S, D)
            with self._codebook_updates(self.escape_quantizer):
                p.escape_q = self.escape_quantizer(residual, seg_mask)
        p.escape_id = p.escape_q.digits[..., 0]  # (B, S): one-digit ids
        p.escape_mask = torch.zeros_like(seg_mask)
        p.escape_deep = torch.zeros_like(seg_mask)
        if self.training:  # (`escape_train_failed` adds the failed ones in `autoencode_terms`)
            draw = torch.rand(seg_mask.shape, device=seg_mask.device)  # (B, S)
            p.escape_mask = (draw < self.cfg.escape_train_rate) & seg_mask
            if self.cfg.escape_depth == 2:
                deep = torch.rand(seg_mask.shape, device=seg_mask.device)  # (B, S)
                p.escape_deep = (deep < self.cfg.escape_deep_train_rate) & p.escape_mask

    def two_digit(self, escapes: torch.Tensor) -> torch.Tensor:
        """Escape ids (B, S) (-1 = none) -> (B, S) bool: the ids with a second digit (`escape_depth` 2),
        those >= K_e. K_e = 4: ids [-1, 3, 4, 13] -> [False, False, True, True]."""
        return escapes >= self.cfg.escape_codebook_size

    def escape_digits(self, escapes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Escape ids (B, S) (-1 = none) -> first digit d0 (B, S) and second digit d1 (B, S), -1 where an
        id has one digit (or none). K_e = 4: ids 3 -> (3, -1); 4 + 1 + 4 * 2 = 13 -> (1, 2); -1 -> (0, -1)."""
        K_e = self.cfg.escape_codebook_size
        e = escapes.clamp(min=0)  # (B, S)
        two = self.two_digit(e)  # (B, S)
        c = torch.where(two, e - K_e, e)  # (B, S): d0 + K_e * d1 on two-digit ids
        return c % K_e, torch.where(two, c // K_e, torch.full_like(c, -1))

    def current_escapes(self, p: LevelPass) -> torch.Tensor:
        """The escape ids the decoder reads now: `p.escape_id` where `p.escape_mask`, -1 elsewhere (B, S)."""
        return torch.where(p.escape_mask, p.escape_id, torch.full_like(p.escape_id, -1))

    def escape_vectors(self, escapes: torch.Tensor) -> torch.Tensor:
        """What an escaped segment's decoder context adds: its escape digits' vectors (plus, with
        `decoder_code_embedding`, their embeddings). escapes (B, S) escape ids (`escape_digits`), -1 =
        not escaped -> (B, S, D), zeros where -1."""
        d0, d1 = self.escape_digits(escapes)  # (B, S) each
        cb = self.escape_quantizer.codebook.float()  # (R_e, K_e, D)
        vec = cb[0][d0]  # (B, S, D)
        if cb.shape[0] > 1:
            vec = vec + cb[1][d1.clamp(min=0)] * (d1 >= 0)[..., None]
        return self._escape_term(vec, d0, d1, escapes >= 0)

    def escape_context(self, p: LevelPass, seg_ctx: torch.Tensor) -> torch.Tensor:
        """seg_ctx (B, S, D) plus, on the segments of `p.escape_mask`, their escape code's vector and
        embedding: what reconstruct mode reads. In training the vector is the straight-through one
        (its first digit's alone where `p.escape_deep` is False); otherwise that of `p.escape_id`."""
        if p.escape_q is None:
            return seg_ctx
        if not self.training:
            return seg_ctx + self.escape_vectors(self.current_escapes(p)).to(seg_ctx.dtype)
        z, digits = p.escape_q.z, p.escape_q.digits  # (B, S, D), (B, S, R_e)
        d1 = torch.full_like(digits[..., 0], -1)  # (B, S)
        if digits.shape[-1] > 1:  # one digit: take the second digit's vector off z (a buffer: no grad)
            second = self.escape_quantizer.codebook[1].float()[digits[..., 1]]  # (B, S, D)
            z = torch.where(p.escape_deep[..., None], z, z - second)
            d1 = torch.where(p.escape_deep, digits[..., 1], d1)
        return seg_ctx + self._escape_term(z, digits[..., 0], d1, p.escape_mask).to(seg_ctx.dtype)

    def _escape_term(
        self, vec: torch.Tensor, d0: torch.Tensor, d1: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """The escape codes' vectors `vec (B, S, D)` plus their digits' embeddings (`decoder_code_embedding`:
        row d0, and row K_e + d1 where d1 >= 0), where `mask (B, S)`, zeros elsewhere."""
        if self.decoder.escape_embed is not None:
            vec = vec + self.decoder.escape_embed(d0).to(vec.dtype)
            if self.cfg.escape_depth > 1:
                second = self.decoder.escape_embed(self.cfg.escape_codebook_size + d1.clamp(min=0))
                vec = vec + second.to(vec.dtype) * (d1 >= 0)[..., None]
        return vec * mask[..., None]

    @torch.no_grad()
    def wrong_segments(self, p: LevelPass, base: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S) bool: the valid segments with some token whose teacher-forced argmax is not the
        token, the decoder reading `base (B, S, D)` (default: the codes' vectors and embeddings) plus
        the escapes of `p.escape_mask`. One decoder pass without grad."""
        if base is None:
            base = self.code_context(self.quantizer.lookup(p.q.codes), p.q.codes)  # (B, S, D)
        ctx = self.decoder_context(base + self.escape_vectors(self.current_escapes(p)), p.layout.seg_id)
        return wrong_in(p, self._decode(p, ctx)[0][:, : p.tokens.shape[1]])

    @torch.no_grad()
    def choose_escapes(self, p: LevelPass) -> torch.Tensor:
        """The segments `encode` escapes: those whose tokens the decoder does not give back from their
        code alone, teacher-forced (some argmax != token), given the escapes before them.
        An escape changes the contexts the later tokens attend to, so the set grows to a fixed point:
        decode with the current escapes, add the segments still wrong, until none is added (at most
        S + 1 decoder passes; usually 2-3). A segment still wrong with its escape stays escaped.
        With `escape_choice_candidates` = k, each escaped segment's escape code is then chosen among
        the k nearest to its residual (`choose_escape_codes`, rewriting `p.escape_q`), and the set
        grows again from there (a changed escape may change what later segments read) until a choice
        adds no segment. With `escape_joint_candidates`, escaped segments still wrong after that choice
        then take their code and escape code jointly (`choose_joint_codes`, rewriting `p.q` too), and
        the set grows again. With `escape_depth` 2, escaped segments still wrong then take a second
        escape digit where one gives them back (`choose_deep_codes`), and the set grows again. Returns
        (B, S) bool; also sets `p.escape_mask` to it (the ids: `p.escape_id`).

        Toy example, three segments: with no escape segment 1 is wrong -> escape {1}; with it,
        segment 2 (which attends to segment 1's tokens) is now right and nothing is added: {1}.
        """
        seg_mask = p.layout.seg_mask
        base = self.code_context(self.quantizer.lookup(p.q.codes), p.q.codes)  # (B, S, D)
        k = self.cfg.escape_choice_candidates
        cand = self.nearest_escape_codes(p, k) if k else None  # (B, S, k)
        esc = torch.zeros_like(seg_mask)  # (B, S)
        chosen_for = joint_for = deep_for = None
        # each round grows the set, or chooses once per distinct set (escape codes, then jointly, then
        # second digits); segments with two digits keep them
        for _ in range(6 * seg_mask.shape[1] + 6):
            p.escape_mask = esc
            wrong = self.wrong_segments(p, base)  # (B, S)
            grown = esc | wrong
            if torch.equal(grown, esc):
                lost = wrong & esc & ~self.two_digit(p.escape_id)  # one digit, still wrong
                if cand is not None and not (chosen_for is not None and torch.equal(esc, chosen_for)):
                    self.choose_escape_codes(p, base, cand)
                    chosen_for = esc
                elif (
                    self.cfg.escape_joint_candidates
                    and bool(lost.any())
                    and not (joint_for is not None and torch.equal(esc, joint_for))
                ):
                    self.choose_joint_codes(p, lost)
                    base = self.code_context(self.quantizer.lookup(p.q.codes), p.q.codes)
                    cand = self.nearest_escape_codes(p, k)  # the residuals of the new codes
                    joint_for = esc
                elif (
                    self.cfg.escape_depth == 2
                    and bool((wrong & esc).any())
                    and not (deep_for is not None and torch.equal(esc, deep_for))
                ):
                    self.choose_deep_codes(p, wrong & esc)  # two-digit ones too: an earlier choice moved them
                    deep_for = esc
                else:
                    break
            esc = grown
        p.escape_mask = esc
        return esc

    def nearest_escape_codes(self, p: LevelPass, k: int) -> torch.Tensor:
        """The k nearest escape codes to each segment's residual `pooled - codebook[code]`, nearest
        first: (B, S, k)."""
        residual = p.pooled.float() - self.quantizer.lookup(p.q.codes)  # (B, S, D)
        return nearest_codes(self.escape_quantizer.codebook[0], residual, k)

    @torch.no_grad()
    def choose_escape_codes(self, p: LevelPass, base: torch.Tensor, cand: torch.Tensor) -> None:
        """Each segment of `p.escape_mask` takes, among its candidates `cand (B, S, k)`, the escape code
        under which the decoder, teacher-forced, misses the fewest of the segment's tokens (argmax !=
        token: none, where some candidate gives the segment back), and of those the one with the lowest
        CE of the segment; ties within `CHOICE_TOLERANCE` go to the nearer code (`pick_candidate`, as
        `choose_codes`). k decoder passes (one at a time: k may be the whole escape codebook), every
        escaped segment at its i-th candidate in pass i. Rewrites `p.escape_q`'s codes and vectors.
        base (B, S, D): the codes' context without escapes.

        Toy example, one segment, 3 candidates with (misses, CE) (1, 0.2), (0, 0.9), (0, 0.5): the
        fewest misses is 0, of candidates 1 and 2 the lower CE is candidate 2's, so candidate 2 (by CE
        alone it would be candidate 0, which leaves a byte wrong)."""
        seg_id, esc = p.layout.seg_id, p.escape_mask
        one = esc & ~self.two_digit(p.escape_id)  # (B, S): two-digit ids stay
        cur = self.current_escapes(p)  # (B, S)
        T, S = p.tokens.shape[1], esc.shape[1]
        ces, misses = [], []
        for i in range(cand.shape[-1]):
            trial = torch.where(one, cand[..., i], cur)  # (B, S)
            ctx = self.decoder_context(base + self.escape_vectors(trial), seg_id)  # (B, T+1, D)
            logits = self._decode(p, ctx)[0][:, :T]  # (B, T, V)
            ces.append(segment_ce(logits, p.tokens, p.valid, seg_id, S))  # (B, S)
            misses.append(segment_misses(logits, p.tokens, p.valid, seg_id, S))  # (B, S)
        best = cand.gather(-1, pick_fewest_misses(torch.stack(misses), torch.stack(ces))[..., None])[..., 0]
        p.escape_id = torch.where(one, best, p.escape_id)  # (B, S)

    @torch.no_grad()
    def choose_joint_codes(self, p: LevelPass, target: torch.Tensor) -> None:
        """The segments of `target (B, S)` (escaped, and wrong with every escape candidate) take their
        code and escape code jointly: for each of the `escape_joint_candidates` = k nearest codes to
        the pooled vector, each of the `escape_choice_candidates` = k_e escape codes nearest to what
        that code leaves of it; the pair under which the decoder, teacher-forced, misses the fewest of
        the segment's tokens, then the lowest CE (`pick_fewest_misses`; the current pair is among the
        candidates, its code in the k-th place if not among the k nearest, so a segment never ends
        with more misses in this pass). k x k_e decoder passes over the rows with a target; in pass
        (i, j) every target segment reads its i-th code and that code's j-th escape code, the other
        segments what they had. Rewrites `p.q`'s and `p.escape_q`'s codes.

        Toy example, k = 2, k_e = 2, one target segment whose nearest code a leaves it 1 byte wrong with
        either escape code, while its second nearest code b with b's 2nd escape code misses none: the
        segment takes (b, that escape code), at the same rate (one code, one escape code)."""
        rows = target.any(dim=1).nonzero()[:, 0]  # (n,) the rows with a target segment
        tgt = target[rows]  # (n, S)
        tokens, valid = p.tokens[rows], p.valid[rows]  # (n, T)
        seg_id = p.layout.seg_id[rows]  # (n, T)
        T, S = tokens.shape[1], tgt.shape[1]
        k_e = self.cfg.escape_choice_candidates
        pooled = p.pooled[rows].float()  # (n, S, D)
        cur_main = p.q.codes[rows]  # (n, S)
        cur_esc = self.current_escapes(p)[rows]  # (n, S)
        mains = nearest_codes(self.quantizer.codebook[0], pooled, self.cfg.escape_joint_candidates)
        kept = (mains == cur_main[..., None]).any(-1)  # (n, S): the current code is among the k
        mains[..., -1] = torch.where(kept, mains[..., -1], cur_main)  # else it takes the k-th place
        tried_main, tried_esc, misses, ces = [], [], [], []
        for i in range(mains.shape[-1]):
            m = torch.where(tgt, mains[..., i], cur_main)  # (n, S)
            residual = pooled - self.quantizer.lookup(m)  # (n, S, D)
            e_cand = nearest_codes(self.escape_quantizer.codebook[0], residual, k_e)  # (n, S, k_e)
            base = self.code_context(self.quantizer.lookup(m), m)  # (n, S, D)
            for j in range(e_cand.shape[-1]):
                e = torch.where(tgt, e_cand[..., j], cur_esc)  # (n, S)
                ctx = self.decoder_context(base + self.escape_vectors(e), seg_id)  # (n, T+1, D)
                logits = self._decode(p, ctx, rows=rows)[0][:, :T]  # (n, T, V)
                ces.append(segment_ce(logits, tokens, valid, seg_id, S))  # (n, S)
                misses.append(segment_misses(logits, tokens, valid, seg_id, S))  # (n, S)
                tried_main.append(m)
                tried_esc.append(e)
        best = pick_fewest_misses(torch.stack(misses), torch.stack(ces))[None]  # (1, n, S)
        main = torch.stack(tried_main).gather(0, best)[0]  # (n, S)
        esc = torch.stack(tried_esc).gather(0, best)[0]  # (n, S)
        codes, esc_ids = p.q.codes.clone(), p.escape_id.clone()
        codes[rows] = main  # every tried code is the current one off the targets
        esc_ids[rows] = torch.where(tgt, esc, esc_ids[rows])  # off them -1 was tried: keep the id
        p.q.codes, p.q.digits, p.q.z = codes, codes[..., None], self.quantizer.lookup(codes)
        p.escape_id = esc_ids

    @torch.no_grad()
    def choose_deep_codes(self, p: LevelPass, target: torch.Tensor) -> None:
        """`escape_depth` 2: the segments of `target (B, S)` (escaped, and wrong) try a second digit d1
        after their first digit d0, among the `escape_choice_candidates` nearest (the nearest, without
        the choice) to what the code and d0 leave of the pooled vector, `pooled - codebook[code] -
        escape_codebook[0, d0]`; a segment takes the d1 under which the decoder, teacher-forced, misses
        the fewest of its tokens, then the lowest CE (`pick_fewest_misses`), only if that d1 misses none
        (else it keeps what it had: a second digit that gives nothing back would only cost bits).
        Segment index by segment index, left to right, so each segment is tried with the final ids of
        the segments before it (which its tokens attend to): k decoder passes for each index with a
        target, over the rows with a target there. Rewrites `p.escape_id` (K_e + d0 + K_e * d1).

        Toy example, K_e = 4, a target with d0 = 1 and candidates d1 = 3, 0 with misses 1 and 0: d1 = 0,
        id 4 + 1 + 4 * 0 = 5; were both at 1 miss, the id would stay 1."""
        K_e = self.cfg.escape_codebook_size
        ecb = self.escape_quantizer.codebook.float()  # (2, K_e, D)
        k = max(self.cfg.escape_choice_candidates, 1)
        for j in target.any(dim=0).nonzero()[:, 0].tolist():  # segment indices with a target
            rows = target[:, j].nonzero()[:, 0]  # (n,)
            tokens, valid = p.tokens[rows], p.valid[rows]  # (n, T)
            seg_id = p.layout.seg_id[rows]  # (n, T)
            T, S = tokens.shape[1], target.shape[1]
            codes = p.q.codes[rows]  # (n, S)
            d0 = self.escape_digits(p.escape_id[rows, j])[0]  # (n,)
            residual = (
                p.pooled[rows, j].float() - self.quantizer.lookup(codes[:, j : j + 1])[:, 0] - ecb[0][d0]
            )
            cand = nearest_codes(ecb[1], residual, k)  # (n, k)
            base = self.code_context(self.quantizer.lookup(codes), codes)  # (n, S, D)
            cur = self.current_escapes(p)[rows]  # (n, S)
            ces, misses = [], []
            for i in range(k):
                trial = cur.clone()
                trial[:, j] = K_e + d0 + K_e * cand[:, i]
                ctx = self.decoder_context(base + self.escape_vectors(trial), seg_id)  # (n, T+1, D)
                logits = self._decode(p, ctx, rows=rows)[0][:, :T]  # (n, T, V)
                ces.append(segment_ce(logits, tokens, valid, seg_id, S)[:, j])  # (n,)
                misses.append(segment_misses(logits, tokens, valid, seg_id, S)[:, j])  # (n,)
            miss = torch.stack(misses)  # (k, n)
            best = pick_fewest_misses(miss, torch.stack(ces))  # (n,)
            back = miss.gather(0, best[None])[0] == 0  # (n,): a second digit gives it back
            chosen = K_e + d0 + K_e * cand.gather(-1, best[:, None])[:, 0]  # (n,)
            ids = p.escape_id.clone()
            ids[rows, j] = torch.where(back, chosen, ids[rows, j])
            p.escape_id = ids

    def candidate_codes(self, pooled: torch.Tensor) -> torch.Tensor:
        """The `code_choice_candidates` = k nearest codes of each pooled vector, nearest first:
        (..., D) -> (..., k)."""
        return nearest_codes(self.quantizer.codebook[0], pooled, self.cfg.code_choice_candidates)

    @torch.no_grad()
    def choose_codes(self, p: LevelPass, pooled: torch.Tensor, kv_out=None) -> torch.Tensor:
        """Codes chosen by the decoder (`code_choice_candidates` = k): among each segment's k nearest
        codes, the one under which the decoder's teacher-forced CE of the segment's tokens is lowest.

        Pass i (of k) reads every segment's i-th nearest code at once, so in pass i a segment's CE
        also reads the i-th candidates of the segments before it, never their choice: the code of a
        closed segment depends only on its tokens and the ones before (prefix invariance, predict
        mode and streaming hold). Ties, CEs within `CHOICE_TOLERANCE` of the lowest, go to the
        nearer code (`pick_candidate`). pooled (B, S, D) -> codes (B, S).
        `kv_out` (a list) receives the passes' decoder keys and values (k*B rows; a streaming prefill,
        `code_choice_stream`).

        Toy example, k = 2, one row "ab|c" (seg_id 0 0 1), per-token CE in pass 0 [.1 .3 | .9] and in
        pass 1 [.2 .4 | .5]: segment CEs [.4 .9] and [.6 .5], so segment 0 keeps its nearest code
        and segment 1 takes its second nearest.
        """
        k = self.cfg.code_choice_candidates
        B, S, _ = pooled.shape
        T = p.tokens.shape[1]
        cand = self.candidate_codes(pooled)  # (B, S, k), nearest first
        # the k passes run as one decoder call over k copies of the batch: rows i*B .. i*B + B - 1 read
        # every segment's i-th candidate
        c = cand.permute(2, 0, 1).reshape(k * B, S)  # (k*B, S)
        seg_id = p.layout.seg_id.repeat(k, 1)  # (k*B, T)
        ctx = self.decoder_context(self.code_context(self.quantizer.lookup(c), c), seg_id)  # (k*B, T+1, D)
        logits = self._decode(p, ctx, kv_out=kv_out, copies=k)[0][:, :T]  # (k*B, T, V)
        seg_ce = segment_ce(logits, p.tokens.repeat(k, 1), p.valid.repeat(k, 1), seg_id, S).view(k, B, S)
        best = pick_candidate(seg_ce)  # (B, S)
        return cand.gather(-1, best[..., None])[..., 0]  # (B, S)

    @torch.no_grad()
    def choose_closing_codes(
        self,
        ch: CodeChoiceStream,
        closing: torch.Tensor,
        pooled: torch.Tensor,
        seg_len: torch.Tensor,
        last: torch.Tensor,
    ) -> torch.Tensor:
        """Streaming with `code_choice_candidates` = k: the code of the segment each row of `closing`
        (B'',) has just closed, as `choose_codes` chooses it, from the k decoder caches of `ch`
        (`code_choice_stream`): each pass steps the row's queued inputs (one per token of the
        segment, `seg_len (B'',)`) with its candidate as their context, and the lowest summed CE
        picks (`pick_candidate`). Input j predicts the segment's token j: queued input j + 1, or
        `last (B'',)` (the token that closed it) for the last one. pooled (B'', D) -> codes (B'').
        O(seg_len x k) steps."""
        k = ch.candidates
        cand = self.candidate_codes(pooled)  # (B'', k)
        c = cand.T.reshape(-1, 1)  # (k*B'', 1), pass-major as the cache rows
        ctx = self.code_context(self.quantizer.lookup(c), c)[:, 0]  # (k*B'', D)
        targets = torch.cat([ch.inputs[closing, 1:], last[:, None]], dim=1)  # (B'', L)
        targets[torch.arange(len(closing), device=last.device), seg_len - 1] = last
        rows, cache_rows = closing.repeat(k), ch.cache_rows(closing)  # (k*B'',) each
        local = torch.arange(len(closing), device=last.device).repeat(k)  # (k*B'',) row of `targets`
        n = seg_len.repeat(k)  # (k*B'',)
        ce = torch.zeros(len(rows), device=pooled.device)  # (k*B'',) the segment's CE in each pass
        for j in range(int(seg_len.max())):  # queued input j predicts the segment's token j
            act = n > j  # (k*B'',) the copies whose segment has a token j
            r = rows[act]  # (A,)
            logits, _ = self.decoder.step(
                ch.inputs[r, j],
                ctx[act],
                ch.cache,
                cache_rows[act],
                offsets=ch.offsets[r, j],
                history=None if ch.history is None else ch.history[r, j],
                entropy_h=None if ch.entropy_h is None else ch.entropy_h[r, j],
            )  # (A, V)
            ce[act] += F.cross_entropy(logits.float(), targets[local[act], j], reduction="none")
        ch.queued[closing] = 0
        best = pick_candidate(ce.view(k, -1))  # (B'',)
        return cand.gather(1, best[:, None])[:, 0]  # (B'',)

    def upper_stream(
        self, tokens, valid, layout: SegmentLayout, codes, closed=None, pooled=None
    ) -> UpperStream:
        """Frame this level's codes as the token stream of the level above (DESIGN §2).

        `closed (B, S)` keeps only completed segments (predict mode); `pooled (B, S, D)`, when given,
        is framed beside the codes (`UpperStream.vectors`); see `frame_upper_stream`.
        """
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        f = first_real(valid)
        starts_with_bos = valid[rows, f] & (tokens[rows, f] == self.vocab.bos_id)  # (B,)
        ends_with_eos = layout.seg_mask & (segment_last_tokens(tokens, layout) == self.vocab.eos_id)  # (B, S)
        return frame_upper_stream(
            codes,
            layout.seg_mask,
            starts_with_bos,
            ends_with_eos,
            self.upper_vocab,
            closed=closed,
            vectors=pooled,
        )

    def bottom_up(self, tokens, valid, encode=True, closed_only=False, keep_kv=False) -> LevelPass:
        """Segment the level's tokens `(B, T)` and (with `encode`) encode them and frame the codes for
        the level above: all of them (autoencode, encode), or only the completed segments'
        (`closed_only`: predict mode, the causal view). `keep_kv` also opens the level's
        `LevelStream` (the prefill of streaming generation)."""
        positions = positions_from_mask(valid)  # (B, T)
        kv_ent, kv_enc = ([], []) if keep_kv else (None, None)
        ent_logits, H, layout, fires, ent_h = self.segment(tokens, valid, positions, kv_out=kv_ent)
        p = LevelPass(tokens, valid, positions, ent_logits, H, layout, fires, entropy_h=ent_h)
        if not encode:
            return p
        kv_choice = [] if keep_kv and self.cfg.code_choice_candidates else None
        p.q, p.h, p.pooled = self.encode_segments(p, kv_out=kv_enc, choice_kv=kv_choice)
        if self.escape_quantizer is not None and not closed_only:  # predict mode never reads them
            self.escape_segments(p)
        closed = closed_segments(layout, fires, valid, self.cfg.max_segment_len) if closed_only else None
        vectors = p.pooled if self.frames_pooled else None
        p.up = self.upper_stream(tokens, valid, layout, p.q.codes.detach(), closed=closed, pooled=vectors)
        if keep_kv:
            p.stream = open_level_stream(
                self, valid, layout, fires, H, p.h, kv_ent, kv_enc, tokens=tokens, entropy_logits=ent_logits
            )
            if kv_choice is not None:  # the decoder caches its codes are chosen with
                p.stream.choice = open_code_choice_stream(self, p, kv_choice)
        return p

    # ---- decode ----------------------------------------------------------------------------
    def decoder_context(self, seg_ctx: torch.Tensor, seg_id: torch.Tensor):
        """Per-position context for the decoder input [BEGIN, x] (T + 1 positions).

        Output i predicts x[i], so it reads seg_ctx[seg_id[i]]; the extra last position (predicting
        the token after the row) reads zeros (predict mode writes the next segment's context there).
        seg_ctx (B, S, D), seg_id (B, T) with -1 on padding -> (B, T+1, D).
        """
        B, T = seg_id.shape
        D = seg_ctx.shape[-1]
        idx = seg_id.clamp(min=0)[..., None].expand(B, T, D)  # (B, T, D)
        ctx = seg_ctx.gather(1, idx) * (seg_id >= 0)[..., None]  # (B, T, D)
        return torch.cat([ctx, ctx.new_zeros(B, 1, D)], dim=1)  # (B, T+1, D)

    def _decode(self, p: LevelPass, ctx, kv_out=None, copies: int = 1, rows: torch.Tensor | None = None):
        """The decoder over [BEGIN, x] with contexts `ctx (B, T+1, D)`: logits (B, T+1, V), h, and its
        input (B, T+1) with its mask. With `copies` = k, the pass's rows are read k times over
        (ctx (k*B, T+1, D): rows i*B .. i*B + B - 1 are copy i) and every output has k*B rows.
        With `rows (n,)`, only those rows of the pass (ctx (n, T+1, D), outputs of n rows)."""
        inp, inp_valid = shift_in_begin(p.tokens, p.valid, self.decoder.begin_id, self.vocab.pad_id)
        offsets = decoder_offsets(p.layout, p.fires, p.valid, self.cfg.max_segment_len)  # (B, T+1)
        ent = entropy_at_inputs(p.entropy_h, p.valid) if self.cfg.decoder_reads_entropy else None
        if rows is not None:
            inp, inp_valid, offsets = inp[rows], inp_valid[rows], offsets[rows]
            ent = None if ent is None else ent[rows]
        if copies > 1:
            inp, inp_valid, offsets = (t.repeat(copies, 1) for t in (inp, inp_valid, offsets))
            ent = None if ent is None else ent.repeat(copies, 1, 1)
        logits, h = self.decoder(
            inp, inp_valid, positions_from_mask(inp_valid), ctx, kv_out=kv_out, offsets=offsets, entropy_h=ent
        )
        return logits, h, inp, inp_valid

    def reconstruct_logits(self, p: LevelPass) -> torch.Tensor:
        """Reconstruct mode: the decoder reads each segment's own (straight-through) code.
        (B, T, V): output i predicts tokens[i]."""
        seg_ctx = self.escape_context(p, self.code_context(p.q.z, p.q.codes))  # (B, S, D)
        ctx = self.decoder_context(seg_ctx, p.layout.seg_id)  # (B, T+1, D)
        return self._decode(p, ctx)[0][:, : p.tokens.shape[1]]  # (B, T, V)

    def codes_alone_term(self, p: LevelPass) -> torch.Tensor:
        """`escape_train_failed`: the reconstruct CE of a pass that reads the codes alone (no escape),
        and the segments it gets wrong (some argmax != token) join `p.escape_mask`, so the escape
        pass after it trains on the segments `encode` would escape, while the codes alone still train
        on every segment (bench/experiments.md, E2-series)."""
        chosen = p.escape_mask
        p.escape_mask = torch.zeros_like(chosen)
        logits = self.reconstruct_logits(p)  # (B, T, V)
        p.escape_mask = chosen | wrong_in(p, logits.detach())
        return p.next_token_loss(logits)

    def code_context(self, z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """What the decoder reads for a segment in reconstruct mode: its code's vector `z (B, S, D)`,
        plus the learned embedding of its id `codes (B, S)` with `decoder_code_embedding`."""
        if self.decoder.code_embed is None:
            return z
        return z + self.decoder.code_embed(codes).to(z.dtype)  # (B, S, D)

    def autoencode_terms(self, p: LevelPass, reconstruct: bool) -> LevelTerms:
        """The level's terms in `HierAEModel.forward`: the entropy CE and tokens per segment, and when
        the level was encoded the commitment and codebook usage, and (with `reconstruct`) the
        reconstruct CE and logits."""
        ent, tps = p.entropy_loss(), p.tokens_per_segment()
        if p.q is None:  # the last run level, whose codes nothing reads
            return LevelTerms(
                ent, p.H.new_zeros(()), p.H.new_zeros(()), tps, p.H.new_zeros(()), p.H.new_zeros(())
            )
        rec, rec_logits = p.H.new_zeros(()), None
        if reconstruct:
            if self.training and p.escape_q is not None and self.cfg.escape_train_failed:
                rec = self.codes_alone_term(p)  # and p.escape_mask gains the segments it gets wrong
            rec_logits = self.reconstruct_logits(p)  # (B, T, V)
            rec = rec + p.next_token_loss(rec_logits)
        ppl, dead = p.q.usage_perplexity.float(), p.q.dead_codes.float()
        com = p.q.commitment if p.escape_q is None else p.q.commitment + p.escape_q.commitment
        return LevelTerms(ent, rec, com, tps, ppl, dead, rec_logits)

    def predict_context(self, upper_h, upper_n, seg_pos, layout: SegmentLayout, valid):
        """Per-position predict-mode contexts for the decoder input [BEGIN, x] (T + 1 positions).

        Segment s reads upper_h[seg_pos[s]]; the position after the last real token reads
        upper_h[upper_n], the next code's slot (the open segment's, or a new one if the rule fired).
        upper_h (B, Tu+1, Du), upper_n (B,), seg_pos (B, S) -> (B, T+1, D).

        Worked example ("a cat", segments "a " and "cat", the rule fired after "t"): seg_id = [0 0 1 1 1],
        the upper input is [BEGIN, c0, c1] so seg_pos = [0 1] (segment s reads the state that predicts
        c_s) and upper_n = 2; output i < 5 reads upper_h[seg_pos[seg_id[i]]] = h0 h0 h1 h1 h1 and output
        5 (the byte after "t") reads upper_h[2], the state after c1 (tests/test_segmentation.py).
        """
        B, Du = upper_h.shape[0], upper_h.shape[-1]
        seg_ctx = upper_h.gather(1, seg_pos[..., None].expand(B, seg_pos.shape[1], Du))  # (B, S, Du)
        seg_ctx = self.context_proj(seg_ctx.to(self.context_proj.weight.dtype))  # (B, S, D)
        nxt = self.context_proj(upper_h[torch.arange(B, device=upper_h.device), upper_n])  # (B, D)
        ctx = self.decoder_context(seg_ctx, layout.seg_id)  # (B, T+1, D); position T is zeros
        rows = torch.arange(B, device=valid.device)
        ctx[rows, last_real(valid) + 1] = nxt.to(ctx.dtype)
        return ctx

    def predict_logits(self, p: LevelPass, upper_h, upper_n, zero_context=False):
        """Predict mode: the decoder reads the hidden state of the level above (`upper_h (B, Tu+1, Du)`,
        next code at `upper_n (B,)`) where each segment's code sits or will sit. Returns logits
        (B, T+1, V) (output t + 1 reads x[t], predicts x[t + 1]), the decoder's states (B, T+1, D)
        (the level below's `upper_h`) and the predict CE of the level's tokens. With `p.stream`,
        fills its decoder cache and next context."""
        ctx = self.predict_context(upper_h, upper_n, p.up.seg_pos, p.layout, p.valid)  # (B, T+1, D)
        if zero_context:
            ctx = torch.zeros_like(ctx)
        kv_dec = [] if p.stream is not None else None
        logits, h, inp, inp_valid = self._decode(p, ctx, kv_out=kv_dec)
        if p.stream is not None:
            rows = torch.arange(p.tokens.shape[0], device=p.tokens.device)
            nxt = self.context_proj(upper_h[rows, upper_n].to(self.context_proj.weight.dtype))  # (B, D)
            p.stream.decoder = KVStore(kv_dec, inp_valid)
            p.stream.context = nxt
            ids = inp.masked_fill(~inp_valid, -1)  # (B, T+1)
            p.stream.recent = last_ids(ids, last_real(inp_valid), self.decoder.history)  # (B, h)
        return logits, h, p.next_token_loss(logits)

    # ---- streaming -------------------------------------------------------------------------
    def step(self, st: LevelStream, rows: torch.Tensor, toks: torch.Tensor, upper: Callable):
        """Read one token for each row in `rows` (B',): boundary rule, encoder, and when the rule
        fires, pooling + quantiser; the code goes up through `upper(rows, codes, pooled)` (pooled
        (B'', D) the vectors the codes were chosen from, None with the EOS that follows), which
        returns the hidden state of the level above (the next segment's context). Then the decoder
        predicts the token after. Returns logits (B', V), hidden (B', D)."""
        L = self.cfg.max_segment_len
        seg_len = torch.where(st.pending_new[rows], torch.zeros_like(st.seg_len[rows]), st.seg_len[rows])
        with fp32_region(toks.device):
            h = self.encoder.step(toks, st.encoder, rows)  # (B', D)
            st.open_states[rows, seg_len] = h
            seg_len = seg_len + 1
            ent_logits, ent_h = self.entropy_model.step(toks, st.entropy, rows)  # (B', V), (B', D)
            H = entropy_bits(ent_logits[:, None])  # (B', 1)
        if st.seg_bits is not None:  # budget mode: the open segment's surprisal, this token's included
            bits = torch.where(st.pending_new[rows], torch.zeros_like(st.seg_bits[rows]), st.seg_bits[rows])
            fires, st.seg_bits[rows], st.prev_logp[rows] = self.budget_step(
                bits, st.prev_logp[rows], torch.isinf(st.prev_H[rows]), toks, ent_logits, H[:, 0]
            )
        else:
            owed = None
            if st.utf8_owed is not None:  # the UTF-8 character open after this token
                st.utf8_owed[rows] = owed = utf8_owed_step(st.utf8_owed[rows], toks)  # (B',)
                owed = owed[:, None]
            fires = self.rule(H, toks[:, None], prev_entropy=st.prev_H[rows], owed=owed)[:, 0]  # (B',)
        # the open segment closes after this token
        fires = segment_closes(
            fires, seg_len, L, self.cfg.min_segment_len, toks == self.vocab.eos_id
        )  # (B',)
        st.prev_H[rows], st.seg_len[rows], st.pending_new[rows] = H[:, 0], seg_len, fires
        if bool(fires.any()):
            closing = rows[fires]
            with fp32_region(toks.device):
                slots = torch.arange(L, device=toks.device)[None, :] < seg_len[fires][:, None]  # (B'', L)
                pooled = self.pooling(st.open_states[closing][:, None], slots[:, None])  # (B'', 1, D)
                if self.code_predictor is not None:
                    pooled = pooled - self.code_predictor(st.before[closing])[:, None]
                    st.before[closing] = h[fires]  # the state before the segment that opens next
                if st.choice is not None:  # (B'',)
                    codes = self.choose_closing_codes(
                        st.choice, closing, pooled[:, 0], seg_len[fires], toks[fires]
                    )
                else:
                    codes = self.quantizer(pooled, torch.ones_like(slots[:, :1])).codes[:, 0]  # (B'',)
            g = upper(closing, codes, pooled[:, 0])
            eos = toks[fires] == self.vocab.eos_id
            if bool(eos.any()):  # EOS closes its segment at every level: the upper EOS follows
                g[eos] = upper(closing[eos], torch.full_like(codes[eos], self.upper_vocab.eos_id), None)
            st.context[closing] = self.context_proj(g.to(self.context_proj.weight.dtype)).to(st.context.dtype)
        offsets = torch.where(fires, torch.zeros_like(seg_len), seg_len)  # (B',) of the next token
        history = None
        if self.decoder.history:
            history = st.recent[rows]  # (B', h) the decoder's inputs before this one
            st.recent[rows] = shift_in(history, toks)
        ent_h = ent_h if self.cfg.decoder_reads_entropy else None
        if st.choice is not None:  # the input predicts the next token, of the open segment or a new one
            st.choice.enqueue(rows, toks, offsets, history, ent_h)
        return self.decoder.step(
            toks, st.context[rows], st.decoder, rows, offsets=offsets, history=history, entropy_h=ent_h
        )

    def decode_codes(
        self,
        codes: torch.Tensor,
        seg_mask: torch.Tensor,
        pick=None,
        next_code=None,
        escapes=None,
        corrections=None,
    ):
        """Regenerate the level's tokens from its codes `(B, S)` (`regenerate` reading each code's
        vector as its segment's context): tokens, valid, seg_id (B, n).

        `next_code(j) -> int`, for one row (B = 1): the codes are read one at a time, code j just before
        the first token of segment j is generated (after every token of segments < j; the codec prices
        a code with the text before it); `codes` then only gives S (its values are not read).
        `escapes (B, S)` (`escape_codebook_size`; with the whole codes only, `next_code` None): each
        segment's escape code, -1 where it has none; an escaped segment's context adds `escape_vectors`.
        `corrections (B, S, max_segment_len)` (with the whole codes only): the token at each offset of
        each segment where the decoder's own choice is wrong, -1 elsewhere (`hier_ae.corrections`)."""
        if next_code is None:
            ctx = self.code_context(self.quantizer.lookup(codes), codes)  # (B, S, D)
            if escapes is not None:  # `escape_codebook_size`: (B, S), -1 = not escaped
                ctx = ctx + self.escape_vectors(escapes)
            return self.regenerate(ctx, seg_mask, pick=pick, forced=corrections)
        if corrections is not None:
            raise ValueError(
                "corrections are read with the whole codes: give either corrections or next_code."
            )
        if codes.shape[0] != 1:
            raise ValueError(f"next_code reads the codes of one row; got {codes.shape[0]} rows")

        def segment_context(j: int) -> torch.Tensor:
            c = next_code(j)
            if not 0 <= c < self.cfg.num_codes:
                raise ValueError(f"next_code({j}) = {c!r} is invalid: a code in [0, {self.cfg.num_codes})")
            code = torch.tensor([[c]], dtype=torch.long, device=codes.device)  # (1, 1)
            return self.code_context(self.quantizer.lookup(code), code)[0, 0]  # (D,)

        unread = torch.zeros_like(codes)
        ctx = self.code_context(self.quantizer.lookup(unread), unread)  # (1, S, D), refilled one by one
        return self.regenerate(ctx, seg_mask, pick=pick, segment_context=segment_context)

    def regenerate(
        self, ctx: torch.Tensor, seg_mask: torch.Tensor, pick=None, segment_context=None, forced=None
    ):
        """Greedy reconstruct-mode generation of one level from one context per segment, streamed.

        ctx (B, S, D), seg_mask (B, S) -> tokens (B, n), valid (B, n), seg_id (B, n) (the segment of
        each token, -1 on padding: the boundaries the rule drew). Walk-through for one row with
        two segments, max_segment_len 4: step 0 reads [BEGIN] with ctx[0] and emits x0; the entropy
        model reads x0 and the rule fires on H[0], so step 1 reads x0 with ctx[1] and emits x1; ...
        the row stops after its 2nd segment closes (or at its EOS, or at the cap S * max_segment_len).

        Each step feeds exactly one new position per live row to the decoder and to the entropy model,
        through their windowed KV caches (`KVStore`, as in `step`): O(W) per token, not O(n).
        Step 0 fills the caches with a one-position whole-row forward (so they take the dtype the
        modules compute in); a finished row leaves the batch and gets padding from then on. The
        entropy model runs in `fp32_region`, as in `segment`, so decode's boundaries are
        encode's even under bf16 autocast (DESIGN §3, precision).

        `pick(n, logits (B', V), rows (B',)) -> tokens (B',)`, when given, chooses the token of step
        n for the live rows instead of the argmax (`hier_ae.codes.codec` reads it from a range coder).
        `segment_context(j) -> (D,)`, when given (one row), replaces ctx[0, j] just before segment j's
        first token is generated (`decode_codes`' `next_code`).
        `forced (B, S, L)`, when given: the token at offset o of segment j where `forced[:, j, o] >= 0`,
        in place of the decoder's choice (token corrections, `hier_ae.corrections`); the boundary rule
        then reads the forced token, as encode read it.
        """
        B, S, _ = ctx.shape
        dev = ctx.device
        L = self.cfg.max_segment_len
        pad, eos = self.vocab.pad_id, self.vocab.eos_id
        n_seg = seg_mask.sum(dim=1)  # (B,)
        tokens = torch.full((B, S * L), pad, dtype=torch.long, device=dev)  # (B, S*L) hard cap
        valid = torch.zeros(B, S * L, dtype=torch.bool, device=dev)  # (B, S*L)
        seg_id = torch.full((B, S * L), -1, dtype=torch.long, device=dev)  # (B, S*L)
        seg = torch.zeros(B, dtype=torch.long, device=dev)  # (B,) segment of the next token
        seg_len = torch.zeros(B, dtype=torch.long, device=dev)  # (B,) tokens in the open segment
        prev_H = torch.zeros(B, dtype=torch.float32, device=dev)  # (B,) H of the row's last token
        budget = self.cfg.boundary_mode == "budget"
        # budget mode: the open segment's surprisal (B,) and the entropy model's prediction (B, V)
        seg_bits = torch.zeros(B, dtype=torch.float32, device=dev)
        prev_logp = torch.zeros(B, self.vocab.vocab_size, device=dev) if budget else None
        # `utf8_boundaries`: the bytes the row's open UTF-8 character still owes (B,); None without
        owed = torch.zeros(B, dtype=torch.long, device=dev) if self.cfg.utf8_boundaries else None
        done = n_seg == 0  # (B,)
        rows = torch.arange(B, device=dev)  # (B',) the rows that step: every row at step 0
        one = torch.ones(B, 1, dtype=torch.bool, device=dev)  # (B, 1)
        # the decoder's last h inputs, -1 = none, as `LevelStream.recent` (`decoder_ngrams`; h = 0 without):
        # after step 0 they end with BEGIN
        h = self.decoder.history
        recent = torch.full((B, h), -1, dtype=torch.long, device=dev)  # (B, h)
        if h:
            recent[:, -1] = self.decoder.begin_id
        zero_pos = torch.zeros(B, 1, dtype=torch.long, device=dev)  # (B, 1)
        # the entropy model's state at each row's last token (`decoder_reads_entropy`; BEGIN reads zeros)
        reads_ent = self.cfg.decoder_reads_entropy
        ent_h = torch.zeros(B, self.cfg.hidden_size, device=dev) if reads_ent else None  # (B, D)
        n_steps = 0
        opened = -1  # with `segment_context`: the last segment whose context it gave
        for n in range(S * L):
            n_steps = n + 1
            if segment_context is not None and opened < int(seg[0]) < S:  # one row: its next segment opens
                opened = int(seg[0])
                ctx[0, opened] = segment_context(opened)
            # the decoder reads one token (BEGIN at step 0) with the context of the token to predict
            cur = ctx[rows, seg[rows].clamp(max=S - 1)]  # (B', D)
            if n == 0:
                begin = torch.full((B, 1), self.decoder.begin_id, dtype=torch.long, device=dev)
                kv_dec = []
                ent0 = None if ent_h is None else ent_h[:, None]  # (B, 1, D) zeros: BEGIN
                logits = self.decoder(
                    begin, one, zero_pos, cur[:, None], kv_out=kv_dec, offsets=zero_pos, entropy_h=ent0
                )[0]
                logits = logits[:, 0]  # (B, V)
                dec_cache = KVStore(kv_dec, one)
            else:
                # the token to predict sits at offset seg_len in its segment
                history = None
                if h:
                    history = recent[rows]  # (B', h): the inputs before tokens[:, n - 1]
                    recent[rows] = shift_in(history, tokens[rows, n - 1])
                logits = self.decoder.step(
                    tokens[rows, n - 1],
                    cur,
                    dec_cache,
                    rows,
                    offsets=seg_len[rows],
                    history=history,
                    entropy_h=None if ent_h is None else ent_h[rows],
                )[0]
            nxt = logits.argmax(dim=-1) if pick is None else pick(n, logits, rows)  # (B',)
            if forced is not None:  # a correction at the open segment's next offset replaces the choice
                fix = forced[rows, seg[rows].clamp(max=S - 1), seg_len[rows]]  # (B',)
                nxt = torch.where(fix >= 0, fix, nxt)
            nxt = torch.where(done[rows], torch.full_like(nxt, pad), nxt)
            tokens[rows, n] = nxt
            valid[rows, n] = ~done[rows]
            seg_id[rows, n] = torch.where(done[rows], -1, seg[rows])
            # the boundary rule on the regenerated token, with the entropy model as encode runs it
            with fp32_region(dev):
                if n == 0:
                    kv_ent = []
                    ent_logits, ent_state = self.entropy_model(nxt[:, None], one, zero_pos, kv_out=kv_ent)
                    ent_logits, ent_state = ent_logits[:, 0], ent_state[:, 0]  # (B, V), (B, D)
                    ent_cache = KVStore(kv_ent, one)
                else:
                    ent_logits, ent_state = self.entropy_model.step(nxt, ent_cache, rows)  # (B', V), (B', D)
                H = entropy_bits(ent_logits[:, None])  # (B', 1)
                if reads_ent:  # what the decoder reads with this token at the next step
                    ent_h[rows] = ent_state.to(ent_h.dtype)
            if budget:  # the open segment's surprisal, this token's included
                fires, r_bits, prev_logp[rows] = self.budget_step(
                    seg_bits[rows], prev_logp[rows], n == 0, nxt, ent_logits, H[:, 0]
                )
            else:
                prev = None if n == 0 else prev_H[rows]
                r_owed = None
                if owed is not None:
                    owed[rows] = r_owed = utf8_owed_step(owed[rows], nxt)  # (B',)
                    r_owed = r_owed[:, None]
                fires = self.rule(H, nxt[:, None], prev_entropy=prev, owed=r_owed)[:, 0]  # (B',)
            r_len = seg_len[rows] + 1  # (B',)
            new_seg = segment_closes(fires, r_len, L, self.cfg.min_segment_len, nxt == eos)  # (B',)
            if budget:
                seg_bits[rows] = torch.where(new_seg, torch.zeros_like(r_bits), r_bits)
            r_seg = seg[rows] + new_seg.long()  # (B',)
            seg[rows] = r_seg
            seg_len[rows] = torch.where(new_seg, torch.zeros_like(r_len), r_len)
            prev_H[rows] = H[:, 0]
            done[rows] = done[rows] | (nxt == eos) | (r_seg >= n_seg[rows])
            if bool(done.all()):
                break
            rows = (~done).nonzero()[:, 0]  # (B',) rows still generating
        return tokens[:, :n_steps], valid[:, :n_steps], seg_id[:, :n_steps]
