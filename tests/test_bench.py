"""The benchmark's pieces on tiny inputs (bench/): sizing, scoring, compressors, budgets, resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import BltForCausalLM, LlamaForCausalLM

from bench import plan, run
from bench.compressors import compressed_bits_per_byte, compressor_table
from bench.peers import blt_config, blt_matched, count_on_meta, count_parameters, llama_config, llama_matched
from bench.report import RunReport, render
from bench.scoring import coverage, plan_windows, score_text
from bench.targets import TARGETS, Target, evaluate, show
from bench.training import (
    Budget,
    allocate,
    calibrate_stages,
    cosine_lr,
    recalibration_reserve,
    split_budget,
    stage_floors,
)
from hier_ae import HierAEConfig, HierAEModel
from hier_ae.training.stages import Stage

TINY = {
    "max_position_embeddings": 64,
    "levels": [
        {"hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "window": 16, "codebook_size": 64},
    ],
    "top_lm": {"hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "num_layers": 1},
}


def test_hier_ae_count_includes_codebooks_but_not_training_state():
    model = HierAEModel(HierAEConfig(**TINY))
    params = sum(p.numel() for p in model.parameters())
    codebooks = sum(lv.quantizer.codebook.numel() for lv in model.levels)
    assert codebooks > 0
    assert count_parameters(model) == params + codebooks


@pytest.mark.parametrize("target", [1_000_000, 3_087_488])
def test_llama_sizing_within_5_percent(target):
    cfg, n = llama_matched(target, max_len=1024, widths=range(64, 289, 32))
    assert abs(n / target - 1) <= 0.05, (n, target)
    assert n == count_on_meta(lambda: LlamaForCausalLM(cfg))


def test_blt_sizing_within_5_percent_and_every_module_counts():
    target = 3_087_488  # hier_ae small
    cfg, n = blt_matched(target, max_len=1024, widths=range(96, 193, 32), depths=range(6, 12))
    assert abs(n / target - 1) <= 0.05, (n, target)
    with torch.device("meta"):
        blt = BltForCausalLM(cfg)
    # the patcher (entropy model) and the hash n-gram embeddings count too
    parts = sum(p.numel() for p in blt.model.patcher.parameters())
    parts += blt.model.encoder_hash_tok_embedding.weight.numel()
    assert parts > 0 and count_parameters(blt) == n
    # BLT's fixed local parts alone exceed 1M: the search says so instead of returning a far match
    with pytest.raises(ValueError, match="within 5%"):
        blt_matched(1_000_000, max_len=1024, widths=(64,), depths=(1,))


@pytest.mark.parametrize("n,context", [(1, 4), (10, 4), (11, 4), (300, 128), (1000, 256), (257, 256)])
def test_windows_score_every_byte_exactly_once(n, context):
    plan = plan_windows(n, context)
    assert torch.equal(coverage(plan, n), torch.ones(n, dtype=torch.long))
    for k, (lo, a, b) in enumerate(plan):
        assert b - lo <= context  # never longer than the training length
        if k > 0 and b >= context:
            assert a - lo >= context // 2  # every later byte sees at least half a context


def test_scorer_uniform_model_gives_log2_vocab_and_reads_only_the_past():
    data = bytes(range(32, 127)) * 3  # 285 bytes
    seen = []

    def uniform(ids):
        seen.append(ids.clone())
        return torch.zeros(*ids.shape, 259)

    res = score_text(uniform, data, context=16, batch_size=4)
    assert res["bytes"] == len(data)
    assert math.isclose(res["bits_per_byte"], math.log2(259), rel_tol=1e-6)
    assert max(x.shape[1] for x in seen) == 16

    # a model that knows the rule of the text scores ~0 bits only if logits[t] is scored against ids[t + 1]
    digits = b"0123456789" * 30

    def next_digit(ids):
        byte = ids - 3  # <s> (id 2) -> -1, which the rule maps to "0"
        nxt = (byte - ord("0") + 1) % 10 + ord("0") + 3  # (B, T)
        nxt = torch.where(ids == 2, torch.full_like(ids, ord("0") + 3), nxt)
        return torch.full((*ids.shape, 259), -1e4).scatter(2, nxt[..., None], 0.0)

    assert score_text(next_digit, digits, context=16)["bits_per_byte"] < 1e-6
    assert score_text(lambda ids: next_digit(ids).roll(1, dims=1), digits, context=16)["bits_per_byte"] > 100


def test_compressor_bits_per_byte():
    text = b"to be or not to be, that is the question. " * 200
    gz = compressed_bits_per_byte(text, ["gzip", "-9", "-c"])
    assert 0 < gz < 1.0  # highly repetitive text compresses far below 8 bits per byte
    noise = bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist())
    assert compressed_bits_per_byte(noise, ["gzip", "-9", "-c"]) > 7.9
    table = compressor_table(text)
    assert set(table) == {"gzip -9", "bzip2 -9", "xz -9e", "zstd -19"}
    assert all(v is None or 0 < v < 8 for v in table.values())


def test_budget_plans_steps_and_schedule_ends_at_ten_percent(monkeypatch):
    import bench.training as training

    now = [100.0]
    monkeypatch.setattr(training.time, "perf_counter", lambda: now[0])
    b = Budget(10.0)
    now[0] += 2.0  # 4 steps in 2 s: 0.5 s/step, 8 s left -> 16 more
    assert b.planned(4) == 20 and not b.over()
    now[0] += 8.0
    assert b.planned(20) == 20 and b.over()
    assert cosine_lr(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert cosine_lr(100, 100, 1.0, 10) == pytest.approx(0.1)
    assert cosine_lr(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert split_budget(120.0, [200, 400, 600]) == pytest.approx(20.0)


def test_allocation_gives_every_stage_the_same_fraction_of_its_steps():
    steps, costs = [200, 400, 100, 150], [0.1, 0.5, 0.05, 2.0]  # 20 + 200 + 5 + 300 = 525 s per pass
    seconds, expected = allocate(262.5, steps, costs)
    assert seconds == pytest.approx([10.0, 100.0, 2.5, 150.0])
    assert expected == pytest.approx([100.0, 200.0, 50.0, 75.0])  # half of every stage
    assert sum(seconds) == pytest.approx(262.5)
    # the re-split after a stage: what is left goes to the remaining stages by the same rule
    assert split_budget(255.0 - 5.0, steps[1:], costs[1:]) == pytest.approx(250.0 * 200 / 505)
    # equal costs: the old split by configured steps
    assert split_budget(120.0, [200, 400, 600], [1.0, 1.0, 1.0]) == pytest.approx(20.0)
    assert allocate(-5.0, steps, costs)[0] == [0.0] * 4  # an overrun budget gives nothing, not < 0
    with pytest.raises(ValueError, match="> 0"):
        allocate(10.0, [1, 2], [0.1, 0.0])


def test_floors_fit_the_budget_and_scale_down_when_they_would_not():
    steps, costs = [600, 1200, 300], [0.05, 0.2, 0.05]  # 30 + 240 + 15 = 285 s per configured pass
    _, expected = allocate(100.0, steps, costs)
    floors = stage_floors(100.0, steps, costs)
    assert floors == [math.ceil(0.25 * e) for e in expected]  # a quarter of each planned share
    assert stage_floors(1000.0, steps, costs) == [527, 1053, 264]  # 3.5 x configured planned: a quarter
    assert stage_floors(1e6, steps, costs, min_share=1.0) == steps  # never above the configured steps
    # a minimum that the budget cannot hold: scaled down in proportion, never over the budget
    for seconds in (100.0, 10.0, 1.0, 0.0, -5.0):
        for slow in range(3):
            cal = [c * (4.0 if i == slow else 1.0) for i, c in enumerate(costs)]  # one calibration 4x slow
            big = stage_floors(seconds, steps, cal, min_steps=500)
            assert sum(f * c for f, c in zip(big, cal)) <= max(seconds, 0.0) + 1e-9
            assert all(0 <= f <= n for f, n in zip(big, steps))
    # (500, 500, 300) need 140 s of 100: scaled by 100 / 140, rounded down
    assert stage_floors(100.0, steps, costs, min_steps=500) == [357, 357, 214]
    with pytest.raises(ValueError, match="min_share"):
        stage_floors(10.0, steps, costs, min_share=1.5)


def fake_clock_run(
    monkeypatch,
    calibrated,
    real,
    budget_s,
    min_share=0.25,
    configured=(600, 1200, 300),
    recalibrate=False,
    recalibrated=None,
    calls=None,
):
    """train_hier_ae with its calibration and every optimizer step replaced by a clock: stage i's
    first calibration says calibrated[i] s/step, a re-calibration (`recalibrate`) says recalibrated[i]
    (default: calibrated[i]), its steps really take real[i] s; a calibration takes 5 s for all the
    stages, less in proportion for fewer.
    `calls` (a list) collects the names of the stages each calibration timed. Returns the report."""
    import bench.training as training

    now = [0.0]
    monkeypatch.setattr(training.time, "perf_counter", lambda: now[0])
    kinds = [("entropy", 0), ("autoencoder", 0), ("top_lm", None)]
    specs = [{"kind": k, "level": lv, "steps": n} for (k, lv), n in zip(kinds, configured)]
    names = [Stage(**spec).name for spec in specs]
    later = list(calibrated if recalibrated is None else recalibrated)

    def calibrate(model, stages, batches):
        now[0] += 5.0 * len(stages) / len(names)  # the calibration's own time, inside the budget
        first = len(stages) == len(names) and (calls is None or not calls)
        if calls is not None:
            calls.append([s.name for s in stages])
        return list(calibrated) if first else later[len(names) - len(stages) :]

    def fake_train_stage(model, stage, batches, time_budget_s=None, on_step=None):
        t0, history = now[0], []
        for step in range(stage.steps):
            now[0] += real[names.index(stage.name)]
            history.append(1.0)
            if on_step(step + 1, {"tokens": 2048, "loss": 1.0}):
                break
            if time_budget_s is not None and now[0] - t0 > time_budget_s:
                break
        return history

    monkeypatch.setattr(training, "calibrate_stages", calibrate)
    monkeypatch.setattr(training, "train_stage", fake_train_stage)
    _, report = training.train_hier_ae(
        TINY, specs, iter(()), budget_s, log=lambda *a: None, min_share=min_share, recalibrate=recalibrate
    )
    return report


def fractions(report: dict) -> list[float]:
    return [r["steps"] / r["configured_steps"] for r in report["stages"]]


def test_every_stage_recalibrates_at_its_start_on_the_model_trained_so_far(monkeypatch):
    """The first calibration (on the untrained model) says the later stages cost 2x and 4x what they
    do once the entropy model is trained: calibrated once, the last stage ran twice the fraction of
    its configured steps that the one before it ran; re-calibrated at each stage's start, the stages
    after the first run the same fraction, and every stage still runs at least its floor."""
    real = [0.05, 0.2, 0.05]
    biased = [0.05, 0.4, 0.2]
    once = fractions(fake_clock_run(monkeypatch, biased, real, 115.0))
    assert once[2] > 1.8 * once[1]
    calls: list = []
    rep = fake_clock_run(monkeypatch, biased, real, 115.0, recalibrate=True, recalibrated=real, calls=calls)
    names = [r["stage"] for r in rep["stages"]]
    assert calls == [names, names[1:], names[2:]]
    assert rep["recalibrate"] and rep["calibration_seconds"] == pytest.approx(10.0)
    assert [r["calibrated_s_per_step"] for r in rep["stages"]] == [0.05, 0.2, 0.05]
    again = fractions(rep)
    assert again[2] == pytest.approx(again[1], rel=0.02)
    # the first stage's share is planned on the first calibration, less the re-calibrations' 5 s
    planned_first = allocate(115.0 - 5.0 - recalibration_reserve(5.0, 3, 3), [600, 1200, 300], biased)[1][0]
    assert recalibration_reserve(5.0, 3, 3) == pytest.approx(5.0)
    assert abs(rep["stages"][0]["steps"] - planned_first) <= 1
    for r in rep["stages"]:
        assert r["steps"] >= r["floor_steps"] > 0, r
    assert rep["seconds"] <= 115.0 + max(real)  # the re-calibrations' time is inside the budget


@pytest.mark.parametrize("slow", [4.0, 8.0])
def test_a_stage_slower_than_its_calibration_still_gets_its_floor(monkeypatch, slow):
    """The issue's case: entropy-0 calibrated at a quarter (or an eighth) of its real step time."""
    costs = [0.05, 0.2, 0.05]
    real = [costs[0] * slow, *costs[1:]]
    starved = fake_clock_run(monkeypatch, costs, real, 105.0, min_share=0.0)["stages"]
    rep = fake_clock_run(monkeypatch, costs, real, 105.0)
    floors = stage_floors(100.0, [600, 1200, 300], costs)
    assert [r["floor_steps"] for r in rep["stages"]] == floors
    for r, f in zip(rep["stages"], floors):
        assert r["steps"] >= f, (r, f)
    assert starved[0]["steps"] < floors[0] <= rep["stages"][0]["steps"]  # without the floor it starved
    assert rep["seconds"] <= 105.0 + max(real)  # the budget holds (to within one step)


