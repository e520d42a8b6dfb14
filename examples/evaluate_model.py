"""Evaluate a saved hier_ae model on a text file: prediction, reconstruction, codes, segmentation.

    python examples/evaluate_model.py --model runs/tiny/model \
        --text examples/lm_eval_tasks/data/sentences.txt --out runs/tiny/eval

Two different things are measured, and the report keeps them apart:

- **prediction (causal LM)**: bits per byte of each byte given only `<s>` and the bytes before it
  (`HierAEModel.predict`). The documents are the non-empty lines (`--documents lines`, the
  default: the same documents as the reconstruction figures) or the whole file as one document
  (`--documents file`). Each document is scored in sliding windows of
  `config.max_position_embeddings` bytes; `--stride` below the window makes them overlap, so every
  scored byte has more context; the default, stride = window, gives exactly lm-eval's
  `loglikelihood_rolling` windows. Also with the byte decoder's contexts zeroed
  (`predict(..., zero_context=True)`): the gap is what the levels above contribute.
- **reconstruction (autoencoder; decoder reads the codes)**: each non-empty line is encoded as a
  document `<s>` + line + `</s>` and decoded from its top-level codes; exact if every id up to and
  including `</s>` comes back. The decoder reads the codes of the very text it regenerates, so this
  is a compression figure (with code bits per byte), never a language-model figure.

Also: tokens per segment and bytes per code at every level, codebook usage per level, and the
segmentation of the first lines drawn as a PNG and a self-contained HTML page (the text with the
segment boundaries of every level, and the level-0 entropy curve with the boundary threshold).

Writes OUT/results.json, OUT/segmentation.png and OUT/segmentation.html (OUT defaults to
MODEL/eval). Runs on CPU; set HF_HUB_OFFLINE=1 to keep it off the network.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
import time
from pathlib import Path

import torch

from hier_ae.cli import run
from hier_ae.configuration_hier_ae import BOS_ID, BYTE_OFFSET, EOS_ID, PAD_ID
from hier_ae.evaluation.reports import (
    bits_per_byte,
    codebook_usage,
    predict_loglikelihoods,
    reconstruction_report,
    segmentation,
)

PREDICTION = "prediction (causal LM)"
RECONSTRUCTION = "reconstruction (autoencoder; decoder reads the codes)"
MAX_PNG_ROWS = 24  # rows of --draw-width bytes in the PNG (the HTML shows the drawn lines in full)
LEVEL_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="saved model folder (AutoModel, trust_remote_code)")
    p.add_argument("--text", required=True, help="UTF-8 (or any bytes) text file")
    p.add_argument("--out", default=None, help="output folder (default: MODEL/eval)")
    p.add_argument(
        "--window", type=int, default=None, help="prediction window (default: max_position_embeddings)"
    )
    p.add_argument("--stride", type=int, default=None, help="prediction stride (default: the window)")
    p.add_argument(
        "--documents",
        choices=("lines", "file"),
        default="lines",
        help="prediction documents: each non-empty line (default) or the whole file",
    )
    p.add_argument(
        "--max-lines", type=int, default=2000, help="lines used (prediction, reconstruction, codes)"
    )
    p.add_argument(
        "--max-bytes", type=int, default=1 << 20, help="bytes of the file used by --documents file"
    )
    p.add_argument("--draw-lines", type=int, default=6, help="lines drawn in the segmentation pictures")
    p.add_argument("--draw-width", type=int, default=64, help="bytes per row in the pictures")
    p.add_argument("--batch-size", type=int, default=8)
    return p.parse_args(argv)


# ---- display helpers ----------------------------------------------------------------------------
def id_label(i: int) -> str:
    """One printable label per byte id: <s>, </s>, the character, or a visible stand-in."""
    if i == BOS_ID:
        return "⟨s⟩"
    if i == EOS_ID:
        return "⟨/s⟩"
    b = i - BYTE_OFFSET
    if b == 0x20:
        return "␣"
    if b == 0x0A:
        return "↵"
    if b == 0x09:
        return "→"
    return chr(b) if 0x21 <= b < 0x7F else "·"


def id_title(i: int) -> str:
    return {PAD_ID: "<pad>", EOS_ID: "</s>", BOS_ID: "<s>"}.get(i, f"byte 0x{i - BYTE_OFFSET:02x}")


def boundary_levels(seg: dict) -> list[int]:
    """For every id position: the highest level with a segment starting there (-1: none)."""
    top = [-1] * len(seg["ids"])
    for lv, level in enumerate(seg["levels"]):
        for s in level["starts"]:
            top[s] = max(top[s], lv)
    return top


def draw_png(segs: list[dict], path: Path, width: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(k, lo) for k, s in enumerate(segs) for lo in range(0, len(s["ids"]), width)][:MAX_PNG_ROWS]
    n_levels = len(segs[0]["levels"]) if segs else 1
    fig, axes = plt.subplots(
        len(rows), 1, figsize=(max(8, width * 0.22), 1.9 * len(rows) + 0.8), squeeze=False
    )
    h_max = max((max(s["entropy"]) for s in segs if s["entropy"]), default=1.0)
    top = max(h_max, segs[0]["threshold"] if segs else 0.0) * 1.15 + 0.1
    for ax, (k, lo) in zip(axes[:, 0], rows):
        s = segs[k]
        ids = s["ids"][lo : lo + width]
        # H[t] is the uncertainty about id t + 1: drawn at t + 1, so a peak sits on a segment's first byte
        xs = [t + 1 - lo for t in range(lo, lo + len(ids)) if t + 1 < len(s["ids"]) and t + 1 - lo < len(ids)]
        ax.plot(xs, [s["entropy"][x + lo - 1] for x in xs], color="black", lw=1.0, marker=".", ms=3)
        thr_label = "threshold" if s["boundary_mode"] == "threshold" else "delta (a rise, not a level)"
        ax.axhline(
            s["threshold"], color="gray", ls="--", lw=0.8, label=f"{thr_label} {s['threshold']:.2f} bits"
        )
        for lv, level in enumerate(s["levels"]):
            for st in level["starts"]:
                if lo <= st < lo + width:
                    ax.axvline(
                        st - lo - 0.5,
                        color=LEVEL_COLORS[lv % len(LEVEL_COLORS)],
                        lw=1.0 + 1.2 * lv,
                        ymax=0.55 + 0.45 * (lv + 1) / n_levels,
                        alpha=0.8,
                        label=f"level {lv} segment start",
                    )
        ax.set_xlim(-0.7, width - 0.3)
        ax.set_ylim(0, top)
        ax.set_xticks(range(len(ids)))
        ax.set_xticklabels([id_label(i) for i in ids], fontsize=7, family="DejaVu Sans Mono")
        ax.tick_params(axis="x", length=0)
        ax.set_ylabel("H (bits)", fontsize=8)
        ax.set_title(f"line {k + 1}, ids {lo}..{lo + len(ids) - 1}", fontsize=8, loc="left")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    fig.legend(uniq.values(), uniq.keys(), loc="upper right", fontsize=8, ncol=len(uniq))
    fig.suptitle(
        "Segmentation by encode(): level-0 entropy H[t] (uncertainty about the next byte) and segment starts",
        fontsize=10,
        x=0.01,
        ha="left",
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def svg_curve(s: dict, width: int, cw: int = 12) -> str:
    """One inline SVG per document: entropy polyline, threshold, boundaries and the characters."""
    ids, H = s["ids"], s["entropy"]
    n_rows = math.ceil(len(ids) / width)
    ph, th = 70, 16  # plot height, text row height
    row_h = ph + th + 10
    top = max(max(H, default=1.0), s["threshold"]) * 1.15 + 0.1
    levels = boundary_levels(s)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width * cw + 20}" height="{n_rows * row_h}" '
        'font-family="monospace" font-size="11">'
    ]
    for r in range(n_rows):
        lo, y0 = r * width, r * row_h
        hi = min(lo + width, len(ids))
        y = lambda h, y0=y0: y0 + ph - h / top * ph  # noqa: E731
        thr_y = y(s["threshold"])
        parts.append(
            f'<line x1="0" x2="{width * cw}" y1="{thr_y:.1f}" y2="{thr_y:.1f}" stroke="gray" '
            f'stroke-dasharray="4 3"><title>threshold {s["threshold"]:.3f} bits</title></line>'
        )
        for t in range(lo, hi):
            if levels[t] >= 0:
                lv = levels[t]
                x = (t - lo) * cw
                y1 = y0 + ph * (0.45 - 0.45 * lv / max(len(s["levels"]), 1))  # taller for upper levels
                parts.append(
                    f'<line x1="{x}" x2="{x}" y1="{y1:.1f}" '
                    f'y2="{y0 + ph + th}" stroke="{LEVEL_COLORS[lv % len(LEVEL_COLORS)]}" '
                    f'stroke-width="{1 + 1.5 * lv}"><title>level {lv} segment start</title></line>'
                )
            parts.append(
                f'<text x="{(t - lo) * cw + cw / 2}" y="{y0 + ph + th - 3}" text-anchor="middle">'
                f"<title>{html.escape(id_title(ids[t]))}</title>{html.escape(id_label(ids[t]))}</text>"
            )
        pts = [
            f"{(t + 1 - lo) * cw + cw / 2:.1f},{y(H[t]):.1f}"
            for t in range(max(lo - 1, 0), hi - 1)
            if lo <= t + 1 < hi
        ]
        if pts:
            parts.append(
                f'<polyline points="{" ".join(pts)}" fill="none" stroke="black" stroke-width="1.2"/>'
            )
        for t in range(max(lo - 1, 0), hi - 1):
            if lo <= t + 1 < hi:
                parts.append(
                    f'<circle cx="{(t + 1 - lo) * cw + cw / 2:.1f}" cy="{y(H[t]):.1f}" r="2">'
                    f"<title>H = {H[t]:.2f} bits (uncertainty about this byte)</title></circle>"
                )
    parts.append("</svg>")
    return "".join(parts)


def text_view(s: dict) -> str:
    """The document as text, with a bar before every segment start (taller and coloured by level)."""
    levels = boundary_levels(s)
    starts0 = set(s["levels"][0]["starts"])
    codes0 = s["levels"][0]["codes"]
    seg0 = -1
    out = []
    for t, i in enumerate(s["ids"]):
        lv = levels[t]
        if lv >= 0:
            out.append(f'<i class="b b{min(lv, 4)}" title="level {lv} segment start"></i>')
        if t in starts0:
            seg0 += 1
        ch = html.escape(chr(i - BYTE_OFFSET) if 0x20 <= i - BYTE_OFFSET < 0x7F else id_label(i))
        title = f"{id_title(i)}, level-0 segment {seg0}, code {codes0[seg0]}"
        if t > 0:
            title += f", H = {s['entropy'][t - 1]:.2f} bits"
        out.append(f'<span class="s{seg0 % 2}" title="{html.escape(title)}">{ch}</span>')
    return "".join(out)


def write_html(results: dict, segs: list[dict], path: Path, width: int) -> None:
    pred, rec = results["prediction"], results["reconstruction"]
    rows = [
        (PREDICTION, "bits per byte", f"{pred['bits_per_byte']:.4f}"),
        (PREDICTION, "bits per byte, contexts zeroed", f"{pred['bits_per_byte_zero_context']:.4f}"),
        (RECONSTRUCTION, "exact-match rate (lines)", f"{rec['exact_match']:.4f}"),
        (RECONSTRUCTION, "code bits per byte", f"{rec['code_bits_per_byte']:.4f}"),
    ]
    for lv, tps in enumerate(results["segmentation"]["tokens_per_segment"]):
        rows.append(("segmentation", f"level {lv} tokens per segment", f"{tps:.3f}"))
    table = "".join(
        f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td><td>{c}</td></tr>" for a, b, c in rows
    )
    legend = " ".join(
        f'<span style="color:{LEVEL_COLORS[lv % len(LEVEL_COLORS)]}">&#9646; level {lv} segment start</span>'
        for lv in range(len(segs[0]["levels"]) if segs else 0)
    )
    docs = "".join(
        f"<h3>line {k + 1}</h3><p class='txt'>{text_view(s)}</p>{svg_curve(s, width)}"
        for k, s in enumerate(segs)
    )
    colors = "".join(
        f".b{lv}{{border-left:{1 + lv}px solid {c};height:{1.0 + 0.35 * lv:.2f}em}}"
        for lv, c in enumerate(LEVEL_COLORS)
    )
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>hier_ae segmentation</title>
<style>
body{{font-family:sans-serif;margin:1.5em;max-width:1100px}}
table{{border-collapse:collapse}} td{{border:1px solid #ccc;padding:2px 8px}}
.txt{{font-family:monospace;font-size:15px;line-height:2.2em;white-space:pre-wrap;word-break:break-all}}
.s0{{background:#eef3fb}} .s1{{background:#fdf1e3}}
.b{{display:inline-block;vertical-align:middle;margin:0 1px}} {colors}
</style></head><body>
<h1>Segmentation of {html.escape(results["text"])}</h1>
<p>Model <code>{html.escape(results["model"])}</code>.
<b>{html.escape(PREDICTION)}</b> figures score each byte from the bytes before it.
<b>{html.escape(RECONSTRUCTION)}</b> figures let the decoder read the codes of the
very text it regenerates: compression, not language modelling.</p>
<table>{table}</table>
<h2>Segments</h2>
<p>Each line is encoded as a document &lt;s&gt; + line + &lt;/s&gt;. Bars mark segment starts: {legend}.
Level-0 segments alternate background colours. The curve is the level-0 entropy model's H (bits) about
each byte, drawn on that byte; the dashed line is the boundary value
({html.escape(segs[0]["boundary_mode"] if segs else "")}, {segs[0]["threshold"] if segs else 0:.3f} bits):
in threshold mode a byte opens a segment when the H drawn on it is above the line (or its segment
reached max_segment_len, or it follows &lt;/s&gt;). Hover for values.</p>
{docs}
</body></html>
"""
    path.write_text(page, encoding="utf-8")


