"""The fixed-chunk autoencoder peer (bench/ae_peer.py): FSQ, rate, chunking, causality, training, scoring."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bench import ae_peer  # the repository root is on pytest's pythonpath (pyproject)
from bench.ae_peer import BOS, PAD, AEPeer, PeerConfig, chunk_rows, fsq_levels_for_rate, shift_right
from hier_ae import HierAEConfig


def tiny(chunk: int = 4, levels=(5, 5, 3)) -> AEPeer:
    torch.manual_seed(0)
    cfg = PeerConfig(
        chunk=chunk, levels=list(levels), width=32, layers=2, heads=2, enc_embed=8, enc_hidden=32
    )
    return AEPeer(cfg).eval()


# ---- rate and FSQ --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rate, chunk, levels",
    [(2.5, 4, (8, 5, 5, 5)), (4.0, 4, (8, 8, 8, 5, 5, 5)), (6.0, 4, (8,) * 8), (3.0, 4, (8, 8, 8, 8))],
)
def test_levels_for_rate(rate, chunk, levels):
    got = fsq_levels_for_rate(rate, chunk)
    assert got == levels
    assert abs(ae_peer.code_bits(got) / chunk - rate) < 0.01


@pytest.mark.parametrize("rate, chunk", [(1.7, 4), (4.0, 8), (5.0, 4), (2.0, 2)])
def test_levels_for_rate_is_close(rate, chunk):
    bits = ae_peer.code_bits(fsq_levels_for_rate(rate, chunk))
    assert abs(bits - rate * chunk) < 0.15, bits


def test_levels_for_rate_rejects_nonsense():
    with pytest.raises(ValueError, match="bits per code"):
        fsq_levels_for_rate(0.1, 4)
    with pytest.raises(ValueError, match="chunk"):
        fsq_levels_for_rate(4.0, 0)


def test_fsq_grid_round_trip():
    """Every code of the grid: distinct indices covering [0, prod L), codes(indices) == forward's output."""
    fsq = ae_peer.FSQ([8, 5, 3])
    grid = torch.cartesian_prod(*(torch.arange(n) - n // 2 for n in (8, 5, 3))).float()  # (120, 3) integers
    idx = fsq.indices(grid)
    assert sorted(idx.tolist()) == list(range(120))
    assert torch.equal(fsq.codes(idx), grid / fsq.levels.div(2, rounding_mode="floor"))


def test_peer_fsq_is_not_bound_by_the_level_vocabulary():
    """A level's codes are the next level's vocabulary (at most 65536); the peer's codes go nowhere,
    so rates above 4 bits/byte at 4-byte chunks work (the X-series' code run used 5^9 codes)."""
    levels = fsq_levels_for_rate(5.4, 4)
    assert math.prod(levels) > 65536
    q = ae_peer.FSQ(levels)
    _, idx = q(torch.randn(3, len(levels)) * 3)
    assert int(idx.max()) < math.prod(levels)
    with pytest.raises(ValueError, match="at most 65536"):
        HierAEConfig(levels=[{"quantizer": "fsq", "fsq_levels": list(levels)}])


def test_fsq_forward_levels_and_straight_through():
    fsq = ae_peer.FSQ([8, 5])
    z = torch.linspace(-20, 20, 4001).unsqueeze(-1).repeat(1, 2).requires_grad_()  # (4001, 2)
    q, idx = fsq(z)
    for d, n in enumerate((8, 5)):
        assert len(q[:, d].unique()) == n  # tanh's range rounds to exactly L values, all reachable
    assert torch.equal(fsq.codes(idx), q.detach())
    q.sum().backward()
    assert (z.grad > 0).any()  # the straight-through estimator passes the gradient of the bound


# ---- chunking ------------------------------------------------------------------------------------
def test_chunk_rows_worked_example():
    ids, scored, n = chunk_rows([b"abcdefghij", b"xyz"], 4)
    assert ids.shape == (2, 12) and n == [10, 3]
    assert ids[0].tolist() == list(range(97, 107)) + [PAD, PAD]
    assert ids[1].tolist() == [120, 121, 122] + [PAD] * 9
    assert scored[0].all() and scored[1].tolist() == [True] * 4 + [False] * 8
    assert shift_right(ids)[0].tolist() == [BOS] + list(range(97, 107)) + [PAD]
    assert shift_right(ids).shape == ids.shape


def test_chunk_rows_exact_multiple_has_no_padding():
    ids, scored, _ = chunk_rows([b"abcdefgh"], 4)
    assert ids.shape == (1, 8) and PAD not in ids.tolist()[0] and scored.all()


def test_sample_batch_cut_rows_score_their_last_chunk():
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (1000,))
    ids, scored = ae_peer.sample_batch(data, 64, 4, 1.0, gen)
    for row, sc in zip(ids, scored):
        length = int((row != PAD).sum())
        assert (row[:length] != PAD).all() and (row[length:] == PAD).all()
        assert int(sc.sum()) == math.ceil(length / 4) * 4 and sc[: int(sc.sum())].all()


def test_sample_batch_line_starts():
    """p_line = 1: every window begins right after a newline; p_line = 0 draws what the plain peer draws."""
    text = b"".join(b"Line %d, said he\n" % i for i in range(200))
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    starts = (data[: len(data) - 128] == ord("\n")).nonzero().squeeze(1) + 1
    ids, _ = ae_peer.sample_batch(data, 32, 4, 0.0, torch.Generator().manual_seed(0), starts, 1.0)
    assert all(row[:4].tolist() == list(b"Line") for row in ids)
    a = ae_peer.sample_batch(data, 8, 4, 0.5, torch.Generator().manual_seed(1))
    b = ae_peer.sample_batch(data, 8, 4, 0.5, torch.Generator().manual_seed(1), starts, 0.0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ---- the model -----------------------------------------------------------------------------------
def test_decoder_is_causal_in_bytes():
    """Given the codes, the logits at positions <= t do not depend on the decoder's input after t."""
    model = tiny()
    ids, _, _ = chunk_rows([b"to be, or not to"], 4)  # 16 bytes, 4 chunks
    codes, _ = model.encode(ids)
    inp = shift_right(ids)
    base = model.decode_logits(codes, inp)
    t = 6
    changed = inp.clone()
    changed[0, t + 1 :] = (changed[0, t + 1 :] + 7) % 256
    out = model.decode_logits(codes, changed)
    torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :])


