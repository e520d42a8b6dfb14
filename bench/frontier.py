"""The compute frontier (issue #20): every family at several sizes under one wall-clock budget on
Tiny Shakespeare, validation bits/byte against size and against training FLOPs.

    python -m bench.frontier                          # every point below, 10 min per model (about 170 min)
    python -m bench.frontier --sizes 0.9m 1.4m        # some sizes (cached points are reused)
    python -m bench.frontier --report-only            # the report and the plot from what is cached
    python -m bench.frontier --budget-minutes 0.1 --quick --out /tmp/f.md --plot /tmp/f.png \
        --points /tmp/f.json --cache-dir /tmp/frontier-cache                                   # smoke

A size is a hier_ae config (`SIZES`). At a size of the two-level design (`TWO_LEVEL`) the Llama and BLT
of that point are sized to its parameter count, as in the main run (BLT's smallest shape is larger
than the smallest point: `PEER_PARAMS`); a size of the one-level design (`ONE_LEVEL`, configs/small.yaml
until session 10, before its decoder inputs) trains hier_ae alone, its own line in the plot
("hier_ae-1level"). Each point is one `python -m bench.run` with that config, its own cache folder
and the main data only (no second table, no scaling, no generation timings, no reconstruction
benchmark): train, FLOPs, score
(bench/run.py). So every figure here comes from the same code as the main table; the main table's
budget is larger, so its figures are not points of this frontier.

The report goes to `--out` (bench/frontier.md), every point's figures to `--points`
(bench/frontier.json: a later run can add sizes without the earlier points' cache), the plot to
`--plot` (bench/frontier.png): bits/byte against training FLOPs (counted with FlopCounterMode,
bench/flops.py: FLOPs per step x steps run, per stage), one line per family.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# label -> hier_ae config of the two-level design; the peers of a point match its parameter count
# (with codebooks)
TWO_LEVEL = {
    "0.9m": "bench/variants/frontier/hier_ae-0.9m.yaml",
    "1.4m": "bench/variants/frontier/hier_ae-1.4m.yaml",
    "3.1m": "bench/variants/frontier/hier_ae-3.1m.yaml",
    "9m": "bench/variants/frontier/hier_ae-9m.yaml",
}
# the one-level design (level 1 removed, a deeper top LM over the level-0 codes: the G-series of
# bench/experiments.md; configs/small.yaml was its 1.1 M point): hier_ae alone, its own line in the plot
# ("hier_ae-1level"); the peers of about its sizes are the two-level points'
ONE_LEVEL = {
    "1level-0.9m": "bench/variants/frontier/hier_ae-1level-0.9m.yaml",
    "1level-1.1m": "bench/variants/frontier/hier_ae-1level-1.1m.yaml",
    "1level-3.1m": "bench/variants/frontier/hier_ae-1level-3.1m.yaml",
}
SIZES = {**TWO_LEVEL, **ONE_LEVEL}
# where a peer cannot be sized to a point's count: BLT's fixed parts (byte-level local modules, hash
# n-gram embeddings, patcher) come to 1.15 M parameters at the smallest global transformer in its grid
PEER_PARAMS = {"0.9m": {"blt": 1_149_888}}
FAMILIES = ("hier_ae", "hier_ae-1level", "llama", "blt")  # the plot's lines
VAL = "tinyshakespeare"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-minutes", type=float, default=10.0, help="training budget per model and size")
    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES), help="sizes to run")
    ap.add_argument("--recon-lines", type=int, default=64, help="hier_ae's exact-match lines per point")
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"), help="the corpora folder")
    ap.add_argument("--cache-dir", default=str(HERE / "cache-frontier"), help="one folder per size inside")
    ap.add_argument("--out", default=str(HERE / "frontier.md"), help="the report (markdown)")
    ap.add_argument("--plot", default=str(HERE / "frontier.png"), help="the plot (PNG)")
    ap.add_argument(
        "--points",
        default=str(HERE / "frontier.json"),
        help="every point's figures (JSON, committed): points not in the cache are taken from here",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (bench.run's default: all)")
    ap.add_argument("--report-only", action="store_true", help="no training: report what is cached")
    ap.add_argument("--quick", action="store_true", help="smoke test: bench.run's --quick caps, own caches")
    return ap.parse_args(argv)


def point_argv(args, size: str) -> list[str]:
    """bench.run's arguments for one point of the frontier."""
    argv = [
        "--config", str(REPO / SIZES[size]),
        "--budget-minutes", f"{args.budget_minutes:g}",
        "--skip-second", "--skip-scaling", "--skip-recon", "--skip-generate",
        "--recon-lines", str(args.recon_lines),
        "--data-root", args.data_root,
        "--cache-dir", str(Path(args.cache_dir) / size),
        "--out", str(Path(args.cache_dir) / size / "results.md"),
    ]  # fmt: skip
    argv += ["--quick"] if args.quick else []
    argv += ["--only", "hier_ae"] if size in ONE_LEVEL else []
    for model, n in PEER_PARAMS.get(size, {}).items():
        argv += ["--peer-params", f"{model}={n}"]
    return argv + (["--threads", str(args.threads)] if args.threads else [])


