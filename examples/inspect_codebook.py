"""What each code means: per level, codebook usage and the byte strings behind every code.

    python examples/inspect_codebook.py --model runs/tiny/model --out runs/tiny/codebook
    python examples/inspect_codebook.py --model runs/tiny/model --data docs.jsonl --max-documents 500

Data options are train.py's (`--config`, `--data`, `--streaming`, `--set data.KEY=VALUE`, `--split`).
The first `--max-documents` documents are encoded (`<s>` + bytes + `</s>`, chunked to the model's
`max_input_bytes`). Per level l, OUT holds:

    level-<l>.html   a self-contained page: usage histogram (PNG, embedded), usage perplexity, unused
                     and dead codes, and a sortable table (click a header) with, for each code, its
                     count, its most frequent byte strings in the data, and what the code alone
                     decodes to (`decode(codes=[[c]], level=l)`) at every level below
    level-<l>.md     the summary in markdown (perplexity, dead codes, the most used codes)
    level-<l>.png    the usage histogram
    codebook.json    every figure above, for scripts

A code's byte strings are the bytes its segments covered: at level 0 the segment's bytes, above
that the union of the bytes under its children (`hier_ae.codes.shards.segment_spans`); `<s>` and
`</s>` show where a segment held the document's framing.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
from collections import Counter
from pathlib import Path

import torch
from encode_dataset import add_data_options, data_config

from hier_ae.cli import run
from hier_ae.codes.shards import encode_rows, frame_chunks, load_model, segment_spans
from hier_ae.configuration_hier_ae import BOS_ID, BYTE_OFFSET, EOS_ID, PAD_ID, LevelVocab
from hier_ae.data.sources import iter_documents

SPECIAL = {PAD_ID: "<pad>", EOS_ID: "</s>", BOS_ID: "<s>"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="saved hier_ae model folder")
    p.add_argument("--out", default=None, help="output folder (default: MODEL/codebook)")
    add_data_options(p)
    p.add_argument("--max-documents", type=int, default=2000, help="documents encoded")
    p.add_argument("--top-strings", type=int, default=5, help="byte strings shown per code")
    p.add_argument("--max-codes", type=int, default=1024, help="table rows per level (most used first)")
    p.add_argument("--batch-size", type=int, default=16)
    return p.parse_args(argv)


def ids_text(ids: list[int]) -> str:
    """Byte ids as readable text: bytes decoded as UTF-8 (replace), `<s>` / `</s>` for the framing.

    [2, 107, 108, 13, 1] -> '<s>hi\\n</s>' (newlines and tabs shown escaped).
    """
    out, buf = [], bytearray()
    for i in ids:
        if i >= BYTE_OFFSET:
            buf.append(i - BYTE_OFFSET)
            continue
        out.append(buf.decode("utf-8", errors="replace"))
        buf = bytearray()
        out.append(SPECIAL[i])
    out.append(buf.decode("utf-8", errors="replace"))
    return "".join(out).replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def codes_text(tokens: list[int], num_codes: int) -> str:
    """A regenerated code stream of a level: codes as numbers, framing as bos / eos / pad."""
    vocab = LevelVocab.of_codes(num_codes)
    names = {vocab.pad_id: "pad", vocab.eos_id: "eos", vocab.bos_id: "bos"}
    return " ".join(names.get(t, str(t)) for t in tokens)


def collect(model, docs: list[bytes], batch_size: int):
    """Per level: a Counter of code uses, per code a Counter of the id strings it covered, and a
    Counter of the codes that open a document (their segment holds `<s>`)."""
    max_ids = model.config.max_input_bytes
    rows, framing = [], []
    for d in docs:
        chunks = frame_chunks(d, max_ids)
        rows += chunks
        framing += [(part == 0, part == len(chunks) - 1) for part in range(len(chunks))]
    encoded = encode_rows(model, rows, batch_size)
    L = model.num_levels
    uses = [Counter() for _ in range(L)]
    firsts = [Counter() for _ in range(L)]
    strings: list[dict[int, Counter]] = [{} for _ in range(L)]
    for row, rec, (bos, eos) in zip(rows, encoded, framing):
        ids = row.tolist()
        for lv in range(L):
            if bos and rec["codes"][lv]:
                firsts[lv][rec["codes"][lv][0]] += 1
        for lv, spans in enumerate(segment_spans(rec["lengths"], bos, eos)):
            for code, (lo, hi) in zip(rec["codes"][lv], spans):
                uses[lv][code] += 1
                strings[lv].setdefault(code, Counter())[tuple(ids[lo:hi])] += 1
    return uses, strings, firsts


@torch.no_grad()
def decode_alone(model, level: int, codes: list[int], start: int | None = None, batch_size: int = 256):
    """What each code alone decodes to: `decode(codes=[[c]], level=level)`, at every level below.

    A model trained on documents opens every row with `<s>`, so a code alone often decodes to just
    `<s>`; with `start` (the level's most common document-opening code s) each code is also decoded
    after it, `decode([[s, c]])`, and the part after what s alone gives is shown ("after <s>").
    Returns per code {"bytes": text, "after_start": text or None, "levels": {l: code stream}} for the
    levels 1 <= l <= level (the regenerated code stream of level l - 1).
    """
    device = next(model.parameters()).device

    def run(batch: list[list[int]]):
        dec = model.decode(torch.tensor(batch, dtype=torch.long, device=device), level=level)  # (B, S)
        seqs = [dec.sequences[j][dec.attention_mask[j].bool()].tolist() for j in range(len(batch))]
        return dec, seqs

    prefix = run([[start]])[1][0] if start is not None else None
    out = []
    for i in range(0, len(codes), batch_size):
        chunk = codes[i : i + batch_size]
        dec, seqs = run([[c] for c in chunk])
        after = run([[start, c] for c in chunk])[1] if start is not None else [None] * len(chunk)
        for j, got in enumerate(seqs):
            streams = {
                lv: codes_text(dec.level_tokens[lv][j].tolist(), model.levels[lv - 1].cfg.num_codes)
                for lv in range(1, level + 1)
            }
            tail = after[j]
            if tail is not None and tail[: len(prefix)] == prefix:
                tail = tail[len(prefix) :]
            text = ids_text(tail) if tail is not None else None
            out.append({"bytes": ids_text(got), "after_start": text, "levels": streams})
    return out


def usage_figures(model, level: int, uses: Counter) -> dict:
    q = model.levels[level].quantizer
    K = model.levels[level].cfg.num_codes
    n = sum(uses.values())
    p = torch.tensor([c / n for c in uses.values()], dtype=torch.float64) if n else torch.zeros(0)
    return {
        "level": level,
        "num_codes": K,
        "codes_seen": n,
        "distinct_codes": len(uses),
        "unused_codes": K - len(uses),
        "usage_perplexity": float(torch.exp(-(p * p.log()).sum())) if n else 0.0,
        "dead_codes_training_state": int((q.steps_since_used[0] >= q.dead_after_steps).sum()),
    }


def histogram_png(uses: Counter, K: int, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
    counts = [uses.get(c, 0) for c in range(K)]
    if K <= 2048:
        axes[0].bar(range(K), counts, width=1.0, color="#1f77b4")
    else:  # tens of thousands of bars draw slowly: the same as a filled curve
        axes[0].fill_between(range(K), counts, step="mid", color="#1f77b4")
    axes[0].set(xlabel="code id", ylabel="uses", title=title)
    ranked = sorted(counts, reverse=True)
    axes[1].plot(range(1, K + 1), [max(c, 0.8) for c in ranked], color="#d62728")
    axes[1].set(xscale="log", yscale="log", xlabel="rank", ylabel="uses", title="uses by rank (log-log)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def table_rows(uses: Counter, shown: list[int], strings: dict, alone: dict, top: int) -> list[dict]:
    """The table of a level: one dict per code of `shown` (most used first); shares of all uses."""
    rows = []
    total = max(sum(uses.values()), 1)
    for code in shown:
        count, covered = uses[code], strings[code]
        mean_len = sum(len([i for i in s if i >= BYTE_OFFSET]) * k for s, k in covered.items()) / count
        rows.append(
            {
                "code": code,
                "count": count,
                "share": count / total,
                "mean_bytes": mean_len,
                "top_strings": [[ids_text(list(s)), k] for s, k in covered.most_common(top)],
                "decodes_to": alone[code],
            }
        )
    return rows


SORT_JS = """
function sortTable(th) {
  const table = th.closest('table'), col = th.cellIndex, body = table.tBodies[0];
  const asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
  const key = r => { const c = r.cells[col];
    return c.dataset.v !== undefined ? parseFloat(c.dataset.v) : c.textContent; };
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b);
    return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1); }).forEach(r => body.appendChild(r));
}
"""


def write_html(path: Path, fig: dict, rows: list[dict], png: bytes, model_path: str) -> None:
    lv = fig["level"]
    below = list(range(1, lv + 1))
    heads = [
        "code",
        "uses",
        "share",
        "mean bytes",
        "most frequent byte strings (uses)",
        "decodes alone to (bytes)",
        "… after <s> (bytes)",
    ]
    heads += [f"… alone: level {b - 1} codes" for b in reversed(below)]
    th = "".join(f'<th onclick="sortTable(this)">{html.escape(h)}</th>' for h in heads)
    body = []
    for r in rows:
        strs = "<br>".join(f"<code>{html.escape(s)}</code> ({k})" for s, k in r["top_strings"])
        cells = [
            f'<td data-v="{r["code"]}">{r["code"]}</td>',
            f'<td data-v="{r["count"]}">{r["count"]}</td>',
            f'<td data-v="{r["share"]}">{r["share"]:.2%}</td>',
            f'<td data-v="{r["mean_bytes"]}">{r["mean_bytes"]:.2f}</td>',
            f"<td>{strs}</td>",
            f"<td><code>{html.escape(r['decodes_to']['bytes'])}</code></td>",
            f"<td><code>{html.escape(r['decodes_to']['after_start'] or '')}</code></td>",
        ]
        cells += [
            f"<td><code>{html.escape(r['decodes_to']['levels'][b])}</code></td>" for b in reversed(below)
        ]
        body.append("<tr>" + "".join(cells) + "</tr>")
    summary = "".join(
        f"<li>{html.escape(k.replace('_', ' '))}: <b>{v:.2f}</b></li>"
        if isinstance(v, float)
        else f"<li>{html.escape(k.replace('_', ' '))}: <b>{v}</b></li>"
        for k, v in fig.items()
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>hier_ae codebook, level {lv}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:2px 6px;vertical-align:top}} th{{cursor:pointer;background:#eee}}
code{{white-space:pre-wrap}}</style>
<script>{SORT_JS}</script></head><body>
<h1>Codebook of level {lv}</h1>
<p>Model <code>{html.escape(model_path)}</code>. A code's byte strings are the bytes its segments
covered in the data; "decodes alone to" is <code>decode(codes=[[c]], level={lv})</code>: the code
with no neighbours, regenerated down to bytes (and the code streams of the levels in between).
Click a column header to sort.</p>
<ul>{summary}</ul>
<img alt="usage histogram" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<table id="codes"><thead><tr>{th}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table></body></html>
"""
    path.write_text(page, encoding="utf-8")


