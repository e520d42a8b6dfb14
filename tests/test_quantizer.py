"""VectorQuantizer: reference semantics, masking, EMA, restarts in training, resume, precision, errors."""

import copy
import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from hier_ae.quantizer import VectorQuantizer

FLOAT_ATOL = 1e-6


def make_vq(seed=0, **kwargs):
    torch.manual_seed(seed)
    args = {"dim": 4, "codebook_size": 8, "depth": 1}
    args.update(kwargs)
    return VectorQuantizer(**args)


def make_mask(lengths, S):
    return torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]  # (B, S)


def state(vq):
    return {k: v.detach().clone() for k, v in vq.state_dict().items()}


def assert_states_equal(a, b, exact=False):
    assert a.keys() == b.keys()
    for k in a:
        if a[k].dtype.is_floating_point and not exact:
            torch.testing.assert_close(a[k], b[k], atol=FLOAT_ATOL, rtol=1e-6, msg=f"buffer {k}")
        else:
            assert torch.equal(a[k], b[k]), f"buffer {k} differs"


def naive_quantize(x, mask, codebook, beta):
    """Python-loop reference: explicit distances per vector, residual digits, composite ids."""
    B, S, D = x.shape
    R, K, _ = codebook.shape
    codes, digits, z = [[0] * S for _ in range(B)], [[[0] * R for _ in range(S)] for _ in range(B)], {}
    sq_errors = []
    for b in range(B):
        for s in range(S):
            if not mask[b, s]:
                continue
            residual = [float(v) for v in x[b, s]]
            q = [0.0] * D
            for r in range(R):
                dists = [
                    sum((residual[i] - float(codebook[r, k, i])) ** 2 for i in range(D)) for k in range(K)
                ]
                d = min(range(K), key=lambda k: dists[k])
                digits[b][s][r] = d
                codes[b][s] += d * K**r
                for i in range(D):
                    q[i] += float(codebook[r, d, i])
                    residual[i] -= float(codebook[r, d, i])
            z[b, s] = q
            sq_errors.append(sum((float(x[b, s, i]) - q[i]) ** 2 for i in range(D)) / D)
    commitment = beta * sum(sq_errors) / len(sq_errors)
    return torch.tensor(codes), torch.tensor(digits), z, commitment


# ---- 1. reference semantics --------------------------------------------------------------------
@pytest.mark.parametrize("depth", [1, 2])
def test_matches_naive_reference(depth):
    vq = make_vq(codebook_size=5, depth=depth, beta=0.3).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, 4, generator=gen)  # (B, S, D)
    mask = make_mask([6, 4, 1], 6)
    out = vq(x, mask)
    codes, digits, z, commitment = naive_quantize(x, mask, vq.codebook, 0.3)
    assert out.codes.dtype == torch.long and out.digits.dtype == torch.long
    assert torch.equal(out.codes, codes)
    assert torch.equal(out.digits, digits)
    for (b, s), q in z.items():
        torch.testing.assert_close(out.z[b, s], torch.tensor(q), atol=1e-5, rtol=1e-5)
    assert torch.all(out.z[~mask] == 0)
    assert math.isclose(out.commitment.item(), commitment, rel_tol=1e-5)
    # ids and look-up agree with the output
    assert torch.equal(vq.split_codes(out.codes), out.digits)
    assert torch.equal(vq.join_digits(out.digits), out.codes)
    torch.testing.assert_close(vq.lookup(out.codes)[mask], out.z[mask], atol=1e-5, rtol=1e-5)


def test_composite_id_worked_example():
    vq = make_vq(codebook_size=4, depth=2)
    assert vq.join_digits(torch.tensor([[[3, 1]]])).tolist() == [[7]]
    assert vq.split_codes(torch.tensor([[7]])).tolist() == [[[3, 1]]]
    assert torch.equal(vq.lookup(torch.tensor([[7]]))[0, 0], vq.codebook[0, 3] + vq.codebook[1, 1])
    every = torch.arange(16).view(1, 16)
    assert torch.equal(vq.join_digits(vq.split_codes(every)), every)


