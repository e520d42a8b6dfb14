"""hier_ae.codes.{match_model, context_counts, text_contexts, file_models}: what the codec learns from a
file."""

from __future__ import annotations

import numpy as np
import pytest

from hier_ae.codes.context_counts import ContextCounts
from hier_ae.codes.file_models import MAX_CONTEXTS, FileModels, share_bucket
from hier_ae.codes.match_model import MatchModel, length_bucket
from hier_ae.codes.text_contexts import SINGLE, TextContexts

A, B, C = 0, 1, 2


def test_match_model_docstring_example():
    mm = MatchModel(min_len=2)
    q = np.array([0.45, 0.45, 0.1])
    for s in (A, B, C, A, B):
        assert mm.mix(q) is q  # no earlier occurrence of the recent symbols yet
        mm.update(s)
    assert (mm.ptr, mm.length) == (2, 2)  # (a, b) occurred at 0-1, followed by c at 2
    out = mm.mix(q)
    assert out[C] == pytest.approx(0.5)  # no history: h = 0.5 beats q[c] = 0.1
    assert out[:2] == pytest.approx([0.25, 0.25])  # the others share 0.5 as they shared 0.9
    mm.update(C)
    assert (mm.ptr, mm.length, mm.stream[mm.ptr]) == (3, 3, A)


def test_match_model_never_lowers_a_sure_prediction_and_learns_from_hits():
    mm = MatchModel(min_len=1)
    for s in (B, A, B):
        mm.update(s)  # (b) occurred before, followed by a: predicts a
    sure = np.array([0.98, 0.01, 0.01])
    assert mm.mix(sure) is sure  # q[a] = 0.98 beats the history's h = 0.5: q as it is
    unsure = np.array([0.3, 0.4, 0.3])
    assert mm.mix(unsure)[A] == pytest.approx(0.5)
    for _ in range(20):  # "a b a b ...": every prediction right
        mm.mix(unsure)
        mm.update(A)
        mm.mix(unsure)
        mm.update(B)
    out = mm.mix(unsure)
    assert out[A] > 0.8 and out.sum() == pytest.approx(1.0)  # from 0.5 with no history


@pytest.mark.parametrize("longer", [(), (4, 8)])
def test_match_model_restore_undoes_everything(longer):
    rng = np.random.default_rng(0)
    stream = rng.integers(0, 4, size=60).tolist()
    mm = MatchModel(min_len=2, longer=longer, extra_bins=2)
    for s in stream[:30]:
        mm.mix(np.full(4, 0.25), extra=s % 2)
        mm.update(s)
    mark = mm.checkpoint()

    def tables():
        return {n: dict(t) for n, t in mm.tables.items()}

    state = (list(mm.stream), tables(), mm.ptr, mm.length, mm.hits.copy(), mm.tries.copy())
    for s in stream[30:]:
        mm.mix(np.full(4, 0.25), extra=s % 2)
        mm.update(s)
    mm.restore(mark)
    assert (list(mm.stream), tables(), mm.ptr, mm.length) == state[:4]
    assert np.array_equal(mm.hits, state[4]) and np.array_equal(mm.tries, state[5])
    assert all(list(mm.tables[n]) == list(state[1][n]) for n in mm.tables)  # insertion order too


def test_match_model_takes_the_longest_context_that_occurred():
    """Stream u v w c1 | v w c2 | u v z | u v w ?: at the last w the running match (u v, last
    followed by z) has just failed, and a fresh one is looked up. By the last 2 symbols, (v, w) last
    occurred at 4-5, followed by c2; a model that also keeps 3-symbol contexts finds (u, v, w) at
    0-2 first, followed by c1, the longer shared past."""
    U, V, W, C1, C2, Z = 3, 4, 5, 6, 7, 8
    stream = [U, V, W, C1, V, W, C2, U, V, Z, U, V, W]
    short, long = MatchModel(min_len=2), MatchModel(min_len=2, longer=(3,))
    for s in stream:
        short.update(s)
        long.update(s)
    assert (short.prediction, short.length) == (C2, 2)
    assert (long.prediction, long.length) == (C1, 3)