def write_markdown(path: Path, fig: dict, rows: list[dict], n_top: int = 20) -> None:
    lv = fig["level"]
    lines = [
        f"# Codebook of level {lv}",
        "",
        f"- codes seen: {fig['codes_seen']} ({fig['distinct_codes']} distinct of {fig['num_codes']})",
        f"- usage perplexity: {fig['usage_perplexity']:.2f}",
        f"- unused in this data: {fig['unused_codes']}",
        f"- dead codes (training state: unused for dead_after_steps steps): "
        f"{fig['dead_codes_training_state']}",
        "",
        f"## The {min(n_top, len(rows))} most used codes",
        "",
        "| code | uses | share | most frequent byte strings | decodes alone to | after `<s>` |",
        "|---:|---:|---:|---|---|---|",
    ]

    def cell(s: str) -> str:
        return "`" + s.replace("|", "\\|").replace("`", "'") + "`"

    for r in rows[:n_top]:
        strs = ", ".join(f"{cell(s)} ({k})" for s, k in r["top_strings"][:3])
        lines.append(
            f"| {r['code']} | {r['count']} | {r['share']:.2%} | {strs} | {cell(r['decodes_to']['bytes'])} "
            f"| {cell(r['decodes_to']['after_start'] or '')} |"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv=None) -> dict:
    args = parse_args(argv)
    data_cfg = data_config(args)
    model = load_model(args.model)
    out = Path(args.out) if args.out else Path(args.model) / "codebook"
    docs = []
    for _, d in iter_documents(data_cfg, args.split):
        docs.append(d)
        if len(docs) >= args.max_documents:
            break
    if not docs:
        raise ValueError(f"data.source={data_cfg['source']!r} gave no documents for split {args.split!r}.")
    uses, strings, firsts = collect(model, docs, args.batch_size)
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": str(args.model), "documents": len(docs), "bytes": sum(map(len, docs)), "levels": []}
    for lv in range(model.num_levels):
        fig = usage_figures(model, lv, uses[lv])
        shown = sorted(uses[lv], key=lambda c: (-uses[lv][c], c))[: args.max_codes]
        start = firsts[lv].most_common(1)[0][0] if firsts[lv] else None
        alone = dict(zip(shown, decode_alone(model, lv, shown, start)))
        rows = table_rows(uses[lv], shown, strings[lv], alone, args.top_strings)
        png = histogram_png(uses[lv], fig["num_codes"], f"level {lv}: uses per code")
        (out / f"level-{lv}.png").write_bytes(png)
        write_html(out / f"level-{lv}.html", fig, rows, png, str(args.model))
        write_markdown(out / f"level-{lv}.md", fig, rows)
        report["levels"].append({**fig, "codes": rows})
        print(
            f"level {lv}: usage perplexity {fig['usage_perplexity']:.1f}, {fig['distinct_codes']} of "
            f"{fig['num_codes']} codes used, {fig['unused_codes']} unused, "
            f"{fig['dead_codes_training_state']} dead (training state) -> {out / f'level-{lv}.html'}"
        )
    (out / "codebook.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    run(main)
