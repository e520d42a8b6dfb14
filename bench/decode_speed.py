"""Decode speed: `HierAEModel.decode` on documents of ~256 B, 1 KB and 4 KB.

    python bench/decode_speed.py --model PATH                 # a trained hier_ae folder
    python bench/decode_speed.py --model PATH --sizes 256 1024 4096 --repeats 3

Each document is grammar sentences (tests/grammar.py) joined by spaces up to the size, framed as
`<s>` + bytes + `</s>`. It is encoded once; the median wall time of `--repeats` decodes of its top
codes is printed with bytes/s and whether the round trip is exact (one thread by default, so runs
on a shared machine compare).

The tiny test fixtures were trained on single sentences (64-byte crops) and end a long document with
EOS after its first sentence or so. To time a full-length decode, the bench therefore suppresses the
decoders' EOS logit with a forward hook (every row then runs until its last segment closes, the
same number of steps before and after a change); `--allow-eos` times the plain decode.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the grammar of the test fixtures

from helpers.grammar import sentences  # noqa: E402

from hier_ae import HierAEModel  # noqa: E402


def document(n_bytes: int, seed: int = 3) -> torch.Tensor:
    """`<s>` + about `n_bytes` bytes of grammar sentences + `</s>`, as ids (1, T)."""
    text = ""
    for s in sentences(10_000, seed=seed):
        if len(text) + len(s) + 1 > n_bytes:
            break
        text = f"{text} {s}" if text else s
    return torch.tensor([[2] + [b + 3 for b in text.encode()] + [1]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a trained hier_ae model folder")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--allow-eos", action="store_true", help="do not suppress the decoders' EOS logit")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = HierAEModel.from_pretrained(args.model).eval()
    if not args.allow_eos:
        for level in model.levels:
            eos = level.vocab.eos_id

            def no_eos(mod, inp, out, eos=eos):
                out[..., eos] = float("-inf")
                return out

            level.decoder.head.register_forward_hook(no_eos)
    for size in args.sizes:
        ids = document(size)
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
