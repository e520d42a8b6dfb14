"""The rate-distortion curve of level 0 (issue 21, item 4): how many held-out lines decode exactly, and how
many of their bytes are right, against the code bits per byte the codes spend; hier_ae beside the
fixed-chunk autoencoder peer (bench/ae_peer.py) at each of hier_ae's rates.

    python -m bench.rate_distortion                         # every point, Tiny Shakespeare (about 90 min)
    python -m bench.rate_distortion --points seg3 seg2      # some points (finished ones are reused)
    python -m bench.rate_distortion --report-only           # the table and the plot from what is there
    python -m bench.rate_distortion --quick --out-dir /tmp/rd --out /tmp/rd.md --plot /tmp/rd.png  # smoke

A point is the X/M-series recipe of bench/experiments.md (`bench/variants/recon/equal_rate.sh`):
`tiny-ae-offsets.yaml`, a quarter of the rows whole lines, `min_segment_len: 2` (the M-series), entropy
300 + autoencoder 3,300 steps at 1 torch thread, trained on the corpus' train.txt cut into documents;
plus the point's own `--set` overrides, which move its rate (bytes per segment, codebook size and
depth). Per point, in order: (1) hier_ae trains (a step budget); (2) `bench.recon` scores its level 0
on the corpus' val.txt (256 held-out lines, 16 1 KB documents, seed 0); (3) the peer trains for the
wall-clock seconds hier_ae's training took, at the FSQ rate whose line rate equals hier_ae's measured
line rate (the peer pads a line's last chunk: its line rate is about 1.035 x its nominal rate); (4) the
peer is scored on the same lines. `--jobs 2` runs two points at once, one core each, so each model
shares the machine with one other 1-thread job, the same for hier_ae and its peer.

Autoencoder figures, never causal-LM figures: the decoder reads the codes of the very text it
reconstructs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA_ROOT = REPO.parent / "shared" / "data"
RECIPE = "bench/variants/recon/tiny-ae-offsets.yaml"
# data.max_bytes: the recipe's 3 MB cap cut multilingual's 3.9 MB (its languages in order) before sv..zu; the
# curves in rate_distortion_multilingual.md were measured with that cut (bench/experiments.md, S42)
BASE_SET = ["data.p_line=0.25", "model.levels.0.min_segment_len=2", "data.max_bytes=8000000"]
# label -> the point's own overrides (after BASE_SET); the rate falls as bytes per segment rise and
# rises with the codebook's bits (codebook_size 512 = 9 bits; 4096 = 12; 256 at depth 2 = 16 bits per code,
# the most a level's code ids allow: K^depth <= 65536)
POINTS = {
    "seg4": ["model.levels.0.target_tokens_per_segment=4.0"],
    "seg3": [],
    "seg2": ["model.levels.0.target_tokens_per_segment=2.0"],
    "seg3-k4096": ["model.levels.0.codebook_size=4096"],
    "seg3-depth2": ["model.levels.0.codebook_size=256", "model.levels.0.codebook_depth=2"],
    # about 4.0 code bits/byte, the level-0 target's rate: 8 bits per ~2 bytes, 10 bits per ~2.5 bytes
    "seg2-k256": ["model.levels.0.target_tokens_per_segment=2.0", "model.levels.0.codebook_size=256"],
    "seg2.5-k1024": ["model.levels.0.target_tokens_per_segment=2.5", "model.levels.0.codebook_size=1024"],
    # 2-byte segments with a codebook that covers nearly every byte pair (99.8% on Tiny Shakespeare)
    "seg2-k1024": ["model.levels.0.target_tokens_per_segment=2.0", "model.levels.0.codebook_size=1024"],
    # the same with an encoder that sees only the segment: the code can then be a function of the pair alone
    "seg2-k1024-segenc": [
        "model.levels.0.target_tokens_per_segment=2.0",
        "model.levels.0.codebook_size=1024",
        "model.levels.0.encoder_scope=segment",
    ],
    # the recipe restarts a code unused for 30 steps: a code kept for a rare byte pair (once per
    # ~100 steps) is lost again and again; 1,000 steps keep it (bench/misses.py, experiments.md)
    "seg2-k256-dead1k": [
        "model.levels.0.target_tokens_per_segment=2.0",
        "model.levels.0.codebook_size=256",
        "model.levels.0.dead_after_steps=1000",
    ],
    "seg2-k1024-dead1k": [
        "model.levels.0.target_tokens_per_segment=2.0",
        "model.levels.0.codebook_size=1024",
        "model.levels.0.dead_after_steps=1000",
    ],
    "seg2-k2048-dead1k": [
        "model.levels.0.target_tokens_per_segment=2.0",
        "model.levels.0.codebook_size=2048",
        "model.levels.0.dead_after_steps=1000",
    ],
    # the same with a learned embedding of each code's id at the decoder (R6/F1 in bench/experiments.md)
    "seg2-k2048-dead1k-emb": [
        "model.levels.0.target_tokens_per_segment=2.0",
        "model.levels.0.codebook_size=2048",
        "model.levels.0.dead_after_steps=1000",
        "model.levels.0.decoder_code_embedding=true",
    ],
    # codes chosen by the decoder among the 4 nearest (`code_choice_candidates`, the A-series of
    # bench/experiments.md), beside the two dead1k points above
    "seg2-k256-dead1k-choice4": [
        "model.levels.0.target_tokens_per_segment=2.0",
        "model.levels.0.codebook_size=256",
        "model.levels.0.dead_after_steps=1000",
        "model.levels.0.code_choice_candidates=4",
    ],
    "seg2-k1024-dead1k-choice4": [
        "model.levels.0.target_tokens_per_segment=2.0",
        "model.levels.0.codebook_size=1024",
        "model.levels.0.dead_after_steps=1000",
        "model.levels.0.code_choice_candidates=4",
    ],
    # multilingual text has 12,297 distinct byte pairs: 4,096 codes cover 98.3% of their occurrences
    "seg2-k4096-dead1k": [
        "model.levels.0.target_tokens_per_segment=2.0",
        "model.levels.0.codebook_size=4096",
        "model.levels.0.dead_after_steps=1000",
    ],
}
PEER_LINE_RATE_FACTOR = 1.035  # the peer's line rate / its nominal rate (a line's last chunk is padded)
TARGET = {"tinyshakespeare": 4.0, "code": 4.0, "multilingual": 5.0}  # >= 99% exact at <= this (item 4)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.rate_distortion", description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default="tinyshakespeare", help="a corpus folder of --data-root")
    p.add_argument("--data-root", default=str(DATA_ROOT))
    p.add_argument("--points", nargs="+", default=list(POINTS), choices=list(POINTS))
    p.add_argument("--jobs", type=int, default=2, help="points run at once, one torch thread each")
    p.add_argument("--out-dir", default=str(HERE / "cache-rd"), help="every point's models and JSON")
    p.add_argument("--out", default=str(HERE / "rate_distortion.md"), help="the report (+ .json: every row)")
    p.add_argument("--plot", default=str(HERE / "rate_distortion.png"))
    p.add_argument("--report-only", action="store_true", help="no training: report what --out-dir holds")
    p.add_argument("--quick", action="store_true", help="a smoke run: a few steps, seconds of peer, 16 lines")
    return p.parse_args(argv)


def stages_override(quick: bool) -> str:
    ent, ae = (20, 40) if quick else (300, 3300)
    return (
        f"training.stages=[{{kind: entropy, level: 0, steps: {ent}, lr: 3.0e-3}}, "
        f"{{kind: autoencoder, level: 0, steps: {ae}, lr: 2.0e-3}}]"
    )


def write_documents(train_txt: Path, out: Path, lines_per_document: int | None = None) -> int:
    """train.txt -> JSON lines of documents (examples/train.py holds some out; one file would give none).

    Tiny Shakespeare is cut at blank lines, code at its `# ---- path ----` file headers, any other text
    every 20 lines. E.g. "A\\n\\nB\\n" -> two documents, "A\\n" and "B\\n\\n" (each keeps a newline).
    `lines_per_document=N` cuts any text every N lines instead, blank lines kept, so documents are
    running text (for Tiny Shakespeare: several speaker turns each; RT in bench/experiments.md):
    "A\\n\\nB\\nC\\n" with N = 2 -> "A\\n\\n", "B\\nC\\n", "\\n" (dropped: blank)."""
    if lines_per_document is not None and (not isinstance(lines_per_document, int) or lines_per_document < 1):
        raise ValueError(f"lines_per_document={lines_per_document!r} is invalid: an int >= 1 or None.")
    text = train_txt.read_text(encoding="utf-8")
    if lines_per_document is None and "# ---- " in text[:200]:
        docs = re.split(r"(?=^# ---- )", text, flags=re.M)
    elif lines_per_document is None and "\n\n" in text[:5000]:
        docs = [d + "\n" for d in text.split("\n\n")]
    else:
        lines, n = text.split("\n"), lines_per_document or 20
        docs = ["\n".join(lines[i : i + n]) + "\n" for i in range(0, len(lines), n)]
    docs = [d for d in docs if d.strip()]
    out.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    return len(docs)


def train_argv(args, label: str, data: Path, out: Path) -> list[str]:
    sets = [*BASE_SET, *POINTS[label], stages_override(args.quick)]
    launch = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--cpu"]
    launch += ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "--num_cpu_threads_per_process", "1"]
    argv = [*launch, "examples/train.py", "--config", RECIPE, "--output-dir", str(out)]
    argv += ["--report-to", "none", "--data", str(data)]
    for kv in sets:
        argv += ["--set", kv]
    return argv


def peer_rate(line_code_bits: float) -> float:
    """The peer's nominal rate whose line rate equals hier_ae's: 3.105 bits/byte on lines -> 3.0."""
    return round(line_code_bits / PEER_LINE_RATE_FACTOR, 2)


def _run(cmd: list[str], log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        tail = log.read_text(errors="replace").splitlines()[-5:]
        raise RuntimeError(
            f"`{' '.join(cmd[:4])} ...` exited with {rc}; its output is in {log}:\n" + "\n".join(tail)
        )


def run_point(args, label: str, data: Path) -> None:
    """Train and score one point (hier_ae, then its peer); each finished step is reused."""
    d = Path(args.out_dir) / label
    d.mkdir(parents=True, exist_ok=True)
    log = d / "log.txt"
    val = Path(args.data_root) / args.corpus / "val.txt"
    lines, docs = (16, 2) if args.quick else (256, 16)
    if not (d / "hier_ae" / "metrics.json").exists():
        _run(train_argv(args, label, data, d / "hier_ae"), log)
    recon = d / "hier_ae_recon.json"
    if not recon.exists():
        model = str(d / "hier_ae" / "model")
        sample = ["--lines", str(lines), "--docs", str(docs), "--out", str(recon)]
        _run([sys.executable, "-m", "bench.recon", "--model", model, "--text", str(val), *sample], log)
    score = d / "peer" / "score.json"
    if score.exists():
        return
    line_bits = line_level(json.loads(recon.read_text()))["code_bits_per_byte"]
    seconds = json.loads((d / "hier_ae" / "metrics.json").read_text())["train_seconds"]
    minutes = 0.05 if args.quick else seconds / 60
    peer = [sys.executable, "-m", "bench.ae_peer"]
    train = ["--data", str(val.with_name("train.txt")), "--rate", str(peer_rate(line_bits))]
    train += ["--minutes", f"{minutes:.3f}", "--p-line-start", "0.25", "--out", str(d / "peer")]
    _run([*peer, "train", *train], log)
    sample = ["--lines", str(lines), "--windows", "0", "--out", str(score)]
    _run([*peer, "score", "--model", str(d / "peer"), "--text", str(val), *sample], log)


def line_level(recon: dict) -> dict:
    """Level 0's figures on the held-out lines of a `bench.recon` result."""
    return next(iter(recon["texts"].values()))["lines"]["levels"][0]


