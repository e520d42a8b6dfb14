"""hier_ae.codes.codec: lossless compression on top of the codes (issue 21: exact decode at a stated rate).

On trained checkpoints (the grammar fixtures): every round trip gives the bytes back exactly, the
residual bits are the decoder's reconstruct cross-entropy (the same quantity `forward` trains), the
code bits the top LM's next-code cross-entropy (or log2 K each, whichever is less), the blob's size
is what its parts say, and every bad input or mismatch gets a clear error.
"""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch

from hier_ae import HierAEConfig, HierAEForCausalLM, HierAEModel
from hier_ae.codes.codec import (
    DIGIT,
    Codec,
    Compressed,
    _code_alphabets,
    _join_digits,
    _split_code,
    compress,
    decompress,
    fingerprint,
)
from hier_ae.data.batching import frame_document

pytest.importorskip("constriction")


def held_out_text(grammar_data, n: int = 6) -> bytes:
    return "".join(s + "\n" for s in grammar_data[1][:n]).encode()


@pytest.mark.parametrize("fixture", ["trained_1level", "trained_inputs", "trained_2level"])
def test_round_trip_is_exact_on_trained_checkpoints(request, grammar_data, fixture):
    model, _ = request.getfixturevalue(fixture)
    text = held_out_text(grammar_data)
    packed = compress(model, text, chunk_bytes=100)
    assert isinstance(packed, Compressed)
    assert packed.chunks == math.ceil(len(text) / 100)
    assert packed.raw_chunks == 0
    assert decompress(model, packed.blob) == text


@pytest.mark.parametrize("codes", ["top_lm", "uniform"])
def test_round_trip_with_each_way_of_coding_the_codes(trained_2level, grammar_data, codes):
    model, _ = trained_2level
    text = held_out_text(grammar_data, 4)
    packed = compress(model, text, chunk_bytes=100, codes=codes)
    assert packed.top_lm_chunks == (packed.chunks if codes == "top_lm" else 0)
    assert decompress(model, packed.blob) == text


def test_codes_past_one_digit_are_written_in_two():
    """Codebooks above 2**23 codes (residual VQ) write each code as a high and a low digit of 2**12:
    the docstring's 5000 -> [1, 904], and back, for ints and tensors alike."""
    assert _code_alphabets(512) == [512] and _code_alphabets(1 << 24) == [1 << 12, DIGIT]
    assert _split_code(5000, [2048, 4096]) == [1, 904] and _join_digits([1, 904]) == 5000
    assert _split_code(5000, [8192]) == [5000] and _join_digits([5000]) == 5000
    codes = torch.tensor([0, 4095, 4096, (1 << 24) - 1])
    assert torch.equal(_join_digits(_split_code(codes, _code_alphabets(1 << 24))), codes)


def test_odd_inputs_round_trip(trained_1level):
    model, _ = trained_1level
    for data in [b"", b"x", bytes(range(256)), "naïve café — ß\n".encode(), b"\0\0\0\n" * 20]:
        packed = compress(model, data, chunk_bytes=64)
        assert decompress(model, packed.blob) == data, data


def test_residual_bits_are_the_reconstruct_cross_entropy(trained_1level, grammar_data):
    """One chunk: the range-coded tokens cost -log2 p under the streamed decoder, which is the
    teacher-forced reconstruct CE of `forward`'s decoder (streamed == recompute, to float tolerance)."""
    model, _ = trained_1level
    line = grammar_data[1][0].encode()
    packed = compress(model, line, adaptive=False)
    ids = frame_document(line)[None]  # (1, N + 2)
    level = model.levels[0]
    with torch.no_grad():
        p = level.bottom_up(ids, torch.ones_like(ids, dtype=torch.bool))
        logits = level.reconstruct_logits(p).float()  # (1, T, V): output t predicts ids[t]
    ce_bits = -logits.log_softmax(-1).gather(-1, ids[..., None]).sum().item() / math.log(2.0)
    assert packed.residual_bits == pytest.approx(ce_bits, rel=1e-3, abs=1e-3)
    n_codes = int(model.encode(ids).top_mask.sum())
    assert packed.flat_code_bits == pytest.approx(n_codes * math.log2(model.levels[0].cfg.num_codes))
    assert compress(model, line, codes="uniform", adaptive=False).code_bits == pytest.approx(
        packed.flat_code_bits
    )


