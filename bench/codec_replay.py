"""Tune the codec's file models without the model: record what they are handed once, replay variants.

The codec's file models (`hier_ae.codes.file_models`) only see, in order, the model's distribution of
each next code and token and the symbol that came. `record` compresses a text once with a model
(`Codec.compress`, file models of an interleaved version, 3 or 4) and saves that event stream;
`replay` runs fresh `FileModels` over it, with module constants changed by `--set`, and prints the
ideal bits per byte of the codes and of the residual: minutes of numpy instead of a model's decode
per variant (TX0-TX1, MX0, RP1, OS1 in bench/experiments.md tuned this way). The distributions are stored as
float32, so a replay's figures match the codec's own to about 1e-4 bits/byte, not bit for bit;
compare variants with the replay's baseline, not with bench/codec.md.

    python -m bench.codec_replay record --model runs/code-codec/model \
        --text '../shared/data/code/val.txt#1/2' --out /tmp/code_tune.npz
    python -m bench.codec_replay replay /tmp/code_tune.npz
    python -m bench.codec_replay replay /tmp/code_tune.npz --set V5_CODE_LR=0.0025 --set "TEXT_ORDERS=(1, 4)"
    python -m bench.codec_replay replay /tmp/code_tune.npz --window 1024   # as if 1 KB texts

Events, in the order the codec committed them (a chunk tried under the top LM and then coded flat, or
stored raw, keeps only what stayed): `new_chunk`, a code's distribution then the code (or the code
alone: coded flat, log2 K bits), a token's distribution then the token, per level.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import sys
from pathlib import Path

import numpy as np

NEW_CHUNK, MIX_CODE, CODE, MIX_TOKEN, TOKEN = range(5)


def _recording_file_models():
    """A `FileModels` that keeps the events it is handed (`events`), dropping those a `restore` undoes."""
    from hier_ae.codes.file_models import FileModels

    class Recording(FileModels):
        def __init__(self, num_levels: int, version: int):
            super().__init__(num_levels, version)
            if not self.interleaved:
                raise ValueError(
                    f"record needs file models that read codes between segments, not version {version}"
                )
            self.events: list[tuple[int, int, int, np.ndarray | None]] = []  # (kind, level, symbol, q)

        def new_chunk(self):
            self.events.append((NEW_CHUNK, 0, 0, None))
            super().new_chunk()

        def mix_code(self, q):
            self.events.append((MIX_CODE, 0, 0, q.reshape(-1).astype(np.float32)))
            return super().mix_code(q)

        def update_code(self, code):
            self.events.append((CODE, 0, int(code), None))
            super().update_code(code)

        def mix_token(self, level, q):
            self.events.append((MIX_TOKEN, level, 0, q.reshape(-1).astype(np.float32)))
            return super().mix_token(level, q)

        def update_token(self, level, token):
            self.events.append((TOKEN, level, int(token), None))
            super().update_token(level, token)

        def checkpoint(self):
            return (super().checkpoint(), len(self.events))

        def restore(self, marks, codes_only=False):
            inner, n = marks
            super().restore(inner, codes_only)
            del self.events[n:]

    return Recording


def record(model, text: bytes, out: str | Path, chunk_bytes: int | None = None) -> dict:
    """Compress `text` with `model` (the default file models; `chunk_bytes` as `Codec.compress`'s)
    and save the file models' events to `out` (.npz). Returns the codec's own figures, for
    comparison with a replay's."""
    from hier_ae.codes import codec as codec_module

    recording = _recording_file_models()
    made = []

    def factory(num_levels, version):
        made.append(recording(num_levels, version))
        return made[-1]

    saved = codec_module.FileModels
    codec_module.FileModels = factory
    try:
        codec = codec_module.Codec(model)
        packed = codec.compress(text, chunk_bytes=chunk_bytes)
    finally:
        codec_module.FileModels = saved
    events = made[0].events
    kinds = np.array([e[0] for e in events], dtype=np.int8)
    levels = np.array([e[1] for e in events], dtype=np.int8)
    symbols = np.array([e[2] for e in events], dtype=np.int64)
    code_q = [e[3] for e in events if e[0] == MIX_CODE]
    token_q = [e[3] for e in events if e[0] == MIX_TOKEN]
    figures = {
        "bytes": len(text),
        "version": made[0].version,
        "num_levels": made[0].top + 1,
        "flat_bits_per_code": sum(math.log2(a) for a in codec.alphabets),
        "code_bits_per_byte": packed.code_bits / len(text),
        "residual_bits_per_byte": packed.residual_bits / len(text),
        "written_bits_per_byte": packed.bits_per_byte,
    }
    np.savez(
        out,
        kinds=kinds,
        levels=levels,
        symbols=symbols,
        code_q=np.stack(code_q) if code_q else np.zeros((0, 1), np.float32),
        token_q=np.stack(token_q) if token_q else np.zeros((0, 1), np.float32),
        figures=json.dumps(figures),
    )
    return figures


def replay(path: str | Path, version: int | None = None, window: int | None = None) -> dict:
    """Fresh `FileModels` (the recorded version, or `version`) over the recorded events, with the
    module's constants as they are now: the ideal bits per byte of the codes and of the residual.

    `window`: the file models start afresh at the first code after every `window` top-level tokens
    (bytes, for one level), a stand-in for short texts coded alone (the model's own distributions
    still saw the whole chunk before them; OS2 in bench/experiments.md)."""
    from hier_ae.codes.file_models import FileModels

    d = np.load(path)
    figures = json.loads(str(d["figures"]))
    version = version or figures["version"]
    fm = FileModels(figures["num_levels"], version)
    top = figures["num_levels"] - 1
    code_q, token_q = d["code_q"].astype(np.float64), d["token_q"].astype(np.float64)
    ci = ti = since = 0
    code_bits = residual_bits = 0.0
    p = None
    for kind, level, symbol in zip(d["kinds"].tolist(), d["levels"].tolist(), d["symbols"].tolist()):
        if kind == NEW_CHUNK:
            fm.new_chunk()
        elif kind == MIX_CODE:
            if window is not None and since >= window:
                fm, since = FileModels(figures["num_levels"], version), 0
            q = code_q[ci] / code_q[ci].sum()
            ci += 1
            p = fm.mix_code(q)
        elif kind == CODE:
            code_bits += (
                figures["flat_bits_per_code"] if p is None else -math.log2(max(float(p[symbol]), 1e-300))
            )
            fm.update_code(symbol)
            p = None
        elif kind == MIX_TOKEN:
            q = token_q[ti] / token_q[ti].sum()
            ti += 1
            p = fm.mix_token(level, q)
        else:
            residual_bits -= math.log2(max(float(p[symbol]), 1e-300))
            fm.update_token(level, symbol)
            since += level == top
            p = None
    n = figures["bytes"]
    return {
        "recorded": figures,
        "code_bits_per_byte": code_bits / n,
        "residual_bits_per_byte": residual_bits / n,
        "total_bits_per_byte": (code_bits + residual_bits) / n,
    }


def _set_constants(assignments: list[str]) -> dict:
    """`NAME=VALUE` (a Python literal) for each of `file_models`' module constants."""
    from hier_ae.codes import file_models

    changed = {}
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep or not hasattr(file_models, name) or not name.isupper():
            raise SystemExit(f"--set {item!r}: expected NAME=VALUE with NAME one of file_models' constants")
        changed[name] = ast.literal_eval(value)
        setattr(file_models, name, changed[name])
    return changed


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="compress a text once and save the file models' events")
    rec.add_argument("--model", required=True)
    rec.add_argument("--text", required=True, help="a file (FILE#1/2, FILE#2/2: a half) or 'default'")
    rec.add_argument("--out", required=True)
    rec.add_argument("--chunk-bytes", type=int, default=None, help="the codec's chunk (default: its own)")
    rep = sub.add_parser("replay", help="fresh file models over a recording")
    rep.add_argument("recording")
    rep.add_argument("--version", type=int, default=None)
    rep.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    rep.add_argument(
        "--window", type=int, default=None, help="fresh file models every WINDOW top-level tokens"
    )
    args = ap.parse_args(argv)
    if args.cmd == "record":
        from hier_ae import HierAEModel

        from .recon import load_text

        text = b"".join(load_text(args.text)[1])  # a file is one document, as bench.codec --whole codes it
        result = record(HierAEModel.from_pretrained(args.model).eval(), text, args.out, args.chunk_bytes)
    else:
        changed = _set_constants(args.set)
        result = replay(args.recording, args.version, args.window) | {"set": changed}
    json.dump(result, sys.stdout, indent=1)
    print()
    return result


if __name__ == "__main__":
    main()
