"""Text contexts: the next top code predicted from the text before it, mixed in with learnt weights.

A top code stands for a cluster of segments (160 codes cover 1,690 distinct segments of the code
corpus's tuning half), so the codes before a segment say less about it than the text before it does:
after `def __init__(self` the next segment is almost always `, ` or `):`, whatever codes spelt the text.
When the codec reads a chunk's codes one at a time, each just before its segment is decoded
(`HierAEModel.decode(next_code=...)`), both sides know the text so far (the top level's tokens: the
bytes, for a one-level model) when they price a code. `TextContexts` counts, for each context of the
last n tokens (n in `orders`), which code came next so far in the file, and mixes those counts with
the distribution q it is handed:

    p_n = (counts_n + alpha q) / (T_n + alpha)       each order's counts, smoothed towards q
    p   ∝ exp(w · [log q, log r - log q, log p_1 - log q, ..., log p_N - log q])

(geometric mixing; r is the top LM's own distribution, q what the other file models made of it; an
order whose context never occurred, or has too little text before it, gives log p_n - log q = 0).
The weights w start at (1, 0, ..., 0), i.e. p = q, and after each code take a step of `lr` along
the gradient of log p(code), `L[:, code] - L @ p` (the online logistic mixing of PAQ-like compressors,
over the K codes at once). A caller passes a `key` that picks one of several weight vectors (the
file models: the code match model's length bucket).

Worked toy example (orders (2,), alpha = 1, K = 2 codes; the text is tokens):
    text so far ... 7 8 | code 1 | 9 7 8 | ?    the context (7, 8) was followed by code 1 once:
    p_2 = ((0, 1) + 1 * q) / (1 + 1); with q = (0.5, 0.5): p_2 = (0.25, 0.75).
    With w = (1, 0, 1): log p ∝ log q + (log p_2 - log q) = log p_2, so p = (0.25, 0.75).

`alpha` may be a tuple: each order then gives a row at each alpha (version 5 of the file models
gives the tokens' contexts (0.5, 0.0625): a small alpha trusts a context's counts sooner, which pays
on source code that repeats itself exactly and loses on running English, RP1 and OS1 in
bench/experiments.md). `order_sets` adds to the weights of `key` a second set picked by the longest
order whose context was seen and whether one symbol alone followed it so far (they start at 0; both
take each step). `lr_start`: each set's learning rate falls from it towards `lr` (`_lr`). The toy
above with alphas (1, 0.25): p_2 = ((0, 1) + 1 q) / 2 = (0.25, 0.75) and ((0, 1) + 0.25 q) / 1.25 =
(0.1, 0.9), two rows; the order key is (1, True): the first order (1 + its index) was seen, and
only code 1 followed it.

`count_limit` (version 6 of the file models, SS3): once a context's counts sum past it, they are
halved (those that fall to 0 dropped; if all do, the symbol just counted keeps 1), so each context
weighs its recent sightings most: what followed a context long ago in a file counts for less than what
followed it lately. With count_limit = 4, a context seen (code 3: 3, code 5: 1) that sees code 3 again
sums 5 > 4 and becomes (code 3: 2); one symbol alone seen 5 times becomes 3 (rounded up).

The file models (`file_models`, versions 3-6) predict tokens the same way: each level's next token from
the last 1 ... 24 tokens, and the top level's also from its segment's code and its offset in the
segment (`tag`) with the last 0 ... 4 tokens: what the code's segments were spelt like so far.

Counts are integers and the mixing is float64 numpy on the same inputs in the same order on both
sides, so the compressor and the decompressor compute the same floats (on the same machine).
`checkpoint()` / `restore(mark)` undo everything since the mark.
"""

from __future__ import annotations

import numpy as np

SINGLE = 1 << 32  # a context followed by one symbol so far stores `symbol * SINGLE + count` (one int)