def _top_lm_ce_bits(model, text: bytes) -> tuple[torch.Tensor, float]:
    """The text's top codes (S,) and their teacher-forced CE in bits under the top LM over the
    document's top stream [bos, codes], softmax over the K codes alone (the specials cannot come next)."""
    with torch.no_grad():
        enc = model.encode(frame_document(text)[None])
        codes = enc.top_codes[enc.top_mask]  # (S,)
        stream = torch.cat([torch.tensor([model.levels[-1].upper_vocab.bos_id]), codes])[None]  # (1, S + 1)
        logits = model.top_lm.read_stream(stream, torch.ones_like(stream, dtype=torch.bool))[
            0
        ]  # (1, S + 2, V)
    K = model.levels[-1].cfg.num_codes
    at_codes = logits[0, 1 : 1 + len(codes), :K].double().log_softmax(-1)  # (S, K): index j + 1 predicts c_j
    return codes, -at_codes.gather(-1, codes[:, None]).sum().item() / math.log(2.0)


@pytest.mark.parametrize("fixture", ["trained_1level", "trained_2level"])
def test_code_bits_are_the_top_lm_cross_entropy(request, grammar_data, fixture):
    """codes="top_lm": each code costs -log2 p under the top LM given the codes before it, read one
    at a time; that is the top LM's teacher-forced CE over the document's top stream [bos, codes],
    with the specials left out of the softmax (they cannot come next)."""
    model, _ = request.getfixturevalue(fixture)
    line = grammar_data[1][3].encode()
    packed = compress(model, line, codes="top_lm", adaptive=False)
    assert packed.top_lm_chunks == 1
    codes, ce_bits = _top_lm_ce_bits(model, line)
    assert packed.code_bits == pytest.approx(ce_bits, rel=1e-4)
    assert packed.flat_code_bits == pytest.approx(len(codes) * math.log2(model.levels[-1].cfg.num_codes))


def test_top_lm_window_prices_codes_as_its_windowed_cross_entropy(trained_1level, grammar_data):
    """The trained model's weights under `top_lm.window = 3` (the window has no weights): the code
    bits are that windowed top LM's teacher-forced CE, they differ from full attention's, and the
    text comes back."""
    model, _ = trained_1level
    windowed = HierAEModel(
        HierAEConfig.from_dict({**model.config.to_dict(), "top_lm": {**model.config.top_lm, "window": 3}})
    )
    windowed.load_state_dict(model.state_dict())
    windowed.eval()
    text = held_out_text(grammar_data, 3)
    packed = compress(windowed, text, codes="top_lm", adaptive=False)
    codes, ce_bits = _top_lm_ce_bits(windowed, text)
    assert packed.code_bits == pytest.approx(ce_bits, rel=1e-4)
    assert len(codes) > 3 and packed.code_bits != pytest.approx(
        compress(model, text, codes="top_lm", adaptive=False).code_bits, rel=1e-4
    )
    assert decompress(windowed, packed.blob) == text


def test_auto_takes_the_cheaper_coding_and_the_trained_top_lm_wins(trained_1level, grammar_data):
    """codes="auto" (the default) costs no more than either way per chunk; on held-out grammar
    sentences the fixture's top LM (100 steps of its own, then the predict stage) prices the codes
    below log2 K each (about 7.4 bits a code against 8)."""
    model, _ = trained_1level
    codec = Codec(model)
    lines = [s.encode() for s in grammar_data[1][:6]]
    for line in lines:
        auto, lm, flat = (codec.compress(line, codes=c) for c in ("auto", "top_lm", "uniform"))
        assert auto.code_bits == pytest.approx(min(lm.code_bits, flat.code_bits))
        assert len(auto.blob) <= max(len(lm.blob), len(flat.blob))
    text = b"".join(line + b"\n" for line in lines)
    packed = codec.compress(text)
    assert packed.top_lm_chunks == packed.chunks
    assert packed.code_bits < 0.97 * packed.flat_code_bits
    assert codec.decompress(packed.blob) == text