def test_a_calibration_slowed_4x_for_one_stage_still_gives_every_stage_its_floor(monkeypatch):
    costs = [0.05, 0.2, 0.05]
    for slow in range(3):
        calibrated = [c * (4.0 if i == slow else 1.0) for i, c in enumerate(costs)]
        rep = fake_clock_run(monkeypatch, calibrated, costs, 105.0)
        floors = stage_floors(100.0, [600, 1200, 300], calibrated)
        assert sum(f * c for f, c in zip(floors, calibrated)) <= 100.0
        for r, f in zip(rep["stages"], floors):
            assert r["steps"] >= f, (slow, r, f)
        assert rep["seconds"] <= 105.0 + max(costs)


def test_calibration_takes_the_median_of_the_timed_steps_after_the_warm_up(monkeypatch):
    import bench.training as training

    now = [0.0]
    monkeypatch.setattr(training.time, "perf_counter", lambda: now[0])
    # a warm-up step of 5 s, then 5 timed steps, one of them slowed 10x by another process
    durations = iter([5.0, 0.1, 0.1, 1.0, 0.1, 0.1] * 2)

    def fake_train_stage(model, stage, batches, on_prepared=None, on_step=None):
        on_prepared(model, None)
        for step in range(stage.steps):
            now[0] += next(durations)
            on_step(step + 1, {})
        return []

    monkeypatch.setattr(training, "train_stage", fake_train_stage)
    model = HierAEModel(HierAEConfig(**TINY))
    stages = [Stage(kind="entropy", level=0, steps=50), Stage(kind="top_lm", steps=0)]
    stages.append(Stage(kind="autoencoder", level=0, steps=50))
    costs = calibrate_stages(model, stages, iter(()))
    assert costs == pytest.approx([0.1, 1.0, 0.1])  # the mean of the timed steps was 0.28 s (3.8 x slow)


