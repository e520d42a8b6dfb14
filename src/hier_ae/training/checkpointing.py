"""Crash-safe training checkpoints and strict stage hand-offs (issue 13, DESIGN §8).

A checkpoint is an Accelerate `save_state` folder (model weights with every persistent buffer:
codebooks, EMA counters, restart pool, adaptive thresholds; optimizer; per-rank RNG states; the
batch stream) plus `progress.json` (stage index, optimizer steps done in that stage). Writing is
atomic:

    every rank   save_state -> CKPT_ROOT/.tmp-step-000120/
    rank 0       progress.json into it;   barrier;   rename to CKPT_ROOT/step-000120
    rank 0       delete older step-* folders beyond `keep`

A rename is atomic on one filesystem, so a kill at any moment leaves either the previous
`step-*` folders alone or the new one complete; `latest_checkpoint` ignores `.tmp-*` folders.
An `OSError` while writing (disk full, permission denied) removes the partial `.tmp-*` folder and
is raised again naming the folder and the previous checkpoint, which is left intact. Weights or
buffers that hold NaN or Inf are never written: `save_checkpoint` raises `FloatingPointError`
first (`check_finite_state`, also used before every `save_pretrained` of the training script).

These folders are Accelerate's training-state format (its own weight, optimizer, scheduler and
RNG files, `torch.load`-ed on resume): a run's own working files, not model folders to publish or
to load from strangers. Model folders (`save_pretrained`) are safetensors only.

Not part of the model's remote-code closure (training-side code).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .nonfinite import nonfinite_state

PROGRESS = "progress.json"


def checkpoint_name(global_step: int) -> str:
    return f"step-{global_step:07d}"


def save_checkpoint(
    accelerator,
    root: str | Path,
    global_step: int,
    progress: dict,
    rank_state: dict | None = None,
    keep: int = 2,
) -> Path:
    """Write a checkpoint of everything the accelerator tracks; return its final path (all ranks).

    `rank_state` (this process's batch-stream position, say) goes to `rank_state_<rank>.pt` on
    every rank: Accelerate's custom-object hook writes rank 0's state only.
    """
    root = Path(root)
    final = root / checkpoint_name(global_step)
    tmp = root / f".tmp-{checkpoint_name(global_step)}"
    for model in accelerator._models:
        check_finite_state(accelerator.unwrap_model(model), f"checkpoint {final}", accelerator)
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left over by a run killed while writing
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if rank_state is not None:
            torch.save(rank_state, tmp / f"rank_state_{accelerator.process_index}.pt")
        if accelerator.is_main_process:
            (tmp / PROGRESS).write_text(json.dumps({**progress, "global_step": global_step}, indent=2))
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)  # a partial folder only wastes the space that ran out
        previous = latest_checkpoint(root)
        raise OSError(
            e.errno,
            f"writing checkpoint {final} failed ({e.strerror or e}); the partial folder {tmp} was removed "
            f"and the previous checkpoint ({previous or 'none yet'}) is intact",
        ) from e
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # the same step written again (a resumed run): replace it
            shutil.rmtree(final)
        tmp.rename(final)
        for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def check_finite_state(model, what: str, accelerator=None) -> None:
    """Raise `FloatingPointError` before `what` is written if `model` holds a NaN or Inf.

    Under several processes the decision is collective (any rank's bad tensor stops every rank), so
    no process waits at a barrier for one that raised.
    """
    bad = nonfinite_state(model)
    flag = torch.tensor(float(len(bad) > 0), device=next(model.parameters()).device)
    if accelerator is not None and accelerator.num_processes > 1:
        flag = accelerator.reduce(flag, reduction="sum")
    if flag.item() > 0:
        names = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise FloatingPointError(
            f"refusing to write {what}: non-finite values in {names or 'another process'}; "
            "the previous checkpoint is kept."
        )


def latest_checkpoint(root: str | Path) -> Path | None:
    """The complete checkpoint with the highest step under `root`, or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step-*") if (p / PROGRESS).exists())
    return done[-1] if done else None


def load_rank_state(checkpoint: str | Path, rank: int) -> dict:
    path = Path(checkpoint) / f"rank_state_{rank}.pt"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: resume with the number of processes the checkpoint was written with."
        )
    return torch.load(path, weights_only=True)


def read_progress(checkpoint: str | Path) -> dict:
    return json.loads((Path(checkpoint) / PROGRESS).read_text())


def load_model_strict(model, folder: str | Path) -> None:
    """Load a `save_pretrained` folder's weights into `model`, refusing any missing or unexpected key.

    Every stage saves the full model (untrained parts included), so the next stage's load must match
    key for key; a partial load that silently loads nothing (DESIGN §10) raises instead.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors file in {folder}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(
            f"strict load of {folder} failed:\n  missing keys: {result.missing_keys}\n"
            f"  unexpected keys: {result.unexpected_keys}"
        )