# ---- 2. masking equals truncating -------------------------------------------------------------------
@pytest.mark.parametrize("depth", [1, 2])
def test_masking_equals_truncating(depth):
    padded_vq = make_vq(codebook_size=16, depth=depth, pool_size=32, dead_after_steps=2)
    trunc_vq = copy.deepcopy(padded_vq)
    gen = torch.Generator().manual_seed(2)
    mask = make_mask([7, 3, 5], 7)  # (B, S)
    restarted = 0
    for _ in range(4):  # 1st apply: data init, then EMA steps (and restarts: dead_after_steps=2)
        x = torch.randn(3, 7, 4, generator=gen)  # (B, S, D)
        x[~mask] = 1e30
        x[1, 5] = float("inf")
        x[2, 6, 0] = float("nan")
        xp = x.clone().requires_grad_(True)
        xt = x[mask][None].clone().requires_grad_(True)  # (1, N, D) the valid segments only
        op = padded_vq(xp, mask)
        ot = trunc_vq(xt, torch.ones(1, xt.shape[1], dtype=torch.bool))
        assert torch.equal(op.codes[mask], ot.codes[0])
        assert torch.equal(op.digits[mask], ot.digits[0])
        assert torch.equal(op.z[mask], ot.z[0])
        assert torch.all(op.codes[~mask] == 0) and torch.all(op.z[~mask] == 0)
        torch.testing.assert_close(op.commitment, ot.commitment)
        torch.testing.assert_close(op.usage_perplexity, ot.usage_perplexity)
        assert op.dead_codes == ot.dead_codes
        w = torch.randn(op.z.shape, generator=gen)  # (B, S, D)
        ((op.z * w).sum() + op.commitment).backward()
        ((ot.z * w[mask][None]).sum() + ot.commitment).backward()
        assert torch.isfinite(xp.grad).all() and torch.all(xp.grad[~mask] == 0)
        torch.testing.assert_close(xp.grad[mask], xt.grad[0])
        stats = padded_vq.apply_ema_update()
        assert stats == trunc_vq.apply_ema_update()
        restarted += stats["restarted"]
        assert_states_equal(state(padded_vq), state(trunc_vq))
    assert torch.isfinite(padded_vq.codebook).all() and restarted > 0


# ---- 3. gradients --------------------------------------------------------------------------------
def test_no_gradient_reaches_codebook_and_straight_through():
    vq = make_vq(beta=0.5).train()
    assert list(vq.parameters()) == [] and not vq.codebook.requires_grad
    before = vq.codebook.clone()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 4, generator=gen, requires_grad=True)  # (B, S, D)
    mask = make_mask([5, 2], 5)
    w = torch.randn(2, 5, 4, generator=gen)  # (B, S, D)
    out = vq(x, mask)
    (out.z * w).sum().backward(retain_graph=True)
    assert torch.equal(x.grad, w * mask[..., None])  # identity on valid segments, zero on padding
    x.grad = None
    out.commitment.backward()
    q = vq.lookup(out.codes)  # (B, S, D)
    expected = 0.5 * 2 * (x.detach() - q) / (4 * mask.sum()) * mask[..., None]  # (B, S, D)
    torch.testing.assert_close(x.grad, expected)
    assert vq.codebook.grad is None and torch.equal(vq.codebook, before)


# ---- 4. EMA accumulation -------------------------------------------------------------------------
def test_micro_batches_equal_one_batch():
    split_vq = make_vq(depth=2, pool_size=16, dead_after_steps=3)
    whole_vq = copy.deepcopy(split_vq)
    gen = torch.Generator().manual_seed(4)
    for _ in range(6):
        xa, xb = torch.randn(2, 5, 4, generator=gen), torch.randn(3, 5, 4, generator=gen)
        ma, mb = make_mask([5, 3], 5), make_mask([1, 5, 4], 5)
        split_vq(xa, ma)
        split_vq(xb, mb)
        whole_vq(torch.cat([xa, xb]), torch.cat([ma, mb]))
        assert split_vq.apply_ema_update() == whole_vq.apply_ema_update()
        assert_states_equal(state(split_vq), state(whole_vq))
    assert int(split_vq.pool_fill) == 16  # the ring buffer wrapped


