"""A match model: the next symbol of a stream predicted from the last time its recent past occurred.

The codec (`hier_ae.codes.codec`) codes a file in chunks (16,382 bytes by default), each encoded and
priced from an empty context, so a block repeated across the file (code repeats whole functions, imports,
signatures) costs as much the second time as the first. A match model remembers the stream so far
across chunks: when the last `min_len` symbols occurred before, it predicts the symbol that followed
them then, and it keeps predicting along that earlier occurrence while it is right. The prediction
is folded into the model's distribution q (the top LM's over codes, or the decoder's over tokens):

    pred gets f = max(q[pred], h),   every other symbol s gets q[s] * (1 - f) / (1 - q[pred]),

where h is how often a prediction made in the same circumstances was right so far in this stream
(counts by the match length so far, log-bucketed, by q[pred] in `q_bins` bins, and by an `extra`
bucket the caller may pass, e.g. what a cache model thinks of the prediction: (hits + 0.5) /
(tries + 1)). With several context `lengths` a fresh match is looked up by the longest one that
occurred before (the longer the shared past, the likelier the same continuation), the shortest
last. It only ever raises q[pred], so where the model was sure already nothing changes, and
in a long repeat a symbol costs a small fraction of a bit. Everything is counts and float64 arithmetic
on the same inputs in the same order, so the compressor and the decompressor compute the very same
distributions.

Worked toy example (min_len = 2) on the stream a b c a b ?:
    after "a b" (positions 0-1) the table holds (a, b) -> 2, the position that followed;
    after "c a b" the last two symbols (a, b) are in the table: pred = stream[2] = c, match length 2;
    with q[c] = 0.1 and no history yet (h = 0.5): f = 0.5, and the other symbols share 0.5 as
    q did 0.9. If the next symbol is c, the match goes on (pred = stream[3] = a, length 3).

`checkpoint()` / `restore(mark)` undo everything since the mark (the codec stores a chunk raw when
its decode cannot follow its codes, and the decompressor never sees those symbols).
"""

from __future__ import annotations

import math

import numpy as np

LENGTH_BUCKETS = 32
Q_BINS = 4
MAX_BACK = 400  # how far back a fresh match's length is counted
F_MAX = 1.0 - 1e-6  # the most a prediction is given (the range coder keeps every symbol possible)


def length_bucket(length: int) -> int:
    """0..7 as they are, then four buckets an octave: 8 -> 8, 16 -> 12, 32 -> 16, 400+ -> 22..31."""
    if length < 8:
        return length
    return min(8 + int(4 * math.log2(length / 8)), LENGTH_BUCKETS - 1)


class MatchModel:
    """`mix(q) -> q'` before each symbol, `update(symbol)` after it; `update` alone for symbols coded
    without `mix` (they still extend the stream and its matches)."""

    def __init__(
        self,
        min_len: int = 3,
        longer: tuple[int, ...] = (),
        q_bins: int = Q_BINS,
        max_bucket: int = LENGTH_BUCKETS - 1,
        extra_bins: int = 1,
    ):
        """`min_len`: the shortest context that starts a match; `longer`: longer contexts tried first;
        `q_bins`, `max_bucket` (length buckets above it share its counts), `extra_bins`: how the
        hit rates are kept apart (see the module docstring)."""
        if min_len < 1 or any(n <= min_len for n in longer):
            raise ValueError(
                f"min_len={min_len}, longer={longer} are invalid: min_len a positive number of symbols, "
                "each longer context longer than min_len"
            )
        if q_bins < 1 or extra_bins < 1 or not 0 <= max_bucket < LENGTH_BUCKETS:
            raise ValueError(
                f"q_bins={q_bins}, extra_bins={extra_bins}, max_bucket={max_bucket} are invalid: "
                f"q_bins, extra_bins >= 1 and max_bucket in [0, {LENGTH_BUCKETS - 1}]"
            )
        self.min_len, self.q_bins, self.max_bucket = min_len, q_bins, max_bucket
        self.lengths = sorted({min_len, *longer}, reverse=True)  # looked up longest first
        self.stream: list[int] = []
        # per context length n: the last n symbols -> the position after their last occurrence
        self.tables: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self.lengths}
        self.ptr = -1  # position in `stream` of the predicted symbol, -1: no prediction
        self.length = 0  # how many symbols before `ptr` match the stream's last ones
        self.hits = np.zeros((max_bucket + 1, q_bins, extra_bins))
        self.tries = np.zeros((max_bucket + 1, q_bins, extra_bins))
        self.pending: tuple[int, int, int, int] | None = None  # (bucket, q bin, extra, pred) of the last mix
        self.journal: list[tuple[int, tuple[int, ...], int | None]] | None = None

    @property
    def prediction(self) -> int | None:
        """The symbol the match predicts next, or None."""
        return self.stream[self.ptr] if self.ptr >= 0 else None

    def mix(self, q: np.ndarray, extra: int = 0) -> np.ndarray:
        """q: (V,) or (1, V) float64 probabilities -> the same shape, the prediction folded in.
        `extra` in [0, extra_bins): the caller's bucket for this prediction's circumstances."""
        self.pending = None
        if self.ptr < 0:
            return q
        pred = self.stream[self.ptr]
        row = q.reshape(-1)
        qp = float(row[pred])
        b = min(length_bucket(self.length), self.max_bucket)
        qb = min(int(qp * self.q_bins), self.q_bins - 1)
        self.pending = (b, qb, extra, pred)
        f = min(max((self.hits[b, qb, extra] + 0.5) / (self.tries[b, qb, extra] + 1.0), qp), F_MAX)
        if f <= qp:
            return q
        out = row * ((1.0 - f) / (1.0 - qp))
        out[pred] = f
        return out.reshape(q.shape)

    def update(self, symbol: int) -> None:
        """The symbol that came: counts the last `mix`'s prediction, extends the stream and the match."""
        symbol = int(symbol)
        if self.pending is not None:
            b, qb, extra, pred = self.pending
            self.tries[b, qb, extra] += 1
            self.hits[b, qb, extra] += symbol == pred
            self.pending = None
        right = self.ptr >= 0 and self.stream[self.ptr] == symbol
        self.stream.append(symbol)
        self.ptr, self.length = (self.ptr + 1, self.length + 1) if right else (-1, 0)
        n = len(self.stream)
        keys = {m: tuple(self.stream[-m:]) for m in self.lengths if n >= m}
        if self.ptr < 0:
            found = next((self.tables[m][k] for m, k in keys.items() if k in self.tables[m]), None)
            if found is not None:
                self.ptr, self.length = found, 0
                while (
                    self.length < MAX_BACK
                    and self.ptr - 1 - self.length >= 0
                    and self.stream[self.ptr - 1 - self.length] == self.stream[n - 1 - self.length]
                ):
                    self.length += 1
        for m, key in keys.items():
            if self.journal is not None:
                self.journal.append((m, key, self.tables[m].get(key)))
            self.tables[m][key] = n

    def checkpoint(self) -> tuple:
        """A mark to `restore` to; the table's changes are journaled from here on."""
        self.journal = []
        return (len(self.stream), self.ptr, self.length, self.hits.copy(), self.tries.copy())

    def restore(self, mark: tuple) -> None:
        """Back to the state at `mark` (the last `checkpoint`)."""
        n, self.ptr, self.length, hits, tries = mark
        self.hits, self.tries = hits.copy(), tries.copy()
        for m, key, old in reversed(self.journal or []):
            if old is None:
                del self.tables[m][key]
            else:
                self.tables[m][key] = old
        del self.stream[n:]
        self.journal, self.pending = [], None