def test_target_rate_rule_closes_every_target_tokens():
    from bench.training import target_rate_rule

    tokens = torch.full((2, 10), 50)
    tokens[1, 3] = 1  # EOS closes its segment too
    fires = target_rate_rule(2.5, eos_id=1)(torch.zeros(2, 10), tokens)
    assert fires.long().tolist() == [[0, 0, 1, 0, 1, 0, 0, 1, 0, 1], [0, 0, 1, 1, 1, 0, 0, 1, 0, 1]]


@pytest.mark.parametrize("at_target_rate", [True, False])
def test_calibration_copy_segments_at_the_target_rate(monkeypatch, at_target_rate):
    """The copy's level segments at its target_tokens_per_segment, whatever its untrained entropy
    model says (which fires at nearly every byte); the model itself keeps its rule."""
    import bench.training as training

    cfg = {**TINY, "levels": [{**TINY["levels"][0], "target_tokens_per_segment": 4.0, "max_segment_len": 8}]}
    torch.manual_seed(0)
    model = HierAEModel(HierAEConfig(**cfg))
    ids = torch.randint(3, 259, (2, 64))
    valid = torch.ones_like(ids, dtype=torch.bool)
    positions = torch.arange(64).expand(2, 64)
    seen = []

    def fake_train_stage(net, stage, batches, on_prepared=None, on_step=None):
        with torch.no_grad():
            _, _, layout, _, _ = net.levels[0].segment(ids, valid, positions)
        seen.append(layout.seg_mask.sum().item())
        on_prepared(net, None)
        for step in range(stage.steps):
            on_step(step + 1, {})
        return []

    monkeypatch.setattr(training, "train_stage", fake_train_stage)
    calibrate_stages(
        model, [Stage(kind="autoencoder", level=0, steps=10)], iter(()), at_target_rate=at_target_rate
    )
    with torch.no_grad():
        _, _, own, _, _ = model.levels[0].segment(ids, valid, positions)
    own_segments = own.seg_mask.sum().item()
    if at_target_rate:
        assert seen == [2 * 64 / 4]  # 16 segments of 4 bytes per row
        assert own_segments > 2 * 64 / 2  # the untrained rule: mostly 1-byte segments
    else:
        assert seen == [own_segments]


