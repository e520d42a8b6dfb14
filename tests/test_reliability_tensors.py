"""Tensors of the wrong dtype, shape or range: each call raises a ValueError saying what is allowed.

Tried here (an untrained tiny model, max_input_bytes=512), with the message each error carries:

- input_ids (1, 0) or (0, 5)                      -> "empty"
- ids 300 or -1                                   -> "[0, 259)"
- float, bool or complex ids                      -> "integer"
- a list instead of a tensor, or None             -> "torch.Tensor"
- 1-D or 3-D ids                                  -> "shape (batch, length)"
- 513 ids                                         -> "max_input_bytes=512"
- int32 / int16 / uint8 ids                       -> accepted: the same codes as int64
- attention_mask (1, 3) for ids (1, 2), or 1-D    -> "does not match"
- attention_mask all 0                            -> "masks every token"
- attention_mask with 2, 0.5 or NaN               -> "only 0 (padding) and 1"
- attention_mask as a list                        -> "must be a torch.Tensor"
- decode codes >= K or < 0                        -> "[0, 256)"
- decode codes float / complex / 1-D / 3-D / list -> "integer" / "non-empty shape" / "torch.Tensor"
- decode mask of another shape, or holding 2      -> "codes' shape" / "only 0"
- out-of-range codes in masked slots              -> accepted: padded slots are never read
- forward num_levels 0, reconstruct_levels [3]    -> "num_levels=0" / "subset"
- forward mode "x", loss_weights {"foo": 1}       -> "mode='x'" / "unknown keys"
- causal LM labels of another shape / id 999      -> "labels shape" / "-100"
- past_key_values not a HierAECache               -> "HierAECache"
- both cache= and past_key_values=                -> "not both"
- zero_context with a cache                       -> "zero_context"
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from hier_ae import HierAEForCausalLM
from hier_ae.cache import HierAECache


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return HierAEForCausalLM(tiny_config(1, max_input_bytes=512)).eval()


IDS = torch.tensor([[2, 50, 60, 1]])


@pytest.mark.parametrize(
    "ids,mask,match",
    [
        (torch.zeros(1, 0, dtype=torch.long), None, "empty"),
        (torch.zeros(0, 5, dtype=torch.long), None, "empty"),
        (torch.tensor([[3, 300]]), None, r"\[0, 259\)"),
        (torch.tensor([[3, -1]]), None, r"\[0, 259\)"),
        (torch.tensor([[3.0, 4.0]]), None, "integer"),
        (torch.tensor([[True, False]]), None, "integer"),
        (torch.tensor([[3, 4]], dtype=torch.complex64), None, "integer"),
        ([[3, 4]], None, "torch.Tensor"),
        (None, None, "torch.Tensor"),
        (torch.tensor([3, 4]), None, r"shape \(batch, length\)"),
        (torch.tensor([[[3, 4]]]), None, r"shape \(batch, length\)"),
        (torch.full((1, 513), 5), None, "max_input_bytes=512"),
        (torch.tensor([[3, 4]]), torch.ones(1, 3), "does not match"),
        (torch.tensor([[3, 4]]), torch.ones(2), "does not match"),
        (torch.tensor([[3, 4]]), torch.zeros(1, 2), "masks every token"),
        (torch.tensor([[3, 4]]), torch.tensor([[1, 2]]), r"only 0 \(padding\) and 1"),
        (torch.tensor([[3, 4]]), torch.tensor([[1.0, 0.5]]), r"only 0 \(padding\) and 1"),
        (torch.tensor([[3, 4]]), torch.tensor([[1.0, float("nan")]]), r"only 0 \(padding\) and 1"),
        (torch.tensor([[3, 4]]), [[1, 1]], "must be a torch.Tensor"),
    ],
)
def test_bad_input_ids_and_masks(lm, ids, mask, match):
    for call in (lm.model, lm.model.encode, lm.model.predict, lm):
        with pytest.raises(ValueError, match=match):
            call(ids, attention_mask=mask)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_narrow_integer_ids_are_accepted(lm, dtype):
    ref = lm.model.encode(IDS)
    got = lm.model.encode(IDS.to(dtype))
    assert torch.equal(got.top_codes, ref.top_codes) and torch.equal(got.segment_ids[0], ref.segment_ids[0])


@pytest.mark.parametrize(
    "codes,mask,match",
    [
        (torch.tensor([[0, 256]]), None, r"\[0, 256\)"),
        (torch.tensor([[-1]]), None, r"\[0, 256\)"),
        (torch.tensor([[0.5]]), None, "integer"),
        (torch.tensor([[1, 2]], dtype=torch.complex64), None, "integer"),
        (torch.zeros(0, dtype=torch.long), None, "non-empty shape"),
        (torch.tensor([1, 2]), None, "non-empty shape"),
        (torch.tensor([[[1, 2]]]), None, "non-empty shape"),
        ([[1, 2]], None, "torch.Tensor"),
        (torch.tensor([[1, 2]]), torch.ones(1, 3), "codes' shape"),
        (torch.tensor([[1, 2]]), torch.tensor([[1, 2]]), "only 0"),
    ],
)
def test_decode_rejects_bad_codes(lm, codes, mask, match):
    with pytest.raises(ValueError, match=match):
        lm.model.decode(codes, mask)


def test_masked_slots_are_never_read(lm):
    """Out-of-range codes in masked slots are accepted and change nothing: masking equals truncating."""
    out = lm.model.decode(torch.tensor([[1, 999, -5]]), torch.tensor([[1, 0, 0]]))
    alone = lm.model.decode(torch.tensor([[1]]), torch.tensor([[1]]))
    assert out.attention_mask.sum() >= 1  # code 1 stands for at least one byte
    assert torch.equal(out.sequences, alone.sequences)
    assert torch.equal(out.attention_mask, alone.attention_mask)
    assert all(torch.equal(a, b) for a, b in zip(out.level_tokens, alone.level_tokens, strict=True))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_levels": 0}, "num_levels=0"),
        ({"reconstruct_levels": (3,)}, "subset"),
        ({"mode": "x"}, "mode='x'"),
        ({"loss_weights": {"foo": 1}}, "unknown keys"),
        ({"num_levels": None, "run_top_lm": True, "reconstruct_levels": (0, 1)}, "subset"),
    ],
)
def test_bad_forward_arguments(lm, kwargs, match):
    with pytest.raises(ValueError, match=match):
        lm.model(IDS, **kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"labels": torch.tensor([[1, 2]])}, "labels shape"),
        ({"labels": torch.tensor([[1, 2, 999, 4]])}, r"\[0, 259\) or -100"),
        ({"labels": torch.tensor([[1.0, 2.0, 3.0, 4.0]])}, "integer"),
        ({"past_key_values": object()}, "HierAECache"),
        ({"past_key_values": HierAECache(), "cache": HierAECache()}, "not both"),
    ],
)
def test_bad_causal_lm_arguments(lm, kwargs, match):
    with pytest.raises(ValueError, match=match):
        lm(IDS, **kwargs)


def test_labels_ignore_index_is_allowed(lm):
    labels = IDS.clone()
    labels[0, :2] = -100
    assert torch.isfinite(lm(IDS, labels=labels, use_cache=False).loss)


def test_zero_context_with_a_cache(lm):
    cache = lm(IDS, use_cache=True).past_key_values
    with pytest.raises(ValueError, match="zero_context"):
        lm(torch.tensor([[50]]), past_key_values=cache, zero_context=True)
