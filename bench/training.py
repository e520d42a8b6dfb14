"""Training under one wall-clock budget per model: hier_ae's staged curriculum and the peers.

Every model reads the same batches (a seeded `DocumentCropper` over the same training text, the
same seq_len and batch size) and trains with AdamW (betas 0.9 / 0.95, grad clip 1.0), a linear
warm-up and a cosine decay to 10% of the peak. The number of steps is not fixed in advance: after
every step `Budget` re-plans it from the mean step time so far, so the cosine schedule ends where
the wall-clock budget does, on any machine.

hier_ae: a short calibration first times a few optimizer steps of every stage on a deep copy of
the model (`calibrate_stages`: a warm-up step left out, then the median of the timed steps, so that
a moment of contention cannot skew it; its time counts inside the budget); the rest of the budget is
then split so that every stage gets the same fraction of its configured steps: stage i gets time
proportional to configured steps_i x measured seconds/step_i (`allocate`), re-split after every
stage so that a stage that runs long takes from the later ones, never the reverse. A stage's cost
depends on how the entropy models below it segment, and an untrained entropy model cuts ~1-token
segments (the levels above then read ~4x the tokens they will: timed that way, the later stages'
costs came out 2-3x too high and they ran 2-4x the share of steps the first stage ran). So the
calibration copy segments every level at its target rate (`target_rate_rule`), and every stage
after the first re-calibrates itself and the later stages at its start, on a copy of the model
trained so far (the machine's pace now; time is set aside for the re-calibrations). No stage is
starved: each runs at least its floor (`stage_floors`: a quarter of the steps its share plans, at
most its configured steps), even when it runs slower than its calibration said, unless that would
leave the later stages less than their own floors (a stage stops there; the floors are sized to fit
the budget, so the run still ends on time).
BLT: its entropy model (the patcher, frozen inside `BltModel`) trains first, for the share of the
budget that hier_ae's level-0 entropy stage gets; then its patching threshold is calibrated on
training batches to a mean patch length, and the rest of the model trains for the remainder.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from hier_ae import HierAEConfig, HierAEModel
from hier_ae.training.stages import Stage, train_stage

UNPLANNED = 10**9  # steps before the first re-plan


class Budget:
    """A wall-clock budget that plans how many optimizer steps fit in it."""

    def __init__(self, seconds: float):
        self.seconds = max(float(seconds), 0.0)
        self.t0 = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def over(self) -> bool:
        return self.elapsed >= self.seconds

    def planned(self, done: int) -> int:
        """Steps done so far plus the steps the time left holds at the mean step time so far."""
        if done == 0:
            return UNPLANNED
        left = max(self.seconds - self.elapsed, 0.0)
        return done + int(left / (self.elapsed / done))


def cosine_lr(step: int, planned: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak at step `planned` (as hier_ae's `lr_at`)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min((step - warmup) / max(planned - warmup, 1), 1.0)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def allocate(seconds: float, steps: list[int], costs: list[float]) -> tuple[list[float], list[float]]:
    """Split `seconds` over stages so that every stage runs the same fraction of its configured steps.

    Stage i gets seconds x steps_i cost_i / sum_j steps_j cost_j (cost: measured seconds per optimizer
    step), so it runs seconds_i / cost_i = steps_i x seconds / sum_j steps_j cost_j steps: the same
    fraction of its configured steps for every stage. Returns (seconds per stage, expected steps).

        steps (200, 100), costs (0.1, 1.0) s, 60 s: sum = 120 s per configured pass, fraction 0.5
        -> seconds (10, 50), expected steps (100, 50)
    """
    if len(steps) != len(costs):
        raise ValueError(f"{len(steps)} stages but {len(costs)} costs.")
    if any(c <= 0 for c in costs):
        raise ValueError(f"costs={costs} must all be > 0 seconds per step.")
    per_pass = sum(n * c for n, c in zip(steps, costs))  # seconds for every configured step
    fraction = max(seconds, 0.0) / per_pass if per_pass else 0.0
    return [n * c * fraction for n, c in zip(steps, costs)], [n * fraction for n in steps]


MIN_SHARE = 0.25  # every stage runs at least this fraction of the steps its share of the budget plans


def stage_floors(
    seconds: float, steps: list[int], costs: list[float], min_share: float = MIN_SHARE, min_steps: int = 0
) -> list[int]:
    """The fewest optimizer steps each stage runs, whatever its measured pace: at most its configured
    steps, at least `min_share` of the steps `allocate` plans for it, and at least `min_steps`.

    Their calibrated time never exceeds `seconds`: floors that would (a `min_steps` too large for a
    short budget) are scaled down in proportion, rounding down.

        steps (600, 1200), costs (0.05, 0.2) s, 100 s: allocate plans 0.37 of each -> (222, 444) steps;
        floors (56, 112); with min_steps=1000 -> (600, 1000) = 230 s, scaled by 100/230 -> (260, 434)
    """
    if not 0.0 <= min_share <= 1.0 or min_steps < 0:
        raise ValueError(f"min_share={min_share} must be in [0, 1] and min_steps={min_steps} >= 0.")
    _, expected = allocate(seconds, steps, costs)
    floors = [min(n, max(math.ceil(min_share * e - 1e-9), min_steps)) for n, e in zip(steps, expected)]
    need = sum(f * c for f, c in zip(floors, costs))
    if need > max(seconds, 0.0):
        scale = max(seconds, 0.0) / need
        floors = [int(f * scale) for f in floors]
    return floors


def recalibration_reserve(seconds: float, timed: int, stages_left: int) -> float:
    """The time to set aside for the re-calibrations still to come, estimated from the last one: it
    timed `timed` stages in `seconds`; each later stage re-times itself and the stages after it, and
    a calibration's time is taken to grow with the number of stages it times.

        the first calibration timed 4 stages in 8 s: re-calibrations of 3, 2, 1 stages follow
        -> 8 / 4 x (3 + 2 + 1) = 12 s; re-calibrating 2 stages took 3 s: one of 1 stage follows -> 1.5 s
    """
    if timed < 1 or stages_left < 1:
        return 0.0
    return seconds / timed * (stages_left - 1) * stages_left / 2


def split_budget(seconds_left: float, steps: list[int], costs: list[float] | None = None) -> float:
    """The share of `seconds_left` for the first of the remaining stages (`allocate`; equal costs if None)."""
    return allocate(seconds_left, steps, costs or [1.0] * len(steps))[0][0]


# ---- hier_ae -----------------------------------------------------------------------------------
def target_rate_rule(target: float, eos_id: int) -> Callable:
    """A boundary rule that ignores the entropies and closes a segment every `target` tokens on
    average (and at EOS): the segment count a trained level reaches (its adaptive threshold steers
    to `target_tokens_per_segment`), for timing a stage before that level's entropy model is trained.
    An untrained entropy model is uncertain everywhere, so its rule fires at every token and the
    levels above read ~`target`x the tokens they will. Position t fires when floor((t + 1) / target)
    > floor(t / target):

        target 2.5, t = 0..9: fires 0 0 1 0 1 0 0 1 0 1 -> segments of 3, 2, 3, 2 tokens
    """

    def rule(entropy, tokens, prev_entropy=None, valid=None):
        t = torch.arange(tokens.shape[1], device=tokens.device)  # (T,)
        fires = torch.floor((t + 1) / target) > torch.floor(t / target)  # (T,)
        return fires[None, :].expand_as(tokens) | (tokens == eos_id)  # (B, T)

    return rule


def calibrate_stages(
    model: HierAEModel,
    stages: list[Stage],
    batches: Iterator,
    warmup: int = 1,
    timed: int = 5,
    at_target_rate: bool = True,
) -> list[float]:
    """Seconds per optimizer step of every stage: `warmup` + `timed` steps of each, in order, on a
    deep copy of `model` (the later stages see the copy's few earlier steps, as the real run does).

    `model`'s state and the global torch RNG are left exactly as they were. Each stage's cost is the
    median duration of its last `timed` steps: the `warmup` steps (the first builds the optimizer
    and warms the kernels) are left out, and a few steps slowed by another process do not move a
    median (a mean of 3 steps, one of them 10x slow, was 4x too high). `at_target_rate`: on the copy,
    every level with a `target_tokens_per_segment` segments at that rate (`target_rate_rule`), so
    the stages above an untrained level are timed at the segment count they will run at (timed on
    the untrained copy's ~1-token segments, they came out 2-3x too slow).
    """
    if warmup < 0 or timed < 1:
        raise ValueError(f"warmup={warmup} must be >= 0 and timed={timed} >= 1.")
    rng = torch.random.get_rng_state()
    scratch = copy.deepcopy(model)
    if at_target_rate:
        for level in scratch.levels:
            if level.cfg.target_tokens_per_segment is not None:
                level.rule = target_rate_rule(level.cfg.target_tokens_per_segment, level.vocab.eos_id)
    costs = []
    for spec in stages:
        if spec.steps == 0:
            costs.append(1.0)  # never runs: any positive cost gives it no time
            continue
        stage = copy.copy(spec)
        stage.steps = warmup + timed
        stamps: list[float] = []

        def on_prepared(net, opt, stamps=stamps):
            stamps.append(time.perf_counter())  # the start of the first step

        def on_step(done, info, stamps=stamps):
            stamps.append(time.perf_counter())
            return False

        train_stage(scratch, stage, batches, on_prepared=on_prepared, on_step=on_step)
        if len(stamps) < 1 + warmup + timed:
            raise RuntimeError(
                f"calibration of stage {stage.name}: {len(stamps) - 1} steps ran, not {stage.steps}"
            )
        durations = [b - a for a, b in zip(stamps[:-1], stamps[1:])][warmup:]  # the timed steps
        costs.append(max(statistics.median(durations), 1e-9))
    del scratch
    torch.random.set_rng_state(rng)
    return costs


def train_hier_ae(
    model_cfg: dict,
    stage_specs: list[dict],
    batches: Iterator,
    budget_s: float,
    log: Callable = print,
    calib_batches: Iterator | None = None,
    min_share: float = MIN_SHARE,
    min_steps: int = 0,
    recalibrate: bool = True,
) -> tuple[HierAEModel, dict]:
    """Run every stage of the curriculum within `budget_s` seconds in all; return the model and a report.

    `calib_batches`: the batches of the calibration (default: `batches`; bench/run.py passes its own
    stream so that the training batches stay the ones the peers read). `min_share`, `min_steps`: the
    floors of `stage_floors`. A stage runs until its share of the time left is spent (`split_budget`),
    but at least its floor, unless going on would leave the later stages less calibrated time than
    their floors need (its deadline). `recalibrate`: every stage after the first re-times itself and
    the later stages on a copy of the model trained so far, and the time left, the shares and the
    floors are planned anew from those costs (False: the first calibration's costs throughout).
    """
    torch.manual_seed(0)
    model = HierAEModel(HierAEConfig(**model_cfg))
    stages = [Stage(**spec) for spec in stage_specs]
    configured = [s.steps for s in stages]
    calib = batches if calib_batches is None else calib_batches
    t_start = time.perf_counter()
    costs = calibrate_stages(model, stages, calib)
    calib_s = time.perf_counter() - t_start
    reserve = recalibration_reserve(calib_s, len(stages), len(stages)) if recalibrate else 0.0
    planned_s, expected = allocate(budget_s - calib_s - reserve, configured, costs)
    floors = stage_floors(budget_s - calib_s - reserve, configured, costs, min_share, min_steps)
    log(
        f"  [hier_ae calibration] {calib_s:.1f}s; s/step "
        + ", ".join(f"{s.name} {c:.3f}" for s, c in zip(stages, costs))
        + f"; every stage gets {expected[0] / max(configured[0], 1):.0%} of its configured steps"
        + f" (floors {', '.join(str(f) for f in floors)})"
    )
    report = {
        "stages": [],
        "tokens": 0,
        "calibration_seconds": calib_s,
        "allocation": "time_i proportional to configured steps_i x calibrated seconds/step_i",
        "floors": f"at least {min_share:.0%} of the planned steps (at most the configured), >= {min_steps}",
        "recalibrate": recalibrate,
    }
    for i, stage in enumerate(stages):
        if recalibrate and i > 0:
            t_cal = time.perf_counter()
            costs[i:] = calibrate_stages(model, [Stage(**spec) for spec in stage_specs[i:]], calib)
            took = time.perf_counter() - t_cal
            report["calibration_seconds"] += took
            reserve = recalibration_reserve(took, len(stages) - i, len(stages) - i)
        # the time left for training: the re-calibrations still to come are set aside
        left = budget_s - (time.perf_counter() - t_start) - reserve
        if recalibrate and i > 0:
            planned_s[i:], expected[i:] = allocate(left, configured[i:], costs[i:])
            floors[i:] = stage_floors(left, configured[i:], costs[i:], min_share, min_steps)
            log(
                f"  [hier_ae re-calibration] {took:.1f}s; s/step "
                + ", ".join(f"{s.name} {c:.3f}" for s, c in zip(stages[i:], costs[i:]))
                + f"; the stages left get {expected[i] / max(configured[i], 1):.0%} of their configured steps"
            )
        budget = Budget(split_budget(left, configured[i:], costs[i:]))
        # past its deadline a stage stops even below its floor: the later floors must still fit
        deadline = left - sum(f * c for f, c in zip(floors[i + 1 :], costs[i + 1 :]))
        floor = floors[i]
        stage.steps = UNPLANNED
        seen = {"tokens": 0, "loss": float("nan")}

        def on_step(done, info, stage=stage, budget=budget, seen=seen, floor=floor, deadline=deadline):
            seen["tokens"] += info["tokens"]
            seen["loss"] = info["loss"]
            if done < floor and budget.elapsed < deadline:
                stage.steps = max(budget.planned(done), floor)  # the lr schedule ends at the floor
                return False
            stage.steps = max(budget.planned(done), done)  # the lr schedule follows the plan
            return budget.over() or done >= stage.steps

        history = train_stage(
            model, stage, batches, time_budget_s=max(deadline, budget.seconds), on_step=on_step
        )
        row = {
            "stage": stage.name,
            "configured_steps": configured[i],
            "calibrated_s_per_step": round(costs[i], 4),
            "planned_seconds": round(planned_s[i], 2),
            "expected_steps": round(expected[i], 1),
            "floor_steps": floor,
            "steps": len(history),
            "budget_s": round(budget.seconds, 2),
            "seconds": round(budget.elapsed, 2),
            "s_per_step": round(budget.elapsed / max(len(history), 1), 4),
            "final_loss": seen["loss"],
        }
        report["stages"].append(row)
        report["tokens"] += seen["tokens"]
        log(
            f"  [hier_ae {stage.name}] {row['steps']} steps of {configured[i]} configured "
            f"({row['steps'] / max(configured[i], 1):.0%}) in {row['seconds']:.1f}s "
            f"({row['s_per_step']:.3f} s/step, calibrated {costs[i]:.3f}), loss {seen['loss']:.3f}"
        )
    report["seconds"] = time.perf_counter() - t_start
    model.eval()
    return model, report


# ---- peers -------------------------------------------------------------------------------------
def train_loop(
    params: list[torch.nn.Parameter],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batches: Iterator,
    budget_s: float,
    lr: float,
    warmup: int = 10,
) -> dict:
    """AdamW on `loss_fn(ids, mask)` until the budget ends; returns steps, tokens, seconds, last loss."""
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    budget = Budget(budget_s)
    step, planned, tokens, loss = 0, UNPLANNED, 0, float("nan")
    while True:
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, planned, lr, warmup)
        ids, mask = next(batches)
        tokens += int(mask.sum())
        out = loss_fn(ids, mask)
        if not torch.isfinite(out):
            raise FloatingPointError(f"step {step}: non-finite loss {out.item()}")
        out.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = out.item()
        step += 1
        planned = max(budget.planned(step), step)
        if budget.over() or step >= planned:
            break
    return {"steps": step, "tokens": tokens, "seconds": budget.elapsed, "final_loss": loss}


def causal_lm_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Next-byte CE: logits (B, T, V) at t predict ids[t + 1]; padded targets are ignored."""
    targets = ids[:, 1:].masked_fill(~mask[:, 1:].bool(), -100)  # (B, T-1)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100)


def train_llama(model, batches: Iterator, budget_s: float, lr: float, log: Callable = print) -> dict:
    model.train()

    def loss_fn(ids, mask):
        return causal_lm_loss(model(input_ids=ids, attention_mask=mask).logits, ids, mask)

    report = train_loop([p for p in model.parameters()], loss_fn, batches, budget_s, lr)
    log(f"  [llama] {report['steps']} steps in {report['seconds']:.1f}s, loss {report['final_loss']:.3f}")
    model.eval()
    return report


def entropies(patcher, ids: torch.Tensor) -> torch.Tensor:
    """The patcher's entropy (nats) of its prediction of ids[t + 1], per position (B, T)."""
    ent, _, _ = patcher(ids)
    return ent


@torch.no_grad()
def calibrate_threshold(patcher, batches: list, mean_patch: float) -> tuple[float, float]:
    """The global entropy threshold at which a 1 / mean_patch fraction of positions opens a patch.

    BLT opens a patch at t + 1 when H[t] > threshold (H of the first position ignored), so the
    quantile 1 - 1 / mean_patch of the entropies gives that mean. Returns (threshold, achieved mean).
    """
    ent = torch.cat([entropies(patcher, ids)[:, 1:].flatten() for ids, _ in batches])
    threshold = float(torch.quantile(ent, 1.0 - 1.0 / mean_patch))
    frac = float((ent > threshold).float().mean())
    return threshold, 1.0 / max(frac, 1e-9)


def train_blt(
    model,
    batches: Iterator,
    budget_s: float,
    lr: float,
    patcher_share: float,
    mean_patch: float,
    log: Callable = print,
) -> dict:
    """Entropy model first (its share of the budget), threshold calibration, then the rest."""
    t0 = time.perf_counter()
    patcher = model.model.patcher

    def full(ids, mask):
        if not bool(mask.all()):
            raise ValueError("BLT rows must be unpadded (crops of long documents are)")

    # 1. the entropy model, a small byte LM (frozen inside BltModel: unfreeze it for this phase)
    patcher.requires_grad_(True)
    patcher.train()

    def patcher_loss(ids, mask):
        full(ids, mask)
        return causal_lm_loss(patcher(ids)[2], ids, mask)

    phase1 = train_loop(list(patcher.parameters()), patcher_loss, batches, budget_s * patcher_share, lr)
    patcher.requires_grad_(False)
    patcher.eval()
    log(
        f"  [blt patcher] {phase1['steps']} steps in {phase1['seconds']:.1f}s, "
        f"loss {phase1['final_loss']:.3f}"
    )

    # 2. the patching threshold, on training batches
    calib = [next(batches) for _ in range(8)]
    threshold, achieved = calibrate_threshold(patcher, calib, mean_patch)
    model.config.patching_threshold = threshold
    log(f"  [blt] patching threshold {threshold:.3f} nats -> mean patch {achieved:.2f} bytes (calibration)")

    # 3. everything else, for the time left
    model.train()
    patcher.eval()
    rest = [p for n, p in model.named_parameters() if not n.startswith("model.patcher.")]

    def blt_loss(ids, mask):
        full(ids, mask)
        return causal_lm_loss(model(input_ids=ids, use_cache=False).logits, ids, mask)

    left = budget_s - (time.perf_counter() - t0)
    phase2 = train_loop(rest, blt_loss, batches, left, lr)
    log(f"  [blt] {phase2['steps']} steps in {phase2['seconds']:.1f}s, loss {phase2['final_loss']:.3f}")
    model.eval()
    return {
        "steps": phase1["steps"] + phase2["steps"],
        "tokens": phase1["tokens"] + phase2["tokens"] + sum(int(m.sum()) for _, m in calib),
        "seconds": time.perf_counter() - t0,
        "final_loss": phase2["final_loss"],
        "patcher": phase1,
        "patching_threshold_nats": threshold,
        "calibrated_mean_patch": achieved,
    }
