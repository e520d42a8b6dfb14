"""A range coder's output as the fewest bytes that still decode: constriction's words, trimmed.

`constriction`'s `RangeEncoder.get_compressed()` seals its stream in whole 32-bit words, and the
sealed value is not the shortest one inside the final interval: a short text pays up to about four
bytes beyond its information content (a 40-byte line coded at 3 bits a byte: 15 ideal bytes, 20
written). The decoder reads absent words as zeros, so any stream whose value, read as the binary
fraction 0.b_1 b_2 b_3 ... of its bytes, lies inside the final interval decodes the same symbols.

`RecordingEncoder` encodes as constriction's encoder does and remembers each call, so `to_bytes`
can cut the sealed stream to its first L bytes, L as small as it can be (a binary search, every
candidate checked by decoding the recorded calls again), each cut taken as it is (rounded down) or
one up in its last byte (rounded up: the interval may lie just above the rounded-down value).
`words_from_bytes` pads the bytes back into the words the decoder reads.

Worked example, three symbols the model is sure of:

    enc = RecordingEncoder()
    enc.encode(np.zeros(3, dtype=np.int32), Categorical(perfect=False), np.array([[0.999, 0.001]] * 3))
    enc.coder.get_compressed()   # array([0], dtype=uint32): one sealed word, 4 bytes
    enc.to_bytes()               # b"": no byte at all; the decoder reads zeros and gets [0, 0, 0]

and a stream sealed as the words [0x12345678, 0x9ABCDEF0] (bytes 12 34 56 78 9A BC DE F0, most
significant first) whose final interval holds 0x12345679 00 00 00 ... but not 0x12345678 00 ...: the
cut at L = 4 rounded up, b"\\x12\\x34\\x56\\x79", is the answer when no 3-byte cut decodes.
"""

from __future__ import annotations

import numpy as np


def _stream():
    from .codec import _constriction

    return _constriction().stream


def words_from_bytes(data: bytes) -> np.ndarray:
    """Big-endian bytes -> the range decoder's u32 words, the last one padded with zero bytes.

    b"\\x12\\x34\\x56\\x78\\x9a" -> [0x12345678, 0x9A000000]."""
    padded = bytes(data) + b"\0" * (-len(data) % 4)
    return np.frombuffer(padded, dtype=">u4").astype(np.uint32)


class RecordingEncoder:
    """`constriction.stream.queue.RangeEncoder`'s `encode`, remembering each call for `to_bytes`.

    `encode(symbols, model)` for a model with fixed parameters (e.g. `Uniform(K)`), or
    `encode(symbols, model, probs)` with one row of probabilities per symbol (`Categorical`)."""

    def __init__(self):
        self.coder = _stream().queue.RangeEncoder()
        self.calls: list[tuple[object, np.ndarray, np.ndarray | None]] = []

    def encode(self, symbols, model, probs: np.ndarray | None = None) -> None:
        symbols = np.asarray(symbols, dtype=np.int32).reshape(-1)  # (n,)
        if probs is None:
            self.coder.encode(symbols, model)
        else:
            self.coder.encode(symbols, model, probs)  # probs: (n, V)
        self.calls.append((model, symbols, probs))

    def _replay(self) -> list[tuple[object, np.ndarray, np.ndarray | None]]:
        """The calls with consecutive ones under one model object and probability rows of one width
        merged, so a decode checks a chunk's thousand one-token calls in one call (a two-level model's
        levels code their tokens under one model object with vocabularies of different sizes)."""
        merged: list[tuple[object, list, list | None]] = []
        for model, symbols, probs in self.calls:
            last = merged[-1] if merged else None
            if (
                last is not None
                and last[0] is model
                and probs is not None
                and last[2] is not None
                and last[2][-1].shape[-1] == probs.shape[-1]
            ):
                last[1].append(symbols)
                last[2].append(probs)
            else:
                merged.append((model, [symbols], None if probs is None else [probs]))
        return [
            (model, np.concatenate(s), None if p is None else np.concatenate(p)) for model, s, p in merged
        ]

    def _decodes(self, words: np.ndarray, calls) -> bool:
        decoder = _stream().queue.RangeDecoder(words)
        try:
            for model, symbols, probs in calls:
                got = decoder.decode(model, len(symbols)) if probs is None else decoder.decode(model, probs)
                if not np.array_equal(np.asarray(got).reshape(-1), symbols):
                    return False
        except Exception:  # constriction may reject a stream that ran out mid-symbol
            return False
        return True

    def to_bytes(self) -> bytes:
        """The shortest cut of the sealed stream (rounded down or up in its last byte) that decodes
        every recorded call back to its symbols; at worst the sealed words themselves."""
        sealed = self.coder.get_compressed().astype(">u4").tobytes()  # most significant byte first
        calls = self._replay()

        def fits(n: int) -> bytes | None:
            """A cut of n bytes that decodes, rounded down first, or None."""
            down = sealed[:n]
            if self._decodes(words_from_bytes(down), calls):
                return down
            if n and down != b"\xff" * n:
                up = (int.from_bytes(down, "big") + 1).to_bytes(n, "big")
                if self._decodes(words_from_bytes(up), calls):
                    return up
            return None

        best, lo, hi = sealed, 0, len(sealed)  # a cut of hi bytes decodes (the sealed stream)
        while lo < hi:  # a longer cut decodes whenever a shorter one does (see the module docstring)
            mid = (lo + hi) // 2
            cut = fits(mid)
            if cut is None:
                lo = mid + 1
            else:
                best, hi = cut, mid
        return best
