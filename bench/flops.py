"""FLOPs per byte, counted with `torch.utils.flop_counter.FlopCounterMode` over one batch (issue 20).

Every model of the benchmark reports, beside its parameter count:

- training FLOPs per byte: one forward + backward of the training objective on one batch, divided by
  the batch's real bytes (the sum of its attention mask: padding is not a byte);
- inference FLOPs per byte: one forward under `no_grad` of the causal LM on the same batch (the
  whole sequence at once, as the scorer reads it; hier_ae in predict mode,
  `HierAEForCausalLM(...)(ids).logits`), divided by the same bytes.

hier_ae trains in stages and each stage trains different modules (`prepare_stage` freezes the rest:
a frozen module runs forward but has no weight gradients), so it reports the training FLOPs of every
stage (`prepare_stage` + that stage's objective, on a copy of the model); its training FLOPs per
byte is their mean weighted by the steps each stage ran (configured steps when no run is known).
BLT likewise reports its two phases (its entropy model alone, then the rest with the entropy model
frozen). The training FLOPs of a whole run = sum over stages of steps x FLOPs of one step.

What is counted: the convention of `FlopCounterMode` (and of the scaling-law literature), the
multiply-adds of matrix products as 2 FLOPs each: `mm`, `addmm`, `bmm`, `baddbmm`, convolutions and
attention (`scaled_dot_product_attention` as its two matrix products, QK^T and AV, and five in the
backward). Elementwise work (norms, activations, softmax, rotary, the quantiser's EMA), gathers
(embeddings) and the optimizer step are not counted. Masked attention counts every product computed:
a causal mask does not halve it, and hier_ae's sliding windows count the 2W keys each block of W
queries reads. torch 2.13 has no formula for the CPU kernel of `scaled_dot_product_attention`
(`_scaled_dot_product_flash_attention_for_cpu`, what a 4-D causal call reaches on CPU), so
`flop_counter` adds one (`ATTENTION_FORMULAS`); other masked calls fall back to the math kernel,
whose `bmm`s are counted as they are.

hier_ae's segmentation depends on the data and on its trained entropy models: its FLOPs per byte are
those of the trained model on the run's data (bench/phases.py `phase_flops`), not of a fresh one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _attention_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    """QK^T and AV for query / key / value shapes (..., S, D); leading dims are batch and heads."""
    batch, s_q, d = math.prod(q[:-2]), q[-2], q[-1]
    return 2 * batch * s_q * k[-2] * (d + v[-1])


def _attention_backward_flops(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    """The recomputed QK^T, then dS = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q (as torch's sdpa)."""
    batch, s_q, d = math.prod(q[:-2]), q[-2], q[-1]
    return 2 * batch * s_q * k[-2] * (3 * d + 2 * v[-1])


ATTENTION_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward_flops,
}