def point_families(size: str) -> tuple[str, ...]:
    """The families of a point: all three at a two-level size, hier_ae alone at a one-level size."""
    return ("hier_ae-1level",) if size in ONE_LEVEL else ("hier_ae", "llama", "blt")


def bench_model(family: str) -> str:
    """The bench.run model a family's results are cached under ("hier_ae-1level" -> "hier_ae")."""
    return "hier_ae" if family.startswith("hier_ae") else family


def collect(args) -> list[dict]:
    """One row per (size, family) whose train, flops and score results are all cached; a point the
    cache lacks (the cache is not committed) comes from `--points` when an earlier run wrote it there
    with the same budget."""
    from bench import run
    from bench.plan import PRIMARY, read_json, result_path

    cpu = run.cpu_name()  # the cache is this machine's
    rows = []
    saved = {}
    if Path(args.points).exists():
        kept = json.loads(Path(args.points).read_text())
        if kept.get("budget_minutes") == args.budget_minutes and kept.get("quick", False) == args.quick:
            saved = {(r["size"], r["family"]): r for r in kept["points"]}
    for size in SIZES:
        run_args = run.parse_args(point_argv(args, size))
        for fam in point_families(size):
            phases = ("train", "flops", "score")
            tr, fl, sc = (read_json(result_path(run_args, p, bench_model(fam), PRIMARY)) for p in phases)
            if not (tr and fl and sc):
                if (size, fam) in saved:
                    rows.append(saved[size, fam])
                continue
            trained = result_path(run_args, "train", bench_model(fam), PRIMARY)
            when = datetime.date.fromtimestamp(trained.stat().st_mtime)
            rows.append(
                {
                    "size": size,
                    "family": fam,
                    "date": when.isoformat(),
                    "cpu": cpu,
                    "parameters": tr["parameters"],
                    "shape": tr["shape"],
                    "train_bytes": tr["train_bytes"],
                    "train_seconds": tr["train_seconds"],
                    "train_flops": fl["run_train_flops"],
                    "train_flops_per_byte": fl["train_flops_per_byte"],
                    "inference_flops_per_byte": fl["inference_flops_per_byte"],
                    "bits_per_byte": sc["val"][VAL]["predict"]["bits_per_byte"],
                }
            )
    return rows


def best_sizes(rows: list[dict]) -> dict[str, dict]:
    """family -> its row with the lowest validation bits/byte."""
    best: dict[str, dict] = {}
    for r in rows:
        if r["family"] not in best or r["bits_per_byte"] < best[r["family"]]["bits_per_byte"]:
            best[r["family"]] = r
    return best


