"""What the codec learns from a file as it goes, so that what the file said before costs less again.

The codec (`hier_ae.codes.codec`) prices each chunk's top codes under the top LM and its
tokens under the decoder, both from an empty context. `FileModels` carries the file so far across
chunks, on both sides of the codec alike:

- over the top codes, a cache of what followed each pair of codes (`ContextCounts(order=2, k=32)`)
  and on top of it a match model (`MatchModel(min_len=2)`: the code that followed the last occurrence
  of the recent codes);
- over each level's tokens, a match model (`MatchModel(min_len=5)`).

The constants were chosen on the tuning halves of the three corpora's val.txt (#1/2; CF1 in
bench/experiments.md), with the top codes of the shipped codec recipes.

`checkpoint()` / `restore(marks)` undo what was learnt since the marks (a chunk stored raw, which the
decompressor never decodes; codes tried under the top LM and then coded flat).
"""

from __future__ import annotations

import numpy as np

from .context_counts import ContextCounts
from .match_model import MatchModel

CODE_ORDER, CODE_K = 2, 32.0  # the cache over top codes: contexts of 2 codes, half weight at 32 sightings
CODE_MIN_LEN = 2  # the match model over top codes (about 2 bytes each)
TOKEN_MIN_LEN = 5  # the match models over tokens (bytes at level 0)


class FileModels:
    """`mix_code(q)` / `update_code(c)` for the top codes, `mix_token(level, q)` /
    `update_token(level, t)` for each level's tokens, in the order the codec codes them."""

    def __init__(self, num_levels: int):
        self.code_models = [ContextCounts(CODE_ORDER, CODE_K), MatchModel(CODE_MIN_LEN)]
        self.token_models = [MatchModel(TOKEN_MIN_LEN) for _ in range(num_levels)]

    def mix_code(self, q: np.ndarray) -> np.ndarray:
        """q: the top LM's (K,) or (1, K) distribution of the next code -> the file's blended in."""
        for m in self.code_models:
            q = m.mix(q)
        return q

    def update_code(self, code: int) -> None:
        for m in self.code_models:
            m.update(code)

    def mix_token(self, level: int, q: np.ndarray) -> np.ndarray:
        return self.token_models[level].mix(q)

    def update_token(self, level: int, token: int) -> None:
        self.token_models[level].update(token)

    def checkpoint(self) -> list:
        return [m.checkpoint() for m in (*self.code_models, *self.token_models)]

    def restore(self, marks: list, codes_only: bool = False) -> None:
        """Back to `marks` (the last `checkpoint`); `codes_only`: the code models alone."""
        models = (*self.code_models, *self.token_models)
        for m, mark in list(zip(models, marks))[: len(self.code_models) if codes_only else None]:
            m.restore(mark)
