"""bench.codec_replay: the file models' events recorded once from the codec, replayed without the model."""

from __future__ import annotations

import json

import pytest

from bench import codec_replay
from hier_ae.codes import file_models


def _text(grammar_data) -> bytes:
    once = "".join(s + "\n" for s in grammar_data[1][:8]).encode()
    return once * 2  # the second copy is what the file models price cheaply


def test_a_replay_gives_the_codecs_bits_and_a_variant_other_bits(
    trained_1level, grammar_data, tmp_path, monkeypatch
):
    """Record the codec on a text (small chunks, so there are several): replaying the recording with
    the same file models gives the codec's own code and residual bits (to float32's precision); a
    variant (another learning rate for the text contexts' weights) gives other bits, and so does a
    replay whose file models start afresh every 16 bytes (`window`)."""
    model, _ = trained_1level
    path = tmp_path / "events.npz"
    recorded = codec_replay.record(model, _text(grammar_data), path, chunk_bytes=64)
    assert recorded["version"] == file_models.LATEST and path.is_file()
    same = codec_replay.replay(path)
    assert same["code_bits_per_byte"] == pytest.approx(recorded["code_bits_per_byte"], abs=1e-3)
    assert same["residual_bits_per_byte"] == pytest.approx(recorded["residual_bits_per_byte"], abs=1e-3)
    # `window`: longer than the text, the same replay; short, the file models forget what they learnt
    whole = codec_replay.replay(path, window=10**9)
    assert whole["total_bits_per_byte"] == same["total_bits_per_byte"]
    pieces = codec_replay.replay(path, window=16)
    assert pieces["total_bits_per_byte"] > same["total_bits_per_byte"] + 0.05, (pieces, same)
    monkeypatch.setattr(file_models, "V5_LR_START", 0.05)
    other = codec_replay.replay(path)
    assert abs(other["total_bits_per_byte"] - same["total_bits_per_byte"]) > 1e-4


def test_the_command_line_records_and_replays_with_constants_set(
    trained_1level, grammar_data, tmp_path, capsys
):
    model, folder = trained_1level
    text = tmp_path / "text.txt"
    text.write_bytes(_text(grammar_data))
    out = tmp_path / "events.npz"
    codec_replay.main(["record", "--model", str(folder), "--text", str(text), "--out", str(out)])
    recorded = json.loads(capsys.readouterr().out)
    saved = file_models.TEXT_ORDERS
    try:
        result = codec_replay.main(["replay", str(out), "--set", "TEXT_ORDERS=(1, 2)"])
    finally:
        file_models.TEXT_ORDERS = saved
    assert result["set"] == {"TEXT_ORDERS": (1, 2)} and result["recorded"] == recorded
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        codec_replay.main(["replay", str(out), "--set", "NO_SUCH=1"])


def test_recording_needs_file_models_that_read_codes_between_segments():
    with pytest.raises(ValueError, match="between segments"):
        codec_replay._recording_file_models()(1, 2)
