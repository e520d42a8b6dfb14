"""Lossless compression on top of the codes: the codes, plus the bytes as the decoder predicts them.

The autoencoder's codes alone do not always decode back to their text (issue 21: greedy decode of
held-out lines is exact for about half of them at 4 code bits/byte). `Codec` makes the round trip
exact at a stated rate: it stores each chunk's top-level codes and then replays
`HierAEModel.decode` with the *true* tokens, range-coding each one under the decoder's own
prediction (`constriction`'s range coder), level by level. Decompression replays the same decode
and reads the tokens back from the range coder. Where the decoder is sure and right a token costs a
fraction of a bit; where the codes leave it unsure, it pays -log2 p(true token).

The codes themselves go under the top code LM (DESIGN §5), which predicts each code from the codes
before it (a trained top LM spends well under log2 K bits a code), or flat at log2 K bits each,
whichever costs less for the chunk (`codes="auto"`; "top_lm" or "uniform" force one). The rate is
then code bits + the decoder's reconstruct cross-entropy (`bench.recon`'s total bits/byte, with
the codes priced by the top LM), here as a real bitstream.

    from hier_ae import HierAEModel
    from hier_ae.codes.codec import Codec

    codec = Codec(HierAEModel.from_pretrained("runs/tiny/model"))
    packed = codec.compress(b"To be, or not to be: that is the question.\\n")
    packed.bits_per_byte, packed.code_bits, packed.residual_bits   # the rate, and where it goes
    assert codec.decompress(packed.blob) == b"To be, or not to be: that is the question.\\n"

`compress(model, data)` and `decompress(model, blob)` do the same with a `Codec` made for the call.

Both sides compute every probability by the same calls on one chunk (batch 1): the top LM one code
at a time, the decoder by the same streamed decode, on a freshly allocated copy of the model
(`_aligned_copy`: a model loaded from safetensors and the same weights trained in memory otherwise
differ in the last bit of their logits), so they agree bit for bit with the same model weights,
software and hardware. Across machines whose float kernels differ they may not: the blob carries a
fingerprint of the weights and a CRC-32 of the text, and decompression raises a clear error rather
than return wrong bytes. A chunk whose streamed decode cannot follow its codes (the boundary rule on
the regenerated text draws a different number of segments) is stored as raw bytes, so nothing is
ever lost; `Compressed.raw_chunks` counts them.

Across chunks, `file_models.FileModels` (`adaptive`, on by default: `Codec(model, adaptive=False)`
turns them off) carry what the file said so far: a cache of what followed each pair of top codes and
match models over the codes and over each level's tokens. Where the recent codes (tokens) occurred
before in the file, what followed them then gets raised probability, as far as the file so far
earned it, so a block repeated across a file costs a fraction of a bit a code the second time.
Their versions 3-6 (the default 6: 3 with bounded memory, better mixing and counts that age) also
price each code with the text before it (`text_contexts`: what code followed the last 1 ... 32
tokens so far): the chunk is then coded in one streamed decode, code j read just before its segment's
first token
(`HierAEModel.decode(next_code=...)`), so both sides know that text. The chunks' codes are still
the autoencoder's; `Compressed`'s bits are the rate with the file models in (with them off, the top
LM's and the decoder's cross-entropies themselves).

Container (integers little-endian, `varint` = LEB128):
    b"hAEc" | version (u8) | flags (u8, version 3 on; bit 0: file models, with bit 1 their version 2, bit 2
    their version 3, bits 2 and 3 their version 4, bits 2-4 their version 5, bits 2-5 their version 6,
    none version 1; see
    `file_models`) | weights fingerprint (8 bytes) | text bytes (varint) | CRC-32 (u32)
    | chunk bytes (varint) | per chunk: a varint h, then either the raw bytes (h = 0) or the range
    coder's stream of S = h // 2 codes, coded flat (h even) or under the top LM (h odd), followed by
    the chunk's tokens (file models versions 3-6: each code followed by its segment's tokens): its length
    in bytes (varint; the last chunk's stream runs to the end of the blob and has none), then the
    bytes, cut to the fewest that decode (`range_bytes`: the sealed 32-bit words trimmed, the missing
    bytes read as zeros).
Version 2 blobs (no flags; each stream as a varint word count and whole u32 words; no file models)
are still read.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from ..configuration_hier_ae import BOS_ID, BYTE_OFFSET, EOS_ID
from ..data.batching import frame_document
from ..kv_cache import KVStore
from . import file_models
from .file_models import FileModels
from .range_bytes import RecordingEncoder, words_from_bytes

MAGIC = b"hAEc"
VERSION = 3  # 3: trimmed byte streams; 2: whole words; both: codes under the top LM or flat, per chunk
READS = (2, 3)
UNIFORM_MAX = 1 << 23  # constriction's Uniform takes alphabets below 2**24; larger ones go in two digits
DIGIT = 1 << 12
CODE_MODES = ("auto", "top_lm", "uniform")
FLAT, TOP_LM = 0, 1  # how a chunk's codes are coded: the low bit of its header varint
ADAPTIVE = 1  # flags bit: the file models (`FileModels`) are in
FILE_MODELS_V2 = 2  # flags bit: ... in their version 2 (without it, version 1: blobs written before CF2)
FILE_MODELS_V3 = 4  # flags bit: ... in their version 3 (TX0: codes read between their segments)
FILE_MODELS_BOUNDED = 8  # flags bit, with V3: ... in their version 4 (version 3, memory bounded)
FILE_MODELS_V5 = 16  # flags bit, with V3 and BOUNDED: ... in their version 5 (two alphas, order sets)
FILE_MODELS_V6 = 32  # flags bit, with V3, BOUNDED and V5: ... in their version 6 (counts halved past 30)
FLAGS = {
    1: ADAPTIVE,
    2: ADAPTIVE | FILE_MODELS_V2,
    3: ADAPTIVE | FILE_MODELS_V3,
    4: ADAPTIVE | FILE_MODELS_V3 | FILE_MODELS_BOUNDED,
    5: ADAPTIVE | FILE_MODELS_V3 | FILE_MODELS_BOUNDED | FILE_MODELS_V5,
    6: ADAPTIVE | FILE_MODELS_V3 | FILE_MODELS_BOUNDED | FILE_MODELS_V5 | FILE_MODELS_V6,
}  # file models version -> flags
FLAG_VERSIONS = {f: v for v, f in FLAGS.items()}  # what `decompress` reads
# the default chunk, `<s>` + 16,382 bytes + `</s>` = 16,384 tokens (capped at max_input_bytes - 2), for a
# model whose top LM attends through a window (`top_lm.window`; the levels always do): a long chunk then
# costs no more a byte to run, and each chunk start prices its first codes and tokens from an empty
# context (1,022-byte chunks: 0.11 bits/byte more on code, CK1 in bench/experiments.md). A top LM with
# full attention, trained on short rows, reads long chunks worse (TW): its default stays 1,022 bytes.
DEFAULT_CHUNK_BYTES = 16382
FULL_ATTENTION_CHUNK_BYTES = 1022


@dataclass
class Compressed:
    """What `Codec.compress` returns. `blob` is the whole container; the bits are ideal code lengths
    (-log2 p summed) of its two parts, beside which `len(blob)` is what was actually written."""

    blob: bytes
    n_bytes: int
    code_bits: float  # the top-level codes as coded: under the top LM or log2 K each, per chunk
    residual_bits: float  # the true tokens under the decoder's predictions, -log2 p summed
    chunks: int
    raw_chunks: int
    header_bytes: int  # the container's fixed fields, before the first chunk
    flat_code_bits: float = 0.0  # what the same codes cost at log2 K each (the top LM's saving beside it)
    top_lm_chunks: int = 0  # chunks whose codes went under the top LM

    @property
    def bits_per_byte(self) -> float:
        """Size of the whole blob (header included) in bits per byte of text."""
        return 8.0 * len(self.blob) / max(self.n_bytes, 1)


def _constriction():
    """The range coder's library (an extra: `pip install "hier_ae[codec]"`)."""
    try:
        import constriction
    except ImportError as e:
        raise ImportError(
            "hier_ae.codes.codec needs the `constriction` range coder: pip install 'hier_ae[codec]'"
        ) from e
    return constriction


