"""Train hier_ae with Accelerate from one YAML config: data, staged curriculum, checkpoints, model card.

    accelerate launch examples/train.py --config configs/tiny.yaml --output-dir runs/tiny
    accelerate launch examples/train.py --config configs/small.yaml --data docs.jsonl --mixed-precision bf16
    accelerate launch examples/train.py --config configs/tiny.yaml --output-dir runs/tiny --resume
    python examples/train.py --config configs/tiny.yaml --set data.batch_size=8 --set training.seed=1

`--set KEY.PATH=VALUE` overrides any config key (VALUE is parsed as YAML); the named flags are
shorthands for the keys they document. Outputs under OUTPUT_DIR:

    stages/<stage>/     the full model after each stage (the next stage loads it strictly)
    checkpoints/step-*  crash-safe training state (`--resume` continues from the newest)
    model/              the final save_pretrained folder: safetensors, config, tokenizer, code, README.md card
    losses.jsonl        the objective of every optimizer step (a step dropped under
                        `training.on_nonfinite: skip` has "loss": null and "skipped": the terms)
    metrics.json        the final evaluation
    logs/               TensorBoard (or MLflow) logs through Accelerate

Training on code shards (`examples/encode_dataset.py`): `--set data.code_shards=DIR` trains the
stages above the stored codes on them instead of re-encoding bytes: the model is the one the shards
were made with (its folder, from the manifest, weights hash checked; the config's `model:` section
is not used), `data.code_level` picks the stored level (default: the top level, so `top_lm` trains;
a lower level lets `entropy` / `autoencoder` of the levels above it train). Rows are crops of
`data.seq_len` tokens of the framed code stream (bos, codes, eos); validation encodes the held-out
documents of `data.source` with the same model.

A stage may read rows of its own (`stages.Stage`, `training/batch_streams.py`): `seq_len` /
`batch_size` in a stage override the data section's for that stage, and a top_lm stage with
`rows: codes` trains on the training documents' top codes, encoded once when it starts, e.g.
`{kind: top_lm, steps: 3000, rows: codes, seq_len: 512}` (rows of 512 codes, as long as the codec's
chunks, without encoding every row again at every step). A stage's `p_line` (default: the data
section's) is its share of rows that are one line framed as a document; with `rows: codes` those
lines are encoded too, and `encode_bytes` caps the encoding pass at a seeded sample of the training
documents. Validation keeps the data section's rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed

from hier_ae import HierAEByteTokenizer, HierAEConfig, HierAEModel
from hier_ae.cli import run
from hier_ae.configuration_hier_ae import EOS_ID
from hier_ae.data.batching import DocumentCropper, frame_document, pad_rows
from hier_ae.data.sources import Documents, load_documents
from hier_ae.evaluation.report_lines import report_lines
from hier_ae.evaluation.reports import (
    bits_per_byte,
    codec_report,
    predict_loglikelihoods,
    reconstruction_report,
)
from hier_ae.training.batch_streams import BatchStreams
from hier_ae.training.checkpointing import (
    check_finite_state,
    latest_checkpoint,
    load_model_strict,
    load_rank_state,
    read_progress,
    save_checkpoint,
)
from hier_ae.training.run_config import check_run_config
from hier_ae.training.stages import Stage, prepare_stage, stage_metrics, train_stage
from hier_ae.training.step_budget import StepBudget

# ---- config --------------------------------------------------------------------------------------
SHORTHANDS = {  # flag -> config key
    "data": "data.source",
    "streaming": "data.streaming",
    "mixed_precision": "training.mixed_precision",
    "grad_accum": "training.gradient_accumulation_steps",
    "seed": "training.seed",
    "report_to": "training.trackers",
}


def set_key(cfg: dict, key: str, value) -> None:
    """Set `a.b.c` in nested dicts; a number indexes a list (`model.levels.0.codebook_size`)."""
    node = cfg
    *parents, leaf = key.split(".")
    for i, p in enumerate([*parents, leaf]):
        if isinstance(node, list) and not (p.isdigit() and int(p) < len(node)):
            raise ValueError(
                f"--set {key}: {p!r} is not an index of a list of {len(node)} items (0..{len(node) - 1})."
            )
        if i == len(parents):
            break
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    if isinstance(node, list):
        node[int(leaf)] = value
    else:
        node[leaf] = value


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """`--set a.b.c=value` (value parsed as YAML) overrides any config key."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. data.batch_size=8")
        key, value = item.split("=", 1)
        set_key(cfg, key, yaml.safe_load(value))
    return cfg


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="YAML file, e.g. configs/tiny.yaml")
    ap.add_argument("--output-dir", default=None, help="where stages, checkpoints and the model go")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    g = ap.add_argument_group("shorthands for config keys")
    g.add_argument("--data", help="data.source: 'default', a file or folder, or a Hub dataset 'owner/name'")
    g.add_argument("--streaming", action="store_true", default=None, help="data.streaming (Hub datasets)")
    g.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], help="training.mixed_precision")
    g.add_argument("--grad-accum", type=int, help="training.gradient_accumulation_steps")
    g.add_argument("--seed", type=int, help="training.seed")
    g.add_argument("--report-to", nargs="+", help="training.trackers: tensorboard, mlflow, or none")
    r = ap.add_argument_group("resume and publish")
    r.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints' newest")
    r.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the final model folder to the Hub")
    r.add_argument("--hub-private", action="store_true", help="create the Hub repository as private")
    return ap.parse_args(argv)


