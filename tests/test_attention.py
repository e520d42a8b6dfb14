"""Sliding-window attention equals a dense masked reference; rotary positions ignore left padding."""

import pytest
import torch
import torch.nn.functional as F

from hier_ae.transformer import full_causal_attention, positions_from_mask, sliding_window_attention


def dense_reference(q, k, v, window, key_valid):
    T = q.shape[2]
    t = torch.arange(T)
    allowed = (t[None, :] <= t[:, None]) & (t[:, None] - t[None, :] < window if window else True)
    mask = allowed[None] & key_valid[:, None, :]
    mask = mask | torch.eye(T, dtype=torch.bool)[None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])


# every path: T <= W (plain causal), T <= 4W (band mask over the row), T > 4W (blocks)
@pytest.mark.parametrize(
    "T,W", [(1, 4), (7, 3), (16, 4), (17, 4), (33, 8), (20, 64), (16, 16), (17, 16), (64, 16), (65, 16)]
)
def test_sliding_window_matches_dense(T, W):
    g = torch.Generator().manual_seed(T * 100 + W)
    q, k, v = (torch.randn(2, 3, T, 8, generator=g) for _ in range(3))
    key_valid = torch.ones(2, T, dtype=torch.bool)
    key_valid[1, : T // 3] = False  # left padding
    key_valid[0, T - T // 4 :] = False  # right padding
    got = sliding_window_attention(q, k, v, W, key_valid)
    want = dense_reference(q, k, v, W, key_valid)
    # every real query exact (padding queries' outputs are not used; T <= W takes the fused kernel,
    # which does not mask the right padding's own rows)
    real = key_valid[:, None, :, None].expand_as(got)
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_full_causal_matches_dense(padding):
    """Right padding takes the fused causal kernel, left padding the dense mask: both exact."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 11, 8, generator=g) for _ in range(3))
    key_valid = torch.ones(2, 11, dtype=torch.bool)
    if padding == "right":
        key_valid[0, 9:] = False
    else:
        key_valid[0, :3] = False
    got = full_causal_attention(q, k, v, key_valid)
    want = dense_reference(q, k, v, None, key_valid)
    real = key_valid[:, None, :, None].expand_as(got)
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)


def test_positions_ignore_left_padding():
    valid = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]]).bool()
    assert positions_from_mask(valid).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]]
