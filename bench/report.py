"""The markdown report of bench/run.py: tables, ratios hier_ae / peer, and the targets of issue #10.

`render(RunReport(...))` -> markdown; the run builds the `RunReport` from its cached phases.
"""

from __future__ import annotations

import argparse
import datetime
import math
from dataclasses import dataclass, field
from pathlib import Path

from bench.targets import PEERS, bpb, evaluate, gen_row, show, verdict

HERE = Path(__file__).resolve().parent
NAMES = {"hier_ae": "hier_ae", "llama": "Llama", "blt": "BLT"}


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.{digits}f}" if abs(x) < 1e4 else f"{x:,.0f}"


def ratio(a, b) -> str:
    return "n/a" if a is None or b is None or not b else f"{a / b:.2f}"


def table(header: list[str], rows: list[list], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    out = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|",
    ]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out + [""]


@dataclass
class RunReport:
    """Everything the report shows of one run of `python -m bench.run`."""

    args: argparse.Namespace  # the run's parsed arguments
    argv: list[str]  # as given, for the command line the report prints
    configs: dict  # bench.plan.matched_configs: hier_ae's YAML, the peers' configs, "counts"
    results: dict  # {phase: {Job.slot: cached result}} (bench.plan.Job)
    compress: dict  # {dataset: {val text: {compressor: bits/byte}}}
    datasets: list[str]  # the main dataset first
    machine: str
    seconds: float  # this invocation's wall clock (cached phases are not in it)
    plan: dict[str, float] = field(default_factory=dict)  # bench.plan.estimate_minutes

    @property
    def counts(self) -> dict[str, int]:
        """Parameter counts per model (every module; hier_ae: parameters + codebooks)."""
        return self.configs["counts"]


def render(report: RunReport) -> str:
    from bench.peers import config_label

    args, argv, cfgs, counts = report.args, report.argv, report.configs, report.counts
    results, compress, datasets = report.results, report.compress, report.datasets
    machine, seconds, plan = report.machine, report.seconds, report.plan
    hier = f"`{config_label(args.config)}`"

    tr, sc, gen, scal = results["train"], results["score"], results["generate"], results["scaling"]
    rec = results.get("recon", {})
    models = sorted({m for m, _ in tr}, key=("hier_ae", "llama", "blt").index)
    primary = datasets[0]
    pval = next(iter(compress[primary]))
    cmd = "python -m bench.run" + ("" if not argv else " " + " ".join(argv))
    phase_total = sum(
        r.get("phase_seconds", 0.0)
        for group in (tr, results.get("flops", {}), sc, rec, scal)
        for r in group.values()
        if r
    ) + sum(r.get("phase_seconds", 0.0) for r in gen.values() if r)
    L = [
        "# hier_ae benchmark results",
        "",
        "Every table is measured side by side with its peers in one run, on the machine it names, by the",
        "command it names. Ratios are hier_ae / peer.",
        "",
        f"## Side by side with the peers ({datetime.date.today().isoformat()})",
        "",
        f"Machine: {machine}; {args.threads} torch threads, no GPU.",
        "",
        f"Command: `{cmd}` (from the repository root; data: `{args.data_root}`). Each phase ran in its "
        "own process, `python -m bench.run ... --worker PHASE MODEL DATA`; phases add up to "
        f"{phase_total / 60:.1f} min (this invocation: {seconds / 60:.1f} min; cached phases are reused).",
        "",
        "### Models (matched parameter counts; every module counts)"
        if not args.peer_targets
        else "### Models (each at its own size, `--peer-params`: "
        + ", ".join(f"{m} sized to {n:,}" for m, n in args.peer_targets.items())
        + "; every module counts)",
        "",
    ]
    L += models_table(cfgs, counts, results.get("flops", {}), primary, hier)
    blt_tr = tr.get(("blt", primary))
    if blt_tr:
        rep = blt_tr["report"]
        pc = cfgs["blt"].patcher_config
        L += [
            "BLT patching: BLT's own entropy model (the patcher, "
            f"{pc.num_hidden_layers} layers x {pc.hidden_size}, "
            "counted in its parameters) trains first, for the share of the budget that hier_ae's level-0 "
            f"entropy stage took ({100 * rep.get('patcher_share', 200 / 1200):.1f}%: "
            f"{rep['patcher']['steps']} steps, {rep['patcher']['seconds']:.0f} s); "
            "then its "
            "global entropy threshold is set on training batches so that patches average 4 bytes (hier_ae "
            f"small's level-0 target): {rep['patching_threshold_nats']:.3f} nats, calibrated mean "
            f"{rep['calibrated_mean_patch']:.2f} bytes, at most {cfgs['blt'].max_patch_length} bytes per "
            "patch "
            "(hier_ae's max_segment_len); then the rest of the model trains for the remaining time with the "
            "patcher frozen. Patching is causal (a patch opens at t + 1 when H[t] exceeds the threshold), "
            "the same rule as hier_ae's.",
            "",
        ]
    L += [
        "Training: every model reads the same seeded batches (random crops of the train text, one file "
        f"= one document, {tr[models[0], primary]['seq_len']} bytes x {tr[models[0], primary]['batch_size']} "
        "rows), AdamW with warm-up and a cosine decay planned to end with the wall-clock budget "
        f"(bench/training.py). hier_ae runs every stage of {hier}: a calibration "
        "(1 warm-up + 5 timed optimizer steps per stage on a copy of the model, inside the budget; the "
        "median of the timed steps) measures each stage's seconds per step, and stage i gets time in "
        "proportion to configured steps_i x seconds/step_i, so every stage runs about the same fraction "
        "of its configured steps (re-split after every stage: an overrun comes out of the later stages; "
        "the calibration copy segments every level at its target rate, as the trained entropy models "
        "will, and every stage after the first re-calibrates itself and the later ones at its start); "
        "each stage runs at least its floor, a quarter of the steps planned for it, as long as the later "
        "stages' floors still fit. Scoring: every validation byte once"
        + scored_part(args)
        + ", sliding windows with context = the "
        "training length and stride = half of it (bench/scoring.py); hier_ae in predict mode. Peak "
        "memory: max RSS of the process that ran the phase (it includes Python and torch, about the same "
        "for every model).",
        "",
    ]
    for dataset in datasets:
        L += dataset_section(
            args, dataset, models, tr, sc, gen if dataset == primary else {}, compress[dataset]
        )
    if rec:
        L += recon_section(rec, datasets)
    if scal:
        L += scaling_section(scal, args.sizes)
    L += targets_section(primary, pval, results)
    L += timing_section(results, datasets, plan or {})
    notes = HERE / "notes.md"
    if notes.exists():
        L += ["### Notes", "", notes.read_text().strip(), ""]
    return "\n".join(L) + "\n"


