"""Reconstruction benchmark: how well a saved hier_ae model's codes give back held-out text (issue 21).

    python -m bench.recon --model runs/tiny/model --out /tmp/recon/results.json --markdown /tmp/recon/r.md
    python -m bench.recon --model runs/tiny/model --text default ../shared/data/code/val.txt --lines 256

`--text` takes val files (default: every `/work/shared/data/*/val.txt`) and the word `default`: the
validation split of the built-in corpus (standard-library sources, `val_fraction` 0.05, the split
`examples/train.py` holds out with the shipped configs). Per text, two deterministic samples:

- **lines**: `--lines` distinct lines of 20-120 bytes (seeded sample), each framed `<s>` + line + `</s>`;
- **docs**: `--docs` windows of 1 KB (non-overlapping windows of the documents, seeded sample), framed
  the same way.

Per sample and per level l (decode from level l's codes, `model.decode(codes[l], mask[l], level=l)`):
exact-match rate (every id up to and including `</s>`); teacher-forced accuracy and reconstruct CE
(`HierAEModel.forward`'s `reconstruct_logits`: the decoder reads each segment's own code; level l's CE is
over level l's tokens, charged to the text's bytes); free-decode byte accuracy (1 - edit distance /
length) and where the first error falls (position in the framed ids: 0 is `<s>`), through the shipped
`evaluate` metric `hier_ae/metrics/reconstruction`; whether decode's regenerated segment boundaries drift
from encode's (the decoded bytes re-encoded: the boundary rule is causal, so the boundaries decode drew
are those `encode` draws on its output); how many wrong decodes re-encode to the very codes they came
from (collisions: information lost in encoding, which no decoder could recover); code bits per byte
(fixed-length: codes x log2 K^R / bytes); **total bits per byte** = code bits + the reconstruct CE of
levels l..0 (what a lossless coder built on level l's codes would spend: the codes, then each level's
tokens given its codes). Per text: the top code LM's next-code top-1 accuracy and bits per code on the
framed top stream, as `forward` computes its `top_lm_loss`, and total bits per byte with the codes coded
by the top LM instead of at fixed length; predict-mode (causal LM) bits per byte on the docs; codebook
usage (`hier_ae.evaluation.reports.codebook_usage`); for a level with escape codes
(`escape_codebook_size`), the exact lines and docs decoded with the escape codes `encode` chose, the share
of segments escaped and the code bits per byte with them (`escape_rates`); gzip -9 / bzip2 -9 / xz -9e /
zstd -19 on the sampled text (the lines joined by newlines; the docs concatenated) and on the whole text.
With `--corrections` (opt-in: `encode` then decodes each batch again for every wrong token of its worst
row), the lines are also encoded with token corrections (`hier_ae.corrections`), and per start level l:
the lines decoded exactly from level l's codes with the escape codes and corrections of levels l..0 (the
tuples `encode` gives), corrections a line, and the code rate with everything that decode reads (level
l's codes + escape flags and codes + corrections of levels l..0, at ideal lengths).

Bits per byte go through the shipped `evaluate` metric `hier_ae/metrics/bits_per_byte`. The
functions below take a model and byte strings and return plain dicts (tests/test_recon_bench.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.compressors import compressor_table
from hier_ae import metrics
from hier_ae.configuration_hier_ae import EOS_ID
from hier_ae.data.batching import frame_document, pad_rows
from hier_ae.data.corpus import default_corpus
from hier_ae.evaluation.reports import (  # noqa: F401 (cut_at_eos: bench.recon's public name)
    codebook_usage,
    correction_batch,
    correction_figures,
    cut_at_eos,
    decoded_ids,
    escape_counts,
    escape_rates,
    level_escape_rates,
    predict_loglikelihoods,
)
from hier_ae.segmentation import frame_upper_stream

DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the repository
DEFAULT_VAL_FRACTION = 0.05  # the shipped configs' data.val_fraction
LINE_BYTES = (20, 120)
DOC_BYTES = 1024


# ---- samples ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Samples:
    """What `evaluate_text` samples from a text, and the batch sizes it decodes them in."""

    lines: int = 200  # held-out lines of LINE_BYTES
    docs: int = 16  # windows of DOC_BYTES
    seed: int = 0
    batch_size: int = 32  # lines per batch
    doc_batch_size: int = 8  # docs per batch

    def __post_init__(self):
        if self.lines < 0 or self.docs < 0 or self.lines + self.docs == 0:
            raise ValueError(f"--lines {self.lines} and --docs {self.docs}: both >= 0, at least one > 0.")
        if self.batch_size < 1 or self.doc_batch_size < 1:
            raise ValueError("--batch-size and --doc-batch-size must be >= 1.")


def load_text(spec: str) -> tuple[str, list[bytes]]:
    """`spec` -> (name, documents). 'default': the built-in corpus' validation split; a file: one document.

    A file's name is its folder's ('/work/shared/data/code/val.txt' -> 'code'). `FILE#1/2` and
    `FILE#2/2` take the file's first or second half, cut after the first newline at or past the middle
    (the tuning and held-out parts of issue 21's experiments): for b"ab\ncd\nef\n" (9 bytes, middle 4)
    the cut falls after the newline at index 5, so #1/2 is b"ab\ncd\n" and #2/2 is b"ef\n". The
    name gets the part: 'code (2/2)'.
    """
    if spec == "default":
        return "default", default_corpus("validation", val_fraction=DEFAULT_VAL_FRACTION)
    spec, part = (spec[:-4], spec[-3]) if spec.endswith(("#1/2", "#2/2")) else (spec, None)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(
            f"--text {spec}: no such file (a val.txt, optionally with #1/2 or #2/2 for a half, or "
            "'default' for the built-in corpus)"
        )
    data = path.read_bytes()
    name = path.parent.name or path.stem
    if part is not None:
        cut = data.find(b"\n", len(data) // 2) + 1 or len(data)  # no newline past the middle: all in 1/2
        data = data[:cut] if part == "1" else data[cut:]
        name = f"{name} ({part}/2)"
    if not data:
        raise ValueError(f"--text {spec}{'' if part is None else f'#{part}/2'} is empty.")
    return name, [data]


def held_out_lines(
    docs: list[bytes], n: int, lo: int = LINE_BYTES[0], hi: int = LINE_BYTES[1], seed: int = 0
) -> list[bytes]:
    """`n` distinct lines of `lo`..`hi` bytes (without the newline), a seeded sample in a fixed order.

    Lines keep their leading whitespace (indentation is content in code); blank lines are skipped.
    """
    if n < 0:
        raise ValueError(f"lines={n} must be >= 0.")
    pool = sorted({ln for d in docs for ln in d.split(b"\n") if lo <= len(ln) <= hi and ln.strip()})
    return random.Random(seed).sample(pool, min(n, len(pool)))


def document_windows(docs: list[bytes], n: int, size: int = DOC_BYTES, seed: int = 0) -> list[bytes]:
    """`n` non-overlapping windows of `size` bytes of the documents (a seeded sample, fixed order)."""
    if n < 0 or size < 1:
        raise ValueError(f"docs={n} must be >= 0 and size={size} >= 1.")
    pool = [d[i : i + size] for d in docs for i in range(0, len(d) - size + 1, size)]
    return random.Random(seed).sample(pool, min(n, len(pool)))


# ---- per-batch pieces ----------------------------------------------------------------------------
def segment_starts(seg_id: torch.Tensor, valid: torch.Tensor) -> list[int]:
    """Positions where a segment begins. seg_id = [0, 0, 1, 1, 1, 2], all valid -> [0, 2, 5]."""
    s = seg_id[valid.bool()].tolist()
    return [t for t in range(len(s)) if t == 0 or s[t] != s[t - 1]]


def top_code_stream(model, enc):
    """The framed top code stream (bos, codes, eos) that `forward` feeds the top LM, from `encode`'s output.

    A row that began with the top level's `<s>` gets the stream's bos; a segment that holds the level's
    `</s>` (it closes its segment) is followed by the stream's eos (as `HierLevel.upper_stream` frames it).
    Returns `UpperStream` tokens (B, T'), valid (B, T') (and vectors when the top LM reads them).
    """
    top = model.num_levels - 1
    level = model.levels[top]
    tokens, valid, seg = enc.level_tokens[top], enc.level_mask[top].bool(), enc.segment_ids[top]
    codes, cmask = enc.codes[top], enc.code_mask[top]
    B, S = codes.shape
    rows = torch.arange(B, device=tokens.device)
    first = valid.long().argmax(dim=1)  # (B,)
    starts_with_bos = valid[rows, first] & (tokens[rows, first] == level.vocab.bos_id)  # (B,)
    is_eos = (valid & (tokens == level.vocab.eos_id) & (seg >= 0)).long()  # (B, T)
    ends = torch.zeros(B, S, dtype=torch.long, device=tokens.device)  # (B, S)
    ends = ends.scatter_reduce(1, seg.clamp(min=0), is_eos, reduce="amax").bool() & cmask  # (B, S)
    vectors = enc.pooled[top] if level.frames_pooled else None  # (B, S, D): what `reads_pooled` reads
    return frame_upper_stream(codes, cmask, starts_with_bos, ends, level.upper_vocab, vectors=vectors)


@torch.no_grad()
def top_lm_batch(model, enc) -> dict:
    """The top LM on the framed top stream: summed nats per row, top-1 hits (all tokens, codes only)."""
    up = top_code_stream(model, enc)
    logits = model.top_lm.read_stream(up.tokens, up.valid, vectors=up.vectors)[0]  # (B, T'+1, V)
    logits = logits[:, : up.tokens.shape[1]].float()  # (B, T', V): output i predicts tokens[i]
    nats = F.cross_entropy(logits.transpose(1, 2), up.tokens, reduction="none") * up.valid  # (B, T')
    hit = (logits.argmax(dim=-1) == up.tokens) & up.valid  # (B, T')
    is_code = up.valid & (up.tokens < model.levels[-1].cfg.num_codes)  # (B, T')
    return {
        "nats_per_row": nats.sum(dim=1).tolist(),
        "hits": int(hit.sum()),
        "tokens": int(up.valid.sum()),
        "code_hits": int((hit & is_code).sum()),
        "codes": int(is_code.sum()),
    }


@torch.no_grad()
def teacher_forced_batch(model, ids: torch.Tensor, mask: torch.Tensor) -> list[dict]:
    """Reconstruct mode per level: summed CE nats per row, argmax hits and tokens (level l's tokens),
    and per row the first position whose argmax is wrong (None if none).

    ids, mask (B, T). `forward`'s `reconstruct_logits[l]` (B, T_l, V_l) predicts `level_tokens[l]`.
    """
    out = model(ids, mask, run_top_lm=False)
    res = []
    for logits, tokens, valid in zip(out.reconstruct_logits, out.level_tokens, out.level_mask):
        valid = valid.bool()
        nats = F.cross_entropy(logits.float().transpose(1, 2), tokens, reduction="none") * valid  # (B, T)
        hit = (logits.argmax(dim=-1) == tokens) & valid  # (B, T)
        miss = valid & ~hit  # (B, T)
        first = valid.long().argmax(dim=1)  # (B,) rows are right-padded here: 0
        res.append(
            {
                "nats_per_row": nats.sum(dim=1).tolist(),
                "hits": int(hit.sum()),
                "tokens": int(valid.sum()),
                "first_miss": [
                    int(m.long().argmax()) - int(f) if bool(m.any()) else None for m, f in zip(miss, first)
                ],
            }
        )
    return res


@torch.no_grad()
def decode_batch(model, enc, level: int) -> dict:
    """Free decode from level `level`'s codes: decoded ids per row (cut at `</s>`) and their upper streams.

    `streams[l']` (l' = 1..level) is the regenerated token stream of level l' per row, to compare with
    `encode`'s `level_tokens[l']`.
    """
    out = model.decode(enc.codes[level], enc.code_mask[level], level=level)
    seqs = decoded_ids(out)
    streams = {}
    for lv in range(1, level + 1):
        regen = out.level_tokens[lv]  # (B, n) padded with the level's pad id
        pad = model.levels[lv].vocab.pad_id
        streams[lv] = [[t for t in row.tolist() if t != pad] for row in regen]
    return {"sequences": seqs, "streams": streams}


@torch.no_grad()
def reencode(model, decoded: list[list[int]]):
    """`encode` of decoded rows (an empty one as a lone `</s>`): the boundaries and codes decode drew."""
    ids, mask = pad_rows([torch.tensor(d if d else [EOS_ID]) for d in decoded])
    device = next(model.parameters()).device
    return model.encode(ids.to(device), mask.to(device))


def row_codes(enc, level: int) -> list[list[int]]:
    """Each row's codes at `level` from an `encode` output, padding dropped."""
    codes, mask = enc.codes[level].cpu(), enc.code_mask[level].cpu().bool()
    return [codes[r][mask[r]].tolist() for r in range(codes.shape[0])]


def boundary_drift(enc, refs: list[list[int]], decoded: list[list[int]], ref_starts: list[list[int]]):
    """Level-0 segment boundaries of each decode against encode's on the reference.

    `enc` is `reencode(model, decoded)` (the boundary rule is causal: these are the boundaries decode drew).
    Per row: `identical` (same starts and same length), `first_drift` (first position below both
    lengths where a boundary is in one and not the other; None if none) and `first_error` (first
    differing id). Aggregates: rates of identical boundaries, of inexact rows whose boundaries still
    match (errors that keep the segments aligned), and of rows that drift before their first byte error
    (should be 0: it would mean decode's rule disagrees with encode's).
    """
    identical = inexact = aligned_errors = drift_before_error = 0
    drifts = []
    for r, (ref, dec) in enumerate(zip(refs, decoded)):
        starts = segment_starts(enc.segment_ids[0][r].cpu(), enc.level_mask[0][r].cpu())
        limit = min(len(ref), len(dec))
        a, b = {s for s in ref_starts[r] if s < limit}, {s for s in starts if s < limit}
        diff = sorted(a ^ b)
        same = not diff and len(ref) == len(dec) and ref_starts[r] == starts
        identical += same
        first_drift = diff[0] if diff else None
        if first_drift is not None:
            drifts.append(first_drift)
        if ref != dec:
            inexact += 1
            aligned_errors += same
            err = next((i for i in range(limit) if ref[i] != dec[i]), limit)
            drift_before_error += first_drift is not None and first_drift < err
    n = max(len(refs), 1)
    return {
        "boundaries_identical": identical / n,
        "inexact_rows_aligned": aligned_errors / inexact if inexact else None,
        "first_drift_mean": sum(drifts) / len(drifts) if drifts else None,
        "drift_before_first_error": drift_before_error,
    }


def code_collisions(decoded_codes: list[list[int]], ref_codes: list[list[int]]) -> dict:
    """How many wrong decodes re-encode to the very codes they were decoded from.

    Row r is an inexact decode: `decoded_codes[r]` its codes re-encoded (`row_codes(reencode(...))`),
    `ref_codes[r]` the reference's codes it was decoded from. A decode that re-encodes to the same
    codes is a collision: the codes cannot tell it from the reference, so no decoder could have done
    better from them (the information was lost in encoding). The others are errors of the decoder given
    its codes, which a re-encode check would catch. E.g. reference [2, 9, 9, 1] with codes [4, 7],
    decode [2, 9, 8, 1]: `encode` gives [4, 7] for the decode too -> a collision; [4, 5] (or another
    number of codes) -> a decoder error.
    Returns {"inexact": number of rows, "same_codes": fraction of them that collide (None if no row)}.
    """
    if not decoded_codes:
        return {"inexact": 0, "same_codes": None}
    same = sum(a == b for a, b in zip(decoded_codes, ref_codes))
    return {"inexact": len(decoded_codes), "same_codes": same / len(decoded_codes)}


def follows_teacher_forcing(refs: list[list[int]], decoded: list[list[int]], first_miss: list) -> float:
    """Fraction of rows whose free decode from level 0 first goes wrong where teacher forcing first misses.

    Greedy decode reads the same codes and, up to its first error, the same bytes as teacher forcing,
    so both must first fail at the same position (or both never): anything below 1.0 means decode
    computes something other than `forward` (cache, boundaries or context misalignment).
    """
    same = 0
    for ref, dec, miss in zip(refs, decoded, first_miss):
        limit = min(len(ref), len(dec))
        err = next((i for i in range(limit) if ref[i] != dec[i]), None if len(ref) == len(dec) else limit)
        same += err == miss
    return same / max(len(refs), 1)


# ---- one sample, all levels -----------------------------------------------------------------------
@torch.no_grad()
def escape_batch(model, enc, level: int, refs: list[list[int]]) -> dict:
    """A level with escape codes (`escape_codebook_size`): the rows decoded exactly from its codes and
    the escape codes `encode` chose, and how many of its segments took one."""
    esc, mask = enc.escape_codes[level], enc.code_mask[level]
    out = model.decode(enc.codes[level], mask, level=level, escape_codes=esc)
    escaped, deep = escape_counts(model.levels[level], esc, mask)
    return {"exact": sum(d == r for d, r in zip(decoded_ids(out), refs)), "escaped": escaped, "deep": deep}


def evaluate_sample(
    model,
    texts: list[bytes],
    batch_size: int = 32,
    recon_metric=None,
    bpb_metric=None,
    corrections: bool = False,
) -> dict:
    """Every reconstruction figure of `texts` (each framed `<s>` + text + `</s>`), per level and top LM.

    Returns {"texts", "bytes", "levels": [per level], "top_lm": {...}}; see the module docstring.
    With `corrections`, `encode` also chooses each level's token corrections and each level gets
    "corrections": the figures of `correction_figures` (else None).
    """
    if not texts:
        raise ValueError("evaluate_sample needs at least one text.")
    recon_metric = recon_metric or metrics.load("reconstruction", keep_in_memory=True)
    bpb_metric = bpb_metric or metrics.load("bits_per_byte", keep_in_memory=True)
    model.eval()
    device = next(model.parameters()).device
    L = model.num_levels
    refs = [frame_document(t).tolist() for t in texts]
    row_bytes = [len(t) for t in texts]
    tf = [{"nats": [], "hits": 0, "tokens": 0, "first_miss": []} for _ in range(L)]
    top = {"nats": [], "hits": 0, "tokens": 0, "code_hits": 0, "codes": 0}
    codes, toks = [0] * L, [0] * L
    decoded = [[] for _ in range(L)]  # per start level: decoded ids per row
    streams_exact = [dict() for _ in range(L)]  # per start level: {level: exact rows}
    ref_starts = []
    ref_codes = [[] for _ in range(L)]  # per level: each row's codes
    escaping = [lv for lv, level in enumerate(model.levels) if level.escape_quantizer is not None]
    esc = {lv: {"exact": 0, "escaped": 0, "deep": 0} for lv in escaping}  # decoded with the escape codes
    corr_exact = [0] * L  # per start level: rows exact with every level's escapes and corrections
    corr_stats = [{"counts": [], "escaped": [], "token_bits": []} for _ in range(L)]  # per level, per batch
    for i in range(0, len(texts), batch_size):
        ids, mask = pad_rows([torch.tensor(r) for r in refs[i : i + batch_size]])
        ids, mask = ids.to(device), mask.to(device)
        for lv, r in enumerate(teacher_forced_batch(model, ids, mask)):
            tf[lv]["nats"] += r["nats_per_row"]
            tf[lv]["hits"] += r["hits"]
            tf[lv]["tokens"] += r["tokens"]
            tf[lv]["first_miss"] += r["first_miss"]
        enc = model.encode(ids, mask, corrections=corrections)
        if corrections:
            cb = correction_batch(model, enc, refs[i : i + batch_size])
            for lv in range(L):
                corr_exact[lv] += cb["exact"][lv]
                for key, v in cb["stats"][lv].items():
                    corr_stats[lv][key].append(v)
        t = top_lm_batch(model, enc)
        top["nats"] += t["nats_per_row"]
        for k in ("hits", "tokens", "code_hits", "codes"):
            top[k] += t[k]
        for lv in range(L):
            codes[lv] += int(enc.code_mask[lv].sum())
            toks[lv] += int(enc.level_mask[lv].sum())
        for lv in range(L):
            ref_codes[lv] += row_codes(enc, lv)
        for row in range(ids.shape[0]):
            ref_starts.append(segment_starts(enc.segment_ids[0][row].cpu(), enc.level_mask[0][row].cpu()))
        for lv in escaping:
            for k, v in escape_batch(model, enc, lv, refs[i : i + batch_size]).items():
                esc[lv][k] += v
        for lv in range(L):
            dec = decode_batch(model, enc, lv)
            decoded[lv] += dec["sequences"]
            for up, rows in dec["streams"].items():
                want = [
                    enc.level_tokens[up][r][enc.level_mask[up][r].bool()].tolist() for r in range(len(rows))
                ]
                hits = sum(a == b for a, b in zip(rows, want))
                streams_exact[lv][up] = streams_exact[lv].get(up, 0) + hits
    n_bytes = sum(row_bytes)
    counts = [(esc[lv]["escaped"], esc[lv]["deep"]) if lv in esc else (0, 0) for lv in range(L)]
    rates = level_escape_rates(model, codes, counts, n_bytes)  # per level, None without escape codes
    stats = [{k: torch.cat(v) for k, v in s.items()} for s in corr_stats] if corrections else None
    levels, recon_bpb_so_far = [], 0.0
    for lv, level in enumerate(model.levels):
        code_bits = math.log2(level.cfg.num_codes)
        recon_bpb = bpb_metric.compute(nll=tf[lv]["nats"], num_bytes=row_bytes)["bits_per_byte"]
        recon_bpb_so_far += recon_bpb
        fd = recon_metric.compute(predictions=decoded[lv], references=refs)
        redo = reencode(model, decoded[lv])  # once, for the boundaries and the collisions
        redo_codes = row_codes(redo, lv)
        wrong = [r for r, (d, ref) in enumerate(zip(decoded[lv], refs)) if d != ref]
        cbpb = codes[lv] * code_bits / n_bytes
        levels.append(
            {
                "level": lv,
                "codebook_bits": code_bits,
                "tokens_per_segment": toks[lv] / max(codes[lv], 1),
                "bytes_per_code": n_bytes / max(codes[lv], 1),
                "code_bits_per_byte": cbpb,
                "exact_match": fd["exact_match"],
                "teacher_forced_accuracy": tf[lv]["hits"] / max(tf[lv]["tokens"], 1),
                "reconstruct_ce_bits_per_token": sum(tf[lv]["nats"]) / max(tf[lv]["tokens"], 1) / math.log(2),
                "reconstruct_ce_bits_per_byte": recon_bpb,
                "total_bits_per_byte": cbpb + recon_bpb_so_far,
                "free_decode": fd,
                "boundaries": boundary_drift(redo, refs, decoded[lv], ref_starts),
                "collisions": code_collisions(
                    [redo_codes[r] for r in wrong], [ref_codes[lv][r] for r in wrong]
                ),
                "decode_follows_teacher_forcing": (
                    follows_teacher_forcing(refs, decoded[0], tf[0]["first_miss"]) if lv == 0 else None
                ),
                "upper_streams_exact": {str(k): v / len(texts) for k, v in sorted(streams_exact[lv].items())},
                "escape": None
                if rates[lv] is None
                else {"exact_match": esc[lv]["exact"] / len(texts), **rates[lv]},
                "corrections": None
                if not corrections
                else correction_figures(model, lv, cbpb, rates, stats, corr_exact[lv], len(texts), n_bytes),
            }
        )
    top_bpb = bpb_metric.compute(nll=top["nats"], num_bytes=row_bytes)["bits_per_byte"]
    return {
        "texts": len(texts),
        "bytes": n_bytes,
        "levels": levels,
        "top_lm": {
            "top1_accuracy": top["hits"] / max(top["tokens"], 1),
            "top1_accuracy_codes": top["code_hits"] / max(top["codes"], 1),
            "bits_per_code": sum(top["nats"]) / max(top["tokens"], 1) / math.log(2),
            "stream_tokens": top["tokens"],
            "bits_per_byte": top_bpb,
            "total_bits_per_byte": top_bpb + recon_bpb_so_far,
        },
    }


def evaluate_text(
    model,
    name: str,
    docs: list[bytes],
    samples: Samples,
    recon_metric=None,
    bpb_metric=None,
    corrections: bool = False,
) -> dict:
    """Lines and 1 KB docs of one text, with codebook usage, predict bits per byte and the compressors.
    `corrections`: the lines also with each level's token corrections (`evaluate_sample`); not the docs,
    where every wrong token of a 1 KB window costs `encode` another decode of its batch."""
    recon_metric = recon_metric or metrics.load("reconstruction", keep_in_memory=True)
    bpb_metric = bpb_metric or metrics.load("bits_per_byte", keep_in_memory=True)
    t0 = time.perf_counter()
    lines = held_out_lines(docs, samples.lines, seed=samples.seed)
    windows = document_windows(docs, samples.docs, seed=samples.seed)
    out = {"documents": len(docs), "bytes": sum(len(d) for d in docs)}
    if lines:
        out["lines"] = evaluate_sample(
            model, lines, samples.batch_size, recon_metric, bpb_metric, corrections=corrections
        )
    if windows:
        out["docs"] = evaluate_sample(model, windows, samples.doc_batch_size, recon_metric, bpb_metric)
        ll = predict_loglikelihoods(model, windows)
        out["predict_bits_per_byte"] = bpb_metric.compute(
            nll=[-x for x in ll], num_bytes=[len(w) for w in windows]
        )["bits_per_byte"]
    out["codebook_usage"] = codebook_usage(model, lines + windows) if lines or windows else []
    out["compressors"] = {
        "lines": compressor_table(b"\n".join(lines)) if lines else {},
        "docs": compressor_table(b"".join(windows)) if windows else {},
        "text": compressor_table(b"".join(docs)),
    }
    out["seconds"] = time.perf_counter() - t0
    print(f"[recon] {name}: {len(lines)} lines, {len(windows)} docs, {out['seconds']:.0f} s", flush=True)
    return out


# ---- report --------------------------------------------------------------------------------------
def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(results: dict) -> str:
    """The benchmark's page: what was run, then the two tables."""
    return (
        "\n".join(
            [
                f"# Reconstruction benchmark ({results['date']})",
                "",
                f"Model: `{results['model']}` ({results['levels']} level(s), {results['parameters']:,} "
                f"parameters). Machine: {results['machine']}. Command: `{results['command']}` "
                f"({results['seconds']:.0f} s).",
                "",
                *reconstruction_table(results["texts"], results["levels"]),
                "",
                *escape_table(results["texts"], results["levels"]),
                *corrections_table(results["texts"], results["levels"]),
                *compression_table(results["texts"]),
            ]
        )
        + "\n"
    )


def reconstruction_table(texts: dict, levels: int) -> list[str]:
    """Per text and level (decoding from level l's codes): exact match, accuracies, CE, bits per byte."""
    L = [
        "Lines: held-out lines of 20-120 bytes, docs: 1 KB windows, each framed `<s>` + text + `</s>`. "
        "Exact: every id up to `</s>` decoded back from level l's codes. TF: teacher-forced reconstruct "
        "mode. Free acc: 1 - edit distance / length of the free decode. 1st err: median position of the "
        "first wrong id (0 = `<s>`). Aligned: decode's segment boundaries equal encode's. Collide: of the "
        "wrong line decodes, those that re-encode to the very codes they came from (lost in encoding, not "
        "a decoder error). Total: code bits + reconstruct CE (bits/byte).",
        "",
        "| text | level | code bits/B | exact lines | exact docs | TF acc lines | TF acc docs "
        "| recon CE bits/B (docs) | free acc lines | free acc docs | 1st err lines | `<s>` wrong "
        "| aligned lines | collide (wrong lines) | total bits/B (docs) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in texts.items():
        lines, docs = r.get("lines"), r.get("docs")
        for lv in range(levels):
            a = lines["levels"][lv] if lines else None
            b = docs["levels"][lv] if docs else None
            ref = b or a
            L.append(
                "| "
                + " | ".join(
                    [
                        name,
                        str(lv),
                        _num(ref["code_bits_per_byte"]),
                        _pct(a and a["exact_match"]),
                        _pct(b and b["exact_match"]),
                        _pct(a and a["teacher_forced_accuracy"]),
                        _pct(b and b["teacher_forced_accuracy"]),
                        _num(b and b["reconstruct_ce_bits_per_byte"]),
                        _pct(a and a["free_decode"]["byte_accuracy"]),
                        _pct(b and b["free_decode"]["byte_accuracy"]),
                        _num(a and a["free_decode"]["first_error_median"], 0),
                        _pct(a and a["free_decode"]["first_error_at_start"]),
                        _pct(a and a["boundaries"]["boundaries_identical"]),
                        _pct(a and a.get("collisions", {}).get("same_codes")),  # absent before 2026-12-04
                        _num(b and b["total_bits_per_byte"]),
                    ]
                )
                + " |"
            )
    return L


def escape_table(texts: dict, levels: int) -> list[str]:
    """Levels with escape codes: exact lines and docs decoded with them, the escaped share and the rate
    they cost (a blank line after); nothing for a model without escape codes."""
    rows = []
    for name, r in texts.items():
        for lv in range(levels):
            a, b = (r[k]["levels"][lv].get("escape") if r.get(k) else None for k in ("lines", "docs"))
            if a is None and b is None:
                continue
            rows.append(
                f"| {name} | {lv} | {_pct(a and a['exact_match'])} | {_pct(b and b['exact_match'])} "
                f"| {_pct(a and a['escaped_segments'])} "
                f"| {_num(a and a['code_bits_per_byte_flag_ideal'])} "
                f"({_num(a and a['code_bits_per_byte_flag_1bit'])}) "
                f"| {_num(b and b['code_bits_per_byte_flag_ideal'])} |"
            )
    if not rows:
        return []
    return [
        "Escape codes (`escape_codebook_size`): decoded from level l's codes and the escape codes `encode` "
        "chose for the segments the codes alone do not give back. Rate: codes + a flag a segment, "
        "entropy-coded at the escaped share's H(f) (1 bit in brackets) + log2 K_e an escape.",
        "",
        "| text | level | exact lines with escapes | exact docs with escapes | escaped segments (lines) "
        "| code bits/B lines, H(f) (1 bit) | code bits/B docs, H(f) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]


def corrections_table(texts: dict, levels: int) -> list[str]:
    """With `--corrections`: per text and start level, the lines decoded with every level's escape codes
    and token corrections, and what those cost (a blank line after); nothing without them."""
    rows = []
    for name, r in texts.items():
        for lv in range(levels):
            c = r["lines"]["levels"][lv].get("corrections") if r.get("lines") else None
            if c is None:
                continue
            rows.append(
                f"| {name} | {lv} | {_pct(c['exact_match'])} | {_num(c['corrections_per_text'])} "
                f"| {' / '.join(_pct(x) for x in c['corrected_segments'][: lv + 1])} "
                f"| {_num(c['escape_bits_per_byte'], 3)} | {_num(c['correction_bits_per_byte'], 3)} "
                f"| {_num(c['code_bits_per_byte'], 3)} |"
            )
    if not rows:
        return []
    return [
        "Token corrections (`--corrections`, lines): decoded from level l's codes with the escape codes and "
        "the token corrections `encode` chose at levels l..0 (`hier_ae.corrections`). Rate: level l's codes "
        "+ the escape flags and codes + the corrections (each segment's count at this sample's own shares, "
        "log2 max_segment_len for its offset, its token under the decoder), levels l..0, in code bits/byte.",
        "",
        "| text | level | exact lines | corrections a line | corrected segments (level 0 / 1 / ...) "
        "| escape bits/B | correction bits/B | code bits/B with both |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]


def compression_table(texts: dict, predict: bool = True) -> list[str]:
    """Per text, on the docs: total bits per byte (fixed codes, top LM) beside the compressors; top LM.

    `predict`: a column of predict-mode (causal LM) bits per byte on the same docs, for comparison; off
    where the table must hold autoencoder figures only (bench/report.py). Nothing without docs.
    """
    header = ["text", "total (fixed codes)", "total (top LM)", "top LM bits/code", "top-1"]
    header += ["predict bits/B"] if predict else []
    header += [
        "gzip -9",
        "bzip2 -9",
        "xz -9e",
        "zstd -19",
        "codes used (level 0)",
        "usage perplexity (level 0)",
    ]
    L = [
        "Compression on the docs (bits/byte; the compressors on the same concatenated 1 KB windows, "
        "and xz -9e on the whole text in brackets). Total (top LM): the top codes coded by the top LM "
        "+ every level's reconstruct CE. Top-1: the top LM's next-code accuracy (codes only).",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for name, r in texts.items():
        docs = r.get("docs")
        if not docs:
            continue
        c, whole = r["compressors"]["docs"], r["compressors"]["text"]
        usage = r["codebook_usage"][0] if r["codebook_usage"] else {}
        row = [
            name,
            _num(docs["levels"][-1]["total_bits_per_byte"]),
            _num(docs["top_lm"]["total_bits_per_byte"]),
            _num(docs["top_lm"]["bits_per_code"]),
            _pct(docs["top_lm"]["top1_accuracy_codes"]),
        ]
        row += [_num(r.get("predict_bits_per_byte"), 3)] if predict else []
        row += [
            _num(c.get("gzip -9")),
            _num(c.get("bzip2 -9")),
            f"{_num(c.get('xz -9e'))} ({_num(whole.get('xz -9e'))})",
            _num(c.get("zstd -19")),
            f"{usage.get('distinct_codes', '-')} / {usage.get('codebook_size', '-')}",
            _num(usage.get("usage_perplexity"), 1),
        ]
        L.append("| " + " | ".join(row) + " |")
    return L if len(L) > 4 else []  # no text with docs (`--docs 0`): no table


# ---- main ----------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="saved model folder (AutoModel, trust_remote_code)")
    p.add_argument(
        "--text",
        nargs="+",
        default=None,
        help="val files and/or 'default' (the built-in corpus' validation split); default: every "
        f"{DATA_ROOT}/*/val.txt",
    )
    p.add_argument("--out", default="results.json", help="JSON results (default: results.json)")
    p.add_argument("--markdown", default=None, help="also write the markdown tables here")
    p.add_argument("--lines", type=int, default=200, help="held-out lines per text (default 200)")
    p.add_argument("--docs", type=int, default=16, help="1 KB documents per text (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the line and document samples")
    p.add_argument("--batch-size", type=int, default=32, help="lines per batch")
    p.add_argument("--doc-batch-size", type=int, default=8, help="1 KB documents per batch")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--corrections",
        action="store_true",
        help="also encode the lines with token corrections (hier_ae.corrections) and report, per level, "
        "the lines exact with every level's escape codes and corrections and the code rate with them",
    )
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    samples = Samples(args.lines, args.docs, args.seed, args.batch_size, args.doc_batch_size)
    from transformers import AutoModel

    texts = args.text or sorted(str(p) for p in DATA_ROOT.glob("*/val.txt"))
    if not texts:
        raise FileNotFoundError(f"no {DATA_ROOT}/*/val.txt: give --text files (or 'default').")
    t0 = time.perf_counter()
    model = AutoModel.from_pretrained(args.model, trust_remote_code=True).to(args.device).eval()
    recon_metric = metrics.load("reconstruction", keep_in_memory=True)
    bpb_metric = metrics.load("bits_per_byte", keep_in_memory=True)
    results = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {platform.processor() or platform.system()}, "
        f"{torch.get_num_threads()} torch threads, {args.device}",
        "command": "python -m bench.recon " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model,
        "levels": model.num_levels,
        "parameters": sum(p.numel() for p in model.parameters()),
        "settings": dataclasses.asdict(samples),
        "texts": {},
    }
    for spec in texts:
        name, docs = load_text(spec)
        results["texts"][name] = {
            "source": spec,
            **evaluate_text(model, name, docs, samples, recon_metric, bpb_metric, args.corrections),
        }
    results["seconds"] = time.perf_counter() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    md = markdown(results)
    if args.markdown:
        Path(args.markdown).write_text(md)
    print(md)
    return results


if __name__ == "__main__":
    from hier_ae.cli import run

    run(main)