def load_config(args) -> dict:
    cfg = yaml.safe_load(Path(args.config).read_text())
    for flag, key in SHORTHANDS.items():
        value = getattr(args, flag)
        if value is not None:
            set_key(cfg, key, value)
    return check_run_config(apply_overrides(cfg, args.set))


def flat_scalars(d: dict, prefix: str = "") -> dict:
    """Config as flat scalars for tracker hyper-parameters (lists become strings)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_scalars(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


# ---- validation and samples ----------------------------------------------------------------------
def display_metrics(metrics: dict, stage: Stage) -> dict:
    """At level 0 tokens are bytes: the reconstruct CE is 'recon bits/byte' (never 'bpb')."""
    if (stage.level == 0 or stage.kind in ("predict", "joint")) and "recon bits/token" in metrics:
        metrics = {("recon bits/byte" if k == "recon bits/token" else k): v for k, v in metrics.items()}
    return metrics


@torch.no_grad()
def validate(model, stage: Stage, batches: list, start_level: int = 0) -> dict:
    """Mean objective and stage metrics over fixed held-out batches (eval mode: no statistic moves)."""
    plan = prepare_stage(model, stage, start_level)
    model.eval()
    device = next(model.parameters()).device
    sums: dict[str, float] = {}
    for ids, mask in batches:
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), **plan.forward_kwargs)
        for k, v in {"loss": plan.objective(out).item(), **stage_metrics(out, stage)}.items():
            sums[k] = sums.get(k, 0.0) + v
    model.train()
    return display_metrics({k: v / len(batches) for k, v in sums.items()}, stage)


def predict_bits_per_byte(model, docs: list[bytes], seq_len: int, batch_size: int = 16) -> float:
    """Predict-mode (causal LM) bits per byte of text over crops of held-out documents.

    Each crop is a document's first `seq_len - 1` bytes, read as one row `<s>` + bytes (`seq_len`
    ids, the training length); every byte is scored given `<s>` and the bytes before it, `</s>` is
    not scored (`reports.bits_per_byte`, the one computation of bits per byte).
    """
    crops = [d[: seq_len - 1] for d in docs]
    ll = predict_loglikelihoods(model, crops, window=seq_len, stride=seq_len, batch_size=batch_size)
    return bits_per_byte(ll, crops)


@torch.no_grad()
def text_sample(model, line: bytes, stage: Stage, n_new: int = 24) -> str:
    """A held-out line encoded and decoded and, once a top LM trains, greedily continued."""
    tok = HierAEByteTokenizer()
    ids, mask = pad_rows([frame_document(line)])
    enc = model.encode(ids, mask)
    rec = model.decode(enc.top_codes, enc.top_mask).sequences[0]
    text = f"recon: {tok.decode(rec, skip_special_tokens=True)!r}"
    if stage.kind != "entropy" and stage.kind != "autoencoder" and hasattr(model, "predict"):
        prompt = frame_document(line)[: max(len(line) // 2, 1)][None]  # (1, T)
        for _ in range(n_new):
            nxt = model.predict(prompt).logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
            prompt = torch.cat([prompt, nxt], dim=1)
            if int(nxt) == EOS_ID:
                break
        text += f" | greedy: {tok.decode(prompt[0], skip_special_tokens=True)!r}"
    return text


def hardware(accelerator) -> str:
    if accelerator.device.type == "cuda":
        name = torch.cuda.get_device_name(accelerator.device)
    else:
        name = (
            f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads/process)"
        )
    return f"{accelerator.num_processes} x {name}"


def model_for_code_shards(shards: str, code_level: int | None):
    """The model that made the code shards (its folder from the manifest, weights hash checked) and
    the level the training batches start at (`forward(start_level=...)`): code_level + 1."""
    from hier_ae.codes.shards import check_model_folder, model_fingerprint, read_manifest

    manifest = read_manifest(shards)
    folder = check_model_folder(manifest["model"]["path"])
    if model_fingerprint(folder)["weights_hash"] != manifest["model"]["weights_hash"]:
        raise ValueError(
            f"data.code_shards={shards}: the model folder {folder} changed since the shards were written "
            "(weights hash differs); re-encode the corpus with examples/encode_dataset.py."
        )
    if manifest["data"].get("split") != "train":
        print(
            f"warning: the code shards {shards} hold split {manifest['data'].get('split')!r}, not 'train': "
            "the held-out documents used for validation are among the training rows "
            "(encode with --split train to keep them apart)."
        )
    model = HierAEModel.from_pretrained(folder)
    top = model.num_levels - 1
    level = top if code_level is None else int(code_level)
    if not 0 <= level <= top:
        raise ValueError(f"data.code_level={code_level} is invalid: the shards hold levels 0..{top}.")
    return model, level + 1


# ---- main ----------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = load_config(args)
    out_dir = Path(args.output_dir or cfg.get("output_dir") or "runs/default")
    data_cfg, tcfg, ecfg = cfg.get("data", {}), cfg.get("training", {}), cfg.get("evaluation", {})
    seed = int(tcfg.get("seed", 0))
    trackers = [t for t in tcfg.get("trackers", ["tensorboard"]) if t and t != "none"]

    accelerator = Accelerator(
        mixed_precision=tcfg.get("mixed_precision", "no"),
        log_with=trackers or None,
        project_dir=str(out_dir / "logs"),
        # the quantisers sum their EMA accumulators by all-reduce at apply time; DDP must not overwrite
        # them with rank 0's at every forward. Every other buffer is identical across ranks.
        kwargs_handlers=[
            DistributedDataParallelKwargs(
                broadcast_buffers=False, find_unused_parameters=bool(tcfg.get("find_unused_parameters", True))
            )
        ],
    )
    main_proc = accelerator.is_main_process
    accelerator.print(
        f"accelerate: {accelerator.num_processes} process(es), {accelerator.distributed_type}, "
        f"backend {accelerator.state.backend}, device {accelerator.device}, "
        f"mixed precision {accelerator.mixed_precision}"
    )
    set_seed(seed)  # same initial weights on every process

    shards, start_level = data_cfg.get("code_shards"), 0
    if shards:
        model, start_level = model_for_code_shards(shards, data_cfg.get("code_level"))
        accelerator.print(
            f"data: code shards {shards}, codes of level {start_level - 1}; model {model.name_or_path}"
        )
        model = model.to(accelerator.device)
        config = model.config
    else:
        config = HierAEConfig(**cfg["model"])
        model = HierAEModel(config).to(accelerator.device)
    n_params = sum(p.numel() for p in model.parameters())
    accelerator.print(f"hier_ae: {config.num_levels} level(s), {n_params:,} parameters")

    # data: documents through `datasets`, cached; each process reads its own seeded crops
    with accelerator.main_process_first():
        # with code shards the training rows are the stored codes: no training bytes are read
        train_docs = Documents() if shards else load_documents(data_cfg, "train", show_progress=main_proc)
        val_docs = load_documents(data_cfg, "validation", show_progress=main_proc)
    seq_len, batch_size = int(data_cfg.get("seq_len", 256)), int(data_cfg.get("batch_size", 16))
    accelerator.print(
        f"data: {len(train_docs)} training documents ({sum(map(len, train_docs)):,} bytes), "
        f"{len(val_docs)} held out; rows of {seq_len} bytes, {batch_size} per process per micro-batch"
    )
    for name, docs in (("train", train_docs), ("validation", val_docs)):
        if docs.num_skipped:  # bad records (not text, empty, corrupt JSON lines) never crash a run
            accelerator.print(f"data: {name}: {docs.skipped_summary()}")
        if docs.capped:  # a cap that cut the source short: its tail is never trained on
            accelerator.print(f"data: {name}: WARNING: {docs.capped}")
    p_start = float(data_cfg.get("p_doc_start", 0.5))
    p_line = float(data_cfg.get("p_line", 0.0))  # rows that are one line framed as a document
    train_rows, val_rows = train_docs, val_docs
    if shards:
        from hier_ae.codes.shards import code_rows, code_rows_from_documents

        train_rows, _ = code_rows(shards, start_level - 1)
        val_rows = code_rows_from_documents(model, val_docs, start_level - 1)
        accelerator.print(
            f"data: {len(train_rows)} code rows ({sum(map(len, train_rows)):,} tokens) from {shards}"
        )

    def encode_codes(docs: list[bytes], what: str):  # top codes of training bytes, for rows: codes
        from hier_ae.codes.shards import code_rows_from_documents

        t = time.perf_counter()
        rows = code_rows_from_documents(model.eval(), docs, model.num_levels - 1)  # not DDP-wrapped
        accelerator.print(
            f"data: {len(rows)} code rows ({sum(map(len, rows)):,} codes) of {len(docs)} training "
            f"{what} ({sum(map(len, docs)):,} bytes), encoded in {time.perf_counter() - t:.1f}s"
        )
        return rows

    # the data section's stream, shared by the stages; a stage with its own rows gets its own
    batches = BatchStreams(
        train_rows,
        batch_size,
        seq_len,
        seed=seed + 1000 * accelerator.process_index,
        p_doc_start=p_start,
        p_line=0.0 if shards else p_line,
        encode_codes=None if shards else encode_codes,
    )
    val_stream = DocumentCropper(val_rows, batch_size, seq_len, seed=seed + 12345, p_doc_start=p_start)
    val_batches = [next(val_stream) for _ in range(int(ecfg.get("val_batches", 4)))]
    val_lines = report_lines(val_docs, int(ecfg.get("lines", 64)))  # each encoded as its own document

    stages = [Stage(**spec) for spec in tcfg["stages"]]
    accum = int(tcfg.get("gradient_accumulation_steps", 1))
    grad_clip = float(tcfg.get("grad_clip", 1.0))
    ckpt_every = int(tcfg.get("checkpoint_every", 100))
    eval_every = int(tcfg.get("eval_every", 0)) or None
    log_every = int(tcfg.get("log_every", 10))
    # a NaN/Inf objective or gradient: "raise" stops the run, "skip" drops the step (nonfinite.py)
    on_nonfinite = str(tcfg.get("on_nonfinite", "raise"))
    max_skips = int(tcfg.get("max_consecutive_skips", 10))
    ckpt_root = out_dir / "checkpoints"

    # resume: the newest complete checkpoint, if asked
    progress, ckpt = None, None
    if args.resume:
        ckpt = latest_checkpoint(ckpt_root)
        if ckpt is None:
            accelerator.print(f"--resume: no checkpoint under {ckpt_root}; starting from scratch")
        else:
            progress = read_progress(ckpt)
            accelerator.print(f"resuming from {ckpt}: stage {progress['stage']} step {progress['step']}")
    global_step = progress["global_step"] if progress else 0
    # stages with `minutes`: the step counts they were sized to (restored on resume, in every checkpoint)
    sized_steps = dict(progress.get("sized_steps", {})) if progress else {}
    for stage in stages:
        stage.steps = sized_steps.get(stage.name, stage.steps)
    if main_proc:
        out_dir.mkdir(parents=True, exist_ok=True)
        losses_path = out_dir / "losses.jsonl"
        if progress is None and losses_path.exists():
            losses_path.unlink()
    if trackers:
        accelerator.init_trackers("hier_ae", config=flat_scalars(cfg))

    from tqdm.auto import tqdm

    total_steps = sum(s.steps for s in stages)
    bar = tqdm(total=total_steps, initial=global_step, disable=not main_proc, unit="step", dynamic_ncols=True)
    t_start = time.perf_counter()
    for si, stage in enumerate(stages):
        if progress is not None and si < progress["stage_index"]:
            continue  # finished before the checkpoint; its folder is on disk
        start_step, on_prepared = 0, None
        if si > 0:  # resuming too: a stage with rows: codes encodes with the previous stage's levels
            prev = out_dir / "stages" / stages[si - 1].name
            load_model_strict(model, prev)
            accelerator.print(f"[{stage.name}] loaded {prev} strictly: no missing or unexpected keys")
        resuming = progress is not None and si == progress["stage_index"]
        budget = StepBudget.for_stage(stage, progress if resuming else None)  # None without `minutes`
        if resuming:
            start_step = progress["step"]

            def on_prepared(net, opt, ckpt=ckpt):
                accelerator.load_state(str(ckpt))  # weights + every buffer, optimizer, RNG
                batches.load_state_dict(load_rank_state(ckpt, accelerator.process_index), stages)

        progress = None
        stage_batches = batches.for_stage(si, stage)
        stage_start_level = model.num_levels if stage.rows == "codes" else start_level
        if stage.own_rows:
            unit = "codes" if stage_start_level else "bytes"
            accelerator.print(
                f"[{stage.name}] rows of {stage_batches.seq_len} {unit}, {stage_batches.batch_size} per "
                "process per micro-batch"
            )
        clock = {"t": time.perf_counter(), "tokens": 0}

        def on_step(step, info, si=si, stage=stage, clock=clock, budget=budget):
            nonlocal global_step
            global_step += 1
            clock["tokens"] += info["tokens"] * accelerator.num_processes
            if budget is not None and budget.sized and sized_steps.get(stage.name) != stage.steps:
                sized_steps[stage.name] = stage.steps  # sized, or sized again at a later check
                bar.total = sum(s.steps for s in stages)
                bar.write(
                    f"[{stage.name} {step}] sized to {stage.steps} steps ({stage.minutes:g} min on this "
                    f"machine; sizing {budget.sizings} of {len(budget.checks)})"
                )
            bar.update(1)
            record = {"stage": stage.name, "step": step, "loss": info["loss"]}
            if info.get("skipped"):
                record["skipped"] = info["skipped"]
                bar.write(
                    f"[{stage.name} {step}] optimizer step dropped: non-finite {', '.join(info['skipped'])}"
                )
            if main_proc:
                with open(out_dir / "losses.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
            # a dropped step has no metrics; validation and checkpoints still follow the step count
            if not info.get("skipped") and (step % log_every == 0 or step == stage.steps):
                now = time.perf_counter()
                m = display_metrics(stage_metrics(info["out"], stage), stage)
                m.update(
                    loss=info["loss"], lr=info["lr"], **{"bytes/s": clock["tokens"] / (now - clock["t"])}
                )
                clock.update(t=now, tokens=0)
                bar.set_postfix_str(f"{stage.name} " + " ".join(f"{k}={v:.3g}" for k, v in m.items()))
                accelerator.log({f"train/{stage.name}/{k}": v for k, v in m.items()}, step=global_step)
            if step == stage.steps or (eval_every and step % eval_every == 0):
                base = accelerator.unwrap_model(model)
                v = validate(base, stage, val_batches, start_level)
                accelerator.log({f"val/{stage.name}/{k}": x for k, x in v.items()}, step=global_step)
                sample = text_sample(base, val_lines[0], stage) if val_lines else ""
                bar.write(f"[{stage.name} {step}] val " + " ".join(f"{k}={x:.3g}" for k, x in v.items()))
                bar.write(f"[{stage.name} {step}] sample {sample}")
                base.train()
            if step % ckpt_every == 0 or step == stage.steps:
                save_checkpoint(
                    accelerator,
                    ckpt_root,
                    global_step,
                    {
                        "stage_index": si,
                        "stage": stage.name,
                        "step": step,
                        "sized_steps": sized_steps,
                        **(budget.state() if budget is not None else {}),
                    },
                    rank_state=batches.state_dict(),
                    keep=int(tcfg.get("keep_checkpoints", 2)),
                )
            return False

        t0 = time.perf_counter()
        train_stage(
            model,
            stage,
            stage_batches,
            accelerator=accelerator,
            grad_clip=grad_clip,
            accumulation_steps=accum,
            start_step=start_step,
            on_prepared=on_prepared,
            on_step=on_step,
            step_budget=budget,
            on_nonfinite=on_nonfinite,
            max_consecutive_skips=max_skips,
            start_level=stage_start_level,
        )
        stage_dir = out_dir / "stages" / stage.name
        check_finite_state(model, f"stage folder {stage_dir}", accelerator)
        if main_proc:
            model.save_pretrained(stage_dir)
        accelerator.wait_for_everyone()
        bar.write(f"[{stage.name}] done in {time.perf_counter() - t0:.1f}s -> {stage_dir}")
    bar.close()
    train_seconds = time.perf_counter() - t_start
    accelerator.free_memory()

    # the final folder: rank 0 writes it, evaluates the reloaded model, renders the card
    report: dict = {}
    final = out_dir / "model"
    check_finite_state(model, f"model folder {final}", accelerator)
    if main_proc:
        report = finish(model, final, cfg, stages, val_docs, val_lines, train_seconds, accelerator, args)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return report


def finish(model, final: Path, cfg, stages, val_docs, val_lines, train_seconds, accelerator, args) -> dict:
    from transformers import AutoModel, AutoTokenizer

    from hier_ae.publishing.model_card import render_model_card

    model.eval()
    model.save_pretrained(final)
    HierAEByteTokenizer().save_pretrained(final)
    # evaluate what a user loads: the folder, through the Auto classes
    reloaded = AutoModel.from_pretrained(final, trust_remote_code=True).eval()
    AutoTokenizer.from_pretrained(final, trust_remote_code=True)
    corrections = bool(cfg.get("evaluation", {}).get("corrections", True))
    report = reconstruction_report(reloaded, val_lines, corrections=corrections)
    report.update(codec_report(reloaded, val_lines) or {})
    seq_len = int(cfg.get("data", {}).get("seq_len", 256))
    n_docs = int(cfg.get("evaluation", {}).get("predict_docs", 32))
    bpb = predict_bits_per_byte(reloaded, val_docs[:n_docs], seq_len)
    report["predict_bits_per_byte"] = bpb
    report["train_seconds"] = round(train_seconds, 1)
    report["parameters"] = sum(p.numel() for p in model.parameters())
    source = cfg.get("data", {}).get("source", "default")
    data_desc = (
        "the built-in default corpus (the Python standard library's own source files)"
        if source == "default"
        else f"`{source}`"
    )
    render_model_card(
        final,
        config=model.config,
        repo_id=args.push_to_hub,
        training_data=data_desc,
        stages=[s.describe() for s in stages],
        train_seconds=train_seconds,
        hardware=hardware(accelerator),
        metrics=report,
    )
    out_dir = final.parent
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    print(f"model folder: {final}")
    print("reconstruction (autoencoder; the decoder reads the codes - not a language-model score):")
    print(f"  exact-match on {report['documents']} held-out lines: {report['exact_match']:.1%}")
    print(
        f"  byte accuracy: {report['teacher_forced_accuracy']:.1%} teacher-forced (level 0), "
        f"{report['byte_accuracy']:.1%} free decode (1 - edit distance / length)"
    )
    for sample in report["samples"][:2]:
        print(f"  held-out line: {sample['line']!r}")
        print(f"  decoded:       {sample['decoded']!r}")
    for lv, (tps, bpc) in enumerate(zip(report["tokens_per_segment"], report["bytes_per_code"])):
        print(f"  level {lv}: {tps:.2f} tokens per segment, {bpc:.2f} bytes per code")
    print(f"  code bits per byte (top level): {report['code_bits_per_byte']:.3f}")
    if "escape_exact_match" in report:  # a top level with escape codes: the variable-rate figures
        print(
            f"  with escape codes (variable rate; {report['escaped_segments']:.1%} of segments read a "
            "second code"
            + (
                f", {report['deep_escaped_segments']:.1%} a third (a second escape digit)"
                if report.get("deep_escaped_segments")
                else ""
            )
            + f"): exact-match {report['escape_exact_match']:.1%}, free-decode byte accuracy "
            f"{report['escape_byte_accuracy']:.1%}, {report['escape_code_bits_per_byte']:.3f} code bits "
            f"per byte (flag at its entropy; {report['escape_code_bits_per_byte_flag_1bit']:.3f} with a "
            "1-bit flag)"
        )
    if "corrected_exact_match" in report:  # every level's escape codes and token corrections too
        print(
            f"  with token corrections (the tokens decode gets wrong, stored at their segment and offset; "
            f"{report['corrections_per_line']:.2f} a line): exact-match "
            f"{report['corrected_exact_match']:.1%}, "
            f"{report['corrected_code_bits_per_byte']:.3f} code bits per byte (codes "
            f"{report['code_bits_per_byte']:.3f} + escapes {report['corrected_escape_bits_per_byte']:.3f} + "
            f"corrections {report['correction_bits_per_byte']:.3f}, ideal lengths)"
        )
    if "codec_exact" in report:  # the lines through the lossless codec: codes + what they leave out
        print(
            f"  lossless codec (hier_ae.codes.codec), the {report['documents']} lines as one text of "
            f"{report['codec_bytes']:,} bytes: {report['codec_bits_per_byte']:.3f} bits per byte as written "
            f"(codes {report['codec_code_bits_per_byte']:.3f} + residual "
            f"{report['codec_residual_bits_per_byte']:.3f}), "
            f"{'exact' if report['codec_exact'] else 'NOT exact'} round trip; "
            f"xz -9e {report['xz_bits_per_byte']:.3f}"
        )
    print(
        f"predict mode (causal byte LM): {bpb:.3f} bits per byte of text on held-out crops (</s> not scored)"
    )
    print(f"training: {train_seconds / 60:.1f} min on {hardware(accelerator)}")
    print(f"metrics: {out_dir / 'metrics.json'}")
    if args.push_to_hub:
        from hier_ae.publishing.hub import push_folder

        info = push_folder(final, args.push_to_hub, private=args.hub_private)
        print(f"pushed to the Hub: {args.push_to_hub} ({getattr(info, 'commit_url', info)})")
    return report


if __name__ == "__main__":
    run(main)