class TextContexts:
    """`mix(q, raw, key) -> p` before each code, `update(code)` after it; `see(token)` for each token
    of the text (after the code of its segment). The file models also predict the tokens themselves
    this way (the symbols are then tokens, and each token is seen after its update).

    `max_contexts`: at most this many contexts are kept (all orders together); once they are, a context
    not seen before is not added (those kept go on counting), so memory stays bounded on any file, and
    `trim()` (the file models call it between chunks) drops the least seen ones once they fill three
    quarters of it. None: no bound (file models version 3)."""

    def __init__(
        self,
        orders: tuple[int, ...],
        alpha: float | tuple[float, ...] = 0.5,
        lr: float = 0.005,
        max_contexts: int | None = None,
        order_sets: bool = False,
        lr_start: float | None = None,
        lr_half: int = 256,
        count_limit: int | None = None,
    ):
        alphas = tuple(alpha) if isinstance(alpha, (tuple, list)) else (alpha,)
        if (
            not orders
            or any(not isinstance(n, int) or n < 0 for n in orders)
            or not alphas
            or any(a <= 0 for a in alphas)
            or lr <= 0
            or (lr_start is not None and lr_start < lr)
            or lr_half < 1
        ):
            raise ValueError(
                f"orders={orders}, alpha={alpha}, lr={lr}, lr_start={lr_start}, lr_half={lr_half} are "
                "invalid: one or more context lengths >= 0 tokens, alpha > 0 (or a tuple of them), lr > 0, "
                "lr_start None or >= lr, lr_half >= 1"
            )
        if max_contexts is not None and (not isinstance(max_contexts, int) or max_contexts < 1):
            raise ValueError(f"max_contexts={max_contexts!r} is invalid: None (no bound) or an int >= 1")
        if count_limit is not None and (not isinstance(count_limit, int) or count_limit < 1):
            raise ValueError(f"count_limit={count_limit!r} is invalid: None (no limit) or an int >= 1")
        self.orders, self.alphas, self.lr = tuple(sorted(set(orders))), tuple(map(float, alphas)), float(lr)
        self.max_contexts, self.order_sets = max_contexts, bool(order_sets)
        self.lr_start, self.lr_half, self.count_limit = lr_start, int(lr_half), count_limit
        self.steps: dict[object, int] = {}  # `lr_start`: (0, key) / (1, order key) -> steps taken
        self.text: list[int] = []
        # per order n: hash(the last n tokens) -> `symbol * SINGLE + count` while one symbol followed
        # it, else {symbol: count} (a 64-bit hash instead of the tuple: a quarter of the memory; two
        # contexts that collide share their counts, on both sides of the codec alike)
        self.counts: dict[int, dict[int, int | dict[int, int]]] = {n: {} for n in self.orders}
        self.size = 0  # contexts kept, all orders together
        self.weights: dict[object, np.ndarray] = {}  # key -> (2 + len(orders) * len(alphas),)
        # `order_sets`: weights added to those of `key`, by (the longest order whose context was seen,
        # whether one symbol alone followed it so far); they start at 0
        self.order_weights: dict[tuple[int, bool], np.ndarray] = {}
        self.pending: tuple | None = None  # (key, order key, L (P, K), p (K,), contexts) of the last mix
        # (order, context, symbol) counted, or (order, context, -1, the stored value) before a halving
        self.journal: list[tuple] | None = None

    def _contexts(self, tag: tuple) -> dict[int, int]:
        """Each order's context (its hash): `tag` + the last n tokens of the text (orders longer than
        the text left out; order 0 is the tag alone)."""
        n_text = len(self.text)
        return {n: hash(tag + tuple(self.text[n_text - n :])) for n in self.orders if n <= n_text}

    def mix(self, q: np.ndarray, raw: np.ndarray, key: object = 0, tag: tuple = ()) -> np.ndarray:
        """q, raw: (K,) or (1, K) float64 distributions of the next symbol (q: the file models' so far;
        raw: the model's own) -> p, q's shape. `tag`: what else the contexts are keyed by (the file
        models' token contexts: the segment's code and the token's offset in it)."""
        row = q.reshape(-1)
        A = len(self.alphas)
        L = np.zeros((2 + len(self.orders) * A, row.shape[0]))  # (P, K); rows of unseen orders stay 0
        log_q = L[0]
        np.log(row, out=log_q)
        np.subtract(np.log(raw.reshape(-1)), log_q, out=L[1])
        contexts = self._contexts(tag)
        longest = (0, False)  # (1 + the index of the longest order seen, whether one symbol followed it)
        for i, n in enumerate(self.orders):
            seen = self.counts[n].get(contexts[n]) if n in contexts else None
            if seen is None:
                continue
            counts = np.zeros_like(row)
            if isinstance(seen, int):
                counts[seen // SINGLE] = seen % SINGLE
            else:
                for symbol, c in seen.items():
                    counts[symbol] = c
            total = _sightings(seen)
            for j, alpha in enumerate(self.alphas):
                np.subtract(np.log((counts + alpha * row) / (total + alpha)), log_q, out=L[2 + i * A + j])
            longest = (i + 1, isinstance(seen, int))
        order_key = longest if self.order_sets else None
        z = self._weights(key, order_key) @ L  # (K,)
        p = np.exp(z - z.max())
        p /= p.sum()
        self.pending = (key, order_key, L, p, contexts)
        return p.reshape(q.shape)

    def _weights(self, key: object, order_key: tuple | None = None) -> np.ndarray:
        """The weights of set `key`, (1, 0, ..., 0) (i.e. p = q) until its first update, plus those of
        `order_key` (`order_sets`; 0 until its first update)."""
        w = self.weights.get(key)
        if w is None:
            w = np.zeros(2 + len(self.orders) * len(self.alphas))
            w[0] = 1.0
        if order_key is not None and order_key in self.order_weights:
            w = w + self.order_weights[order_key]
        return w

    def update(self, code: int, tag: tuple = ()) -> None:
        """The symbol that came (`tag` as at its `mix`): a step for the last `mix`'s weights, a count
        under each context."""
        code = int(code)
        contexts = None
        if self.pending is not None:  # its contexts are this update's: the text has not moved since
            key, order_key, L, p, contexts = self.pending
            grad = L[:, code] - L @ p  # (P,) the gradient of log p(code)
            self.weights[key] = self._weights(key) + self._lr((0, key)) * grad
            if order_key is not None:
                self.order_weights[order_key] = (
                    self.order_weights.get(order_key, 0.0) + self._lr((1, order_key)) * grad
                )
            self.pending = None
        for n, context in (contexts if contexts is not None else self._contexts(tag)).items():
            table = self.counts[n]
            seen = table.get(context)
            if seen is None:
                if self.max_contexts is not None and self.size >= self.max_contexts:
                    continue  # full: no new contexts
                table[context] = code * SINGLE + 1
                self.size += 1
            elif isinstance(seen, int):
                if seen // SINGLE == code:
                    table[context] = seen + 1
                else:
                    table[context] = {seen // SINGLE: seen % SINGLE, code: 1}
            else:
                seen[code] = seen.get(code, 0) + 1
            if self.journal is not None:
                self.journal.append((n, context, code))
            if self.count_limit is not None:
                self._halve_past_limit(n, context, code)

    def _halve_past_limit(self, n: int, context: int, code: int) -> None:
        """`count_limit`: halve the counts of order n's `context` once they sum past it (journaled as
        the value before, which `restore` puts back)."""
        table = self.counts[n]
        seen = table[context]  # `update` just counted it
        if _sightings(seen) <= self.count_limit:
            return
        if self.journal is not None:  # `seen` itself: the table gets a new value below
            self.journal.append((n, context, -1, seen))
        if isinstance(seen, int):
            table[context] = seen // SINGLE * SINGLE + (seen % SINGLE + 1) // 2
        else:
            _store(table, context, {s: c // 2 for s, c in seen.items() if c // 2} or {code: 1})

    def _lr(self, counter: tuple) -> float:
        """The learning rate of a weight set's next step: `lr`, or with `lr_start` one that falls from
        it towards `lr`, halfway after `lr_half` steps of the set. lr = 1e-3, lr_start = 5e-3,
        lr_half = 256: 5e-3 at the first step, 3e-3 at the 257th."""
        if self.lr_start is None:
            return self.lr
        n = self.steps.get(counter, 0)
        self.steps[counter] = n + 1
        return self.lr + (self.lr_start - self.lr) * self.lr_half / (self.lr_half + n)

    def trim(self) -> None:
        """Room for new contexts: once the contexts kept fill more than 3/4 of `max_contexts`, drop
        those seen once, then those seen at most 2, 4, ... times, until at most half remain (most long
        contexts are seen once and never again). The same on both sides of the codec (between chunks);
        not undone by `restore` (the journal starts again at the next `checkpoint`).

        max_contexts = 8 with 7 contexts seen 1, 1, 1, 1, 2, 3, 5 times: the four seen once go, 3 remain.
        """
        if self.max_contexts is None or 4 * self.size <= 3 * self.max_contexts:
            return
        limit = 1
        while 2 * self.size > self.max_contexts:
            for table in self.counts.values():
                for context in [c for c, v in table.items() if _sightings(v) <= limit]:
                    del table[context]
            self.size = sum(len(table) for table in self.counts.values())
            limit *= 2
        self.journal, self.pending = None, None

    def see(self, token: int) -> None:
        """One more token of the text."""
        self.text.append(int(token))

    def checkpoint(self) -> tuple:
        """A mark to `restore` to; counts are journaled from here on."""
        self.journal = []
        return (len(self.text), _copy(self.weights), _copy(self.order_weights), dict(self.steps))

    def restore(self, mark: tuple) -> None:
        """Back to the state at `mark` (the last `checkpoint`)."""
        n_text, weights, order_weights, steps = mark
        for n, context, code, *before in reversed(self.journal or []):
            table = self.counts[n]
            if code < 0:  # a halving (`count_limit`): the value before it
                table[context] = before[0]
                continue
            seen = table[context]
            if isinstance(seen, int):
                seen -= 1
                if seen % SINGLE:
                    table[context] = seen
                else:
                    del table[context]
                    self.size -= 1
                continue
            seen[code] -= 1
            if not seen[code]:
                del seen[code]
            _store(table, context, seen)  # packed again if one symbol is left, as at the mark
        del self.text[n_text:]
        self.weights, self.order_weights, self.steps = _copy(weights), _copy(order_weights), dict(steps)
        self.journal, self.pending = [], None


def _store(table: dict, context: int, counts: dict[int, int]) -> None:
    """`counts` under `context`: packed as `symbol * SINGLE + count` if one symbol alone, else the dict."""
    if len(counts) == 1:
        ((symbol, c),) = counts.items()
        table[context] = symbol * SINGLE + c
    else:
        table[context] = counts


def _sightings(value: int | dict[int, int]) -> int:
    """How often a context was seen: its stored counts (`SINGLE`-packed or a dict) summed."""
    return value % SINGLE if isinstance(value, int) else sum(value.values())


def _copy(weights: dict) -> dict:
    """A weights table with its arrays copied (a checkpoint's, or restored from one)."""
    return {k: w.copy() for k, w in weights.items()}
