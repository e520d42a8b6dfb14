"""`hier_ae` models: the hierarchical autoencoder (`HierAEModel`).

Per level (DESIGN §3): entropy model -> causal boundary rule -> encoder -> learned-query pooling ->
vector quantiser; the codes of level l, framed as [bos] codes [eos], are the tokens of level l + 1.
A decoder per level regenerates the level's tokens from one context per segment (reconstruct mode:
the segment's own code). A top code LM reads the top code stream (DESIGN §5).

Shape letters: B batch, T tokens of the current level (bytes at level 0), S segments, D width,
V vocab of the current level, L levels.
"""

from __future__ import annotations

import difflib
import inspect
import os
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init

from .cache import HierAECache
from .code_lm import CodeLM
from .configuration_hier_ae import HierAEConfig
from .kv_cache import KVStore
from .level import HierLevel, entropy_bits, fp32_region
from .outputs import (
    HierAECausalLMOutput,
    HierAEDecoderOutput,
    HierAEEncoderOutput,
    HierAEOutput,
    HierAEPredictOutput,
)
from .pooling import LearnedQueryPooling
from .quantizer import VectorQuantizer
from .segmentation import (
    closed_segments,
    decoder_offsets,
    frame_upper_stream,
    last_real,
    segment_closes,
    segment_last_tokens,
    shift_in_begin,
)
from .streaming import StreamState, open_level_stream
from .transformer import positions_from_mask
from .validation import check_codes, check_input_ids, check_labels

# Keywords that transformers (generate, Trainer, pipelines) or lm-eval may pass to any model's
# forward. `HierAEModel.forward` has no use for them and ignores them; any other unknown keyword is a
# mistake (a misspelt `reconstruct_levels=` would silently train every level) and raises.
HF_IGNORED_FORWARD_KWARGS = frozenset(
    {
        "output_attentions",
        "output_hidden_states",
        "use_cache",
        "cache",
        "past_key_values",
        "labels",
        "position_ids",
        "cache_position",
        "logits_to_keep",
        "token_type_ids",
        "num_items_in_batch",
        "return_loss",
    }
)


def check_forward_kwargs(fn, kwargs: dict) -> None:
    """Raise `TypeError` naming the keywords of `kwargs` that neither `fn` nor HF conventions know."""
    unknown = sorted(set(kwargs) - HF_IGNORED_FORWARD_KWARGS)
    if not unknown:
        return
    params = inspect.signature(fn).parameters
    allowed = [n for n, p in params.items() if n != "self" and p.kind is not p.VAR_KEYWORD]
    hints = {u: difflib.get_close_matches(u, allowed, n=1) for u in unknown}
    hint = "".join(f" Did you mean {m[0]!r} for {u!r}?" for u, m in hints.items() if m)
    raise TypeError(
        f"{fn.__qualname__}() got unexpected keyword argument(s) {unknown}.{hint} Allowed: {allowed}; "
        f"ignored (passed by transformers): {sorted(HF_IGNORED_FORWARD_KWARGS)}."
    )


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean CE (nats) of `logits (B, T, V)` against `targets (B, T)` over `mask (B, T)`; 0 if empty."""
    if not mask.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[mask].float(), targets[mask])


def first_real(valid: torch.Tensor) -> torch.Tensor:
    """Index of each row's first real token (B,). valid = [0 0 1 1] -> 2."""
    return valid.long().argmax(dim=1)


