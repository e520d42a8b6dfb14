"""hier_ae.codes.range_bytes: the range coder's sealed words cut to the fewest bytes that decode."""

from __future__ import annotations

import numpy as np
import pytest

from hier_ae.codes.range_bytes import RecordingEncoder, words_from_bytes

constriction = pytest.importorskip("constriction")
Categorical = constriction.stream.model.Categorical
Uniform = constriction.stream.model.Uniform


def decode(payload: bytes, calls) -> list[np.ndarray]:
    decoder = constriction.stream.queue.RangeDecoder(words_from_bytes(payload))
    return [decoder.decode(m, p) if p is not None else decoder.decode(m, len(s)) for m, s, p in calls]


def test_words_from_bytes_pads_the_last_word_with_zeros():
    assert words_from_bytes(b"").tolist() == []
    assert words_from_bytes(b"\x12\x34\x56\x78\x9a").tolist() == [0x12345678, 0x9A000000]
    assert words_from_bytes(b"\x12\x34\x56\x78").dtype == np.uint32


def test_docstring_example_sure_symbols_need_no_bytes():
    enc = RecordingEncoder()
    enc.encode(np.zeros(3, dtype=np.int32), Categorical(perfect=False), np.array([[0.999, 0.001]] * 3))
    assert enc.coder.get_compressed().tolist() == [0]
    assert enc.to_bytes() == b""


@pytest.mark.parametrize("seed", range(6))
def test_trimmed_stream_decodes_and_sits_within_two_bytes_of_the_ideal(seed):
    """Random messages, one call per symbol as the codec's token coder makes them, after a block of
    uniform digits as its flat codes: the cut decodes every call back, is never longer than the
    sealed words, and is at most two bytes above the ideal -sum log2 p (the sealed words pay up to
    about four)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 60))
    probs = rng.dirichlet(np.full(260, 0.1), size=n)  # (n, 260)
    symbols = np.array([rng.choice(260, p=p) for p in probs], dtype=np.int32)
    digits = rng.integers(0, 1000, size=4).astype(np.int32)
    model = Categorical(perfect=False)
    enc = RecordingEncoder()
    enc.encode(digits, Uniform(1000))
    for row, s in zip(probs, symbols):
        enc.encode([s], model, row[None])
    payload = enc.to_bytes()
    assert len(payload) <= 4 * len(enc.coder.get_compressed())
    decoder = constriction.stream.queue.RangeDecoder(words_from_bytes(payload))
    assert decoder.decode(Uniform(1000), 4).tolist() == digits.tolist()
    assert [int(decoder.decode(model, row[None])[0]) for row in probs] == symbols.tolist()
    ideal = 4 * np.log2(1000) - np.log2(probs[np.arange(n), symbols]).sum()
    assert 8 * len(payload) <= ideal + 16


def test_a_byte_shorter_does_not_decode():
    """The cut is the shortest: neither rounding of one byte fewer decodes the message."""
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(50), size=30)
    symbols = np.array([rng.choice(50, p=p) for p in probs], dtype=np.int32)
    enc = RecordingEncoder()
    enc.encode(symbols, Categorical(perfect=False), probs)
    payload = enc.to_bytes()
    assert decode(payload, enc.calls)[0].tolist() == symbols.tolist()
    shorter = payload[:-1]
    for cut in (shorter, (int.from_bytes(shorter, "big") + 1).to_bytes(len(shorter), "big")):
        assert decode(cut, enc.calls)[0].tolist() != symbols.tolist()


def test_calls_of_different_widths_under_one_model():
    """One Categorical object for tokens of two vocabularies (a two-level model's levels, interleaved
    as decode steps them): the calls are checked in order, never merged across widths."""
    rng = np.random.default_rng(3)
    model = Categorical(perfect=False)
    enc = RecordingEncoder()
    calls = []
    for width in [259, 259, 2051, 259, 2051, 2051]:
        p = rng.dirichlet(np.ones(width))[None]  # (1, width)
        s = int(rng.choice(width, p=p[0]))
        enc.encode([s], model, p)
        calls.append((s, p))
    payload = enc.to_bytes()
    decoder = constriction.stream.queue.RangeDecoder(words_from_bytes(payload))
    assert [int(decoder.decode(model, p)[0]) for _, p in calls] == [s for s, _ in calls]