def test_match_model_keeps_hit_rates_apart_by_extra():
    """A prediction's hit or miss is counted under the `extra` bucket it was mixed with."""
    mm = MatchModel(min_len=1, extra_bins=2)
    q = np.full(3, 1 / 3)
    for s in (A, B, A):
        mm.update(s)
    assert mm.prediction == B  # "a" was followed by b
    mm.mix(q, extra=1)
    mm.update(B)  # right, counted under extra 1
    assert mm.tries[..., 1].sum() == mm.hits[..., 1].sum() == 1 and mm.tries[..., 0].sum() == 0
    assert mm.prediction == A  # "a b" goes on as it did: a
    mm.mix(q, extra=0)
    mm.update(C)  # wrong, counted under extra 0
    assert mm.tries[..., 0].sum() == 1 and mm.hits[..., 0].sum() == 0
    with pytest.raises(ValueError, match="longer"):
        MatchModel(min_len=2, longer=(2,))
    with pytest.raises(ValueError, match="extra_bins"):
        MatchModel(extra_bins=0)


def test_length_buckets():
    assert [length_bucket(n) for n in (0, 7, 8, 16, 32, 10_000)] == [0, 7, 8, 12, 16, 31]


def test_context_counts_docstring_example():
    cc = ContextCounts(order=2, k=2.0)
    q = np.array([0.2, 0.2, 0.6])
    for s in (A, B, C, A, B):
        assert cc.mix(q) is q or cc.counts.get(tuple(cc.last)) is None
        cc.update(s)
    assert cc.mix(q) == pytest.approx([0.2 * 2 / 3, 0.2 * 2 / 3, 0.6 * 2 / 3 + 1 / 3])
    assert cc.mix(q[None]).shape == (1, 3)


def test_context_counts_restore_keeps_insertion_order():
    """Rolled-back counts leave the dicts as a side that never saw them has them, insertion order
    included (the blend sums in that order)."""
    rng = np.random.default_rng(1)
    stream = rng.integers(0, 5, size=80).tolist()
    a, b = ContextCounts(2, 4.0), ContextCounts(2, 4.0)
    for s in stream[:40]:
        a.update(s)
        b.update(s)
    mark = a.checkpoint()
    for s in stream[40:60]:
        a.update(s)
    a.restore(mark)
    for s in stream[60:]:  # both go on with the same symbols
        a.update(s)
        b.update(s)
    assert list(a.counts) == list(b.counts)
    assert all(list(a.counts[k].items()) == list(b.counts[k].items()) for k in a.counts)
    q = np.full(5, 0.2)
    assert np.array_equal(a.mix(q), b.mix(q))  # bit for bit


def test_file_models_bad_arguments():
    with pytest.raises(ValueError, match="min_len"):
        MatchModel(0)
    with pytest.raises(ValueError, match="order"):
        ContextCounts(0)
    fm = FileModels(num_levels=2)
    assert len(fm.token_models) == 2 and fm.version == 6 and fm.interleaved and fm.top == 1
    assert fm.text.count_limit == 30 and FileModels(1, version=5).text.count_limit is None
    assert fm.text.max_contexts == MAX_CONTEXTS and FileModels(1, version=3).text.max_contexts is None
    assert not FileModels(num_levels=1, version=2).interleaved
    with pytest.raises(ValueError, match="version"):
        FileModels(num_levels=1, version=7)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="max_contexts"):
            TextContexts((1,), max_contexts=bad)
        with pytest.raises(ValueError, match="count_limit"):
            TextContexts((1,), count_limit=bad)
    for bad in [
        dict(orders=()),
        dict(orders=(-1, 2)),
        dict(orders=(2,), alpha=0.0),
        dict(orders=(2,), alpha=()),
        dict(orders=(2,), alpha=(0.5, -1.0)),
        dict(orders=(2,), lr=-1.0),
        dict(orders=(2,), lr=0.01, lr_start=0.001),
        dict(orders=(2,), lr_half=0),
    ]:
        with pytest.raises(ValueError, match="orders"):
            TextContexts(**bad)