def _base_model(model):
    """HierAEModel behind a HierAEForCausalLM (`.model`), or the model itself."""
    net = getattr(model, "model", model)
    if not hasattr(net, "levels") or not hasattr(net, "decode"):
        raise TypeError(f"expected a HierAEModel or HierAEForCausalLM, got {type(model).__name__}")
    if "pick" not in inspect.signature(net.decode).parameters:
        raise TypeError(
            f"{type(net).__module__}.{type(net).__name__}.decode has no `pick`: this model's code predates "
            "the codec (e.g. remote code saved with an older hier_ae); load it with "
            "hier_ae.HierAEModel.from_pretrained(folder)"
        )
    return net


def _aligned_copy(net):
    """A deep copy of the model in fresh tensors, which torch's allocator aligns.

    CPU kernels take different vector paths for weights at different memory alignments, and
    `from_pretrained` leaves some weights at the file's offsets (e.g. 60 bytes past a 64-byte line),
    so a loaded model and the same weights trained in memory give logits that differ in the last
    bit, which is enough to derail a range decoder. Both sides of the codec run on such a copy."""
    return copy.deepcopy(net).eval()


def fingerprint(model) -> bytes:
    """8 bytes of SHA-256 over the state dict (names, dtypes, shapes and values, in name order)."""
    h = hashlib.sha256()
    for name, t in sorted(_base_model(model).state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.flatten().view(torch.uint8).numpy().tobytes())
    return h.digest()[:8]


