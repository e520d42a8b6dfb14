"""Train hier_ae from a YAML config: the staged curriculum, save, reload with the Auto classes, report.

    python examples/train.py --config configs/tiny.yaml --output-dir runs/tiny
    python examples/train.py --config configs/tiny.yaml --set data.batch_size=8 --set training.seed=1

Every stage saves the full model to OUTPUT_DIR/stages/<stage>; the final folder OUTPUT_DIR/model
holds safetensors, config, tokenizer and code, and loads with
`AutoModel.from_pretrained(OUTPUT_DIR/model, trust_remote_code=True)` without hier_ae installed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
import yaml
from transformers import AutoModel, AutoTokenizer

from hier_ae import HierAEByteTokenizer, HierAEConfig, HierAEModel
from hier_ae.batching import DocumentCropper
from hier_ae.corpus import default_corpus
from hier_ae.evaluation import reconstruction_report
from hier_ae.stages import Stage, train_stage


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """`--set a.b.c=value` (value parsed as YAML) overrides any config key."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. data.batch_size=8")
        key, value = item.split("=", 1)
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return cfg


def load_docs(data_cfg: dict, split: str) -> list[bytes]:
    source = data_cfg.get("source", "default")
    if source == "default":
        return default_corpus(split, max_bytes=data_cfg.get("max_bytes"))
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"data.source={source!r}: no such file; use 'default' or a text file path")
    text = path.read_bytes()
    cut = int(len(text) * 0.95)
    return [text[:cut]] if split == "train" else [text[cut:]]


def validation_lines(docs: list[bytes], n: int, max_len: int = 120) -> list[bytes]:
    """Non-empty lines of the validation documents, each to be encoded as its own document."""
    lines = [ln.strip() for d in docs for ln in d.split(b"\n")]
    lines = [ln for ln in lines if 8 <= len(ln) <= max_len]
    random.Random(0).shuffle(lines)
    return lines[:n]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="YAML file, e.g. configs/tiny.yaml")
    ap.add_argument("--output-dir", default=None, help="where stages and the final model go")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args = ap.parse_args(argv)

    cfg = apply_overrides(yaml.safe_load(Path(args.config).read_text()), args.set)
    out_dir = Path(args.output_dir or cfg.get("output_dir") or "runs/default")
    seed = int(cfg.get("training", {}).get("seed", 0))
    torch.manual_seed(seed)

    config = HierAEConfig(**cfg["model"])
    model = HierAEModel(config)
    tokenizer = HierAEByteTokenizer()
    n_params = sum(p.numel() for p in model.parameters())
    n_buffers = sum(b.numel() for b in model.buffers())
    print(f"hier_ae: {config.num_levels} level(s), {n_params:,} parameters (+{n_buffers:,} buffer values)")

    data_cfg = cfg.get("data", {})
    train_docs = load_docs(data_cfg, "train")
    val_docs = load_docs(data_cfg, "validation")
    print(f"data: {len(train_docs)} training documents, {sum(map(len, train_docs)):,} bytes")
    batches = DocumentCropper(
        train_docs,
        batch_size=int(data_cfg.get("batch_size", 16)),
        seq_len=int(data_cfg.get("seq_len", 256)),
        seed=seed,
        p_doc_start=float(data_cfg.get("p_doc_start", 0.5)),
    )

    t_start = time.perf_counter()
    for spec in cfg["training"]["stages"]:
        stage = Stage(**spec)
        t0 = time.perf_counter()

        def log(step, m, stage=stage):
            shown = " ".join(f"{k}={v:.3f}" for k, v in m.items())
            print(f"[{stage.name}] step {step:5d} {shown}", flush=True)

        train_stage(model, stage, batches, log_every=max(stage.steps // 10, 1), log=log)
        model.save_pretrained(out_dir / "stages" / stage.name)
        print(f"[{stage.name}] done in {time.perf_counter() - t0:.1f}s -> {out_dir / 'stages' / stage.name}")
    train_time = time.perf_counter() - t_start

    final = out_dir / "model"
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)

    # reload through the Auto classes, as a user would
    reloaded = AutoModel.from_pretrained(final, trust_remote_code=True).eval()
    AutoTokenizer.from_pretrained(final, trust_remote_code=True)
    lines = validation_lines(val_docs, int(cfg.get("evaluation", {}).get("lines", 64)))
    report = reconstruction_report(reloaded, lines)
    report["train_seconds"] = round(train_time, 1)
    report["parameters"] = n_params
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    print(f"model folder: {final}")
    print("reconstruction (autoencoder; the decoder reads the codes - not a language-model score):")
    print(f"  exact-match on {report['documents']} held-out lines: {report['exact_match']:.1%}")
    for lv, (tps, bpc) in enumerate(zip(report["tokens_per_segment"], report["bytes_per_code"])):
        print(f"  level {lv}: {tps:.2f} tokens per segment, {bpc:.2f} bytes per code")
    print(f"  code bits per byte (top level): {report['code_bits_per_byte']:.3f}")
    print(f"metrics: {out_dir / 'metrics.json'}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