def test_context_counts_share_and_its_buckets():
    """The docstring's stream a b c a b: the context (a, b) was followed by c once."""
    cc = ContextCounts(order=2, k=2.0)
    assert cc.share(C) is None  # no context yet
    for s in (A, B, C, A, B):
        cc.update(s)
    assert (cc.share(C), cc.share(A)) == (1.0, 0.0)
    assert [share_bucket(x) for x in (None, 0.0, 0.25, 0.5, 0.89, 0.9, 1.0)] == [0, 1, 2, 3, 3, 4, 4]


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6])
def test_file_models_make_a_repeated_stream_cheap_and_stay_a_distribution(version):
    """A random code stream, then the same again: the second time costs a small fraction of the first
    under a flat model with the file models in, and every blended row is a distribution."""
    rng = np.random.default_rng(2)
    K = 64
    stream = rng.integers(0, K, size=300).tolist() * 2
    fm = FileModels(num_levels=1, version=version)
    bits = []
    for s in stream:
        p = fm.mix_code(np.full(K, 1.0 / K))
        assert p.sum() == pytest.approx(1.0) and (p > 0).all()
        bits.append(-np.log2(p[s]))
        fm.update_code(s)
    first, second = sum(bits[:300]), sum(bits[300:])
    assert first == pytest.approx(300 * 6.0, rel=0.02)
    assert second < 0.1 * first


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6])
def test_token_match_models_price_a_repeat_cheaply(version):
    """The match models over tokens (one per level): a repeated random byte stream under a flat
    decoder costs a small fraction the second time; version 2 keeps its hit rates in 16 q-bins."""
    from hier_ae.codes.file_models import TOKEN_Q_BINS

    rng = np.random.default_rng(3)
    V = 259
    stream = rng.integers(3, V, size=400).tolist() * 2
    fm = FileModels(num_levels=2, version=version)
    assert fm.token_models[1].hits.shape[1] == TOKEN_Q_BINS[version] == (4 if version == 1 else 16)
    bits = []
    for t in stream:
        p = fm.mix_token(0, np.full(V, 1.0 / V))
        assert p.sum() == pytest.approx(1.0)
        bits.append(-np.log2(p[t]))
        fm.update_token(0, t)
    assert sum(bits[400:]) < 0.1 * sum(bits[:400])
    assert fm.token_models[1].stream == []  # level 1 saw nothing


def test_text_contexts_docstring_example():
    """Text ... 7 8 | code 1 | 9 7 8 | ?: the context (7, 8) was followed by code 1 once, so with
    alpha = 1 and q = (0.5, 0.5) the order-2 counts say (0.25, 0.75); with w = (1, 0, 1) p is that."""
    tc = TextContexts(orders=(2,), alpha=1.0)
    q = np.array([0.5, 0.5])
    for t in (7, 8):
        tc.see(t)
    assert np.array_equal(tc.mix(q, q), q)  # nothing counted yet: p = q
    tc.update(1)
    for t in (9, 7, 8):
        tc.see(t)
    tc.weights[0] = np.array([1.0, 0.0, 1.0])
    p = tc.mix(q, q)
    assert p == pytest.approx([0.25, 0.75])
    tc.weights[0] = np.array([1.0, 0.0, 0.0])  # the starting weights: q itself
    assert tc.mix(q, q) == pytest.approx(q)


