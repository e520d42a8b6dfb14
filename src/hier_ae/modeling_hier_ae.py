"""`hier_ae` models: the hierarchical autoencoder (`HierAEModel`).

Per level (DESIGN §3): entropy model -> causal boundary rule -> encoder -> learned-query pooling ->
vector quantiser; the codes of level l, framed as [bos] codes [eos], are the tokens of level l + 1.
A decoder per level regenerates the level's tokens from one context per segment (reconstruct mode:
the segment's own code). A top code LM reads the top code stream (DESIGN §5).

What happens inside one level (segmenting, encoding, decoding, one streamed step, regeneration)
is `level.HierLevel`; this file holds the HF classes and the chaining of levels: bottom up (codes
become the tokens of the level above), top down (the hidden states of the level above become the
contexts of the level below), and the recursion of a streamed step.

Shape letters: B batch, T tokens of the current level (bytes at level 0), S segments, D width,
V vocab of the current level.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init

from .cache import HierAECache
from .code_lm import CodeLM
from .configuration_hier_ae import HierAEConfig
from .corrections import choose_corrections
from .kv_cache import KVStore
from .level import HierLevel
from .level_pass import LevelPass, LevelTerms, level_fields
from .outputs import (
    CACHE_FIELD,
    HierAECausalLMOutput,
    HierAEDecoderOutput,
    HierAEEncoderOutput,
    HierAEOutput,
    HierAEPredictOutput,
)
from .pooling import SegmentPooling
from .quantizer import VectorQuantizer
from .segmentation import compact_codes
from .streaming import StreamState
from .validation import (
    check_codes,
    check_corrections,
    check_escape_codes,
    check_forward_kwargs,
    check_generation_cache,
    check_input_ids,
    check_labels,
    check_loss_weights,
    check_model_path,
    check_prompt_rows,
    check_run_levels,
    check_stream_input,
    corrupt_weights_error,
    per_level,
)


class HierAEPreTrainedModel(PreTrainedModel):
    config_class = HierAEConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["HierLevel", "CodeLM"]
    # the segmenting and encoding path stays fp32 even in a bf16 load (DESIGN §3, precision)
    _keep_in_fp32_modules_strict = ["entropy_model", "encoder", "pooling", "quantizer", "boundary_value"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Safetensors only: a folder that holds pickled weights (`pytorch_model.bin`) is refused.

        A local folder without `config.json` raises `FileNotFoundError` (transformers would build a
        default config and load the weights into it), and so does a local path that does not exist
        (transformers would report it as a malformed Hub repo id). A truncated or corrupt
        `model.safetensors` raises `OSError` naming the file and what to do (not only safetensors'
        bare "incomplete metadata").
        """
        if kwargs.get("use_safetensors") is False:
            raise ValueError("hier_ae loads safetensors weights only; use_safetensors=False is not allowed.")
        kwargs["use_safetensors"] = True
        path = os.fspath(pretrained_model_name_or_path) if pretrained_model_name_or_path is not None else None
        if isinstance(path, str) and kwargs.get("config") is None and not kwargs.get("subfolder"):
            check_model_path(path)
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as e:
            raise corrupt_weights_error(path, e) from e

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, SegmentPooling) and module.mode == "query":
            init.zeros_(module.query)  # uniform attention (mean pooling) at the start
        elif isinstance(module, HierLevel):
            init.constant_(module.boundary_value, module.cfg.boundary_start)
        elif isinstance(module, VectorQuantizer) and not getattr(
            module.codebook, "_is_hf_initialized", False
        ):
            module.reset_state()