def collect(args) -> list[dict]:
    """One row per finished model: hier_ae from bench.recon's JSON, the peer from ae_peer's score.

    A model whose folder is not under `--out-dir` (a fresh clone has no cache) keeps its row from the
    report's JSON beside `--out`, if that holds one: a run of some points adds them to the report."""
    rows = _collect_cache(args)
    have = {(r["point"], r["model"]) for r in rows}
    earlier = Path(args.out).with_suffix(".json")
    if earlier.is_file():
        for r in json.loads(earlier.read_text()):
            if r["point"] in POINTS and (r["point"], r["model"]) not in have:
                rows.append(r)
    return rows


def _collect_cache(args) -> list[dict]:
    rows = []
    for label in POINTS:
        d = Path(args.out_dir) / label
        recon, score = d / "hier_ae_recon.json", d / "peer" / "score.json"
        if recon.exists():
            r = json.loads(recon.read_text())
            lv = line_level(r)
            metrics = json.loads((d / "hier_ae" / "metrics.json").read_text())
            rows.append({
                "point": label, "model": "hier_ae", "overrides": POINTS[label],
                "code_bits_per_byte": lv["code_bits_per_byte"], "bytes_per_code": lv["bytes_per_code"],
                "exact_match": lv["free_decode"]["exact_match"],
                "teacher_forced_accuracy": lv["teacher_forced_accuracy"],
                "free_accuracy": lv["free_decode"]["byte_accuracy"],
                "reconstruct_ce_bits_per_byte": lv["reconstruct_ce_bits_per_byte"],
                "total_bits_per_byte": lv["total_bits_per_byte"],
                "train_seconds": metrics["train_seconds"], "parameters": metrics["parameters"],
                "date": r["date"], "machine": r["machine"],
            })  # fmt: skip
        if score.exists():
            s = json.loads(score.read_text())
            li = s["lines"]
            rows.append({
                "point": label, "model": "peer", "overrides": [f"--rate {s['nominal_bits_per_byte']:.2f}"],
                "code_bits_per_byte": li["code_bits_per_byte"], "bytes_per_code": s["config"]["chunk"],
                "exact_match": li["exact_match"], "teacher_forced_accuracy": li["teacher_forced_accuracy"],
                "free_accuracy": li["free_decode"]["byte_accuracy"],
                "reconstruct_ce_bits_per_byte": li["reconstruct_ce_bits_per_byte"],
                "total_bits_per_byte": li["total_bits_per_byte"],
                "train_seconds": s["training"].get("seconds"), "parameters": s["training"].get("parameters"),
                "date": s["date"], "machine": s["machine"],
            })  # fmt: skip
    return rows


