"""bench/flops.py: FLOPs per byte counted with FlopCounterMode, on tiny models; its phase and report."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from test_bench import TINY, fake_report, fake_results

from bench import plan, run
from bench.flops import (
    batch_bytes,
    blt_flops,
    count_flops,
    fmt_flops,
    hier_ae_flops,
    inference_flops,
    llama_flops,
    run_flops,
    train_flops,
    weighted,
)
from bench.peers import blt_config, build_blt, build_llama, count_parameters, llama_config
from bench.report import render
from hier_ae import HierAEConfig, HierAEForCausalLM

STAGES = [
    {"kind": "entropy", "level": 0, "steps": 100},
    {"kind": "autoencoder", "level": 0, "steps": 300},
    {"kind": "top_lm", "steps": 100},
    {"kind": "predict", "steps": 100},
]


def batch(rows=2, length=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 259, (rows, length), generator=g)
    return ids, torch.ones_like(ids)


def test_a_linear_layer_costs_two_flops_per_multiply_add():
    torch.manual_seed(0)
    d_in, d_out, B, T = 16, 8, 3, 5
    layer = torch.nn.Linear(d_in, d_out)
    x = torch.randn(B, T, d_in)
    forward = 2 * d_in * d_out * B * T
    assert inference_flops(lambda: layer(x)) == forward
    # backward: the weight gradient costs as much again; the input gradient too when x needs one
    assert train_flops(lambda: layer(x).sum()) == 2 * forward
    assert train_flops(lambda: layer(x.requires_grad_()).sum()) == 3 * forward


def test_cpu_attention_is_counted_as_its_two_matrix_products():
    """torch has no formula for the CPU attention kernel; ours counts what the math kernel counts."""
    B, H, T, d = 2, 4, 16, 8
    q, k, v = (torch.randn(B, H, T, d, requires_grad=True) for _ in range(3))
    causal = inference_flops(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert causal == 2 * 2 * B * H * T * T * d  # QK^T and AV, the causal mask not discounted
    # a 5-D call falls back to the math kernel: its bmm's give the same count
    q5, k5, v5 = (t[:, None] for t in (q, k, v))
    assert inference_flops(lambda: F.scaled_dot_product_attention(q5, k5, v5)) == causal
    both = train_flops(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).sum())
    assert both == causal + 2 * B * H * T * T * 5 * d  # the backward's five products (QK^T recomputed)


def test_bytes_are_counted_from_the_mask():
    torch.manual_seed(0)
    llama = build_llama(llama_config(64, 2, 256))
    ids, full = batch()
    half = full.clone()
    half[:, 40:] = 0  # right padding: the same shapes, so the same FLOPs, over fewer real bytes
    a, b = llama_flops(llama, ids, full), llama_flops(llama, ids, half)
    assert a["bytes"] == 128 and b["bytes"] == batch_bytes(half) == 80
    assert b["train_flops_per_byte"] * 80 == pytest.approx(a["train_flops_per_byte"] * 128)
    assert b["inference_flops_per_byte"] * 80 == pytest.approx(a["inference_flops_per_byte"] * 128)
    with pytest.raises(ValueError, match="no real byte"):
        batch_bytes(torch.zeros(2, 4))


def test_llama_reports_positive_flops_about_three_times_the_forward_for_training():
    torch.manual_seed(0)
    llama = build_llama(llama_config(64, 2, 256))
    before = {k: v.clone() for k, v in llama.state_dict().items()}
    out = llama_flops(llama, *batch(), steps=10)
    assert out["parameters"] == count_parameters(llama)
    assert out["inference_flops_per_byte"] > 0
    assert 2.5 < out["train_flops_per_byte"] / out["inference_flops_per_byte"] < 3.5
    # the matrix products alone: 2 x (non-embedding parameters) per byte, plus attention
    weights = count_parameters(llama) - llama.model.embed_tokens.weight.numel()
    assert out["inference_flops_per_byte"] >= 2 * weights
    assert all(p.grad is None for p in llama.parameters())  # counted on a copy
    assert all(torch.equal(before[k], v) for k, v in llama.state_dict().items())
    assert run_flops(out, 128) == pytest.approx(10 * 128 * out["train_flops_per_byte"])


def test_hier_ae_reports_every_stage_and_their_steps_weighted_mean():
    torch.manual_seed(0)
    lm = HierAEForCausalLM(HierAEConfig(**TINY))
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    ids, mask = batch()
    out = hier_ae_flops(lm, STAGES, ids, mask)
    assert [r["stage"] for r in out["stages"]] == ["entropy-0", "autoencoder-0", "top_lm", "predict"]
    assert all(r["train_flops_per_byte"] > 0 for r in out["stages"])
    assert out["inference_flops_per_byte"] > 0 and out["parameters"] == count_parameters(lm)
    per = [r["train_flops_per_byte"] for r in out["stages"]]
    assert out["train_flops_per_byte"] == pytest.approx((per[0] + 3 * per[1] + per[2] + per[3]) / 6)
    # the entropy stage trains the small entropy model alone: cheaper than the autoencoder stage
    assert per[0] < per[1]
    ran = hier_ae_flops(lm, STAGES, ids, mask, steps=[10, 0, 0, 30])
    assert ran["train_flops_per_byte"] == pytest.approx((per[0] + 3 * per[3]) / 4)
    assert run_flops(ran, 128) == pytest.approx(128 * (10 * per[0] + 30 * per[3]))
    assert all(torch.equal(before[k], v) for k, v in lm.state_dict().items())  # stages ran on copies
    with pytest.raises(ValueError, match="4 stages but 2"):
        weighted(out["stages"], [1, 2])


def test_blt_reports_its_two_phases():
    torch.manual_seed(0)
    blt = build_blt(blt_config(64, 2, 256))
    ids, mask = batch()
    out = blt_flops(blt, ids, mask, steps=[10, 30])
    patcher, main = (r["train_flops_per_byte"] for r in out["stages"])
    assert 0 < patcher < main and out["inference_flops_per_byte"] > 0
    assert out["train_flops_per_byte"] == pytest.approx((10 * patcher + 30 * main) / 40)
    assert run_flops(blt_flops(blt, ids, mask), 128) is None  # steps unknown: no run total
    with pytest.raises(ValueError, match="unpadded"):
        blt_flops(blt, ids, torch.cat([mask[:, :-1], torch.zeros(2, 1, dtype=torch.long)], 1))


def test_fmt_flops():
    assert fmt_flops(12_345_678) == "12.3 M" and fmt_flops(3.2e15) == "3.2 P" and fmt_flops(None) == "n/a"
    assert fmt_flops(512e6) == "512 M" and fmt_flops(999) == "999"
    assert count_flops(lambda: torch.ones(3) + 1) == 0  # elementwise work is not counted


def test_flops_phase_reads_the_trained_models_and_is_reported(tmp_path):
    """The flops phase on tiny saved models (the run's worker, in this process), then the report."""
    import yaml
    from conftest import _save

    from bench.phases import worker
    from hier_ae import HierAEModel

    data = tmp_path / "data" / "tinyshakespeare" / "train.txt"
    data.parent.mkdir(parents=True)
    data.write_bytes(b"First Citizen: before we proceed any further, hear me speak.\n" * 40)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": TINY, "training": {"stages": STAGES}}))
    argv = ["--quick", "--data-root", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache")]
    argv += ["--config", str(config), "--threads", str(torch.get_num_threads())]

    def args_for(model):
        return run.parse_args([*argv, "--worker", "flops", model, "shakespeare"])

    train = {"seq_len": 64, "batch_size": 2}
    folder = plan.job_dir(args_for("hier_ae"), "hier_ae", "shakespeare")
    torch.manual_seed(0)
    _save(HierAEModel(HierAEConfig(**TINY)).eval(), folder / "model")
    stages = [{"stage": "x", "steps": n} for n in (20, 40, 10, 30)]
    (folder / "train.json").write_text(json.dumps({**train, "report": {"stages": stages}}))
    folder = plan.job_dir(args_for("llama"), "llama", "shakespeare")
    build_llama(llama_config(64, 2, 256)).save_pretrained(folder / "model")
    (folder / "train.json").write_text(json.dumps({**train, "report": {"steps": 100}}))
    for model in ("hier_ae", "llama"):
        worker(args_for(model))

    jobs = [
        j for j in plan.jobs(args_for("llama"), ["hier_ae", "llama"], ["shakespeare"]) if j.phase == "flops"
    ]
    flops = {j.slot: run.run_phase(argv, j) for j in jobs}  # cached: no process starts
    h, ll = flops["hier_ae", "shakespeare"], flops["llama", "shakespeare"]
    assert h["bytes"] == ll["bytes"] == 128 and h["phase_seconds"] > 0
    assert [r["steps"] for r in h["stages"]] == [20, 40, 10, 30]
    assert h["run_train_flops"] == pytest.approx(128 * 100 * h["train_flops_per_byte"])
    assert ll["run_train_flops"] == pytest.approx(128 * 100 * ll["train_flops_per_byte"])

    results = fake_results()
    results["flops"] = flops
    text = render(fake_report(tmp_path, results))
    models = text.split("### Models")[1].split("\n### ")[0]
    assert "| model | parameters | vs hier_ae | train FLOPs/byte | inference FLOPs/byte |" in models
    assert f"| hier_ae | 1,000 | +0.0% | {fmt_flops(h['train_flops_per_byte'])} |" in models
    assert "FlopCounterMode" in models and "hier_ae's training FLOPs/byte per stage: entropy-0" in models
    assert "| flops (shakespeare) |" in text  # its minutes in the run-time table
