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

Not part of the model's remote-code closure (training-side code).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

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
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left over by a run killed while writing
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if rank_state is not None:
        torch.save(rank_state, tmp / f"rank_state_{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        (tmp / PROGRESS).write_text(json.dumps({**progress, "global_step": global_step}, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # the same step written again (a resumed run): replace it
            shutil.rmtree(final)
        tmp.rename(final)
        for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


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