def _varint(n: int) -> bytes:
    """LEB128: 300 -> b'\\xac\\x02'."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class _Reader:
    def __init__(self, blob: bytes):
        self.blob, self.at = blob, 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.blob):
            raise ValueError(f"truncated hier_ae codec blob: needs {self.at + n} bytes, has {len(self.blob)}")
        out = self.blob[self.at : self.at + n]
        self.at += n
        return out

    def rest(self) -> bytes:
        return self.take(len(self.blob) - self.at)

    def varint(self) -> int:
        n, shift = 0, 0
        while True:
            byte = self.take(1)[0]
            n |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return n


def _code_alphabets(num_codes: int) -> list[int]:
    """Alphabet of each digit a code is written in: one digit below 2**23, else a high and a low one."""
    return [num_codes] if num_codes <= UNIFORM_MAX else [math.ceil(num_codes / DIGIT), DIGIT]


def _split_code(code, alphabets: list[int]) -> list:
    """A code (an int, or a tensor of them) as the digits it is written in (`_code_alphabets`):
    _split_code(5000, [2048, 4096]) = [1, 904]; with one alphabet, [code]."""
    return [code] if len(alphabets) == 1 else [code // DIGIT, code % DIGIT]


def _join_digits(digits: list):
    """`_split_code`'s inverse: _join_digits([1, 904]) = 5000."""
    return digits[0] if len(digits) == 1 else digits[0] * DIGIT + digits[1]


