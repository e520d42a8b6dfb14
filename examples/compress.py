"""Compress a file losslessly with a trained hier_ae model, and back (`hier_ae.codes.codec`).

    python examples/compress.py --model runs/tiny/model compress notes.txt notes.hae
    python examples/compress.py --model runs/tiny/model decompress notes.hae notes.txt

The blob holds the text's top-level codes (under the top code LM, or flat at log2 K bits each where
that is cheaper; `--codes` forces one) and the bytes range-coded under the decoder's predictions,
so decompressing gives back every byte. What the file said so far is blended into both (the
codec's file models: a cache of what followed each pair of codes, match models over codes and
bytes), so repeats across the file cost little; `--no-adaptive` leaves them out. It needs the very
model that wrote it (the blob carries a fingerprint of its weights) and the same float arithmetic:
decompress on a machine like the one that compressed (a mismatch is detected by the blob's CRC-32
and reported, never returned as text).
`compress` prints the rate and where it goes (codes, residual).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from hier_ae.cli import run


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="saved hier_ae model folder")
    p.add_argument(
        "--chunk-bytes",
        type=int,
        default=None,
        help="bytes per chunk (default: 16,382 for a top LM with an attention window, else 1,022)",
    )
    p.add_argument(
        "--codes",
        choices=["auto", "top_lm", "uniform"],
        default="auto",
        help="how the codes are coded: under the top LM, flat, or the cheaper per chunk (default)",
    )
    p.add_argument(
        "--no-adaptive",
        dest="adaptive",
        action="store_false",
        help="leave the file models out (the model's own prices alone; decompress reads either)",
    )
    p.add_argument("action", choices=["compress", "decompress"])
    p.add_argument("src", type=Path, help="file to read")
    p.add_argument("dst", type=Path, help="file to write (must not exist, unless --force)")
    p.add_argument("--force", action="store_true", help="overwrite dst")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not args.src.is_file():
        raise FileNotFoundError(f"{args.src}: no such file")
    if args.dst.exists() and not args.force:
        raise FileExistsError(f"{args.dst} exists: pass --force to overwrite it")
    from hier_ae import HierAEModel
    from hier_ae.codes.codec import compress, decompress
    from hier_ae.codes.shards import check_model_folder

    model = HierAEModel.from_pretrained(check_model_folder(args.model)).eval()
    data = args.src.read_bytes()
    t0 = time.perf_counter()
    if args.action == "compress":
        packed = compress(model, data, chunk_bytes=args.chunk_bytes, codes=args.codes, adaptive=args.adaptive)
        args.dst.write_bytes(packed.blob)
        n = max(len(data), 1)
        report = {
            "bytes": len(data),
            "compressed_bytes": len(packed.blob),
            "bits_per_byte": packed.bits_per_byte,
            "code_bits_per_byte": packed.code_bits / n,
            "flat_code_bits_per_byte": packed.flat_code_bits / n,
            "residual_bits_per_byte": packed.residual_bits / n,
            "raw_chunks": packed.raw_chunks,
        }
        print(
            f"{args.src} ({len(data):,} bytes) -> {args.dst} ({len(packed.blob):,} bytes): "
            f"{packed.bits_per_byte:.3f} bits/byte = codes {report['code_bits_per_byte']:.3f} (flat "
            f"{report['flat_code_bits_per_byte']:.3f}) + residual "
            f"{report['residual_bits_per_byte']:.3f} + container; {packed.raw_chunks} of {packed.chunks} "
            f"chunks stored raw; {time.perf_counter() - t0:.1f} s"
        )
    else:
        text = decompress(model, data)
        args.dst.write_bytes(text)
        report = {"bytes": len(text), "compressed_bytes": len(data)}
        print(f"{args.src} -> {args.dst} ({len(text):,} bytes); {time.perf_counter() - t0:.1f} s")
    return report


if __name__ == "__main__":
    run(main)
