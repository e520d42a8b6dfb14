"""hier_ae side by side with its peers, in one run: how good, how fast, how big (issue #10).

    python -m bench.run                                   # the full run (under 2 hours on 2 cores)
    python -m bench.run --only hier_ae --only llama       # some models (the others' cached results are kept)
    python -m bench.run --budget-minutes 0.3 --second-budget-minutes 0.2 --quick --out /tmp/smoke.md
    python -m bench.run --max-val-bytes 65536 --recon-lines 500     # capped scores (kept apart in the cache)

Models, all byte-level with the same byte ids (vocab 259) and matched parameter counts (every
module counts; the counts are printed): hier_ae (`configs/small.yaml`), a `LlamaForCausalLM`
and a `BltForCausalLM` from transformers (bench/peers.py). Each trains on the same batches for the
same wall-clock budget (bench/training.py): Tiny Shakespeare for `--budget-minutes` (the main table),
then code + multilingual for `--second-budget-minutes` (scored on each val.txt separately).

Per model: validation bits per byte with one sliding-window scorer for all (bench/scoring.py;
context = the training length, stride = half of it; hier_ae in predict mode), training and scoring
bytes/s, peak memory (max RSS of the process that ran the phase), greedy generation bytes/s at
64 B / 1 KB / 8 KB prompts (256 new bytes, median of 3, with the fastest cache whose output equals the
uncached output); for hier_ae also its code sizes, reconstruction exact-match, codebook usage and
predict-mode bits per byte with the upper contexts zeroed; gzip/bzip2/xz/zstd on the same text; and
a forward-pass scaling table (1k to 64k bytes) for hier_ae against the Llama.

Every phase of every model runs in its own subprocess (a clean peak-memory reading) and caches its
result as JSON under `--cache-dir`, keyed by model, data and budget; trained model folders are kept
there too. A rerun skips what is finished, so an interrupted run resumes. The report goes to `--out`.
At start it prints the plan: the training budgets plus an estimate of the rest (`estimate_minutes`);
the report sets the measured minutes of every part beside that estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

MODELS = ("hier_ae", "llama", "blt")
DATASETS = {
    "shakespeare": {
        "train": ["tinyshakespeare/train.txt"],
        "val": {"tinyshakespeare": "tinyshakespeare/val.txt"},
    },
    "code+multilingual": {
        "train": ["code/train.txt", "multilingual/train.txt"],
        "val": {"code": "code/val.txt", "multilingual": "multilingual/val.txt"},
    },
}
PRIMARY = "shakespeare"
SECOND_RECON_LINES = 1000  # reconstruction lines per second-table val set (decoding is sequential)
PEER_LR = 2e-3  # hier_ae's stages use 1e-3 to 3e-3
BLT_MEAN_PATCH = 4.0  # hier_ae small's level-0 target_tokens_per_segment
BLT_PATCHER_SHARE = 200 / 1200  # fallback: the share of hier_ae small's configured steps in entropy-0


# Estimates of the parts other than training, for the plan printed at start: measured on the smoke
# run's models (bench/notes.md) with 1 torch thread on a busy 2-core machine, so on the safe side for
# 2 idle cores; the report sets each part's measured minutes beside them.
EST_STARTUP_S = 4.0  # one phase process: import torch + transformers, load the model
EST_SCORE_BYTES_PER_S = {"hier_ae": 3500.0, "llama": 6000.0, "blt": 9000.0}  # windows 256 / stride 128
EST_RECON_LINES_PER_S = 40.0  # hier_ae decode, lines sorted by length, --recon-batch 128
EST_GENERATE_S = {"hier_ae": 60.0, "llama": 45.0, "blt": 150.0}  # 64 / 1k / 8k prompts, 256 new, 3 runs
EST_SCALING_S_PER_KB = {"hier_ae": (0.135, 0.019), "llama": (0.074, 0.046)}  # s = a x KB + b x KB^2


# ---- arguments ---------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_argument_group("what to run")
    g.add_argument("--budget-minutes", type=float, default=20.0, help="training budget per model, main data")
    g.add_argument("--second-budget-minutes", type=float, default=8.0, help="per model, code + multilingual")
    g.add_argument("--only", action="append", choices=MODELS, help="run only these models (repeatable)")
    g.add_argument("--skip-second", action="store_true", help="skip the code + multilingual table")
    g.add_argument("--skip-scaling", action="store_true", help="skip the forward-pass scaling table")
    g.add_argument(
        "--quick",
        action="store_true",
        help="smoke test, a preset of the caps below (each explicit flag wins): --max-val-bytes 8192 "
        "--recon-lines 16 --prompts 64 512 --new 32 --repeats 1 --sizes 1024 4096 (own cache folders)",
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
    if args.recon_lines is None and q:
        args.recon_lines = 16
    if args.max_val_bytes is None and q:
        args.max_val_bytes = 8192
    return args


# ---- shared helpers ----------------------------------------------------------------------------
def load_yaml(path: str) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text())


def budget_of(args, dataset: str) -> float:
    return args.budget_minutes if dataset == PRIMARY else args.second_budget_minutes


def job_dir(args, model: str, dataset: str) -> Path:
    tag = f"{model}-{dataset}-{budget_of(args, dataset):g}min" + ("-quick" if args.quick else "")
    return Path(args.cache_dir) / tag


def score_name(args) -> str:
    """The score result's file: scores under explicit caps (--max-val-bytes, --recon-lines) are kept
    apart from full ones (--quick has its own folders already)."""
    caps = []
    if not args.quick and args.max_val_bytes:
        caps.append(f"val{args.max_val_bytes}")
    if not args.quick and args.recon_lines:
        caps.append(f"rec{args.recon_lines}")
    return "-".join(["score", *caps]) + ".json"


def scaling_path(args, model: str, size: int) -> Path:
    tag = f"scaling-{args.budget_minutes:g}min" + ("-quick" if args.quick else "")
    return Path(args.cache_dir) / tag / f"{model}-{size}.json"


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.rename(path)  # atomic: a killed phase leaves no half-written result


def val_texts(args, dataset: str) -> dict[str, bytes]:
    root = Path(args.data_root)
    out = {}
    for name, rel in DATASETS[dataset]["val"].items():
        data = (root / rel).read_bytes()
        out[name] = data[: args.max_val_bytes] if args.max_val_bytes else data
    return out


def val_lines(data: bytes, limit: int | None) -> list[bytes]:
    """The non-empty lines of a val text, each to be encoded as its own document."""
    lines = [ln for ln in data.split(b"\n") if ln.strip()]
    return lines[:limit] if limit else lines


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def machine() -> str:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}"
    )


# ---- models ------------------------------------------------------------------------------------
def matched_configs(args) -> dict:
    """hier_ae's config and the peers' configs sized to its count; the counts of all three.

    The search runs once; its result is cached beside the results, keyed by the config's text.
    """
    import hashlib

    from transformers import BltConfig, LlamaConfig

    from bench.peers import blt_matched, count_on_meta, llama_matched
    from hier_ae import HierAEConfig, HierAEModel

    text = Path(args.config).read_text()
    cfg = load_yaml(args.config)
    path = Path(args.cache_dir) / f"matched-{hashlib.sha1(text.encode()).hexdigest()[:10]}.json"
    found = read_json(path)
    if found is None:
        target = count_on_meta(lambda: HierAEModel(HierAEConfig(**cfg["model"])))
        llama_cfg, n_llama = llama_matched(target)
        blt_cfg, n_blt = blt_matched(target)
        found = {
            "llama": llama_cfg.to_dict(),
            "blt": blt_cfg.to_dict(),
            "counts": {"hier_ae": target, "llama": n_llama, "blt": n_blt},
        }
        write_json(path, found)
    return {
        "hier_ae": cfg,
        "llama": LlamaConfig.from_dict(found["llama"]),
        "blt": BltConfig.from_dict(found["blt"]),
        "counts": found["counts"],
    }


def load_trained(model: str, folder: Path):
    """A trained model folder as a causal LM (hier_ae through the Auto classes, as a user loads it)."""
    from transformers import AutoModelForCausalLM, BltForCausalLM, LlamaForCausalLM

    if model == "hier_ae":
        m = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    elif model == "llama":
        m = LlamaForCausalLM.from_pretrained(folder)
    else:
        m = BltForCausalLM.from_pretrained(folder)
    return m.eval()


def logits_fn(model: str, lm, zero_context: bool = False):
    """ids (B, T) -> logits (B, T, V), row t predicting ids[t + 1]; no cache."""
    if model == "hier_ae":
        return lambda ids: lm(input_ids=ids, use_cache=False, zero_context=zero_context).logits
    return lambda ids: lm(input_ids=ids, use_cache=False).logits


def patcher_share(args, dataset: str) -> float:
    """The share of the budget that BLT's entropy model trains for: the share hier_ae's level-0 entropy
    stage took in its (cached) run on the same data, else that stage's share of the configured steps."""
    done = read_json(job_dir(args, "hier_ae", dataset) / "train.json")
    if done is None:
        return BLT_PATCHER_SHARE
    first = done["report"]["stages"][0]
    return first["seconds"] / done["budget_s"]


