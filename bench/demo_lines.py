"""Are the demo's 64 held-out lines a fair sample? Its report on them beside more lines drawn the same way.

    python -m bench.demo_lines --model runs/tiny/model        # configs/tiny.yaml's split, 16 groups of 64
    python -m bench.demo_lines --model M --config configs/tiny.yaml --groups 16 --group-lines 64 --out F.json

`make demo` (examples/train.py) scores 64 lines of the validation documents (`report_lines`: stripped, 8-120
bytes, seeded shuffle). This draws every such line in the same order, so group 0 is the demo's own 64 and
groups 1.. are the next 64 each, and scores every group exactly as the demo scores its lines
(`reconstruction_report(..., corrections=True)`: exact lines from the codes alone, teacher-forced bytes, code
bits per byte, and every line back with token corrections at its code rate, ideal lengths). Autoencoder
figures (the decoder reads the codes), not a language-model score.

The summary pools the other groups (their bits over their bytes) and gives the spread of a 64-line figure
across them: how far the demo's printed rate is from the model's rate on its kind of held-out line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import yaml

from hier_ae import HierAEModel
from hier_ae.data.sources import load_documents
from hier_ae.evaluation.report_lines import report_lines
from hier_ae.evaluation.reports import reconstruction_report

FIGURES = (
    "exact_match",
    "teacher_forced_accuracy",
    "code_bits_per_byte",
    "corrected_exact_match",
    "corrected_code_bits_per_byte",
    "corrections_per_line",
)


def group_lines(pool: list[bytes], groups: int, group_lines: int) -> list[list[bytes]]:
    """Consecutive groups of `group_lines` lines of `pool`, at most `groups`, the last ones full only.

    >>> group_lines([b"a", b"b", b"c", b"d", b"e"], 3, 2)
    [[b'a', b'b'], [b'c', b'd']]
    """
    return [
        pool[i : i + group_lines]
        for i in range(0, group_lines * groups, group_lines)
        if i + group_lines <= len(pool)
    ]


def score_groups(model, groups: list[list[bytes]]) -> list[dict]:
    """Each group's report figures (`FIGURES`), its lines, bytes and seconds."""
    rows = []
    for g, lines in enumerate(groups):
        t = time.perf_counter()
        rep = reconstruction_report(model, lines, corrections=True)
        row = {"group": g, "lines": len(lines), "bytes": sum(map(len, lines))}
        row.update({k: rep[k] for k in FIGURES if k in rep})
        row["seconds"] = round(time.perf_counter() - t, 1)
        rows.append(row)
    return rows


def summarize(rows: list[dict]) -> dict:
    """Group 0 (the demo's lines) beside the other groups: their pooled figures (weighted by bytes, which
    is what a rate over all their lines is), the mean, spread and range of their 64-line rates, and how
    many of them price above group 0 (`harder_groups`).

    >>> s = summarize([{"bytes": 10, "corrected_code_bits_per_byte": 7.0, "code_bits_per_byte": 5.0},
    ...                {"bytes": 10, "corrected_code_bits_per_byte": 6.0, "code_bits_per_byte": 4.0},
    ...                {"bytes": 30, "corrected_code_bits_per_byte": 8.0, "code_bits_per_byte": 6.0}])
    >>> s["others_pooled"]["corrected_code_bits_per_byte"], s["harder_groups"], s["others"]
    (7.5, 1, 2)
    """
    demo, others = rows[0], rows[1:]
    out = {"demo": demo, "others": len(others)}
    if not others:
        return out
    n_bytes = sum(r["bytes"] for r in others)
    pooled = {k: sum(r[k] * r["bytes"] for r in others) / n_bytes for k in FIGURES if k in others[0]}
    rates = [r["corrected_code_bits_per_byte"] for r in others]
    out.update(
        others_bytes=n_bytes,
        others_pooled=pooled,
        rate_mean=statistics.fmean(rates),
        rate_sd=statistics.stdev(rates) if len(rates) > 1 else 0.0,
        rate_min=min(rates),
        rate_max=max(rates),
        harder_groups=sum(r > demo["corrected_code_bits_per_byte"] for r in rates),
    )
    return out


def render(rows: list[dict], summary: dict, pool: int) -> str:
    head = (
        f"{pool} lines could be drawn; group 0 is the demo's own. Autoencoder figures.\n\n"
        "| group | lines | bytes | codes alone: exact (code bits/B) | TF acc "
        "| with corrections: exact, code bits/B (a line) |\n|---:|---:|---:|---|---:|---|\n"
    )
    body = "".join(
        f"| {r['group']} | {r['lines']} | {r['bytes']:,} | "
        f"{r['exact_match']:.1%} ({r['code_bits_per_byte']:.3f}) | {r['teacher_forced_accuracy']:.1%} | "
        f"{r['corrected_exact_match']:.1%}, "
        f"**{r['corrected_code_bits_per_byte']:.3f}** ({r['corrections_per_line']:.2f}) |\n"
        for r in rows
    )
    if summary["others"] == 0:
        return head + body
    p = summary["others_pooled"]
    tail = (
        f"\nGroups 1-{summary['others']} pooled ({summary['others_bytes']:,} bytes): codes alone "
        f"{p['code_bits_per_byte']:.3f} bits/B, {p['teacher_forced_accuracy']:.1%} TF, with corrections "
        f"**{p['corrected_code_bits_per_byte']:.3f}**; a group's rate {summary['rate_mean']:.3f} +- "
        f"{summary['rate_sd']:.3f} (range {summary['rate_min']:.3f}-{summary['rate_max']:.3f}); "
        f"{summary['harder_groups']} of {summary['others']} groups price above the demo's "
        f"{rows[0]['corrected_code_bits_per_byte']:.3f}.\n"
    )
    return head + body + tail


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a saved hier_ae folder (make demo: runs/tiny/model)")
    p.add_argument(
        "--config", default="configs/tiny.yaml", help="the training config: its `data` names the split"
    )
    p.add_argument("--groups", type=int, default=16, help="groups scored, the demo's own first")
    p.add_argument(
        "--group-lines", type=int, default=None, help="lines a group (default: the config's lines, 64)"
    )
    p.add_argument("--out", default=None, help="also write rows and summary as JSON here")
    args = p.parse_args(argv)
    if args.groups < 1 or (args.group_lines is not None and args.group_lines < 1):
        p.error(f"--groups and --group-lines must be >= 1, got {args.groups} and {args.group_lines}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    with open(args.config) as f:
        cfg = yaml.safe_load(f)
    n = args.group_lines or int(cfg.get("evaluation", {}).get("lines", 64))
    pool = report_lines(list(load_documents(cfg["data"], "validation")), None)
    groups = group_lines(pool, args.groups, n)
    if not groups:
        raise SystemExit(f"the validation split holds {len(pool)} report lines, fewer than one group of {n}")
    model = HierAEModel.from_pretrained(args.model).eval()
    rows = score_groups(model, groups)
    summary = summarize(rows)
    print(render(rows, summary, len(pool)))
    result = {
        "model": args.model,
        "config": args.config,
        "pool_lines": len(pool),
        "rows": rows,
        "summary": summary,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
