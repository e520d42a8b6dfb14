"""The level's encoder, pooling, quantiser, segmentation and decoder options (issues 20, 21): FSQ,
concat pooling, a segment-scope encoder, a minimum segment length, hashed n-gram embeddings, the
entropy model's states at the decoder's input and codes chosen by the decoder. Each keeps the
model's contracts: prefix invariance, cache == no cache, streamed decode == recompute, save / reload
through the Auto classes; FSQ's index arithmetic on its worked example."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_TOP, tiny_level
from helpers.ties import chooser_logits, compare_greedy
from test_causal_lm import as_lm, assert_prefix_invariant
from test_decode_streaming import _assert_same
from transformers import AutoModelForCausalLM

from hier_ae import HierAEConfig, HierAEModel
from hier_ae.fsq import FiniteScalarQuantizer
from hier_ae.level import pick_candidate
from hier_ae.level_modules import entropy_at_inputs

OPTIONS = {
    "fsq": {"quantizer": "fsq", "fsq_levels": [8, 5, 5]},
    "concat": {"pooling": "concat"},
    "segment_scope": {"encoder_scope": "segment"},
    "all": {"quantizer": "fsq", "fsq_levels": [8, 8], "pooling": "concat", "encoder_scope": "segment"},
    # the rule fires on every token (threshold 0): segments are min_segment_len long, EOS aside
    "min_len": {"min_segment_len": 3, "threshold": 0.0},
    # BLT's hashed n-gram embeddings at the decoder's input (hash_ngrams.py); few buckets, so that
    # n-grams share rows as they do at full size
    "ngrams": {"decoder_ngrams": [2, 3], "ngram_buckets": 16},
    # the decoder's input adds a map of the entropy model's state at the token it reads
    "reads_entropy": {"decoder_reads_entropy": True},
    # ... from an entropy model with its own (here shorter) window: caches and steps use that window
    "entropy_window": {"decoder_reads_entropy": True, "entropy_window": 8},
    # the top LM's input adds a map of each code's pooled vector (a top_lm setting)
    "reads_pooled": {"top_lm": {"reads_pooled": True}},
    # the top LM attends to the last 2 positions of its stream only (sliding window)
    "top_window": {"top_lm": {"window": 2}},
    # residual dropout in the decoder's and the top LM's layers (training only: eval is unchanged)
    "dropout": {"decoder_dropout": 0.3, "top_lm": {"dropout": 0.3}},
    # reconstruct mode and decode add a learned embedding of each segment's code id to its vector
    "code_embedding": {"decoder_code_embedding": True},
    # the quantiser codes the pooled vector minus its prediction from the state before the segment
    "predictive": {"predictive_codes": True},
    # each code is the one of the 4 nearest under which the decoder's CE of its segment is lowest
    "code_choice": {"code_choice_candidates": 4},
    # segments close at a budget of bits (the surprisal of their tokens plus the next token's entropy):
    # at random init ~8 bits a byte, so mostly 2-byte segments with 1- and 3-byte ones among them
    "budget": {"boundary_mode": "budget", "threshold": 20.0},
    # the rule fires on every token (threshold 0) except inside a UTF-8 character; random bytes are
    # full of lead and continuation bytes
    "utf8": {"utf8_boundaries": True, "threshold": 0.0},
    # a second codebook quantises what each code leaves of its pooled vector (escape codes; read by
    # `decode(..., escape_codes=)` only, so the contracts hold as without)
    "escape": {
        "escape_codebook_size": 16,
        "decoder_code_embedding": True,
        "escape_train_rate": 0.25,
        "escape_train_failed": True,
        "escape_choice_candidates": 4,
    },
}


def _model(option: str, num_levels: int = 1) -> HierAEModel:
    torch.manual_seed(0)
    level_opts = dict(OPTIONS[option])
    top = {**TINY_TOP, **level_opts.pop("top_lm", {})}
    levels = [tiny_level(**{"threshold": 1e9, "max_segment_len": 5, **level_opts})]
    if num_levels == 2:
        levels.append(
            tiny_level(hidden_size=32, num_heads=2, threshold=1e9, max_segment_len=3, codebook_size=64)
        )
    model = HierAEModel(HierAEConfig(levels=levels, top_lm=top))
    with torch.no_grad():  # n-gram rows as large as the byte embeddings, so a wrong history shows
        for table in [] if model.levels[0].decoder.ngrams is None else model.levels[0].decoder.ngrams.tables:
            table.weight.mul_(50.0)
        if model.levels[0].decoder.entropy_in is not None:  # likewise the entropy model's states
            model.levels[0].decoder.entropy_in.weight.mul_(50.0)
        if model.top_lm.pooled_in is not None:  # likewise the pooled vectors
            model.top_lm.pooled_in.weight.mul_(50.0)
        if model.levels[0].decoder.code_embed is not None:  # likewise the code-id embeddings
            model.levels[0].decoder.code_embed.weight.mul_(50.0)
        if model.levels[0].code_predictor is not None:  # likewise the prediction of the pooled vector
            model.levels[0].code_predictor.weight.mul_(50.0)
    return model


# ---- FSQ ----------------------------------------------------------------------------------------
def test_fsq_worked_example():
    """fsq.py's docstring: levels (8, 5); code 13 -> digits (5, 1) -> scaled (1/4, -1/2)."""
    q = FiniteScalarQuantizer(dim=4, levels=(8, 5))
    assert q.num_codes == 40
    assert q.fsq_digits(torch.tensor([5, 13, 39])).tolist() == [[5, 0], [5, 1], [7, 4]]
    # bounded values round to exactly the L_i integers of each dim: {-4..3} and {-2..2}
    b = q.grid.bound(torch.linspace(-30, 30, 2001)[:, None].expand(2001, 2))
    assert b[:, 0].round().unique().tolist() == [-4, -3, -2, -1, 0, 1, 2, 3]
    assert b[:, 1].round().unique().tolist() == [-2, -1, 0, 1, 2]
    assert q.grid.bound(torch.zeros(1, 2)).abs().max() < 1e-6  # 0 maps to 0
    # lookup(code) is what forward gives for that code; up's input for code 13 is (1/4, -1/2)
    with torch.no_grad():
        q.up.weight.copy_(torch.eye(4, 2))
        q.up.bias.zero_()
    torch.testing.assert_close(q.lookup(torch.tensor([[13]])), torch.tensor([[[0.25, -0.5, 0.0, 0.0]]]))