# ---- phases (each runs in a worker subprocess) --------------------------------------------------
def phase_train(args, model: str, dataset: str) -> dict:
    from bench.peers import build_blt, build_llama, config_label, count_parameters, describe
    from bench.training import train_blt, train_hier_ae, train_llama
    from hier_ae import HierAEByteTokenizer
    from hier_ae.data.batching import DocumentCropper

    cfgs = matched_configs(args)
    hier_cfg = cfgs["hier_ae"]
    seq_len, batch_size = int(hier_cfg["data"]["seq_len"]), int(hier_cfg["data"]["batch_size"])
    docs = [(Path(args.data_root) / rel).read_bytes() for rel in DATASETS[dataset]["train"]]
    # every model reads the same seeded crops; one file is one document, crops start anywhere
    batches = DocumentCropper(docs, batch_size, seq_len, seed=0, p_doc_start=0.0)
    budget_s = 60 * budget_of(args, dataset)
    folder = job_dir(args, model, dataset) / "model"
    rss0 = rss_mb()
    if model == "hier_ae":
        # the calibration reads its own stream, so the training batches stay the ones the peers read
        calib = DocumentCropper(docs, batch_size, seq_len, seed=1, p_doc_start=0.0)
        net, rep = train_hier_ae(
            hier_cfg["model"], hier_cfg["training"]["stages"], batches, budget_s, calib_batches=calib
        )
        shape = f"hier_ae: {config_label(args.config)}"
        n = count_parameters(net)
        net.save_pretrained(folder)
        HierAEByteTokenizer().save_pretrained(folder)
    elif model == "llama":
        net = build_llama(cfgs["llama"])
        rep = train_llama(net, batches, budget_s, PEER_LR)
        shape, n = describe(cfgs["llama"]), count_parameters(net)
        net.save_pretrained(folder)
    else:
        net = build_blt(cfgs["blt"])
        share = patcher_share(args, dataset)
        rep = train_blt(net, batches, budget_s, PEER_LR, share, BLT_MEAN_PATCH)
        rep["patcher_share"] = share
        shape, n = describe(cfgs["blt"]), count_parameters(net)
        net.save_pretrained(folder)
    return {
        "model": model,
        "dataset": dataset,
        "budget_s": budget_s,
        "parameters": n,
        "counts": cfgs["counts"],
        "shape": shape,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "train_seconds": rep["seconds"],
        "train_bytes": rep["tokens"],
        "train_bytes_per_s": rep["tokens"] / max(rep["seconds"], 1e-9),
        "report": rep,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss0,
    }