def compact_codes(tokens: torch.Tensor, valid: torch.Tensor, num_codes: int):
    """Drop framing specials and padding from a level's token stream: the codes of the level below.

    tokens = [bos, 7, 3, eos, 9] (num_codes = 10) -> codes [7, 3, 9], mask [1, 1, 1]. (B, T) -> (B, S)
    """
    B, T = tokens.shape
    is_code = valid & (tokens < num_codes)  # (B, T)
    t = torch.arange(T, device=tokens.device).expand(B, T)
    order = torch.where(is_code, t, t + T).argsort(dim=1)  # codes first, in order
    n = is_code.sum(dim=1)  # (B,)
    S = max(int(n.max().item()), 1)
    codes = tokens.gather(1, order)[:, :S]  # (B, S)
    mask = torch.arange(S, device=tokens.device)[None, :] < n[:, None]  # (B, S)
    return torch.where(mask, codes, torch.zeros_like(codes)), mask


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
            if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
                raise FileNotFoundError(
                    f"{path} has no config.json: a hier_ae model folder holds config.json and "
                    "model.safetensors (save_pretrained). A training-state folder (checkpoints/step-*) "
                    "is not a model folder; use the stages/ or model/ folder of the run."
                )
            if not os.path.exists(path) and (os.path.isabs(path) or path.startswith(("./", "../", "~"))):
                raise FileNotFoundError(
                    f"{path} does not exist: expected a model folder or a Hub id 'owner/name'."
                )
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as e:
            where = os.path.join(path, "model.safetensors") if path and os.path.isdir(path) else path
            raise OSError(
                f"could not read the weights {where!r}: {e}. The file is truncated or corrupt (an "
                "interrupted download, copy or save): download it again (from_pretrained(..., "
                "force_download=True) for a Hub model) or save the model again with save_pretrained."
            ) from e

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
        elif isinstance(module, LearnedQueryPooling):
            init.zeros_(module.query)  # uniform attention (mean pooling) at the start
        elif isinstance(module, HierLevel):
            init.constant_(
                module.boundary_value,
                module.cfg.threshold if module.cfg.boundary_mode == "threshold" else module.cfg.delta,
            )
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
        self.top_lm = CodeLM(views[-1].vocab_size, config.top_lm_config)
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

    def _next_level_stream(self, level: HierLevel, tokens, valid, layout, codes, closed=None):
        """Frame the codes of `level` as the token stream of the level above (DESIGN §2).

        `closed (B, S)` keeps only completed segments (predict mode); see `frame_upper_stream`.
        """
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        f = first_real(valid)
        starts_with_bos = valid[rows, f] & (tokens[rows, f] == level.vocab.bos_id)  # (B,)
        ends_with_eos = layout.seg_mask & (
            segment_last_tokens(tokens, layout) == level.vocab.eos_id
        )  # (B, S)
        n = level.cfg.num_codes
        return frame_upper_stream(
            codes, layout.seg_mask, starts_with_bos, ends_with_eos, n, n + 1, n + 2, closed=closed
        )

    def apply_quantizer_updates(self) -> list[dict]:
        """Apply the EMA statistics gathered since the last call; call once per optimizer step."""
        return [
            level.quantizer.apply_ema_update() if not level.codebook_frozen else {} for level in self.levels
        ]

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
        (with the reconstruct terms), for training stages that go through `forward`.

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
            return self.predict(input_ids, attention_mask, with_reconstruct=True)
        if mode != "autoencode":
            raise ValueError(f"mode={mode!r} is invalid: 'autoencode' or 'predict'.")
        if not 0 <= start_level <= self.num_levels:
            raise ValueError(f"start_level={start_level} is invalid: must be in [0, {self.num_levels}].")
        vocab = self.config.level_views()[start_level].vocab_size
        ids, valid = check_input_ids(input_ids, attention_mask, self.config.max_input_bytes, vocab)
        n_run = self.num_levels if num_levels is None else num_levels
        if not max(1, start_level) <= n_run <= self.num_levels:
            raise ValueError(
                f"num_levels={num_levels} is invalid: must be in [{max(1, start_level)}, {self.num_levels}]."
            )
        recon = set(range(start_level, n_run) if reconstruct_levels is None else reconstruct_levels)
        if not recon <= set(range(start_level, n_run)):
            raise ValueError(
                f"reconstruct_levels={sorted(recon)} must be a subset of the run levels "
                f"{start_level}..{n_run - 1}."
            )
        top = (n_run == self.num_levels) if run_top_lm is None else run_top_lm
        if top and n_run != self.num_levels:
            raise ValueError("run_top_lm=True needs every level to run (num_levels=None).")
        w = {
            "entropy": self.config.entropy_loss_weight,
            "reconstruct": self.config.reconstruct_loss_weight,
            "commitment": self.config.commitment_loss_weight,
            "top_lm": self.config.top_lm_loss_weight,
        }
        if loss_weights:
            unknown = set(loss_weights) - set(w)
            if unknown:
                raise ValueError(f"loss_weights has unknown keys {sorted(unknown)}; allowed: {sorted(w)}.")
            w.update(loss_weights)

        tokens = ids
        ent_losses, rec_losses, com_losses, tps, ppl, dead = [], [], [], [], [], []
        all_codes, all_cmask, all_seg, all_tok, all_valid, all_H, all_rec = [], [], [], [], [], [], []
        for _ in range(start_level):  # levels below the stored codes do not run
            zero = torch.zeros((), device=ids.device)
            for terms in (ent_losses, rec_losses, com_losses, tps, ppl, dead):
                terms.append(zero)
        for li in range(start_level, n_run):
            level = self.levels[li]
            T = tokens.shape[1]
            positions = positions_from_mask(valid)  # (B, T)
            ent_logits, H, layout, fires = level.segment(tokens, valid, positions)
            pair = valid[:, 1:] & valid[:, :-1]  # (B, T-1) next-token pairs inside the row
            ent_losses.append(masked_cross_entropy(ent_logits[:, :-1], tokens[:, 1:], pair))
            tps.append(valid.sum().float() / layout.seg_mask.sum().clamp(min=1).float())
            all_seg.append(layout.seg_id)
            all_tok.append(tokens)
            all_valid.append(valid)
            all_H.append(H)
            all_cmask.append(layout.seg_mask)
            if li not in recon and li == n_run - 1 and not top:
                zero = H.new_zeros(())
                com_losses.append(zero)
                rec_losses.append(zero)
                ppl.append(zero)
                dead.append(zero)
                continue
            q = level.encode_segments(tokens, valid, positions, layout)
            com_losses.append(q.commitment)
            ppl.append(q.usage_perplexity.float())
            dead.append(q.dead_codes.float())
            all_codes.append(q.codes)
            if li in recon:
                # reconstruct mode: the decoder reads the segment's own (straight-through) code
                inp, inp_valid = shift_in_begin(tokens, valid, level.decoder.begin_id, level.vocab.pad_id)
                ctx = level.decoder_context(q.z, layout.seg_id)  # (B, T+1, D)
                offsets = decoder_offsets(layout, fires, valid, level.cfg.max_segment_len)  # (B, T+1)
                dec_logits, _ = level.decoder(
                    inp, inp_valid, positions_from_mask(inp_valid), ctx, offsets=offsets
                )
                rec_logits = dec_logits[:, :T]  # (B, T, V): output i predicts tokens[i]
                rec_losses.append(masked_cross_entropy(rec_logits, tokens, valid))
                all_rec.append(rec_logits)
            else:
                rec_losses.append(H.new_zeros(()))
            up = self._next_level_stream(level, tokens, valid, layout, q.codes.detach())
            tokens, valid = up.tokens, up.valid

        top_loss = ids.new_zeros((), dtype=torch.float32)
        if top:
            top_pad = self.config.level_views()[-1].pad_id
            inp, inp_valid = shift_in_begin(tokens, valid, self.top_lm.begin_id, top_pad)
            top_logits, _ = self.top_lm(inp, inp_valid, positions_from_mask(inp_valid))
            top_loss = masked_cross_entropy(top_logits[:, : tokens.shape[1]], tokens, valid)

        ent, rec, com = torch.stack(ent_losses), torch.stack(rec_losses), torch.stack(com_losses)
        loss = w["entropy"] * ent.sum() + w["reconstruct"] * rec.sum() + w["commitment"] * com.sum()
        if top:
            loss = loss + w["top_lm"] * top_loss
        return HierAEOutput(
            loss=loss,
            entropy_loss=ent,
            reconstruct_loss=rec,
            commitment_loss=com,
            top_lm_loss=top_loss,
            codes=tuple(all_codes),
            code_mask=tuple(all_cmask),
            segment_ids=tuple(all_seg),
            level_tokens=tuple(all_tok),
            level_mask=tuple(all_valid),
            entropy=tuple(all_H),
            reconstruct_logits=tuple(all_rec),
            tokens_per_segment=torch.stack(tps),
            usage_perplexity=torch.stack(ppl),
            dead_codes=torch.stack(dead),
        )

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
        stream = [] if return_stream else None  # per level: the prefill of a StreamState
        # bottom up: segments, codes of completed segments, the stream of the level above
        per_level = []
        rec_losses, com_losses = [], []
        tokens, v = ids, valid
        for level in self.levels:
            positions = positions_from_mask(v)
            kv_ent, kv_enc = ([], []) if return_stream else (None, None)
            _, H, layout, fires = level.segment(tokens, v, positions, kv_out=kv_ent)
            q, h = level.encode_segments(tokens, v, positions, layout, kv_out=kv_enc, return_states=True)
            if with_reconstruct:
                inp, inp_valid = shift_in_begin(tokens, v, level.decoder.begin_id, level.vocab.pad_id)
                ctx = level.decoder_context(q.z, layout.seg_id)  # (B, T+1, D)
                offsets = decoder_offsets(layout, fires, v, level.cfg.max_segment_len)  # (B, T+1)
                rec_logits, _ = level.decoder(
                    inp, inp_valid, positions_from_mask(inp_valid), ctx, offsets=offsets
                )
                rec_losses.append(masked_cross_entropy(rec_logits[:, : tokens.shape[1]], tokens, v))
                com_losses.append(q.commitment)
            closed = closed_segments(layout, fires, v, level.cfg.max_segment_len)
            up = self._next_level_stream(level, tokens, v, layout, q.codes.detach(), closed=closed)
            per_level.append((tokens, v, layout, up, fires))
            if return_stream:
                stream.append(open_level_stream(level, v, layout, fires, H, h, kv_ent, kv_enc))
            tokens, v = up.tokens, up.valid
        # the top LM over the completed top codes
        top_pad = self.config.level_views()[-1].pad_id
        inp, inp_valid = shift_in_begin(tokens, v, self.top_lm.begin_id, top_pad)
        kv_top = [] if return_stream else None
        top_valid = inp_valid
        top_logits, upper_h = self.top_lm(inp, inp_valid, positions_from_mask(inp_valid), kv_out=kv_top)
        top_loss = masked_cross_entropy(top_logits[:, : tokens.shape[1]], tokens, v)
        upper_n = v.sum(dim=1)  # (B,) index of the next code in the upper stream
        # top down: contexts from the level above, decoders in predict mode
        losses = [None] * self.num_levels
        rows = torch.arange(ids.shape[0], device=ids.device)
        for li in reversed(range(self.num_levels)):
            level = self.levels[li]
            tokens, v, layout, up, fires = per_level[li]
            ctx = self._predict_context(level, upper_h, upper_n, up.seg_pos, layout, v)  # (B, T+1, D)
            if zero_context and li == 0:
                ctx = torch.zeros_like(ctx)
            inp, inp_valid = shift_in_begin(tokens, v, level.decoder.begin_id, level.vocab.pad_id)
            kv_dec = [] if return_stream else None
            offsets = decoder_offsets(layout, fires, v, level.cfg.max_segment_len)  # (B, T+1)
            dec_logits, dec_h = level.decoder(
                inp, inp_valid, positions_from_mask(inp_valid), ctx, kv_out=kv_dec, offsets=offsets
            )
            losses[li] = masked_cross_entropy(dec_logits[:, : tokens.shape[1]], tokens, v)
            if return_stream:
                nxt = level.context_proj(upper_h[rows, upper_n].to(level.context_proj.weight.dtype))  # (B, D)
                stream[li].decoder = KVStore(kv_dec, inp_valid)
                stream[li].context = nxt
            upper_h, upper_n = dec_h, v.sum(dim=1)
        return HierAEPredictOutput(
            logits=dec_logits[:, 1:],  # (B, T, 259): output t + 1 reads x[t], predicts x[t + 1]
            predict_loss=torch.stack(losses),
            top_lm_loss=top_loss,
            reconstruct_loss=torch.stack(rec_losses) if with_reconstruct else None,
            commitment_loss=torch.stack(com_losses) if with_reconstruct else None,
            tokens_per_segment=torch.stack(
                [lv[1].sum().float() / lv[2].seg_mask.sum().clamp(min=1).float() for lv in per_level]
            ),
            stream=StreamState(levels=stream, top=KVStore(kv_top, top_valid)) if return_stream else None,
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

    def _level_step(self, state: StreamState, li: int, rows: torch.Tensor, toks: torch.Tensor):
        """Level `li` reads one token for each row in `rows`: boundary rule, encoder, and when the
        rule fires, pooling + quantiser, the code goes up and the level above returns the next
        segment's context. Then the decoder predicts the token after. Returns logits, hidden."""
        level, st = self.levels[li], state.levels[li]
        L = level.cfg.max_segment_len
        seg_len = torch.where(st.pending_new[rows], torch.zeros_like(st.seg_len[rows]), st.seg_len[rows])
        with fp32_region(toks.device):
            h = level.encoder.step(toks, st.encoder, rows)  # (B', D)
            st.open_states[rows, seg_len] = h
            seg_len = seg_len + 1
            H = entropy_bits(level.entropy_model.step(toks, st.entropy, rows)[:, None])  # (B', 1)
        fires = level.rule(H, toks[:, None], prev_entropy=st.prev_H[rows])[:, 0]  # (B',)
        fires = segment_closes(fires, seg_len, L)  # (B',) the open segment closes after this token
        st.prev_H[rows], st.seg_len[rows], st.pending_new[rows] = H[:, 0], seg_len, fires
        if bool(fires.any()):
            closing = rows[fires]
            with fp32_region(toks.device):
                slots = torch.arange(L, device=toks.device)[None, :] < seg_len[fires][:, None]  # (B'', L)
                pooled = level.pooling(st.open_states[closing][:, None], slots[:, None])  # (B'', 1, D)
                codes = level.quantizer(pooled, torch.ones_like(slots[:, :1])).codes[:, 0]  # (B'',)
            g = self._upper_step(state, li + 1, closing, codes)
            eos = toks[fires] == level.vocab.eos_id
            if bool(eos.any()):  # EOS closes its segment at every level: the upper EOS follows
                n = level.cfg.num_codes
                g[eos] = self._upper_step(state, li + 1, closing[eos], torch.full_like(codes[eos], n + 1))
            st.context[closing] = level.context_proj(g.to(level.context_proj.weight.dtype)).to(
                st.context.dtype
            )
        offsets = torch.where(fires, torch.zeros_like(seg_len), seg_len)  # (B',) of the next token
        return level.decoder.step(toks, st.context[rows], st.decoder, rows, offsets=offsets)

    def _upper_step(self, state: StreamState, ui: int, rows: torch.Tensor, toks: torch.Tensor):
        """The level above (or the top LM) reads one code per row; its hidden state is g_next."""
        if ui == self.num_levels:
            return self.top_lm.step(toks, state.top, rows)[1]
        return self._level_step(state, ui, rows, toks)[1]

    @staticmethod
    def _predict_context(level: HierLevel, upper_h, upper_n, seg_pos, layout, valid):
        """Per-position predict-mode contexts for the decoder input [BEGIN, x] (T + 1 positions).

        Segment s reads upper_h[seg_pos[s]]; the position after the last real token reads
        upper_h[upper_n], the next code's slot (the open segment's, or a new one if the rule fired).
        upper_h (B, Tu+1, Du), upper_n (B,), seg_pos (B, S) -> (B, T+1, D).
        """
        B, Du = upper_h.shape[0], upper_h.shape[-1]
        seg_ctx = upper_h.gather(1, seg_pos[..., None].expand(B, seg_pos.shape[1], Du))  # (B, S, Du)
        seg_ctx = level.context_proj(seg_ctx.to(level.context_proj.weight.dtype))  # (B, S, D)
        nxt = level.context_proj(upper_h[torch.arange(B, device=upper_h.device), upper_n])  # (B, D)
        ctx = level.decoder_context(seg_ctx, layout.seg_id)  # (B, T+1, D); position T is zeros
        rows = torch.arange(B, device=valid.device)
        ctx[rows, last_real(valid) + 1] = nxt.to(ctx.dtype)
        return ctx

    # ---- encode ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> HierAEEncoderOutput:
        """Bytes -> the codes of every level. `top_codes`/`top_mask` are all that `decode` needs."""
        ids, valid = check_input_ids(input_ids, attention_mask, self.config.max_input_bytes)
        tokens = ids
        codes, cmask, seg, toks, valids, Hs = [], [], [], [], [], []
        with self._inference():
            for level in self.levels:
                positions = positions_from_mask(valid)
                _, H, layout, _ = level.segment(tokens, valid, positions)
                q = level.encode_segments(tokens, valid, positions, layout)
                codes.append(q.codes)
                cmask.append(layout.seg_mask)
                seg.append(layout.seg_id)
                toks.append(tokens)
                valids.append(valid)
                Hs.append(H)
                up = self._next_level_stream(level, tokens, valid, layout, q.codes)
                tokens, valid = up.tokens, up.valid
        return HierAEEncoderOutput(
            top_codes=codes[-1],
            top_mask=cmask[-1],
            codes=tuple(codes),
            code_mask=tuple(cmask),
            segment_ids=tuple(seg),
            level_tokens=tuple(toks),
            level_mask=tuple(valids),
            entropy=tuple(Hs),
        )

    # ---- decode ----------------------------------------------------------------------------
    @torch.no_grad()
    def decode(
        self, top_codes: torch.Tensor, mask: torch.Tensor | None = None, level: int | None = None
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
        """
        start = self.num_levels - 1 if level is None else level
        if not isinstance(start, int) or not 0 <= start < self.num_levels:
            raise ValueError(f"level={level!r} is invalid: an int in [0, {self.num_levels}) or None (top).")
        codes, seg_mask = check_codes(top_codes, mask, self.levels[start].cfg.num_codes)
        streams = []
        with self._inference():
            for li in reversed(range(start + 1)):
                lv = self.levels[li]
                ctx = lv.quantizer.lookup(codes)  # (B, S, D)
                tokens, valid, _ = self._regenerate_level(lv, ctx, seg_mask)
                streams.append(tokens)
                if li > 0:
                    codes, seg_mask = compact_codes(tokens, valid, self.levels[li - 1].cfg.num_codes)
        return HierAEDecoderOutput(
            sequences=tokens, attention_mask=valid.long(), level_tokens=tuple(reversed(streams))
        )

    def _regenerate_level(self, level: HierLevel, ctx: torch.Tensor, seg_mask: torch.Tensor):
        """Greedy reconstruct-mode generation of one level from one context per segment, streamed.

        ctx (B, S, D), seg_mask (B, S) -> tokens (B, n), valid (B, n), seg_id (B, n) (the segment of
        each token, -1 on padding: the boundaries the rule drew). Walk-through for one row with
        two segments, max_segment_len 4: step 0 reads [BEGIN] with ctx[0] and emits x0; the entropy
        model reads x0 and the rule fires on H[0], so step 1 reads x0 with ctx[1] and emits x1; ...
        the row stops after its 2nd segment closes (or at its EOS, or at the cap S * max_segment_len).

        Each step feeds exactly one new position per live row to the decoder and to the entropy model,
        through their windowed KV caches (`KVStore`, as in `stream_step`): O(W) per token, not O(n).
        Step 0 fills the caches with a one-position whole-row forward (so they take the dtype the
        modules compute in); a finished row leaves the batch and gets padding from then on. The
        entropy model runs in `fp32_region`, as in `level.segment`, so decode's boundaries are
        encode's even under bf16 autocast (DESIGN §3, precision).
        """
        B, S, _ = ctx.shape
        dev = ctx.device
        L = level.cfg.max_segment_len
        pad, eos = level.vocab.pad_id, level.vocab.eos_id
        n_seg = seg_mask.sum(dim=1)  # (B,)
        tokens = torch.full((B, S * L), pad, dtype=torch.long, device=dev)  # (B, S*L) hard cap
        valid = torch.zeros(B, S * L, dtype=torch.bool, device=dev)  # (B, S*L)
        seg_id = torch.full((B, S * L), -1, dtype=torch.long, device=dev)  # (B, S*L)
        seg = torch.zeros(B, dtype=torch.long, device=dev)  # (B,) segment of the next token
        seg_len = torch.zeros(B, dtype=torch.long, device=dev)  # (B,) tokens in the open segment
        prev_H = torch.zeros(B, dtype=torch.float32, device=dev)  # (B,) H of the row's last token
        done = n_seg == 0  # (B,)
        rows = torch.arange(B, device=dev)  # (B',) the rows that step: every row at step 0
        one = torch.ones(B, 1, dtype=torch.bool, device=dev)  # (B, 1)
        zero_pos = torch.zeros(B, 1, dtype=torch.long, device=dev)  # (B, 1)
        n_steps = 0
        for n in range(S * L):
            n_steps = n + 1
            # the decoder reads one token (BEGIN at step 0) with the context of the token to predict
            cur = ctx[rows, seg[rows].clamp(max=S - 1)]  # (B', D)
            if n == 0:
                begin = torch.full((B, 1), level.decoder.begin_id, dtype=torch.long, device=dev)
                kv_dec = []
                logits = level.decoder(begin, one, zero_pos, cur[:, None], kv_out=kv_dec, offsets=zero_pos)[0]
                logits = logits[:, 0]  # (B, V)
                dec_cache = KVStore(kv_dec, one)
            else:
                # the token to predict sits at offset seg_len in its segment
                logits = level.decoder.step(tokens[rows, n - 1], cur, dec_cache, rows, offsets=seg_len[rows])[
                    0
                ]
            nxt = logits.argmax(dim=-1)  # (B',)
            nxt = torch.where(done[rows], torch.full_like(nxt, pad), nxt)
            tokens[rows, n] = nxt
            valid[rows, n] = ~done[rows]
            seg_id[rows, n] = torch.where(done[rows], -1, seg[rows])
            # the boundary rule on the regenerated token, with the entropy model as encode runs it
            with fp32_region(dev):
                if n == 0:
                    kv_ent = []
                    ent_logits = level.entropy_model(nxt[:, None], one, zero_pos, kv_out=kv_ent)  # (B, 1, V)
                    ent_logits = ent_logits[:, 0]  # (B, V)
                    ent_cache = KVStore(kv_ent, one)
                else:
                    ent_logits = level.entropy_model.step(nxt, ent_cache, rows)  # (B', V)
                H = entropy_bits(ent_logits[:, None])  # (B', 1)
            fires = level.rule(H, nxt[:, None], prev_entropy=None if n == 0 else prev_H[rows])[:, 0]  # (B',)
            r_len = seg_len[rows] + 1  # (B',)
            new_seg = segment_closes(fires, r_len, L)  # (B',)
            r_seg = seg[rows] + new_seg.long()  # (B',)
            seg[rows] = r_seg
            seg_len[rows] = torch.where(new_seg, torch.zeros_like(r_len), r_len)
            prev_H[rows] = H[:, 0]
            done[rows] = done[rows] | (nxt == eos) | (r_seg >= n_seg[rows])
            if bool(done.all()):
                break
            rows = (~done).nonzero()[:, 0]  # (B',) rows still generating
        return tokens[:, :n_steps], valid[:, :n_steps], seg_id[:, :n_steps]


# transformers 5.24 renamed the output field `past_key_values` to `cache` (the old name still works,
# with a deprecation warning on every call); fill whichever field this version's output class has
_CACHE_FIELD = "cache" if "cache" in HierAECausalLMOutput.__dataclass_fields__ else "past_key_values"


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
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            empty = (~mask.bool().any(dim=1)).nonzero().flatten().tolist()
            if empty:
                raise ValueError(
                    f"prompt rows {empty} have no real token (attention_mask all 0): generation needs at "
                    "least one prompt token per row; start an empty prompt with <s> (id 2)."
                )
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
        if cache is not None and past_key_values is not None and cache is not past_key_values:
            raise ValueError("give the generation cache as `cache` or `past_key_values`, not both.")
        past_key_values = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if past_key_values is not None and not isinstance(past_key_values, HierAECache):
            raise ValueError(
                f"cache / past_key_values must be a HierAECache, got {type(past_key_values).__name__}."
            )
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
            if zero_context:
                raise ValueError("zero_context is an evaluation switch; it cannot be combined with a cache.")
            if attention_mask is not None and not bool(attention_mask[:, -input_ids.shape[1] :].all()):
                raise ValueError("tokens fed to a cache must be real tokens (attention_mask 1).")
            check_input_ids(input_ids, None, self.config.max_input_bytes)
            if cache.seen + input_ids.shape[1] > self.config.max_input_bytes:
                raise ValueError(
                    f"generation would feed the model {cache.seen + input_ids.shape[1]} ids, over "
                    f"max_input_bytes={self.config.max_input_bytes}; a prompt of P ids allows at most "
                    "max_input_bytes - P + 1 new tokens: lower max_new_tokens or shorten the prompt."
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
            **{_CACHE_FIELD: cache},
            **extra,
        )


__all__ = ["HierAEPreTrainedModel", "HierAEModel", "HierAEForCausalLM"]