def test_calibration_leaves_the_model_and_rng_unchanged():
    torch.manual_seed(0)
    model = HierAEModel(HierAEConfig(**TINY))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)

    def batches():
        while True:
            yield torch.randint(3, 259, (2, 32), generator=gen), torch.ones(2, 32, dtype=torch.long)

    stages = [Stage(kind="entropy", level=0, steps=50), Stage(kind="autoencoder", level=0, steps=50)]
    rng = torch.random.get_rng_state()
    costs = calibrate_stages(model, stages, batches(), warmup=1, timed=1)
    assert len(costs) == 2 and all(c > 0 for c in costs)
    assert [s.steps for s in stages] == [50, 50]  # the specs are not changed either
    assert torch.equal(torch.random.get_rng_state(), rng)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_cached_phase_is_skipped_on_resume(tmp_path, monkeypatch):
    path = tmp_path / "hier_ae-shakespeare-20min" / "train.json"
    plan.write_json(path, {"done": True})

    def no_subprocess(*a, **k):
        raise AssertionError("a cached phase must not run again")

    monkeypatch.setattr(run.subprocess, "run", no_subprocess)
    assert run.run_phase([], plan.Job("train", "hier_ae", "shakespeare", path)) == {"done": True}
    # a missing result does run (and here fails loudly through the patched subprocess)
    with pytest.raises(AssertionError, match="must not run"):
        run.run_phase([], plan.Job("score", "hier_ae", "shakespeare", path.with_name("score.json")))


