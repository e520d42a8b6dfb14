"""Run examples/train.py under `accelerate launch` and record, per rank, what the 2-process test checks.

Writes into OUTPUT_DIR/probe/: `rank<i>.pt` (the final state_dict), `rank<i>.json` (save_pretrained
calls and the quantiser all-reduces: local acc_count sum before, global after). Not a test module.
"""

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

import train  # noqa: E402

from hier_ae import HierAEModel  # noqa: E402
from hier_ae import quantizer as quantizer_module  # noqa: E402

captured = {"model": None, "saves": [], "reduces": []}

_orig_train_stage = train.train_stage
_orig_all_reduce = quantizer_module.dist.all_reduce
_orig_save = HierAEModel.save_pretrained


def train_stage(model, *a, **kw):
    captured["model"] = model
    return _orig_train_stage(model, *a, **kw)


def all_reduce(tensor, *a, **kw):
    before = float(tensor.sum())
    result = _orig_all_reduce(tensor, *a, **kw)
    if tensor.ndim == 2:  # the (R, K) acc_count accumulator
        captured["reduces"].append([before, float(tensor.sum())])
    return result


def save_pretrained(self, folder, *a, **kw):
    captured["saves"].append(str(folder))
    return _orig_save(self, folder, *a, **kw)


train.train_stage = train_stage
quantizer_module.dist.all_reduce = all_reduce
HierAEModel.save_pretrained = save_pretrained

if __name__ == "__main__":
    argv = sys.argv[1:]
    out = Path(argv[argv.index("--output-dir") + 1]) / "probe"
    train.main(argv)
    # end_training() may have destroyed the process group: read the launcher's variables
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in captured["model"].state_dict().items()}
    torch.save(state, out / f"rank{rank}.pt")
    record = {"rank": rank, "world": world, "saves": captured["saves"], "reduces": captured["reduces"]}
    (out / f"rank{rank}.json").write_text(json.dumps(record))