class HierAEModel(HierAEPreTrainedModel):
    """The hierarchical autoencoder: `forward` (losses), `encode` (bytes -> codes), `decode` (codes -> bytes).

    Example:
        >>> cfg = HierAEConfig(levels=[{"codebook_size": 64, "max_segment_len": 8}])
        >>> model = HierAEModel(cfg).eval()
        >>> ids = torch.tensor([[2, 107, 108, 1]])            # "<s>hi</s>"
        >>> enc = model.encode(ids)
        >>> out = model.decode(enc.top_codes, enc.top_mask)   # bytes back (exact once trained)
    """

    def __init__(self, config: HierAEConfig):
        super().__init__(config)
        views = config.level_views()
        cfgs = config.level_configs
        upper_dims = [c.hidden_size for c in cfgs[1:]] + [config.top_lm_config.hidden_size]
        self.levels = nn.ModuleList(HierLevel(c, views[i], upper_dims[i]) for i, c in enumerate(cfgs))
        self.top_lm = CodeLM(views[-1], config.top_lm_config, cfgs[-1].hidden_size)
        # the top level frames its pooled vectors beside its codes when the top LM reads them
        self.levels[-1].frames_pooled = config.top_lm_config.reads_pooled
        self.post_init()

    # ---- helpers ---------------------------------------------------------------------------
    @property
    def num_levels(self) -> int:
        return len(self.levels)

    @contextmanager
    def _inference(self):
        """encode / decode never move a statistic: run in eval mode, restore the modes after."""
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            yield
        finally:
            for m, mode in modes:
                m.training = mode

    def _bottom_up(self, tokens, valid, levels=None, encode_last=True, closed_only=False, keep_kv=False):
        """Run `levels` (default all) bottom up, each reading the framed codes of the one below
        (`HierLevel.bottom_up`); the last one is encoded only with `encode_last`. -> list[LevelPass]"""
        passes: list[LevelPass] = []
        levels = range(self.num_levels) if levels is None else levels
        for li in levels:
            encode = encode_last or li < levels[-1]
            p = self.levels[li].bottom_up(
                tokens, valid, encode=encode, closed_only=closed_only, keep_kv=keep_kv
            )
            passes.append(p)
            if p.up is not None:
                tokens, valid = p.up.tokens, p.up.valid
        return passes

    def apply_quantizer_updates(self) -> list[dict]:
        """Apply the EMA statistics gathered since the last call; call once per optimizer step."""
        out = []
        for level in self.levels:
            if level.codebook_frozen:
                out.append({})
                continue
            out.append(level.quantizer.apply_ema_update())
            if level.escape_quantizer is not None:
                level.escape_quantizer.apply_ema_update()
        return out

    # ---- forward ---------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        num_levels: int | None = None,
        reconstruct_levels: tuple[int, ...] | list[int] | None = None,
        run_top_lm: bool | None = None,
        loss_weights: dict[str, float] | None = None,
        mode: str = "autoencode",
        start_level: int = 0,
        return_dict: bool | None = None,
        **kwargs,
    ) -> HierAEOutput:
        """Run the levels and return each loss term separately.

        Training stages use the optional arguments to skip work (DESIGN §8): only the first
        `num_levels` levels run (default all); decoders run for `reconstruct_levels` only (default all
        run levels); the top LM runs when `run_top_lm` (default: when all levels run). A level's
        encoder and quantiser run when its codes are needed (its decoder, a level above, the top LM).
        Skipped terms are 0. `loss_weights` overrides the config's weights for this call (keys:
        entropy, reconstruct, commitment, top_lm). `mode="predict"` returns `predict(...)` instead
        (with the reconstruct terms unless `reconstruct_levels=()`), for training stages that go
        through `forward`; predict mode reconstructs every level or none.

        `start_level=l > 0` starts from stored codes instead of bytes: `input_ids` is then the token
        stream of level l (the codes of level l - 1 framed as bos, codes, eos with that level's
        specials, K + 2, c_0, ..., K + 1; see `frame_upper_stream`), levels below l do not run and
        their loss terms are 0. `start_level = num_levels` runs the top LM only. Rows framed from a
        document's codes give exactly the losses that encoding the document's bytes gives.

        Other keywords raise `TypeError`, except those transformers passes to every model
        (`HF_IGNORED_FORWARD_KWARGS`: `labels`, `use_cache`, `output_attentions`, ...), which are ignored.
        """
        check_forward_kwargs(HierAEModel.forward, kwargs)
        if mode == "predict":
            every = tuple(range(self.num_levels))
            if reconstruct_levels is not None and tuple(reconstruct_levels) not in ((), every):
                raise ValueError(
                    f"reconstruct_levels={reconstruct_levels!r} is invalid with mode='predict': None or all "
                    f"levels (reconstruct terms too) or () (none)."
                )
            with_reconstruct = reconstruct_levels is None or len(reconstruct_levels) > 0
            return self.predict(input_ids, attention_mask, with_reconstruct=with_reconstruct)
        if mode != "autoencode":
            raise ValueError(f"mode={mode!r} is invalid: 'autoencode' or 'predict'.")
        if not 0 <= start_level <= self.num_levels:
            raise ValueError(f"start_level={start_level} is invalid: must be in [0, {self.num_levels}].")
        if start_level == self.num_levels and self.config.top_lm_config.reads_pooled:
            raise ValueError(
                f"start_level={start_level} (stored top codes) is invalid for this model: its top LM reads "
                "each code's pooled vector (top_lm.reads_pooled=True), which stored codes do not carry; "
                f"start from a level below {start_level} (bytes at 0)."
            )
        vocab = self.config.level_views()[start_level].vocab_size
        ids, valid = check_input_ids(input_ids, attention_mask, self.config.max_input_bytes, vocab)
        n_run, recon, top = check_run_levels(
            self.num_levels, start_level, num_levels, reconstruct_levels, run_top_lm
        )
        w = check_loss_weights(self.config, loss_weights)

        passes = self._bottom_up(
            ids, valid, range(start_level, n_run), encode_last=top or (n_run - 1) in recon
        )
        # the levels below the stored codes have no terms; each run level assembles its own
        terms = [LevelTerms.skipped(torch.zeros((), device=ids.device))] * start_level
        for li, p in zip(range(start_level, n_run), passes):
            terms.append(self.levels[li].autoencode_terms(p, reconstruct=li in recon))
        per_level = LevelTerms.stack(terms)

        loss = LevelTerms.weighted_sum(per_level, w)
        top_loss = ids.new_zeros((), dtype=torch.float32)
        if top:  # the top LM over the top code stream (the input itself when start_level = num_levels)
            up = passes[-1].up if passes else None
            tokens, valid = (up.tokens, up.valid) if up is not None else (ids, valid)
            vectors = up.vectors if up is not None else None
            top_loss = self.top_lm.read_stream(tokens, valid, vectors=vectors)[3]
            loss = loss + w["top_lm"] * top_loss
        return HierAEOutput(loss=loss, top_lm_loss=top_loss, **per_level, **level_fields(passes))

    # ---- predict mode (the causal LM) -------------------------------------------------------
    def predict(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        zero_context: bool = False,
        with_reconstruct: bool = False,
        return_stream: bool = False,
    ) -> HierAEPredictOutput:
        """Predict mode (DESIGN §4, §6): the causal byte LM through the whole stack.

        Bottom up, each level segments and encodes its tokens; only *completed* segments pass their
        codes up. The top LM reads the top code stream; top down, the hidden state of the level
        above at the index where a segment's code sits (or will sit) is that segment's context
        g_s: it has seen the codes of earlier segments only. `logits[:, t]` predicts x[t + 1] from
        x[0..t]: the decoder output that reads x[t] and the context of seg(t + 1), which the rule
        fixed at t. `zero_context=True` replaces the byte decoder's contexts with zeros (to measure
        what the levels above contribute). `with_reconstruct=True` also returns each level's
        reconstruct-mode CE (training keeps both modes of the shared decoders working).
        `return_stream=True` also returns the `StreamState` that `stream_step` continues from
        (the prefill of cached generation).

        Worked example (DESIGN §3): "a cat sat." with segments "a ", "cat ", "sat." (open at t = 9).
        The top stream is [c0, c1] (c2 is not complete). logits[0] reads g0 = top([]), logits[1..4]
        read g1 = top([c0]), logits[5..9] read g2 = top([c0, c1]).
        """
        ids, valid = check_input_ids(input_ids, attention_mask, self.config.max_input_bytes)
        # bottom up: segments, codes of completed segments, the stream of the level above
        passes = self._bottom_up(ids, valid, closed_only=True, keep_kv=return_stream)
        if with_reconstruct:
            rec_losses = [p.next_token_loss(lv.reconstruct_logits(p)) for lv, p in zip(self.levels, passes)]
        # the top LM over the completed top codes
        top = passes[-1].up
        kv_top = [] if return_stream else None
        _, upper_h, top_valid, top_loss = self.top_lm.read_stream(
            top.tokens, top.valid, kv_out=kv_top, vectors=top.vectors
        )
        upper_n = top.valid.sum(dim=1)  # (B,) index of the next code in the upper stream
        # top down: contexts from the level above, decoders in predict mode
        losses = [None] * self.num_levels
        for li in reversed(range(self.num_levels)):
            p = passes[li]
            dec_logits, upper_h, losses[li] = self.levels[li].predict_logits(
                p, upper_h, upper_n, zero_context=zero_context and li == 0
            )  # (B, T+1, V), (B, T+1, D), ()
            upper_n = p.valid.sum(dim=1)
        stream = (
            StreamState([p.stream for p in passes], KVStore(kv_top, top_valid)) if return_stream else None
        )
        return HierAEPredictOutput(
            logits=dec_logits[:, 1:],  # (B, T, 259): output t + 1 reads x[t], predicts x[t + 1]
            predict_loss=torch.stack(losses),
            top_lm_loss=top_loss,
            reconstruct_loss=torch.stack(rec_losses) if with_reconstruct else None,
            commitment_loss=torch.stack([p.q.commitment for p in passes]) if with_reconstruct else None,
            tokens_per_segment=torch.stack([p.tokens_per_segment() for p in passes]),
            stream=stream,
        )

    # ---- streaming (cached generation, DESIGN §7) ---------------------------------------------
    def stream_step(self, state: StreamState, input_ids: torch.Tensor) -> torch.Tensor:
        """Feed one new byte per row (B,); return the logits of the byte after it (B, 259).

        Each byte-level module processes exactly this one position; a code-level module runs only
        for the rows whose segment below just closed, one position per new code.
        """
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        logits, _ = self._level_step(state, 0, rows, input_ids)
        return logits

    def _level_step(self, state: StreamState, li: int, rows: torch.Tensor, toks: torch.Tensor, vectors=None):
        """Level `li` (the top LM at `li = num_levels`) reads one token per row of `rows`
        (`HierLevel.step`); a code it passes up is read by level `li + 1`, with its pooled vector
        (`vectors (B', D)`, None for specials; only the top LM reads them). Returns logits, hidden."""
        if li == self.num_levels:
            return self.top_lm.step(toks, state.top, rows, vectors=vectors)

        def upper(rows_up, codes, pooled):
            return self._level_step(state, li + 1, rows_up, codes, pooled)[1]

        return self.levels[li].step(state.levels[li], rows, toks, upper)

    # ---- encode ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        corrections: bool = False,
    ) -> HierAEEncoderOutput:
        """Bytes -> the codes of every level. `top_codes`/`top_mask` are all that `decode` needs.

        With `corrections=True`, each level also gets the token corrections under which its codes (and
        escape codes) decode back to its tokens exactly (`hier_ae.corrections`; one greedy decode of
        the level a round, a round for each wrong token of a row): `decode(codes[l], level=l,
        escape_codes=escape_codes[l], corrections=corrections[l])` gives level l's tokens back."""
        if not isinstance(corrections, bool):
            raise ValueError(f"corrections={corrections!r} is invalid: a bool.")
        ids, valid = check_input_ids(input_ids, attention_mask, self.config.max_input_bytes)
        fixes = []
        with self._inference():
            passes = self._bottom_up(ids, valid)
            escapes = []
            for level, p in zip(self.levels, passes):
                esc = torch.full_like(p.q.codes, -1)  # (B, S)
                if level.escape_quantizer is not None:
                    esc = torch.where(level.choose_escapes(p), p.escape_id, esc)
                escapes.append(esc)
                if corrections:
                    read = esc if level.escape_quantizer is not None else None
                    mask = p.layout.seg_mask
                    fixes.append(
                        choose_corrections(level, p.q.codes, mask, read, p.tokens, p.valid, p.layout.seg_id)
                    )
        return HierAEEncoderOutput(
            top_codes=passes[-1].q.codes,
            top_mask=passes[-1].layout.seg_mask,
            escape_codes=tuple(escapes),
            corrections=tuple(fixes) if corrections else None,
            **level_fields(passes),
        )

    # ---- decode ----------------------------------------------------------------------------
    @torch.no_grad()
    def decode(
        self,
        top_codes: torch.Tensor,
        mask: torch.Tensor | None = None,
        level: int | None = None,
        pick=None,
        next_code=None,
        escape_codes: torch.Tensor | None = None,
        corrections: torch.Tensor | None = None,
    ) -> HierAEDecoderOutput:
        """Codes -> bytes, level by level, in reconstruct mode (DESIGN §7).

        `top_codes (B, S)` are codes of `level` (default: the top level, `num_levels - 1`) in
        [0, K_level^R); decoding runs from that level down to bytes. Each level regenerates its
        tokens greedily, streamed: each step feeds one new position to the decoder and the entropy
        model through their windowed KV caches (O(W) per token, DESIGN §7); a segment ends where the
        boundary rule fires on the regenerated tokens (the entropy model in fp32, as in `encode`; no
        lengths are stored); a row stops at its level's EOS, after its last segment, or at the hard
        cap S * max_segment_len. `level_tokens[l]` is the regenerated token stream of level l, for
        l = 0..level (bytes at l = 0; above, the codes of level l - 1 framed with that level's
        specials): `decode(torch.tensor([[c]]), level=1).level_tokens[1]` is the level-0 code stream
        that code c of level 1 alone stands for, and `.sequences` its bytes.

        `pick(level, n, logits (B', V), rows (B',)) -> tokens (B',)` replaces the greedy choice of each
        regenerated token (the live rows' step n of `level`; `hier_ae.codes.codec` codes the true tokens
        under these logits with a range coder: lossless compression on top of the codes).
        `next_code(j) -> int`, for one row: `level`'s codes are read one at a time instead, code j just
        before its segment's first token (`HierLevel.decode_codes`; `top_codes` then gives only S).
        `escape_codes (B, S)`, for a level with `escape_codebook_size` K_e: each segment's escape code
        in [0, K_e), or -1 where it has none (`encode(...).escape_codes[level]`); the decoder then
        reads an escaped segment's code and its escape code (variable rate).
        `corrections (B, S, max_segment_len)` of `level` (`encode(..., corrections=True).corrections[level]`):
        the token at each offset of each segment where the greedy choice is wrong, -1 elsewhere;
        decode emits it there instead (`hier_ae.corrections`).
        `escape_codes` and `corrections` may also be tuples with one entry per level, as `encode`
        gives them: each level below `level` then reads its own once the level above has decoded its
        codes, so `decode(enc.top_codes, enc.top_mask, escape_codes=enc.escape_codes,
        corrections=enc.corrections)` gives every byte back (`enc = encode(ids, corrections=True)`).
        """
        start = self.num_levels - 1 if level is None else level
        if not isinstance(start, int) or not 0 <= start < self.num_levels:
            raise ValueError(f"level={level!r} is invalid: an int in [0, {self.num_levels}) or None (top).")
        codes, seg_mask = check_codes(top_codes, mask, self.levels[start].cfg.num_codes)
        escs = per_level(escape_codes, "escape_codes", start, self.num_levels)  # levels 0..start
        if isinstance(escape_codes, (tuple, list)):  # encode's: all -1 at a level without escape codes
            escs = [self._no_escapes(li, e) for li, e in enumerate(escs)]
        fixes = per_level(corrections, "corrections", start, self.num_levels)
        streams = []
        with self._inference():
            for li in reversed(range(start + 1)):
                level_pick = None if pick is None else partial(pick, li)
                reader = next_code if li == start else None
                this = self.levels[li]
                # checked against the codes level li decodes (the first pass: before any decoding)
                esc, fix = self._level_side_inputs(
                    li, start, escs[li], fixes[li], codes, seg_mask, pick, reader
                )
                tokens, valid, _ = this.decode_codes(
                    codes, seg_mask, pick=level_pick, next_code=reader, escapes=esc, corrections=fix
                )
                streams.append(tokens)
                if li > 0:
                    codes, seg_mask = compact_codes(tokens, valid, self.levels[li - 1].cfg.num_codes)
        return HierAEDecoderOutput(
            sequences=tokens, attention_mask=valid.long(), level_tokens=tuple(reversed(streams))
        )

    def _level_side_inputs(self, li: int, start: int, esc, fix, codes, seg_mask, pick, next_code):
        """`decode`'s escape codes and corrections of level li, checked against the codes it decodes
        (B, S): for li below the level decoded, the codes the level above gave, so a shape that differs
        names the level and the likely cause."""
        try:
            if esc is not None:
                esc = check_escape_codes(esc, codes, seg_mask, self.levels[li].cfg, next_code)
            if fix is not None:
                streamed = next_code is not None or pick is not None
                fix = check_corrections(fix, codes, seg_mask, self.levels[li], streamed)
        except ValueError as e:
            if li == start:
                raise
            raise ValueError(
                f"level {li} (decoded from level {li + 1}'s tokens): {e} Level {li}'s codes are those level "
                f"{li + 1} decodes; give every level above its corrections (encode(..., "
                "corrections=True).corrections) so that they are the codes encode gave."
            ) from None
        return esc, fix

    def _no_escapes(self, li: int, esc):
        """None for the all -1 tensor `encode` gives a level without an escape codebook; else esc."""
        none = isinstance(esc, torch.Tensor) and bool((esc < 0).all())
        return None if none and not self.levels[li].cfg.escape_codebook_size else esc