def plot(rows: list[dict], path: str, budget: float) -> None:
    """Bits/byte against training FLOPs (log x) and against parameters, one line per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for fam in FAMILIES:
        pts = sorted((r for r in rows if r["family"] == fam), key=lambda r: r["parameters"])
        if not pts:
            continue
        for ax, key in zip(axes, ("train_flops", "parameters")):
            ax.plot([p[key] for p in pts], [p["bits_per_byte"] for p in pts], marker="o", label=fam)
            for p in pts:
                ax.annotate(p["size"], (p[key], p["bits_per_byte"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")  # fmt: skip
    for ax, label in zip(axes, ("training FLOPs (counted, whole run)", "parameters")):
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("validation bits/byte (Tiny Shakespeare)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"Compute frontier: {budget:g} minutes of training per model on 2 CPU cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(args, rows: list[dict], machine: str) -> str:
    plot_name = Path(args.plot).name
    cmd = "python -m bench.frontier --budget-minutes " + f"{args.budget_minutes:g}"
    L = [
        "# Compute frontier (issue #20)",
        "",
        f"Report written {datetime.date.today().isoformat()} on {machine}; each point's date and CPU are in "
        f"its row. Command: `{cmd}` (from the repository "
        f"root): each family at the sizes below, {args.budget_minutes:g} minutes of training each on Tiny "
        "Shakespeare (the same seeded batches, the same trainer as the main table: bench/training.py), "
        "scored on its whole val.txt by the main table's sliding-window scorer. hier_ae in predict mode. "
        "Training FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` on one batch of each "
        "stage (phase) and multiplied by the steps the run took; per byte: per trained byte.",
        "",
        f"![bits/byte against training FLOPs]({plot_name})",
        "",
        "| size | family | parameters | shape | bytes trained | train FLOPs | train MFLOP/byte | "
        "inference MFLOP/byte | val bits/byte | measured |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(rows, key=lambda r: (FAMILIES.index(r["family"]), r["parameters"])):
        L.append(
            f"| {r['size']} | {r['family']} | {r['parameters']:,} | {r['shape']} | "
            f"{r['train_bytes'] / 1e6:.2f} M | {r['train_flops']:.3g} | "
            f"{r['train_flops_per_byte'] / 1e6:.2f} | "
            f"{r['inference_flops_per_byte'] / 1e6:.2f} | {r['bits_per_byte']:.4f} | "
            f"{r.get('date', 'not recorded')}, {r.get('cpu', 'not recorded')} |"
        )
    cpus = {r.get("cpu", "not recorded") for r in rows}
    if len(cpus) > 1:
        L += [
            "",
            f"The points ran on {len(cpus)} different CPUs ({', '.join(sorted(cpus))}): a wall-clock budget "
            "buys different work on each, so compare sizes and families measured on the same CPU.",
        ]
    best = best_sizes(rows)
    L += ["", "Each family at its best size under this budget:", ""]
    for fam, r in best.items():
        L.append(f"- {fam}: {r['size']} ({r['parameters']:,} parameters), {r['bits_per_byte']:.4f} bits/byte")
    ours = [best[f] for f in ("hier_ae", "hier_ae-1level") if f in best]
    if ours:
        h = min(ours, key=lambda r: r["bits_per_byte"])
        for fam in ("llama", "blt"):
            if fam in best:
                ratio = h["bits_per_byte"] / best[fam]["bits_per_byte"]
                L.append(f"- {h['family']} / {fam} at their best sizes: {ratio:.3f}x")
    done = {(r["size"], r["family"]) for r in rows}
    missing = [(s, f) for s in SIZES for f in point_families(s) if (s, f) not in done]
    if missing:
        L += ["", "Not yet run: " + ", ".join(f"{f} at {s}" for s, f in missing) + "."]
    return "\n".join(L) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.report_only:
        for size in args.sizes:
            cmd = [sys.executable, "-m", "bench.run", *point_argv(args, size)]
            print(f"[frontier {size}] {' '.join(cmd)}", flush=True)
            subprocess.run(cmd, check=True)
    from bench.run import machine

    rows = collect(args)
    if not rows:
        raise SystemExit(f"no cached point under {args.cache_dir}: run without --report-only first")
    Path(args.points).write_text(
        json.dumps({"budget_minutes": args.budget_minutes, "quick": args.quick, "points": rows}, indent=1)
    )
    plot(rows, args.plot, args.budget_minutes)
    text = render(args, rows, machine())
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
