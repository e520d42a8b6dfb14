"""Checks of user inputs: every mistake raises a `ValueError` that says what was wrong and what is allowed."""

from __future__ import annotations

import difflib
import inspect
import os

import torch

from .configuration_hier_ae import BOS_ID, BYTE_OFFSET, BYTE_VOCAB_SIZE, EOS_ID, PAD_ID


def check_input_ids(
    input_ids, attention_mask, max_input_bytes: int, vocab_size: int = BYTE_VOCAB_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate `input_ids (B, T)` and an optional `attention_mask (B, T)`; return (ids long, mask bool)."""
    if not isinstance(input_ids, torch.Tensor):
        raise ValueError(
            f"input_ids must be a torch.Tensor of shape (batch, length), got {type(input_ids).__name__}; "
            "use the tokenizer with return_tensors='pt'."
        )
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer ids, got dtype {input_ids.dtype}.")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (batch, length), got shape {tuple(input_ids.shape)}.")
    B, T = input_ids.shape
    if B == 0 or T == 0:
        raise ValueError(
            f"input_ids is empty (shape {tuple(input_ids.shape)}): at least one token is needed."
        )
    if T > max_input_bytes:
        raise ValueError(
            f"input length {T} exceeds max_input_bytes={max_input_bytes}; "
            f"split the text into chunks of at most {max_input_bytes} bytes."
        )
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(
            f"input_ids must be in [0, {vocab_size}) (pad {PAD_ID}, eos {EOS_ID}, bos {BOS_ID}, byte b -> "
            f"b+{BYTE_OFFSET}); got [{lo}, {hi}]."
        )
    if attention_mask is None:
        mask = torch.ones_like(input_ids, dtype=torch.bool)
    else:
        if not isinstance(attention_mask, torch.Tensor):
            raise ValueError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}.")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids shape "
                f"{tuple(input_ids.shape)}; both must be (batch, length)."
            )
        if ((attention_mask != 0) & (attention_mask != 1)).any():
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token).")
        mask = attention_mask.bool()
        if not mask.any():
            raise ValueError("attention_mask masks every token: at least one real token is needed.")
    return input_ids.long(), mask


def check_labels(labels, shape: tuple[int, int], vocab_size: int = BYTE_VOCAB_SIZE) -> None:
    """Validate causal-LM `labels (B, T)`: the input ids' shape, ids in [0, vocab_size) or -100 (ignored)."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a torch.Tensor of shape {shape}, got {type(labels).__name__}.")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integer ids, got dtype {labels.dtype}.")
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"labels shape {tuple(labels.shape)} must equal the input_ids shape {tuple(shape)}.")
    bad = (labels != -100) & ((labels < 0) | (labels >= vocab_size))
    if bad.any():
        raise ValueError(
            f"labels must be ids in [0, {vocab_size}) or -100 (ignored); got {int(labels[bad][0])}."
        )


