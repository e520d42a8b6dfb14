"""hier_ae side by side with its peers, in one run: how good, how fast, how big (issue #10).

    python -m bench.run                                   # the full run (under 2 hours on 2 cores)
    python -m bench.run --only hier_ae --only llama       # some models (the others' cached results are kept)
    python -m bench.run --budget-minutes 0.3 --second-budget-minutes 0.2 --quick --out /tmp/smoke.md
    python -m bench.run --max-val-bytes 65536 --recon-lines 500     # capped scores (kept apart in the cache)
    python -m bench.run --val-skip-bytes 40000                      # scores on the text after the first 40 KB

Models, all byte-level with the same byte ids (vocab 259) and matched parameter counts (every
module counts; the counts are printed): hier_ae (`configs/small.yaml`), a `LlamaForCausalLM`
and a `BltForCausalLM` from transformers (bench/peers.py). Each trains on the same batches for the
same wall-clock budget (bench/training.py): Tiny Shakespeare for `--budget-minutes` (the main table),
then code + multilingual for `--second-budget-minutes` (scored on each val.txt separately).

Per model: its parameter count beside its training and inference FLOPs per byte, counted with
`FlopCounterMode` on one batch of the training shape (bench/flops.py; hier_ae per stage) and the
training FLOPs of its run; validation bits per byte with one sliding-window scorer for all (bench/scoring.py;
context = the training length, stride = half of it; hier_ae in predict mode), training and scoring
bytes/s, peak memory (max RSS of the process that ran the phase), greedy generation bytes/s at
64 B / 1 KB / 8 KB prompts (256 new bytes, median of 3, with the fastest cache whose output equals the
uncached output); for hier_ae also its code sizes, reconstruction exact-match, codebook usage and
predict-mode bits per byte with the upper contexts zeroed; gzip/bzip2/xz/zstd on the same text; and
a forward-pass scaling table (1k to 64k bytes) for hier_ae against the Llama.

For hier_ae, on each dataset it trained on, the reconstruction benchmark of bench/recon.py (issue 21)
on the dataset's val texts: per level, exact-match of held-out lines and 1 KB docs, teacher-forced
and free-decode accuracy, code bits/byte, reconstruct CE, total bits/byte beside the compressors, the
top code LM's next-code top-1 (`--recon-sample-lines`, `--recon-sample-docs`; `--skip-recon`). These
are autoencoder figures (the decoder reads the codes), never LM figures.

Every phase of every model runs in its own subprocess (a clean peak-memory reading) and caches its
result as JSON under `--cache-dir`, keyed by model, data and budget; trained model folders are kept
there too. A rerun skips what is finished, so an interrupted run resumes. The report goes to `--out`.
At start it prints the plan: the training budgets plus an estimate of the rest (`estimate_minutes`);
the report sets the measured minutes of every part beside that estimate.

The pieces: bench/plan.py (models, data, budgets, cache paths, the job plan and its estimate),
bench/phases.py (what each worker process runs), this file (the arguments and the orchestration),
bench/report.py (the markdown).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench.plan import (
    DATASETS,
    MODELS,
    PRIMARY,
    Job,
    estimate_minutes,
    jobs,
    matched_configs,
    read_json,
    val_texts,
)
from bench.targets import evaluate, show

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


# ---- arguments ---------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_argument_group("what to run")
    g.add_argument("--budget-minutes", type=float, default=20.0, help="training budget per model, main data")
    g.add_argument("--second-budget-minutes", type=float, default=8.0, help="per model, code + multilingual")
    g.add_argument("--only", action="append", choices=MODELS, help="run only these models (repeatable)")
    g.add_argument("--skip-second", action="store_true", help="skip the code + multilingual table")
    g.add_argument("--skip-scaling", action="store_true", help="skip the forward-pass scaling table")
    g.add_argument("--skip-recon", action="store_true", help="skip hier_ae's reconstruction benchmark")
    g.add_argument("--skip-generate", action="store_true", help="skip the generation-speed table")
    g.add_argument(
        "--quick",
        action="store_true",
        help="smoke test, a preset of the caps below (each explicit flag wins): --max-val-bytes 8192 "
        "--recon-lines 16 --recon-sample-lines 16 --recon-sample-docs 2 --prompts 64 512 --new 32 "
        "--repeats 1 --sizes 1024 4096 (own cache folders)",
    )
    g.add_argument(
        "--peer-params",
        action="append",
        default=[],
        metavar="MODEL=N",
        help="size a peer (llama, blt) to N parameters instead of hier_ae's count, e.g. llama=1400000: "
        "each family at its best size from the compute frontier (bench/frontier.py); repeatable",
    )
    g = ap.add_argument_group("where")
    g.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"), help="the corpora folder")
    g.add_argument("--config", default=str(REPO / "configs" / "small.yaml"), help="hier_ae's config")
    g.add_argument("--out", default=str(HERE / "results.md"), help="the report (markdown)")
    g.add_argument("--cache-dir", default=str(HERE / "cache"), help="cached results and model folders")
    g = ap.add_argument_group("how")
    g.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    g.add_argument(
        "--recon-lines",
        type=int,
        default=None,
        help="reconstruction lines per val set (default: all on the main table, 1000 per second-table set)",
    )
    g.add_argument(
        "--max-val-bytes", type=int, default=None, help="score only the first N bytes of each val text (all)"
    )
    g.add_argument(
        "--val-skip-bytes",
        type=int,
        default=0,
        help="leave out the first N bytes of each val text (before --max-val-bytes): choose settings on "
        "`--max-val-bytes N`, report on `--val-skip-bytes N`, text never used for the choice (0)",
    )
    g.add_argument(
        "--recon-batch",
        type=int,
        default=128,
        help="lines decoded together (sorted by length first, so a batch waits little for its longest)",
    )
    g.add_argument(
        "--score-batch",
        type=int,
        default=16,
        help="windows per forward pass when scoring (8 to 32 cost the same on CPU; 64 is slower)",
    )
    g.add_argument(
        "--second-extras",
        action="store_true",
        help="hier_ae's zeroed-context score, codes and reconstruction on the second table too (slower)",
    )
    g.add_argument(
        "--recon-sample-lines",
        type=int,
        default=None,
        help="the reconstruction benchmark (bench/recon.py): held-out lines per val text (200)",
    )
    g.add_argument(
        "--recon-sample-docs", type=int, default=None, help="the reconstruction benchmark: 1 KB docs (16)"
    )
    g.add_argument("--prompts", type=int, nargs="+", default=None, help="generation prompt bytes")
    g.add_argument("--new", type=int, default=None, help="generated bytes per run (256)")
    g.add_argument("--repeats", type=int, default=None, help="generation runs, median taken (3)")
    g.add_argument(
        "--uncached-new", type=int, default=32, help="new bytes when a model is timed without a cache (32)"
    )
    g.add_argument(
        "--uncached-seconds",
        type=float,
        default=90.0,
        help="time fewer uncached new bytes (down to 2) where --uncached-new would take longer per prompt",
    )
    g.add_argument("--sizes", type=int, nargs="+", default=None, help="scaling input bytes")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)  # PHASE MODEL DATASET|SIZE
    args = ap.parse_args(argv)
    q = args.quick
    args.prompts = args.prompts or ([64, 512] if q else [64, 1024, 8192])
    args.new = args.new or (32 if q else 256)
    args.repeats = args.repeats or (1 if q else 3)
    args.sizes = args.sizes or ([1024, 4096] if q else [1024, 4096, 16384, 65536])
    if args.recon_sample_lines is None:
        args.recon_sample_lines = 16 if q else 200
    if args.recon_sample_docs is None:
        args.recon_sample_docs = 2 if q else 16
    if args.recon_lines is None and q:
        args.recon_lines = 16
    if args.max_val_bytes is None and q:
        args.max_val_bytes = 8192
    if args.val_skip_bytes < 0:
        ap.error(f"--val-skip-bytes {args.val_skip_bytes}: must be >= 0 (bytes of each val text left out)")
    args.peer_targets = parse_peer_params(ap, args.peer_params)
    return args


def parse_peer_params(ap: argparse.ArgumentParser, items: list[str]) -> dict[str, int]:
    """["llama=1400000"] -> {"llama": 1400000}; a clear error for anything else."""
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in ("llama", "blt") or not value.isdigit() or int(value) < 1:
            ap.error(
                f"--peer-params {item!r} is invalid: MODEL=N with MODEL llama or blt and N a positive integer"
            )
        out[name] = int(value)
    return out


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    import torch
    import transformers

    return (
        f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}"
    )


# ---- orchestration -----------------------------------------------------------------------------
def run_phase(argv: list[str], job: Job) -> dict:
    """Run one job in a fresh process unless its cached result exists; return the result."""
    name = f"[{job.phase} {job.model} {job.key}]"
    if job.path.exists():
        print(f"{name} cached: {job.path}", flush=True)
        return read_json(job.path)
    print(f"{name} running", flush=True)
    t0 = time.perf_counter()
    # the same interpreter and working directory: `bench` imports as it did here
    cmd = [sys.executable, "-m", "bench.run", *argv, "--worker", job.phase, job.model, job.key]
    subprocess.run(cmd, check=True)
    print(f"{name} done in {time.perf_counter() - t0:.0f}s", flush=True)
    return read_json(job.path)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        from bench.phases import worker

        worker(args)
        return
    from bench.compressors import compressor_table
    from bench.peers import config_label, describe

    t_start = time.perf_counter()
    models = [m for m in MODELS if not args.only or m in args.only]
    cfgs = matched_configs(args)
    counts = cfgs["counts"]
    print("parameter counts (every module; hier_ae: parameters + codebooks):")
    for m in MODELS:
        shape = config_label(args.config) if m == "hier_ae" else describe(cfgs[m])
        print(f"  {m:8s} {counts[m]:>10,}  ({counts[m] / counts['hier_ae'] - 1:+.1%})  {shape}")
    datasets = [PRIMARY] + ([] if args.skip_second else ["code+multilingual"])
    plan = estimate_minutes(args, models, datasets)
    train_min = sum(v for k, v in plan.items() if k.startswith("train"))
    print(
        f"planned: {sum(plan.values()):.0f} min = training {train_min:g} min (the budgets) + "
        f"{sum(plan.values()) - train_min:.0f} min estimated for the rest ("
        + ", ".join(f"{k} {v:.1f}" for k, v in plan.items() if not k.startswith("train"))
        + "); cached phases are reused",
        flush=True,
    )
    results: dict = {"train": {}, "flops": {}, "score": {}, "recon": {}, "generate": {}, "scaling": {}}
    for job in jobs(args, models, datasets):
        results[job.phase][job.slot] = run_phase(argv, job)
    compress = {
        ds: {name: compressor_table(data) for name, data in val_texts(args, ds).items()} for ds in datasets
    }
    from bench.report import RunReport, render

    report = RunReport(
        args, argv, cfgs, results, compress, datasets, machine(), time.perf_counter() - t_start, plan
    )
    text = render(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    print("targets (bench/targets.py), on the main table:")
    for o in evaluate(results, PRIMARY, next(iter(DATASETS[PRIMARY]["val"]))):
        result, distance = show(o)
        print(f"  {'met' if o.met else 'missed':6s} {o.name.strip()}: {result} (distance {distance})")
    print(f"report: {args.out} ({(time.perf_counter() - t_start) / 60:.1f} min this invocation)")


if __name__ == "__main__":
    main()