def test_ema_update_matches_formula():
    decay, eps, K = 0.9, 1e-3, 4
    vq = make_vq(codebook_size=K, ema_decay=decay, eps=eps, restart_dead_codes=False)
    rows = torch.arange(K, dtype=torch.float)[:, None].expand(K, 4) * 10  # (K, D) row k = 10k
    vq.set_codebook(rows[None])
    gen = torch.Generator().manual_seed(13)
    x = rows[torch.tensor([[0, 0, 2, 0, 3]])] + torch.randn(1, 5, 4, generator=gen)  # (1, S, D)
    mask = torch.tensor([[True, True, True, True, False]])  # the code-3 segment is padding
    vq(x, mask)
    vq.apply_ema_update()
    count = torch.tensor([3.0, 0, 1, 0])  # (K,)
    total = torch.zeros(K, 4).index_add_(0, torch.tensor([0, 0, 2, 0]), x[0, :4])  # (K, D)
    ema_count = decay * 1 + (1 - decay) * count  # (K,)
    ema_sum = decay * rows + (1 - decay) * total  # (K, D)
    n = ema_count.sum()
    smoothed = (ema_count + eps) / (n + K * eps) * n  # (K,)
    torch.testing.assert_close(vq.ema_count[0], ema_count)
    torch.testing.assert_close(vq.ema_sum[0], ema_sum)
    torch.testing.assert_close(vq.codebook[0], ema_sum / smoothed[:, None])
    assert vq.steps_since_used[0].tolist() == [0, 1, 0, 1]
    assert vq.acc_count.sum() == 0 and vq.acc_sum.abs().sum() == 0


def test_eval_forward_changes_no_buffer_and_empty_steps_count():
    vq = make_vq(dead_after_steps=2, restart_dead_codes=False)
    gen = torch.Generator().manual_seed(5)
    for _ in range(2):
        vq(torch.randn(2, 4, 4, generator=gen), make_mask([4, 2], 4))
        vq.apply_ema_update()
    before = state(vq)
    vq.eval()
    vq(torch.randn(2, 4, 4, generator=gen), make_mask([4, 2], 4))
    assert_states_equal(before, state(vq), exact=True)
    # an apply with no forward since the last one moves no codebook but still counts a step
    vq.train()
    vq.apply_ema_update()
    after = state(vq)
    assert torch.equal(after["codebook"], before["codebook"])
    assert torch.equal(after["steps_since_used"], before["steps_since_used"] + 1)


# ---- 5. dead-code restarts in real training ----------------------------------------------------
FAR = 50.0
STARVED = 5


def train_with_starved_code(restart: bool, steps: int = 6):
    """Linear encoder -> VQ -> linear decoder, AdamW on reconstruction; code STARVED set far from data."""
    torch.manual_seed(6)
    enc, dec = nn.Linear(6, 4), nn.Linear(4, 6)
    vq = VectorQuantizer(4, 8, restart_dead_codes=restart, dead_after_steps=steps, pool_size=64)
    opt = torch.optim.AdamW([*enc.parameters(), *dec.parameters()], lr=1e-2)
    gen = torch.Generator().manual_seed(7)
    mask = make_mask([4, 4, 2, 3], 4)  # (B, S)
    seen, log = [], []

    def step():
        inp = torch.randn(4, 4, 6, generator=gen)  # (B, S, 6)
        h = enc(inp)  # (B, S, D)
        seen.append(h.detach()[mask])
        out = vq(h, mask)
        recon = ((dec(out.z) - inp).pow(2).mean(-1) * mask).sum() / mask.sum()
        opt.zero_grad()
        (recon + out.commitment).backward()
        opt.step()
        log.append(vq.apply_ema_update())

    step()  # data-dependent init from the pool
    assert log[0]["initialized"]
    codebook = vq.codebook.clone()
    codebook[0, STARVED] = FAR
    vq.set_codebook(codebook)
    for _ in range(steps):
        step()
    return vq, torch.cat(seen), log[1:]


@pytest.mark.parametrize("restart", [True, False])
def test_dead_code_restart_during_training(restart):
    steps = 6
    vq, seen, log = train_with_starved_code(restart, steps)
    row = vq.codebook[0, STARVED]
    from_pool = bool((vq.pool[0, : int(vq.pool_fill)] == row).all(-1).any())
    from_seen = bool((seen == row).all(-1).any())
    if restart:
        assert [s["restarted"] > 0 for s in log] == [False] * (steps - 1) + [True]
        assert from_pool and from_seen  # an encoder output seen recently
        assert vq.steps_since_used[0, STARVED] == 0 and vq.ema_count[0, STARVED] == 1
    else:
        assert all(s["restarted"] == 0 for s in log)
        assert not from_pool and not from_seen
        torch.testing.assert_close(row, torch.full((4,), FAR), rtol=1e-3, atol=0)
        assert vq.steps_since_used[0, STARVED] == steps and log[-1]["dead_codes"] >= 1


