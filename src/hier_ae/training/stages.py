"""The staged curriculum of DESIGN §8, as a plain-PyTorch stage runner.

Untrained entropy models give meaningless boundaries, and a level trained on codes that later get
renumbered learns nothing, so training goes bottom up, one stage at a time:

    entropy-0 -> autoencoder-0 -> (freeze entropy model 0 and codebook 0) -> entropy-1 -> ... -> top_lm
        -> predict -> (optional) joint

`predict` trains the causal LM (top LM, decoders in both modes, context maps) with every encoder
fixed; the optional `joint` stage also trains the encoders and poolings, with every entropy model and
codebook still frozen (segments never move, codes only through the encoders).

`prepare_stage` is the single place that decides, for a stage, which parameters train, which
levels are frozen, which parts of the forward run and which loss terms form the objective. Every
stage is run by `train_stage`, which tests call directly and `examples/train.py` wraps with
Accelerate (pass `accelerator=`). Not part of the model's remote-code closure.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from .nonfinite import BufferSnapshot, check_policy, nonfinite_terms
from .step_budget import StepBudget

logger = logging.getLogger(__name__)

STAGE_KINDS = ("entropy", "autoencoder", "top_lm", "predict", "joint")
LEVELLESS_KINDS = ("top_lm", "predict", "joint")
# the loss terms a stage's `loss_weights` may override (the config's `<term>_loss_weight` otherwise)
LOSS_TERMS = ("entropy", "reconstruct", "commitment", "top_lm", "predict")
# what a stage's rows hold: the data section's token stream, or the top codes of the training
# documents, encoded once when the stage starts (top_lm only; see `batch_streams.py`)
STAGE_ROWS = ("data", "codes")


@dataclass
class Stage:
    """One stage: `kind` in STAGE_KINDS, the `level` it trains (None for top_lm/predict/joint), steps, lr.

    `loss_weights` overrides the model config's loss weights for this stage only, e.g.
    `{"reconstruct": 0.0}` on a predict stage trains the causal-LM objective alone (and skips the
    reconstruct-mode pass it would otherwise run); keys are `LOSS_TERMS`, values numbers >= 0.

    `seq_len` / `batch_size` give this stage rows of its own length and number (None: the data
    section's), and `rows="codes"` (top_lm only) trains on the training documents' top codes,
    encoded once by the frozen levels when the stage starts, instead of on byte rows: a top LM then
    reads rows as long as the codec's chunks at the cost of one encoding pass (`batch_streams.py`).
    Their `seq_len` counts codes (with bos / eos), not bytes.

    `p_line` is the stage's share of rows that are one line framed as a document (None: the data
    section's `p_line`); with `rows="codes"` those lines are encoded too, as documents of their own.
    `encode_bytes` (`rows="codes"` only) caps what that encoding pass reads: a seeded sample of the
    training documents, cut at this many bytes (None: every document), plus lines of them worth
    `p_line` of it. E.g. 3 MB of documents, `encode_bytes=1_000_000`, `p_line=0.25`: documents in a
    seeded order until 1 MB is reached (the last one cut), then 250 KB of their lines.

    `minutes` sizes the stage to that much training time on the machine that runs it: `steps` is then
    the most it runs, and the step count is set early in the stage from its measured seconds per step
    and set again at a quarter, half and three quarters of the minutes (`step_budget.py`); `steps`
    holds the sized count from the first sizing on.
    """

    kind: str
    level: int | None = None
    steps: int = 100
    lr: float = 3e-3
    warmup_steps: int = 10
    weight_decay: float = 0.0
    loss_weights: dict[str, float] | None = None
    seq_len: int | None = None
    batch_size: int | None = None
    rows: str = "data"
    p_line: float | None = None
    encode_bytes: int | None = None
    minutes: float | None = None

    def __post_init__(self):
        if self.kind not in STAGE_KINDS:
            raise ValueError(f"stage kind={self.kind!r} is invalid: one of {STAGE_KINDS}.")
        if (self.kind in LEVELLESS_KINDS) != (self.level is None):
            raise ValueError(
                f"stage {self.kind!r}: level={self.level!r} must be None for {'/'.join(LEVELLESS_KINDS)} "
                "and an int for entropy/autoencoder."
            )
        if self.steps < 0 or self.lr <= 0:
            raise ValueError(f"stage {self.name}: steps={self.steps} must be >= 0 and lr={self.lr} > 0.")
        check_loss_weights(self.loss_weights, f"stage {self.name}: loss_weights")
        for key, low in (("seq_len", 2), ("batch_size", 1)):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise ValueError(
                    f"stage {self.name}: {key}={v!r} is invalid: must be null (the data section's) "
                    f"or an integer >= {low}."
                )
        p, cap = self.p_line, self.encode_bytes
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1):
            raise ValueError(
                f"stage {self.name}: p_line={self.p_line!r} is invalid: must be null (the data "
                "section's) or a number in [0, 1]."
            )
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ValueError(
                f"stage {self.name}: encode_bytes={self.encode_bytes!r} is invalid: must be null (every "
                "training document) or an integer >= 1."
            )
        if self.encode_bytes is not None and self.rows != "codes":
            raise ValueError(
                f"stage {self.name}: encode_bytes caps the encoding pass of rows='codes'; this stage "
                f"reads rows={self.rows!r}. Set rows: codes or leave encode_bytes out."
            )
        m = self.minutes
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m < math.inf):
            raise ValueError(
                f"stage {self.name}: minutes={m!r} is invalid: must be null (run `steps` steps) or a "
                "number of minutes > 0 (then `steps` is the most the stage runs)."
            )
        if self.rows not in STAGE_ROWS:
            raise ValueError(f"stage {self.name}: rows={self.rows!r} is invalid: one of {STAGE_ROWS}.")
        if self.rows == "codes" and self.kind != "top_lm":
            raise ValueError(
                f"stage {self.name}: rows='codes' is for top_lm stages only (the other stages read "
                "the levels' tokens)."
            )

    @property
    def own_rows(self) -> bool:
        """True when this stage reads rows of its own rather than the data section's shared stream."""
        return (
            self.seq_len is not None
            or self.batch_size is not None
            or self.rows != "data"
            or self.p_line is not None
        )

    def describe(self) -> str:
        """`name (N steps)`, plus its own rows: 'top_lm (3000 steps, codes, rows of 512, 8 a batch)',
        'top_lm (3000 steps, codes of 1,000,000 bytes, 25% lines, rows of 512)', and a time budget:
        'autoencoder-0 (10512 steps sized to 19 min)'."""
        parts = [f"{self.steps} steps"]
        if self.minutes is not None:
            parts[0] += f" sized to {self.minutes:g} min"
        if self.rows == "codes":
            cap = "" if self.encode_bytes is None else f" of {self.encode_bytes:,} bytes"
            parts.append("codes" + cap)
        if self.p_line is not None:
            parts.append(f"{self.p_line:.0%} lines")
        parts += [f"rows of {self.seq_len}"] * (self.seq_len is not None)
        parts += [f"{self.batch_size} a batch"] * (self.batch_size is not None)
        return f"{self.name} ({', '.join(parts)})"

    @property
    def name(self) -> str:
        return self.kind if self.level is None else f"{self.kind}-{self.level}"


def check_loss_weights(weights, where: str) -> None:
    """Raise `ValueError` unless `weights` is None or a mapping of `LOSS_TERMS` to finite numbers >= 0."""
    if weights is None:
        return
    if not isinstance(weights, dict):
        raise ValueError(
            f"{where}={weights!r} is invalid: must be a mapping of {list(LOSS_TERMS)} to numbers."
        )
    for term, w in weights.items():
        if term not in LOSS_TERMS:
            raise ValueError(f"{where} has an unknown term {term!r}; allowed: {list(LOSS_TERMS)}.")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"{where}[{term!r}]={w!r} is invalid: must be a finite number >= 0.")