# ---- main ---------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    args = parse_args(argv)
    from transformers import AutoModel

    t0 = time.perf_counter()
    model = AutoModel.from_pretrained(args.model, trust_remote_code=True, dtype=torch.float32).eval()
    out_dir = Path(args.out) if args.out else Path(args.model) / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    data = Path(args.text).read_bytes()
    lines = [ln.rstrip(b"\r") for ln in data.split(b"\n")]
    lines = [ln for ln in lines if ln.strip()][: args.max_lines]
    if not lines:
        sys.exit(f"{args.text} has no non-empty line.")
    docs = lines if args.documents == "lines" else [data[: args.max_bytes]]
    window = args.window or model.config.max_position_embeddings
    stride = args.stride or window

    # prediction (causal LM): each document <s> + bytes, scored in sliding windows
    ll = predict_loglikelihoods(model, docs, window, stride, batch_size=args.batch_size)
    ll0 = predict_loglikelihoods(model, docs, window, stride, zero_context=True, batch_size=args.batch_size)
    bpb, bpb0 = bits_per_byte(ll, docs), bits_per_byte(ll0, docs)
    prediction = {
        "label": PREDICTION,
        "what": "each byte scored from <s> and the bytes before it only (HierAEModel.predict)",
        "bits_per_byte": bpb,
        "bits_per_byte_zero_context": bpb0,
        "zero_context_gap_bits_per_byte": bpb0 - bpb,
        "documents": args.documents,
        "num_documents": len(docs),
        "bytes": sum(len(d) for d in docs),
        "window": window,
        "stride": stride,
    }
    # reconstruction (autoencoder): each line a document, decoded from its top-level codes
    rep = reconstruction_report(model, lines, batch_size=32)
    reconstruction = {
        "label": RECONSTRUCTION,
        "what": "each line encoded as <s> + line + </s> and decoded from its own top-level codes; "
        "exact = every id up to and including </s> comes back. A compression figure, not prediction.",
        "lines": rep["documents"],
        "exact_match": rep["exact_match"],
        "code_bits_per_byte": rep["code_bits_per_byte"],
        "code_bits_per_byte_per_level": rep["code_bits_per_byte_per_level"],
        "code_bits_definition": "codes of the level x log2(K^R) / bytes (top level: the fixed-length "
        "size of what decode needs)",
    }
    seg_stats = {
        "on": "the reconstruction lines",
        "tokens_per_segment": rep["tokens_per_segment"],
        "bytes_per_code": rep["bytes_per_code"],
    }
    usage = codebook_usage(model, lines)
    segs = [segmentation(model, ln) for ln in lines[: max(args.draw_lines, 1)]]
    png, page = out_dir / "segmentation.png", out_dir / "segmentation.html"
    results = {
        "model": str(args.model),
        "text": str(args.text),
        "prediction": prediction,
        "reconstruction": reconstruction,
        "segmentation": seg_stats,
        "codebooks": usage,
        "files": {"png": str(png), "html": str(page), "json": str(out_dir / "results.json")},
    }
    draw_png(segs, png, args.draw_width)
    write_html(results, segs, page, args.draw_width)
    results["seconds"] = time.perf_counter() - t0
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    print(
        f"{PREDICTION}, {prediction['bytes']} bytes in {len(docs)} document(s) ({args.documents}), "
        f"window {window}, stride {stride}:"
    )
    print(f"  bits per byte                    {bpb:.4f}")
    print(
        f"  bits per byte, contexts zeroed   {bpb0:.4f}  (gap {bpb0 - bpb:+.4f}: what the levels above add)"
    )
    print(f"{RECONSTRUCTION}, {rep['documents']} lines:")
    print(f"  exact-match rate                 {rep['exact_match']:.4f}")
    print(f"  code bits per byte (top level)   {rep['code_bits_per_byte']:.4f}")
    for lv, u in enumerate(usage):
        print(
            f"level {lv}: {rep['tokens_per_segment'][lv]:.2f} tokens/segment, "
            f"{rep['bytes_per_code'][lv]:.2f} bytes/code, "
            f"code bits/byte {rep['code_bits_per_byte_per_level'][lv]:.4f}, "
            f"usage perplexity {u['usage_perplexity']:.1f}, distinct codes {u['distinct_codes']}, "
            f"unused per depth {u['unused_codes_per_depth']}, dead (training state) {u['dead_codes']}"
        )
    print(f"wrote {out_dir / 'results.json'}, {png}, {page}")
    return results


if __name__ == "__main__":
    run(main)
