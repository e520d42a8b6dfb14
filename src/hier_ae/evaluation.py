"""Autoencoder evaluation: exact reconstruction rate and code sizes.

These are *reconstruction* figures (the decoder reads the codes of the text it regenerates): they
measure compression, never language modelling. Not part of the model's remote-code closure.
"""

from __future__ import annotations

import math

import torch

from .batching import EOS, frame_document, pad_rows


@torch.no_grad()
def reconstruction_report(model, docs: list[bytes], batch_size: int = 32) -> dict:
    """Encode each document as `<s>` + bytes + `</s>`, decode from the top-level codes only.

    A document is exact only if `decode` returns exactly its ids up to and including EOS.
    Returns the exact-match rate, tokens per segment per level, and code bits per byte:
    top-level codes x log2(K_top^R) / bytes, the fixed-length size of what `decode` needs.
    """
    model.eval()
    device = next(model.parameters()).device
    exact = n_bytes = 0
    segs = [0] * model.num_levels
    toks = [0] * model.num_levels
    for i in range(0, len(docs), batch_size):
        framed = [frame_document(d) for d in docs[i : i + batch_size]]
        ids, mask = pad_rows(framed)
        enc = model.encode(ids.to(device), mask.to(device))
        for lv in range(model.num_levels):
            segs[lv] += int(enc.code_mask[lv].sum())
            toks[lv] += int(enc.level_mask[lv].sum())
        top_codes, top_mask = enc.top_codes, enc.top_mask
        del enc  # decode must work from the top-level codes alone
        out = model.decode(top_codes, top_mask)
        for row, ref in enumerate(framed):
            got = out.sequences[row][out.attention_mask[row].bool()].cpu()
            if EOS in got.tolist():
                got = got[: got.tolist().index(EOS) + 1]
            exact += int(torch.equal(got, ref))
        n_bytes += sum(len(d) for d in docs[i : i + batch_size])
    code_bits = [math.log2(lv.cfg.num_codes) for lv in model.levels]
    return {
        "documents": len(docs),
        "exact_match": exact / max(len(docs), 1),
        "tokens_per_segment": [t / max(s, 1) for t, s in zip(toks, segs)],
        "bytes_per_code": [n_bytes / max(s, 1) for s in segs],
        "code_bits_per_byte": segs[-1] * code_bits[-1] / max(n_bytes, 1),
        "code_bits_per_byte_per_level": [s * b / max(n_bytes, 1) for s, b in zip(segs, code_bits)],
    }