def models_table(cfgs: dict, counts: dict, flops: dict, primary: str, hier: str) -> list[str]:
    """Every model's parameters beside its training and inference FLOPs per byte (bench/flops.py, the
    main data's flops phase) and the training FLOPs of its run; hier_ae's per stage, BLT's per phase."""
    from bench.flops import fmt_flops
    from bench.peers import describe

    rows = []
    for m in ("hier_ae", "llama", "blt"):
        shape = f"{hier} (parameters + VQ codebooks)" if m == "hier_ae" else describe(cfgs[m])
        f = flops.get((m, primary)) or {}
        rows.append(
            [
                NAMES[m],
                fmt(counts[m]),
                f"{counts[m] / counts['hier_ae'] - 1:+.1%}",
                fmt_flops(f.get("train_flops_per_byte")),
                fmt_flops(f.get("inference_flops_per_byte")),
                fmt_flops(f.get("run_train_flops")),
                shape,
            ]
        )
    header = ["model", "parameters", "vs hier_ae", "train FLOPs/byte", "inference FLOPs/byte"]
    L = table([*header, "training FLOPs (run)", "shape"], rows, "lrrrrrl")
    if not flops:
        return L
    L += [
        "FLOPs: counted with `torch.utils.flop_counter.FlopCounterMode` on one batch of the training shape "
        f"({primary}; bench/flops.py): matrix products and attention, 2 per multiply-add (elementwise work, "
        "embeddings and the optimizer step are not counted), divided by the batch's real bytes. Training: "
        "one forward + backward of the training objective, the mean over stages weighted by the steps each "
        "ran; inference: one causal-LM forward over the whole batch (hier_ae in predict mode), no grad. "
        "Training FLOPs (run): sum over stages of steps x FLOPs of one step.",
        "",
    ]
    for m, what in (("hier_ae", "stage"), ("blt", "phase")):
        f = flops.get((m, primary))
        if f and len(f["stages"]) > 1:
            per = ", ".join(
                f"{r['stage']} {fmt_flops(r['train_flops_per_byte'])} x {fmt(r['steps'])} steps"
                for r in f["stages"]
            )
            L += [f"{NAMES[m]}'s training FLOPs/byte per {what}: {per}.", ""]
    return L