def test_cache_keys_separate_model_data_and_budget(tmp_path):
    args = run.parse_args(["--cache-dir", str(tmp_path), "--budget-minutes", "20"])
    keys = {plan.job_dir(args, m, d) for m in plan.MODELS for d in plan.DATASETS}
    assert len(keys) == len(plan.MODELS) * len(plan.DATASETS)
    other = run.parse_args(["--cache-dir", str(tmp_path), "--budget-minutes", "10"])
    assert plan.job_dir(other, "llama", "shakespeare") != plan.job_dir(args, "llama", "shakespeare")
    assert plan.job_dir(args, "llama", "code+multilingual").name.endswith("-8min")


def test_peer_params_size_a_peer_on_its_own_and_keep_its_results_apart(tmp_path, capsys):
    args = run.parse_args(["--cache-dir", str(tmp_path), "--peer-params", "llama=1400000"])
    assert args.peer_targets == {"llama": 1_400_000}
    matched = run.parse_args(["--cache-dir", str(tmp_path)])
    assert plan.job_dir(args, "llama", plan.PRIMARY) != plan.job_dir(matched, "llama", plan.PRIMARY)
    assert plan.job_dir(args, "blt", plan.PRIMARY) == plan.job_dir(matched, "blt", plan.PRIMARY)
    cfgs = plan.matched_configs(args)
    assert abs(cfgs["counts"]["llama"] / 1_400_000 - 1) < 0.05
    assert abs(cfgs["counts"]["blt"] / cfgs["counts"]["hier_ae"] - 1) < 0.05
    for bad in ("gpt=5", "llama=x", "llama=0"):
        with pytest.raises(SystemExit):
            run.parse_args(["--peer-params", bad])
        assert "MODEL=N with MODEL llama or blt" in capsys.readouterr().err


def test_job_plan_orders_the_phases_and_names_the_files_the_workers_write(tmp_path):
    args = run.parse_args(["--cache-dir", str(tmp_path), "--quick"])
    todo = plan.jobs(args, ["hier_ae", "blt"], [plan.PRIMARY, "code+multilingual"])
    assert [(j.phase, j.model, j.key) for j in todo[:5]] == [
        ("train", "hier_ae", "shakespeare"),
        ("flops", "hier_ae", "shakespeare"),  # FLOPs per byte of the trained model (bench/flops.py)
        ("score", "hier_ae", "shakespeare"),
        ("recon", "hier_ae", "shakespeare"),  # the reconstruction benchmark, hier_ae only
        ("generate", "hier_ae", "shakespeare"),
    ]
    recon = [j for j in todo if j.phase == "recon"]
    assert [(j.model, j.key) for j in recon] == [("hier_ae", "shakespeare"), ("hier_ae", "code+multilingual")]
    assert recon[0].path.name == "recon-l16-d2.json"  # --quick's samples; its own cache folder
    generate = [j for j in todo if j.phase == "generate"]
    assert [j.model for j in generate] == ["hier_ae", "blt"] and generate[0].slot == "hier_ae"
    scaling = [j for j in todo if j.phase == "scaling"]  # BLT is not in the scaling table
    assert [(j.model, j.slot) for j in scaling] == [
        ("hier_ae", ("hier_ae", 1024)),
        ("hier_ae", ("hier_ae", 4096)),
    ]
    for j in todo:  # the worker writes where the orchestration reads
        assert j.path == plan.result_path(args, j.phase, j.model, j.key)
    assert len({j.path for j in todo}) == len(todo)
    skip = run.parse_args(["--cache-dir", str(tmp_path), "--skip-scaling", "--skip-recon"])
    assert {j.phase for j in plan.jobs(skip, ["hier_ae"], [plan.PRIMARY])} == {
        "train",
        "flops",
        "score",
        "generate",
    }
    frontier = run.parse_args(
        ["--cache-dir", str(tmp_path), "--skip-scaling", "--skip-recon", "--skip-generate"]
    )
    assert {j.phase for j in plan.jobs(frontier, ["hier_ae"], [plan.PRIMARY])} == {"train", "flops", "score"}
    capped = run.parse_args(["--max-val-bytes", "4096", "--recon-sample-lines", "50"])
    assert plan.recon_name(capped) == "recon-l50-d16-val4096.json"  # samples of a capped text kept apart


def test_hier_ae_generate_uses_its_cache():
    """transformers >= 5.24 hands generate()'s cache over as `cache=`; the streamed logits must equal
    one uncached forward pass over the same sequence (found by the bench's cache check)."""
    from hier_ae import HierAEForCausalLM

    torch.manual_seed(0)
    lm = HierAEForCausalLM(HierAEConfig(**TINY)).eval()
    ids = torch.tensor([[2] + [b + 3 for b in b"to be or not to be"]])
    with torch.no_grad():
        out = lm.generate(
            ids,
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=0,
            use_cache=True,
            output_scores=True,
            return_dict_in_generate=True,
        )
        full = lm(input_ids=out.sequences, use_cache=False).logits[0, ids.shape[1] - 1 : -1]
    assert torch.allclose(torch.stack(out.scores, 1)[0], full, atol=1e-4)


