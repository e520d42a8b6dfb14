"""Comparing discrete outputs of two computation paths: equal, or first apart at a near-tie.

Two paths that compute the same numbers in a different order (a row alone or inside a batch, the
KV-cached step or the whole-sequence forward, weights at another memory address, a float32 module
inside a bf16 model) agree to float32 rounding, not bit for bit: the CPU kernels block their
reductions by shape, pointer alignment, vendor and thread count. A discrete decision (a boundary,
a code, a greedy token) can then differ only where its margin is within rounding of a tie
(DESIGN §6). The helpers here accept exactly that and fail on any mismatch with a clear margin.

Bit-for-bit comparisons stay where one process computes the same tensors the same way twice
(same-seed training runs, DDP ranks after the all-reduce, a repeated call).
"""

from __future__ import annotations

import torch

MARGIN = 1e-5  # DESIGN §6: |H - theta| or a code's distance gap below this may differ between paths
# logits of magnitude ~10 move by up to ~4e-6 between kernel paths (AMD EPYC, float32); a greedy
# token whose two best logits are closer than this may flip
LOGIT_MARGIN = 1e-4


class NearTieWarning(UserWarning):
    """A discrete decision differed where its float margin is within rounding of a tie."""


def encode_with_pooled(model, ids, mask):
    """`encode` plus each level's pooled segment vectors (B, S, D), the quantiser's inputs."""
    pooled, hooks = [], []
    for level in model.levels:
        hooks.append(level.pooling.register_forward_hook(lambda m, i, out: pooled.append(out.detach())))
    try:
        enc = model.encode(ids, mask)
    finally:
        for h in hooks:
            h.remove()
    return enc, pooled


def code_gap(vector: torch.Tensor, codebook: torch.Tensor) -> float:
    """Squared-distance gap between the nearest and second-nearest codes (depth 0) of one vector."""
    d = (codebook[0] - vector[None]).pow(2).sum(-1)  # (K,)
    two = d.topk(2, largest=False).values
    return float(two[1] - two[0])


def compare_row(model, a, b, row_b: int, row_a: int = 0) -> list[str]:
    """Compare one row of two `encode_with_pooled` results level by level.

    Returns near-tie reports (empty if equal); fails on a mismatch with a clear margin. Once a
    decision differs at a near-tie everything after it may differ too, so the row stops there.
    """
    (ea, pa), (eb, pb) = a, b
    for li, level in enumerate(model.levels):
        va, vb = ea.level_mask[li][row_a], eb.level_mask[li][row_b]
        ta, tb = ea.level_tokens[li][row_a][va], eb.level_tokens[li][row_b][vb]
        assert torch.equal(ta, tb), f"row {row_b} level {li}: the token streams differ"
        sa, sb = ea.segment_ids[li][row_a][va], eb.segment_ids[li][row_b][vb]
        if not torch.equal(sa, sb):
            t = int((sa != sb).nonzero()[0])  # first position whose segment differs
            # fires[t - 1] decided whether x[t] opens a segment; the margin is the closer of the two
            theta = float(level.boundary_value)
            Ha, Hb = float(ea.entropy[li][row_a][va][t - 1]), float(eb.entropy[li][row_b][vb][t - 1])
            margin = min(abs(Ha - theta), abs(Hb - theta))
            where = f"row {row_b} level {li} position {t}: boundary differs, |H - theta| = {margin:.2e}"
            assert margin < MARGIN, where
            return [where]
        ma, mb = ea.code_mask[li][row_a], eb.code_mask[li][row_b]
        ca, cb = ea.codes[li][row_a][ma], eb.codes[li][row_b][mb]
        assert ca.shape == cb.shape, f"row {row_b} level {li}: {ca.shape} vs {cb.shape} segments"
        if not torch.equal(ca, cb):
            s = int((ca != cb).nonzero()[0])
            cbook = level.quantizer.codebook
            gap = min(code_gap(pa[li][row_a][ma][s], cbook), code_gap(pb[li][row_b][mb][s], cbook))
            where = f"row {row_b} level {li} segment {s}: code {int(ca[s])} vs {int(cb[s])}, gap {gap:.2e}"
            assert gap < MARGIN, where
            return [where]
    return []


