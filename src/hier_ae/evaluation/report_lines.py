"""The held-out lines the training script's report scores (`make demo`'s "exact-match on 64 held-out lines").

Every non-empty line of the validation documents, stripped, of `min_len`..`max_len` bytes, shuffled with
`random.Random(seed)`; the report takes the first `n`. Drawing all of them (`n=None`) gives the same order,
so a larger sample starts with the report's own lines and its next groups are more lines drawn the same way.

Toy example: documents [b"  alpha beta\\nx\\n", b"gamma delta\\n"] hold three lines; b"x" is under 8 bytes,
so the pool is [b"alpha beta", b"gamma delta"] in a seeded order, and `report_lines(docs, 1)` is its first.
"""

from __future__ import annotations

import random


def report_lines(
    docs: list[bytes], n: int | None, max_len: int = 120, min_len: int = 8, seed: int = 0
) -> list[bytes]:
    """The first `n` (all with None) stripped lines of `docs` of `min_len`..`max_len` bytes, in the
    seeded shuffle's order: `report_lines(docs, k) == report_lines(docs, None)[:k]`.

    >>> pool = report_lines([b"  alpha beta\\nx\\n", b"gamma delta\\n"], None)
    >>> sorted(pool), report_lines([b"  alpha beta\\nx\\n", b"gamma delta\\n"], 1) == pool[:1]
    ([b'alpha beta', b'gamma delta'], True)
    """
    if n is not None and n < 0:
        raise ValueError(f"report_lines: n={n} must be >= 0 (or None for every line).")
    if not 1 <= min_len <= max_len:
        raise ValueError(
            f"report_lines: need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}."
        )
    lines = [ln.strip() for d in docs for ln in d.split(b"\n")]
    lines = [ln for ln in lines if min_len <= len(ln) <= max_len]
    random.Random(seed).shuffle(lines)
    return lines if n is None else lines[:n]
