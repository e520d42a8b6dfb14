"""`HierAEModel.forward` refuses unknown keywords (a misspelt option would be silently ignored)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from helpers.ties import LOGIT_MARGIN, top2_gap

from hier_ae import HierAEForCausalLM, HierAEModel
from hier_ae.validation import HF_IGNORED_FORWARD_KWARGS


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HierAEModel(tiny_config(1)).eval()


IDS = torch.tensor([[2, 107, 108, 35, 109, 1]])


def test_misspelt_keyword_raises_with_the_allowed_ones(model):
    with pytest.raises(TypeError) as err:
        model(input_ids=IDS, reconstct_levels=[0], bogus=1)
    msg = str(err.value)
    assert "['bogus', 'reconstct_levels']" in msg
    assert "Did you mean 'reconstruct_levels'" in msg
    assert "'start_level'" in msg and "'loss_weights'" in msg  # the allowed keywords are listed
    with pytest.raises(TypeError, match="inputs_embeds"):  # not supported: never silently ignored
        model(input_ids=IDS, inputs_embeds=torch.zeros(1, 6, 64))


def test_keywords_transformers_passes_are_ignored(model):
    with torch.no_grad():
        ref = model(input_ids=IDS).loss
        extra = {name: None for name in HF_IGNORED_FORWARD_KWARGS}
        extra.update(labels=IDS, use_cache=False, output_attentions=False, num_items_in_batch=6)
        out = model(input_ids=IDS, return_dict=True, **extra)
        assert torch.equal(out.loss, ref)
        assert model(input_ids=IDS, mode="predict", output_hidden_states=False).logits.shape == (1, 6, 259)


def test_causal_lm_generate_still_runs():
    torch.manual_seed(0)
    lm = HierAEForCausalLM(tiny_config(1)).eval()
    out = lm.generate(IDS[:, :4], max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7) and torch.equal(out[:, :4], IDS[:, :4])  # the prompt is kept
    # greedy: each new id is the argmax of the uncached logits of everything before it
    with torch.no_grad():
        logits = lm(out, use_cache=False).logits  # (1, 7, 259)
    # (up to a near-tie: the cached step rounds differently, tests/helpers/ties.py)
    want = logits[0, 3:6].argmax(-1)  # (3,)
    assert all(
        bool(a == b) or float(top2_gap(g)) < LOGIT_MARGIN for a, b, g in zip(out[0, 4:], want, logits[0, 3:6])
    )
