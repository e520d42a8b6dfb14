"""The top code LM's bits per code by position in a codec chunk (issue 21: what the codec's codes cost).

    python -m bench.top_lm_positions --model runs/ts-codec/model --text ../shared/data/tinyshakespeare/val.txt
    python -m bench.top_lm_positions --model M --text VAL#1/2 --window 32     # as if top_lm.window were 32

The codec (`hier_ae.codes.codec`) codes a text in chunks (1,022 bytes here by default, the codec's
default for a top LM with full attention; `--chunk-bytes`), each encoded as one document,
and prices the chunk's top codes under the top LM, which reads [BEGIN, bos, c_0, ..., c_{j-1}] to
predict c_j. This cuts the text into such chunks (consecutive, from its start), encodes each, scores
every code with one teacher-forced pass of the top LM (softmax over the K codes alone, as the codec
does) and reports the mean bits a code for codes at positions j in [0, 8), [8, 16), [16, 32), ...
A top LM trained on short rows reads positions past its training length worse: RT1's top LM (128-byte
rows, about 55 codes) spends 6.5 bits a code at positions 32-128 and 7.0 past 128 with full attention.
`--window W` runs the same weights with sliding-window attention over W positions (`top_lm.window`,
which has no weights of its own) to show what a window buys without retraining.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from bench.recon import load_text

EDGES = (0, 8, 16, 32, 64, 128, 256, 512, 1024)


def position_bits(model, text: bytes, chunk_bytes: int = 1022, max_chunks: int | None = None) -> dict:
    """Mean -log2 p of each top code under `model.top_lm`, bucketed by the code's index j in its chunk.

    Buckets are [EDGES[i], EDGES[i + 1]) plus one for j >= EDGES[-1]; e.g. with EDGES (0, 8, 16, ...)
    the first code of a chunk (j = 0) falls in "0-8" and the 20th (j = 19) in "16-32".
    """
    from hier_ae.data.batching import frame_document

    top = model.levels[-1]
    k, bos = top.cfg.num_codes, top.upper_vocab.bos_id
    device = next(model.parameters()).device
    sums, counts = [0.0] * len(EDGES), [0] * len(EDGES)
    starts = list(range(0, max(len(text) - chunk_bytes + 1, 0), chunk_bytes)) or [0]
    starts = starts[:max_chunks] if max_chunks else starts
    with torch.no_grad():
        for s in starts:
            ids = frame_document(text[s : s + chunk_bytes])[None].to(device)  # (1, N + 2)
            enc = model.encode(ids)
            codes = enc.top_codes[0][enc.top_mask[0]].cpu()  # (S,)
            stream = torch.cat([torch.tensor([bos]), codes])[None].to(device)  # (1, S + 1): bos, codes
            logits = model.top_lm.read_stream(stream, torch.ones_like(stream, dtype=torch.bool))[0]
            # stream index j + 1 ([BEGIN, bos, c_0..c_{j-1}] read) predicts c_j
            logp = logits[0, 1 : 1 + len(codes), :k].double().log_softmax(-1).cpu()  # (S, K)
            bits = -logp[torch.arange(len(codes)), codes] / math.log(2.0)  # (S,)
            for j, b in enumerate(bits.tolist()):
                i = sum(j >= e for e in EDGES) - 1
                sums[i] += b
                counts[i] += 1
    names = [f"{a}-{b}" for a, b in zip(EDGES, EDGES[1:])] + [f"{EDGES[-1]}+"]
    return {
        "chunks": len(starts),
        "chunk_bytes": chunk_bytes,
        "codes": sum(counts),
        "bits_per_code": sum(sums) / max(sum(counts), 1),
        "by_position": {n: {"codes": c, "bits_per_code": s / c} for n, s, c in zip(names, sums, counts) if c},
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="saved model folder")
    p.add_argument("--text", required=True, help="a text file (FILE#1/2, FILE#2/2: a half) or 'default'")
    p.add_argument("--chunk-bytes", type=int, default=1022, help="the codec's chunk (default 1,022)")
    p.add_argument("--chunks", type=int, default=24, help="at most this many chunks from the start")
    p.add_argument("--window", type=int, default=None, help="run the top LM with this attention window")
    p.add_argument("--out", help="JSON results")
    args = p.parse_args(argv)
    from hier_ae import HierAEModel

    model = HierAEModel.from_pretrained(args.model).eval()
    if args.window is not None:
        if args.window < 1:
            raise ValueError(f"--window {args.window} is invalid: an integer >= 1")
        model.top_lm.body.window = args.window
    window = model.top_lm.body.window
    _, documents = load_text(args.text)
    res = position_bits(model, b"".join(documents), args.chunk_bytes, args.chunks)
    res.update(model=args.model, text=args.text, window=window)
    print(
        f"top LM bits a code by position in {res['chunks']} chunks of {args.chunk_bytes} bytes "
        f"(window {window}):"
    )
    print("| positions | codes | bits/code |\n|---|---:|---:|")
    for name, row in res["by_position"].items():
        print(f"| {name} | {row['codes']:,} | {row['bits_per_code']:.3f} |")
    print(f"| all | {res['codes']:,} | {res['bits_per_code']:.3f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    from hier_ae.cli import run

    run(main)
