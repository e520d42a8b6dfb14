"""A cache model: what followed each context of `order` symbols so far in this stream, blended in.

The top LM prices a code from the codes before it in its chunk (DESIGN §5), the same way in every file.
A file has its own habits (a function's names, a play's speakers): `ContextCounts` counts, for each
context of the last `order` codes seen so far in the file, which code came next, and blends those
counts into the model's distribution q:

    q' = (1 - w) q + w counts / T,   w = T / (T + k),

where T is how often the context occurred before: an unseen context leaves q as it is, a context seen
k times gets half its weight from its counts. It is the classic cache language model at the level of
codes; `hier_ae.codes.match_model` (the last occurrence of a longer context) goes on top of it.
Counts are integers updated in the same order on both sides, and the blend sums them in the dict's
insertion order, so the compressor and the decompressor compute the same floats.

Worked toy example (order = 2, k = 2) on the stream a b c a b ?:
    the context (a, b) occurred once before, followed by c: T = 1, w = 1 / 3;
    with q = (a 0.2, b 0.2, c 0.6): q' = (0.2 * 2/3, 0.2 * 2/3, 0.6 * 2/3 + 1/3) = (0.133, 0.133, 0.733).

`checkpoint()` / `restore(mark)` undo every count since the mark.
"""

from __future__ import annotations

import numpy as np


class ContextCounts:
    """`mix(q) -> q'` before each symbol, `update(symbol)` after it (also for symbols coded without
    `mix`)."""

    def __init__(self, order: int = 2, k: float = 32.0):
        if order < 1 or k <= 0:
            raise ValueError(f"order={order}, k={k} are invalid: order >= 1 symbols and k > 0")
        self.order, self.k = order, float(k)
        self.last: list[int] = []  # the last `order` symbols
        self.counts: dict[tuple[int, ...], dict[int, int]] = {}  # context -> {next symbol: count}
        self.journal: list[tuple[tuple[int, ...], int]] | None = None

    def _seen(self) -> dict[int, int] | None:
        """The current context's {next symbol: count}, or None before `order` symbols or if unseen."""
        return self.counts.get(tuple(self.last)) if len(self.last) == self.order else None

    def mix(self, q: np.ndarray) -> np.ndarray:
        """q: (V,) or (1, V) float64 probabilities -> the same shape, the context's counts blended in."""
        seen = self._seen()
        if not seen:
            return q
        total = sum(seen.values())
        w = total / (total + self.k)
        out = q.reshape(-1) * (1.0 - w)
        for symbol, n in seen.items():
            out[symbol] += w * n / total
        return out.reshape(q.shape)

    def share(self, symbol: int) -> float | None:
        """The fraction of the current context's sightings followed by `symbol` (None: an unseen
        context). The toy example above: share(c) = 1.0, share(a) = 0.0."""
        seen = self._seen()
        return seen.get(symbol, 0) / sum(seen.values()) if seen else None

    def update(self, symbol: int) -> None:
        symbol = int(symbol)
        if len(self.last) == self.order:
            key = tuple(self.last)
            seen = self.counts.setdefault(key, {})
            seen[symbol] = seen.get(symbol, 0) + 1
            if self.journal is not None:
                self.journal.append((key, symbol))
        self.last = (self.last + [symbol])[-self.order :]

    def checkpoint(self) -> tuple:
        """A mark to `restore` to; counts are journaled from here on."""
        self.journal = []
        return (list(self.last),)

    def restore(self, mark: tuple) -> None:
        """Back to the counts at `mark` (the last `checkpoint`): contexts and symbols first counted
        since then are removed, so later ones are inserted (and summed) in the same order as on a side
        that never saw them."""
        for key, symbol in reversed(self.journal or []):
            seen = self.counts[key]
            seen[symbol] -= 1
            if not seen[symbol]:
                del seen[symbol]
                if not seen:
                    del self.counts[key]
        self.last = list(mark[0])
        self.journal = []