class _TopLMCodes:
    """The top LM's distribution of each next code of one chunk (batch 1), code by code.

    The chunk's top stream is [bos, c_0, ..., c_{S-1}, eos] (`frame_upper_stream`; the chunk is one
    document). The LM reads [BEGIN, bos] once, then one code per `read` (`CodeLM.step`), so the
    distribution of c_j has seen c_0..c_{j-1} only, and both sides make exactly the same calls.
    `probs()` is over the K codes alone (the specials cannot come next: renormalised without them).
    """

    def __init__(self, net, device: torch.device):
        self.lm = net.top_lm
        self.num_codes = net.levels[-1].cfg.num_codes
        bos = torch.full((1, 1), net.levels[-1].upper_vocab.bos_id, dtype=torch.long, device=device)
        kv: list = []
        logits, _, valid, _ = self.lm.read_stream(bos, torch.ones_like(bos, dtype=torch.bool), kv_out=kv)
        self.cache = KVStore(kv, valid)  # [BEGIN, bos] read, as predict mode's prefill
        self.logits = logits[:, -1]  # (1, V): predicts c_0
        self.rows = torch.zeros(1, dtype=torch.long, device=device)

    def probs(self) -> np.ndarray:
        """(1, K) float64: the next code's distribution."""
        return torch.softmax(self.logits[:, : self.num_codes].double(), dim=-1).cpu().numpy()

    def read(self, code: int) -> None:
        self.logits, _ = self.lm.step(torch.full_like(self.rows, code), self.cache, self.rows)


class _TokenCoder:
    """`decode`'s `pick`: codes the true token (encoding) or reads it back (decoding) under the
    decoder's softmax, one live row (batch 1). `targets[level]` are the true tokens of each level."""

    def __init__(self, coder, targets: list[torch.Tensor] | None, file: FileModels | None = None):
        self.coder, self.targets, self.file = coder, targets, file
        self.model = _constriction().stream.model.Categorical(perfect=False)
        self.bits = 0.0
        self.overran = False  # the decode ran past a level's true tokens

    def __call__(self, level: int, n: int, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits[:1].double(), dim=-1).cpu().numpy()  # (1, V)
        if self.file is not None:
            probs = self.file.mix_token(level, probs)
        if self.targets is None:
            token = int(self.coder.decode(self.model, probs)[0])
        else:
            target = self.targets[level]
            if n >= len(target):
                self.overran = True
                token = int(target[-1])
            else:
                token = int(target[n])
            self.coder.encode(np.array([token], dtype=np.int32), self.model, probs)
            self.bits -= math.log2(max(float(probs[0, token]), 1e-300))
        if self.file is not None:
            self.file.update_token(level, token)
        return torch.full((logits.shape[0],), token, dtype=torch.long, device=logits.device)


class _CodeStream:
    """`decode`'s `next_code` (file models that read codes between segments, `FileModels.interleaved`):
    code j is coded (encoding: `codes` given) or read back (decoding) just before its segment's
    tokens, under the top LM and the file models (`mode` TOP_LM: they see the text before it) or
    flat (FLAT: log2 K bits, the file models only counting it)."""

    def __init__(self, codec: Codec, coder, file: FileModels, mode: int, codes: list[int] | None = None):
        self.codec, self.coder, self.file, self.mode, self.codes = codec, coder, file, mode, codes
        self.lm = _TopLMCodes(codec.net, codec.device) if mode == TOP_LM else None
        self.last: int | None = None  # the code read before, which the top LM reads next
        self.bits = 0.0

    def __call__(self, j: int) -> int:
        stream = _constriction().stream
        if self.mode == TOP_LM:
            if self.last is not None:
                self.lm.read(self.last)
            model, probs = stream.model.Categorical(perfect=False), self.file.mix_code(self.lm.probs())
            if self.codes is None:
                code = int(self.coder.decode(model, probs)[0])
            else:
                code = self.codes[j]
                self.coder.encode(np.array([code], dtype=np.int32), model, probs)
                self.bits -= math.log2(max(float(probs[0, code]), 1e-300))
        else:
            alphabets = self.codec.alphabets
            if self.codes is None:
                digits = [int(self.coder.decode(stream.model.Uniform(a), 1)[0]) for a in alphabets]
                code = _join_digits(digits)
            else:
                code = self.codes[j]
                digits = _split_code(code, alphabets)
                for a, d in zip(alphabets, digits):
                    self.coder.encode(np.array([d], dtype=np.int32), stream.model.Uniform(a))
                self.bits += sum(math.log2(a) for a in alphabets)
        self.file.update_code(code)
        self.last = code
        return code


