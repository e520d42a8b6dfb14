"""Reconstruction metric: how close decoded byte sequences are to the sequences that were encoded.

An `evaluate` module (load it with `evaluate.load(<this folder>)`, or `hier_ae.metrics.load(
"reconstruction")`). Self-contained (standard library, `datasets` and `evaluate` only): `evaluate`
copies this file into its modules cache and imports it from there.

Inputs are pairs of id sequences (lists of ints, e.g. hier_ae byte ids with `<s>` = 2 and `</s>` = 1)
or `bytes`. Worked example, reference [2, 10, 11, 12, 1] ("<s>abc</s>") against three decodes:

    prediction          edit distance   byte accuracy   first error
    [2, 10, 11, 12, 1]  0               1.0             None (exact)
    [2, 10, 99, 12, 1]  1 (substitute)  1 - 1/5 = 0.8   2
    [2, 10, 11]         2 (delete x2)   1 - 2/5 = 0.6   3 (the prediction ends early)

exact_match = 1/3; byte_accuracy = 1 - (0 + 1 + 2) / 15 = 0.8; first_error_mean = 2.5 (over the two
inexact pairs), first_error_median = 2.5.
"""

from __future__ import annotations

import statistics

import datasets
import evaluate

_DESCRIPTION = """
Reconstruction quality of an autoencoder over byte (or token id) sequences: the rate of exact
reconstructions, an edit-distance-based byte accuracy (1 - Levenshtein distance / reference length,
aggregated over all bytes and per pair) and where the first error falls (the first position at which
prediction and reference differ, or the length of the shorter one when one is a prefix of the other).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list[int]` or `bytes`): the decoded sequences.
    references (`list` of `list[int]` or `bytes`): the sequences that were encoded.
Returns:
    exact_match (`float`): fraction of pairs with prediction == reference.
    byte_accuracy (`float`): max(0, 1 - sum(edit distance) / sum(len(reference))), over all pairs.
    mean_byte_accuracy (`float`): mean over pairs of max(0, 1 - edit distance / len(reference)).
    mean_edit_distance (`float`): mean Levenshtein distance per pair.
    first_error_mean, first_error_median (`float` or None): position of the first error, over the
        pairs that are not exact (None when every pair is exact).
    first_error_relative_mean (`float` or None): mean of first error / len(reference), same pairs.
    first_error_at_start (`float`): fraction of all pairs whose first error is at position 0.
    num_pairs (`int`).
Examples:
    >>> metric = evaluate.load("src/hier_ae/metrics/reconstruction")
    >>> r = metric.compute(predictions=[[2, 10, 99, 12, 1]], references=[[2, 10, 11, 12, 1]])
    >>> r["byte_accuracy"], r["first_error_mean"]
    (0.8, 2.0)
"""

_CITATION = """
@article{levenshtein1966,
  title={Binary codes capable of correcting deletions, insertions, and reversals},
  author={Levenshtein, Vladimir I},
  journal={Soviet Physics Doklady}, volume={10}, number={8}, pages={707--710}, year={1966}
}
"""


