"""Decode speed: `HierAEModel.decode` on documents of ~256 B, 1 KB and 4 KB.

    python -m bench.decode_speed --model PATH --text SENTENCES.txt       # a trained hier_ae folder
    python -m bench.decode_speed --model PATH --text SENTENCES.txt --sizes 256 1024 4096 --repeats 3

Each document is the sentences of `--text` (one per line, in order) joined by spaces up to the size,
framed as `<s>` + bytes + `</s>`: use text like the model's training text. It is encoded once; the
median wall time of `--repeats` decodes of its top codes is printed with bytes/s and whether the round
trip is exact (one thread by default, so runs on a shared machine compare). The bench does not import
the tests; the sentences it drew for the test fixtures (the grammar of tests/helpers/grammar.py) are

    PYTHONPATH=tests python -c "from helpers.grammar import sentences
    print(*sentences(10_000, seed=3), sep=chr(10))" > /tmp/grammar.txt

The tiny test fixtures were trained on single sentences (64-byte crops) and end a long document with
EOS after its first sentence or so. To time a full-length decode, the bench therefore suppresses the
decoders' EOS logit with a forward hook (every row then runs until its last segment closes, the
same number of steps before and after a change); `--allow-eos` times the plain decode.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from hier_ae import HierAEModel
from hier_ae.data.batching import frame_document


def document(sentences: list[str], n_bytes: int) -> torch.Tensor:
    """`<s>` + the first sentences joined by spaces, at most `n_bytes` bytes, + `</s>`, as ids (1, T).

    ["Ab.", "Cd."], n_bytes 6 -> "Ab." (adding " Cd." would make 7 bytes) -> [[2, 68, 101, 49, 1]].
    """
    text = ""
    for s in sentences:
        if len(text) + len(s) + 1 > n_bytes:
            break
        text = f"{text} {s}" if text else s
    if not text:
        raise ValueError(f"no sentence of the text fits in {n_bytes} bytes (its first: {sentences[:1]})")
    return frame_document(text.encode())[None]  # (1, T)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a trained hier_ae model folder")
    ap.add_argument("--text", required=True, help="sentences, one per line, joined in order into documents")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--allow-eos", action="store_true", help="do not suppress the decoders' EOS logit")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sentences = [ln.strip() for ln in Path(args.text).read_text().splitlines() if ln.strip()]
    model = HierAEModel.from_pretrained(args.model).eval()
    if not args.allow_eos:
        for level in model.levels:
            eos = level.vocab.eos_id

            def no_eos(mod, inp, out, eos=eos):
                out[..., eos] = float("-inf")
                return out

            level.decoder.head.register_forward_hook(no_eos)
    for size in args.sizes:
        ids = document(sentences, size)
        enc = model.encode(ids)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = model.decode(enc.top_codes, enc.top_mask)
            times.append(time.perf_counter() - t0)
        got = out.sequences[0][out.attention_mask[0].bool()]
        exact = torch.equal(got[: ids.shape[1] - 1], ids[0, :-1])  # EOS aside
        t = statistics.median(times)
        print(
            f"{ids.shape[1]:6d} B  {int(enc.top_mask.sum()):5d} codes  decoded {len(got):6d} ids  "
            f"decode {t:8.3f} s  {len(got) / t:9.1f} ids/s  exact={exact}",
            flush=True,
        )


if __name__ == "__main__":
    main()
