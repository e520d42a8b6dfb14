"""What a run of `python -m bench.run` runs and where its results live: the models, the data, the
budgets, the cache paths, the job plan and the estimate of its minutes.

Every phase of every model (train, flops, score, recon, generate, scaling) is one job, run in its own
process and cached as JSON under `--cache-dir`, keyed by model, data and budget (`job_dir`); `jobs`
lists them in the order they run, `result_path` names each one's file, for the orchestration and for
the worker that writes it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

MODELS = ("hier_ae", "llama", "blt")
SCALING_MODELS = ("hier_ae", "llama")  # the forward-pass scaling table
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

# Estimates of the parts other than training, for the plan printed at start: measured on the smoke
# run's models (bench/notes.md) with 1 torch thread on a busy 2-core machine, so on the safe side for
# 2 idle cores; the report sets each part's measured minutes beside them.
EST_STARTUP_S = 4.0  # one phase process: import torch + transformers, load the model
EST_SCORE_BYTES_PER_S = {"hier_ae": 3500.0, "llama": 6000.0, "blt": 9000.0}  # windows 256 / stride 128
EST_RECON_LINES_PER_S = 40.0  # hier_ae decode, lines sorted by length, --recon-batch 128
EST_FLOPS_S = {"hier_ae": 20.0, "llama": 5.0, "blt": 10.0}  # one batch per stage, counted (bench/flops.py)
EST_GENERATE_S = {"hier_ae": 60.0, "llama": 45.0, "blt": 150.0}  # 64 / 1k / 8k prompts, 256 new, 3 runs
EST_SCALING_S_PER_KB = {"hier_ae": (0.135, 0.019), "llama": (0.074, 0.046)}  # s = a x KB + b x KB^2
# the reconstruction benchmark per val text: from its baseline (bench/experiments.md: 88 s for 4 texts
# x (256 lines + 32 docs) with configs/tiny.yaml, 1 thread) x 5 for small's size and its second level
EST_RECON_BENCH_S = {"line": 0.25, "doc": 2.5}


# ---- budgets and cache paths ---------------------------------------------------------------------
def budget_of(args, dataset: str) -> float:
    return args.budget_minutes if dataset == PRIMARY else args.second_budget_minutes


def job_dir(args, model: str, dataset: str) -> Path:
    """A model's folder for one dataset and budget; a peer sized by `--peer-params` gets its own."""
    size = args.peer_targets.get(model)
    tag = f"{model}{'' if size is None else f'-{size}p'}-{dataset}-{budget_of(args, dataset):g}min"
    tag += "-quick" if args.quick else ""
    return Path(args.cache_dir) / tag


def val_cap(args) -> str:
    """The part of each val text scored, as a file-name tag: '' (all of it), 'val4096' (the first
    4096 bytes), 'skip40000' (all after the first 40000), 'skip40000-val4096' (4096 bytes after those)."""
    parts = []
    if args.val_skip_bytes:
        parts.append(f"skip{args.val_skip_bytes}")
    if not args.quick and args.max_val_bytes:
        parts.append(f"val{args.max_val_bytes}")
    return "-".join(parts)


def score_name(args) -> str:
    """The score result's file: scores under explicit caps (--max-val-bytes, --recon-lines) are kept
    apart from full ones (--quick has its own folders already)."""
    part = val_cap(args)
    caps = [part] if part else []
    if not args.quick and args.recon_lines:
        caps.append(f"rec{args.recon_lines}")
    return "-".join(["score", *caps]) + ".json"


def scaling_path(args, model: str, size: int) -> Path:
    tag = f"scaling-{args.budget_minutes:g}min" + ("-quick" if args.quick else "")
    return Path(args.cache_dir) / tag / f"{model}-{size}.json"


def recon_name(args) -> str:
    """The reconstruction benchmark's file, named by its samples (and by --max-val-bytes, as scores)."""
    part = val_cap(args)
    cap = f"-{part}" if part else ""
    return f"recon-l{args.recon_sample_lines}-d{args.recon_sample_docs}{cap}.json"


def result_path(args, phase: str, model: str, key: str) -> Path:
    """The cached result of one job; `key` is the dataset, or the input bytes of a scaling job."""
    if phase == "scaling":
        return scaling_path(args, model, int(key))
    name = {"score": score_name(args), "recon": recon_name(args)}.get(phase, f"{phase}.json")
    return job_dir(args, model, key) / name


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.rename(path)  # atomic: a killed phase leaves no half-written result


