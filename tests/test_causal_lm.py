"""HierAEForCausalLM: prefix invariance (the lm-eval contract), loading, contexts that matter, generate."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_TOP, tiny_level
from helpers.ties import chooser_logits, compare_greedy
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, TextStreamer, pipeline

from hier_ae import HierAEConfig, HierAEForCausalLM, HierAEModel
from hier_ae.data.batching import BYTE_OFFSET, frame_document, pad_rows
from hier_ae.level import HierLevel


def as_lm(model: HierAEModel) -> HierAEForCausalLM:
    lm = HierAEForCausalLM(model.config)
    lm.model = model
    return lm.eval()


def right_padded(texts: list[str], bos: bool = True) -> torch.Tensor:
    """lm-eval's layout: right-padded with id 0, no attention mask."""
    rows = [frame_document(t.encode())[: -1 if bos else None] for t in texts]
    if not bos:
        rows = [r[1:] for r in rows]
    return pad_rows(rows)[0]


def top_segments(model: HierAEModel, ids: torch.Tensor) -> torch.Tensor:
    return model.encode(ids).top_mask.sum(1)


def assert_prefix_invariant(lm: HierAEForCausalLM, ids: torch.Tensor, seed: int = 0) -> float:
    """For every t: replacing all ids after t leaves logits[:, :t+1] unchanged. Returns the worst gap."""
    g = torch.Generator().manual_seed(seed)
    B, T = ids.shape
    with torch.no_grad():
        base = lm(ids).logits
        worst = 0.0
        for t in range(T - 1):
            other = ids.clone()
            other[:, t + 1 :] = torch.randint(3, 259, (B, T - t - 1), generator=g)
            got = lm(other).logits
            gap = (got[:, : t + 1] - base[:, : t + 1]).abs().max().item()
            worst = max(worst, gap)
            assert gap <= 1e-5, f"logits up to t={t} changed by {gap:.3g} when later bytes changed"
    return worst


# ---- prefix invariance --------------------------------------------------------------------------
@pytest.mark.parametrize("num_levels", [1, 2])
def test_prefix_invariance_random_weights(num_levels):
    torch.manual_seed(0)
    # untrained entropy models are uncertain everywhere; a high threshold leaves the length cap, so
    # segments are longer than one byte and contexts come from several completed segments
    levels = [tiny_level(threshold=1e9, max_segment_len=5)]
    if num_levels == 2:
        levels.append(
            tiny_level(hidden_size=32, num_heads=2, threshold=1e9, max_segment_len=3, codebook_size=64)
        )
    model = HierAEModel(HierAEConfig(levels=levels, top_lm=TINY_TOP))
    lm = as_lm(model)
    ids = torch.randint(3, 259, (3, 40), generator=torch.Generator().manual_seed(1))
    ids[2, 30:] = 0  # a right-padded row, scored without an attention mask
    assert (top_segments(model, ids) >= 3).all()
    assert_prefix_invariant(lm, ids)


@pytest.mark.parametrize("fixture", ["trained_1level", "trained_2level", "trained_inputs"])
def test_prefix_invariance_trained(fixture, request, grammar_data):
    model, _ = request.getfixturevalue(fixture)
    lm = as_lm(model)
    texts = grammar_data[1][:2] + [grammar_data[1][2][:25]]
    ids = right_padded(texts)  # BOS-prefixed rows, right-padded with 0, no mask
    segs = top_segments(model, ids)
    print(f"\n{fixture}: top-level segments per row {segs.tolist()}")
    assert (segs >= 3).all()
    worst = assert_prefix_invariant(lm, ids)
    print(f"{fixture}: worst logit gap over every t: {worst:.2e}")


def test_labels_loss_of_a_prefix(trained_1level, grammar_data):
    """HF labels: shifted inside, -100 ignored; the loss of a prefix only depends on the prefix."""
    model, _ = trained_1level
    lm = as_lm(model)
    ids = right_padded(grammar_data[1][:2])
    with torch.no_grad():
        full = lm(ids).logits
        for t in (5, 17, 30):
            prefix = ids[:, : t + 1]
            loss = lm(prefix, labels=prefix).loss
            ref = F.cross_entropy(full[:, :t].reshape(-1, 259), ids[:, 1 : t + 1].reshape(-1))
            torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
        labels = ids.clone()
        labels[:, :10] = -100
        loss = lm(ids, labels=labels).loss
        ref = F.cross_entropy(full[:, 9:-1].reshape(-1, 259), ids[:, 10:].reshape(-1))
        torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)


