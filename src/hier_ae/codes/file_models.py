"""What the codec learns from a file as it goes, so that what the file said before costs less again.

The codec (`hier_ae.codes.codec`) prices each chunk's top codes under the top LM and its
tokens under the decoder, both from an empty context. `FileModels` carries the file so far across
chunks, on both sides of the codec alike:

- over the top codes, a cache of what followed each pair of codes (`ContextCounts(order=2, k=32)`)
  and on top of it a match model (the code that followed the last occurrence of the recent codes);
- over each level's tokens, a match model (`MatchModel(min_len=5)`).

Six versions, named by the codec's blob (its flags) so that a blob always decodes with the models it
was coded with: version 1 (CF0) looks matches up by the last 2 codes and keeps its hit rates by match
length and q[pred] in 4 bins; version 2 (CF2) looks up the last 8, then 4, then 2 codes,
and keeps its hit rates by match length (up to 32), q[pred] in 8 bins and what the cache says of the
prediction (an unseen context, none, under half, under 0.9, or more of its sightings followed by the
predicted code): the cache's opinion tells a near-repeat that is about to part from one that goes on.
Its token match models keep their hit rates by q[pred] in 16 bins instead of 4.
Version 3 (TX0, TX1) is version 2 plus `TextContexts`: the next code from the top level's tokens
before it (the bytes, for one level: what code followed each of the last 1 ... 32 tokens so far),
each level's next token from the last 1 ... 24 tokens, and the top level's next token from its
segment's code and offset with the last 0 ... 4 tokens, each mixed in with weights learnt as the
file goes (one set per match length bucket). Pricing a code with the text before it needs that
text, so the codec reads a chunk's codes one at a time between its segments
(`HierAEModel.decode(next_code=...)`) instead of all before the tokens; the blob's flags name it.
Version 4 is version 3 with each text contexts' memory bounded: at most
`MAX_CONTEXTS` contexts each (about 125 bytes a context; a level's byte tokens make about 2.0
contexts a byte of the code corpus, 4.2 of multilingual text: MX0 in bench/experiments.md): past
three quarters of it, the contexts seen least are dropped between chunks (`new_chunk`), and past the
bound itself new contexts are not added, so a long file costs at most ~0.26 GB a text contexts
instead of growing without end. Below 3/4 of the bound it codes exactly as version 3 does.
Version 5 (OS1) is version 4 with a second set of mixing weights in each text
contexts, picked by the longest order whose context was seen and whether one symbol alone followed
it (`TextContexts.order_sets`), added to the match-length bucket's; the tokens' contexts give the
mixer each order's counts at two alphas, 0.5 and 0.0625 (a small alpha trusts a context's counts
sooner: it pays on source code and loses on running English, RP1; the mixer weighs the two), and
each weight set's learning rate falls from version 4's 0.005 at its first step to a quarter of it
(0.00125; halfway after 256 steps), so short texts adapt as fast and long ones settle. On the
held-out halves of the code corpus and of Tiny Shakespeare it spends 2.8% and 1.2% fewer bits than
version 4 (OS1-OS2 in bench/experiments.md).
Version 6 (the default; SS3) is version 5 with each context's counts halved once they sum past 30
(`TextContexts.count_limit`): a context weighs what followed it lately over what followed it long ago.
On the held-out halves it spends 0.5% fewer bits than version 5 on code, 1.3% fewer on the
multilingual corpus's other scripts (never tuned on) and the same on Tiny Shakespeare (SS3).
The constants were chosen on the tuning halves of the three corpora's val.txt (#1/2; CF0, CF2 and
TX0-TX1 in bench/experiments.md; TX on the code corpus's; OS1-OS2 and SS3 on code's and Tiny
Shakespeare's),
with the top codes of the shipped codec recipes.

`checkpoint()` / `restore(marks)` undo what was learnt since the marks (a chunk stored raw, which the
decompressor never decodes; codes tried under the top LM and then coded flat).
"""

from __future__ import annotations

import numpy as np

from .context_counts import ContextCounts
from .match_model import MatchModel, length_bucket
from .text_contexts import TextContexts