# ---- data ----------------------------------------------------------------------------------------
def val_texts(args, dataset: str) -> dict[str, bytes]:
    root = Path(args.data_root)
    out = {}
    for name, rel in DATASETS[dataset]["val"].items():
        data = (root / rel).read_bytes()
        data = data[args.val_skip_bytes :]
        out[name] = data[: args.max_val_bytes] if args.max_val_bytes else data
    return out


def val_lines(data: bytes, limit: int | None) -> list[bytes]:
    """The non-empty lines of a val text, each to be encoded as its own document."""
    lines = [ln for ln in data.split(b"\n") if ln.strip()]
    return lines[:limit] if limit else lines


# ---- models ------------------------------------------------------------------------------------
def load_yaml(path: str) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text())


def matched_configs(args) -> dict:
    """hier_ae's config and the peers' configs sized to its count (or to `--peer-params`); the counts
    of all three.

    The search runs once; its result is cached beside the results, keyed by the config's text and the
    peers' targets.
    """
    from transformers import BltConfig, LlamaConfig

    from bench.peers import blt_matched, count_on_meta, llama_matched
    from hier_ae import HierAEConfig, HierAEModel

    text = Path(args.config).read_text()
    cfg = load_yaml(args.config)
    targets = args.peer_targets
    key = text + "".join(f"\n{m}={n}" for m, n in sorted(targets.items()))  # = text without targets
    path = Path(args.cache_dir) / f"matched-{hashlib.sha1(key.encode()).hexdigest()[:10]}.json"
    found = read_json(path)
    if found is None:
        target = count_on_meta(lambda: HierAEModel(HierAEConfig(**cfg["model"])))
        llama_cfg, n_llama = llama_matched(targets.get("llama", target))
        blt_cfg, n_blt = blt_matched(targets.get("blt", target))
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


# ---- the job plan --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One phase of one model, in its own process: `python -m bench.run ARGS --worker PHASE MODEL KEY`."""

    phase: str  # a key of bench.phases.PHASES
    model: str
    key: str  # the dataset, or the input bytes of a scaling job
    path: Path  # its cached result

    @property
    def slot(self):
        """Where the run keeps its result: results[phase][slot]."""
        if self.phase == "generate":
            return self.model
        if self.phase == "scaling":
            return self.model, int(self.key)
        return self.model, self.key


def jobs(args, models: list[str], datasets: list[str]) -> list[Job]:
    """Every job of a run, in order: per dataset and model, train, its FLOPs per byte, then score (then,
    for hier_ae, the reconstruction benchmark; then generate, on the main data); then the scaling table."""

    def job(phase, model, key):
        return Job(phase, model, key, result_path(args, phase, model, key))

    out = []
    for ds in datasets:
        for m in models:
            out += [job("train", m, ds), job("flops", m, ds), job("score", m, ds)]
            if m == "hier_ae" and not args.skip_recon:
                out.append(job("recon", m, ds))
            if ds == PRIMARY and not args.skip_generate:
                out.append(job("generate", m, ds))
    if not args.skip_scaling:
        out += [job("scaling", m, str(n)) for n in args.sizes for m in SCALING_MODELS if m in models]
    return out


def estimate_minutes(args, models: list[str], datasets: list[str]) -> dict[str, float]:
    """Minutes per part of a run with these arguments: training from the budgets, the rest estimated
    from the EST_* rates (an estimate until a run measures it; cached phases are not subtracted)."""
    parts: dict[str, float] = {}
    for ds in datasets:
        parts[f"train ({ds})"] = len(models) * budget_of(args, ds)
        parts[f"flops ({ds})"] = sum(EST_FLOPS_S[m] for m in models) / 60
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
        if "hier_ae" in models and not args.skip_recon:
            per_text = args.recon_sample_lines * EST_RECON_BENCH_S["line"]
            per_text += args.recon_sample_docs * EST_RECON_BENCH_S["doc"]
            parts[f"recon ({ds})"] = len(sizes) * per_text / 60
    # cached: about linear in the new bytes and runs; BLT uncached: its longest prompt's forward passes
    scale = (args.new * args.repeats * len(args.prompts)) / (256 * 3 * 3)
    blt_scale = (max(args.prompts) / 8192) ** 2 * args.repeats / 3
    if not args.skip_generate:
        parts["generate"] = sum(EST_GENERATE_S[m] * (blt_scale if m == "blt" else scale) for m in models) / 60
    if not args.skip_scaling:
        seconds = 0.0
        for m in SCALING_MODELS:
            if m in models:
                a, b = EST_SCALING_S_PER_KB[m]
                seconds += sum(a * n / 1024 + b * (n / 1024) ** 2 for n in args.sizes)
        parts["scaling"] = seconds / 60
    parts["process start-ups"] = len(jobs(args, models, datasets)) * EST_STARTUP_S / 60
    return parts
