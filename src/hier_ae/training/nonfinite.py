"""Non-finite losses and weights during training: name the culprit, drop the step, never save NaN.

A run that goes unattended for hours must not turn a NaN into hours of wasted steps or a checkpoint
that poisons every resume. Three tools, used by `stages.train_stage` and `checkpointing`:

- `nonfinite_terms(out)` names the loss terms of a model output that are NaN or Inf
  (`"reconstruct_loss[level 0]=nan"`), so an error says which term broke, not just "loss is nan";
- `BufferSnapshot` copies every buffer of the model before an optimizer step and puts them back
  when the step is dropped: the quantisers' EMA accumulators and restart pool, and the adaptive
  boundary thresholds, move during the training forward (DESIGN §3.2, §3.5), and a dropped step
  must leave no trace in them;
- `nonfinite_state(model)` lists the parameters and buffers that hold NaN or Inf (checked before
  any checkpoint or model folder is written).

A step is non-finite when its objective (any micro-batch, any process) or its gradient norm is
NaN or Inf. Policies (`training.on_nonfinite` in a training config, `on_nonfinite=` of
`train_stage`):

    raise   stop at once with FloatingPointError naming the stage, the step and the terms (default)
    skip    drop the optimizer step (no weight, optimizer, EMA or threshold update), log it, go on;
            stop with FloatingPointError after `max_consecutive_skips` dropped steps in a row

Not part of the model's remote-code closure (training-side code).
"""

from __future__ import annotations

import math

import torch

NONFINITE_POLICIES = ("raise", "skip")


def check_policy(on_nonfinite: str, max_consecutive_skips: int) -> None:
    """ValueError unless the policy is one of NONFINITE_POLICIES and the skip limit an int >= 1."""
    if on_nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"on_nonfinite={on_nonfinite!r} is invalid: one of {NONFINITE_POLICIES}.")
    if isinstance(max_consecutive_skips, bool) or not isinstance(max_consecutive_skips, int):
        raise ValueError(f"max_consecutive_skips={max_consecutive_skips!r} is invalid: an integer >= 1.")
    if max_consecutive_skips < 1:
        raise ValueError(f"max_consecutive_skips={max_consecutive_skips} is invalid: an integer >= 1.")


def nonfinite_terms(out) -> list[str]:
    """The loss terms of a model output that are NaN or Inf, e.g. ['reconstruct_loss[level 0]=nan'].

    Reads every field named `loss` or `*_loss` (per-level terms have shape (num_levels,)); fields that are
    None are skipped. An empty list means every term is finite.
    """
    bad = []
    for name, value in out.items():
        if not (name == "loss" or name.endswith("_loss")) or not isinstance(value, torch.Tensor):
            continue
        values = value.detach().float().reshape(-1).tolist()
        if value.dim() == 0:
            bad += [f"{name}={x}" for x in values if not math.isfinite(x)]
        else:
            bad += [f"{name}[level {i}]={x}" for i, x in enumerate(values) if not math.isfinite(x)]
    return bad


def nonfinite_state(model) -> list[str]:
    """Names of the floating-point parameters and buffers of `model` that hold a NaN or an Inf."""
    return [
        name
        for name, t in model.state_dict().items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


class BufferSnapshot:
    """A copy of every buffer of `model`, to put back when an optimizer step is dropped.

    Usage: `snap = BufferSnapshot(model)` before the step's forwards; `snap.restore()` if the step
    is dropped. Buffers are small next to the weights (codebooks, EMA state, pool, thresholds), and
    the copy is taken only under the `skip` policy.
    """

    def __init__(self, model: torch.nn.Module):
        self._buffers = [(b, b.detach().clone()) for b in model.buffers()]

    @torch.no_grad()
    def restore(self) -> None:
        for buf, saved in self._buffers:
            buf.copy_(saved)