def test_codec_object_keeps_the_weights_it_was_made_with(trained_1level, grammar_data):
    """A `Codec` is made once (fingerprint and aligned copy): it writes the same blob as `compress`,
    and it still reads its blobs after the model it was made from changes."""
    import copy

    model, _ = trained_1level
    text = held_out_text(grammar_data, 3)
    codec = Codec(model)
    blob = codec.compress(text).blob
    assert blob == compress(model, text).blob
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.top_lm.head.weight.mul_(0.5)
    assert Codec(changed).fingerprint != codec.fingerprint
    with pytest.raises(ValueError, match="other model weights"):
        decompress(changed, blob)
    assert codec.decompress(blob) == text


def test_blob_size_is_header_plus_its_parts(trained_1level, grammar_data):
    """The range coder quantises the probabilities (a token the decoder gives less than 2**-24 costs
    at most about 24 bits, not its float surprisal) and each chunk's stream is cut to whole bytes:
    each chunk's payload lies within a few percent and two bytes of its ideal bits (plus its two
    varints), after the container's header."""
    model, _ = trained_1level
    text = held_out_text(grammar_data, 12)
    packed = compress(model, text, chunk_bytes=128)
    ideal = packed.code_bits + packed.residual_bits
    payload = 8 * (len(packed.blob) - packed.header_bytes)
    assert (
        packed.header_bytes == 4 + 1 + 1 + 8 + 2 + 4 + 2
    )  # magic, version, flags, fingerprint, 515, CRC, 128
    assert 0.95 * ideal <= payload <= 1.05 * ideal + packed.chunks * (16 + 2 * 8)  # 2 bytes, varints
    assert packed.bits_per_byte == pytest.approx(8 * len(packed.blob) / len(text))


def test_one_chunk_blob_is_its_header_and_trimmed_stream(trained_1level, grammar_data):
    """A line coded alone (as bench.codec codes lines): one head varint, no length, then the range
    coder's bytes, within two bytes of the ideal: a 32-bit word shorter than the sealed stream and
    its word count would be (version 2 wrote whole words)."""
    model, _ = trained_1level
    codec = Codec(model)
    for line in grammar_data[1][:6]:
        data = line.encode()
        packed = codec.compress(data, chunk_bytes=len(data))
        stream = len(packed.blob) - packed.header_bytes - 1  # the head varint (S < 64 codes)
        assert 8 * stream <= 1.05 * (packed.code_bits + packed.residual_bits) + 16
        assert codec.decompress(packed.blob) == data


def test_version_2_blobs_are_still_read(trained_1level, grammar_data):
    """The same chunks written as version 2 did (a word count, then whole little-endian u32 words of
    the stream, its missing bytes as zeros) decompress to the same text."""
    from hier_ae.codes.codec import _Reader, _varint
    from hier_ae.codes.range_bytes import words_from_bytes

    model, _ = trained_1level
    codec = Codec(model, adaptive=False)  # version 2 had no file models
    text = held_out_text(grammar_data, 6)
    packed = codec.compress(text, chunk_bytes=100)
    r = _Reader(packed.blob)
    r.take(packed.header_bytes)
    old = bytearray(packed.blob[:4]) + bytes([2]) + packed.blob[6 : packed.header_bytes]  # no flags
    for k in range(packed.chunks):
        head = r.varint()
        assert head > 0  # no raw chunk here
        payload = r.rest() if k == packed.chunks - 1 else r.take(r.varint())
        words = words_from_bytes(payload)
        old += _varint(head) + _varint(len(words)) + words.astype("<u4").tobytes()
    assert codec.decompress(bytes(old)) == text
    assert Codec(model).decompress(bytes(old)) == text  # the blob, not the codec, says: no file models
    assert len(old) > len(packed.blob)