def dataset_section(args, dataset, models, tr, sc, gen, compress) -> list[str]:
    vals = list(compress)
    budget = tr[models[0], dataset]["budget_s"] / 60
    L = [f"### {dataset}: {budget:g} min of training per model", ""]
    header = ["model", "steps", "train bytes/s"]
    header += [f"{v} bits/byte" for v in vals] + ["scoring bytes/s", "peak RSS train / score (MB)"]
    rows = []
    for m in models:
        t, s = tr[m, dataset], sc.get((m, dataset))
        steps = t["report"].get("steps") or sum(r["steps"] for r in t["report"].get("stages", []))
        row = [NAMES[m], fmt(steps), fmt(t["train_bytes_per_s"], 0)]
        row += [fmt(bpb(s, v), 4) for v in vals]
        speed = [s["val"][v]["predict"]["bytes_per_s"] for v in vals] if s else []
        row += [fmt(sum(speed) / len(speed), 0) if speed else "n/a"]
        row += [f"{t['peak_rss_mb']:.0f} / {s['peak_rss_mb']:.0f}" if s else "n/a"]
        rows.append(row)
    L += table(header, rows)
    if "hier_ae" in models:
        L += stages_table(tr["hier_ae", dataset]["report"])
    if gen:
        prompts = [r["prompt"] for r in next(iter(gen.values()))["rows"]]
        g0 = next(iter(gen.values()))
        L += [
            f"Greedy generation, {g0['new']} new bytes (fewer where timed without a cache: see the cache "
            "column), "
            f"median of {g0['repeats']} runs; bytes/s including the prefill (ms/byte after the prefill):",
            "",
        ]
        rows = []
        for m in models:
            g = gen.get(m)
            if not g:
                continue
            cells = [
                f"{fmt(gen_row(g, p), 1)} ({fmt(gen_row(g, p, 'ms_per_byte_after_prefill'), 2)})"
                for p in prompts
            ]
            cache = "cached, equals uncached" if g["use_cache"] else "uncached: " + g["note"]
            rows.append([NAMES[m], *cells, cache])
            if g.get("invalid_cached_rows"):
                bad = {"rows": g["invalid_cached_rows"]}
                cells = [
                    f"{fmt(gen_row(bad, p), 1)} ({fmt(gen_row(bad, p, 'ms_per_byte_after_prefill'), 2)})"
                    for p in prompts
                ]
                rows.append(
                    [f"{NAMES[m]} (its cache)", *cells, "cached, **differs from uncached**: not counted"]
                )
        L += table(
            ["model", *[f"{p} B prompt" for p in prompts], "cache"], rows, "l" + "r" * len(prompts) + "l"
        )
    # ratios
    if "hier_ae" in models:
        h = "hier_ae"
        rows = []
        for p in PEERS:
            if p not in models:
                continue
            row = [f"hier_ae / {NAMES[p]}"]
            row += [ratio(bpb(sc.get((h, dataset)), v), bpb(sc.get((p, dataset)), v)) for v in vals]
            row += [ratio(tr[h, dataset]["train_bytes_per_s"], tr[p, dataset]["train_bytes_per_s"])]
            hs, ps = sc.get((h, dataset)), sc.get((p, dataset))
            row += [
                ratio(
                    sum(hs["val"][v]["predict"]["bytes_per_s"] for v in vals),
                    sum(ps["val"][v]["predict"]["bytes_per_s"] for v in vals),
                )
                if hs and ps
                else "n/a"
            ]
            row += [ratio(tr[h, dataset]["peak_rss_mb"], tr[p, dataset]["peak_rss_mb"])]
            if gen:
                row += [ratio(gen_row(gen.get(h), q), gen_row(gen.get(p), q)) for q in prompts]
            rows.append(row)
        header = [
            "ratio",
            *[f"{v} bits/byte" for v in vals],
            "train bytes/s",
            "scoring bytes/s",
            "peak RSS train",
        ]
        if gen:
            header += [f"gen bytes/s {q} B" for q in prompts]
        if rows:  # none with --only hier_ae
            L += ["Ratios hier_ae / peer (bits/byte: lower is better; bytes/s: higher is better):", ""]
            L += table(header, rows)
        L += hier_details(sc.get((h, dataset)), vals)
    L += ["Classical compressors on the same validation text, bits per byte:", ""]
    names = list(next(iter(compress.values())))
    rows = [
        [v, *[fmt(compress[v][n], 3) if compress[v][n] is not None else "not installed" for n in names]]
        for v in vals
    ]
    L += table(["val text", *names], rows)
    return L