def test_restart_is_what_revives_the_starved_code():
    on, _, _ = train_with_starved_code(True)
    off, _, _ = train_with_starved_code(False)
    assert on.codebook[0, STARVED].abs().max() < FAR / 5 < off.codebook[0, STARVED].abs().min()


def _hit(codes):
    """Inputs (1, S, 4) right on the rows of `_ladder_vq`'s codebook `codes`, and their mask."""
    x = torch.tensor(codes, dtype=torch.float)[None, :, None].expand(1, len(codes), 4) * 10 + 0.1
    return x, torch.ones(1, len(codes), dtype=torch.bool)


def _ladder_vq(**kwargs):
    vq = make_vq(codebook_size=8, restart_dead_codes=False, **kwargs)
    vq.set_codebook(torch.arange(8.0)[None, :, None].expand(1, 8, 4) * 10)  # row k = (10k, ..., 10k)
    return vq


@pytest.mark.parametrize("new_after, expected", [(None, [0, 0, 0, 0, 5, 6]), (2, [0, 5, 5, 5, 5, 6])])
def test_new_codes_die_sooner_than_used_ones(new_after, expected):
    """Codes 3..7 are never picked after `set_codebook`; code 2 is picked in step 1 only. With
    dead_after_steps 5, code 2 is dead once 5 steps idle (after step 6) either way; with
    new_code_dead_after_steps 2, the never-picked codes are dead after 2 steps instead of 5."""
    vq = _ladder_vq(dead_after_steps=5, new_code_dead_after_steps=new_after)
    dead = []
    for step in range(6):
        vq(*_hit([0, 1, 2] if step == 0 else [0, 1]))
        dead.append(vq.apply_ema_update()["dead_codes"])
    assert dead == expected
    assert vq.dead_code_count().item() == expected[-1]
    if new_after is not None:
        assert vq.used_since_set[0].tolist() == [True] * 3 + [False] * 5


def test_restarted_codes_are_new_again():
    """A restart makes a code new: it must be picked within new_code_dead_after_steps to stay."""
    vq = _ladder_vq(dead_after_steps=50, new_code_dead_after_steps=2)
    vq.restart_dead_codes = True
    restarted = []
    for _ in range(2):
        vq(*_hit([0, 1, 2, 2]))
        restarted.append(vq.apply_ema_update()["restarted"])
    # the 5 never-picked codes die after step 2 and are replaced by pool rows (the inputs seen)
    assert restarted == [0, 5]
    assert vq.used_since_set[0].tolist() == [True] * 3 + [False] * 5
    assert vq.steps_since_used[0, 3:].tolist() == [0] * 5
    pool = vq.pool[0, : int(vq.pool_fill)]
    assert all(bool((pool == vq.codebook[0, k]).all(-1).any()) for k in range(3, 8))
    # the restarted rows equal the inputs, so the next step picks them: those are kept from then on
    picked = vq(*_hit([0, 1, 2, 2])).codes.unique()
    vq.apply_ema_update()
    assert bool((picked >= 3).any())
    assert vq.used_since_set[0, picked].all()


def test_new_code_state_is_stored_only_with_the_option():
    assert "used_since_set" not in make_vq().state_dict()
    assert make_vq(new_code_dead_after_steps=3).state_dict()["used_since_set"].shape == (1, 8)


# ---- 6. exact resume -----------------------------------------------------------------------------
@pytest.mark.parametrize("new_after", [None, 1])
def test_state_dict_round_trip_resumes_exactly(tmp_path, new_after):
    from safetensors.torch import load_file, save_file

    kwargs = {"codebook_size": 16, "depth": 2, "dead_after_steps": 2, "pool_size": 24}
    kwargs["new_code_dead_after_steps"] = new_after
    vq = make_vq(seed=8, **kwargs)
    gen = torch.Generator().manual_seed(9)
    centres = torch.randn(3, 4, generator=gen) * 3  # few clusters, so many codes die and restart

    def batch():
        x = centres[torch.randint(3, (2, 6), generator=gen)] + 0.1 * torch.randn(2, 6, 4, generator=gen)
        return x, make_mask([6, 4], 6)  # (B, S, D), (B, S)

    for _ in range(4):
        vq(*batch())
        vq.apply_ema_update()
    save_file(vq.state_dict(), str(tmp_path / "vq.safetensors"))
    resumed = make_vq(seed=123, **kwargs)
    resumed.load_state_dict(load_file(str(tmp_path / "vq.safetensors")), strict=True)
    assert_states_equal(state(vq), state(resumed), exact=True)
    restarted = 0
    for _ in range(6):
        for _ in range(2):  # two micro-batches per optimizer step
            x, mask = batch()
            assert torch.equal(vq(x, mask).codes, resumed(x, mask).codes)
        stats = vq.apply_ema_update()
        assert stats == resumed.apply_ema_update()
        restarted += stats["restarted"]
        assert_states_equal(state(vq), state(resumed), exact=True)
    assert restarted > 0


