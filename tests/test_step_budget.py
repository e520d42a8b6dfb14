"""Stages sized in minutes (`training.step_budget`): the sizing arithmetic, the stage loop under it, the
config checks. A fake clock makes every sizing here exact; examples/train.py's resume of a sized stage is
in tests/test_train.py."""

from __future__ import annotations

import itertools

import pytest
import torch

from hier_ae.data.batching import frame_document, pad_rows
from hier_ae.training.run_config import check_run_config
from hier_ae.training.stages import Stage, lr_at, train_stage
from hier_ae.training.step_budget import StepBudget


def run_config(stage: dict) -> dict:
    return {"model": {"levels": [{}]}, "training": {"stages": [stage]}}


def test_sizing_fits_the_rest_of_the_budget_at_the_measured_pace():
    # the module docstring's example: 60 s, 10 steps in 3.1 s -> 0.31 s a step, 56.9 s left, 183 more
    b = StepBudget(seconds=60, max_steps=100_000)
    assert b.observe(9, 9, 2.9) is None  # fewer than min_steps = 10
    assert b.observe(10, 10, 3.1) == 193 and b.sized and b.sizings == 1 and not b.final
    assert b.observe(11, 11, 100.0) == 11  # past every check at once: over the budget, stop here
    assert b.final and b.sizings == 4 and b.observe(12, 12, 200.0) == 11  # final from then on


def test_later_checks_size_again_at_the_pace_since_the_last_sizing():
    """0.125 s a step for the first 5% of 100 s, then 0.25 s: sized at 5 s (40 steps) to 40 + 760 =
    800 steps; at 25 s (120 steps, pace 20 s / 80) to 120 + floor(75 / 0.25) = 420; at 50 s (220
    steps) to 420 again; a pace that speeds up after 50 s (0.125 s a step) lengthens the stage at 75 s
    (420 steps): 420 + floor(25 / 0.125) = 620, the final count."""
    b = StepBudget(seconds=100, max_steps=100_000)
    assert b.observe(40, 40, 5.0) == 800
    assert b.observe(119, 119, 24.75) == 800  # 25% not reached: the count stands
    assert b.observe(120, 120, 25.0) == 420 and b.sizings == 2
    assert b.observe(220, 220, 50.0) == 420 and b.sizings == 3
    assert b.observe(420, 420, 75.0) == 620 and b.final
    slow = StepBudget(seconds=100, max_steps=100_000)
    assert slow.observe(10, 10, 30.0) == 10 + 23 and slow.sizings == 2  # passed 5% and 25% at once
    with pytest.raises(ValueError, match="checks increasing"):
        StepBudget(seconds=10, max_steps=10, checks=(0.5, 0.25))
    with pytest.raises(ValueError, match="checks increasing"):
        StepBudget(seconds=10, max_steps=10, checks=())


def test_sizing_waits_for_its_share_of_the_budget_and_stays_between_done_and_max():
    b = StepBudget(seconds=100, max_steps=1000)
    assert b.observe(50, 50, 4.9) is None  # 5% of 100 s not reached yet
    assert b.observe(60, 60, 5.0) == 1000  # 0.083 s a step: 1,140 would fit, `steps` caps it
    slow = StepBudget(seconds=10, max_steps=1000)
    assert slow.observe(10, 10, 30.0) == 10  # already over: stop at the steps done
    short = StepBudget(seconds=100, max_steps=20)
    assert short.observe(20, 20, 1.0) == 20  # the last step sizes even before the share is reached


def test_a_resumed_budget_counts_the_seconds_before_the_checkpoint():
    # 40 s spent before the resume, 10 steps in 2 s since: 0.2 s a step, 18 s left -> 90 more
    b = StepBudget(seconds=60, max_steps=10_000, spent_s=40.0)
    assert b.observe(110, 10, 2.0) == 200
    t = itertools.count(start=5.0, step=2.5)
    b = StepBudget(seconds=60, max_steps=100, spent_s=1.5, clock=lambda: next(t))
    assert b.state() == {"stage_seconds": 1.5, "stage_steps": None, "stage_sizings": 0}
    b.start()  # clock 5.0; the next reading 7.5
    assert b.state() == {"stage_seconds": 4.0, "stage_steps": None, "stage_sizings": 0}
    kept = StepBudget(seconds=60, max_steps=500, spent_s=50.0, sized_steps=321, sizings=4)
    assert kept.final and kept.observe(400, 20, 9.0) == 321  # resumed after the last sizing: kept
    later = StepBudget(seconds=60, max_steps=500, spent_s=20.0, sized_steps=321, sizings=2)
    assert later.observe(300, 20, 10.0) == 300 + 60 and later.sizings == 3  # 50% passed: its own pace


