"""Hypothesis fuzzing: random bytes and batch shapes through encode -> decode, forward and generate.

Each test draws at most 25 examples (`derandomize=True`, so CI sees the same ones every run) of up
to 3 rows of up to 40 random bytes each, framed as documents (`<s> ... </s>`) or raw (rows that
start mid-document), right- or left-padded. Nothing may raise except the documented `ValueError`
for a batch with no real token; shapes, masks and id ranges must hold:

- `encode`: each level's segment ids are -1 exactly on padding, count the segments the code mask
  holds, and codes are in [0, K) (0 on padded slots); a row with no byte has no code;
- `decode`: ids in [0, 259), a right-padded mask, an empty row for a row without codes;
- `forward` (autoencoder) and `HierAEForCausalLM.forward`: finite loss terms and logits of shape
  (B, T, 259);
- `generate` (trained 1-level model, greedy, max_new_tokens <= 4): the prompt is kept, the output
  has at most 4 new ids per row, and the cached result equals the uncached one (a cache that
  transformers passes under a name the model does not read would restart from the last token).
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from helpers.ties import chooser_logits, compare_greedy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hier_ae import HierAEForCausalLM

FUZZ = settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

rows_strategy = st.lists(st.binary(max_size=40), min_size=1, max_size=3)
# a batch of byte rows, framed as documents or raw, right- or left-padded, through either model
ROWS = given(
    rows=rows_strategy,
    framed=st.booleans(),
    left=st.booleans(),
    which=st.sampled_from(["trained", "random2"]),
)


def build(
    rows: list[bytes], framed: bool, left: bool, bos: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Byte strings -> (ids (B, T), mask (B, T)); framed rows get <s> and </s> (`bos` overrides the
    <s>); padding with id 0, on the left or the right."""
    bos = framed if bos is None else bos
    seqs = [([2] if bos else []) + [b + 3 for b in r] + ([1] if framed else []) for r in rows]
    T = max(1, max(len(s) for s in seqs))
    ids = torch.zeros(len(seqs), T, dtype=torch.long)  # (B, T)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)  # (B, T)
    for i, s in enumerate(seqs):
        at = T - len(s) if left else 0
        ids[i, at : at + len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, at : at + len(s)] = 1
    return ids, mask


@pytest.fixture(scope="module")
def models(trained_1level):
    """The trained 1-level model, and an untrained 2-level one (its boundaries and codes are arbitrary)."""
    model, _ = trained_1level
    torch.manual_seed(0)
    lm = HierAEForCausalLM(model.config)
    lm.model = model
    random2 = HierAEForCausalLM(tiny_config(2)).eval()
    return {"trained": lm.eval(), "random2": random2}


def check_encode(core, enc, ids, mask) -> None:
    B = ids.shape[0]
    assert torch.equal(enc.level_tokens[0][mask.bool()], ids[mask.bool()])
    for li, level in enumerate(core.levels):
        valid, seg = enc.level_mask[li], enc.segment_ids[li]
        assert seg.shape == valid.shape == enc.level_tokens[li].shape
        assert torch.equal(seg < 0, ~valid), f"level {li}: segment id -1 exactly on padding"
        codes, cmask = enc.codes[li], enc.code_mask[li]
        assert codes.shape == cmask.shape and codes.shape[0] == B
        n_seg = torch.where(valid, seg + 1, 0).amax(dim=1)  # (B,)
        assert torch.equal(cmask.sum(dim=1), n_seg), f"level {li}: one code per segment"
        assert bool((codes[cmask] >= 0).all()) and bool((codes[cmask] < level.cfg.num_codes).all())
        assert bool((codes[~cmask] == 0).all())
    no_bytes = ~mask.bool().any(dim=1)
    assert not bool(enc.top_mask[no_bytes].any()), "a row without bytes has no code"


@FUZZ
@ROWS
def test_encode_decode(models, rows, framed, left, which):
    core = models[which].model
    ids, mask = build(rows, framed, left)
    if not mask.any():
        with pytest.raises(ValueError, match="masks every token"):
            core.encode(ids, mask)
        return
    enc = core.encode(ids, mask)
    check_encode(core, enc, ids, mask)
    dec = core.decode(enc.top_codes, enc.top_mask)
    seq, dmask = dec.sequences, dec.attention_mask
    assert seq.shape == dmask.shape and seq.shape[0] == ids.shape[0]
    assert bool((seq >= 0).all()) and bool((seq < 259).all())
    assert bool((dmask[:, 1:] <= dmask[:, :-1]).all()), "decode's mask is right-padded"
    assert not bool(dmask[~enc.top_mask.any(dim=1)].any()), "a row without codes decodes to nothing"


@FUZZ
@ROWS
def test_forward(models, rows, framed, left, which):
    lm = models[which]
    ids, mask = build(rows, framed, left)
    if not mask.any():
        for call in (lm.model, lm):
            with pytest.raises(ValueError, match="masks every token"):
                call(ids, attention_mask=mask)
        return
    L = lm.model.num_levels
    out = lm.model(ids, mask)
    for name in ("entropy_loss", "reconstruct_loss", "commitment_loss"):
        term = getattr(out, name)
        assert term.shape == (L,) and bool(torch.isfinite(term).all()), name
    assert bool(torch.isfinite(out.top_lm_loss)) and bool(torch.isfinite(out.loss))
    logits = lm(ids, attention_mask=mask, use_cache=False).logits
    assert logits.shape == (*ids.shape, 259) and bool(torch.isfinite(logits).all())


@FUZZ
@given(
    rows=st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=3),
    bos=st.booleans(),
    new=st.integers(1, 4),
)
def test_generate(models, rows, bos, new):
    lm = models["trained"]
    ids, mask = build(rows, framed=False, left=True, bos=bos)
    kw = {"attention_mask": mask, "max_new_tokens": new, "do_sample": False, "pad_token_id": 0}
    cached = lm.generate(ids, use_cache=True, **kw)
    plain = lm.generate(ids, use_cache=False, **kw)
    T = ids.shape[1]
    assert cached.shape[0] == ids.shape[0] and T < cached.shape[1] <= T + new
    assert torch.equal(cached[:, :T], ids), "the prompt is kept"
    assert bool((cached >= 0).all()) and bool((cached < 259).all())
    # cached generation equals uncached generation, up to a greedy choice within float32 rounding
    # of a tie (the cached step and the whole-sequence forward round differently; helpers/ties.py)
    compare_greedy(cached, plain, chooser_logits(lm, plain, mask), start=T)