def test_text_contexts_two_alphas_and_order_sets_docstring_example():
    """Version 5's rows and weights (`TextContexts` docstring): orders (1, 2), alphas (1, 0.25); the
    text 5 6 | code 0 | 7 6 | ?: order 1's context (6,) was followed by code 0 once, order 2's (7, 6)
    never. Rows: log q, log r - log q, order 1 at alpha 1 and 0.25, order 2 (unseen) zeros twice;
    the order key is (1, True): the longest order seen is the first, followed by one code alone."""
    tc = TextContexts(orders=(1, 2), alpha=(1.0, 0.25), order_sets=True)
    q = np.array([0.5, 0.5])
    for t in (5, 6):
        tc.see(t)
    tc.mix(q, q)
    tc.update(0)
    for t in (7, 6):
        tc.see(t)
    p = tc.mix(q, q)
    key, order_key, L, _, _ = tc.pending
    assert order_key == (1, True) and L.shape == (6, 2)
    assert np.exp(L[2] + np.log(q)) == pytest.approx([0.75, 0.25])  # (1 + 0.5) / 2, 0.5 / 2
    assert np.exp(L[3] + np.log(q)) == pytest.approx([0.9, 0.1])  # (1 + 0.125) / 1.25, 0.125 / 1.25
    assert not L[4:].any()
    assert p == pytest.approx(q)  # the starting weights (1, 0, ...), the order set's 0 added
    tc.update(0)  # both weight sets take the same step; the order set's starts from 0
    step = tc.order_weights[(1, True)]
    assert step[2] > 0 and np.array_equal(tc.weights[0], np.eye(6)[0] + step)


def test_text_contexts_learning_rate_falls_from_lr_start():
    """`_lr` docstring: lr 1e-3, lr_start 5e-3, lr_half 256: 5e-3 at a set's first step, 3e-3 at its
    257th; each weight set counts its own steps; without lr_start the rate stays lr."""
    tc = TextContexts(orders=(1,), lr=1e-3, lr_start=5e-3, lr_half=256)
    assert tc._lr((0, "a")) == pytest.approx(5e-3)
    for _ in range(255):
        tc._lr((0, "a"))
    assert tc._lr((0, "a")) == pytest.approx(3e-3) and tc._lr((1, "b")) == pytest.approx(5e-3)
    assert TextContexts(orders=(1,), lr=1e-3)._lr((0, "a")) == 1e-3


def test_text_contexts_learn_to_trust_the_text():
    """Codes that the last two tokens determine, under a flat q: the text contexts' weights grow
    and the codes come to cost a small fraction of log2 K; every p is a distribution."""
    rng = np.random.default_rng(4)
    K, tc = 16, TextContexts(orders=(1, 2, 4), lr=0.02)
    q = np.full(K, 1.0 / K)
    bits = []
    for _ in range(600):
        a, b = (int(x) for x in rng.integers(0, 8, size=2))
        tc.see(a)
        tc.see(b)
        code = (a * 8 + b) % K
        p = tc.mix(q, q)
        assert p.sum() == pytest.approx(1.0) and (p > 0).all()
        bits.append(-np.log2(p[code]))
        tc.update(code)
    assert bits[0] == pytest.approx(4.0) and np.mean(bits[-100:]) < 1.0  # log2 K at first
    assert tc.weights[0][2:].sum() > 0.5  # the counts' rows gained weight