def test_fsq_forward_codes_lookup_padding_and_gradient():
    torch.manual_seed(0)
    q = FiniteScalarQuantizer(dim=16, levels=(8, 5, 5))
    with torch.no_grad():
        q.down.weight.mul_(20)  # spread the inputs over many codes
    x = torch.randn(3, 7, 16, requires_grad=True)
    mask = torch.arange(7)[None, :] < torch.tensor([7, 3, 0])[:, None]  # (3, 7), a row with none
    out = q(x, mask)
    assert out.codes[mask].unique().numel() > 5
    assert (out.codes[~mask] == 0).all() and (out.z[~mask] == 0).all()
    assert (out.codes >= 0).all() and (out.codes < 200).all()
    torch.testing.assert_close(q.lookup(out.codes)[mask], out.z[mask])
    out.z.sum().backward()  # straight-through: the gradient reaches the input of valid segments
    assert x.grad[mask].abs().sum() > 0 and x.grad[~mask].abs().sum() == 0
    assert q.apply_ema_update() == {}
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 200\)"):
        q.lookup(torch.tensor([[200]]))


@pytest.mark.parametrize(
    "levels, match",
    [(None, "non-empty list"), ([8, 1], "integers >= 2"), ([300, 300], "at most 65536")],
)
def test_fsq_config_errors_name_the_field(levels, match):
    with pytest.raises(ValueError, match=rf"levels\[0\]\.fsq_levels.*{match}"):
        HierAEConfig(levels=[{"quantizer": "fsq", "fsq_levels": levels}])


@pytest.mark.parametrize(
    "field, value", [("quantizer", "rvq"), ("pooling", "mean"), ("encoder_scope", "document")]
)
def test_unknown_option_values_are_rejected(field, value):
    with pytest.raises(ValueError, match=rf"levels\[0\]\.{field}='{value}' is invalid: one of"):
        HierAEConfig(levels=[{field: value}])


def test_segment_scope_needs_offsets():
    with pytest.raises(ValueError, match="segment_offsets"):
        HierAEConfig(levels=[{"encoder_scope": "segment", "segment_offsets": False}])


