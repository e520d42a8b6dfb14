"""Bits-per-byte metric: summed negative log-likelihoods (nats) over byte counts, in bits per byte.

An `evaluate` module (load it with `evaluate.load(<this folder>)`, or `hier_ae.metrics.load(
"bits_per_byte")`). Self-contained: `evaluate` copies this file into its modules cache.

Each input pair is one scored unit (a document, a batch row): `nll` = the sum of its negative
log-likelihoods in nats, `num_bytes` = the bytes it stands for. The figure is corpus-level, as
lm-eval's `bits_per_byte`: sum(nll) / (sum(num_bytes) * ln 2). Worked example: two documents with
nll 6.931 and 13.863 nats (10 and 20 bits) over 8 and 12 bytes -> 30 bits / 20 bytes = 1.5 bits/byte.
"""

from __future__ import annotations

import math

import datasets
import evaluate

_DESCRIPTION = """
Bits per byte of a model on a text: the summed negative log-likelihood (nats) of what it scored,
divided by ln 2 and by the number of bytes scored (corpus-level, as lm-eval's bits_per_byte). Works
for any coding cost in nats: next-byte prediction, reconstruction cross-entropy, code-LM costs.
"""

_KWARGS_DESCRIPTION = """
Args:
    nll (`list[float]`): summed negative log-likelihood of each unit, in nats (>= 0).
    num_bytes (`list[int]`): bytes each unit covers (>= 0; their sum must be > 0).
Returns:
    bits_per_byte (`float`): sum(nll) / (sum(num_bytes) * ln 2).
    total_nll_nats (`float`), total_bytes (`int`).
Examples:
    >>> metric = evaluate.load("src/hier_ae/metrics/bits_per_byte")
    >>> metric.compute(nll=[8 * math.log(2)], num_bytes=[4])["bits_per_byte"]
    2.0
"""


def bits_per_byte_scores(nll, num_bytes) -> dict:
    """The metric's figures (the computation behind `BitsPerByte._compute`)."""
    if len(nll) != len(num_bytes):
        raise ValueError(f"nll and num_bytes must pair up: got {len(nll)} and {len(num_bytes)} values.")
    bad = [x for x in nll if not math.isfinite(x) or x < 0]
    if bad:
        raise ValueError(f"nll must be finite sums of negative log-likelihoods (>= 0, nats); got {bad[:3]}.")
    if any(b < 0 for b in num_bytes):
        raise ValueError(f"num_bytes must be >= 0; got {[b for b in num_bytes if b < 0][:3]}.")
    total_bytes = int(sum(num_bytes))
    if total_bytes == 0:
        raise ValueError("num_bytes sums to 0: bits per byte needs at least one byte.")
    total = float(sum(nll))
    return {
        "bits_per_byte": total / (total_bytes * math.log(2)),
        "total_nll_nats": total,
        "total_bytes": total_bytes,
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BitsPerByte(evaluate.Metric):
    """Corpus-level bits per byte from per-unit summed NLLs (nats) and byte counts."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"nll": datasets.Value("float64"), "num_bytes": datasets.Value("int64")}
            ),
        )

    def _compute(self, nll, num_bytes):
        return bits_per_byte_scores(nll, num_bytes)