@pytest.mark.parametrize(
    "alpha, order_sets, lr_start, limit",
    [
        (0.5, False, None, None),
        ((0.5, 0.0625), True, None, None),
        (0.5, True, 0.02, None),
        (0.5, True, 0.02, 3),
    ],
)
def test_text_contexts_restore_undoes_everything(alpha, order_sets, lr_start, limit):
    """limit: `count_limit`, halvings inside the restored stretch are undone too."""
    rng = np.random.default_rng(5)
    K = 8
    a, b = (
        TextContexts(
            orders=(1, 3), alpha=alpha, order_sets=order_sets, lr_start=lr_start, lr_half=8, count_limit=limit
        )
        for _ in range(2)
    )
    q = np.full(K, 1.0 / K)

    def feed(tc, items):
        for t, c in items:
            tc.see(t)
            tc.mix(q, q, key=c % 2)
            tc.update(c)

    first = [(int(t), int(c)) for t, c in zip(rng.integers(0, 5, 40), rng.integers(0, K, 40))]
    later = [(int(t), int(c)) for t, c in zip(rng.integers(0, 5, 30), rng.integers(0, K, 30))]
    feed(a, first)
    feed(b, first)
    mark = a.checkpoint()
    start = len(a.journal)
    feed(a, later)
    halvings = sum(code < 0 for _, _, code, *_ in a.journal[start:])
    assert (halvings > 0) == (limit is not None)
    a.restore(mark)
    assert a.text == b.text and a.counts == b.counts and a.size == b.size
    assert any(isinstance(v, dict) for n in b.counts for v in b.counts[n].values())  # both storages
    assert all(  # stored as before: one symbol packed in an int, several in a dict in the same order
        type(a.counts[n][k]) is type(v)
        and (isinstance(v, int) or list(a.counts[n][k].items()) == list(v.items()))
        for n in b.counts
        for k, v in b.counts[n].items()
    )
    for table in ("weights", "order_weights"):
        wa, wb = getattr(a, table), getattr(b, table)
        assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert bool(b.order_weights) == order_sets and a.steps == b.steps and bool(b.steps) == bool(lr_start)
    feed(a, later)
    feed(b, later)
    tail = (9, 1)
    a.see(tail[0])
    b.see(tail[0])
    assert np.array_equal(a.mix(q, q, key=1), b.mix(q, q, key=1))  # bit for bit


def test_text_contexts_count_limit_docstring_example():
    """count_limit = 4: (code 3: 3, code 5: 1) seeing code 3 again sums 5 and becomes (code 3: 2),
    stored as one symbol; one symbol alone seen 5 times becomes 3; a context at the limit is kept."""
    tc = TextContexts(orders=(1,), count_limit=4)
    ctx = hash((7,))
    for code in (3, 3, 3, 5):
        tc.see(7)
        tc.update(code)
    assert tc.counts[1][ctx] == {3: 3, 5: 1}  # 4 sightings: at the limit, kept
    tc.see(7)
    tc.update(3)
    assert tc.counts[1][ctx] == 3 * SINGLE + 2  # 5 > 4: halved, 5's 1 // 2 = 0 dropped
    fresh = TextContexts(orders=(1,), count_limit=4)
    for _ in range(5):
        fresh.see(9)
        fresh.update(2)
    assert fresh.counts[1][hash((9,))] == 2 * SINGLE + 3  # 5 > 4: (5 + 1) // 2


def test_text_contexts_bound_keeps_memory_and_the_contexts_it_has():
    """With `max_contexts` = 20, a stream of new contexts: the contexts kept stop at 20, those kept go
    on counting, and until the bound is reached p is the unbounded one's bit for bit; a restore gives
    the contexts added since the mark back."""
    rng = np.random.default_rng(7)
    K = 8
    q = np.full(K, 1.0 / K)
    free, bound = TextContexts(orders=(1, 2)), TextContexts(orders=(1, 2), max_contexts=20)
    stream = [(int(t), int(c)) for t, c in zip(rng.integers(0, 6, 200), rng.integers(0, K, 200))]
    for t, c in stream:
        for tc in (free, bound):
            tc.see(t)
        p_free, p_bound = free.mix(q, q), bound.mix(q, q)
        if free.size <= 20:
            assert np.array_equal(p_free, p_bound)
        free.update(c)
        bound.update(c)
        assert bound.size == min(20, free.size) == sum(len(d) for d in bound.counts.values())
    assert free.size > 20
    kept = {(n, k) for n in bound.counts for k in bound.counts[n]}
    assert kept <= {(n, k) for n in free.counts for k in free.counts[n]}
    total = {
        (n, k): (v % SINGLE if isinstance(v, int) else sum(v.values()))
        for n in bound.counts
        for k, v in bound.counts[n].items()
    }
    assert sum(total.values()) > 20 * 2  # the kept contexts counted on after the bound
    small = TextContexts(orders=(1,), max_contexts=3)
    small.see(1)
    small.update(2)  # after the token 1 came symbol 2
    mark = small.checkpoint()
    for t in (3, 4, 5):
        small.see(t)
        small.update(t)
    assert small.size == 3
    small.restore(mark)
    assert small.size == 1 and small.counts[1] == {hash((1,)): 2 * SINGLE + 1}


