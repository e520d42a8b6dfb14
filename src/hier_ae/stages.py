"""The staged curriculum of DESIGN §8, as a plain-PyTorch stage runner.

Untrained entropy models give meaningless boundaries, and a level trained on codes that later get
renumbered learns nothing, so training goes bottom up, one stage at a time:

    entropy-0 -> autoencoder-0 -> (freeze entropy model 0 and codebook 0) -> entropy-1 -> ... -> top_lm

`prepare_stage` is the single place that decides, for a stage, which parameters train, which
levels are frozen, which parts of the forward run and which loss terms form the objective. Every
stage is run by `train_stage`, which tests call directly and `examples/train.py` wraps with
Accelerate (pass `accelerator=`). Not part of the model's remote-code closure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

STAGE_KINDS = ("entropy", "autoencoder", "top_lm")


@dataclass
class Stage:
    """One stage: `kind` in STAGE_KINDS, the `level` it trains (None for top_lm), steps and lr."""

    kind: str
    level: int | None = None
    steps: int = 100
    lr: float = 3e-3
    warmup_steps: int = 10
    weight_decay: float = 0.0

    def __post_init__(self):
        if self.kind not in STAGE_KINDS:
            raise ValueError(f"stage kind={self.kind!r} is invalid: one of {STAGE_KINDS}.")
        if (self.kind == "top_lm") != (self.level is None):
            raise ValueError(f"stage {self.kind!r}: level must be None for top_lm and an int otherwise.")
        if self.steps < 0 or self.lr <= 0:
            raise ValueError(f"stage {self.name}: steps={self.steps} must be >= 0 and lr={self.lr} > 0.")

    @property
    def name(self) -> str:
        return self.kind if self.level is None else f"{self.kind}-{self.level}"


def default_stages(
    num_levels: int, entropy_steps: int, autoencoder_steps: int, top_lm_steps: int, lr: float = 3e-3
):
    """entropy-l, autoencoder-l for every level bottom up, then top_lm."""
    stages = []
    for level in range(num_levels):
        stages.append(Stage("entropy", level, entropy_steps, lr))
        stages.append(Stage("autoencoder", level, autoencoder_steps, lr))
    stages.append(Stage("top_lm", None, top_lm_steps, lr))
    return stages


@dataclass
class StagePlan:
    params: list[torch.nn.Parameter]
    forward_kwargs: dict
    objective: Callable
    metric_names: list[str] = field(default_factory=list)


def prepare_stage(model, stage: Stage) -> StagePlan:
    """Freeze and unfreeze for `stage`; return what to optimise, how to call forward, what to minimise."""
    L = model.num_levels
    if stage.level is not None and not 0 <= stage.level < L:
        raise ValueError(f"stage {stage.name}: level must be in [0, {L}) for this model.")
    model.requires_grad_(False)
    top = stage.level if stage.level is not None else L
    for i, level in enumerate(model.levels):
        # levels below the trained one are fixed: their segments and codes must not move
        level.entropy_frozen = i < top or (i == top and stage.kind == "autoencoder")
        level.codebook_frozen = i < top or (i == top and stage.kind == "entropy") or i > top
    if stage.kind == "entropy":
        module = model.levels[stage.level].entropy_model
        module.requires_grad_(True)
        kwargs = {"num_levels": stage.level + 1, "reconstruct_levels": (), "run_top_lm": False}

        def objective(out):
            return out.entropy_loss[stage.level]

        names = ["entropy CE"]
    elif stage.kind == "autoencoder":
        lv = model.levels[stage.level]
        for module in (lv.encoder, lv.pooling, lv.decoder):
            module.requires_grad_(True)
        kwargs = {"num_levels": stage.level + 1, "reconstruct_levels": (stage.level,), "run_top_lm": False}

        def objective(out):
            return out.reconstruct_loss[stage.level] + out.commitment_loss[stage.level]

        names = ["recon CE", "commitment"]
    else:
        model.top_lm.requires_grad_(True)
        kwargs = {"reconstruct_levels": (), "run_top_lm": True}

        def objective(out):
            return out.top_lm_loss

        names = ["top-LM CE"]
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
    else:
        m["top-LM bits/code"] = out.top_lm_loss.item() / math.log(2)
    for i, t in enumerate(out.tokens_per_segment.tolist()):
        m[f"tokens/seg L{i}"] = t
    return m


def lr_at(step: int, stage: Stage) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < stage.warmup_steps:
        return stage.lr * (step + 1) / stage.warmup_steps
    progress = (step - stage.warmup_steps) / max(stage.steps - stage.warmup_steps, 1)
    return stage.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train_stage(
    model,
    stage: Stage,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    *,
    grad_clip: float = 1.0,
    log_every: int = 0,
    log: Callable[[int, dict], None] | None = None,
    time_budget_s: float | None = None,
) -> list[float]:
    """Train one stage with AdamW; return the objective per step.

    After every optimizer step the trained level's quantiser applies its EMA update (DESIGN §3.5).
    `time_budget_s` stops the stage early (tests, benchmarks) - the steps actually run are returned.
    """
    import time

    plan = prepare_stage(model, stage)
    model.train()
    if not plan.params or stage.steps == 0:
        return []
    opt = torch.optim.AdamW(plan.params, lr=stage.lr, weight_decay=stage.weight_decay, betas=(0.9, 0.95))
    device = next(model.parameters()).device
    history: list[float] = []
    t0 = time.perf_counter()
    for step in range(stage.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, stage)
        ids, mask = next(batches)
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), **plan.forward_kwargs)
        loss = plan.objective(out)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"stage {stage.name} step {step}: non-finite objective {loss.item()}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(plan.params, grad_clip)
        opt.step()
        if stage.kind == "autoencoder":
            model.apply_quantizer_updates()
        history.append(loss.item())
        if log is not None and log_every and (step % log_every == 0 or step == stage.steps - 1):
            log(step, {"loss": loss.item(), **stage_metrics(out, stage)})
        if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
            break
    model.eval()
    return history
