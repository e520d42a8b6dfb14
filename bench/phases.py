"""The phases of a bench run, each run by a worker process (`python -m bench.run ARGS --worker PHASE
MODEL KEY`): train, flops, score, recon (hier_ae only), generate and scaling. Each returns a plain dict that
the worker caches as JSON at the job's `bench.plan.result_path`; the phase's own process gives a clean
peak-memory reading.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

from bench.plan import (
    DATASETS,
    PRIMARY,
    SECOND_RECON_LINES,
    budget_of,
    job_dir,
    matched_configs,
    read_json,
    result_path,
    val_lines,
    val_texts,
    write_json,
)

PEER_LR = 2e-3  # hier_ae's stages use 1e-3 to 3e-3
BLT_MEAN_PATCH = 4.0  # hier_ae small's level-0 target_tokens_per_segment
BLT_PATCHER_SHARE = 200 / 1200  # fallback: the share of hier_ae small's configured steps in entropy-0


# ---- shared helpers ----------------------------------------------------------------------------
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


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


# ---- phases ------------------------------------------------------------------------------------
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


def phase_flops(args, model: str, dataset: str) -> dict:
    """FLOPs per byte of the trained model (bench/flops.py), on one batch of the shape the run trained
    on (a crop stream of the same data with its own seed), beside its parameter count; and the
    training FLOPs of the run: every stage's (phase's) steps x its FLOPs per step."""
    from bench.flops import blt_flops, hier_ae_flops, llama_flops, run_flops
    from bench.plan import load_yaml
    from hier_ae.data.batching import DocumentCropper

    trained = read_json(job_dir(args, model, dataset) / "train.json")
    lm = load_trained(model, job_dir(args, model, dataset) / "model")
    seq_len, batch_size = trained["seq_len"], trained["batch_size"]
    docs = [(Path(args.data_root) / rel).read_bytes() for rel in DATASETS[dataset]["train"]]
    ids, mask = next(DocumentCropper(docs, batch_size, seq_len, seed=2, p_doc_start=0.0))
    rep = trained["report"]
    t0 = time.perf_counter()
    if model == "hier_ae":
        specs = load_yaml(args.config)["training"]["stages"]
        steps = [r["steps"] for r in rep["stages"]] if "stages" in rep else None
        out = hier_ae_flops(lm, specs, ids, mask, steps)
    elif model == "llama":
        out = llama_flops(lm, ids, mask, rep["steps"])
    else:
        out = blt_flops(lm, ids, mask, [rep["patcher"]["steps"], rep["steps"] - rep["patcher"]["steps"]])
    # the run's batches are crops of this shape, as full as this one (long documents)
    out["run_train_flops"] = run_flops(out, out["bytes"])
    out.update(model=model, dataset=dataset, seq_len=seq_len, batch_size=batch_size)
    out["count_seconds"] = time.perf_counter() - t0
    print(
        f"  [{model} flops] train {out['train_flops_per_byte'] / 1e6:.2f} MFLOP/byte, inference "
        f"{out['inference_flops_per_byte'] / 1e6:.2f} MFLOP/byte, {out['parameters']:,} parameters",
        flush=True,
    )
    return out


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


def phase_recon(args, model: str, dataset: str) -> dict:
    """bench/recon.py's reconstruction benchmark of the trained hier_ae on the dataset's val texts.

    Autoencoder figures (the decoder reads the codes of the text it reconstructs), never LM figures.
    """
    import dataclasses

    from transformers import AutoModel

    from bench.recon import Samples, evaluate_text
    from hier_ae import metrics

    if model != "hier_ae":
        raise ValueError(f"the recon phase measures hier_ae's autoencoder, not {model!r}")
    net = AutoModel.from_pretrained(job_dir(args, model, dataset) / "model", trust_remote_code=True).eval()
    samples = Samples(lines=args.recon_sample_lines, docs=args.recon_sample_docs)
    recon_metric = metrics.load("reconstruction", keep_in_memory=True)
    bpb_metric = metrics.load("bits_per_byte", keep_in_memory=True)
    rss0 = rss_mb()
    texts = {
        name: {
            "source": DATASETS[dataset]["val"][name],
            **evaluate_text(net, name, [data], samples, recon_metric, bpb_metric),
        }
        for name, data in val_texts(args, dataset).items()
    }
    return {
        "model": model,
        "dataset": dataset,
        "levels": net.num_levels,
        "parameters": sum(p.numel() for p in net.parameters()),
        "settings": dataclasses.asdict(samples),
        "texts": texts,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss0,
    }


def phase_generate(args, model: str, dataset: str) -> dict:
    from bench.generation import cache_check, time_generation
    from hier_ae.data.batching import frame_document

    lm = load_trained(model, job_dir(args, model, dataset) / "model")
    text = (
        Path(args.data_root) / DATASETS[dataset]["val"][next(iter(DATASETS[dataset]["val"]))]
    ).read_bytes()
    while len(text) < max(args.prompts):
        text += text

    def prompt(n):
        return frame_document(text[: n - 1])[:-1][None]  # (1, n): <s> + bytes, no </s>

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

    from hier_ae.data.batching import frame_document

    lm = load_trained(model, job_dir(args, model, PRIMARY) / "model")
    fn = logits_fn(model, lm)
    text = (Path(args.data_root) / DATASETS[PRIMARY]["train"][0]).read_bytes()
    while len(text) < size:
        text += text
    ids = frame_document(text[: size - 1])[:-1][None]  # (1, size): <s> + bytes, no </s>
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


PHASES = {
    "train": phase_train,
    "flops": phase_flops,
    "score": phase_score,
    "recon": phase_recon,
    "generate": phase_generate,
    "scaling": phase_scaling,
}


def worker(args) -> None:
    """Run the phase `args.worker` = (PHASE, MODEL, KEY) and cache its result, timed."""
    import torch

    phase, model, key = args.worker
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    res = PHASES[phase](args, model, int(key) if phase == "scaling" else key)
    res["phase_seconds"] = time.perf_counter() - t0
    write_json(result_path(args, phase, model, key), res)