CODE_ORDER, CODE_K = 2, 32.0  # the cache over top codes: contexts of 2 codes, half weight at 32 sightings
CODE_MIN_LEN = 2  # the match model over top codes (about 2 bytes each)
CODE_LONGER = (4, 8)  # version 2: longer contexts looked up first
TOKEN_MIN_LEN = 5  # the match models over tokens (bytes at level 0)
TOKEN_Q_BINS = {1: 4, 2: 16, 3: 16, 4: 16, 5: 16, 6: 16}  # by version: the q[pred] bins of their hit rates
TEXT_ORDERS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)  # version 3: the text contexts, in tokens
TOKEN_TEXT_ORDERS = (1, 2, 3, 4, 6, 8, 12, 16, 24)  # version 3: the tokens' text contexts
TOKEN_CODE_ORDERS = (0, 1, 2, 4)  # ... and those keyed by the segment's code and offset, + 0-4 tokens
TEXT_ALPHA, TEXT_LR = 0.5, 0.005
MAX_CONTEXTS = 1 << 21  # version 4: contexts kept by each text contexts (~0.26 GB), see `TextContexts`
V5_CODE_ALPHAS = (0.5,)  # version 5: the codes' text contexts' alphas (`TextContexts`)
V5_TOKEN_ALPHAS = (0.5, 0.0625)  # version 5: the tokens' (each order's counts at both, the mixer weighs them)
V5_CODE_LR = V5_TOKEN_LR = 0.00125  # version 5: their learning rates, after ...
V5_LR_START = 0.005  # ... starting at version 4's (each weight set's first step) ...
V5_LR_HALF = 256  # ... and halfway down after this many steps of the set
V5_ORDER_SETS = True  # version 5: weights also by the longest order seen (`TextContexts.order_sets`)
V6_COUNT_LIMIT = 30  # version 6: each context's counts halved once they sum past it (`TextContexts`)
VERSIONS = (1, 2, 3, 4, 5, 6)
LATEST = 6
# the versions whose codes are read between their segments (they price with the text)
INTERLEAVED = (3, 4, 5, 6)
SHARE_BINS = 5  # version 2's buckets of the cache's share for the predicted code (`share_bucket`)
MATCH_MAX_BUCKET = 16  # version 2 on: the code match model's length buckets above it share its counts


def share_bucket(share: float | None) -> int:
    """The cache's opinion of a prediction: 0 an unseen context, 1 never followed by it, 2 under half,
    3 under 0.9, 4 at least 0.9 of the context's sightings. share_bucket(0.25) = 2."""
    if share is None:
        return 0
    return 1 if share == 0 else 2 if share < 0.5 else 3 if share < 0.9 else 4


