"""Training and generation speed on one device: hier_ae's stages beside a byte Llama, in one run.

    python -m bench.device_speed --config configs/small.yaml --device cuda            # a GPU
    python -m bench.device_speed --config configs/small.yaml --device cuda --batch 64 --dtypes fp32 bf16

Both models start from random weights (speed does not depend on them, except hier_ae's segment
count: its entropy stage runs first, so the boundaries the later stages see are the adapted ones,
about `target_tokens_per_segment` bytes a segment). The Llama peer has about hier_ae's parameter count
(bench/peers.py's search, the codebooks counted). Data: `--batch` rows of `--seq` bytes cropped from
the built-in corpus (the standard library's sources), as `examples/train.py` reads them.

Training: each of hier_ae's stages (entropy -> autoencoder -> top LM -> predict, the order of
`configs/*.yaml`) runs `--warmup` + `--steps` optimizer steps through the package's `train_stage`;
the last `--steps` are timed, and bytes/s is the bytes of real (unpadded) input they read over their
seconds. The Llama runs the same number of AdamW steps on the same batches. `bf16` runs each under
`torch.autocast` (hier_ae's segmenting and encoding path stays fp32 inside it, DESIGN §3).
Generation: greedy, `--new` bytes forced (`min_new_tokens`) after prompts of `--prompts` bytes, with
each model's cache; median of `--repeats`. On CUDA every timing ends with a device synchronise.

Prints a markdown table; `--out FILE` also writes it there with the date, machine and command.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml

from hier_ae import HierAEConfig, HierAEForCausalLM
from hier_ae.data.batching import DocumentCropper, frame_document
from hier_ae.data.corpus import default_corpus
from hier_ae.training.stages import Stage, train_stage

STAGES = (("entropy", 0), ("autoencoder", 0), ("top_lm", None), ("predict", None))
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype: str):
    if dtype == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


class StepClock:
    """`on_step` hook of `train_stage`: times the steps after the first `warmup` ones.

    >>> clock = StepClock(torch.device("cpu"), warmup=2)
    >>> for step in (1, 2, 3, 4):  # steps 3 and 4 are timed: 2 steps' bytes over their seconds
    ...     _ = clock(step, {"tokens": 100})
    >>> clock.bytes
    200
    """

    def __init__(self, device: torch.device, warmup: int):
        self.device, self.warmup = device, warmup
        self.bytes, self.t0, self.seconds = 0, None, 0.0

    def __call__(self, step: int, info: dict) -> None:
        synchronize(self.device)
        now = time.perf_counter()
        if step == self.warmup:
            self.t0 = now
        elif step > self.warmup:
            self.bytes += info["tokens"]
            self.seconds = now - self.t0

    @property
    def rate(self) -> float:
        return self.bytes / self.seconds if self.seconds else float("nan")


def time_hier_ae(model, batches, device, dtype: str, warmup: int, steps: int) -> dict[str, float]:
    """bytes/s of each training stage, run in order on `model`."""
    rates = {}
    for kind, level in STAGES:
        clock = StepClock(device, warmup)
        with autocast(device, dtype):
            train_stage(
                model, Stage(kind, level, warmup + steps, 1e-3, warmup_steps=1), batches, on_step=clock
            )
        rates[kind] = clock.rate
    return rates


def time_llama(model, batches, device, dtype: str, warmup: int, steps: int) -> float:
    from bench.training import causal_lm_loss

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    clock = StepClock(device, warmup)
    for step in range(1, warmup + steps + 1):
        ids, mask = (t.to(device) for t in next(batches))
        with autocast(device, dtype):
            loss = causal_lm_loss(model(input_ids=ids, attention_mask=mask).logits, ids, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        clock(step, {"tokens": int(mask.sum())})
    model.eval()
    return clock.rate


@torch.no_grad()
def time_generation(model, ids, new: int, repeats: int, device, dtype: str) -> float:
    """Median seconds of a greedy generation of exactly `new` bytes after `ids` (1, P)."""
    from bench.generation import generate_exactly

    runs = []
    for _ in range(repeats + 1):  # the first run warms the kernels up and is not counted
        synchronize(device)
        t0 = time.perf_counter()
        with autocast(device, dtype):
            generate_exactly(model, ids, new)
        synchronize(device)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs[1:])


def prompt(docs: list[bytes], n_bytes: int) -> torch.Tensor:
    """(1, n_bytes) ids: `<s>` + the first bytes of the joined documents, no `</s>`."""
    data = b"".join(docs)
    while len(data) < n_bytes:
        data += data
    return frame_document(data[: n_bytes - 1])[:-1][None]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from bench.run import cpu_name

    return f"{cpu_name()}, {torch.get_num_threads()} threads"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/small.yaml", help="a training config (its model section)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    ap.add_argument("--batch", type=int, default=32, help="rows per optimizer step")
    ap.add_argument(
        "--seq", type=int, default=None, help="bytes per row (default: the config's data.seq_len)"
    )
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps before each timed stage")
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps per stage")
    ap.add_argument("--prompts", type=int, nargs="+", default=[64, 1024])
    ap.add_argument("--new", type=int, default=128, help="generated bytes per timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--corpus-bytes", type=int, default=3_000_000)
    ap.add_argument("--out", default=None, help="also write the table here")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.steps < 1 or args.warmup < 1 or args.new < 1 or args.repeats < 1:
        ap.error("--batch, --steps, --warmup, --new and --repeats must be >= 1.")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: CUDA is not available here; use --device cpu.")
    return args


def main(argv=None) -> str:
    from bench.peers import build_llama, count_parameters, llama_matched

    args = parse_args(argv)
    device = torch.device(args.device)
    cfg = yaml.safe_load(Path(args.config).read_text())
    seq = args.seq or cfg.get("data", {}).get("seq_len", 256)
    docs = default_corpus("train", max_bytes=args.corpus_bytes)

    rows = []
    for dtype in args.dtypes:
        torch.manual_seed(0)
        hier = HierAEForCausalLM(HierAEConfig(**cfg["model"])).to(device)
        n_params = count_parameters(hier.model)
        llama = build_llama(llama_matched(n_params, max(seq, max(args.prompts) + args.new))[0]).to(device)
        batches = DocumentCropper(docs, args.batch, seq, seed=0, p_doc_start=0.5)
        stages = time_hier_ae(hier.model, batches, device, dtype, args.warmup, args.steps)
        llama_rate = time_llama(llama, batches, device, dtype, args.warmup, args.steps)
        rows.append(
            f"| {dtype} | training bytes/s | "
            + " / ".join(f"{kind} {rate:,.0f}" for kind, rate in stages.items())
            + f" | {llama_rate:,.0f} |"
        )
        hier.eval()
        for n in args.prompts:
            ids = prompt(docs, n).to(device)
            t_h = time_generation(hier, ids, args.new, args.repeats, device, dtype)
            t_l = time_generation(llama, ids, args.new, args.repeats, device, dtype)
            rates = f"{args.new / t_h:,.0f} | {args.new / t_l:,.0f}"
            rows.append(f"| {dtype} | generation bytes/s, {n} B prompt | {rates} |")
        del hier, llama
    import transformers

    head = (
        f"Device: {device_name(device)}; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"Python {platform.python_version()}. Config {args.config} ({n_params:,} parameters with the "
        f"codebook; the Llama peer matched to it), rows of {args.batch} x {seq} bytes, {args.steps} timed "
        f"steps per stage after {args.warmup}; generation: {args.new} new bytes, median of "
        f"{args.repeats}.\n\n"
        "| precision | what | hier_ae | byte Llama |\n| --- | --- | --- | --- |\n"
    )
    table = head + "\n".join(rows) + "\n"
    print(table)
    if args.out:
        stamp = datetime.date.today().isoformat()
        command = "python -m bench.device_speed " + " ".join(sys.argv[1:] if argv is None else argv)
        Path(args.out).write_text(f"## Device speed ({stamp})\n\nCommand: `{command}`\n\n{table}")
    return table


if __name__ == "__main__":
    main()