def test_plan_counts_every_budget_and_caps_keep_their_own_scores(tmp_path):
    args = run.parse_args(["--cache-dir", str(tmp_path)])
    if not Path(args.data_root).exists():
        pytest.skip(f"the bench's data ({args.data_root}) is not here")
    minutes = plan.estimate_minutes(args, list(plan.MODELS), [plan.PRIMARY, "code+multilingual"])
    assert minutes["train (shakespeare)"] == 3 * 20 and minutes["train (code+multilingual)"] == 3 * 8
    assert minutes["recon (code+multilingual)"] == 2 * minutes["recon (shakespeare)"]  # two val texts
    assert all(v > 0 for v in minutes.values())
    assert sum(minutes.values()) < 120  # the limit for the whole run (an estimate: see the report)
    assert plan.score_name(args) == "score.json"
    capped = run.parse_args(["--max-val-bytes", "4096", "--recon-lines", "100"])
    assert plan.score_name(capped) == "score-val4096-rec100.json"
    quick = run.parse_args(["--quick", "--max-val-bytes", "1000"])
    assert quick.max_val_bytes == 1000 and quick.recon_lines == 16  # explicit flags win over --quick


def test_val_skip_bytes_scores_the_text_after_the_tuning_part(tmp_path):
    """Settings chosen on `--max-val-bytes N` are reported on `--val-skip-bytes N`: the two parts
    of each val text do not overlap, cover it all, and keep their own cached scores."""
    data = tmp_path / "data"
    for rel in {r for spec in plan.DATASETS.values() for r in spec["val"].values()}:
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(bytes(range(256)) * 4)
    root = ["--data-root", str(data), "--cache-dir", str(tmp_path)]
    tune = run.parse_args([*root, "--max-val-bytes", "300"])
    report = run.parse_args([*root, "--val-skip-bytes", "300"])
    both = run.parse_args([*root, "--val-skip-bytes", "300", "--max-val-bytes", "100"])
    whole = run.parse_args(root)
    for dataset in plan.DATASETS:
        for name, text in plan.val_texts(whole, dataset).items():
            head, tail = plan.val_texts(tune, dataset)[name], plan.val_texts(report, dataset)[name]
            assert head + tail == text and len(head) == 300
            assert plan.val_texts(both, dataset)[name] == text[300:400]
    names = {plan.score_name(a) for a in (tune, report, both, whole)}
    assert names == {"score-val300.json", "score-skip300.json", "score-skip300-val100.json", "score.json"}
    assert plan.recon_name(report) == "recon-l200-d16-skip300.json"
    with pytest.raises(SystemExit):
        run.parse_args(["--val-skip-bytes", "-1"])


def test_bench_is_a_package_that_does_not_reach_into_tests():
    """`python -m bench.X` from the repository root: no sys.path edits, no imports of tests/."""
    import ast

    from bench.decode_speed import document

    for path in Path(run.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "path":
                assert not (isinstance(node.value, ast.Name) and node.value.id == "sys"), path
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                )
                assert not any(n.split(".")[0] in ("tests", "helpers", "conftest") for n in names), path
    # the first sentences that fit, joined by spaces, framed <s> ... </s>: "Ab." = ids 68, 101, 49
    assert document(["Ab.", "Cd."], 6).tolist() == [[2, 68, 101, 49, 1]]
    assert document(["Ab.", "Cd."], 7).tolist() == [[2, 68, 101, 49, 35, 70, 103, 49, 1]]
    with pytest.raises(ValueError, match="fits in 2 bytes"):
        document(["Ab."], 2)


def fake_results(hier_bpb=2.4244, exact=0.0):
    """A run's results as bench/run.py collects them, with the figures the targets read."""

    def score(bits, **extra):
        return {"val": {"tinyshakespeare": {"predict": {"bits_per_byte": bits}, **extra}}}

    def gen(rates, ms):
        rows = [
            {"prompt": p, "bytes_per_s": r, "ms_per_byte_after_prefill": m}
            for p, r, m in zip((64, 8192), rates, ms)
        ]
        return {"rows": rows}

    rec = {
        "reconstruction": {
            "exact_match": exact,
            "code_bits_per_byte": 2.596,
            "documents": 16,
            "tokens_per_segment": [3.1, 1.6],
            "bytes_per_code": [3.1, 3.9],
        },
        "zero_context": {"bits_per_byte": 3.0},
        "codebook_usage": [{"usage_perplexity": 200.0, "distinct_codes": 500, "codebook_size": 1024}],
    }
    rec["codebook_usage"][0].update(depth=1, dead_codes=3)
    return {
        "score": {
            ("hier_ae", "shakespeare"): score(hier_bpb, **rec),
            ("llama", "shakespeare"): score(2.1672),
            ("blt", "shakespeare"): score(2.3927),
        },
        "generate": {"hier_ae": gen((100.0, 80.0), (8.0, 9.0)), "llama": gen((50.0, 20.0), (18.0, 40.0))},
    }