class Codec:
    """Lossless compression with one model: `compress(bytes) -> Compressed`, `decompress(blob) -> bytes`.

    Made once per model: it fingerprints the weights and takes an aligned copy of them (see the
    module docstring), so it compresses with the weights it was made with; a model trained further
    afterwards needs a new `Codec`. Accepts a `HierAEModel` or a `HierAEForCausalLM`.
    `adaptive` (default True): blend what the file said so far into the codes' and the tokens'
    distributions (`FileModels`, see the module docstring); the blob says which, so `decompress`
    reads both kinds.
    """

    def __init__(self, model, adaptive: bool = True):
        if not isinstance(adaptive, bool):
            raise TypeError(f"adaptive={adaptive!r} is invalid: True or False")
        self.adaptive = adaptive
        net = _base_model(model)
        self.fingerprint = fingerprint(net)
        self.net = _aligned_copy(net)
        self.device = next(self.net.parameters()).device
        self.top = self.net.num_levels - 1
        self.num_codes = self.net.levels[self.top].cfg.num_codes
        self.alphabets = _code_alphabets(self.num_codes)
        # the top LM can price the codes when it reads codes alone (not pooled vectors, which a
        # decompressor does not have) and its head is small enough to hand to the range coder
        self.top_lm_codes = not self.net.config.top_lm_config.reads_pooled and self.num_codes <= UNIFORM_MAX

    @property
    def default_chunk_bytes(self) -> int:
        """The chunk `compress` cuts a text into by default (see `DEFAULT_CHUNK_BYTES`)."""
        windowed = self.net.config.top_lm_config.window is not None
        limit = self.net.config.max_input_bytes - 2  # room for <s> and </s>
        return min(DEFAULT_CHUNK_BYTES if windowed else FULL_ATTENTION_CHUNK_BYTES, limit)

    def _chunk_size(self, chunk_bytes: int | None) -> int:
        limit = self.net.config.max_input_bytes - 2  # room for <s> and </s>
        size = self.default_chunk_bytes if chunk_bytes is None else chunk_bytes
        if not isinstance(size, int) or not 1 <= size <= limit:
            raise ValueError(
                f"chunk_bytes={chunk_bytes!r} is invalid: an int in [1, {limit}] or None "
                f"(default {self.default_chunk_bytes:,} for this model)."
            )
        return size

    def _check_codes_mode(self, codes: str) -> str:
        if codes not in CODE_MODES:
            raise ValueError(f"codes={codes!r} is invalid: one of {CODE_MODES}.")
        if codes == "top_lm" and not self.top_lm_codes:
            why = (
                "its top LM reads pooled vectors (top_lm.reads_pooled=True), which a decompressor lacks"
                if self.net.config.top_lm_config.reads_pooled
                else f"its {self.num_codes:,} codes are too many for the range coder's categorical model"
            )
            raise ValueError(
                f"codes='top_lm' is not available for this model: {why}; use 'uniform' or 'auto'."
            )
        return codes

    def _code_probs(self, codes: torch.Tensor) -> np.ndarray:
        """(S, K) float64: the top LM's distribution of each code given the ones before it."""
        lm = _TopLMCodes(self.net, self.device)
        rows = []
        for j, c in enumerate(codes.tolist()):
            rows.append(lm.probs())
            if j + 1 < len(codes):
                lm.read(c)
        return np.concatenate(rows) if rows else np.zeros((0, self.num_codes))

    @torch.inference_mode()  # no autograd bookkeeping: about a third off each small op of a step
    def compress(self, data: bytes, chunk_bytes: int | None = None, codes: str = "auto") -> Compressed:
        """Bytes -> a `Compressed` whose `blob` `decompress` turns back into exactly `data`.

        The text is cut into chunks of `chunk_bytes` (default `default_chunk_bytes`: 16,382 bytes, `<s>` +
        chunk + `</s>` = 16,384 tokens, for a top LM with an attention window, else 1,022); each is
        encoded as one document, its top codes coded under the top LM or at log2 K bits each (`codes`:
        "auto" takes the cheaper per chunk), and its tokens range-coded under the decoder's
        predictions as `decode` regenerates them (with the file models, versions 3-6: each code just
        before its segment's tokens; else all codes first).
        """
        _constriction()  # the range coder's library, or a clear ImportError before any work
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"compress takes bytes, got {type(data).__name__}; encode text first, e.g. "
                "text.encode('utf-8')"
            )
        data = bytes(data)
        size = self._chunk_size(chunk_bytes)
        codes_mode = self._check_codes_mode(codes)
        net = self.net
        fm_version = file_models.LATEST
        flags = FLAGS[fm_version] if self.adaptive else 0
        out = bytearray(MAGIC + bytes([VERSION, flags]) + self.fingerprint)
        out += _varint(len(data)) + struct.pack("<I", zlib.crc32(data)) + _varint(size)
        header = len(out)
        code_bits = flat_bits = residual_bits = 0.0
        chunks = raw = lm_chunks = 0
        flat_per_code = sum(math.log2(a) for a in self.alphabets)
        file = FileModels(net.num_levels, fm_version) if self.adaptive else None
        for start in range(0, len(data), size):
            marks = None
            if file is not None:
                file.new_chunk()
                marks = file.checkpoint()  # a chunk stored raw is taken back
            piece = data[start : start + size]
            ids = frame_document(piece)[None].to(self.device)  # (1, N + 2)
            enc = net.encode(ids)
            seg_codes = enc.top_codes[0][enc.top_mask[0]]  # (S,)
            targets = [t[0][m[0]] for t, m in zip(enc.level_tokens, enc.level_mask)]  # per level (n_l,)
            flat = len(seg_codes) * flat_per_code
            chunks += 1
            if file is not None and file.interleaved:
                coded = self._code_interleaved(seg_codes, targets, file, marks, codes_mode, flat)
            else:
                coded = self._code_upfront(seg_codes, targets, file, marks, codes_mode, flat)
            if coded is not None:
                mode, coder, bits, tokens = coded
                payload = coder.to_bytes()
                last = start + size >= len(data)  # its stream runs to the end of the blob
                out += _varint(2 * len(seg_codes) + mode) + (b"" if last else _varint(len(payload))) + payload
                code_bits += bits
                flat_bits += flat
                residual_bits += tokens.bits
                lm_chunks += mode == TOP_LM
            else:  # the streamed decode cannot follow these codes: store the chunk as it is
                if file is not None:
                    file.restore(marks)
                out += _varint(0) + piece
                raw += 1
        return Compressed(
            bytes(out), len(data), code_bits, residual_bits, chunks, raw, header, flat_bits, lm_chunks
        )

    def _follows(self, dec, seg_codes: torch.Tensor, targets: list, tokens: _TokenCoder) -> bool:
        """Whether the streamed decode regenerated the chunk's own tokens (else it is stored raw)."""
        regenerated = dec.sequences[0][dec.attention_mask[0].bool()]  # (n_0,)
        return (
            bool(len(seg_codes)) and not tokens.overran and torch.equal(regenerated.cpu(), targets[0].cpu())
        )

    def _code_upfront(self, seg_codes, targets, file, marks, codes_mode: str, flat: float):
        """A chunk's codes all before its tokens (no file models, or versions 1 and 2): (mode, coder,
        code bits, token coder), or None where the decode cannot follow its codes."""
        stream = _constriction().stream
        mode, bits = FLAT, flat
        if codes_mode != "uniform" and self.top_lm_codes:
            probs = self._code_probs(seg_codes)  # (S, K)
            if file is not None:  # the file models' prices, tried on the codes
                for j, c in enumerate(seg_codes.tolist()):
                    probs[j] = file.mix_code(probs[j])
                    file.update_code(c)
            lm_bits = -np.log2(np.maximum(probs[np.arange(len(seg_codes)), seg_codes.cpu().numpy()], 1e-300))
            if codes_mode == "top_lm" or lm_bits.sum() < flat:
                mode, bits = TOP_LM, float(lm_bits.sum())
        if file is not None and mode == FLAT:  # flat codes are only counted
            file.restore(marks, codes_only=True)
            for c in seg_codes.tolist():
                file.update_code(c)
        coder = RecordingEncoder()
        if mode == TOP_LM:
            coder.encode(
                seg_codes.cpu().numpy().astype(np.int32), stream.model.Categorical(perfect=False), probs
            )
        else:
            digits = _split_code(seg_codes, self.alphabets)
            for alphabet, d in zip(self.alphabets, digits):
                coder.encode(d.cpu().numpy().astype(np.int32), stream.model.Uniform(alphabet))
        tokens = _TokenCoder(coder, targets, file)
        dec = self.net.decode(seg_codes[None], level=self.top, pick=tokens)
        return (mode, coder, bits, tokens) if self._follows(dec, seg_codes, targets, tokens) else None

    def _code_interleaved(self, seg_codes, targets, file, marks, codes_mode: str, flat: float):
        """A chunk coded in one streamed decode, each code just before its segment's tokens (file
        models that price a code with the text before it, `FileModels.interleaved`). Under the top LM
        first; with codes="auto", again flat when that cost more than log2 K a code. As `_code_upfront`."""
        modes = [TOP_LM] if codes_mode != "uniform" and self.top_lm_codes else []
        if codes_mode != "top_lm":
            modes.append(FLAT)
        codes = seg_codes.tolist()
        for mode in modes:
            coder = RecordingEncoder()
            code_stream, tokens = (
                _CodeStream(self, coder, file, mode, codes),
                _TokenCoder(coder, targets, file),
            )
            dec = self.net.decode(seg_codes[None], level=self.top, pick=tokens, next_code=code_stream)
            if not self._follows(dec, seg_codes, targets, tokens):
                return None
            if mode == FLAT or codes_mode == "top_lm" or code_stream.bits < flat:
                return mode, coder, code_stream.bits, tokens
            file.restore(marks)  # the codes cost more under the top LM than flat: the chunk again, flat
        raise AssertionError("unreachable: the last mode tried is returned")

    @torch.inference_mode()  # no autograd bookkeeping: about a third off each small op of a step
    def decompress(self, blob: bytes) -> bytes:
        """A `compress` blob -> the original bytes (checked by the weights' fingerprint and CRC-32)."""
        stream = _constriction().stream
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"decompress takes the bytes `compress` returned (.blob), got {type(blob).__name__}"
            )
        r = _Reader(bytes(blob))
        if r.take(4) != MAGIC:
            raise ValueError("not a hier_ae codec blob: it does not start with b'hAEc'")
        version = r.take(1)[0]
        if version not in READS:
            raise ValueError(f"hier_ae codec blob of version {version}; this package reads versions {READS}")
        flags = r.take(1)[0] if version >= 3 else 0
        if flags and flags not in FLAG_VERSIONS:
            raise ValueError(f"hier_ae codec blob with unknown flags {flags:#04x}: it is corrupt or newer")
        file = FileModels(self.net.num_levels, FLAG_VERSIONS[flags]) if flags else None
        stored = r.take(8)
        if stored != self.fingerprint:
            raise ValueError(
                f"this blob was compressed with other model weights (fingerprint {stored.hex()}, this model "
                f"{self.fingerprint.hex()}): decompress needs the very model that compressed it"
            )
        n_bytes = r.varint()
        (crc,) = struct.unpack("<I", r.take(4))
        size = r.varint()
        out = bytearray()
        while len(out) < n_bytes:
            if file is not None:  # as `compress` did before each chunk, stored raw or not
                file.new_chunk()
            head = r.varint()
            if head == 0:
                out += r.take(min(size, n_bytes - len(out)))
                continue
            n_codes, mode = divmod(head, 2)
            if version == 2:
                words = np.frombuffer(r.take(4 * r.varint()), dtype="<u4").astype(np.uint32)
            else:
                last = len(out) + size >= n_bytes
                words = words_from_bytes(r.rest() if last else r.take(r.varint()))
            coder = stream.queue.RangeDecoder(words)
            if mode == TOP_LM and not self.top_lm_codes:
                raise ValueError(
                    "the blob codes its codes under a top LM this model cannot run: it is corrupt"
                )
            pick = _TokenCoder(coder, None, file)
            if file is not None and file.interleaved:  # each code read just before its segment
                placeholder = torch.zeros(1, n_codes, dtype=torch.long, device=self.device)  # (1, S)
                reader = _CodeStream(self, coder, file, mode)
                dec = self.net.decode(placeholder, level=self.top, pick=pick, next_code=reader)
            else:
                codes = self._read_codes(coder, n_codes, mode, file)  # (S,)
                dec = self.net.decode(codes[None], level=self.top, pick=pick)
            tokens = dec.sequences[0][dec.attention_mask[0].bool()]  # (n_0,): <s> bytes </s>
            body = tokens[1:-1].cpu() - BYTE_OFFSET
            framed = len(tokens) >= 2 and int(tokens[0]) == BOS_ID and int(tokens[-1]) == EOS_ID
            if not framed or bool((body < 0).any() | (body > 255).any()):
                raise ValueError(
                    "decoded tokens are not a framed byte chunk: the blob is corrupt or the floats differ"
                )
            out += bytes(body.to(torch.uint8).tolist())
        if len(out) != n_bytes or zlib.crc32(bytes(out)) != crc:
            raise ValueError(
                f"decoded {len(out)} bytes that fail the blob's CRC-32 (expected {n_bytes} bytes): the "
                "blob is corrupt, or this machine's float kernels give the decoder other probabilities "
                "than the compressing machine's (same weights, other hardware or software)"
            )
        return bytes(out)

    def _read_codes(self, coder, n_codes: int, mode: int, file: FileModels | None) -> torch.Tensor:
        """A chunk's `n_codes` codes, all read before its tokens (`_code_upfront`): (S,)."""
        if mode == TOP_LM:
            return self._read_top_lm_codes(coder, n_codes, file)
        stream = _constriction().stream
        digits = [
            torch.from_numpy(coder.decode(stream.model.Uniform(a), n_codes).astype(np.int64)).to(self.device)
            for a in self.alphabets
        ]
        codes = _join_digits(digits)  # (S,)
        for c in codes.tolist() if file is not None else []:
            file.update_code(c)
        return codes

    def _read_top_lm_codes(self, coder, n_codes: int, file: FileModels | None) -> torch.Tensor:
        """Decode `n_codes` codes one at a time, each under the top LM given the ones read before
        (and the file models, when the blob has them)."""
        model = _constriction().stream.model.Categorical(perfect=False)
        lm = _TopLMCodes(self.net, self.device)
        codes = []
        for j in range(n_codes):
            probs = lm.probs() if file is None else file.mix_code(lm.probs())
            codes.append(int(coder.decode(model, probs)[0]))
            if file is not None:
                file.update_code(codes[-1])
            if j + 1 < n_codes:
                lm.read(codes[-1])
        return torch.tensor(codes, dtype=torch.long, device=self.device)  # (S,)


def compress(
    model, data: bytes, chunk_bytes: int | None = None, codes: str = "auto", adaptive: bool = True
) -> Compressed:
    """`Codec(model, adaptive).compress(data, chunk_bytes, codes)`: for one call; keep a `Codec` for
    many."""
    return Codec(model, adaptive=adaptive).compress(data, chunk_bytes=chunk_bytes, codes=codes)


def decompress(model, blob: bytes) -> bytes:
    """`Codec(model).decompress(blob)`: for one call; keep a `Codec` for many."""
    return Codec(model).decompress(blob)