def plot(rows: list[dict], path: str, corpus: str) -> None:
    """Exact-match and teacher-forced accuracy of held-out lines against code bits/byte, a line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for model in ("hier_ae", "peer"):
        pts = sorted((r for r in rows if r["model"] == model), key=lambda r: r["code_bits_per_byte"])
        if not pts:
            continue
        x = [p["code_bits_per_byte"] for p in pts]
        for ax, key in zip(axes, ("exact_match", "teacher_forced_accuracy")):
            ax.plot(x, [100 * p[key] for p in pts], marker="o", label=model)
    for ax, label in zip(axes, ("held-out lines decoded exactly (%)", "teacher-forced byte accuracy (%)")):
        ax.set_xlabel("code bits per byte (held-out lines)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    axes[0].axhline(99, color="grey", linestyle=":", linewidth=1)
    axes[0].axvline(TARGET.get(corpus, 4.0), color="grey", linestyle=":", linewidth=1)
    fig.suptitle(f"Level 0 rate-distortion on {corpus} (autoencoder figures, not LM figures)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(args, rows: list[dict], machine: str = "not recorded") -> str:
    corpus = f" --corpus {args.corpus}" if args.corpus != "tinyshakespeare" else ""
    cmd = f"python -m bench.rate_distortion{corpus}"
    target = TARGET.get(args.corpus, 4.0)
    L = [
        f"# Level 0 rate-distortion on {args.corpus} (issue 21, item 4)",
        "",
        f"Report written {datetime.date.today().isoformat()} on {machine}. Command: `{cmd}` (from the "
        "repository root; "
        "the recipe and the peer's budget are in bench/rate_distortion.py's docstring). Held-out lines of "
        f"{args.corpus}'s val.txt (20-120 bytes, each `<s>` + line + `</s>`, seed 0). Autoencoder figures, "
        "not LM figures. Exact: the greedy decode from the codes alone equals the line. TF: teacher-forced "
        "byte accuracy. Free: 1 - edit distance / length of that decode. Total = code bits + reconstruct CE.",
        "",
        f"![exact-match and accuracy against code bits/byte]({Path(args.plot).name})",
        "",
        "| point | model | settings | code bits/B | bytes/code | exact lines | TF acc | free acc | recon CE "
        "bits/B | total bits/B | train s | parameters | measured |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(rows, key=lambda r: (list(POINTS).index(r["point"]), r["model"] != "hier_ae")):
        sets = ", ".join(f"`{s.replace('model.levels.0.', '')}`" for s in r["overrides"]) or "(recipe)"
        secs = f"{r['train_seconds']:.0f}" if r["train_seconds"] is not None else "-"
        params = f"{r['parameters']:,}" if r["parameters"] is not None else "-"
        L.append(
            f"| {r['point']} | {r['model']} | {sets} | {r['code_bits_per_byte']:.2f} | "
            f"{r['bytes_per_code']:.2f} | "
            f"{100 * r['exact_match']:.1f}% | {100 * r['teacher_forced_accuracy']:.1f}% | "
            f"{100 * r['free_accuracy']:.1f}% | {r['reconstruct_ce_bits_per_byte']:.2f} | "
            f"{r['total_bits_per_byte']:.2f} | {secs} | {params} | {r['date']}, {r['machine']} |"
        )
    ours = [r for r in rows if r["model"] == "hier_ae"]
    if ours:
        within = [r for r in ours if r["code_bits_per_byte"] <= target]
        best = max(within or ours, key=lambda r: r["exact_match"])
        where = f"at or below {target:g} code bits/byte" if within else "at any measured rate"
        short = 99 - 100 * best["exact_match"]
        verdict = "met" if within and short <= 0 else f"missed: {max(short, 0):.1f} points short of 99%"
        if not within:
            verdict += f", and every point above {target:g} bits/byte"
        L += [
            "",
            f"Target (level 0): >= 99% of held-out lines exact at <= {target:g} code bits/byte. Best hier_ae "
            f"point {where}: {best['point']}, {100 * best['exact_match']:.1f}% at "
            f"{best['code_bits_per_byte']:.2f} bits/byte ({verdict}).",
        ]
    # every defined point, not only this run's --points: a partial rerun keeps the list of points never run
    missing = [p for p in POINTS if not any(r["point"] == p for r in rows)]
    if missing:
        L += ["", "Not yet run: " + ", ".join(missing) + "."]
    return "\n".join(L) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.report_only:
        corpus = Path(args.data_root) / args.corpus
        if not (corpus / "train.txt").is_file() or not (corpus / "val.txt").is_file():
            found = sorted(p.parent.name for p in Path(args.data_root).glob("*/val.txt"))
            raise SystemExit(
                f"--corpus {args.corpus!r}: {corpus} needs train.txt and val.txt; corpora under "
                f"{args.data_root}: {', '.join(found) or 'none'}"
            )
        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        data = out_dir / f"{args.corpus}-train.jsonl"
        if not data.exists():
            write_documents(Path(args.data_root) / args.corpus / "train.txt", data)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for label, fut in [(p, pool.submit(run_point, args, p, data)) for p in args.points]:
                fut.result()
                print(f"[rate_distortion {label}] done ({time.perf_counter() - t0:.0f} s)", flush=True)
    rows = collect(args)
    if not rows:
        raise SystemExit(f"no finished point under {args.out_dir}: run without --report-only first")
    Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1))  # every figure, for later runs
    plot(rows, args.plot, args.corpus)
    from bench.run import machine

    text = render(args, rows, machine())
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