def test_targets_table_gives_the_verdicts_and_distances():
    out = {o.name: o for o in evaluate(fake_results(), "shakespeare", "tinyshakespeare")}
    llama = out["bits/byte <= 0.95 x Llama's"]
    assert llama.value == pytest.approx(2.4244 / 2.1672) and not llama.met
    assert show(llama) == ("1.119 x (2.4244 vs 2.1672)", "+0.169 x")
    assert not out["bits/byte below BLT's"].met
    # one row per prompt against the faster peer (BLT has no generate result here: the Llama's)
    assert out["generation bytes/s >= 2 x the faster peer's (64 B prompt)"].met  # 100 / 50
    assert out["generation bytes/s >= 2 x the faster peer's (8192 B prompt)"].met  # 80 / 20
    assert out["generation bytes/s >= 1 x the Llama's (64 B prompt)"].value == pytest.approx(2.0)
    # issue #20's targets on the second table's corpora read that table's scores
    second = fake_results()
    second["score"][("hier_ae", "code+multilingual")] = {"val": {"code": {"predict": {"bits_per_byte": 1.5}}}}
    second["score"][("blt", "code+multilingual")] = {"val": {"code": {"predict": {"bits_per_byte": 1.2}}}}
    found = {o.name: o for o in evaluate(second, "shakespeare", "tinyshakespeare")}
    code = found["code bits/byte below BLT's"]
    assert code.value == pytest.approx(1.25) and not code.met
    assert "code bits/byte below BLT's" not in out  # no second table: left out
    slow = out["time per generated byte, 8192 B vs 64 B prompt <= 1.25 x"]
    assert slow.value == pytest.approx(100 / 80) and slow.met  # 1.25 <= 1.25
    assert out["  the same, after the prefill (decoding only)"].value == pytest.approx(9 / 8)
    rec = out["reconstruct exact-match >= 99.9% of val lines at <= 2.0 code bits/byte"]
    assert not rec.met and show(rec) == ("0.00% at 2.596 bits", "-99.90 points, +0.596 bits")
    # both conditions must hold: exact enough but over the rate is still missed
    rec = {o.name: o for o in evaluate(fake_results(exact=1.0), "shakespeare", "tinyshakespeare")}
    assert not rec["reconstruct exact-match >= 99.9% of val lines at <= 2.0 code bits/byte"].met
    assert evaluate(fake_results(hier_bpb=2.0), "shakespeare", "tinyshakespeare")[0].met  # 0.923 x
    # a figure the run lacks (no peer scored) leaves its target out instead of failing
    results = fake_results()
    results["score"] = {k: v for k, v in results["score"].items() if k[0] == "hier_ae"}
    names = [o.name for o in evaluate(results, "shakespeare", "tinyshakespeare")]
    assert not any("bits/byte" in n and ("Llama" in n or "BLT" in n) for n in names)
    # 4 bits/byte targets left out (the code and multilingual ones: no second table here); the
    # generation targets give one row per prompt (2 here)
    assert len(names) == len(TARGETS) - 4 + 2
    with pytest.raises(ValueError, match="metric='bpb'"):
        Target("x", "bpb", "<=", 1.0)


def fake_report(tmp_path, results, models=("hier_ae", "llama")) -> RunReport:
    """A RunReport of a run of `models` on the main data only, from figures made up for the test."""
    args = run.parse_args(
        ["--quick", "--skip-second", "--cache-dir", str(tmp_path), "--out", str(tmp_path / "r.md")]
    )
    train = {"seq_len": 256, "batch_size": 8, "budget_s": 60.0, "report": {"steps": 10}}
    train.update(train_bytes_per_s=1000.0, peak_rss_mb=500.0, phase_seconds=60.0)
    results = {"train": {(m, "shakespeare"): train for m in models}, "scaling": {}, **results}
    for s in results["score"].values():
        s.setdefault("peak_rss_mb", 400.0)
        s["val"]["tinyshakespeare"]["predict"]["bytes_per_s"] = 5000.0
    for g in results["generate"].values():
        g.update(use_cache=True, new=32, repeats=1, note="")
    configs = {
        "hier_ae": {},
        "llama": llama_config(64, 2, 256),
        "blt": blt_config(64, 2, 256),
        "counts": {"hier_ae": 1000, "llama": 1010, "blt": 990},
    }
    compress = {"shakespeare": {"tinyshakespeare": {"gzip -9": 3.5, "xz -9e": 3.3}}}
    return RunReport(args, ["--quick"], configs, results, compress, ["shakespeare"], "a test machine", 1.0)


