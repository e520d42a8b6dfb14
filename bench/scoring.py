"""One sliding-window scorer for every model: each validation byte is scored exactly once.

The validation text is one document, `f = [<s>] + bytes` (n bytes, n + 1 ids). Windows come from
`hier_ae.evaluation.reports.rolling_windows(n, L, L // 2)`: context = the training length L, stride L / 2.
A window feeds `f[lo:b]` and scores the targets `f[a + 1 : b + 1]`, the bytes the previous window
did not score, each with at least L / 2 bytes of context (the first window scores all of its own).

    n = 10, L = 4 -> windows (lo, a, b) = (0, 0, 2), (0, 2, 4), (2, 4, 6), (4, 6, 8), (6, 8, 10)
    scored bytes:   0 1 | 2 3 | 4 5 | 6 7 | 8 9      (byte i is target f[i + 1])

`logits_fn(ids (B, T)) -> (B, T, V)` must return logits whose row t predicts ids[t + 1], like any HF
causal LM. Windows of equal length are batched together, so no padding is ever fed to a model.
The figure is bits per byte of text (`<s>` is context only, `</s>` is not scored), computed by
`hier_ae.evaluation.reports.bits_per_byte` (the `bits_per_byte` evaluate metric), as for hier_ae's
own evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from hier_ae.data.batching import frame_document
from hier_ae.evaluation.reports import bits_per_byte, rolling_windows


def plan_windows(n: int, context: int) -> list[tuple[int, int, int]]:
    """The (lo, a, b) windows over n bytes: context = `context`, stride = context // 2."""
    return rolling_windows(n, context, max(context // 2, 1))


def coverage(plan: list[tuple[int, int, int]], n: int) -> torch.Tensor:
    """How many times each byte is scored by `plan` (all ones when the plan is right)."""
    hits = torch.zeros(n, dtype=torch.long)
    for _, a, b in plan:
        hits[a:b] += 1
    return hits


@torch.inference_mode()
def score_text(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    data: bytes,
    context: int,
    batch_size: int = 8,
) -> dict:
    """Bits per byte of `data` (one document) under `logits_fn`, with the windows of `plan_windows`."""
    f = frame_document(data)[:-1]  # <s> + bytes, no </s>: EOS is not scored
    plan = plan_windows(len(data), context)
    by_len: dict[int, list[tuple[int, int, int]]] = {}
    for w in plan:
        by_len.setdefault(w[2] - w[0], []).append(w)
    nats, scored = 0.0, 0
    t0 = time.perf_counter()
    for _, ws in sorted(by_len.items()):
        for k in range(0, len(ws), batch_size):
            chunk = ws[k : k + batch_size]
            ids = torch.stack([f[lo:b] for lo, _, b in chunk])  # (B, T)
            logits = logits_fn(ids)  # (B, T, V)
            for row, (lo, a, b) in enumerate(chunk):
                targets = f[a + 1 : b + 1]
                # the softmax over the scored rows only (the context rows are read, not scored)
                logp = torch.log_softmax(logits[row, a - lo : b - lo].float(), dim=-1)  # (b - a, V)
                picked = logp.gather(1, targets[:, None])  # (b - a, 1)
                nats -= float(picked.double().sum())
                scored += b - a
    seconds = time.perf_counter() - t0
    assert scored == len(data), f"scored {scored} bytes of {len(data)}"
    return {
        "bits_per_byte": bits_per_byte([-nats], [data]),
        "bytes": scored,
        "windows": len(plan),
        "context": context,
        "stride": max(context // 2, 1),
        "seconds": seconds,
        "bytes_per_s": scored / max(seconds, 1e-9),
    }