# ---- 7. precision -------------------------------------------------------------------------------
def test_bf16_autocast_gives_fp32_codes():
    vq = make_vq(codebook_size=32, depth=2)
    gen = torch.Generator().manual_seed(10)
    for _ in range(3):
        vq(torch.randn(4, 16, 4, generator=gen), make_mask([16, 9, 3, 16], 16))
        vq.apply_ema_update()
    vq.eval()
    x, mask = torch.randn(4, 16, 4, generator=gen), make_mask([16, 12, 5, 1], 16)
    ref = vq(x, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(x, mask)
    assert torch.equal(out.codes, ref.codes) and torch.equal(out.z, ref.z)
    assert out.z.dtype == torch.float32 and out.commitment.dtype == torch.float32
    xb = x.bfloat16()
    assert torch.equal(vq(xb, mask).codes, vq(xb.float(), mask).codes)


# ---- 8. errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"codebook_size": 256, "depth": 3}, r"codebook_size\*\*depth must be <= 65536.*256\*\*3 = 16777216"),
        ({"codebook_size": 0}, r"codebook_size must be an integer >= 2, got 0"),
        ({"codebook_size": 1}, r"codebook_size must be an integer >= 2, got 1"),
        ({"dim": 0}, r"dim must be an integer >= 1, got 0"),
        ({"depth": 0}, r"depth must be an integer >= 1, got 0"),
        ({"ema_decay": 1.0}, r"ema_decay must be a number in the open interval \(0, 1\), got 1.0"),
        ({"beta": -0.1}, r"beta must be a finite number >= 0, got -0.1"),
        ({"eps": 0.0}, r"eps must be a finite number > 0, got 0.0"),
        ({"dead_after_steps": 0}, r"dead_after_steps must be an integer >= 1, got 0"),
        ({"pool_size": 0}, r"pool_size must be an integer >= 1, got 0"),
        (
            {"new_code_dead_after_steps": 0},
            r"new_code_dead_after_steps must be None or an integer >= 1, got 0",
        ),
        (
            {"new_code_dead_after_steps": 2.0},
            r"new_code_dead_after_steps must be None or an integer >= 1, got 2.0",
        ),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_vq(**kwargs)


def test_bad_inputs():
    vq = make_vq(codebook_size=4, depth=2)
    x, mask = torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"x must have 3 dims \(B, S, D\), got 2 dims"):
        vq(x[0], mask[0])
    with pytest.raises(ValueError, match=r"x must have last dim D = dim = 4"):
        vq(torch.randn(2, 3, 5), mask)
    with pytest.raises(ValueError, match=r"x must be a floating-point tensor"):
        vq(x.long(), mask)
    with pytest.raises(
        ValueError, match=r"mask must have shape \(B, S\) = \(2, 3\) matching x, got \(2, 4\)"
    ):
        vq(x, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask must be bool"):
        vq(x, mask.float())
    with pytest.raises(
        ValueError, match=r"codes must lie in \[0, K\*\*R\) = \[0, 16\).*got values in \[0, 16\]"
    ):
        vq.lookup(torch.tensor([[0, 16]]))
    with pytest.raises(ValueError, match=r"got values in \[-1, 3\]"):
        vq.lookup(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match=r"codes must be an integer tensor"):
        vq.lookup(torch.tensor([[1.0]]))
    with pytest.raises(ValueError, match=r"digits must lie in \[0, K\) = \[0, 4\)"):
        vq.join_digits(torch.tensor([[4, 0]]))
    with pytest.raises(ValueError, match=r"last axis of size depth R=2"):
        vq.join_digits(torch.tensor([[1, 0, 0]]))
    with pytest.raises(ValueError, match=r"codebook must have shape \(R, K, D\) = \(2, 4, 4\)"):
        vq.set_codebook(torch.zeros(1, 4, 4))


# ---- 9. usage statistics ------------------------------------------------------------------------
def test_usage_perplexity_and_dead_codes():
    vq = make_vq(codebook_size=8, dead_after_steps=3, restart_dead_codes=False)
    vq.set_codebook(torch.arange(8.0)[None, :, None].expand(1, 8, 4) * 10)  # row k = (10k, ..., 10k)
    hits = [0, 0, 0, 0, 0, 1, 1, 2]  # histogram 5, 2, 1 over codes 0, 1, 2
    x = torch.tensor(hits + [7, 7.0])[None, :, None].expand(1, 10, 4) * 10 + 0.1  # (1, S, D)
    mask = torch.tensor([[True] * 8 + [False, False]])  # the padded code-7 segments must not count
    out = vq(x, mask)
    assert out.codes[0, :8].tolist() == hits
    p = torch.tensor([5, 2, 1]) / 8
    assert math.isclose(out.usage_perplexity.item(), math.exp(-(p * p.log()).sum().item()), rel_tol=1e-6)
    assert out.dead_codes.dtype == torch.long and out.dead_codes.item() == 0
    empty = vq(x, torch.zeros_like(mask))
    assert empty.usage_perplexity.item() == 0.0 and empty.commitment.item() == 0.0
    # codes 3..7 go unused (7 only appears on padding); dead once unused for 3 optimizer steps
    dead_after_apply = []
    for _ in range(4):
        vq(x, mask)
        stats = vq.apply_ema_update()
        assert stats["used_codes"] == 3
        dead_after_apply.append(stats["dead_codes"])
    assert dead_after_apply == [0, 0, 5, 5]
    assert vq(x, mask).dead_codes.item() == 5
    assert vq.steps_since_used[0].tolist() == [0, 0, 0, 4, 4, 4, 4, 4]


# ---- distributed: statistics all-reduced, random choices from rank 0 ---------------------------
def _dist_worker(rank, world, init_file, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        vq = make_vq(seed=11, depth=2, pool_size=16, dead_after_steps=2)
        gen = torch.Generator().manual_seed(12)
        for _ in range(5):
            xs = torch.randn(world, 2, 5, 4, generator=gen)  # every rank draws all, keeps its share
            vq(xs[rank], make_mask([5, 3], 5))
            vq.apply_ema_update()
        results[rank] = {k: v for k, v in state(vq).items() if k not in ("pool", "pool_ptr", "pool_fill")}
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_agree():
    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    with tempfile.TemporaryDirectory() as tmp:
        manager = mp.Manager()
        results = manager.dict()
        mp.spawn(_dist_worker, args=(2, os.path.join(tmp, "init"), results), nprocs=2, join=True)
        r0, r1 = dict(results[0]), dict(results[1])
    assert_states_equal(r0, r1, exact=True)
    assert int(r0["restart_step"]) == 5 and bool(r0["initialized"])


def test_given_codes_replace_the_nearest_and_steer_the_ema():
    """`codes=` (the decoder's choice): z, the commitment and the EMA counts follow the given codes;
    depth > 1, a wrong shape or an id out of range is refused."""
    torch.manual_seed(0)
    q = VectorQuantizer(dim=4, codebook_size=8, depth=1)
    q.set_codebook(torch.randn(1, 8, 4))
    x, mask = torch.randn(2, 3, 4), torch.tensor([[True, True, False], [True, True, True]])
    forced = (q.eval()(x, mask).codes + 1) % 8  # (B, S): never the nearest (eval: no statistics)
    out = q.train()(x, mask, codes=forced)
    assert torch.equal(out.codes[mask], forced[mask])
    torch.testing.assert_close(out.z[mask], q.codebook[0][forced[mask]])
    want = q.beta * (x[mask] - q.codebook[0][forced[mask]]).pow(2).mean(-1).mean()
    torch.testing.assert_close(out.commitment, want)
    torch.testing.assert_close(q.acc_count[0], torch.bincount(forced[mask], minlength=8).float())
    with pytest.raises(ValueError, match=r"codes must have shape \(B, S\) = \(2, 3\)"):
        q(x, mask, codes=forced[:, :2])
    with pytest.raises(ValueError, match=r"codes must lie in \[0, K\*\*R\) = \[0, 8\)"):
        q(x, mask, codes=forced + 8)
    deep = VectorQuantizer(dim=4, codebook_size=8, depth=2)
    with pytest.raises(ValueError, match="depth 1 only"):
        deep(x, mask, codes=forced)