def test_segment_scope_code_depends_only_on_its_segment():
    """With `encoder_scope: segment` a segment's code is a function of its own bytes: the same
    segment after two different contexts gets the same pooled vector (row scope: it differs)."""
    for option, same in (("segment_scope", True), ("concat", False)):
        model = _model(option).eval()
        lv = model.levels[0]
        # max_segment_len 5 and an unreachable threshold: segments are bytes [0, 5), [5, 10)
        a = torch.tensor([[10, 11, 12, 13, 14, 50, 51, 52, 53, 54]])
        b = torch.tensor([[90, 91, 92, 93, 94, 50, 51, 52, 53, 54]])
        za = lv.bottom_up(a, torch.ones_like(a, dtype=torch.bool)).q.z[0, 1]
        zb = lv.bottom_up(b, torch.ones_like(b, dtype=torch.bool)).q.z[0, 1]
        assert torch.equal(za, zb) == same, option


# ---- the contracts, per option ------------------------------------------------------------------
@pytest.mark.parametrize("option", list(OPTIONS))
def test_prefix_invariance_and_cache_with_option(option):
    model = _model(option, num_levels=2)
    lm = as_lm(model)
    ids = torch.randint(3, 259, (3, 40), generator=torch.Generator().manual_seed(1))
    ids[2, 30:] = 0  # a right-padded row, scored without an attention mask
    assert_prefix_invariant(lm, ids)
    prompt = ids[:2, :12]
    mask = torch.ones_like(prompt)
    a = lm.generate(prompt, attention_mask=mask, max_new_tokens=25, do_sample=False, use_cache=True)
    b = lm.generate(prompt, attention_mask=mask, max_new_tokens=25, do_sample=False, use_cache=False)
    assert not compare_greedy(a, b, chooser_logits(lm, b, mask), start=prompt.shape[1])


@pytest.mark.parametrize("option", list(OPTIONS))
def test_streamed_decode_equals_recompute_with_option(option):
    model = _model(option).eval()
    codes = torch.randint(0, 64, (4, 7))  # (B, S): valid ids for every option's code count
    cmask = torch.arange(7)[None, :] < torch.tensor([7, 1, 4, 5])[:, None]
    _assert_same(model, codes, cmask)


@pytest.mark.parametrize(
    "option",
    [
        "fsq",
        "all",
        "min_len",
        "ngrams",
        "reads_entropy",
        "reads_pooled",
        "top_window",
        "dropout",
        "code_embedding",
        "predictive",
        "code_choice",
        "utf8",
        "escape",
    ],
)
def test_option_survives_save_and_reload(option, tmp_path):
    model = _model(option)
    lm = as_lm(model)
    lm.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    for key, value in OPTIONS[option].items():
        if key == "top_lm":
            assert all(getattr(back.config.top_lm_config, k) == v for k, v in value.items())
        else:
            assert getattr(back.config.level_configs[0], key) == value
    ids = torch.randint(3, 259, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, lm(ids).logits, atol=1e-5, rtol=1e-5)
        assert torch.equal(back.model.encode(ids).top_codes, model.encode(ids).top_codes)