def default_stages(
    num_levels: int,
    entropy_steps: int,
    autoencoder_steps: int,
    top_lm_steps: int,
    lr: float = 3e-3,
    predict_steps: int = 0,
    joint_steps: int = 0,
):
    """entropy-l, autoencoder-l for every level bottom up, then top_lm, then predict, then joint."""
    stages = []
    for level in range(num_levels):
        stages.append(Stage("entropy", level, entropy_steps, lr))
        stages.append(Stage("autoencoder", level, autoencoder_steps, lr))
    stages.append(Stage("top_lm", None, top_lm_steps, lr))
    if predict_steps:
        stages.append(Stage("predict", None, predict_steps, lr))
    if joint_steps:
        stages.append(Stage("joint", None, joint_steps, lr))
    return stages


@dataclass
class StagePlan:
    params: list[torch.nn.Parameter]
    forward_kwargs: dict
    objective: Callable
    metric_names: list[str] = field(default_factory=list)


def prepare_stage(model, stage: Stage, start_level: int = 0) -> StagePlan:
    """Freeze and unfreeze for `stage`; return what to optimise, how to call forward, what to minimise.

    `start_level > 0`: the batches are stored codes framed as the token stream of that level (code
    shards, `HierAEModel.forward(start_level=...)`), so only stages at or above it can run: `top_lm`,
    or `entropy` / `autoencoder` of a level >= start_level.
    """
    n_levels = model.num_levels
    if stage.level is not None and not 0 <= stage.level < n_levels:
        raise ValueError(
            f"stage {stage.name}: level={stage.level} is invalid: must be in [0, {n_levels}) for this model."
        )
    if not 0 <= start_level <= n_levels:
        raise ValueError(f"start_level={start_level} is invalid: must be in [0, {n_levels}].")
    if start_level and (
        stage.kind in ("predict", "joint") or (stage.level is not None and stage.level < start_level)
    ):
        raise ValueError(
            f"stage {stage.name} cannot train on stored codes of level {start_level - 1}: it needs the "
            f"tokens of a lower level. Allowed on these codes: top_lm, and entropy / autoencoder of "
            f"levels {start_level}..{n_levels - 1}."
        )
    model.requires_grad_(False)
    # the config's loss weights (1.0 each by default), then the stage's overrides: the one place set
    c = model.config
    w = {term: getattr(c, f"{term}_loss_weight") for term in LOSS_TERMS} | (stage.loss_weights or {})
    w_ent, w_rec, w_com, w_top, w_pred = (w[t] for t in LOSS_TERMS)
    top = stage.level if stage.level is not None else n_levels
    for i, level in enumerate(model.levels):
        # levels below the trained one are fixed: their segments and codes must not move
        # (top_lm / predict / joint: top = n_levels, so every entropy model and codebook is frozen)
        level.entropy_frozen = i < top or (i == top and stage.kind == "autoencoder")
        level.codebook_frozen = i < top or (i == top and stage.kind == "entropy") or i > top
    if stage.kind == "entropy":
        module = model.levels[stage.level].entropy_model
        module.requires_grad_(True)
        kwargs = {"num_levels": stage.level + 1, "reconstruct_levels": (), "run_top_lm": False}

        def objective(out):
            return w_ent * out.entropy_loss[stage.level]

        names = ["entropy CE"]
    elif stage.kind == "autoencoder":
        lv = model.levels[stage.level]
        # the quantiser's parameters: FSQ's projections (a VQ codebook is a buffer moved by EMA)
        for module in (lv.encoder, lv.pooling, lv.code_predictor, lv.quantizer, lv.decoder):
            if module is not None:  # code_predictor: only with `predictive_codes`
                module.requires_grad_(True)
        kwargs = {"num_levels": stage.level + 1, "reconstruct_levels": (stage.level,), "run_top_lm": False}

        def objective(out):
            return w_rec * out.reconstruct_loss[stage.level] + w_com * out.commitment_loss[stage.level]

        names = ["recon CE", "commitment"]
    elif stage.kind == "top_lm":
        model.top_lm.requires_grad_(True)
        kwargs = {"reconstruct_levels": (), "run_top_lm": True}

        def objective(out):
            return w_top * out.top_lm_loss

        names = ["top-LM CE"]
    elif stage.kind == "predict":
        # predict mode (DESIGN §4): the top LM, every decoder and the context maps train on the
        # causal LM objective; the decoders keep their reconstruct mode (same weights) too
        model.top_lm.requires_grad_(True)
        for lv in model.levels:
            lv.decoder.requires_grad_(True)
            lv.context_proj.requires_grad_(True)
        # a zero reconstruct weight skips the reconstruct-mode pass altogether (its terms are None)
        kwargs = {"mode": "predict", "reconstruct_levels": () if w_rec == 0 else None}

        def objective(out):
            loss = w_pred * out.predict_loss.sum() + w_top * out.top_lm_loss
            return loss if w_rec == 0 else loss + w_rec * out.reconstruct_loss.sum()

        names = ["predict CE"] + ([] if w_rec == 0 else ["recon CE"]) + ["top-LM CE"]
    else:
        # joint (DESIGN §8, optional): everything but the entropy models and codebooks, on both
        # modes at once; the encoders now move too, held to their (frozen) codebooks by commitment.
        # Entropy models and codebooks stay frozen so segments and code ids keep their meaning.
        model.top_lm.requires_grad_(True)
        for lv in model.levels:
            for module in (lv.encoder, lv.pooling, lv.code_predictor, lv.decoder, lv.context_proj):
                if module is not None:
                    module.requires_grad_(True)
        kwargs = {"mode": "predict"}

        def objective(out):
            return (
                w_pred * out.predict_loss.sum()
                + w_rec * out.reconstruct_loss.sum()
                + w_com * out.commitment_loss.sum()
                + w_top * out.top_lm_loss
            )

        names = ["predict CE", "recon CE", "commitment", "top-LM CE"]

    if start_level:
        kwargs["start_level"] = start_level
    params = [p for p in model.parameters() if p.requires_grad]
    return StagePlan(params=params, forward_kwargs=kwargs, objective=objective, metric_names=names)