def check_codes(codes, mask, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate top-level `codes (B, S)` in [0, num_codes) and an optional `mask (B, S)`."""
    if not isinstance(codes, torch.Tensor):
        raise ValueError(
            f"codes must be a torch.Tensor of shape (batch, segments), got {type(codes).__name__}."
        )
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise ValueError(f"codes must hold integer ids, got dtype {codes.dtype}.")
    if codes.dim() != 2 or codes.numel() == 0:
        raise ValueError(f"codes must have a non-empty shape (batch, segments), got {tuple(codes.shape)}.")
    if mask is None:
        mask = torch.ones_like(codes, dtype=torch.bool)
    elif not isinstance(mask, torch.Tensor) or mask.shape != codes.shape:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a tensor of the codes' shape {tuple(codes.shape)}, got {shape}.")
    elif ((mask != 0) & (mask != 1)).any():
        raise ValueError("mask must hold only 0 (padded segment) and 1 (real code).")
    mask = mask.bool()
    real = codes[mask]
    if real.numel() and (int(real.min()) < 0 or int(real.max()) >= num_codes):
        raise ValueError(
            f"codes must be in [0, {num_codes}) (codebook size ** depth of the level decoded); "
            f"got [{int(real.min())}, {int(real.max())}]."
        )
    return torch.where(mask, codes.long(), torch.zeros_like(codes, dtype=torch.long)), mask


def check_escape_codes(
    escapes, codes: torch.Tensor, mask: torch.Tensor, level_cfg, next_code
) -> torch.Tensor:
    """Validate `decode`'s `escape_codes (B, S)`: the codes' shape, ids in [-1, n) of a level with an
    escape codebook (-1 = not escaped; n = `num_escape_ids`: K_e, or K_e + K_e**2 with two-digit ids),
    read with the whole codes. Padded segments get -1."""
    K_e = level_cfg.escape_codebook_size
    if not K_e:
        raise ValueError(
            "escape_codes were given, but the level decoded has no escape codebook "
            "(its escape_codebook_size is 0); leave escape_codes None."
        )
    if next_code is not None:
        raise ValueError("escape_codes are read with the whole codes: give either escape_codes or next_code.")
    if not isinstance(escapes, torch.Tensor) or escapes.shape != codes.shape:
        shape = tuple(escapes.shape) if isinstance(escapes, torch.Tensor) else type(escapes).__name__
        raise ValueError(
            f"escape_codes must be a tensor of the codes' shape {tuple(codes.shape)}, got {shape}."
        )
    if escapes.dtype.is_floating_point or escapes.dtype.is_complex or escapes.dtype == torch.bool:
        raise ValueError(f"escape_codes must hold integer ids, got dtype {escapes.dtype}.")
    real = escapes[mask]
    n = level_cfg.num_escape_ids
    if real.numel() and (int(real.min()) < -1 or int(real.max()) >= n):
        what = "the escape codebook size" if n == K_e else f"K_e + K_e**2 two-digit ids, K_e = {K_e}"
        raise ValueError(
            f"escape_codes must be in [0, {n}) ({what}) or -1 (no escape); "
            f"got [{int(real.min())}, {int(real.max())}]."
        )
    return torch.where(mask, escapes.long(), torch.full_like(codes, -1))


def check_corrections(
    corrections, codes: torch.Tensor, mask: torch.Tensor, level, streamed: bool
) -> torch.Tensor:
    """Validate `decode`'s `corrections (B, S, max_segment_len)`: token ids of the level decoded in
    [0, vocab_size) or -1 (no correction), read with the whole codes and greedy choices (no
    `next_code`, no `pick`). Padded segments get -1."""
    if streamed:
        raise ValueError(
            "corrections replace decode's greedy choices with the whole codes: "
            "give either corrections or next_code / pick."
        )
    L, V = level.cfg.max_segment_len, level.vocab.vocab_size
    want = (*codes.shape, L)
    if not isinstance(corrections, torch.Tensor) or tuple(corrections.shape) != want:
        shape = (
            tuple(corrections.shape) if isinstance(corrections, torch.Tensor) else type(corrections).__name__
        )
        raise ValueError(
            f"corrections must be a tensor of shape (B, S, max_segment_len) = {want}, got {shape}."
        )
    if corrections.dtype.is_floating_point or corrections.dtype.is_complex or corrections.dtype == torch.bool:
        raise ValueError(f"corrections must hold integer token ids, got dtype {corrections.dtype}.")
    real = corrections[mask]
    if real.numel() and (int(real.min()) < -1 or int(real.max()) >= V):
        raise ValueError(
            f"corrections must be token ids in [0, {V}) (the level's vocab_size) or -1 (none); "
            f"got [{int(real.min())}, {int(real.max())}]."
        )
    return torch.where(mask[..., None], corrections.long(), torch.full_like(corrections.long(), -1))


def per_level(value, name: str, start: int, num_levels: int) -> list:
    """`decode`'s `escape_codes` / `corrections` as a list over levels 0..start: a tensor is the level
    decoded (`start`); a tuple or list has one entry per level, as `encode` gives them (None where a
    level has none), and the levels below `start` read theirs once the level above has decoded their
    codes. Example: start 1 of 2 levels, a tensor t -> [None, t]; (a, b) -> [a, b]; None -> [None, None]."""
    if value is None:
        return [None] * (start + 1)
    if isinstance(value, torch.Tensor):
        return [None] * start + [value]
    if isinstance(value, (tuple, list)):
        if len(value) != num_levels:
            raise ValueError(
                f"{name} as a tuple needs one entry per level ({num_levels}, as encode gives them), "
                f"got {len(value)}."
            )
        return list(value[: start + 1])
    raise ValueError(
        f"{name} must be a tensor (of the level decoded) or a tuple with one per level, "
        f"got {type(value).__name__}."
    )


def did_you_mean(name, allowed) -> str | None:
    """The allowed name nearest a misspelt `name` (difflib), or None: `did_you_mean("lr_rate", ["lr"])`."""
    near = difflib.get_close_matches(str(name), list(allowed), n=1)
    return near[0] if near else None


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
    hints = {u: did_you_mean(u, allowed) for u in unknown}
    hint = "".join(f" Did you mean {m!r} for {u!r}?" for u, m in hints.items() if m)
    raise TypeError(
        f"{fn.__qualname__}() got unexpected keyword argument(s) {unknown}.{hint} Allowed: {allowed}; "
        f"ignored (passed by transformers): {sorted(HF_IGNORED_FORWARD_KWARGS)}."
    )


def check_run_levels(total: int, start_level: int, num_levels, reconstruct_levels, run_top_lm):
    """`HierAEModel.forward`'s choice of levels -> (levels run, reconstructed levels, top LM runs)."""
    n_run = total if num_levels is None else num_levels
    if not max(1, start_level) <= n_run <= total:
        raise ValueError(f"num_levels={num_levels} is invalid: must be in [{max(1, start_level)}, {total}].")
    recon = set(range(start_level, n_run) if reconstruct_levels is None else reconstruct_levels)
    if not recon <= set(range(start_level, n_run)):
        raise ValueError(
            f"reconstruct_levels={sorted(recon)} must be a subset of the run levels "
            f"{start_level}..{n_run - 1}."
        )
    top = (n_run == total) if run_top_lm is None else run_top_lm
    if top and n_run != total:
        raise ValueError("run_top_lm=True needs every level to run (num_levels=None).")
    return n_run, recon, top


def check_loss_weights(config, overrides: dict[str, float] | None) -> dict[str, float]:
    """The loss weights of `HierAEModel.forward`: the config's (`entropy_loss_weight`, ...) with a
    call's `overrides` (keys entropy, reconstruct, commitment, top_lm)."""
    w = {
        "entropy": config.entropy_loss_weight,
        "reconstruct": config.reconstruct_loss_weight,
        "commitment": config.commitment_loss_weight,
        "top_lm": config.top_lm_loss_weight,
    }
    if overrides:
        unknown = set(overrides) - set(w)
        if unknown:
            raise ValueError(f"loss_weights has unknown keys {sorted(unknown)}; allowed: {sorted(w)}.")
        w.update(overrides)
    return w


def check_model_path(path: str) -> None:
    """`FileNotFoundError` for a local folder without config.json or a local path that does not exist
    (transformers would build a default config, or report a malformed Hub repo id)."""
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"{path} has no config.json: a hier_ae model folder holds config.json and "
            "model.safetensors (save_pretrained). A training-state folder (checkpoints/step-*) "
            "is not a model folder; use the stages/ or model/ folder of the run."
        )
    if not os.path.exists(path) and (os.path.isabs(path) or path.startswith(("./", "../", "~"))):
        raise FileNotFoundError(f"{path} does not exist: expected a model folder or a Hub id 'owner/name'.")