def phase_score(args, model: str, dataset: str) -> dict:
    import torch

    from bench.scoring import score_text
    from hier_ae.evaluation.reports import codebook_usage, reconstruction_report

    lm = load_trained(model, job_dir(args, model, dataset) / "model")
    context = read_json(job_dir(args, model, dataset) / "train.json")["seq_len"]
    rss0 = rss_mb()
    out = {"model": model, "dataset": dataset, "val": {}}
    for name, data in val_texts(args, dataset).items():
        res = {"predict": score_text(logits_fn(model, lm), data, context, args.score_batch)}
        print(f"  [{model} {name}] {res['predict']['bits_per_byte']:.4f} bits/byte", flush=True)
        if model == "hier_ae" and (dataset == PRIMARY or args.second_extras):
            res["zero_context"] = score_text(
                logits_fn(model, lm, zero_context=True), data, context, args.score_batch
            )
            limit = args.recon_lines or (None if dataset == PRIMARY else SECOND_RECON_LINES)
            # every figure is a sum over lines: sorted by length, a decode batch waits little for its
            # longest row (decoding streams one position per step for the whole batch)
            lines = sorted(val_lines(data, limit), key=len)
            t0 = time.perf_counter()
            with torch.inference_mode():
                res["reconstruction"] = reconstruction_report(lm.model, lines, batch_size=args.recon_batch)
                res["reconstruction"]["seconds"] = time.perf_counter() - t0
                res["codebook_usage"] = codebook_usage(lm, lines, batch_size=args.recon_batch)
            print(
                f"  [{model} {name}] reconstruct {100 * res['reconstruction']['exact_match']:.2f}% of "
                f"{len(lines)} lines in {res['reconstruction']['seconds']:.0f}s",
                flush=True,
            )
        out["val"][name] = res
    out["peak_rss_mb"] = peak_rss_mb()
    out["rss_before_mb"] = rss0
    return out