def stage_metrics(out, stage: Stage) -> dict[str, float]:
    """Loggable numbers; the reconstruct CE is an autoencoder figure, labelled as such (never 'bpb')."""
    m: dict[str, float] = {}
    lv = stage.level
    if stage.kind == "entropy":
        m["entropy bits/token"] = out.entropy_loss[lv].item() / math.log(2)
    elif stage.kind == "autoencoder":
        m["recon bits/token"] = out.reconstruct_loss[lv].item() / math.log(2)
        m["commitment"] = out.commitment_loss[lv].item()
        m["codebook ppl"] = out.usage_perplexity[lv].item()
        m["dead codes"] = out.dead_codes[lv].item()
    elif stage.kind == "top_lm":
        m["top-LM bits/code"] = out.top_lm_loss.item() / math.log(2)
    else:
        # predict mode reads completed segments only: a language-model figure, but per token of the
        # training batch (</s> included), not the held-out bits per byte of the reports
        m["predict bits/token"] = out.predict_loss[0].item() / math.log(2)
        if out.reconstruct_loss is not None:  # None when the stage's reconstruct weight is 0
            m["recon bits/token"] = out.reconstruct_loss[0].item() / math.log(2)
        m["top-LM bits/code"] = out.top_lm_loss.item() / math.log(2)
        if stage.kind == "joint":
            m["commitment"] = out.commitment_loss.sum().item()
    for i, t in enumerate(out.tokens_per_segment.tolist()):
        m[f"tokens/seg L{i}"] = t
    return m