class FileModels:
    """`mix_code(q)` / `update_code(c)` for the top codes, `mix_token(level, q)` /
    `update_token(level, t)` for each level's tokens, in the order the codec codes them."""

    def __init__(self, num_levels: int, version: int = LATEST):
        if version not in VERSIONS:
            raise ValueError(f"file models version={version!r} is invalid: one of {VERSIONS}")
        self.version, self.top = version, num_levels - 1
        if version == 1:
            match = MatchModel(CODE_MIN_LEN)
        else:
            match = MatchModel(
                CODE_MIN_LEN, CODE_LONGER, q_bins=8, max_bucket=MATCH_MAX_BUCKET, extra_bins=SHARE_BINS
            )
        self.cache, self.match = ContextCounts(CODE_ORDER, CODE_K), match
        self.token_models = [
            MatchModel(TOKEN_MIN_LEN, q_bins=TOKEN_Q_BINS[version]) for _ in range(num_levels)
        ]
        # version 3: text contexts for the codes and for each level's tokens, and for the top level's
        # tokens contexts keyed by their segment's code and offset (the segment the last code opened)
        self.text = self.token_text = self.token_code = None
        if version >= 3:
            cap = MAX_CONTEXTS if version >= 4 else None
            code = token = (TEXT_ALPHA, TEXT_LR)  # (alpha, lr) of the codes' and the tokens' contexts
            extra = {}
            if version >= 5:
                code, token = (V5_CODE_ALPHAS, V5_CODE_LR), (V5_TOKEN_ALPHAS, V5_TOKEN_LR)
                extra = dict(order_sets=V5_ORDER_SETS, lr_start=V5_LR_START, lr_half=V5_LR_HALF)
            if version >= 6:
                extra["count_limit"] = V6_COUNT_LIMIT
            self.text = TextContexts(TEXT_ORDERS, *code, cap, **extra)
            self.token_text = [
                TextContexts(TOKEN_TEXT_ORDERS, *token, cap, **extra) for _ in range(num_levels)
            ]
            self.token_code = TextContexts(TOKEN_CODE_ORDERS, *token, cap, **extra)
        self.segment: tuple[int, int] | None = None  # (code, offset of the next top-level token)

    @property
    def interleaved(self) -> bool:
        """Whether the codec reads this version's codes between their segments (it prices with the text)."""
        return self.version in INTERLEAVED

    @property
    def code_models(self) -> list:
        """The models over the top codes, in the order they are updated and checkpointed."""
        return [self.cache, self.match] + ([self.text] if self.text is not None else [])

    @property
    def text_contexts(self) -> list:
        """Version 3 on: the text contexts over the codes, each level's tokens and the top level's
        tokens by their segment's code (none before version 3)."""
        return [] if self.text is None else [self.text, *self.token_text, self.token_code]

    @property
    def token_side(self) -> list:
        """The models over the tokens, checkpointed after the code models."""
        return [*self.token_models, *self.text_contexts[1:]]

    def mix_code(self, q: np.ndarray) -> np.ndarray:
        """q: the top LM's (K,) or (1, K) distribution of the next code -> the file's blended in."""
        raw = q
        q = self.cache.mix(q)
        pred = self.match.prediction
        extra = 0 if self.version == 1 or pred is None else share_bucket(self.cache.share(pred))
        q = self.match.mix(q, extra)
        if self.text is None:
            return q
        return self.text.mix(q, raw, _key(self.match, pred))

    def update_code(self, code: int) -> None:
        for m in self.code_models:
            m.update(code)
        if self.text is not None:  # the segment the code stands for opens (interleaved: its tokens come next)
            self.segment = (int(code), 0)

    def mix_token(self, level: int, q: np.ndarray) -> np.ndarray:
        """q: the decoder's (V,) or (1, V) distribution of level `level`'s next token -> the file's
        blended in."""
        match = self.token_models[level]
        pred = match.prediction
        p = match.mix(q)
        if self.token_text is None:
            return p
        key = _key(match, pred)
        p = self.token_text[level].mix(p, q, key)
        if level == self.top and self.segment is not None:
            p = self.token_code.mix(p, q, key, tag=self.segment)
        return p

    def update_token(self, level: int, token: int) -> None:
        self.token_models[level].update(token)
        if self.token_text is None:
            return
        self.token_text[level].update(token)
        self.token_text[level].see(token)
        if level == self.top:
            if self.segment is not None:
                self.token_code.update(token, tag=self.segment)
                self.segment = (self.segment[0], self.segment[1] + 1)
            self.token_code.see(token)
            self.text.see(token)

    def new_chunk(self) -> None:
        """Before each chunk, on both sides of the codec: version 4's text contexts make room
        (`TextContexts.trim`) once they near their bound."""
        if self.version >= 4:
            for tc in self.text_contexts:
                tc.trim()

    def checkpoint(self) -> list:
        return [m.checkpoint() for m in (*self.code_models, *self.token_side)] + [self.segment]

    def restore(self, marks: list, codes_only: bool = False) -> None:
        """Back to `marks` (the last `checkpoint`); `codes_only`: the code models alone (versions 1, 2)."""
        models = self.code_models if codes_only else [*self.code_models, *self.token_side]
        for m, mark in zip(models, marks):  # the marks list the code models first
            m.restore(mark)
        if not codes_only:
            self.segment = marks[-1]


def _key(match: MatchModel, pred: int | None) -> int:
    """Version 3's weight set for a text contexts' mix: the match model's length bucket, -1 without
    a prediction."""
    return -1 if pred is None else min(length_bucket(match.length), MATCH_MAX_BUCKET)