def test_minimum_segment_length_holds_in_encode_and_decode():
    """With the rule firing on every token, min_segment_len 3 makes every segment 3 tokens long (the
    row's last may be shorter); decode draws the same boundaries on the tokens it regenerates."""
    model = _model("min_len").eval()
    ids = torch.randint(3, 259, (2, 14), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        p = model.levels[0].bottom_up(ids, torch.ones_like(ids, dtype=torch.bool))
        assert p.layout.seg_len.tolist() == [[3, 3, 3, 3, 2]] * 2
        codes = p.q.codes[:, :4]  # (2, 4): four closed segments
        tokens, valid, seg_id = model.levels[0].decode_codes(codes, torch.ones_like(codes, dtype=torch.bool))
    for b in range(2):
        ends_at_eos = bool((tokens[b][valid[b]] == model.levels[0].vocab.eos_id).any())
        lengths = torch.bincount(seg_id[b][valid[b]]).tolist()
        if not ends_at_eos:  # a random decoder may emit EOS, which closes a segment at any length
            assert lengths == [3, 3, 3, 3]


def test_utf8_boundaries_never_open_a_segment_inside_a_character():
    """With the rule firing on every token, `utf8_boundaries` opens a segment at every byte but the
    continuation bytes of a character (max_segment_len 5 is never reached here), in encode and in the
    boundaries decode draws on the tokens it regenerates from those codes."""
    from hier_ae.data.batching import frame_document
    from hier_ae.segmentation import utf8_owed

    model = _model("utf8").eval()
    text = "aé中\n🙂x"
    ids = frame_document(text.encode())[None]  # (1, N + 2): <s> a C3 A9 E4 B8 AD 0A F0 9F 99 82 x </s>
    with torch.no_grad():
        p = model.levels[0].bottom_up(ids, torch.ones_like(ids, dtype=torch.bool))
    pieces = [bytes(t - 3 for t in ids[0, 1:-1].tolist())]
    assert p.layout.seg_len[0].tolist() == [1, 1, 2, 3, 1, 4, 1, 1]  # <s> | a | é | 中 | \n | 🙂 | x | </s>
    assert pieces[0].decode() == text
    assert utf8_owed(ids)[0, 1:-1].tolist() == [0, 1, 0, 2, 1, 0, 0, 3, 2, 1, 0, 0]
    codes = p.q.codes[:, :7]  # the codes up to "x"
    with torch.no_grad():
        tokens, valid, seg_id = model.levels[0].decode_codes(codes, torch.ones_like(codes, dtype=torch.bool))
    got = tokens[0][valid[0]]
    owed = utf8_owed(got[None])[0]
    starts = torch.cat([torch.ones(1, dtype=torch.bool), seg_id[0][valid[0]][1:] != seg_id[0][valid[0]][:-1]])
    assert not bool((starts[1:] & (owed[:-1] > 0)).any())  # no segment opens while a byte is owed


def test_utf8_boundaries_is_on_the_model_card():
    from hier_ae.publishing.model_card import _architecture

    config = HierAEConfig(levels=[tiny_level(utf8_boundaries=True)], top_lm=TINY_TOP)
    assert "threshold boundaries, never inside a UTF-8 character, " in _architecture(config)
    assert "UTF-8" not in _architecture(HierAEConfig(levels=[tiny_level()], top_lm=TINY_TOP))


def test_utf8_boundaries_is_checked():
    with pytest.raises(ValueError, match="utf8_boundaries"):
        HierAEConfig(levels=[tiny_level(utf8_boundaries=True, boundary_mode="budget")], top_lm=TINY_TOP)
    with pytest.raises(ValueError, match="utf8_boundaries"):
        HierAEConfig(levels=[tiny_level(utf8_boundaries="yes")], top_lm=TINY_TOP)
    with pytest.raises(ValueError, match=r"levels\[1\].utf8_boundaries"):
        HierAEConfig(
            levels=[tiny_level(), tiny_level(hidden_size=32, num_heads=2, utf8_boundaries=True)],
            top_lm=TINY_TOP,
        )


@pytest.mark.parametrize("value", [0, 6, 2.5])
def test_minimum_segment_length_is_checked(value):
    with pytest.raises(ValueError, match=r"levels\[0\]\.min_segment_len.*\[1, max_segment_len=5\]"):
        HierAEConfig(levels=[{"max_segment_len": 5, "min_segment_len": value}])


# ---- the decoder reads the entropy model's states -------------------------------------------------
def test_entropy_at_inputs_worked_example():
    """level_modules.entropy_at_inputs' docstring: valid [0 1 1], states [e0 e1 e2] -> [0, 0, e1, e2]."""
    e = torch.tensor([[[1.0], [2.0], [3.0]]])  # (1, 3, 1): e0, e1, e2
    valid = torch.tensor([[False, True, True]])
    assert entropy_at_inputs(e, valid)[0, :, 0].tolist() == [0.0, 0.0, 2.0, 3.0]


def test_decoder_reads_entropy_states_without_moving_the_entropy_model():
    """The option changes the decoder's output (it is wired in), and the reconstruct loss sends no
    gradient into the entropy model (its states are read detached)."""
    ids = torch.randint(3, 259, (2, 20), generator=torch.Generator().manual_seed(4))
    model = _model("reads_entropy")
    out = model(ids)
    out.reconstruct_loss.sum().backward()
    assert all(p.grad is None for p in model.levels[0].entropy_model.parameters())
    assert model.levels[0].decoder.entropy_in.weight.grad.abs().sum() > 0
    with torch.no_grad():
        model.levels[0].decoder.entropy_in.weight.zero_()
        changed = model(ids).reconstruct_logits[0]
    assert not torch.allclose(changed, out.reconstruct_logits[0].detach())


def test_entropy_window_is_the_entropy_models_own():
    """`entropy_window` 8 on a level of window 32: the entropy model's prediction at t reads tokens
    t - 7 .. t only (a change at t - 8 leaves it, one at t - 7 moves it); the decoder keeps 32."""
    model = _model("entropy_window").eval()
    assert model.levels[0].entropy_model.body.window == 8 and model.levels[0].decoder.body.window == 32
    ids = torch.randint(3, 259, (1, 24), generator=torch.Generator().manual_seed(5))
    t = 20

    def entropy_logits_at_t(x):
        with torch.no_grad():
            pos = torch.arange(x.shape[1])[None]
            return model.levels[0].entropy_model(x, torch.ones_like(x, dtype=torch.bool), pos)[0][0, t]

    base = entropy_logits_at_t(ids)
    far, near = ids.clone(), ids.clone()
    far[0, t - 8] = (far[0, t - 8] - 3 + 1) % 256 + 3
    near[0, t - 7] = (near[0, t - 7] - 3 + 1) % 256 + 3
    torch.testing.assert_close(entropy_logits_at_t(far), base)
    assert not torch.allclose(entropy_logits_at_t(near), base)


@pytest.mark.parametrize("value", [0, 100_000, 2.5, True])
def test_entropy_window_is_checked(value):
    with pytest.raises(ValueError, match=r"levels\[0\]\.entropy_window=.* is invalid: must be null"):
        HierAEConfig(max_position_embeddings=256, levels=[{"entropy_window": value}])


# ---- the top LM reads each code's pooled vector -------------------------------------------------
@pytest.mark.parametrize("num_levels", [1, 2])
def test_top_lm_reads_the_pooled_vector_of_each_code(num_levels):
    """With `top_lm.reads_pooled` the top LM's input at each code is embed(code) + map(pooled vector
    of that code's segment), read with grad (the joint stage moves the encoder through it); the
    predict-mode logits change with the map (it is wired in) and in the top LM stage's loss."""
    model = _model("reads_pooled", num_levels)
    ids = torch.randint(3, 259, (2, 40), generator=torch.Generator().manual_seed(5))
    p = model._bottom_up(ids, torch.ones_like(ids, dtype=torch.bool))[-1]
    up = p.up
    # each code's vector sits at its index in the stream (no bos / eos in these random rows)
    for b in range(2):
        n = int(p.layout.seg_mask[b].sum())
        torch.testing.assert_close(up.vectors[b, up.seg_pos[b, :n]], p.pooled[b, :n])
    out = model(ids)
    out.top_lm_loss.backward()
    assert model.top_lm.pooled_in.weight.grad.abs().sum() > 0
    enc_grads = [q.grad for q in model.levels[-1].encoder.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in enc_grads)  # read with grad
    with torch.no_grad():
        before = model.predict(ids).logits
        model.top_lm.pooled_in.weight.zero_()
        after = model.predict(ids).logits
    assert not torch.allclose(before, after)


def test_top_lm_reading_pooled_vectors_refuses_stored_top_codes():
    model = _model("reads_pooled")
    codes = torch.tensor([[66, 5, 7, 9]])  # bos of the level-0 code stream (K = 64), codes
    with pytest.raises(ValueError, match=r"start_level=1.*reads_pooled=True.*do not carry"):
        model(codes, start_level=1)
    with pytest.raises(ValueError, match=r"top_lm\.reads_pooled='yes' is invalid"):
        HierAEConfig(top_lm={"reads_pooled": "yes"})


# ---- the top LM's attention window ---------------------------------------------------------------
def _code_lm(window):
    from hier_ae.code_lm import CodeLM
    from hier_ae.configuration_hier_ae import TopLMConfig

    torch.manual_seed(0)
    vocab = HierAEModel(HierAEConfig(levels=[tiny_level()], top_lm=TINY_TOP)).levels[-1].upper_vocab
    return CodeLM(vocab, TopLMConfig(**{**TINY_TOP, "window": window}), 64).eval()


@torch.no_grad()
def test_top_lm_window_limits_what_a_code_reads_and_steps_match_whole_rows():
    """top_lm.window = 4: the logits at stream position t read positions t-3..t only, so changing
    the code at position 1 (stream [BEGIN, c_0, ...]) moves the logits at positions 1..4 and none
    after (with full attention all of them move); stepping one code at a time through the KV cache
    gives the whole row's logits, on a row long enough (41 > 4 windows) for blocked attention."""
    from hier_ae.kv_cache import KVStore

    ones = torch.ones(1, 40, dtype=torch.bool)
    a = torch.randint(0, 64, (1, 40), generator=torch.Generator().manual_seed(3))
    b = a.clone()
    b[0, 0] = (a[0, 0] + 1) % 64
    for window in (4, None):
        lm = _code_lm(window)
        moved = (lm.read_stream(a, ones)[0] - lm.read_stream(b, ones)[0]).abs().amax(-1)[0] > 1e-6  # (41,)
        assert moved[1:5].all() and not moved[0]
        assert (not moved[5:].any()) if window else moved[5:].all()
    lm = _code_lm(4)
    kv: list = []
    logits, _, valid, _ = lm.read_stream(a[:, :1], ones[:, :1], kv_out=kv)  # prefill [BEGIN, c_0]
    cache, rows, stepped = KVStore(kv, valid), torch.zeros(1, dtype=torch.long), [logits[:, -1]]
    for j in range(1, 40):
        stepped.append(lm.step(a[:, j], cache, rows)[0])  # (1, V) after c_0..c_j
    whole = lm.read_stream(a, ones)[0][:, 1:]  # (1, 40, V): index j has read c_0..c_j
    torch.testing.assert_close(torch.stack(stepped, 1), whole, atol=1e-5, rtol=1e-5)


def test_top_lm_window_is_on_the_model_card():
    from hier_ae.publishing.model_card import _architecture

    config = HierAEConfig(levels=[tiny_level()], top_lm={**TINY_TOP, "window": 32})
    assert "top code LM: width 32, 1 layers, attention window 32 codes" in _architecture(config)
    assert "attention window" not in _architecture(HierAEConfig(levels=[tiny_level()], top_lm=TINY_TOP))


@pytest.mark.parametrize("value", [0, -2, 2.5, "64", True])
def test_top_lm_window_is_checked(value):
    with pytest.raises(ValueError, match=r"top_lm\.window"):
        HierAEConfig(top_lm={"window": value})


# ---- residual dropout ---------------------------------------------------------------------------
def test_dropout_acts_in_training_only():
    """With decoder / top-LM dropout, two training-mode passes differ (it acts) and two eval-mode
    passes are equal (the causal LM's outputs never depend on it)."""
    ids = torch.randint(3, 259, (2, 30), generator=torch.Generator().manual_seed(6))
    plain = _model("reads_pooled").train()  # without dropout, training-mode passes agree
    torch.testing.assert_close(plain.predict(ids).logits, plain.predict(ids).logits)
    model = _model("dropout").train()
    a, b = model.predict(ids).logits, model.predict(ids).logits
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.predict(ids).logits, model.predict(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("field", ["decoder_dropout", "top_lm.dropout"])
@pytest.mark.parametrize("value", [1.0, -0.1, True])
def test_dropout_is_checked(field, value):
    kwargs = {"top_lm": {"dropout": value}} if field == "top_lm.dropout" else {"levels": [{field: value}]}
    name = r"top_lm\.dropout" if field == "top_lm.dropout" else rf"levels\[0\]\.{field}"
    with pytest.raises(ValueError, match=rf"{name}=.* is invalid: a probability in \[0, 1\)"):
        HierAEConfig(**kwargs)


# ---- the decoder's code-id embedding ------------------------------------------------------------
def test_decoder_code_embedding_is_read_where_the_code_is():
    """`decoder_code_embedding`: moving one code's embedding row moves reconstruct mode's logits from
    the first token of the first segment holding that code on (the decoder is causal), never before
    it; the greedy decode from the codes reads the same row; predict mode does not read it. The
    autoencoder stage trains it (it belongs to the decoder)."""
    from hier_ae.training.stages import Stage, prepare_stage

    model = _model("code_embedding").eval()
    ids = torch.randint(3, 259, (1, 30), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = model(ids, run_top_lm=False)
        seg, codes = out.segment_ids[0][0], out.codes[0][0][out.code_mask[0][0].bool()]  # (T,), (S,)
        # a code that first appears after segment 0, and the first token of its first segment
        first_seg = next(s for s in range(1, len(codes)) if int(codes[s]) not in codes[:s].tolist())
        code = int(codes[first_seg])
        start = int((seg == first_seg).nonzero()[0])
        pred = model.predict(ids).logits
        enc = model.encode(ids)
        dec = model.decode(enc.codes[0], enc.code_mask[0], level=0).sequences
        model.levels[0].decoder.code_embed.weight[code] += 100.0
        moved = model(ids, run_top_lm=False).reconstruct_logits[0]
        torch.testing.assert_close(moved[0, :start], out.reconstruct_logits[0][0, :start])
        assert not torch.allclose(moved[0, start], out.reconstruct_logits[0][0, start])
        torch.testing.assert_close(model.predict(ids).logits, pred)
        assert not torch.equal(model.decode(enc.codes[0], enc.code_mask[0], level=0).sequences, dec)
    prepare_stage(model, Stage("autoencoder", 0, 1, 1e-3))
    assert model.levels[0].decoder.code_embed.weight.requires_grad


def test_decoder_code_embedding_is_checked():
    with pytest.raises(
        ValueError, match=r"levels\[0\]\.decoder_code_embedding=1 is invalid: must be True or False"
    ):
        HierAEConfig(levels=[{"decoder_code_embedding": 1}])


def test_new_code_dead_after_steps_reaches_the_quantiser_and_survives_reload(tmp_path):
    """`new_code_dead_after_steps` (a training setting of the codebook): the level's quantiser gets
    it, its state (which codes were used since set) is saved with the model and reloads."""
    config = HierAEConfig(levels=[tiny_level(new_code_dead_after_steps=3)], top_lm=TINY_TOP)
    model = HierAEModel(config)
    vq = model.levels[0].quantizer
    assert vq.new_code_dead_after_steps == 3 and vq.dead_after_steps == 20
    vq.used_since_set[0, :5] = True
    model.save_pretrained(tmp_path)
    back = HierAEModel.from_pretrained(tmp_path)
    assert back.config.level_configs[0].new_code_dead_after_steps == 3
    assert torch.equal(back.levels[0].quantizer.used_since_set, vq.used_since_set)
    plain = HierAEModel(HierAEConfig(levels=[tiny_level()], top_lm=TINY_TOP)).levels[0].quantizer
    assert "used_since_set" not in plain.state_dict()


@pytest.mark.parametrize("value", [0, True, 2.5])
def test_new_code_dead_after_steps_is_checked(value):
    with pytest.raises(
        ValueError,
        match=rf"levels\[0\]\.new_code_dead_after_steps={value} is invalid: must be None or an integer >= 1",
    ):
        HierAEConfig(levels=[{"new_code_dead_after_steps": value}])


def test_states_before_segments_worked_example():
    """The docstring's example: h[t] = t, left padding at t0, segments "t1 t2 | t3 t4"; a padded
    segment slot gets zeros too."""
    from hier_ae.pooling import states_before_segments

    h = torch.arange(5.0).reshape(1, 5, 1).expand(2, 5, 1)  # (B, T, 1)
    valid = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    seg_start = torch.tensor([[1, 3, 0], [0, 2, 3]])  # row 1: "t0 t1 | t2 | t3 t4"
    seg_mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    got = states_before_segments(h, valid, seg_start, seg_mask)[..., 0]  # (B, S)
    assert got.tolist() == [[0.0, 2.0, 0.0], [0.0, 1.0, 2.0]]


def test_predictive_codes_read_the_state_before_each_segment():
    """`predictive_codes` with a segment-scope encoder (whose pooled vector sees only its segment):
    changing the last byte of segment 0 moves the vector segment 1's code is chosen from (through
    the prediction), never segment 0's own; the option trains in the autoencoder stage."""
    from hier_ae.training.stages import Stage, prepare_stage

    torch.manual_seed(0)
    level = tiny_level(threshold=1e9, max_segment_len=4, encoder_scope="segment", predictive_codes=True)
    model = HierAEModel(HierAEConfig(levels=[level], top_lm=TINY_TOP)).eval()
    ids = torch.randint(3, 259, (1, 12), generator=torch.Generator().manual_seed(3))
    other = ids.clone()
    other[0, 3] = 3 if int(ids[0, 3]) != 3 else 4  # the last byte of segment 0 (positions 0-3)
    lv = model.levels[0]
    with torch.no_grad():
        a, b = (lv.bottom_up(x, torch.ones_like(x, dtype=torch.bool)) for x in (ids, other))
    assert a.layout.seg_start[0, :2].tolist() == [0, 4]
    assert not torch.allclose(a.pooled[0, 1], b.pooled[0, 1])
    with torch.no_grad():
        lv.code_predictor.weight.zero_()
        a0, b0 = (lv.bottom_up(x, torch.ones_like(x, dtype=torch.bool)) for x in (ids, other))
    torch.testing.assert_close(a0.pooled[0, 1], b0.pooled[0, 1])  # no prediction: segment 1 alone
    prepare_stage(model, Stage("autoencoder", 0, 1, 1e-3))
    assert lv.code_predictor.weight.requires_grad


def test_predictive_codes_is_checked():
    with pytest.raises(
        ValueError, match=r"levels\[0\]\.predictive_codes=1 is invalid: must be True or False"
    ):
        HierAEConfig(levels=[{"predictive_codes": 1}])


# ---- codes chosen by the decoder ----------------------------------------------------------------
def _segment_ce(level, p, q) -> torch.Tensor:
    """Reconstruct mode's teacher-forced CE of each segment's tokens under the quantiser output q.
    -> (B, S)"""
    p.q = q
    logits = level.reconstruct_logits(p)  # (B, T, V)
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), p.tokens, reduction="none") * p.valid
    return torch.zeros(p.layout.seg_mask.shape).scatter_add_(1, p.layout.seg_id.clamp(min=0), ce)  # (B, S)


def test_codes_chosen_by_the_decoder_decode_their_segments_best():
    """`code_choice_candidates` = 4: every code is one of its segment's 4 nearest, the one whose
    reconstruct-mode CE is lowest when every segment reads its i-th nearest code (computed here
    through `reconstruct_logits`), the nearer within `CHOICE_TOLERANCE`; on random weights that
    moves many codes off the nearest one."""
    model = _model("code_choice").eval()
    level = model.levels[0]
    ids = torch.randint(3, 259, (3, 40), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        chosen = model.encode(ids).codes[0]  # (B, S)
        p = level.bottom_up(ids, torch.ones_like(ids, dtype=torch.bool), encode=False)
        _, pooled = level.pool_segments(p)
        mask = p.layout.seg_mask
        dist = torch.cdist(pooled, level.quantizer.codebook[0])  # (B, S, K)
        cand = dist.topk(4, largest=False).indices  # (B, S, 4)
        ces = torch.stack(
            [_segment_ce(level, p, level.quantizer(pooled, mask, codes=cand[..., i])) for i in range(4)], -1
        )
    want = cand.gather(-1, pick_candidate(ces.permute(2, 0, 1))[..., None])[..., 0]  # (B, S)
    assert torch.equal(chosen[mask], want[mask])
    moved = (chosen != cand[..., 0])[mask].float().mean()
    assert 0.2 < moved < 1.0, moved


def test_codes_chosen_by_the_decoder_train_the_codebook():
    """In training, forward's codes are the decoder's choice and the EMA counts gather them."""
    model = _model("code_choice").train()
    q = model.levels[0].quantizer
    ids = torch.randint(3, 259, (2, 30), generator=torch.Generator().manual_seed(5))
    out = model(ids, run_top_lm=False)
    codes, mask = out.codes[0], out.code_mask[0].bool()
    with torch.no_grad():
        model.eval()
        assert torch.equal(model.encode(ids).codes[0][mask], codes[mask])
    counts = torch.bincount(codes[mask], minlength=q.codebook_size).to(q.acc_count.dtype)
    torch.testing.assert_close(q.acc_count[0], counts)


def test_codes_chosen_by_the_decoder_at_two_levels_keep_the_contracts():
    """Both levels choose their codes: prefix invariance and cached == uncached greedy generation."""
    torch.manual_seed(0)
    levels = [
        tiny_level(threshold=1e9, max_segment_len=5, code_choice_candidates=3),
        tiny_level(
            hidden_size=32,
            num_heads=2,
            threshold=1e9,
            max_segment_len=3,
            codebook_size=64,
            code_choice_candidates=2,
        ),
    ]
    lm = as_lm(HierAEModel(HierAEConfig(levels=levels, top_lm=TINY_TOP)))
    ids = torch.randint(3, 259, (2, 40), generator=torch.Generator().manual_seed(6))
    assert_prefix_invariant(lm, ids)
    prompt, mask = ids[:, :9], torch.ones(2, 9, dtype=torch.long)
    a = lm.generate(prompt, attention_mask=mask, max_new_tokens=30, do_sample=False, use_cache=True)
    b = lm.generate(prompt, attention_mask=mask, max_new_tokens=30, do_sample=False, use_cache=False)
    assert not compare_greedy(a, b, chooser_logits(lm, b, mask), start=prompt.shape[1])


@pytest.mark.parametrize(
    "level, match",
    [
        (
            {"code_choice_candidates": 1},
            r"code_choice_candidates=1 is invalid: 0 \(nearest code\) or an integer",
        ),
        ({"code_choice_candidates": True}, r"code_choice_candidates=True is invalid"),
        ({"code_choice_candidates": 300, "codebook_size": 256}, r"in \[2, codebook_size=256\]"),
        ({"code_choice_candidates": 4, "codebook_depth": 2, "codebook_size": 16}, r"codebook_depth=2\)"),
        ({"code_choice_candidates": 4, "quantizer": "fsq", "fsq_levels": [8, 5]}, r"quantizer='fsq'"),
    ],
)
def test_code_choice_candidates_is_checked(level, match):
    with pytest.raises(ValueError, match=match):
        HierAEConfig(levels=[level])