def levenshtein(a, b) -> int:
    """Edit distance (insert, delete, substitute, each cost 1) between two sequences of hashables.

    Myers' bit-vector algorithm (Myers 1999, Hyyrö 2001's Levenshtein form): one column of the DP
    table per element of `b`, held as bit vectors over `a` in Python ints, O(len(b) * len(a) / 64).
    A shared prefix and suffix are stripped first (a good reconstruction is mostly shared).
    levenshtein([1, 2, 3], [1, 3]) == 1; levenshtein(b"kitten", b"sitting") == 3.
    """
    a, b = list(a), list(b)
    lo = 0
    while lo < min(len(a), len(b)) and a[lo] == b[lo]:
        lo += 1
    a, b = a[lo:], b[lo:]
    hi = 0
    while hi < min(len(a), len(b)) and a[-1 - hi] == b[-1 - hi]:
        hi += 1
    if hi:
        a, b = a[:-hi], b[:-hi]
    m = len(a)
    if m == 0 or not b:
        return max(m, len(b))
    peq: dict = {}  # element -> bit mask of its positions in a
    for i, c in enumerate(a):
        peq[c] = peq.get(c, 0) | (1 << i)
    full, top = (1 << m) - 1, 1 << (m - 1)
    pv, mv, score = full, 0, m  # vertical +1 / -1 deltas of the current column; D[m][j]
    for c in b:
        eq = peq.get(c, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | (~(xh | pv) & full)
        mh = pv & xh
        if ph & top:
            score += 1
        elif mh & top:
            score -= 1
        ph = ((ph << 1) | 1) & full  # | 1: row 0 of the table grows by 1 per column (global distance)
        mh = (mh << 1) & full
        pv = mh | (~(xv | ph) & full)
        mv = ph & xv
    return score


def first_error(prediction, reference) -> int | None:
    """First position where the two differ; the shorter length if one is a prefix; None if equal.

    first_error([2, 5, 6], [2, 5, 7]) == 2; first_error([2, 5], [2, 5, 7]) == 2; equal -> None.
    """
    n = min(len(prediction), len(reference))
    for i in range(n):
        if prediction[i] != reference[i]:
            return i
    return None if len(prediction) == len(reference) else n


def _as_ids(seq) -> list[int]:
    """`bytes` / `bytearray` / `memoryview` / a sequence of ints -> list of ints."""
    if isinstance(seq, (bytes, bytearray, memoryview)):
        return list(bytes(seq))
    if isinstance(seq, str):
        raise ValueError(
            "reconstruction takes byte-id sequences or bytes, got a str; encode it first "
            "(text.encode('utf-8'))."
        )
    return [int(x) for x in seq]


def reconstruction_scores(predictions, references) -> dict:
    """The metric's figures for paired sequences (the computation behind `Reconstruction._compute`)."""
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references must pair up: got {len(predictions)} predictions and "
            f"{len(references)} references."
        )
    preds = [_as_ids(p) for p in predictions]
    refs = [_as_ids(r) for r in references]
    n = len(refs)
    dists = [levenshtein(p, r) for p, r in zip(preds, refs)]
    per_pair = [
        max(0.0, 1.0 - d / len(r)) if r else float(d == 0) for d, r in zip(dists, refs)
    ]  # per-pair byte accuracy
    total_ref = sum(len(r) for r in refs)
    errors = [(first_error(p, r), len(r)) for p, r in zip(preds, refs)]
    firsts = [e for e, _ in errors if e is not None]
    relative = [e / max(length, 1) for e, length in errors if e is not None]
    return {
        "exact_match": sum(p == r for p, r in zip(preds, refs)) / n if n else 0.0,
        "byte_accuracy": max(0.0, 1.0 - sum(dists) / total_ref) if total_ref else float(sum(dists) == 0),
        "mean_byte_accuracy": sum(per_pair) / n if n else 0.0,
        "mean_edit_distance": sum(dists) / n if n else 0.0,
        "first_error_mean": sum(firsts) / len(firsts) if firsts else None,
        "first_error_median": float(statistics.median(firsts)) if firsts else None,
        "first_error_relative_mean": sum(relative) / len(relative) if relative else None,
        "first_error_at_start": sum(e == 0 for e in firsts) / n if n else 0.0,
        "num_pairs": n,
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Reconstruction(evaluate.Metric):
    """Exact-match rate, edit-distance byte accuracy and first-error position of decoded sequences.

    `bytes` inputs are turned into lists of ints before `evaluate` stores them (its `Sequence(int64)`
    feature does not take `bytes`), in `add`, `add_batch` and `compute` alike.
    """

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """`evaluate.Metric.add_batch`, taking `bytes` as well as id lists."""
        if predictions is not None:
            predictions = [_as_ids(p) for p in predictions]
        if references is not None:
            references = [_as_ids(r) for r in references]
        return super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """`evaluate.Metric.add`, taking `bytes` as well as id lists."""
        prediction = None if prediction is None else _as_ids(prediction)
        reference = None if reference is None else _as_ids(reference)
        return super().add(prediction=prediction, reference=reference, **kwargs)

    def compute(self, *, predictions=None, references=None, **kwargs):
        """`evaluate.Metric.compute`, taking `bytes` as well as id lists."""
        if predictions is not None:
            predictions = [_as_ids(p) for p in predictions]
        if references is not None:
            references = [_as_ids(r) for r in references]
        return super().compute(predictions=predictions, references=references, **kwargs)

    def _compute(self, predictions, references):
        return reconstruction_scores(predictions, references)