def test_report_renders_one_run_report_with_its_targets(tmp_path):
    results = fake_results()
    results["score"].pop(("blt", "shakespeare"))
    text = render(fake_report(tmp_path, results))
    assert text.startswith("# hier_ae benchmark results")
    assert "Command: `python -m bench.run --quick`" in text and "Machine: a test machine" in text
    assert "| bits/byte <= 0.95 x Llama's | 1.119 x (2.4244 vs 2.1672) | +0.169 x | **missed** |" in text
    assert "BLT's" not in text.split("### Targets")[1].split("###")[0]  # BLT did not run: no BLT target


RECON_TEXT = (
    b"The quick brown fox jumps over the lazy dog, again and again.\n"
    b"short\n"
    b"def reconstruct(codes):  # a line of code that is long enough\n"
) * 20


def test_recon_phase_is_cached_by_its_worker_and_reported_as_autoencoder_figures(tmp_path):
    """The recon phase on a tiny random hier_ae (the run's worker, in this process), then its report."""
    from conftest import _save, tiny_config

    from bench.phases import worker
    from hier_ae import HierAEModel

    val = tmp_path / "data" / "tinyshakespeare" / "val.txt"
    val.parent.mkdir(parents=True)
    val.write_bytes(RECON_TEXT)
    argv = ["--quick", "--data-root", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache")]
    argv += ["--recon-sample-lines", "2", "--recon-sample-docs", "1"]
    argv += ["--threads", str(torch.get_num_threads())]  # the worker sets it: leave this process's alone
    args = run.parse_args([*argv, "--worker", "recon", "hier_ae", "shakespeare"])
    torch.manual_seed(0)
    _save(HierAEModel(tiny_config(1)).eval(), plan.job_dir(args, "hier_ae", "shakespeare") / "model")
    worker(args)

    job = next(j for j in plan.jobs(args, ["hier_ae"], ["shakespeare"]) if j.phase == "recon")
    res = run.run_phase(argv, job)  # cached: no process starts
    assert res["model"] == "hier_ae" and res["levels"] == 1 and res["phase_seconds"] > 0
    assert res["settings"]["lines"] == 2 and res["settings"]["docs"] == 1
    text = res["texts"]["tinyshakespeare"]
    assert text["source"] == "tinyshakespeare/val.txt" and text["bytes"] == len(RECON_TEXT)
    assert text["lines"]["texts"] == 2 and text["docs"]["texts"] == 1 and text["docs"]["bytes"] == 1024
    lv0 = text["lines"]["levels"][0]
    for key in ("exact_match", "teacher_forced_accuracy", "code_bits_per_byte", "total_bits_per_byte"):
        assert lv0[key] >= 0.0
    assert 0.0 <= text["docs"]["top_lm"]["top1_accuracy_codes"] <= 1.0
    assert "xz -9e" in text["compressors"]["docs"]
    with pytest.raises(ValueError, match="hier_ae's autoencoder"):
        worker(run.parse_args([*argv, "--worker", "recon", "llama", "shakespeare"]))

    results = fake_results()
    results["recon"] = {("hier_ae", "shakespeare"): res}
    report = render(fake_report(tmp_path, results))
    section = report.split("### Reconstruction: hier_ae as an autoencoder")[1].split("\n### ")[0]
    assert "**Autoencoder figures, not LM figures**" in section
    assert "| tinyshakespeare | 0 |" in section  # per text and level
    assert "exact lines | exact docs | TF acc lines" in section and "top-1" in section and "xz -9e" in section
    assert "predict bits/B" not in section  # no LM figure in the autoencoder section
    assert "| recon (shakespeare) |" in report  # its minutes in the run-time table


def test_device_speed_times_every_stage_and_both_models_on_cpu(tmp_path):
    """bench/device_speed.py end to end on the CPU at a toy size: every row filled with a rate > 0."""
    from bench import device_speed

    out = tmp_path / "speed.md"
    argv = ["--config", "configs/tiny.yaml", "--device", "cpu", "--dtypes", "fp32", "--batch", "2"]
    argv += ["--seq", "32", "--warmup", "1", "--steps", "2", "--prompts", "8", "--new", "4", "--repeats", "1"]
    table = device_speed.main([*argv, "--corpus-bytes", "50000", "--out", str(out)])
    rows = [line for line in table.splitlines() if line.startswith("| fp32")]
    assert len(rows) == 2  # training, one prompt's generation
    stages = rows[0].split("|")[3].split(" / ")
    assert [s.split()[0] for s in stages] == ["entropy", "autoencoder", "top_lm", "predict"]
    rates = [float(s.split()[1].replace(",", "")) for s in stages]
    rates += [float(c.replace(",", "")) for c in (rows[0].split("|")[4], *rows[1].split("|")[3:5])]
    assert all(r > 0 and math.isfinite(r) for r in rates), rates
    assert out.read_text().startswith("## Device speed") and "python -m bench.device_speed" in out.read_text()
