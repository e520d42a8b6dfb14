"""Two processes under `accelerate launch`: a NaN loss term on rank 1 only, with on_nonfinite="skip".

Run by tests/test_reliability_training.py; not a test module. Both ranks must drop the same steps
(the decision is collective), stay in lockstep (no hang) and end with bitwise-equal weights and
shared buffers. Prints "OK <skips>" on rank 0.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for conftest

from conftest import tiny_config  # noqa: E402

from hier_ae import HierAEModel  # noqa: E402
from hier_ae.data.batching import DocumentCropper  # noqa: E402
from hier_ae.training.stages import Stage, train_stage  # noqa: E402

ddp = DistributedDataParallelKwargs(broadcast_buffers=False, find_unused_parameters=True)
acc = Accelerator(kwargs_handlers=[ddp])
set_seed(0)
model = HierAEModel(tiny_config(1))
lines = [f"line {i}: the cat sat on the mat.".encode() for i in range(40)]
batches = DocumentCropper(lines, 4, 32, seed=acc.process_index, p_doc_start=1.0)
orig, calls = model.forward, {"n": 0}


def forward(*args, **kwargs):
    """Rank 1's third forward call of each stage gets a NaN reconstruction term."""
    out = orig(*args, **kwargs)
    if calls["n"] == 2 and acc.process_index == 1:
        value = out.reconstruct_loss.clone()
        value[0] = float("nan")
        out.reconstruct_loss = value
    calls["n"] += 1
    return out


model.forward = forward
skips = []
for accum in (1, 2):  # the NaN in the last micro-batch (a synchronised forward), then in the first
    calls["n"] = 0
    stage = Stage("autoencoder", 0, 5, 3e-3, warmup_steps=1)
    hist = train_stage(
        model,
        stage,
        batches,
        accelerator=acc,
        accumulation_steps=accum,
        on_nonfinite="skip",
        on_step=lambda s, info, a=accum: skips.append((a, s)) if info.get("skipped") else None,
    )
    assert len(hist) == 4, hist
per_rank = ("pool", "pool_ptr", "pool_fill")  # each rank's own recent inputs, by design
state = {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[-1] not in per_rank}
gathered = [None, None]
dist.all_gather_object(gathered, (state, skips))
if acc.is_main_process:
    (s0, k0), (s1, k1) = gathered
    differ = [k for k in s0 if not torch.equal(s0[k], s1[k])]
    assert not differ, differ
    assert k0 == k1 == [(1, 3), (2, 2)], (k0, k1)
    print("OK", k0, flush=True)
acc.wait_for_everyone()
