"""Does the top LM learn its codes? Held-out bits per code along a top-LM stage (issue #21, TC1).

From a run's last autoencoder stage folder (every level trained, the top LM not yet), the training
documents are encoded once into top-code rows (as a `rows: codes` stage does), and the top LM is
trained alone on them for each variant (`steps:dropout:weight_decay:seq_len`), its held-out bits per
code measured every `--every` steps on 1 KB windows of `--text`. The top codes' unigram entropy on
the held-out windows is printed beside: a top LM cannot price codes that are close to uniform and
whose sequence it has not seen.

    python -m bench.top_lm_curve --stage runs/t2l4/stages/autoencoder-1 --docs ts_docs20.jsonl \
        --text '../shared/data/tinyshakespeare/val.txt#1/2' 2500:0:0:256 2500:0.1:0:256

Autoencoder-side diagnostic: bits per top code, not a language-model figure.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import time

import torch

from hier_ae import HierAEModel
from hier_ae.codes.shards import code_rows_from_documents
from hier_ae.data.batching import DocumentCropper, pad_rows
from hier_ae.training.stages import Stage, train_stage
from hier_ae.transformer import Block

from .recon import load_text


def unigram_bits(rows: list[torch.Tensor]) -> float:
    """Entropy in bits of the codes of framed rows (bos / eos left out)."""
    counts = collections.Counter(c for r in rows for c in r[1:-1].tolist())
    n = sum(counts.values())
    return -sum(k / n * math.log2(k / n) for k in counts.values())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", required=True, help="a stage folder whose levels are all trained")
    ap.add_argument("--docs", required=True, help="training documents, JSON lines with 'text'")
    ap.add_argument("--text", required=True, help="held-out text, FILE or FILE#i/n")
    ap.add_argument("--windows", type=int, default=48, help="1 KB held-out windows")
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("variants", nargs="+", help="steps:dropout:weight_decay:seq_len")
    args = ap.parse_args(argv)

    base = HierAEModel.from_pretrained(args.stage).eval()
    top = base.num_levels
    with open(args.docs) as f:
        train = [json.loads(line)["text"].encode() for line in f]
    text = b"".join(load_text(args.text)[1])
    held = [text[i : i + 1024] for i in range(0, len(text) - 1023, 1024)][: args.windows]
    t = time.perf_counter()
    rows = code_rows_from_documents(base, train, top - 1)
    held_rows = code_rows_from_documents(base, held, top - 1)
    flat = math.log2(base.levels[-1].cfg.num_codes)
    print(
        f"{len(rows)} training rows encoded in {time.perf_counter() - t:.0f}s; flat {flat:.2f} bits a "
        f"code; held-out unigram entropy {unigram_bits(held_rows):.2f} bits",
        flush=True,
    )
    ids, mask = pad_rows(held_rows)

    def held_bits(model) -> float:
        model.eval()
        with torch.no_grad():
            loss = model(input_ids=ids, attention_mask=mask, start_level=top).top_lm_loss
        model.train()
        return float(loss) / math.log(2)

    for spec in args.variants:
        steps, dropout, decay, seq_len = spec.split(":")
        model = HierAEModel.from_pretrained(args.stage)
        for block in model.top_lm.modules():
            if isinstance(block, Block):
                block.dropout = float(dropout)
        torch.manual_seed(0)
        stream = DocumentCropper(rows, 8, int(seq_len), seed=7, p_doc_start=0.5)
        curve = []

        def on_step(n, info, model=model, curve=curve):
            if n % args.every == 0:
                curve.append(
                    f"{n}: {held_bits(model):.2f} held-out / {float(info['loss']) / math.log(2):.2f} train"
                )

        stage = Stage("top_lm", None, int(steps), 3e-3, weight_decay=float(decay))
        train_stage(model, stage, stream, on_step=on_step, start_level=top)
        print(spec, "bits a code:", "; ".join(curve), flush=True)


if __name__ == "__main__":
    main()
