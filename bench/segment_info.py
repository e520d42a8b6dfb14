"""Which segments does level 0 lose, by their information? And what would a budget rule change?

    python -m bench.segment_info --model runs/ts/model --text ../shared/data/tinyshakespeare/val.txt
    python -m bench.segment_info --model M --text VAL --budgets 7.5 8 8.5 --min-lens 1 2 --out info.json

Autoencoder figures (issue 21, item 3; bench/experiments.md, IB-series), on `bench.recon`'s held-out
lines (`<s>` + line + `</s>`, seeded sample) of a saved model's level 0:

- **measured**: each segment's information is the surprisal of its tokens under the level's own
  entropy model (`surprisal_bits`, summed over the segment); a segment is *lost* when teacher-forced
  reconstruction (each segment's own code, reconstruct mode) gets any of its tokens wrong. The table
  gives, per surprisal bucket, the segments, their mean length, the share lost, the share of all
  losses and the decoder's CE of the segment.
- **counterfactual** (`--budgets`): the same lines cut by `boundary_mode: budget`'s rule
  (`budget_fires`, the package's own) at each budget and minimum length, with each segment's loss
  probability read off the measured table by its surprisal (a 1-token segment counts as never lost: a
  code can name a single token), gives bytes per segment, code bits/byte at the model's codebook and a
  predicted exact-line rate; the same prediction for the model's own segments is printed beside it
  (compare with its measured exact lines to see how far to trust the prediction). The decoder is
  held fixed: this says whether training with the rule is worth a run, not what the run would give.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from bench.recon import held_out_lines, load_text
from hier_ae import HierAEModel
from hier_ae.data.batching import frame_document, pad_rows
from hier_ae.segmentation import budget_fires, surprisal_bits

EDGES = (0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0, math.inf)


@torch.no_grad()
def measure(model, lines: list[bytes], batch: int = 32) -> tuple[list[dict], list[tuple[list, list]]]:
    """Per segment: bits (surprisal), lost, tokens, ce (decoder bits); per line: (surprisal, entropy)."""
    level = model.levels[0]
    segments, per_line = [], []
    for i in range(0, len(lines), batch):
        ids, mask = pad_rows([frame_document(t) for t in lines[i : i + batch]])
        valid = mask.bool()
        p = level.bottom_up(ids, valid)
        s = surprisal_bits(p.entropy_logits, ids, valid)  # (B, T)
        logits = level.reconstruct_logits(p).float()  # (B, T, V): output t predicts ids[t]
        wrong = logits.argmax(-1) != ids  # (B, T)
        ce = -logits.log_softmax(-1).gather(-1, ids[..., None])[..., 0] / math.log(2.0)  # (B, T)
        seg = p.layout.seg_id  # (B, T), -1 on padding
        for b in range(ids.shape[0]):
            per_line.append((s[b][valid[b]].tolist(), p.H[b][valid[b]].tolist()))
            for j in range(int(seg[b].max()) + 1):
                at = seg[b] == j
                segments.append(
                    {
                        "bits": float(s[b][at].sum()),
                        "lost": bool(wrong[b][at].any()),
                        "tokens": int(at.sum()),
                        "ce": float(ce[b][at].sum()),
                    }
                )
    return segments, per_line


def bucket_of(bits: float, edges=EDGES) -> int:
    """Index of the bucket [edges[i], edges[i + 1]) holding `bits`: bucket_of(7.9) = 3 ([6, 8))."""
    return next(i for i in range(len(edges) - 1) if bits < edges[i + 1])


def table(segments: list[dict], edges=EDGES) -> list[dict]:
    """The measured table: per bucket, segments, share, mean tokens, share lost, share of the losses, CE."""
    losses = max(sum(s["lost"] for s in segments), 1)
    rows = []
    for i in range(len(edges) - 1):
        sel = [s for s in segments if bucket_of(s["bits"], edges) == i]
        if not sel:
            continue
        lost = sum(s["lost"] for s in sel)
        rows.append(
            {
                "bucket": [edges[i], edges[i + 1]],
                "segments": len(sel),
                "share": len(sel) / len(segments),
                "mean_tokens": sum(s["tokens"] for s in sel) / len(sel),
                "lost": lost / len(sel),
                "share_of_losses": lost / losses,
                "decoder_ce_bits": sum(s["ce"] for s in sel) / len(sel),
            }
        )
    return rows


def predict(cuts: list[list[tuple[float, int]]], loss: dict[int, float], edges=EDGES) -> dict:
    """Predicted exact lines when line i is cut into segments cuts[i] = [(bits, tokens), ...] and a
    segment of b bits is lost with probability loss[bucket_of(b)] (1-token segments never)."""
    exact, n_seg, n_tok, lost = 0.0, 0, 0, 0.0
    for segs in cuts:
        ok = 1.0
        for bits, tokens in segs:
            q = 0.0 if tokens == 1 else loss.get(bucket_of(bits, edges), 0.0)
            ok *= 1.0 - q
            lost += q
        exact += ok
        n_seg += len(segs)
        n_tok += sum(t for _, t in segs)
    return {
        "tokens_per_segment": n_tok / max(n_seg, 1),
        "segments_lost": lost / max(n_seg, 1),
        "exact_lines": exact / max(len(cuts), 1),
    }


def budget_cuts(per_line, budget: float, min_len: int, max_len: int) -> list[list[tuple[float, int]]]:
    """Each line cut by the budget rule (`budget_fires`): [(bits, tokens), ...] per line."""
    cuts = []
    for s, h in per_line:
        s_t, h_t = torch.tensor([s]), torch.tensor([h])
        valid = torch.ones_like(s_t, dtype=torch.bool)
        fires = budget_fires(s_t, h_t, torch.zeros_like(valid), valid, budget, min_len, max_len)[0].tolist()
        fires[-1] = True  # the row's end closes its last segment
        segs, bits, n = [], 0.0, 0
        for x, f in zip(s, fires):
            bits, n = bits + x, n + 1
            if f:
                segs.append((bits, n))
                bits, n = 0.0, 0
        cuts.append(segs)
    return cuts


def run(model, lines: list[bytes], budgets=(), min_lens=(1,)) -> dict:
    segments, per_line = measure(model, lines)
    rows = table(segments)
    loss = {bucket_of(r["bucket"][0]): r["lost"] for r in rows}
    level = model.levels[0]
    code_bits = math.log2(level.cfg.num_codes)
    surprisals = [s for s, _ in per_line]
    cuts_own, k = [], 0
    for s, _ in per_line:  # regroup the measured segments by line: their tokens add up to the line's
        segs, total = [], 0
        while total < len(s):
            segs.append((segments[k]["bits"], segments[k]["tokens"]))
            total += segments[k]["tokens"]
            k += 1
        cuts_own.append(segs)
    result = {
        "lines": len(lines),
        "segments": len(segments),
        "segments_lost": sum(s["lost"] for s in segments) / max(len(segments), 1),
        "surprisal_bits_per_token": sum(map(sum, surprisals)) / max(sum(map(len, surprisals)), 1),
        "table": rows,
        "predicted": {"own segments": predict(cuts_own, loss)},
    }
    for budget in budgets:
        for m in min_lens:
            pred = predict(budget_cuts(per_line, budget, m, level.cfg.max_segment_len), loss)
            result["predicted"][f"budget {budget:g}, min {m}"] = pred
    for pred in result["predicted"].values():
        pred["code_bits_per_token"] = code_bits / pred["tokens_per_segment"]
    return result


def render(res: dict) -> str:
    out = [
        f"{res['lines']} lines, {res['segments']} segments, {res['segments_lost']:.2%} lost; "
        f"{res['surprisal_bits_per_token']:.2f} bits/token under the entropy model",
        "",
        "| surprisal (bits) | segments | share | mean tokens | lost | share of losses | decoder CE (bits) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["table"]:
        lo, hi = r["bucket"]
        out.append(
            f"| {lo:g}-{'' if math.isinf(hi) else f'{hi:g}'} | {r['segments']} | {r['share']:.1%} | "
            f"{r['mean_tokens']:.2f} | {r['lost']:.1%} | {r['share_of_losses']:.1%} | "
            f"{r['decoder_ce_bits']:.2f} |"
        )
    out += [
        "",
        "| cut | tokens/segment | code bits/token | predicted lost segments | predicted exact lines |",
    ]
    out.append("|---|---:|---:|---:|---:|")
    for name, p in res["predicted"].items():
        out.append(
            f"| {name} | {p['tokens_per_segment']:.2f} | {p['code_bits_per_token']:.2f} | "
            f"{p['segments_lost']:.2%} | {p['exact_lines']:.1%} |"
        )
    return "\n".join(out)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a saved hier_ae folder (its level 0 is read)")
    p.add_argument("--text", required=True, help="a val.txt (or 'default'), as bench.recon's --text")
    p.add_argument("--lines", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budgets", type=float, nargs="*", default=[7.0, 7.5, 8.0, 8.5])
    p.add_argument("--min-lens", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default=None, help="also write the result as JSON here")
    args = p.parse_args(argv)
    if args.lines < 1 or any(b <= 0 for b in args.budgets) or any(m < 1 for m in args.min_lens):
        p.error("--lines and --min-lens must be >= 1 and --budgets > 0")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    model = HierAEModel.from_pretrained(args.model).eval()
    _, docs = load_text(args.text)
    lines = held_out_lines(docs, args.lines, seed=args.seed)
    res = run(model, lines, args.budgets, args.min_lens)
    print(render(res))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
