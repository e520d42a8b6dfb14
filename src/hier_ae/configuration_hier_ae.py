"""Configuration of `hier_ae`: one `HierAEConfig` with a list of per-level settings and a top LM.

Sub-configs are stored as plain dicts (`config.levels: list[dict]`, `config.top_lm: dict`) so that
`save_pretrained` can serialise them; typed, validated views are built on access
(`config.level_configs`, `config.top_lm_config`).

Vocabulary of every level (DESIGN §2). Level 0 reads bytes with ByT5 ids: `0=<pad> 1=</s> 2=<s>`,
byte `b -> b + 3`, so `V_0 = 259`. Level `l >= 1` reads the codes of level `l - 1`, which live in
`[0, N)` with `N = K^R` (codebook size to the power of the residual depth), and its specials come
**after** the codes so that a code never collides with one:

    N = 4 codes:  ids 0 1 2 3 are codes, 4 = pad, 5 = eos, 6 = bos  ->  V = N + 3 = 7

`PAD_ID`, `EOS_ID`, `BOS_ID`, `BYTE_OFFSET` and `BYTE_VOCAB_SIZE` below are the one definition of the
byte ids; everything else (tokenizer, validation, data, bench) imports them. `LevelVocab.of_bytes()` and
`LevelVocab.of_codes(N)` are the one place a level's specials are placed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from transformers import PretrainedConfig

# the byte vocabulary of level 0 (DESIGN §2, ByT5 ids): 0 = <pad>, 1 = </s>, 2 = <s>, byte b -> b + 3
PAD_ID, EOS_ID, BOS_ID = 0, 1, 2
BYTE_OFFSET = 3
BYTE_VOCAB_SIZE = 256 + BYTE_OFFSET  # 259

BOUNDARY_MODES = ("threshold", "delta", "budget")
ENCODER_SCOPES = ("row", "segment")
POOLING_MODES = ("query", "concat")
QUANTIZERS = ("vq", "fsq")
MAX_COMPOSITE_CODES = 65536


def _is_probability(value: Any) -> bool:
    """A dropout rate: an int or float in [0, 1) (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0


def _check(cond: bool, field: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ValueError(f"{field}={value!r} is invalid: {allowed}.")


def _is_count(value: Any, lo: int, hi: int | None = None) -> bool:
    """An int (not a bool) in [lo, hi] (hi None: no upper bound). E.g. _is_count(3, 1) is True;
    _is_count(True, 1), _is_count(2.0, 1) and _is_count(9, 2, 8) are False."""
    return (
        isinstance(value, int) and not isinstance(value, bool) and lo <= value and (hi is None or value <= hi)
    )


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool, not a string): what every float setting must be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_numbers(obj: Any, prefix: str, names: tuple[str, ...]) -> None:
    """ValueError for a float setting that is not a finite number ("2", None, nan), before comparing it."""
    for name in names:
        value = getattr(obj, name)
        _check(_is_number(value), f"{prefix}{name}", value, "must be a finite number")


@dataclass(frozen=True)
class LevelVocab:
    """Token ids of one level's stream: `vocab_size` ids, of which pad / eos / bos are specials.

    `LevelVocab.of_bytes()` is level 0's (259 ids, specials 0 1 2); `LevelVocab.of_codes(N)` is the stream
    of the N codes of a level, specials after the codes: `of_codes(4)` = ids 0..3 codes, pad 4, eos 5,
    bos 6, vocab 7.
    """

    vocab_size: int
    pad_id: int
    eos_id: int
    bos_id: int

    @classmethod
    def of_bytes(cls) -> LevelVocab:
        return cls(vocab_size=BYTE_VOCAB_SIZE, pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID)

    @classmethod
    def of_codes(cls, num_codes: int) -> LevelVocab:
        """The vocabulary of the stream of a level's codes `[0, num_codes)` (the level above's)."""
        n = num_codes
        return cls(vocab_size=n + 3, pad_id=n, eos_id=n + 1, bos_id=n + 2)


def check_fsq_levels(levels, max_codes: int | None = MAX_COMPOSITE_CODES) -> tuple[int, ...]:
    """FSQ levels as a tuple, or ValueError: a non-empty list of integers >= 2, product <= `max_codes`
    (a level's codes are the vocabulary of the level above: 65536; None: no bound)."""
    ok = isinstance(levels, (list, tuple)) and len(levels) > 0
    ok = ok and all(_is_count(n, 2) for n in levels)
    if not ok:
        raise ValueError(
            f"fsq_levels must be a non-empty list of integers >= 2 (e.g. [8, 8, 8]), got {levels!r}"
        )
    if max_codes is not None and math.prod(levels) > max_codes:
        raise ValueError(
            f"fsq_levels {list(levels)} give {math.prod(levels)} codes; at most {max_codes} "
            "(the level above's vocabulary)"
        )
    return tuple(levels)


@dataclass
class LevelConfig:
    """Settings of one level: entropy model, boundary rule, encoder, pooling, quantiser, decoder.

    All byte/token-level modules of the level share `hidden_size`, `num_heads` and the attention
    window `window` (in tokens of this level).
    """

    hidden_size: int = 64
    num_heads: int = 4
    intermediate_size: int = 256
    window: int = 64
    rope_theta: float = 10000.0
    # entropy model (a small causal LM over this level's tokens); `entropy_window` its own attention
    # window (None: `window`): a longer one lets its states, which `decoder_reads_entropy` passes to
    # the decoder, carry exact history from further back at forward-only cost after its stage
    entropy_layers: int = 2
    entropy_window: int | None = None
    # boundary rule (DESIGN §3.2; segmentation.py): "threshold" (a token opens a segment when H > threshold),
    # "delta" (when H rose by more than delta) or "budget" (a segment closes once its tokens' surprisal
    # under the entropy model plus the next token's H would exceed `threshold` bits: about equal
    # information per segment). `target_tokens_per_segment` adapts threshold (or delta) in training
    boundary_mode: str = "threshold"
    threshold: float = 2.0
    delta: float = 1.0
    max_segment_len: int = 16
    # the rule closes a segment only once it holds this many tokens (EOS closes it at any length):
    # 1 lets every uncertain byte be a segment of its own, each spending a whole code
    min_segment_len: int = 1
    # the bottom level only, threshold and delta modes: the rule never opens a segment inside a UTF-8
    # character (segmentation.utf8_owed), so multi-byte scripts are cut between characters (the
    # length cap still cuts where it must)
    utf8_boundaries: bool = False
    target_tokens_per_segment: float | None = None
    threshold_adapt_rate: float = 0.01
    # encoder + pooling. encoder_scope "row": a causal transformer over the whole row (window
    # `window`), so a segment's states also carry the bytes before it; "segment": the encoder sees
    # only the segment's own tokens (`encoder_layers` bidirectional layers over its slots, run
    # once the segment is closed; see pooling.SegmentMixer), so the code holds only the segment
    encoder_layers: int = 2
    encoder_scope: str = "row"
    # pooling "query": one learned query attends over the segment's slots (`pooling_heads` heads);
    # "concat": the segment's slots, concatenated in order (empty slots zero), through an MLP
    pooling: str = "query"
    pooling_heads: int = 4
    # bidirectional layers over each segment's slots before pooling (0: the query reads the causal
    # encoder states directly); see pooling.SegmentMixer
    segment_mixer_layers: int = 0
    # quantiser (DESIGN §3.5): "vq", residual VQ with an EMA codebook (codebook_size ** codebook_depth
    # codes), or "fsq", finite scalar quantisation with `fsq_levels` (prod(fsq_levels) codes; see fsq.py)
    quantizer: str = "vq"
    fsq_levels: list[int] | None = None
    codebook_size: int = 256
    codebook_depth: int = 1
    beta: float = 0.25
    ema_decay: float = 0.99
    restart_dead_codes: bool = True
    dead_after_steps: int = 50
    # a code not used once since it was set (init or restart) is dead after this many steps (None:
    # `dead_after_steps`): with a long `dead_after_steps`, the rows no input picks are recycled early
    # while the codes of rare inputs keep their place (bench/experiments.md, R-series)
    new_code_dead_after_steps: int | None = None
    restart_pool_size: int = 1024
    # predictive codes: the quantiser codes the pooled vector minus a learned linear prediction of it
    # from the encoder state just before the segment (zero for a row's first segment), so a code can
    # say how a segment departs from what its context predicts rather than name the segment outright;
    # the decoder, which sees the same context, reads the code's vector as before. Causal (the state
    # before a segment is known once the segment opens); `pooled` is then the residual
    predictive_codes: bool = False
    # decoder (expander)
    decoder_layers: int = 2
    # where each token sits inside its segment (0 .. max_segment_len - 1), told to both sides: the
    # pooling's slots get a learned offset embedding (the code can say which byte comes first) and
    # the decoder's input adds the offset of the token it predicts (it knows which byte it is at)
    segment_offsets: bool = True
    # the decoder's input also adds hashed embeddings of the n-grams of tokens ending there, one table
    # of `ngram_buckets` rows per n (BLT's hash n-gram embeddings; hash_ngrams.py); None: none
    decoder_ngrams: list[int] | None = None
    ngram_buckets: int = 4096
    # dropout on the summed n-gram embeddings in training (0: none): the tables can memorise a small
    # training text seen for many epochs
    ngram_dropout: float = 0.0
    # the decoder's input also adds (through a learned map) the entropy model's last hidden state at
    # the token it reads: the byte decoder starts from what the entropy model has learned, a causal
    # LM over the same tokens that segmentation runs anyway (no extra layers run; detached, so the
    # decoder's loss never moves the entropy model or the boundaries)
    decoder_reads_entropy: bool = False
    # residual dropout in the decoder's layers in training (0: none); with `top_lm.dropout`, the
    # regulariser of what predict mode trains when a small text is read for many epochs
    decoder_dropout: float = 0.0
    # reconstruct mode and `decode`: the decoder's context of a segment also adds a learned embedding
    # of its code id (one row per code, moved by the decoder's loss only), beside the code's codebook
    # vector (set by the encoder's clustering), for rare codes whose vectors lie close to others'.
    # Measured on Tiny Shakespeare's 2-byte codes (bench/experiments.md): no gain while restarts took
    # rare codes away (K5); with codes kept, +5 to +8 points of exact lines at 3,300 steps (R6) but
    # about even at 22,000 (F1): off by default. Predict mode's contexts are unchanged.
    decoder_code_embedding: bool = False
    # codes chosen by the decoder (VQ, depth 1): 0 takes each segment's nearest code; k >= 2 takes,
    # among its k nearest codes, the one under which the decoder's teacher-forced CE of the segment's
    # tokens is lowest (k extra decoder passes without grad, every segment at its i-th candidate in
    # pass i). The same rule runs in training, `encode`, predict mode and streaming, so each code is
    # the one that decodes its segment best, and the EMA moves the chosen code toward the segment.
    # Measured on Tiny Shakespeare's 2-byte codes (bench/experiments.md, A-series): k = 4 doubles the
    # exact held-out lines at 19,000 steps (FA2: 54.7% vs 30.5% at 3.95 code bits/byte); training and
    # `encode` cost about k decoder forwards more. Streaming recomputes the level over the row's
    # history at each segment close (O(T) per segment): off by default.
    code_choice_candidates: int = 0
    # variable rate, escape codes (0: off): a second VQ codebook of `escape_codebook_size` codes
    # quantises what a segment's code leaves of its pooled vector; the decoder adds that escape code's
    # vector (and, with `decoder_code_embedding`, its embedding) to the context of escaped segments
    # only. Training escapes each segment with probability `escape_train_rate`; `encode` escapes the
    # segments whose tokens the decoder does not give back from their code alone
    # (`encode(...).escape_codes`, read by `decode(..., escape_codes=)`), so the rate follows what the
    # segments carry (bench/experiments.md, E-series). Predict mode, the top LM and the levels above
    # read the codes only.
    escape_codebook_size: int = 0
    escape_train_rate: float = 0.5
    # training also runs the decoder on the codes alone (its reconstruct CE is added to the loss) and
    # escapes the segments that pass gets wrong, the ones `encode` escapes; `escape_train_rate` may
    # then be 0. One more decoder pass a step (about 1.4 times the step time). At 3,000 steps on Tiny
    # Shakespeare: 70.3% of held-out lines at 4.38 code bits/byte against 69.1% at 4.46 with random
    # escapes (bench/experiments.md, E2-series).
    escape_train_failed: bool = False
    # `encode` chooses each escaped segment's escape code among its k nearest (0: the nearest) as the
    # one under which the decoder, teacher-forced, misses the fewest of the segment's tokens, then the
    # lowest CE of the segment (k decoder passes without grad); training and `decode` are unchanged, so
    # it applies to a trained model as is. On Tiny Shakespeare's F1k model k = 64 gives back 11 more
    # points of held-out lines at the same rate (bench/experiments.md, E3).
    escape_choice_candidates: int = 0
    # `encode` (with `escape_choice_candidates` k_e): an escaped segment that no escape code gives back
    # takes its code again, among its k nearest, jointly with its escape code (k x k_e decoder passes
    # for the rows that have one); the rate is unchanged (still one code and one escape code). Those
    # segments' codes in `encode(...).codes` then differ from the ones predict mode and streaming compute
    # (they never escape): they are for `decode(..., escape_codes=)`; top level only.
    # bench/experiments.md, E4.
    escape_joint_candidates: int = 0
    # escape codes of up to two digits (1: one escape code a segment; 2: the escape codebook is a
    # residual VQ of two depths, and an escaped segment may read a second escape code, quantising what
    # the first leaves). Training lets `escape_deep_train_rate` of the escaped segments read both;
    # `encode` gives a second one only to the escaped segments that no first escape code gives back and
    # that some second one (chosen among `escape_choice_candidates`, else the nearest) gives back
    # (`HierLevel.choose_deep_codes`). Ids: `escape_ids` (one digit d0 -> d0; two -> K_e + d0 + K_e * d1).
    escape_depth: int = 1
    escape_deep_train_rate: float = 0.5

    @property
    def num_escape_ids(self) -> int:
        """How many escape ids `encode` / `decode` use: K_e with `escape_depth` 1, K_e + K_e**2 with 2
        (a one-digit id d0 is itself; a two-digit one is K_e + d0 + K_e * d1). K_e = 4: 4 or 20."""
        K_e = self.escape_codebook_size
        return K_e if self.escape_depth == 1 else K_e + K_e * K_e

    @property
    def num_codes(self) -> int:
        """Number of composite ids this level passes up: `K^R` (VQ) or `prod(fsq_levels)` (FSQ)."""
        if self.quantizer == "fsq":
            return math.prod(self.fsq_levels)
        return self.codebook_size**self.codebook_depth

    @property
    def boundary_start(self) -> float:
        """The boundary rule's value before any adaptation: `delta` in delta mode, else `threshold`
        (the threshold in threshold mode, the budget in budget mode)."""
        return self.delta if self.boundary_mode == "delta" else self.threshold

    def validate(self, prefix: str, max_input_bytes: int) -> None:
        _check(self.quantizer in QUANTIZERS, f"{prefix}.quantizer", self.quantizer, f"one of {QUANTIZERS}")
        if self.quantizer == "fsq":
            try:
                check_fsq_levels(self.fsq_levels)
            except ValueError as e:
                raise ValueError(f"{prefix}.{e}") from None
        for name in (
            "hidden_size",
            "num_heads",
            "intermediate_size",
            "window",
            "entropy_layers",
            "encoder_layers",
            "decoder_layers",
            "pooling_heads",
            "codebook_depth",
            "restart_pool_size",
            "dead_after_steps",
            "ngram_buckets",
        ):
            value = getattr(self, name)
            _check(
                _is_count(value, 1),
                f"{prefix}.{name}",
                value,
                "must be an integer >= 1",
            )
        _check_numbers(
            self,
            f"{prefix}.",
            ("rope_theta", "threshold", "delta", "threshold_adapt_rate", "beta", "ema_decay"),
        )
        if self.target_tokens_per_segment is not None:
            _check_numbers(self, f"{prefix}.", ("target_tokens_per_segment",))
        _check(
            _is_count(self.segment_mixer_layers, 0),
            f"{prefix}.segment_mixer_layers",
            self.segment_mixer_layers,
            "must be an integer >= 0",
        )
        for name in (
            "restart_dead_codes",
            "segment_offsets",
            "decoder_reads_entropy",
            "decoder_code_embedding",
            "predictive_codes",
        ):
            _check(
                isinstance(getattr(self, name), bool),
                f"{prefix}.{name}",
                getattr(self, name),
                "must be True or False",
            )
        _check(
            self.hidden_size % self.num_heads == 0 and (self.hidden_size // self.num_heads) % 2 == 0,
            f"{prefix}.hidden_size",
            self.hidden_size,
            f"must be divisible by num_heads={self.num_heads} with an even head size (rotary embeddings)",
        )
        _check(
            self.hidden_size % self.pooling_heads == 0,
            f"{prefix}.pooling_heads",
            self.pooling_heads,
            f"must divide hidden_size={self.hidden_size}",
        )
        _check(
            self.window <= max_input_bytes,
            f"{prefix}.window",
            self.window,
            f"must be <= max_input_bytes={max_input_bytes}",
        )
        if self.new_code_dead_after_steps is not None:
            _check(
                _is_count(self.new_code_dead_after_steps, 1),
                f"{prefix}.new_code_dead_after_steps",
                self.new_code_dead_after_steps,
                "must be None or an integer >= 1",
            )
        if self.entropy_window is not None:
            _check(
                _is_count(self.entropy_window, 1, max_input_bytes),
                f"{prefix}.entropy_window",
                self.entropy_window,
                f"must be null (the level's window) or an integer in [1, max_input_bytes={max_input_bytes}]",
            )
        _check(
            self.encoder_scope in ENCODER_SCOPES,
            f"{prefix}.encoder_scope",
            self.encoder_scope,
            f"one of {ENCODER_SCOPES}",
        )
        _check(
            self.encoder_scope == "row" or self.segment_offsets,
            f"{prefix}.encoder_scope",
            self.encoder_scope,
            "'segment' needs segment_offsets: true (the slot embeddings are its only positions)",
        )
        _check(self.pooling in POOLING_MODES, f"{prefix}.pooling", self.pooling, f"one of {POOLING_MODES}")
        _check(
            isinstance(self.utf8_boundaries, bool)
            and not (self.utf8_boundaries and self.boundary_mode == "budget"),
            f"{prefix}.utf8_boundaries",
            self.utf8_boundaries,
            "true or false; true needs boundary_mode 'threshold' or 'delta' (budget mode has no such rule)",
        )
        _check(
            self.boundary_mode in BOUNDARY_MODES,
            f"{prefix}.boundary_mode",
            self.boundary_mode,
            f"one of {BOUNDARY_MODES}",
        )
        _check(
            _is_count(self.max_segment_len, 1, 1024),
            f"{prefix}.max_segment_len",
            self.max_segment_len,
            "must be an integer in [1, 1024]",
        )
        _check(
            _is_count(self.min_segment_len, 1, self.max_segment_len),
            f"{prefix}.min_segment_len",
            self.min_segment_len,
            f"must be an integer in [1, max_segment_len={self.max_segment_len}]",
        )
        _check(
            math.isfinite(self.threshold) and self.threshold >= 0,
            f"{prefix}.threshold",
            self.threshold,
            "bits >= 0",
        )
        _check(math.isfinite(self.delta) and self.delta >= 0, f"{prefix}.delta", self.delta, "bits >= 0")
        if self.target_tokens_per_segment is not None:
            _check(
                1.0 <= self.target_tokens_per_segment <= self.max_segment_len,
                f"{prefix}.target_tokens_per_segment",
                self.target_tokens_per_segment,
                f"None or a number in [1, max_segment_len={self.max_segment_len}]",
            )
        _check(
            self.threshold_adapt_rate >= 0,
            f"{prefix}.threshold_adapt_rate",
            self.threshold_adapt_rate,
            ">= 0",
        )
        _check(
            _is_count(self.codebook_size, 2),
            f"{prefix}.codebook_size",
            self.codebook_size,
            "must be an integer >= 2",
        )
        _check(
            self.quantizer == "fsq" or self.num_codes <= MAX_COMPOSITE_CODES,
            f"{prefix}.codebook_size**codebook_depth",
            self.num_codes,
            f"K^R must be <= {MAX_COMPOSITE_CODES} (the id passed up is the composite sum d_i K^i)",
        )
        if self.decoder_ngrams is not None:
            ns = self.decoder_ngrams
            _check(
                isinstance(ns, (list, tuple))
                and len(ns) >= 1
                and len(set(ns)) == len(ns)
                and all(_is_count(n, 2, 8) for n in ns),
                f"{prefix}.decoder_ngrams",
                ns,
                "None or a list of distinct integers in [2, 8] (n-gram lengths, e.g. [3, 4, 5])",
            )
        for name in ("ngram_dropout", "decoder_dropout"):
            value = getattr(self, name)
            _check(_is_probability(value), f"{prefix}.{name}", value, "a probability in [0, 1)")
        _check(self.beta >= 0, f"{prefix}.beta", self.beta, "must be >= 0")
        k = self.code_choice_candidates
        _check(
            _is_count(k, 0) and k != 1 and k <= self.codebook_size,
            f"{prefix}.code_choice_candidates",
            k,
            f"0 (nearest code) or an integer in [2, codebook_size={self.codebook_size}]",
        )
        _check(
            k == 0 or (self.quantizer == "vq" and self.codebook_depth == 1),
            f"{prefix}.code_choice_candidates",
            k,
            "0 unless quantizer='vq' with codebook_depth=1 (codes chosen by the decoder need one "
            f"codebook; got quantizer={self.quantizer!r}, codebook_depth={self.codebook_depth})",
        )
        K_e = self.escape_codebook_size
        _check(
            _is_count(K_e, 0) and K_e != 1 and K_e <= MAX_COMPOSITE_CODES,
            f"{prefix}.escape_codebook_size",
            K_e,
            f"0 (no escape codes) or an integer in [2, {MAX_COMPOSITE_CODES}]",
        )
        _check(
            K_e == 0 or self.quantizer == "vq",
            f"{prefix}.escape_codebook_size",
            K_e,
            f"0 unless quantizer='vq' (got quantizer={self.quantizer!r})",
        )
        k_e = self.escape_choice_candidates
        _check(
            _is_count(k_e, 0) and (k_e == 0 or 2 <= k_e <= K_e),
            f"{prefix}.escape_choice_candidates",
            k_e,
            f"0 (the nearest escape code) or an integer in [2, escape_codebook_size={K_e}]",
        )
        k_j = self.escape_joint_candidates
        _check(
            _is_count(k_j, 0) and (k_j == 0 or 2 <= k_j <= self.codebook_size),
            f"{prefix}.escape_joint_candidates",
            k_j,
            f"0 (off) or an integer in [2, codebook_size={self.codebook_size}]",
        )
        _check(
            k_j == 0 or (k_e > 0 and self.codebook_depth == 1),
            f"{prefix}.escape_joint_candidates",
            k_j,
            "0 unless escape_choice_candidates > 0 (the escape code is chosen with the code) and "
            f"codebook_depth=1 (got escape_choice_candidates={k_e}, codebook_depth={self.codebook_depth})",
        )
        depth_e = self.escape_depth
        _check(
            _is_count(depth_e, 1) and depth_e <= 2 and (depth_e == 1 or K_e > 0),
            f"{prefix}.escape_depth",
            depth_e,
            f"1 or 2 (2 needs escape codes: got escape_codebook_size={K_e})",
        )
        _check(
            depth_e == 1 or K_e * K_e <= MAX_COMPOSITE_CODES,
            f"{prefix}.escape_depth",
            depth_e,
            f"1 with escape_codebook_size={K_e} (two depths need K_e**2 <= {MAX_COMPOSITE_CODES})",
        )
        deep = self.escape_deep_train_rate
        _check(
            isinstance(deep, (int, float)) and not isinstance(deep, bool) and 0.0 <= deep <= 1.0,
            f"{prefix}.escape_deep_train_rate",
            deep,
            "a fraction in [0, 1]: the share of escaped segments that read a second escape code in training",
        )
        rate = self.escape_train_rate
        _check(
            isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0.0 <= rate <= 1.0,
            f"{prefix}.escape_train_rate",
            rate,
            "a fraction in [0, 1]: the share of segments that read their escape code in training",
        )
        _check(
            isinstance(self.escape_train_failed, bool),
            f"{prefix}.escape_train_failed",
            self.escape_train_failed,
            "a bool",
        )
        _check(
            rate > 0 or self.escape_train_failed,
            f"{prefix}.escape_train_rate",
            rate,
            "> 0 unless escape_train_failed=True (training must escape some segments)",
        )
        _check(0.0 < self.ema_decay < 1.0, f"{prefix}.ema_decay", self.ema_decay, "must be in (0, 1)")
        _check(self.rope_theta > 0, f"{prefix}.rope_theta", self.rope_theta, "must be > 0")


@dataclass
class TopLMConfig:
    """The causal transformer over the top level's code stream (DESIGN §5).

    `window`: each code attends to at most the `window` stream positions up to itself (sliding-window
    attention, as the levels'); None: full causal attention. A top LM trained on short rows (128-byte
    crops are about 55 codes) reads a 1,022-byte chunk's 430 codes better through a window no longer
    than its training rows than with full attention (bench/experiments.md TW).

    `reads_pooled`: its input at each code adds a learned map of that segment's pooled vector (the
    top level's pooling output before the quantiser: what the code was chosen from), as BLT's global
    model reads continuous patch vectors; specials read zeros. Such a model needs the bytes (or the
    levels below the top) to run: it cannot train or score on stored code shards alone.
    """

    hidden_size: int = 64
    num_heads: int = 4
    intermediate_size: int = 256
    num_layers: int = 2
    rope_theta: float = 10000.0
    reads_pooled: bool = False
    dropout: float = 0.0  # residual dropout in its layers in training (0: none)
    window: int | None = None  # attention window in stream positions; None: full causal attention

    def validate(self) -> None:
        for name in ("hidden_size", "num_heads", "intermediate_size", "num_layers"):
            value = getattr(self, name)
            _check(
                _is_count(value, 1),
                f"top_lm.{name}",
                value,
                "must be an integer >= 1",
            )
        _check_numbers(self, "top_lm.", ("rope_theta",))
        _check(
            isinstance(self.reads_pooled, bool),
            "top_lm.reads_pooled",
            self.reads_pooled,
            "must be True or False",
        )
        _check(_is_probability(self.dropout), "top_lm.dropout", self.dropout, "a probability in [0, 1)")
        _check(self.rope_theta > 0, "top_lm.rope_theta", self.rope_theta, "must be > 0")
        _check(
            self.window is None or _is_count(self.window, 1),
            "top_lm.window",
            self.window,
            "must be null (full causal attention) or an integer >= 1",
        )
        _check(
            self.hidden_size % self.num_heads == 0 and (self.hidden_size // self.num_heads) % 2 == 0,
            "top_lm.hidden_size",
            self.hidden_size,
            f"must be divisible by num_heads={self.num_heads} with an even head size (rotary embeddings)",
        )


def _as_dict(value: Any, cls: type, field: str) -> dict:
    """Accept a dict or a dataclass instance; reject unknown keys with the list of allowed ones."""
    if isinstance(value, cls):
        return asdict(value)
    if not isinstance(value, dict):
        raise ValueError(f"{field} must be a dict or {cls.__name__}, got {type(value).__name__}.")
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ValueError(f"{field} has unknown keys {unknown}; allowed keys are {sorted(allowed)}.")
    return asdict(cls(**value))


class HierAEConfig(PretrainedConfig):
    r"""Configuration of a `hier_ae` model.

    Args:
        levels (`list[dict]`): per-level settings, bottom (bytes) first; see `LevelConfig`.
        top_lm (`dict`): settings of the top code LM; see `TopLMConfig`.
        max_position_embeddings (`int`): the trained context in bytes (lm-eval's window).
        max_input_bytes (`int`): hard limit on the input length in bytes (default 65536).
        entropy_loss_weight, reconstruct_loss_weight, predict_loss_weight, commitment_loss_weight,
        top_lm_loss_weight (`float`): weights of the loss terms in `forward`'s `loss` and in every training
            stage's objective (`training.stages.prepare_stage`), 1.0 each by default.

    Example:
        >>> cfg = HierAEConfig(levels=[{"codebook_size": 64}, {"codebook_size": 32}])
        >>> [v.vocab_size for v in cfg.level_views()]  # bytes, level-0 codes + 3, top stream
        [259, 67, 35]
    """

    model_type = "hier_ae"

    def __init__(
        self,
        levels: list[dict] | None = None,
        top_lm: dict | None = None,
        max_position_embeddings: int = 1024,
        max_input_bytes: int = 65536,
        vocab_size: int = BYTE_VOCAB_SIZE,
        entropy_loss_weight: float = 1.0,
        reconstruct_loss_weight: float = 1.0,
        predict_loss_weight: float = 1.0,
        commitment_loss_weight: float = 1.0,
        top_lm_loss_weight: float = 1.0,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        pad_token_id: int = PAD_ID,
        eos_token_id: int = EOS_ID,
        bos_token_id: int = BOS_ID,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        # both model classes load from one folder (save_pretrained only adds the saved class)
        kwargs.setdefault(
            "auto_map",
            {
                "AutoConfig": "configuration_hier_ae.HierAEConfig",
                "AutoModel": "modeling_hier_ae.HierAEModel",
                "AutoModelForCausalLM": "modeling_hier_ae.HierAEForCausalLM",
            },
        )
        if levels is None:
            levels = [{}]
        if not isinstance(levels, (list, tuple)) or len(levels) == 0:
            raise ValueError(f"levels={levels!r} is invalid: must be a non-empty list of per-level dicts.")
        self.levels = [_as_dict(lv, LevelConfig, f"levels[{i}]") for i, lv in enumerate(levels)]
        self.top_lm = _as_dict(top_lm if top_lm is not None else {}, TopLMConfig, "top_lm")
        self.max_position_embeddings = max_position_embeddings
        self.max_input_bytes = max_input_bytes
        self.vocab_size = vocab_size
        self.entropy_loss_weight = entropy_loss_weight
        self.reconstruct_loss_weight = reconstruct_loss_weight
        self.predict_loss_weight = predict_loss_weight
        self.commitment_loss_weight = commitment_loss_weight
        self.top_lm_loss_weight = top_lm_loss_weight
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        super().__init__(
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            bos_token_id=bos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.check_values()

    def check_values(self) -> None:
        """Raise `ValueError` naming the field, its value and what is allowed."""
        for name in ("max_position_embeddings", "max_input_bytes"):
            value = getattr(self, name)
            _check(
                _is_count(value, 1),
                name,
                value,
                "must be an integer >= 1",
            )
        _check(
            self.max_position_embeddings <= self.max_input_bytes,
            "max_position_embeddings",
            self.max_position_embeddings,
            f"must be <= max_input_bytes={self.max_input_bytes}",
        )
        _check(
            self.vocab_size == BYTE_VOCAB_SIZE,
            "vocab_size",
            self.vocab_size,
            f"hier_ae reads bytes: must be {BYTE_VOCAB_SIZE}",
        )
        for i, lv in enumerate(self.level_configs):
            lv.validate(f"levels[{i}]", self.max_input_bytes)
            _check(
                i == 0 or not lv.utf8_boundaries,
                f"levels[{i}].utf8_boundaries",
                lv.utf8_boundaries,
                "only the bottom level reads bytes: must be false above levels[0]",
            )
            _check(
                i == len(self.level_configs) - 1 or not lv.escape_joint_candidates,
                f"levels[{i}].escape_joint_candidates",
                lv.escape_joint_candidates,
                "0 below the top level (encode rewrites the level's codes after the levels above read them)",
            )
        self.top_lm_config.validate()
        for name in (
            "entropy_loss_weight",
            "reconstruct_loss_weight",
            "predict_loss_weight",
            "commitment_loss_weight",
            "top_lm_loss_weight",
        ):
            value = getattr(self, name)
            _check(_is_number(value) and value >= 0, name, value, "must be a finite number >= 0")
        _check(
            _is_number(self.initializer_range) and self.initializer_range > 0,
            "initializer_range",
            self.initializer_range,
            "must be a finite number > 0",
        )

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """Refuse a config written for another architecture instead of loading it with a warning."""
        model_type = config_dict.get("model_type")
        if model_type is not None and model_type != cls.model_type:
            raise ValueError(
                f"config has model_type={model_type!r}; "
                f"HierAEConfig loads only model_type='{cls.model_type}'."
            )
        return super().from_dict(config_dict, **kwargs)

    # ---- typed views -------------------------------------------------------------------------
    @property
    def level_configs(self) -> list[LevelConfig]:
        return [LevelConfig(**lv) for lv in self.levels]

    @property
    def top_lm_config(self) -> TopLMConfig:
        return TopLMConfig(**self.top_lm)

    @property
    def num_levels(self) -> int:
        return len(self.levels)

    def level_views(self) -> list[LevelVocab]:
        """The vocabulary of every level's token stream, plus the top LM's, bottom first."""
        return [LevelVocab.of_bytes()] + [LevelVocab.of_codes(lv.num_codes) for lv in self.level_configs]


__all__ = [
    "HierAEConfig",
    "LevelConfig",
    "TopLMConfig",
    "LevelVocab",
    "PAD_ID",
    "EOS_ID",
    "BOS_ID",
    "BYTE_OFFSET",
    "BYTE_VOCAB_SIZE",
]