def phase_generate(args, model: str, dataset: str) -> dict:
    import torch

    from bench.generation import cache_check, time_generation

    lm = load_trained(model, job_dir(args, model, dataset) / "model")
    text = (
        Path(args.data_root) / DATASETS[dataset]["val"][next(iter(DATASETS[dataset]["val"]))]
    ).read_bytes()
    while len(text) < max(args.prompts):
        text += text

    def prompt(n):
        return torch.tensor([[2] + [b + 3 for b in text[: n - 1]]])  # (1, n)

    def timings(use_cache: bool, new: int) -> list[dict]:
        rows = []
        for n in args.prompts:
            ids = prompt(n)
            # the prefill alone (one new byte); uncached, one run of it: it only sizes the runs below
            # and every uncached step costs about the same (a full forward pass)
            t_pre = time_generation(lm, ids, 1, args.repeats if use_cache else 1, use_cache=use_cache)
            if not use_cache:
                # every uncached step is a full forward pass over the prompt and what follows: the
                # cost per byte is flat, so fewer new bytes give the rate (within --uncached-seconds)
                fit = int(args.uncached_seconds / (args.repeats * max(t_pre, 1e-3)))
                new = max(2, min(new, fit))
            t_all = time_generation(lm, ids, new, args.repeats, use_cache=use_cache)
            rows.append(
                {
                    "prompt": n,
                    "new": new,
                    "seconds": t_all,
                    "bytes_per_s": new / t_all,
                    "ms_per_byte_after_prefill": 1e3 * (t_all - t_pre) / max(new - 1, 1),
                }
            )
            print(f"  [{model}] prompt {n}, cache {use_cache}: {new / t_all:.1f} bytes/s", flush=True)
        return rows

    # the fastest cache whose greedy output equals the uncached output, else no cache
    check = cache_check(lm, prompt(64), new=min(64, args.new))
    valid = check["tokens_equal"]
    if valid:
        rows, note = timings(True, args.new), ""
    else:
        why = check["error"] or f"cached output differs (max logit gap {check['max_logit_diff']:.3g})"
        new = min(args.new, args.uncached_new)
        note = f"{why}: timed uncached over {new} new bytes or fewer (each step is a full forward pass)"
        rows = timings(False, new)
    # a cache that runs but disagrees: timed too, for information only (not a valid result)
    invalid_cached = timings(True, args.new) if not valid and check["error"] is None else None
    return {
        "model": model,
        "use_cache": valid,
        "cache_check": check,
        "note": note,
        "new": args.new,
        "repeats": args.repeats,
        "rows": rows,
        "invalid_cached_rows": invalid_cached,
        "peak_rss_mb": peak_rss_mb(),
    }


def phase_scaling(args, model: str, size: int) -> dict:
    import torch

    lm = load_trained(model, job_dir(args, model, PRIMARY) / "model")
    fn = logits_fn(model, lm)
    text = (Path(args.data_root) / DATASETS[PRIMARY]["train"][0]).read_bytes()
    while len(text) < size:
        text += text
    ids = torch.tensor([[2] + [b + 3 for b in text[: size - 1]]])  # (1, size)
    with torch.inference_mode():
        fn(ids[:, :256])  # warm-up: kernels, lazy buffers
        rss0 = rss_mb()
        t0 = time.perf_counter()
        fn(ids)
        seconds = time.perf_counter() - t0
    return {
        "model": model,
        "bytes": size,
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "peak_delta_mb": peak_rss_mb() - rss0,
    }


PHASES = {"train": phase_train, "score": phase_score, "generate": phase_generate, "scaling": phase_scaling}