def test_text_contexts_trim_drops_the_least_seen():
    """trim's docstring example: max_contexts = 8 and 7 contexts seen 1, 1, 1, 1, 2, 3, 5 times (more
    than 3/4 of 8): the four seen once go and 3 remain; at 7 of 10 (under 3/4) nothing goes."""
    for cap, left in ((8, [2, 3, 5]), (10, [1, 1, 1, 1, 2, 3, 5])):
        tc = TextContexts(orders=(1,), max_contexts=cap)
        for token, times in zip(range(1, 8), (1, 1, 1, 1, 2, 3, 5)):
            for _ in range(times):
                tc.see(token)  # the context (token,) ...
                tc.update(0)  # ... followed by symbol 0
        tc.trim()
        assert tc.size == len(left) and sorted(v % SINGLE for v in tc.counts[1].values()) == left
    everything_twice = TextContexts(orders=(1,), max_contexts=3)
    for token in (1, 2, 3, 1, 2, 3):
        everything_twice.see(token)
        everything_twice.update(token)
    everything_twice.trim()  # none seen once: those seen at most twice go, all of them
    assert everything_twice.size == 0 and everything_twice.counts[1] == {}
    assert FileModels(1, version=3).text.max_contexts is None  # version 3 never trims


def test_file_models_version_4_codes_as_version_3_below_its_bound():
    """The same code and token stream under versions 3 and 4: the same probabilities to the bit
    (the bound, 2**21 contexts, is far off)."""
    rng = np.random.default_rng(8)
    K, V = 16, 259
    a, b = FileModels(num_levels=1, version=3), FileModels(num_levels=1, version=4)
    for c in rng.integers(0, K, size=100).tolist():
        assert np.array_equal(a.mix_code(np.full(K, 1.0 / K)), b.mix_code(np.full(K, 1.0 / K)))
        a.update_code(c)
        b.update_code(c)
        for t in rng.integers(3, 12, size=3).tolist():
            q = rng.dirichlet(np.ones(V))
            assert np.array_equal(a.mix_token(0, q), b.mix_token(0, q))
            a.update_token(0, t)
            b.update_token(0, t)


def test_file_models_version_3_read_the_top_levels_tokens():
    """Version 3's text is the top level's token stream: level 0's tokens of a two-level model are
    not in it; its checkpoint / restore takes the text back with the codes."""
    fm = FileModels(num_levels=2, version=3)
    for t in (5, 6, 7):
        fm.update_token(0, t)
    fm.update_token(1, 9)
    assert fm.text.text == [9]
    marks = fm.checkpoint()
    fm.mix_code(np.full(4, 0.25))
    fm.update_code(2)
    fm.update_token(1, 3)
    fm.restore(marks)
    assert fm.text.text == [9] and fm.text.counts[1] == {} and fm.match.stream == []


def test_file_models_version_3_learn_each_codes_spelling():
    """Codes that each stand for one spelling (their segment's tokens), in a random order: version 3's
    token contexts keyed by the segment's code and offset learn the spellings, so under a flat decoder
    the tokens come to cost a fraction of a bit where version 2's match model pays several bits."""
    rng = np.random.default_rng(6)
    K, V = 8, 259
    spelling = [rng.integers(3, V, size=3).tolist() for _ in range(K)]
    order = rng.integers(0, K, size=300).tolist()
    late = {}
    for version in (2, 3):
        fm, bits = FileModels(num_levels=1, version=version), []
        for c in order:
            fm.mix_code(np.full(K, 1.0 / K))
            fm.update_code(c)
            for t in spelling[c]:
                p = fm.mix_token(0, np.full(V, 1.0 / V))
                assert p.sum() == pytest.approx(1.0) and (p > 0).all()
                bits.append(-np.log2(p[t]))
                fm.update_token(0, t)
        late[version] = np.mean(bits[-300:])
    assert late[3] < 0.5 and late[3] < 0.2 * late[2], late