def test_for_stage_reads_minutes_and_a_checkpoints_progress():
    assert StepBudget.for_stage(Stage("autoencoder", 0, 500, 1e-3)) is None
    stage = Stage("autoencoder", 0, 500, 1e-3, minutes=2.5)
    b = StepBudget.for_stage(stage)
    assert (b.seconds, b.max_steps, b.spent_s, b.sized_steps) == (150.0, 500, 0.0, None)
    b = StepBudget.for_stage(
        stage,
        {"stage": "autoencoder-0", "step": 40, "stage_seconds": 12.5, "stage_steps": 90, "stage_sizings": 2},
    )
    assert (b.spent_s, b.sized_steps, b.sizings) == (12.5, 90, 2)
    older = StepBudget.for_stage(
        stage, {"stage_seconds": 12.5, "stage_steps": 90}
    )  # before sizings were kept
    assert older.sizings == 1
    with pytest.raises(RuntimeError, match="before start"):
        b.elapsed()


@pytest.mark.parametrize("minutes", [0, -1.0, True, "20", float("inf"), float("nan")])
def test_stage_minutes_are_validated(minutes):
    with pytest.raises(ValueError, match="minutes="):
        Stage("autoencoder", 0, 100, 1e-3, minutes=minutes)
    with pytest.raises(ValueError, match=r"stages\[0\]\.minutes=.* null or a number of minutes > 0"):
        check_run_config(run_config({"kind": "autoencoder", "level": 0, "steps": 100, "minutes": minutes}))


def test_stage_minutes_in_a_run_config_and_its_description():
    cfg = run_config({"kind": "autoencoder", "level": 0, "steps": 9000, "minutes": 19})
    assert check_run_config(cfg) is cfg
    stage = Stage(**cfg["training"]["stages"][0])
    assert stage.describe() == "autoencoder-0 (9000 steps sized to 19 min)"
    with pytest.raises(ValueError, match="seconds > 0"):
        StepBudget(seconds=0, max_steps=10)


def test_train_stage_runs_the_sized_steps_with_the_schedule_ending_there():
    """One second a step on the fake clock, a 0.5-minute budget with at most 1,000 steps: sized after
    10 steps (10 s >= 5% and 25% of 30 s) to 10 + floor(20 / 1) = 30 steps, and at 50% and 75% to 30
    again (the pace holds); the lr of the last step is the schedule's last for 30 steps, and the
    stage's `steps` says 30 afterwards."""
    from conftest import tiny_config

    from hier_ae import HierAEModel

    torch.manual_seed(0)
    model = HierAEModel(tiny_config(1))
    stage = Stage("autoencoder", 0, 1000, 3e-3, warmup_steps=2, minutes=0.5)
    ticks = itertools.count()
    budget = StepBudget.for_stage(stage, clock=lambda: float(next(ticks)))
    row = pad_rows([frame_document(b"a dog runs."), frame_document(b"the cat sat.")])
    seen = []

    def on_step(done, info):
        seen.append((done, info["lr"], stage.steps))

    history = train_stage(model, stage, itertools.repeat(row), step_budget=budget, on_step=on_step)
    assert len(history) == 30 and stage.steps == 30 and budget.sized_steps == 30 and budget.final
    assert [s for _, _, s in seen[:9]] == [1000] * 9 and all(s == 30 for _, _, s in seen[9:])
    assert seen[-1][0] == 30 and seen[-1][1] == pytest.approx(lr_at(29, stage))
    assert seen[-1][1] == pytest.approx(0.1 * 3e-3, rel=0.05)  # the cosine's end: 10% of the peak

    # a stage resumed after the sizing keeps the count and goes on from its step
    again = Stage("autoencoder", 0, 1000, 3e-3, warmup_steps=2, minutes=0.5)
    kept = StepBudget.for_stage(again, {"stage_seconds": 25.0, "stage_steps": 30, "stage_sizings": 4})
    history = train_stage(model, again, itertools.repeat(row), step_budget=kept, start_step=25)
    assert len(history) == 5 and again.steps == 30
