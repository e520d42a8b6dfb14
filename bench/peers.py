"""The peers of the benchmark, built at a parameter count matched to hier_ae's.

Every module counts (DESIGN §3, issue #10): hier_ae's count is its parameters plus its codebooks
(EMA-moved buffers that are learned state; the EMA accumulators, restart pools and counters are
training state and do not count); BLT's count includes its entropy model (the patcher) and its hash
embeddings. Shapes are chosen by a small grid search for the count nearest the target; the tests
check the chosen count lands within 5%.

Byte ids are hier_ae's for all models (vocab 259: 0 pad, 1 eos, 2 bos, byte b -> b + 3).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BltConfig, BltForCausalLM, LlamaConfig, LlamaForCausalLM

from hier_ae.configuration_hier_ae import BOS_ID, BYTE_VOCAB_SIZE, EOS_ID, PAD_ID

HEAD_DIM = 32


def count_parameters(model) -> int:
    """Parameters, plus the buffers that are learned state (hier_ae's VQ codebooks)."""
    n = sum(p.numel() for p in model.parameters())
    n += sum(b.numel() for name, b in model.named_buffers() if name.endswith("quantizer.codebook"))
    return n


def check_match(name: str, n: int, target: int, tolerance: float) -> None:
    if abs(n / target - 1) > tolerance:
        raise ValueError(
            f"no {name} shape in the grid comes within {tolerance:.0%} of {target:,} parameters "
            f"(nearest: {n:,}); widen the grid or change the fixed parts."
        )


def count_on_meta(build) -> int:
    with torch.device("meta"):
        return count_parameters(build())


def nearest_size(name: str, target: int, make_config, model_class, widths, depths, tolerance: float):
    """(config, count) of the (width, depth) grid point whose parameter count is nearest `target`
    (models built on the meta device, so nothing is allocated); ValueError beyond `tolerance`."""
    best = None
    for hidden in widths:
        for layers in depths:
            cfg = make_config(hidden, layers)
            n = count_on_meta(lambda cfg=cfg: model_class(cfg))
            if best is None or abs(n - target) < abs(best[1] - target):
                best = (cfg, n)
    check_match(name, best[1], target, tolerance)
    return best


# ---- Llama -------------------------------------------------------------------------------------
def llama_config(hidden: int, layers: int, max_len: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=BYTE_VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=int(8 * hidden / 3) // 16 * 16,
        num_hidden_layers=layers,
        num_attention_heads=max(hidden // HEAD_DIM, 1),
        num_key_value_heads=max(hidden // HEAD_DIM, 1),
        max_position_embeddings=max_len,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        tie_word_embeddings=False,
    )


WIDTHS = tuple(range(64, 769, 32))


def llama_matched(
    target: int, max_len: int = 65536 + 512, widths=WIDTHS, depths=range(2, 13), tolerance: float = 0.05
) -> tuple[LlamaConfig, int]:
    """The (width, depth) with the count nearest `target`; 2 to 12 layers, widths in steps of 32."""
    return nearest_size(
        "Llama",
        target,
        lambda hidden, layers: llama_config(hidden, layers, max_len),
        LlamaForCausalLM,
        widths,
        depths,
        tolerance,
    )


def build_llama(cfg: LlamaConfig, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


# ---- BLT ---------------------------------------------------------------------------------------
def blt_config(
    global_hidden: int,
    global_layers: int,
    max_len: int,
    local_hidden: int = 96,
    encoder_layers: int = 1,
    decoder_layers: int = 2,
    patcher_layers: int = 2,
    hash_groups: tuple[int, ...] = (3, 4, 5),
    hash_vocab: int = 1024,
    window: int = 64,
    threshold: float = 1.335,
    max_patch_length: int = 8,
) -> BltConfig:
    """A small BLT: entropy patcher, 1-layer local encoder with hash n-gram embeddings, global
    transformer over patches, local decoder. The local parts mirror hier_ae small's level 0 (width
    96, window 64, a 2-layer entropy model, segments of at most 8 bytes); the global part is sized
    to match the parameter count."""
    heads = max(local_hidden // HEAD_DIM, 1)
    local = {"hidden_size": local_hidden, "num_attention_heads": heads, "intermediate_size": 256}
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    return BltConfig(
        vocab_size=BYTE_VOCAB_SIZE,
        max_position_embeddings=max_len,
        patch_in_forward=True,
        patch_size=4,
        patching_mode="entropy",
        patching_threshold=threshold,
        max_patch_length=max_patch_length,
        local_attention_window_len=window,
        cross_attn_k=2,
        encoder_hash_byte_group_size=list(hash_groups),
        encoder_hash_byte_group_vocab=hash_vocab,
        encoder_hash_byte_group_nb_functions=1,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        rope_parameters=rope,
        use_cache=False,  # BLT's cache needs a flat config in transformers 5.2x; time it uncached
        patcher_config={
            **local,
            "vocab_size": BYTE_VOCAB_SIZE,
            "num_hidden_layers": patcher_layers,
            "max_position_embeddings": max_len,
            "sliding_window": window,
            "rope_parameters": rope,
        },
        encoder_config={
            **local,
            "vocab_size": BYTE_VOCAB_SIZE,
            "num_hidden_layers": encoder_layers,
            "hidden_size_global": global_hidden,
            "max_position_embeddings": max_len,
            "rope_parameters": rope,
        },
        decoder_config={
            **local,
            "vocab_size": BYTE_VOCAB_SIZE,
            "num_hidden_layers": decoder_layers,
            "hidden_size_global": global_hidden,
            "max_position_embeddings": max_len,
            "rope_parameters": rope,
        },
        global_config={
            "hidden_size": global_hidden,
            "num_attention_heads": max(global_hidden // HEAD_DIM, 1),
            "num_hidden_layers": global_layers,
            "intermediate_size": int(8 * global_hidden / 3) // 16 * 16,
            "max_position_embeddings": max_len,
            "rope_parameters": rope,
        },
    )


def blt_matched(
    target: int,
    max_len: int = 65536 + 512,
    widths=WIDTHS,
    depths=range(1, 13),
    tolerance: float = 0.05,
    **kw,
) -> tuple[BltConfig, int]:
    """The global transformer's (width, depth) with the whole model's count nearest `target`."""
    return nearest_size(
        "BLT",
        target,
        lambda hidden, layers: blt_config(hidden, layers, max_len, **kw),
        BltForCausalLM,
        widths,
        depths,
        tolerance,
    )


def build_blt(cfg: BltConfig, seed: int = 0) -> BltForCausalLM:
    torch.manual_seed(seed)
    return BltForCausalLM(cfg)


def describe(cfg) -> str:
    """One line naming a peer's shape."""
    if isinstance(cfg, LlamaConfig):
        return (
            f"Llama: {cfg.num_hidden_layers} layers x {cfg.hidden_size} wide "
            f"(MLP {cfg.intermediate_size}, {cfg.num_attention_heads} heads)"
        )
    g, e, d, p = cfg.global_config, cfg.encoder_config, cfg.decoder_config, cfg.patcher_config
    return (
        f"BLT: patcher {p.num_hidden_layers} x {p.hidden_size}, local encoder {e.num_hidden_layers} x "
        f"{e.hidden_size} + hash n-grams {cfg.encoder_hash_byte_group_size} x "
        f"{cfg.encoder_hash_byte_group_vocab}, global {g.num_hidden_layers} x {g.hidden_size}, "
        f"local decoder {d.num_hidden_layers} x {d.hidden_size}, window {cfg.local_attention_window_len}"
    )


def config_label(path: str | Path) -> str:
    """hier_ae's config as the report names it: relative to the repository when it is inside it."""
    repo = Path(__file__).resolve().parents[1]
    try:
        return str(Path(path).resolve().relative_to(repo))
    except ValueError:
        return str(path)