def compare_encodings(model, a, b) -> list[str]:
    """`compare_row` for every row of two `encode_with_pooled` results of the same batch."""
    reports = []
    for row in range(a[0].level_mask[0].shape[0]):
        reports += compare_row(model, a, b, row, row)
    return reports


def top2_gap(logits: torch.Tensor) -> torch.Tensor:
    """Gap between the two largest logits over the last axis. (..., V) -> (...)."""
    two = logits.float().topk(2, dim=-1).values  # (..., 2)
    return two[..., 0] - two[..., 1]


def compare_greedy(got: torch.Tensor, want: torch.Tensor, logits: torch.Tensor, start: int = 0) -> list[str]:
    """Greedy token streams of two paths: rows equal, or first apart where `want` chose at a near-tie.

    got, want: (B, n) ids; `logits (B, n, V)`: the reference path's logits, `logits[:, p]` the ones
    that chose `want[:, p]`; positions before `start` (the prompt) must be equal. Returns near-tie
    reports; a first difference whose two best logits are LOGIT_MARGIN or more apart fails.
    Example: want = [5, 9, 4], got = [5, 9, 7], logits[0, 2] = (..., 4: 3.00001, 7: 3.0) -> a
    near-tie report for position 2; with 4: 3.5 the comparison fails.
    """
    assert got.shape == want.shape, f"shapes differ: {tuple(got.shape)} vs {tuple(want.shape)}"
    reports = []
    for row in range(want.shape[0]):
        diff = (got[row] != want[row]).nonzero()
        if not len(diff):
            continue
        p = int(diff[0])
        assert p >= start, f"row {row}: the prompt differs at {p}"
        gap = float(top2_gap(logits[row, p]))
        where = f"row {row} position {p}: {int(got[row, p])} vs {int(want[row, p])}, top-2 gap {gap:.2e}"
        assert gap < LOGIT_MARGIN, where
        reports.append(where)
    return reports


@torch.no_grad()
def chooser_logits(lm, sequences: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
    """Uncached logits aligned with `compare_greedy`: out[:, p] are the logits that chose sequences[:, p].

    sequences (B, n) = a left-padded prompt (B, P) with `prompt_mask` + generated ids -> (B, n, V).
    """
    B, n = sequences.shape
    mask = torch.cat([prompt_mask, prompt_mask.new_ones(B, n - prompt_mask.shape[1])], dim=1)  # (B, n)
    logits = lm(sequences, attention_mask=mask, use_cache=False).logits  # (B, n, V): [:, t] -> t + 1
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # (B, n, V); [:, 0] unused (a prompt id)


def compare_boundaries(
    got: torch.Tensor, want: torch.Tensor, entropy: torch.Tensor, theta: float
) -> list[str]:
    """Segment ids (B, n) of two paths over the same tokens: equal, or first apart at a near-tie.

    `entropy (B, n)` is one path's H (threshold mode): seg_id[t] differs first where the decision
    after t - 1 did, so |H[t - 1] - theta| must be below MARGIN. Returns near-tie reports.
    """
    assert got.shape == want.shape, f"shapes differ: {tuple(got.shape)} vs {tuple(want.shape)}"
    reports = []
    for row in (got != want).any(dim=1).nonzero()[:, 0].tolist():
        t = int((got[row] != want[row]).nonzero()[0])
        margin = abs(float(entropy[row, t - 1]) - theta) if t > 0 else float("inf")
        where = f"row {row} position {t}: boundary differs, |H - theta| = {margin:.2e}"
        assert margin < MARGIN, where
        reports.append(where)
    return reports