def scored_part(args) -> str:
    """Which part of each val text was scored, when not all of it (--val-skip-bytes, --max-val-bytes)."""
    skip, cap = args.val_skip_bytes, args.max_val_bytes
    if not skip and not cap:
        return ""
    where = f"after its first {skip:,}" if skip else "from its start"
    return f" of the part scored ({f'{cap:,} bytes' if cap else 'every byte'} {where})"


def stages_table(rep: dict) -> list[str]:
    """hier_ae's stages: calibrated and measured seconds per step, steps run against configured."""
    if "calibration_seconds" not in rep:
        return []  # a result cached before the calibration existed
    rows = [
        [
            r["stage"],
            f"{r['calibrated_s_per_step']:.3f}",
            f"{r['s_per_step']:.3f}",
            f"{r['seconds']:.0f}",
            f"{r['steps']:,} / {r['configured_steps']:,}",
            f"{r['steps'] / max(r['configured_steps'], 1):.0%}",
            fmt(r.get("floor_steps")),
        ]
        for r in rep["stages"]
    ]
    return [
        f"hier_ae's stages (calibration: {rep['calibration_seconds']:.0f} s of the budget; time per stage "
        "in proportion to configured steps x calibrated seconds/step"
        + (
            "; calibrated at the stage's own start"
            if rep.get("recalibrate")
            else "; calibrated once, at the start"
        )
        + "; floor: the fewest steps it runs):",
        "",
        *table(
            [
                "stage",
                "calibrated s/step",
                "measured s/step",
                "seconds",
                "steps run / configured",
                "fraction",
                "floor",
            ],
            rows,
        ),
    ]


def hier_details(score: dict | None, vals: list[str]) -> list[str]:
    if not score:
        return []
    if not any("reconstruction" in score["val"][v] for v in vals):
        return []
    L = ["hier_ae's codes and reconstruction (autoencoder figures: the decoder reads the codes):", ""]
    rows = []
    for v in vals:
        r = score["val"][v]
        if "reconstruction" not in r:
            continue  # the second table scores bits per byte only, unless --second-extras
        rec = r["reconstruction"]
        usage = "; ".join(
            f"L{i}: ppl {u['usage_perplexity']:.0f}, "
            f"{u['distinct_codes']}/{u['codebook_size'] ** u['depth']} seen, "
            f"{u['dead_codes']} dead"
            for i, u in enumerate(r["codebook_usage"])
        )
        rows.append(
            [
                v,
                " / ".join(f"{t:.2f}" for t in rec["tokens_per_segment"]),
                " / ".join(f"{t:.2f}" for t in rec["bytes_per_code"]),
                f"{rec['code_bits_per_byte']:.3f}",
                f"{100 * rec['exact_match']:.2f}% of {rec['documents']:,}",
                f"{bpb(score, v):.4f}",
                f"{bpb(score, v, 'zero_context'):.4f}",
                usage,
            ]
        )
    L += table(
        [
            "val text",
            "tokens/segment per level",
            "bytes/code per level",
            "code bits/byte",
            "exact-match (lines)",
            "predict bits/byte",
            "upper contexts zeroed",
            "codebook usage",
        ],
        rows,
        "lrrrrrrl",
    )
    return L


