"""Lossless round trips through `hier_ae.codes.codec` on held-out text: the measured rate of exact decode.

    python -m bench.codec --model runs/ts/model --text ../shared/data/tinyshakespeare/val.txt --lines 256

Autoencoder figures (issue 21), on `bench.recon`'s samples (the same seeded held-out lines and 1 KB
windows): each line and each window is compressed on its own (`hier_ae.codes.codec.compress`, one chunk)
and decompressed, and the table says how many came back exactly (by construction all of them, unless
the floats of the two runs differ) and at what rate: the **stream** (what the range coder wrote: the
top codes plus the tokens coded under the decoder's predictions, beside the container's header of
about 20 bytes a blob, left out here as it does not grow with the text), and its two ideal parts,
**codes** (under the top code LM, or log2 K each where that is cheaper for a text: `Codec`'s
default "auto"; the flat log2 K figure beside it) and **residual** (the true tokens' -log2 p under
the decoder, the reconstruct CE), all in bits per byte of text. Each text's stream is a head varint
and the range coder's bytes cut to the fewest that decode (`hier_ae.codes.range_bytes`), so a short
line pays one to three bytes beyond the ideal; the windows show the rate with that spread thin.
gzip -9 / bzip2 -9 / xz -9e on the same sample (`bench.compressors`) are printed beside it: they
compress the sample as one stream (the lines joined by newlines), so they see every line at once
where the codec codes each on its own. The codec's file models (`hier_ae.codes.file_models`: a cache
of what followed each pair of codes, match models, text contexts) are in by default; `--no-adaptive`
leaves them out (the top LM's and the decoder's cross-entropies alone).

`--whole` also codes each text file whole, as `examples/compress.py` does (the codec's default
chunks, 16,382 bytes for a top LM with an attention window, each from an empty context), decompresses it
and compares the bytes; its rate is the whole blob, header included, beside the compressors on the same
file (which see repeats across all of it).
`--md FILE` writes the table as a report with its date, machine and command.

    python -m bench.codec --model runs/ts-codec/model --text ../shared/data/tinyshakespeare/val.txt#2/2 \
        --whole --md bench/codec.md

Compare with `bench.recon`'s exact-match rate from the codes alone (greedy decode), which pays only
the code bits and loses the lines the decoder gets wrong.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

from bench.compressors import compressor_table
from bench.recon import document_windows, held_out_lines, load_text


def measure(codec, texts: list[bytes]) -> dict:
    """Compress and decompress each text with `codec` (a `hier_ae.codes.codec.Codec`); the exact round
    trips and the rates, in bits per byte."""
    n = sum(map(len, texts))
    exact = stream = code = flat = residual = raw = lm = 0
    t0 = time.perf_counter()
    for text in texts:
        packed = codec.compress(text, chunk_bytes=max(len(text), 1))
        exact += codec.decompress(packed.blob) == text
        stream += 8 * (len(packed.blob) - packed.header_bytes)
        code += packed.code_bits
        flat += packed.flat_code_bits
        residual += packed.residual_bits
        raw += packed.raw_chunks
        lm += packed.top_lm_chunks
    return {
        "texts": len(texts),
        "bytes": n,
        "exact": exact / max(len(texts), 1),
        "raw_chunks": raw,
        "stream_bits_per_byte": stream / max(n, 1),
        "code_bits_per_byte": code / max(n, 1),
        "flat_code_bits_per_byte": flat / max(n, 1),
        "top_lm_chunks": lm,
        "residual_bits_per_byte": residual / max(n, 1),
        "seconds": time.perf_counter() - t0,
    }


def measure_whole(codec, data: bytes) -> dict:
    """One text file through the codec as one blob (default chunks): exact, and its rate as written
    (the whole blob, header included) and ideal (codes + residual), in bits per byte."""
    n = max(len(data), 1)
    t0 = time.perf_counter()
    packed = codec.compress(data)
    t1 = time.perf_counter()
    exact = codec.decompress(packed.blob) == data
    return {
        "texts": 1,
        "bytes": len(data),
        "exact": float(exact),
        "chunks": packed.chunks,
        "raw_chunks": packed.raw_chunks,
        "stream_bits_per_byte": packed.bits_per_byte,
        "code_bits_per_byte": packed.code_bits / n,
        "flat_code_bits_per_byte": packed.flat_code_bits / n,
        "top_lm_chunks": packed.top_lm_chunks,
        "residual_bits_per_byte": packed.residual_bits / n,
        "compress_seconds": t1 - t0,
        "seconds": time.perf_counter() - t0,
    }


def run(
    model, spec: str, lines: int, docs: int, seed: int = 0, whole: bool = False, adaptive: bool = True
) -> dict:
    """Both samples of one text (and with `whole` the text file itself), with gzip, bzip2 and xz on
    the same bytes."""
    from hier_ae.codes.codec import Codec

    codec = Codec(model, adaptive=adaptive)
    name, documents = load_text(spec)
    sample = {
        "lines": held_out_lines(documents, lines, seed=seed),
        "docs": document_windows(documents, docs, seed=seed),
    }
    out = {"text": name, "source": spec, "adaptive": adaptive}
    for kind, texts in sample.items():
        if texts:
            joined = (b"\n" if kind == "lines" else b"").join(texts)
            table = compressor_table(joined)
            out[kind] = {
                **measure(codec, texts),
                "gzip -9": table.get("gzip -9"),
                "bzip2 -9": table.get("bzip2 -9"),
                "xz -9e": table.get("xz -9e"),
            }
    if whole:
        data = b"".join(documents)  # a file is one document; the default corpus' documents joined
        table = compressor_table(data)
        out["whole"] = {
            **measure_whole(codec, data),
            "gzip -9": table.get("gzip -9"),
            "bzip2 -9": table.get("bzip2 -9"),
            "xz -9e": table.get("xz -9e"),
        }
    return out


def _bpb(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown(results: list[dict]) -> str:
    rows = [
        "| text | sample | exact round trips | stream bits/B | = codes | (flat codes) | + residual (ideal) "
        "| codes under top LM | raw chunks | gzip -9 | bzip2 -9 | xz -9e | s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for kind in ("lines", "docs", "whole"):
            if kind not in r:
                continue
            m = r[kind]
            units = m.get("chunks", m["texts"])  # a line or a window is one chunk
            sample = (
                f"whole file ({m['bytes']:,} bytes, {m['chunks']} chunks)"
                if kind == "whole"
                else f"{m['texts']} {kind}"
            )
            rows.append(
                f"| {r['text']} | {sample} | {100 * m['exact']:.1f}% | "
                f"{m['stream_bits_per_byte']:.3f} | "
                f"{m['code_bits_per_byte']:.3f} | {m['flat_code_bits_per_byte']:.3f} | "
                f"{m['residual_bits_per_byte']:.3f} | {m['top_lm_chunks']} of {units} | "
                f"{m['raw_chunks']} | {_bpb(m['gzip -9'])} | {_bpb(m['bzip2 -9'])} | "
                f"{_bpb(m['xz -9e'])} | {m['seconds']:.0f} |"
            )
    return "\n".join(rows)


def report(results: list[dict], model: str, argv: list[str]) -> str:
    """The table as a markdown report: date, machine, command, what the columns are."""
    from bench.run import machine

    return "\n".join(
        [
            "# Lossless codec: exact round trips and their rate (issue 21)",
            "",
            f"Report written {datetime.date.today().isoformat()} on {machine()}. Model `{model}`. Command: "
            f"`python -m bench.codec {shlex.join(argv)}` (from the repository root). Autoencoder figures, "
            "not LM figures: each line and each 1 KB window is coded alone (`hier_ae.codes.codec`); "
            '"whole file" codes the text file as one blob in the codec\'s default chunks (16,382 bytes for a '
            "top LM with an attention window, else 1,022), each encoded "
            "and priced by the model from an empty context. "
            + (
                "The codec's file models (`hier_ae.codes.file_models`: a cache of what followed each "
                "pair of codes, match models over codes and tokens, and, versions 3-6, what code and "
                "token followed each recent stretch of text) carry what the text said so far, "
                "inside a line or window and across the whole file's chunks. "
                if all(r.get("adaptive", True) for r in results)
                else "Without the codec's file models (`--no-adaptive`): the top LM's and the decoder's "
                "cross-entropies alone. "
            )
            + "Stream: what was written, in bits per byte (lines and windows without the "
            "container's ~21-byte header; the whole file with it). Codes: the top codes under the top LM "
            "or flat, whichever is cheaper per chunk (flat beside it); residual: the true tokens' -log2 p "
            "under the decoder. gzip / bzip2 / xz see each sample joined (the whole file as it is).",
            "",
            markdown(results),
            "",
        ]
    )


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="saved model folder")
    p.add_argument("--text", nargs="+", required=True, help="val files and/or 'default' (see bench.recon)")
    p.add_argument("--lines", type=int, default=256)
    p.add_argument("--docs", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--whole", action="store_true", help="also code each text file whole, as one blob")
    p.add_argument(
        "--no-adaptive", dest="adaptive", action="store_false", help="leave the codec's file models out"
    )
    p.add_argument("--out", default=None, help="JSON results")
    p.add_argument("--md", default=None, help="write the table as a markdown report (date, machine, command)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    from hier_ae import HierAEModel
    from hier_ae.codes.shards import check_model_folder

    model = HierAEModel.from_pretrained(check_model_folder(args.model)).eval()
    results = [
        run(model, spec, args.lines, args.docs, args.seed, args.whole, args.adaptive) for spec in args.text
    ]
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    if args.md:
        Path(args.md).write_text(report(results, args.model, argv))
    print(markdown(results))
    return results


if __name__ == "__main__":
    from hier_ae.cli import run as run_cli

    run_cli(main)