def lr_at(step: int, stage: Stage) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < stage.warmup_steps:
        return stage.lr * (step + 1) / stage.warmup_steps
    progress = (step - stage.warmup_steps) / max(stage.steps - stage.warmup_steps, 1)
    return stage.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


@torch.no_grad()
def sync_running_buffers(model, accelerator) -> None:
    """Average the adaptive boundary thresholds over processes after an optimizer step.

    Each process steers its level's threshold from its own batches (`boundary_value`, a persistent
    buffer); with DDP's `broadcast_buffers=False` they would drift apart and segment differently.
    Averaging once per step keeps them bitwise equal (the running estimate over the global batch).
    """
    for name, buf in model.named_buffers():
        if name.endswith("boundary_value"):
            buf.copy_(accelerator.reduce(buf.clone(), reduction="mean"))


def _all_finite(loss: torch.Tensor, accelerator, distributed: bool) -> bool:
    """True when the objective is finite on every process (a collective decision under DDP)."""
    finite = torch.isfinite(loss).float()
    if distributed:
        finite = accelerator.reduce(finite, reduction="mean")
    return finite.item() == 1.0


def train_stage(
    model,
    stage: Stage,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    *,
    accelerator=None,
    grad_clip: float = 1.0,
    accumulation_steps: int = 1,
    log_every: int = 0,
    log: Callable[[int, dict], None] | None = None,
    time_budget_s: float | None = None,
    step_budget: StepBudget | None = None,
    start_step: int = 0,
    on_prepared: Callable | None = None,
    on_step: Callable[[int, dict], bool | None] | None = None,
    on_nonfinite: str = "raise",
    max_consecutive_skips: int = 10,
    start_level: int = 0,
) -> list[float]:
    """Train one stage with AdamW; return the objective per optimizer step run.

    With `accelerator` (an `accelerate.Accelerator`) the model and a fresh optimizer are prepared for
    this stage (`prepare_stage` changes `requires_grad`, so DDP must wrap anew), autocast follows its
    mixed-precision setting and gradients are all-reduced once per optimizer step. One optimizer
    step reads `accumulation_steps` micro-batches; the quantisers' EMA statistics of all of them
    (all processes) are applied once, after the optimizer step (DESIGN §3.5).

    Hooks for the training script: `on_prepared(net, optimizer)` runs after preparation (resume
    loads its state there) and the loop then starts at optimizer step `start_step`;
    `on_step(steps_done, info)` runs after every optimizer step with `info` = loss, the last
    micro-batch's output, tokens read (this process) and the lr; returning True stops the stage.
    `time_budget_s` stops the stage early (tests, benchmarks). `step_budget` (a `StepBudget`, for a
    stage with `minutes`) sets `stage.steps` to the steps that fit its time, early in the stage and
    again at its later checks; the lr schedule and `on_step` see each count from the step it is set.

    Non-finite steps (see `nonfinite.py`): a NaN/Inf objective or gradient norm is detected
    collectively (every process takes the same decision, so none hangs). `on_nonfinite="raise"`
    raises `FloatingPointError` naming the stage, the step and the loss terms that are not finite.
    `"skip"` drops that optimizer step: gradients are zeroed, the optimizer does not step, the
    quantisers' EMA statistics and pool rows and the adaptive thresholds of that step are put back
    (`BufferSnapshot`); the step still counts (the lr schedule and `on_step` go on, with
    `info["skipped"]` = the terms), it is left out of the returned history, and
    `max_consecutive_skips` dropped steps in a row raise `FloatingPointError`.
    `start_level > 0`: the batches are stored codes of level start_level - 1 (see `prepare_stage`).
    """
    import time
    from contextlib import nullcontext

    if accumulation_steps < 1:
        raise ValueError(f"accumulation_steps={accumulation_steps} must be >= 1.")
    check_policy(on_nonfinite, max_consecutive_skips)
    plan = prepare_stage(model, stage, start_level)
    model.train()
    if not plan.params or stage.steps == 0:
        return []
    opt = torch.optim.AdamW(plan.params, lr=stage.lr, weight_decay=stage.weight_decay, betas=(0.9, 0.95))
    net = model
    if accelerator is not None:
        accelerator.free_memory()  # forget the previous stage's model / optimizer
        net, opt = accelerator.prepare(model, opt)
    if on_prepared is not None:
        on_prepared(net, opt)
    net.train()
    device = next(model.parameters()).device
    distributed = accelerator is not None and accelerator.num_processes > 1
    history: list[float] = []
    skipped_in_a_row = 0

    def size_after(done: int) -> None:
        """A stage with `minutes`: set its step count whenever its budget sizes it (`StepBudget`)."""
        if step_budget is None or step_budget.final:
            return
        elapsed = step_budget.elapsed()
        if distributed:  # every process decides on the same clock, so all stop at the same step
            mean = accelerator.reduce(torch.tensor([elapsed], device=device), reduction="mean")
            elapsed = float(mean[0])
        sized = step_budget.observe(done, done - start_step, elapsed)
        if sized is not None and sized != stage.steps:
            stage.steps = sized
            logger.info("stage %s: sized to %d steps (%g min)", stage.name, sized, step_budget.seconds / 60)

    t0 = time.perf_counter()
    if step_budget is not None:
        if step_budget.sized:
            stage.steps = step_budget.sized_steps  # a resumed stage keeps the count it was sized to
        step_budget.start()
    step = start_step
    while step < stage.steps:
        lr = lr_at(step, stage)
        for group in opt.param_groups:
            group["lr"] = lr
        snapshot = BufferSnapshot(model) if on_nonfinite == "skip" else None
        total = torch.zeros((), device=device)
        tokens = 0
        bad: list[str] = []  # the non-finite terms of this step; empty if the step is sound
        for micro in range(accumulation_steps):
            ids, mask = next(batches)
            ids, mask = ids.to(device), mask.to(device)
            tokens += int(mask.sum())
            last = micro == accumulation_steps - 1
            # gradients are all-reduced only on the last micro-batch of the optimizer step
            sync = nullcontext() if last or accelerator is None else accelerator.no_sync(net)
            with sync:
                out = net(input_ids=ids, attention_mask=mask, **plan.forward_kwargs)
                loss = plan.objective(out)
                if not _all_finite(loss.detach(), accelerator, distributed):
                    if bool(torch.isfinite(loss.detach())):
                        bad = [f"objective on another process (here {loss.item()}, micro-batch {micro})"]
                    else:
                        bad = [f"objective={loss.item()} (micro-batch {micro})", *nonfinite_terms(out)]
                    if distributed and last and on_nonfinite == "skip":
                        # DDP expects a backward after a synchronised forward: every process runs
                        # the same all-zero one (the gradients are dropped below)
                        accelerator.backward(sum((p * 0.0).sum() for p in plan.params))
                    break  # no backward of the loss: nothing of this micro-batch reaches the weights
                if accelerator is not None:
                    accelerator.backward(loss / accumulation_steps)
                else:
                    (loss / accumulation_steps).backward()
            total += loss.detach()
        if not bad:
            # clipping with max_norm=inf measures the norm without scaling (no clipping configured)
            clip = grad_clip or float("inf")
            if accelerator is not None:
                norm = accelerator.clip_grad_norm_(plan.params, clip)
            else:
                norm = torch.nn.utils.clip_grad_norm_(plan.params, clip)
            # the gradients are all-reduced already: every process sees the same norm
            if not bool(torch.isfinite(torch.as_tensor(norm))):
                bad = [
                    f"gradient norm={float(norm)} (finite objective {(total / accumulation_steps).item()})"
                ]
        if bad:
            where = f"stage {stage.name} step {step}: non-finite " + ", ".join(bad)
            if on_nonfinite == "raise":
                raise FloatingPointError(f"{where}. Set on_nonfinite='skip' to drop such steps instead.")
            opt.zero_grad(set_to_none=True)
            snapshot.restore()  # the EMA statistics, pool rows and thresholds of this step
            skipped_in_a_row += 1
            logger.warning("%s; optimizer step dropped (%d in a row)", where, skipped_in_a_row)
            if skipped_in_a_row >= max_consecutive_skips:
                raise FloatingPointError(
                    f"{where}: {skipped_in_a_row} optimizer steps in a row dropped "
                    f"(max_consecutive_skips={max_consecutive_skips}); stopping the run."
                )
            size_after(step + 1)  # a dropped step still counts
            if on_step is not None and on_step(
                step + 1, {"loss": None, "out": out, "tokens": tokens, "lr": lr, "skipped": bad}
            ):
                break
            step += 1
            continue
        skipped_in_a_row = 0
        opt.step()
        opt.zero_grad(set_to_none=True)
        # once per optimizer step; frozen levels are skipped; all-reduces across processes itself
        model.apply_quantizer_updates()
        if distributed:
            sync_running_buffers(model, accelerator)
        value = (total / accumulation_steps).item()
        history.append(value)
        size_after(step + 1)
        if log is not None and log_every and (step % log_every == 0 or step == stage.steps - 1):
            log(step, {"loss": value, **stage_metrics(out, stage)})
        if on_step is not None and on_step(step + 1, {"loss": value, "out": out, "tokens": tokens, "lr": lr}):
            break
        if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
            break
        step += 1
    if accelerator is not None:
        accelerator.unwrap_model(net, keep_fp32_wrapper=False)  # drops the autocast forward wrapper
    model.eval()
    return history