def flop_counter() -> FlopCounterMode:
    """A silent `FlopCounterMode` that also counts the CPU attention kernel."""
    return FlopCounterMode(display=False, custom_mapping=ATTENTION_FORMULAS)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of `fn()` (forward, and backward if it runs one) as `FlopCounterMode` counts them."""
    with flop_counter() as counter:
        fn()
    return counter.get_total_flops()


def batch_bytes(mask: torch.Tensor) -> int:
    """The real bytes of a batch: the sum of its attention mask (padding is not a byte)."""
    n = int(mask.sum())
    if n <= 0:
        raise ValueError("the batch has no real byte (its mask is all 0)")
    return n


def train_flops(loss_fn: Callable[[], torch.Tensor]) -> int:
    """FLOPs of one training step's forward + backward: `loss_fn()` then `.backward()`.

    Gradients land on the parameters that require them; call it on a copy (`train_flops_per_byte`).
    """

    def step():
        loss = loss_fn()
        loss.backward()

    return count_flops(step)


def inference_flops(forward: Callable[[], object]) -> int:
    """FLOPs of one forward under `no_grad`."""
    with torch.no_grad():
        return count_flops(forward)


# ---- the benchmark's models -----------------------------------------------------------------------
def hier_ae_stage_flops(model, stage_specs: list[dict], ids: torch.Tensor, mask: torch.Tensor) -> list[dict]:
    """Training FLOPs per byte of every stage of hier_ae's curriculum, each on a fresh copy of `model`
    (`prepare_stage` sets which modules train; the stage's forward arguments and objective)."""
    from hier_ae.training.stages import Stage, prepare_stage

    n = batch_bytes(mask)
    rows = []
    for spec in stage_specs:
        stage = Stage(**spec)
        net = copy.deepcopy(model)
        plan = prepare_stage(net, stage)
        net.train()
        if not plan.params:
            flops = 0
        else:
            flops = train_flops(
                lambda net=net, plan=plan: plan.objective(
                    net(input_ids=ids, attention_mask=mask, **plan.forward_kwargs)
                )
            )
        rows.append({"stage": stage.name, "train_flops_per_byte": flops / n, "configured_steps": stage.steps})
    return rows


def weighted(rows: list[dict], steps: list[int] | None) -> float:
    """The steps-weighted mean of the rows' training FLOPs per byte; `steps` None: weighted by the
    rows' configured steps (equal weights for rows without)."""
    w = steps if steps is not None else [r.get("configured_steps", 1) for r in rows]
    if len(w) != len(rows):
        raise ValueError(f"{len(rows)} stages but {len(w)} step counts")
    total = sum(w)
    if total <= 0:
        return sum(r["train_flops_per_byte"] for r in rows) / max(len(rows), 1)
    return sum(r["train_flops_per_byte"] * s for r, s in zip(rows, w)) / total


def hier_ae_flops(
    lm, stage_specs: list[dict], ids: torch.Tensor, mask: torch.Tensor, steps: list[int] | None = None
) -> dict:
    """hier_ae (`lm`: a `HierAEForCausalLM`): every stage's training FLOPs per byte, their mean
    weighted by `steps` (the steps each stage ran; configured steps if None), and the predict-mode
    causal LM's inference FLOPs per byte."""
    from bench.peers import count_parameters

    n = batch_bytes(mask)
    stages = hier_ae_stage_flops(lm.model, stage_specs, ids, mask)
    for row, s in zip(stages, steps or [r["configured_steps"] for r in stages]):
        row["steps"] = s
    lm.eval()
    infer = inference_flops(lambda: lm(input_ids=ids, attention_mask=mask, use_cache=False).logits)
    return {
        "parameters": count_parameters(lm),
        "bytes": n,
        "train_flops_per_byte": weighted(stages, steps),
        "inference_flops_per_byte": infer / n,
        "stages": stages,
    }


def llama_flops(model, ids: torch.Tensor, mask: torch.Tensor, steps: int | None = None) -> dict:
    """The byte Llama: next-byte cross-entropy forward + backward; the causal LM forward."""
    from bench.peers import count_parameters
    from bench.training import causal_lm_loss

    n = batch_bytes(mask)
    net = copy.deepcopy(model).train()
    train = train_flops(lambda: causal_lm_loss(net(input_ids=ids, attention_mask=mask).logits, ids, mask))
    model.eval()
    infer = inference_flops(lambda: model(input_ids=ids, attention_mask=mask).logits)
    stages = [{"stage": "all", "train_flops_per_byte": train / n, "steps": steps}]
    return {
        "parameters": count_parameters(model),
        "bytes": n,
        "train_flops_per_byte": train / n,
        "inference_flops_per_byte": infer / n,
        "stages": stages,
    }


def blt_flops(model, ids: torch.Tensor, mask: torch.Tensor, steps: list[int] | None = None) -> dict:
    """BLT as bench/training.py trains it: its entropy model alone (the patcher), then the rest with
    the patcher frozen (it still runs forward to patch). `steps`: [patcher steps, main steps]; the
    training FLOPs per byte is their weighted mean (equal weights if None). Rows must be unpadded.
    The threshold the model carries decides the patches, so count a trained model."""
    from bench.peers import count_parameters
    from bench.training import causal_lm_loss

    n = batch_bytes(mask)
    if not bool(mask.bool().all()):
        raise ValueError("BLT rows must be unpadded (crops of long documents are)")
    net = copy.deepcopy(model)
    net.requires_grad_(False)
    patcher = net.model.patcher
    patcher.requires_grad_(True)
    patcher.train()
    first = train_flops(lambda: causal_lm_loss(patcher(ids)[2], ids, mask))
    net.requires_grad_(True)
    patcher.requires_grad_(False)
    net.train()
    patcher.eval()
    second = train_flops(lambda: causal_lm_loss(net(input_ids=ids, use_cache=False).logits, ids, mask))
    model.eval()
    infer = inference_flops(lambda: model(input_ids=ids, use_cache=False).logits)
    w = steps if steps is not None else [None, None]
    stages = [
        {"stage": "patcher", "train_flops_per_byte": first / n, "steps": w[0]},
        {"stage": "main", "train_flops_per_byte": second / n, "steps": w[1]},
    ]
    return {
        "parameters": count_parameters(model),
        "bytes": n,
        "train_flops_per_byte": weighted(stages, steps),
        "inference_flops_per_byte": infer / n,
        "stages": stages,
    }


def run_flops(result: dict, bytes_per_step: int) -> float | None:
    """Training FLOPs of a whole run: sum over stages of steps x FLOPs per byte x bytes of one batch.

    `bytes_per_step` is the real bytes of one training batch (the run's rows are full crops). None when a
    stage's steps are unknown. Calibration steps (hier_ae) and BLT's threshold calibration are left out.
    """
    total = 0.0
    for row in result["stages"]:
        if row.get("steps") is None:
            return None
        total += row["steps"] * row["train_flops_per_byte"] * bytes_per_step
    return total


def fmt_flops(x: float | None) -> str:
    """12_300_000 -> '12.3 M' (FLOPs), 3.2e15 -> '3.20 P'."""
    if x is None or not math.isfinite(x):
        return "n/a"
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            v = x / scale
            return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{x:.3g}"