def test_file_models_price_a_repeat_below_its_first_time(trained_1level, grammar_data):
    """A held-out paragraph twice, in chunks shorter than it (its length a whole number of chunks, so
    the second copy's chunks are the first's and encode to the same codes): with the file models
    (the default) the second copy's codes and tokens are raised where they repeat the first's, so
    it costs a fraction of the first and the blob is much smaller than without them; both come back,
    and the blob's flags tell the decompressor which."""
    model, _ = trained_1level
    once = held_out_text(grammar_data, 8)
    once = once[: len(once) // 64 * 64]
    text = once + once
    on, off = Codec(model), Codec(model, adaptive=False)
    with_mm, without = on.compress(text, chunk_bytes=64), off.compress(text, chunk_bytes=64)
    assert with_mm.blob[5] == 61 and without.blob[5] == 0  # the flags byte: file models, version 6
    assert with_mm.code_bits < 0.6 * without.code_bits
    assert with_mm.residual_bits < without.residual_bits
    assert len(with_mm.blob) < 0.6 * len(without.blob)
    assert off.decompress(with_mm.blob) == text and on.decompress(without.blob) == text
    first = on.compress(once, chunk_bytes=64)  # the first copy alone (the file models learn in it too)
    assert with_mm.code_bits + with_mm.residual_bits < 1.1 * (first.code_bits + first.residual_bits)
    with pytest.raises(TypeError, match="adaptive"):
        Codec(model, adaptive="yes")
    # versions 2 / 3 / 4 without file models, versions 2 and 3 at once, the bound without version 3
    for flags in (6, 2, 12, 7, 8, 9):
        with pytest.raises(ValueError, match="unknown flags"):
            on.decompress(with_mm.blob[:5] + bytes([flags]) + with_mm.blob[6:])


@pytest.mark.parametrize("version, flags", [(1, 1), (2, 3), (3, 5), (4, 13), (5, 29)])
def test_blobs_of_earlier_file_models_still_decode(trained_1level, grammar_data, monkeypatch, version, flags):
    """A blob written with earlier file models (flags 1: version 1, before CF2; flags 3: version 2,
    codes before tokens, before TC0; flags 5: version 3, memory unbounded, before MX0; flags 13:
    version 4, one alpha and one set of weights, before OS1; flags 29: version 5, counts never
    halved, before SS3) decodes with them: the decompressor
    takes the version from the flags, not from the package's latest."""
    from hier_ae.codes import file_models

    model, _ = trained_1level
    once = held_out_text(grammar_data, 8)
    text = once[: len(once) // 64 * 64] * 2
    codec = Codec(model)
    latest = codec.compress(text, chunk_bytes=64)
    monkeypatch.setattr(file_models, "LATEST", version)
    earlier = codec.compress(text, chunk_bytes=64)
    monkeypatch.undo()
    assert earlier.blob[5] == flags and latest.blob[5] == 61
    assert codec.decompress(earlier.blob) == text and codec.decompress(latest.blob) == text
    assert earlier.blob[6:] != latest.blob[6:]  # the versions price the text differently


def test_a_bound_on_the_text_contexts_that_binds_still_round_trips(trained_1level, grammar_data, monkeypatch):
    """The latest file models (bounded as version 4 on) with the bound shrunk to 40 contexts a text
    contexts, so that it binds within the first chunk and the contexts are trimmed before every later
    one: both sides stop adding contexts at the same symbol and trim alike, the text comes back
    exactly, and the blob differs from the unbounded one (what the bound left out was worth bits)."""
    from hier_ae.codes import file_models

    model, _ = trained_1level
    once = held_out_text(grammar_data, 8)
    text = once[: len(once) // 64 * 64] * 2
    codec = Codec(model)
    unbounded = codec.compress(text, chunk_bytes=64)
    monkeypatch.setattr(file_models, "MAX_CONTEXTS", 40)
    bounded = codec.compress(text, chunk_bytes=64)
    assert bounded.blob[5] == 61 and codec.decompress(bounded.blob) == text
    assert bounded.blob != unbounded.blob


def test_trained_model_pays_less_for_text_it_knows(trained_1level, grammar_data):
    """On held-out grammar sentences, one document each as the model was trained, the trained
    decoder's residual is small beside the codes; on random bytes it is several bits a byte (the
    codes and the decoder know nothing of them)."""
    model, _ = trained_1level
    lines = [s.encode() for s in grammar_data[1][:8]]
    known = [compress(model, line) for line in lines]
    n = sum(map(len, lines))
    noise = bytes(torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(0)).tolist())
    unknown = compress(model, noise, chunk_bytes=48)
    assert sum(k.residual_bits for k in known) / n < 1.0
    assert unknown.residual_bits / n > 4.0
    assert decompress(model, unknown.blob) == noise


def test_causal_lm_wrapper_and_reload(trained_1level, grammar_data):
    model, folder = trained_1level
    text = held_out_text(grammar_data, 3)
    blob = compress(model, text).blob
    lm = HierAEForCausalLM.from_pretrained(folder)
    assert fingerprint(lm) == fingerprint(model)
    assert decompress(lm, blob) == text


def test_chunk_the_decode_cannot_follow_is_stored_raw(trained_1level, grammar_data, monkeypatch):
    """If a chunk's streamed decode stops before its text ends (here: its last code dropped), the chunk
    is stored as raw bytes: the round trip stays exact and `raw_chunks` says so."""
    model, _ = trained_1level
    text = held_out_text(grammar_data, 2)
    real_encode = HierAEModel.encode

    def drop_last_code(self, ids, mask=None):
        out = real_encode(self, ids, mask)
        n = int(out.top_mask[0].sum())
        out.top_mask[0, n - 1] = False
        return out

    monkeypatch.setattr(HierAEModel, "encode", drop_last_code)
    packed = compress(model, text)
    monkeypatch.undo()
    assert packed.raw_chunks == packed.chunks == 1
    assert decompress(model, packed.blob) == text


def test_clear_errors(trained_1level, trained_inputs, grammar_data):
    model, _ = trained_1level
    other, _ = trained_inputs
    text = held_out_text(grammar_data, 2)
    blob = compress(model, text).blob
    with pytest.raises(TypeError, match="encode text first"):
        compress(model, text.decode())
    with pytest.raises(ValueError, match="chunk_bytes"):
        compress(model, text, chunk_bytes=0)
    with pytest.raises(ValueError, match="codes='flat' is invalid"):
        compress(model, text, codes="flat")
    from conftest import TINY_TOP, tiny_level

    torch.manual_seed(0)
    top = {**TINY_TOP, "reads_pooled": True}
    pooled = HierAEModel(HierAEConfig(levels=[tiny_level()], top_lm=top, max_position_embeddings=128)).eval()
    with pytest.raises(ValueError, match="reads pooled vectors"):
        compress(pooled, text, codes="top_lm")
    assert decompress(pooled, compress(pooled, text[:20]).blob) == text[:20]  # "auto": flat codes
    with pytest.raises(TypeError, match="HierAEModel"):
        compress(object(), text)
    with pytest.raises(ValueError, match="other model weights"):
        decompress(other, blob)
    with pytest.raises(ValueError, match="does not start"):
        decompress(model, b"gzip" + blob[4:])
    with pytest.raises(ValueError, match="version"):
        decompress(model, blob[:4] + bytes([99]) + blob[5:])
    with pytest.raises(ValueError, match="truncated"):
        decompress(model, blob[:15])
    # a wrong checksum: the bytes decode, but not to what was compressed
    n_at = 4 + 1 + 1 + 8
    n_len = 1 if blob[n_at] < 0x80 else 2
    crc_at = n_at + n_len
    (crc,) = struct.unpack("<I", blob[crc_at : crc_at + 4])
    bad = blob[:crc_at] + struct.pack("<I", crc ^ 1) + blob[crc_at + 4 :]
    with pytest.raises(ValueError, match="CRC-32"):
        decompress(model, bad)


def test_bench_codec_end_to_end(trained_1level, grammar_data, tmp_path):
    """bench.codec on a val file of held-out grammar sentences: every round trip exact, the stream at
    least its ideal parts, the table and JSON written."""
    from bench import codec as bench_codec

    model, folder = trained_1level
    val = tmp_path / "val.txt"
    val.write_text("".join(s + "\n" for s in grammar_data[1][:40]))
    out = tmp_path / "codec.json"
    results = bench_codec.main(
        ["--model", str(folder), "--text", str(val), "--lines", "6", "--docs", "1", "--out", str(out)]
    )
    assert json.loads(out.read_text()) == results
    for kind in ("lines", "docs"):
        m = results[0][kind]
        assert m["exact"] == 1.0 and m["raw_chunks"] == 0
        ideal = m["code_bits_per_byte"] + m["residual_bits_per_byte"]
        overhead = 8 * (2 + 1) * m["texts"] / m["bytes"]  # two bytes of the cut and a head varint a text
        assert 0.95 * ideal <= m["stream_bits_per_byte"] <= 1.05 * ideal + overhead
    assert results[0]["lines"]["texts"] == 6 and results[0]["docs"]["texts"] == 1
    assert f"| {results[0]['text']} | 6 lines | 100.0% |" in bench_codec.markdown(results)


def test_bench_codec_whole_file_and_report(trained_1level, grammar_data, tmp_path):
    """bench.codec --whole: the val file as one blob in the default chunks comes back exactly, its rate
    is the blob's size (the compress call's own), and --md writes a report with the command."""
    from bench import codec as bench_codec
    from hier_ae.codes.codec import Codec

    model, folder = trained_1level
    val = tmp_path / "val.txt"
    val.write_text("".join(s + "\n" for s in grammar_data[1][:60]))
    md = tmp_path / "codec.md"
    argv = [
        "--model",
        str(folder),
        "--text",
        str(val),
        "--lines",
        "2",
        "--docs",
        "0",
        "--whole",
        "--md",
        str(md),
    ]
    results = bench_codec.main(argv)
    whole, data = results[0]["whole"], val.read_bytes()
    size = Codec(model).default_chunk_bytes
    assert whole["exact"] == 1.0 and whole["bytes"] == len(data) and whole["chunks"] == -(-len(data) // size)
    assert whole["stream_bits_per_byte"] == pytest.approx(Codec(model).compress(data).bits_per_byte)
    assert whole["xz -9e"] is not None and "docs" not in results[0] and results[0]["adaptive"]
    plain = bench_codec.main(argv[:-2] + ["--no-adaptive"])[0]["whole"]
    assert plain["stream_bits_per_byte"] == pytest.approx(
        Codec(model, adaptive=False).compress(data).bits_per_byte
    )
    text = md.read_text()
    assert "python -m bench.codec --model" in text and f"whole file ({len(data):,} bytes" in text


def test_example_script_round_trip(trained_1level, grammar_data, tmp_path):
    """examples/compress.py: compress a file, decompress it, the same bytes; an existing output is
    refused without --force and a missing input named."""
    import subprocess
    import sys
    from pathlib import Path

    _, folder = trained_1level
    script = Path(__file__).resolve().parents[1] / "examples" / "compress.py"
    src, blob, back = tmp_path / "in.txt", tmp_path / "in.hae", tmp_path / "back.txt"
    src.write_bytes(held_out_text(grammar_data, 3))

    def cli(*args):
        return subprocess.run(
            [sys.executable, str(script), "--model", str(folder), *map(str, args)],
            capture_output=True,
            text=True,
        )

    done = cli("compress", src, blob)
    assert done.returncode == 0, done.stderr
    assert "bits/byte = codes" in done.stdout
    assert cli("decompress", blob, back).returncode == 0
    assert back.read_bytes() == src.read_bytes()
    plain = cli("compress", "--no-adaptive", src, tmp_path / "plain.hae")  # no file models: flags 0
    assert plain.returncode == 0 and blob.read_bytes()[5] == 61  # file models, version 6
    assert (tmp_path / "plain.hae").read_bytes()[5] == 0
    assert cli("decompress", tmp_path / "plain.hae", tmp_path / "plain.txt").returncode == 0
    assert (tmp_path / "plain.txt").read_bytes() == src.read_bytes()
    refused = cli("decompress", blob, back)
    assert refused.returncode == 1 and "exists" in refused.stderr
    missing = cli("compress", tmp_path / "nope.txt", tmp_path / "x.hae")
    assert missing.returncode == 1 and "no such file" in missing.stderr
    not_a_model = subprocess.run(
        [
            sys.executable,
            str(script),
            "--model",
            str(tmp_path),
            "compress",
            str(src),
            str(tmp_path / "y.hae"),
        ],
        capture_output=True,
        text=True,
    )
    assert not_a_model.returncode == 1 and "not a hier_ae model folder" in not_a_model.stderr


def test_loaded_and_in_memory_models_agree(tmp_path, grammar_data):
    """Compress with a model built in memory, decompress with the same weights loaded from disk (whose
    tensors safetensors may leave unaligned) and the other way round: the codec's aligned copy makes
    both compute the same probabilities."""
    from conftest import tiny_config

    torch.manual_seed(0)
    built = HierAEModel(tiny_config(1)).eval()
    built.save_pretrained(tmp_path)
    loaded = HierAEModel.from_pretrained(tmp_path).eval()
    text = held_out_text(grammar_data, 2)
    assert decompress(loaded, compress(built, text).blob) == text
    assert decompress(built, compress(loaded, text).blob) == text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_round_trip_on_cuda(trained_1level, grammar_data):
    """The codec on a GPU: a blob written on the GPU decodes there exactly (both sides run the same
    kernels); the CPU's decoding of it is not promised, so it is not asserted."""
    import copy

    model, _ = trained_1level
    gpu = copy.deepcopy(model).cuda()
    text = held_out_text(grammar_data, 4)
    packed = compress(gpu, text)
    assert packed.raw_chunks == 0
    assert decompress(gpu, packed.blob) == text


def test_swap_top_lm_keeps_the_levels_and_their_codes(trained_2level, grammar_data, tmp_path):
    """bench.swap_top_lm: the levels' weights are the source's (same codes, same greedy decode), the
    top LM has the new shape, and the codec runs on the result."""
    from bench.swap_top_lm import main as swap_main

    model, folder = trained_2level
    out = swap_main(["--model", str(folder), "--out", str(tmp_path / "m"), "--set", "hidden_size=48"])
    new = HierAEModel.from_pretrained(out).eval()
    assert new.config.top_lm_config.hidden_size == 48
    assert new.top_lm.head.weight.shape[1] == 48
    old_state, new_state = model.state_dict(), new.state_dict()
    kept = [k for k in old_state if not k.startswith(("top_lm.", "levels.1.context_proj."))]
    assert all(torch.equal(old_state[k], new_state[k]) for k in kept)
    assert torch.equal(old_state["levels.0.context_proj.weight"], new_state["levels.0.context_proj.weight"])
    ids = frame_document(grammar_data[1][0].encode())[None]
    assert torch.equal(model.encode(ids).top_codes, new.encode(ids).top_codes)
    text = held_out_text(grammar_data, 2)
    assert decompress(new, compress(new, text).blob) == text
    with pytest.raises(FileExistsError):
        swap_main(["--model", str(folder), "--out", str(out)])
    with pytest.raises(ValueError, match="unknown top_lm keys"):
        swap_main(["--model", str(folder), "--out", str(tmp_path / "n"), "--set", "width=3"])


def test_bench_top_lm_positions_sums_to_the_codecs_code_bits(trained_1level, grammar_data, tmp_path):
    """bench.top_lm_positions: over whole chunks, bits a code x codes is what the codec spends on the
    same chunks' codes under the top LM; `--window` runs the same weights windowed, which moves it."""
    from bench.top_lm_positions import main as positions_main

    model, folder = trained_1level
    text = held_out_text(grammar_data, 12)[:150]
    path = tmp_path / "val.txt"
    path.write_bytes(text)
    res = positions_main(
        [
            "--model",
            str(folder),
            "--text",
            str(path),
            "--chunk-bytes",
            "50",
            "--out",
            str(tmp_path / "p.json"),
        ]
    )
    packed = compress(model, text, chunk_bytes=50, codes="top_lm", adaptive=False)
    assert res["chunks"] == 3 and res["window"] is None
    assert res["bits_per_code"] * res["codes"] == pytest.approx(packed.code_bits, rel=1e-4)
    assert sum(row["codes"] for row in res["by_position"].values()) == res["codes"]
    assert json.loads((tmp_path / "p.json").read_text())["codes"] == res["codes"]
    windowed = positions_main(
        ["--model", str(folder), "--text", str(path), "--chunk-bytes", "50", "--window", "2"]
    )
    assert windowed["window"] == 2 and windowed["bits_per_code"] != pytest.approx(
        res["bits_per_code"], rel=1e-4
    )


@pytest.mark.parametrize(
    "top_window, max_input_bytes, expected",
    [(None, 65536, 1022), (16, 65536, 16382), (16, 4096, 4094), (None, 512, 510)],
)
def test_default_chunk_follows_the_top_lm_window(top_window, max_input_bytes, expected):
    """A top LM that attends through a window reads long chunks as well as short ones: 16,382-byte
    chunks by default (fewer cold starts); a full-attention top LM keeps 1,022; both within
    max_input_bytes - 2. The default is what compress cuts by."""
    from conftest import TINY_TOP, tiny_level

    torch.manual_seed(0)
    config = HierAEConfig(
        levels=[tiny_level()],
        top_lm={**TINY_TOP, "window": top_window},
        max_position_embeddings=128,
        max_input_bytes=max_input_bytes,
    )
    codec = Codec(HierAEModel(config).eval())
    assert codec.default_chunk_bytes == expected
    assert codec._chunk_size(None) == expected and codec._chunk_size(100) == 100
    with pytest.raises(ValueError, match=f"default {expected:,} for this model"):
        codec._chunk_size(max_input_bytes - 1)