def worker(args) -> None:
    import torch

    phase, model, key = args.worker
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    if phase == "scaling":
        res = PHASES[phase](args, model, int(key))
        path = scaling_path(args, model, int(key))
    else:
        res = PHASES[phase](args, model, key)
        path = job_dir(args, model, key) / (score_name(args) if phase == "score" else f"{phase}.json")
    res["phase_seconds"] = time.perf_counter() - t0
    write_json(path, res)


# ---- the plan ------------------------------------------------------------------------------------
def estimate_minutes(args, models: list[str], datasets: list[str]) -> dict[str, float]:
    """Minutes per part of a run with these arguments: training from the budgets, the rest estimated
    from the EST_* rates (an estimate until a run measures it; cached phases are not subtracted)."""
    parts: dict[str, float] = {}
    n_proc = 0
    for ds in datasets:
        parts[f"train ({ds})"] = len(models) * budget_of(args, ds)
        n_proc += 2 * len(models)
        sizes = {name: len(d) for name, d in val_texts(args, ds).items()}
        seconds = 0.0
        for m in models:
            passes = 2 if m == "hier_ae" and (ds == PRIMARY or args.second_extras) else 1  # + zeroed
            seconds += passes * sum(sizes.values()) / EST_SCORE_BYTES_PER_S[m]
            if passes == 2:
                root = Path(args.data_root)
                for rel in DATASETS[ds]["val"].values():
                    limit = args.recon_lines or (None if ds == PRIMARY else SECOND_RECON_LINES)
                    lines = len(val_lines((root / rel).read_bytes(), limit))
                    seconds += lines / EST_RECON_LINES_PER_S
        parts[f"score ({ds})"] = seconds / 60
    # cached: about linear in the new bytes and runs; BLT uncached: its longest prompt's forward passes
    scale = (args.new * args.repeats * len(args.prompts)) / (256 * 3 * 3)
    blt_scale = (max(args.prompts) / 8192) ** 2 * args.repeats / 3
    parts["generate"] = sum(EST_GENERATE_S[m] * (blt_scale if m == "blt" else scale) for m in models) / 60
    n_proc += len(models)
    if not args.skip_scaling:
        seconds = 0.0
        for m in ("hier_ae", "llama"):
            if m in models:
                a, b = EST_SCALING_S_PER_KB[m]
                seconds += sum(a * n / 1024 + b * (n / 1024) ** 2 for n in args.sizes)
                n_proc += len(args.sizes)
        parts["scaling"] = seconds / 60
    parts["process start-ups"] = n_proc * EST_STARTUP_S / 60
    return parts


# ---- orchestration -----------------------------------------------------------------------------
def run_phase(argv: list[str], phase: str, model: str, key: str, path: Path) -> dict:
    """Run one phase in a fresh process unless its cached result exists; return the result."""
    if path.exists():
        print(f"[{phase} {model} {key}] cached: {path}", flush=True)
        return read_json(path)
    print(f"[{phase} {model} {key}] running", flush=True)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "bench.run", *argv, "--worker", phase, model, key]  # same cwd
    subprocess.run(cmd, check=True)
    print(f"[{phase} {model} {key}] done in {time.perf_counter() - t0:.0f}s", flush=True)
    return read_json(path)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
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
    results: dict = {"train": {}, "score": {}, "generate": {}, "scaling": {}}
    for dataset in datasets:
        for m in models:
            d = job_dir(args, m, dataset)
            results["train"][m, dataset] = run_phase(argv, "train", m, dataset, d / "train.json")
            results["score"][m, dataset] = run_phase(argv, "score", m, dataset, d / score_name(args))
            if dataset == PRIMARY:
                results["generate"][m] = run_phase(argv, "generate", m, dataset, d / "generate.json")
    if not args.skip_scaling:
        for size in args.sizes:
            for m in ("hier_ae", "llama"):
                if m in models:
                    results["scaling"][m, size] = run_phase(
                        argv, "scaling", m, str(size), scaling_path(args, m, size)
                    )
    compress = {
        ds: {name: compressor_table(data) for name, data in val_texts(args, ds).items()} for ds in datasets
    }
    from bench.report import render

    text = render(
        args, argv, cfgs, counts, results, compress, datasets, machine(), time.perf_counter() - t_start, plan
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    print(f"report: {args.out} ({(time.perf_counter() - t_start) / 60:.1f} min this invocation)")


if __name__ == "__main__":
    main()