def test_decoder_sees_codes_of_its_own_and_earlier_chunks_only():
    """Changing chunk k's code changes no logit before k*C and does change those of chunk k."""
    model = tiny()
    ids, _, _ = chunk_rows([b"to be, or not to"], 4)
    codes, _ = model.encode(ids)
    inp = shift_right(ids)
    base = model.decode_logits(codes, inp)
    k = 2
    codes2 = codes.clone()
    codes2[0, k] = -codes2[0, k] + 0.5
    out = model.decode_logits(codes2, inp)
    torch.testing.assert_close(out[:, : 4 * k], base[:, : 4 * k], rtol=0, atol=1e-6)
    assert not torch.allclose(out[:, 4 * k : 4 * k + 4], base[:, 4 * k : 4 * k + 4])


def test_encoder_is_chunk_local():
    """A byte of chunk k changes chunk k's code only; so the logits of earlier chunks stay the same."""
    model = tiny()
    a, _, _ = chunk_rows([b"abcdefghijkl"], 4)
    b = a.clone()
    b[0, 9] = ord("X")
    za, zb = model.encoder(a), model.encoder(b)
    torch.testing.assert_close(za[:, :2], zb[:, :2], rtol=0, atol=0)
    torch.testing.assert_close(za[:, 3:], zb[:, 3:], rtol=0, atol=0)
    assert not torch.equal(za[:, 2], zb[:, 2])
    torch.testing.assert_close(model(a).logits[:, :8], model(b).logits[:, :8], rtol=0, atol=1e-6)


def test_generate_matches_teacher_forcing_up_to_first_miss():
    """Greedy decode reads the same codes and bytes as teacher forcing until it first errs."""
    model = tiny()
    ids, _, _ = chunk_rows([b"hello world!", b"abc"], 4)
    codes, _ = model.encode(ids)
    gen = model.generate(codes)
    tf = model(ids).logits.argmax(dim=-1)
    for r in range(2):
        miss = (tf[r] != ids[r]).nonzero()
        first = int(miss[0]) if len(miss) else ids.shape[1]
        assert torch.equal(gen[r, :first], ids[r, :first])
        if first < ids.shape[1]:
            assert gen[r, first] == tf[r, first]


def test_config_rejects_chunk_not_dividing_window():
    with pytest.raises(ValueError, match="divide max_len"):
        PeerConfig(chunk=5)


def test_training_smoke_lowers_loss_and_saves(tmp_path):
    torch.manual_seed(0)
    text = (b"the quick brown fox jumps over the lazy dog. " * 40) + b"\n"
    corpus = tmp_path / "train.txt"
    corpus.write_bytes(text)
    model = tiny(levels=(8, 8, 8))
    gen = torch.Generator().manual_seed(0)
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(20):
        ids, scored = ae_peer.sample_batch(data, 8, 4, 0.25, gen)
        loss = model(ids, scored).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses
    ae_peer.save(model, tmp_path / "ckpt", {"steps": 20})
    loaded, state = ae_peer.load(tmp_path / "ckpt")
    ids, _, _ = chunk_rows([b"the quick brown"], 4)
    torch.testing.assert_close(loaded(ids).logits, model.eval()(ids).logits, rtol=0, atol=0)
    assert state == {"steps": 20}


def test_train_and_score_cli(tmp_path, capsys):
    pytest.importorskip("evaluate")
    text = b"".join(b"line %d of a small corpus, said the fox\n" % i for i in range(300))
    (tmp_path / "train.txt").write_bytes(text)
    (tmp_path / "val.txt").write_bytes(text[:3000])
    ae_peer.main(
        ["train", "--data", str(tmp_path / "train.txt"), "--rate", "4.0", "--steps", "3"]
        + ["--width", "32", "--layers", "1", "--out", str(tmp_path / "m")]
    )
    capsys.readouterr()
    out = tmp_path / "score.json"
    res = ae_peer.main(
        ["score", "--model", str(tmp_path / "m"), "--text", str(tmp_path / "val.txt")]
        + ["--lines", "5", "--windows", "3", "--out", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(capsys.readouterr().out) == json.loads(json.dumps(res))
    for sample, n in (("lines", 5), ("windows", 3)):
        r = res[sample]
        assert r["texts"] == n
        for key in (
            "code_bits_per_byte",
            "teacher_forced_accuracy",
            "teacher_forced_byte_accuracy",
            "reconstruct_ce_bits_per_byte",
            "total_bits_per_byte",
            "exact_match",
            "free_decode",
            "codes_used",
        ):
            assert key in r, key
        assert r["total_bits_per_byte"] == pytest.approx(
            r["code_bits_per_byte"] + r["reconstruct_ce_bits_per_byte"]
        )
        assert "byte_accuracy" in r["free_decode"]
    assert res["windows"]["code_bits_per_byte"] == pytest.approx(res["nominal_bits_per_byte"])
    assert res["lines"]["code_bits_per_byte"] >= res["nominal_bits_per_byte"]