def recon_section(rec: dict, datasets: list[str]) -> list[str]:
    """hier_ae's reconstruction benchmark (bench/recon.py) per dataset: autoencoder figures."""
    from bench.recon import compression_table, reconstruction_table

    L = [
        "### Reconstruction: hier_ae as an autoencoder (bench/recon.py)",
        "",
        "**Autoencoder figures, not LM figures**: the decoder reads the codes of the very text it "
        "reconstructs, so none of these bits per byte compares with the predict-mode (LM) bits per byte "
        "above. Total bits/byte = code bits + reconstruct CE: what a lossless coder built on the codes "
        "would spend, beside the classical compressors on the same docs. Held-out text: the dataset's "
        "val texts; each trained hier_ae on the dataset it trained on.",
        "",
    ]
    for ds in datasets:
        r = rec.get(("hier_ae", ds))
        if not r:
            continue
        s = r["settings"]
        L += [
            f"#### {ds}: {r['levels']} level(s), {s['lines']} held-out lines and {s['docs']} 1 KB docs per "
            f"val text (seed {s['seed']})",
            "",
            *reconstruction_table(r["texts"], r["levels"]),
            "",
            *compression_table(r["texts"], predict=False),  # the LM's bits per byte are above
            "",
        ]
    return L


def scaling_section(scal: dict, sizes: list[int]) -> list[str]:
    L = [
        "### Scaling: one forward pass (no grad, no cache), hier_ae against the Llama",
        "",
        "Memory: peak RSS of a fresh process during the forward minus its RSS just before it "
        "(psutil + getrusage); the trained Tiny Shakespeare models; input = the train text.",
        "",
    ]
    rows = []
    for n in sizes:
        h, ll = scal.get(("hier_ae", n)), scal.get(("llama", n))
        rows.append(
            [
                f"{n:,}",
                fmt(h and h["seconds"], 2),
                fmt(ll and ll["seconds"], 2),
                ratio(h and h["seconds"], ll and ll["seconds"]),
                fmt(h and h["peak_delta_mb"], 0),
                fmt(ll and ll["peak_delta_mb"], 0),
                ratio(h and h["peak_delta_mb"], ll and ll["peak_delta_mb"]),
            ]
        )
    header = ["input bytes", "hier_ae s", "Llama s", "time ratio", "hier_ae MB", "Llama MB", "memory ratio"]
    return L + table(header, rows)


def targets_section(primary: str, pval: str, results: dict) -> list[str]:
    """The targets (bench/targets.py) on the main table: result, distance, verdict."""
    rows = [[o.name, *show(o), verdict(o.met)] for o in evaluate(results, primary, pval)]
    if not rows:
        return []
    head = "### Targets (issues #10, #20), on the main table (code, multilingual: the second table's)"
    return [head, ""] + table(["target", "result", "distance", "verdict"], rows, "lrrl")


def timing_section(results: dict, datasets: list[str], plan: dict[str, float]) -> list[str]:
    """Minutes per phase (each its own process, start-up included) against the plan printed at start."""
    parts: dict[str, dict[str, float]] = {}
    for phase in ("train", "flops", "score", "recon"):
        for (m, ds), r in results.get(phase, {}).items():
            if r:
                parts.setdefault(f"{phase} ({ds})", {})[m] = r.get("phase_seconds", 0.0)
    for m, r in results["generate"].items():
        if r:
            parts.setdefault("generate", {})[m] = r.get("phase_seconds", 0.0)
    for (m, _), r in results["scaling"].items():
        if r:
            parts.setdefault("scaling", {})[m] = parts.get("scaling", {}).get(m, 0.0) + r.get(
                "phase_seconds", 0.0
            )
    rows = []
    total = 0.0
    for part, per in parts.items():
        t = sum(per.values())
        total += t
        est = plan.get(part)
        rows.append(
            [
                part,
                *[f"{per[m] / 60:.1f}" if m in per else "" for m in NAMES],
                f"{t / 60:.1f}",
                "" if est is None else f"{est:.1f}",
            ]
        )
    starts = plan.get("process start-ups")
    if starts is not None:
        rows.append(["process start-ups (outside the phases' clocks)", "", "", "", "", f"{starts:.1f}"])
    est_total = sum(plan.values()) if plan else None
    rows.append(
        ["**total**", "", "", "", f"**{total / 60:.1f}**", "" if est_total is None else f"{est_total:.1f}"]
    )
    return [
        "### Run time per part (minutes, from the cached phases; the plan's estimate beside them)",
        "",
        "The estimate is what `python -m bench.run` prints at start: the training budgets plus the rest "
        "from the `EST_*` rates in `bench/plan.py`. Measured minutes come from the phases' own clocks.",
        "",
    ] + table(["part", *NAMES.values(), "all models", "estimated"], rows)