class HierAEForCausalLM(HierAEPreTrainedModel, GenerationMixin):
    """The hierarchy as a causal byte LM (DESIGN §6): `logits[:, t]` predicts x[t + 1] from x[0..t].

    Wraps a `HierAEModel` (`self.model`), so one saved folder loads through both `AutoModel` and
    `AutoModelForCausalLM`. HF conventions: `labels` are the inputs (shifted inside), -100 ignored.
    lm-eval calls `model(input_ids).logits` on right-padded rows without a mask: prefix invariance
    (logits up to t never depend on bytes after t) makes that exact.
    """

    def __init__(self, config: HierAEConfig):
        super().__init__(config)
        self.model = HierAEModel(config)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # a nested config has no num_hidden_layers; the model brings its own HierAECache

    def get_input_embeddings(self):
        return self.model.levels[0].decoder.embed

    def generate(self, inputs: torch.Tensor | None = None, *args, **kwargs):
        """`GenerationMixin.generate`, refusing a prompt row without any real token.

        A row whose attention_mask is all 0 has no state to stream from (cached and uncached
        generation would disagree on it), so it raises `ValueError`; an empty prompt is `<s>` (id 2).
        """
        check_prompt_rows(kwargs.get("attention_mask"))
        return super().generate(inputs, *args, **kwargs)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        past_key_values: HierAECache | None = None,
        use_cache: bool | None = None,
        zero_context: bool = False,
        return_dict: bool | None = None,
        cache: HierAECache | None = None,
        **kwargs,
    ) -> HierAECausalLMOutput:
        """`logits[:, t]` predicts x[t + 1]; with a `HierAECache`, new tokens stream through it.

        The cache arrives as `past_key_values` (transformers <= 5.23) or `cache` (5.24 renamed it in
        `generate`); an unread cache would silently restart generation from the last token, so both
        names are read and giving both raises.
        """
        past_key_values = check_generation_cache(cache, past_key_values, HierAECache)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        cache = past_key_values if past_key_values is not None else (HierAECache() if use_cache else None)
        extra = {}
        if cache is None or cache.state is None:
            # the whole input (and, with a cache, the prefill of streaming generation)
            pred = self.model.predict(
                input_ids, attention_mask, zero_context=zero_context, return_stream=cache is not None
            )
            logits = pred.logits  # (B, T, 259)
            extra = {"predict_loss": pred.predict_loss, "top_lm_loss": pred.top_lm_loss}
            extra["tokens_per_segment"] = pred.tokens_per_segment
            if cache is not None:
                cache.state, cache.seen = pred.stream, input_ids.shape[1]
        else:
            # streaming: one new byte at a time through the cached state
            check_stream_input(
                input_ids, attention_mask, cache.seen, self.config.max_input_bytes, zero_context
            )
            steps = [self.model.stream_step(cache.state, input_ids[:, j]) for j in range(input_ids.shape[1])]
            logits = torch.stack(steps, dim=1)  # (B, T_new, 259)
            cache.seen += input_ids.shape[1]
        loss = None
        if labels is not None:
            check_labels(labels, tuple(logits.shape[:2]))
            shift_logits = logits[:, :-1].float()  # (B, T-1, V)
            shift_labels = labels[:, 1:].to(logits.device)
            loss = F.cross_entropy(
                shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=-100
            )
        return HierAECausalLMOutput(
            loss=loss,
            logits=logits,
            **{CACHE_FIELD: cache},
            **extra,
        )


__all__ = ["HierAEPreTrainedModel", "HierAEModel", "HierAEForCausalLM"]