def corrupt_weights_error(path: str | None, error: Exception) -> OSError:
    """What `from_pretrained` raises for a truncated or corrupt `model.safetensors` (safetensors alone
    says only "incomplete metadata")."""
    where = os.path.join(path, "model.safetensors") if path and os.path.isdir(path) else path
    return OSError(
        f"could not read the weights {where!r}: {error}. The file is truncated or corrupt (an "
        "interrupted download, copy or save): download it again (from_pretrained(..., "
        "force_download=True) for a Hub model) or save the model again with save_pretrained."
    )


def check_prompt_rows(mask) -> None:
    """`generate`: every prompt row needs a real token (an all-0 attention_mask row has no state)."""
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        empty = (~mask.bool().any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"prompt rows {empty} have no real token (attention_mask all 0): generation needs at "
                f"least one prompt token per row; start an empty prompt with <s> (id {BOS_ID})."
            )


def check_generation_cache(cache, past_key_values, cache_class):
    """The generation cache, given as `cache` or `past_key_values` (not two different ones), or None."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("give the generation cache as `cache` or `past_key_values`, not both.")
    past_key_values = cache if cache is not None else past_key_values
    if past_key_values is not None and not isinstance(past_key_values, cache_class):
        raise ValueError(
            f"cache / past_key_values must be a HierAECache, got {type(past_key_values).__name__}."
        )
    return past_key_values


def check_stream_input(input_ids, attention_mask, seen: int, max_input_bytes: int, zero_context) -> None:
    """New tokens fed to a generation cache that has already read `seen` ids."""
    if zero_context:
        raise ValueError("zero_context is an evaluation switch; it cannot be combined with a cache.")
    if attention_mask is not None and not bool(attention_mask[:, -input_ids.shape[1] :].all()):
        raise ValueError("tokens fed to a cache must be real tokens (attention_mask 1).")
    check_input_ids(input_ids, None, max_input_bytes)
    if seen + input_ids.shape[1] > max_input_bytes:
        raise ValueError(
            f"generation would feed the model {seen + input_ids.shape[1]} ids, over "
            f"max_input_bytes={max_input_bytes}; a prompt of P ids allows at most "
            "max_input_bytes - P + 1 new tokens: lower max_new_tokens or shorten the prompt."
        )