# ---- loading ------------------------------------------------------------------------------------
def test_one_folder_loads_through_both_auto_classes(trained_1level):
    model, folder = trained_1level
    ids = right_padded(["A dog sees the river."])
    for auto in (AutoModel, AutoModelForCausalLM):
        loaded, info = auto.from_pretrained(folder, trust_remote_code=True, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
    lm = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        # same weights, another kernel path (see test_reloaded_folder_is_the_trained_model)
        torch.testing.assert_close(lm(ids).logits, as_lm(model)(ids).logits, atol=1e-5, rtol=1e-5)


def _outputs(lm: HierAEForCausalLM, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every output the model has on `ids`: autoencode losses and logits, codes, predict logits."""
    core = lm.model
    with torch.no_grad():
        out = core(ids)
        enc = core.encode(ids)
        return {
            "loss": out.loss,
            "reconstruct_logits": out.reconstruct_logits[0],
            "entropy": out.entropy[0],
            "codes": enc.top_codes,
            "segment_ids": enc.segment_ids[0],
            "predict_logits": lm(ids).logits,
            "zero_context_logits": lm(ids, zero_context=True).logits,
        }


def test_reloaded_folder_is_the_trained_model(trained_1level):
    """The saved folder holds the trained model: every tensor of the state (parameters, EMA buffers,
    thresholds) comes back bit for bit, with its dtype and shape.

    Its outputs then agree only within float32 rounding, not bit for bit: `from_pretrained` leaves
    the weights in safetensors' memory map at addresses that are not 64-byte aligned, and the CPU
    matmul kernels block their reductions differently for such pointers on some CPUs (seen on AMD
    EPYC: 4e-6 on logits of magnitude 10; Intel Xeon gave equal bits). Copying the loaded weights
    into freshly allocated (aligned) memory removes the difference: in one process the same tensors
    at the same kind of address give the same bits, so that comparison is exact.
    """
    model, folder = trained_1level
    ids = right_padded(["A dog sees the river.", "The cat runs."])
    lm = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    trained, loaded = model.state_dict(), lm.model.state_dict()
    assert trained.keys() == loaded.keys()
    for k in trained:
        assert trained[k].dtype == loaded[k].dtype and torch.equal(trained[k], loaded[k]), k
    want = _outputs(as_lm(model), ids)
    got = _outputs(lm, ids)
    for k in want:
        if want[k].is_floating_point():
            torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-5, msg=k)
    for t in (*lm.parameters(), *lm.buffers()):
        t.data = t.data.clone()  # fresh, aligned memory
    aligned = _outputs(lm, ids)
    for k in want:
        assert torch.equal(aligned[k], want[k]), k


# ---- the levels above carry information ---------------------------------------------------------
def test_upper_contexts_carry_information(trained_1level, grammar_data, monkeypatch):
    """Swap the byte decoder's contexts for another document's: the likelihood must change."""
    model, _ = trained_1level
    a, b = grammar_data[1][10], grammar_data[1][11]
    ids_a, ids_b = right_padded([a]), right_padded([b])
    captured = {}
    original = HierLevel.predict_context

    def capture(level, upper_h, upper_n, seg_pos, layout, valid):
        ctx = original(level, upper_h, upper_n, seg_pos, layout, valid)
        if level is model.levels[0]:
            captured["ctx"], captured["seg_id"] = ctx, layout.seg_id
        return ctx

    monkeypatch.setattr(HierLevel, "predict_context", capture)
    with torch.no_grad():
        model.predict(ids_b)
    ctx_b, seg_b = captured["ctx"], captured["seg_id"]
    seg_ctx_b = [ctx_b[0, (seg_b[0] == s).nonzero()[0, 0]] for s in range(int(seg_b.max()) + 1)]

    def swapped(level, upper_h, upper_n, seg_pos, layout, valid):
        ctx = original(level, upper_h, upper_n, seg_pos, layout, valid)
        if level is model.levels[0]:
            for i, s in enumerate(layout.seg_id[0].tolist()):
                ctx[0, i] = seg_ctx_b[min(s, len(seg_ctx_b) - 1)]
        return ctx

    def loglik(logits):
        logp = logits[0, :-1].log_softmax(-1)
        return logp.gather(-1, ids_a[0, 1:, None]).mean().item()  # nats per byte

    with torch.no_grad():
        real = loglik(model.predict(ids_a).logits)
        monkeypatch.setattr(HierLevel, "predict_context", swapped)
        other = loglik(model.predict(ids_a).logits)
        monkeypatch.setattr(HierLevel, "predict_context", original)
        zeroed = loglik(model.predict(ids_a, zero_context=True).logits)
    print(
        f"\nmean log-likelihood (nats/byte): own contexts {real:.4f}, another document's {other:.4f}, "
        f"zeroed {zeroed:.4f}; change {real - other:.4f}"
    )
    assert abs(real - other) > 0.01


# ---- generate -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lm2(trained_2level):
    model, folder = trained_2level
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    return as_lm(model), tok


PROMPTS = ["The farmer paints", "A young girl"]


def test_generated_span_closes_segments_at_both_levels(lm2):
    lm, tok = lm2
    enc = tok(PROMPTS[:1], return_tensors="pt")
    ids = torch.cat([torch.tensor([[tok.bos_token_id]]), enc["input_ids"]], dim=1)
    out = lm.generate(ids, max_new_tokens=40, do_sample=False)
    new = out[0, ids.shape[1] :]
    full = lm.model.encode(out)
    seg0 = full.segment_ids[0][0]
    closures0 = int((seg0[ids.shape[1] :].diff() > 0).sum())
    n1 = int(full.code_mask[1][0].sum())
    prompt_n1 = int(lm.model.encode(ids).code_mask[1][0].sum())
    print(f"\ngenerated {tok.decode(new)!r}: {closures0} level-0 and {n1 - prompt_n1} level-1 closures")
    assert len(set(new.tolist())) >= 8
    assert closures0 >= 2 and n1 - prompt_n1 >= 1


@pytest.mark.parametrize("bos", [True, False])
def test_greedy_cache_equals_no_cache(lm2, bos):
    lm, tok = lm2
    enc = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    if bos:
        enc = {
            k: torch.cat([torch.full((2, 1), v), enc[k]], 1)
            for k, v in (("input_ids", 2), ("attention_mask", 1))
        }
    a = lm.generate(**enc, max_new_tokens=40, do_sample=False, use_cache=True)
    b = lm.generate(**enc, max_new_tokens=40, do_sample=False, use_cache=False)
    # the cached step and the whole-sequence forward round differently: equal tokens, except after
    # a greedy choice within float32 rounding of a tie (helpers/ties.py); none is expected here
    reports = compare_greedy(
        a, b, chooser_logits(lm, b, enc["attention_mask"]), start=enc["input_ids"].shape[1]
    )
    assert not reports, reports


def test_greedy_cache_equals_no_cache_with_decoder_inputs(trained_inputs):
    """The shipped decoder inputs (entropy-model states, hashed n-grams) on a trained checkpoint:
    cached generation streams them exactly as the whole-sequence forward computes them."""
    model, folder = trained_inputs
    lm, tok = as_lm(model), AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    enc = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    a = lm.generate(**enc, max_new_tokens=40, do_sample=False, use_cache=True)
    b = lm.generate(**enc, max_new_tokens=40, do_sample=False, use_cache=False)
    reports = compare_greedy(
        a, b, chooser_logits(lm, b, enc["attention_mask"]), start=enc["input_ids"].shape[1]
    )
    assert not reports, reports
    # a trained model, not a loop or an empty stream: the rows' generated bytes (before `</s>` and padding)
    # number >= 12 and take >= 5 values. Counted over both rows: a row may end its sentence early (on an
    # AMD EPYC the rows were " a tall." and " seems a tall.", 21 bytes of 7 values)
    gen = a[:, enc["input_ids"].shape[1] :]
    real = gen[gen >= BYTE_OFFSET].tolist()
    assert len(real) >= 12 and len(set(real)) >= 5, gen.tolist()


def test_left_padded_batch_equals_each_prompt_alone(lm2):
    lm, tok = lm2
    enc = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    batch = lm.generate(**enc, max_new_tokens=30, do_sample=False)
    for row, prompt in enumerate(PROMPTS):
        alone = lm.generate(**tok([prompt], return_tensors="pt"), max_new_tokens=30, do_sample=False)
        assert tok.decode(batch[row], skip_special_tokens=True) == tok.decode(
            alone[0], skip_special_tokens=True
        )


def test_sampling_limits_eos_and_stop_strings(lm2):
    lm, tok = lm2
    enc = tok(PROMPTS[:1], return_tensors="pt")
    torch.manual_seed(0)
    s1 = lm.generate(**enc, max_new_tokens=20, do_sample=True, top_k=20, top_p=0.9, temperature=0.8)
    torch.manual_seed(0)
    s2 = lm.generate(**enc, max_new_tokens=20, do_sample=True, top_k=20, top_p=0.9, temperature=0.8)
    assert torch.equal(s1, s2) and s1.shape[1] <= enc["input_ids"].shape[1] + 20
    out = lm.generate(**enc, max_new_tokens=7, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 7
    # eos: stop at the first generated space (id of b" " is 32 + 3)
    out = lm.generate(**enc, max_new_tokens=30, do_sample=False, eos_token_id=35, pad_token_id=0)
    assert out[0, -1].item() == 35 and 35 not in out[0, enc["input_ids"].shape[1] : -1].tolist()
    out = lm.generate(**enc, max_new_tokens=40, do_sample=False, stop_strings=["."], tokenizer=tok)
    assert tok.decode(out[0]).endswith(".")


def test_streamer_and_pipeline(lm2, capsys):
    lm, tok = lm2
    enc = tok(PROMPTS[:1], return_tensors="pt")
    out = lm.generate(**enc, max_new_tokens=12, do_sample=False, streamer=TextStreamer(tok))
    printed = capsys.readouterr().out
    assert tok.decode(out[0, enc["input_ids"].shape[1] :]) in printed
    pipe = pipeline("text-generation", model=lm, tokenizer=tok, device="cpu")
    res = pipe(PROMPTS[0], max_new_tokens=12, do_sample=False, return_full_text=True)
    assert res[0]["generated_text"] == tok.decode(out[0])


def test_bits_per_byte_with_and_without_contexts(trained_1level, grammar_data):
    model, _ = trained_1level
    ids, mask = pad_rows([frame_document(t.encode()) for t in grammar_data[1][:32]])
    with torch.no_grad():
        real = model.predict(ids, mask).predict_loss[0].item() / math.log(2)
        zero = model.predict(ids, mask, zero_context=True).predict_loss[0].item() / math.log(2)
    print(f"\npredict-mode bits/byte {real:.3f}; with the upper contexts zeroed {zero:.3f}")
    assert real < zero


def test_streaming_cost_one_position_per_byte_and_per_code(lm2):
    """Forward hooks count positions: after a P-byte prompt, N new bytes cost each byte-level module
    P + N - 1 positions (the decoder also reads its BEGIN slot: + 1); code-level modules one per code."""
    lm, tok = lm2
    model = lm.model
    prompt = torch.tensor([[2] + tok("The old man watches")["input_ids"]])
    P, N = prompt.shape[1], 30
    counts: dict[str, int] = {}
    hooks = []
    named = {
        "entropy0": model.levels[0].entropy_model,
        "encoder0": model.levels[0].encoder,
        "decoder0": model.levels[0].decoder,
        "entropy1": model.levels[1].entropy_model,
        "encoder1": model.levels[1].encoder,
        "decoder1": model.levels[1].decoder,
        "top": model.top_lm,
    }
    for name, module in named.items():
        qkv = module.body.blocks[0].attn.qkv  # every forward and every step goes through it

        def hook(mod, args, out, name=name):
            counts[name] = counts.get(name, 0) + args[0].shape[0] * args[0].shape[1]

        hooks.append(qkv.register_forward_hook(hook))
    try:
        out = lm.generate(prompt, max_new_tokens=N, min_new_tokens=N, do_sample=False)
    finally:
        for h in hooks:
            h.remove()
    assert out.shape[1] == P + N
    with torch.no_grad():
        before = model.predict(prompt, return_stream=True).stream
        after = model.predict(out[:, :-1], return_stream=True).stream
    new_codes0 = int(after.levels[1].entropy.n_valid - before.levels[1].entropy.n_valid)  # level-1 tokens
    new_codes1 = int(after.top.n_valid - before.top.n_valid)  # top tokens
    prefill1 = int(before.levels[1].entropy.key_valid.shape[1])
    prefill_top = int(before.top.key_valid.shape[1])
    print(f"\nP={P} N={N}: positions {counts}; new level-1 tokens {new_codes0}, new top tokens {new_codes1}")
    assert counts["entropy0"] == counts["encoder0"] == P + N - 1
    assert counts["decoder0"] == P + N  # [BEGIN, x]: one more slot
    assert new_codes0 >= 1
    assert counts["entropy1"] - prefill1 == counts["encoder1"] - prefill1 == new_codes0
    assert counts["decoder1"] - (prefill1 + 1) == new_codes0
    assert counts["top"] - prefill_top == new_codes1


def test_readme_python_snippets_run(trained_1level, capsys):
    """Every ```python block of the README runs against a trained folder."""
    import re

    from conftest import REPO

    _, folder = trained_1level
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert len(blocks) >= 2
    for code in blocks:
        exec(compile(code.replace("runs/tiny/model", str(folder)), "README.md", "exec"), {})
    assert capsys.readouterr().out.strip()
