"""Probes of where level 0 loses held-out lines: could a better decoder or a better encoder win them back?

    python -m bench.decode_probes --model runs/ts/model --text ../shared/data/tinyshakespeare/val.txt \
        --probe list --beam 8 --check-bits 1
    python -m bench.decode_probes --model runs/ts/model --text ../shared/data/tinyshakespeare/val.txt \
        --probe search
    python -m bench.decode_probes --model runs/ts-escape/model --probe escape \
        --text ../shared/data/tinyshakespeare/val.txt#2/2 \
        --flag-fit ../shared/data/tinyshakespeare/val.txt#1/2

Autoencoder figures (issue 21, item 3; bench/experiments.md, V- and E-series). Three probes on a saved 1-level
model, on `bench.recon`'s held-out lines (20-120 bytes, `<s>` + line + `</s>`, seeded sample):

- **list** (a better decoder): decode each line segment by segment; for segment j, a beam search
  (`--beam` W) over the decoder's continuations of the prefix decoded so far, reading code j; a
  candidate ends where the boundary rule closes its segment (or at `</s>`). Keep the most likely
  candidate that passes the checks: the verified prefix plus the candidate re-encodes to code j
  (`--no-code-check` skips it), and, with `--check-bits` b, the candidate's bytes hash to the b bits
  stored beside the code (a checksum: b more bits per segment, b / bytes-per-code more code bits per
  byte). If none passes, the most likely candidate. `--beam 1 --no-code-check` is greedy decoding.
- **search** (a better encoder, analysis by synthesis): choose each segment's code in order, among all K
  codes (or the `--top` nearest to the pooled vector), as the nearest code under which teacher-forced
  greedy decoding gives back the segment's bytes (argmax == byte at each of its positions, the prefix and
  the codes chosen before it fixed: the decoder's states in segment j read codes 0..j); if none does,
  the code that makes the segment most likely (`--criterion likelihood`: always the most likely). The
  codes are then decoded by the unchanged greedy `model.decode`, beside the nearest-neighbour codes.
- **escape** (a variable rate; a model with `escape_codebook_size`): `encode` escapes the segments the
  code alone does not give back; exact lines decoded by `model.decode` with and without the escape
  codes, the share of segments escaped, and the code bits per byte that costs (`escape_rates`). With
  `--flag-fit TEXT`, the flag priced from context: a logistic regression of the flag on what the decoder
  knows of the segment before it reads the flag (`flag_features`: the decoder's predictions on its own
  greedy bytes of the segment, reading its code alone), fitted on TEXT's lines, scored on `--text`'s
  (`flag_context_report`): a rate both sides of an entropy coder can compute. With `--by-script`, the
  figures per writing system of the lines as well (`bench.script_breakdown`).

The functions recompute whole rows instead of streaming (slow, exact); they read the level's internals
(`bottom_up`, `_decode`), like the benchmark's teacher forcing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import zlib

import torch

from bench.recon import (
    decoded_ids,
    document_windows,
    escape_rates,
    held_out_lines,
    load_text,
    segment_starts,
)
from bench.script_breakdown import script_breakdown, script_table
from hier_ae import HierAEModel
from hier_ae.configuration_hier_ae import EOS_ID
from hier_ae.corrections import correction_bits, correction_token_bits, count_shares
from hier_ae.data.batching import BYTE_OFFSET, frame_document, pad_rows
from hier_ae.evaluation.reports import shares_entropy

FILLER = BYTE_OFFSET + ord(" ")  # a token after the hypothesis: its segment id says if the rule closed


def checksum(tokens: list[int], bits: int) -> int:
    """`bits` bits of a CRC-32 of the segment's ids and length: checksum([5, 9], 1) is 0 or 1."""
    return zlib.crc32(bytes(t & 0xFF for t in tokens) + bytes([len(tokens) & 0xFF])) & ((1 << bits) - 1)


@torch.no_grad()
def _next_token(level, rows: list[list[int]], seg_ctx: torch.Tensor):
    """For each row (prefix + hypothesis): the segment a next token would join, and the decoder's
    log-probabilities for it reading that segment's context. seg_ctx (1, S + 2, D) -> (n,), (n, V)."""
    ids, mask = pad_rows([torch.tensor(r + [FILLER]) for r in rows])
    p = level.bottom_up(ids, mask.bool(), encode=False)
    ctx = level.decoder_context(seg_ctx.expand(len(rows), -1, -1), p.layout.seg_id)  # (n, T + 1, D)
    logits = level._decode(p, ctx)[0]  # (n, T + 1, V): output t predicts ids[t]
    at = torch.tensor([len(r) for r in rows])  # the filler's position
    n = torch.arange(len(rows))
    return p.layout.seg_id[n, at], logits[n, at].log_softmax(-1)


@torch.no_grad()
def list_decode(model, ref: list[int], beam: int = 8, check_bits: int = 0, code_check: bool = True) -> dict:
    """Decode one framed line from its level-0 codes by list decoding with re-encode checks (module doc)."""
    level = model.levels[0]
    ids = torch.tensor([ref])
    enc = model.encode(ids, torch.ones_like(ids))
    codes = enc.codes[0][0]  # (S,)
    S = codes.shape[0]
    starts = segment_starts(enc.segment_ids[0][0], enc.level_mask[0][0]) + [len(ref)]
    sums = [checksum(ref[starts[j] : starts[j + 1]], check_bits) for j in range(S)]
    seg_ctx = level.code_context(level.quantizer.lookup(codes[None]), codes[None])  # (1, S, D)
    seg_ctx = torch.cat([seg_ctx, seg_ctx.new_zeros(1, 2, seg_ctx.shape[-1])], 1)  # the filler's segment
    out, unchecked = [], 0
    for j in range(S):
        live, done = [([], 0.0)], []
        while live:
            segs, logp = _next_token(level, [out + h for h, _ in live], seg_ctx)
            grown = []
            for (h, score), seg, lp in zip(live, segs.tolist(), logp):
                if h and (seg != j or h[-1] == EOS_ID):  # the rule closed the segment after h
                    done.append((h, score))
                    continue
                top = lp.topk(beam)
                grown += [(h + [t], score + v) for v, t in zip(top.values.tolist(), top.indices.tolist())]
            best = max((score for _, score in done), default=float("-inf"))
            # keep the W most likely open hypotheses, unless 20 nats below a finished one
            live = [c for c in sorted(grown, key=lambda c: -c[1])[:beam] if c[1] > best - 20]
            if len(done) >= 2 * beam and all(score < best for _, score in live):
                break  # enough candidates, and none open can still beat the best one
        done.sort(key=lambda c: -c[1])
        ok = [not check_bits or checksum(h, check_bits) == sums[j] for h, _ in done]
        if code_check and any(ok):
            rows = [torch.tensor(out + h) for h, _ in done]
            cand_ids, cand_mask = pad_rows(rows)
            cand = model.encode(cand_ids, cand_mask).codes[0][:, j]  # (n,)
            ok = [o and c == int(codes[j]) for o, c in zip(ok, cand.tolist())]
        pick = next((h for o, (h, _) in zip(ok, done) if o), None)
        if pick is None:
            unchecked += 1
            pick = done[0][0]
        out += pick
        if out[-1] == EOS_ID:
            break
    return {"decoded": out, "segments": S, "unchecked_segments": unchecked}


@torch.no_grad()
def search_codes(model, ref: list[int], top: int = 0, criterion: str = "exact") -> dict:
    """Level-0 codes of one framed line chosen by analysis by synthesis (module doc), and the nearest ones."""
    level = model.levels[0]
    ids = torch.tensor([ref])
    valid = torch.ones_like(ids, dtype=torch.bool)
    p = level.bottom_up(ids, valid)
    nearest = p.q.codes[0]  # (S,)
    codes = nearest.clone()
    K, T = level.cfg.num_codes, ids.shape[1]
    n = min(top or K, K)
    book = level.quantizer.lookup(torch.arange(K)[None])[0]  # (K, D)
    order = torch.cdist(p.pooled[0].float(), book).argsort(dim=1)[:, :n]  # (S, n) nearest first
    pk = level.bottom_up(ids.expand(n, T), valid.expand(n, T), encode=False)
    seg_id = pk.layout.seg_id  # (n, T)
    unmatched = 0
    for j in range(codes.shape[0]):
        trial = codes[None].repeat(n, 1)  # (n, S)
        trial[:, j] = order[j]
        ctx = level.decoder_context(level.code_context(level.quantizer.lookup(trial), trial), seg_id)
        pos = (seg_id[0] == j).nonzero()[:, 0]  # segment j's positions
        logits = level._decode(pk, ctx)[0][:, pos]  # (n, P, V): output t predicts ids[t]
        target = ids[0, pos]  # (P,)
        exact = (logits.argmax(-1) == target).all(dim=1)  # (n,)
        if criterion == "exact" and exact.any():
            k = int(exact.nonzero()[0, 0])
        else:  # criterion "likelihood", or no code decodes the segment
            unmatched += int(not exact.any())
            k = int(logits.log_softmax(-1)[:, torch.arange(len(pos)), target].sum(1).argmax())
        codes[j] = order[j, k]
    return {"codes": codes, "nearest": nearest, "unmatched_segments": unmatched}


@torch.no_grad()
def escape_decode(model, refs: list[list[int]], corrections: bool = False) -> dict:
    """Variable rate (`escape_codebook_size`): a batch of framed lines through `encode` (which escapes
    the segments the code alone does not give back) and `decode` with and without the escape codes;
    with `corrections`, also with the token corrections `encode` chose (`hier_ae.corrections`), and
    their number in each valid segment (`correction_counts`, (N,)). `encoded`: encode's codes, segment
    mask and escape ids (B, S) each, which `flag_features` can read instead of encoding again."""
    ids, mask = pad_rows([torch.tensor(r) for r in refs])
    enc = model.encode(ids, mask, corrections=corrections)
    codes, seg_mask, esc = enc.codes[0], enc.code_mask[0], enc.escape_codes[0]
    with_esc = decoded_ids(model.decode(codes, seg_mask, level=0, escape_codes=esc))
    without = decoded_ids(model.decode(codes, seg_mask, level=0))
    m = seg_mask.bool()
    row_escaped = ((esc >= 0) & m).sum(-1).tolist()  # per row: escaped segments, those with a second digit
    row_deep = (model.levels[0].two_digit(esc) & m).sum(-1).tolist()
    out = {
        "decoded": with_esc,
        "decoded_no_escape": without,
        "segments": int(seg_mask.sum()),
        "escaped": sum(row_escaped),
        "deep": sum(row_deep),
        "encoded": (codes, seg_mask, esc),
        "row_segments": m.sum(-1).tolist(),  # per row: valid segments
        "row_escaped": row_escaped,
        "row_deep": row_deep,
    }
    if corrections:
        fix = enc.corrections[0]  # (B, S, L)
        out["decoded_corrected"] = decoded_ids(
            model.decode(codes, seg_mask, level=0, escape_codes=esc, corrections=fix)
        )
        bits = correction_token_bits(model.levels[0], codes, seg_mask, esc, fix)  # (B, S, L)
        out["correction_counts"] = (fix >= 0).sum(-1)[m]  # (N,)
        out["correction_escaped"] = (esc >= 0)[m]  # (N,)
        out["correction_token_bits"] = bits.sum(-1)[m]  # (N,)
    return out


def escape_report(
    model, refs: list[list[int]], lines: list[bytes], batch: int = 32, corrections: bool = False
) -> dict:
    """The escape probe's figures: exact lines with and without the escape codes, the share of
    segments escaped, and the code rate three ways: codes alone; codes + a 1-bit flag a segment +
    log2 K_e bits an escape; codes + the flag entropy-coded at its ideal cost H(f) a segment.
    With `corrections`: exact lines with the token corrections too, and the ideal rate plus their bits
    (`correction_bits`, each segment's count at this text's count shares; `main` prices them again at
    the `--flag-fit` text's shares from `correction_stats`)."""
    level = model.levels[0]
    K, Ke = level.cfg.num_codes, level.cfg.escape_codebook_size
    exact0 = segs = escaped = deep = 0
    counts, esc_flags, tok_bits, encoded, per_line = [], [], [], [], []
    for i in range(0, len(refs), batch):
        rows = refs[i : i + batch]
        r = escape_decode(model, rows, corrections)
        encoded.append(r["encoded"])
        for j, ref in enumerate(rows):
            per_line.append(
                {
                    "segments": r["row_segments"][j],
                    "escaped": r["row_escaped"][j],
                    "deep": r["row_deep"][j],
                    "exact": r["decoded"][j] == ref,
                    "exact_corrected": corrections and r["decoded_corrected"][j] == ref,
                }
            )
        exact0 += sum(d == ref for d, ref in zip(r["decoded_no_escape"], rows))
        segs, escaped, deep = segs + r["segments"], escaped + r["escaped"], deep + r["deep"]
        if corrections:
            counts.append(r["correction_counts"])
            esc_flags.append(r["correction_escaped"])
            tok_bits.append(r["correction_token_bits"])
    exact = sum(p["exact"] for p in per_line)
    exact_c = sum(p["exact_corrected"] for p in per_line)
    n_bytes = sum(len(t) for t in lines)
    res = {
        "exact_match": exact / len(refs),
        "exact_match_no_escape": exact0 / len(refs),
        **escape_rates(segs, escaped, n_bytes, K, Ke, deep, level.cfg.escape_depth),
        "encoded": encoded,  # per batch, for `flag_features` (not a figure: `main` drops it)
        "per_line": per_line,  # per line, for `script_breakdown` (not a figure: `main` drops it)
    }
    if corrections:
        stats = (torch.cat(counts), torch.cat(esc_flags), torch.cat(tok_bits))
        c = correction_bits(*stats, level.cfg.max_segment_len)
        res.update(
            exact_match_corrected=exact_c / len(refs),
            corrections_per_line=c["corrections"] / len(refs),
            corrected_segments=c["corrected_segments"] / max(segs, 1),
            correction_bits_per_byte=c["correction_bits"] / n_bytes,
            correction_count_offset_token_bits=[c["count_bits"], c["offset_bits"], c["token_bits"]],
            code_bits_per_byte_corrected_ideal=res["code_bits_per_byte_flag_ideal"]
            + c["correction_bits"] / n_bytes,
            correction_stats=stats,
        )
    return res


FLAG_FEATURES = ("summed entropy", "largest entropy", "log least top-1 probability")


def segment_features(logp: torch.Tensor, inseg: torch.Tensor) -> torch.Tensor:
    """`FLAG_FEATURES` of each row's segment: logp (B, T, V) the decoder's log-probabilities at each
    position, inseg (B, T) the segment's positions -> (B, 3): summed entropy (bits), largest entropy, log
    least top-1 probability. Worked example: one position, p = (0.5, 0.5): (1.0, 1.0, log 0.5)."""
    ent = -(logp.exp() * logp).sum(-1) / math.log(2)  # (B, T) bits
    top = logp.max(-1).values  # (B, T)
    return torch.stack(
        [
            (ent * inseg).sum(1),
            ent.masked_fill(~inseg, 0.0).max(1).values,
            top.masked_fill(~inseg, 0.0).min(1).values,
        ],
        dim=1,
    )


@torch.no_grad()
def greedy_segment_features(level, codes, seg_mask, esc, j: int, rows: torch.Tensor) -> torch.Tensor:
    """`FLAG_FEATURES` of segment j as a decoder computes them before it reads j's flag: `decode_codes`
    runs segments 0..j (the escapes before j as encode chose them, segment j from its code alone, greedy,
    ending where the boundary rule closes it) and records its predictions at segment j's steps.
    codes, seg_mask, esc (B, S); rows (n,) the rows with a segment j -> (n, 3)."""
    c, m = codes[rows, : j + 1], seg_mask[rows, : j + 1]  # (n, j + 1)
    e = esc[rows, : j + 1].clone()
    e[:, j] = -1  # segment j before its flag: its code alone
    V = level.vocab.vocab_size
    logp = torch.zeros(len(rows), (j + 1) * level.cfg.max_segment_len, V)  # (n, cap, V)

    def pick(n: int, logits: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        logp[live, n] = logits.float().log_softmax(-1)
        return logits.argmax(-1)  # greedy, as `decode`

    tokens, valid, seg_id = level.decode_codes(c, m, pick=pick, escapes=e)
    T = tokens.shape[1]
    return segment_features(logp[:, :T], (seg_id == j) & valid)


@torch.no_grad()
def flag_features(
    model, refs: list[list[int]], batch: int = 32, encoded: list | None = None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """What a decoder knows of each segment before it reads the segment's escape flag, and the escape.

    For segment j: the decoder's predictions over the segment's tokens reading code j (no escape) and
    the escapes `encode` chose for segments 0..j-1, on the decoder's own greedy tokens: their summed
    entropy (bits), the largest entropy, and the log of the least top-1 probability (`FLAG_FEATURES`),
    what an entropy coder on both sides can price the flag with. Computed teacher-forced (one decoder
    pass per segment index j) where that is what the decoder sees: a segment not escaped in a line that
    comes back exactly (every earlier segment decodes to its bytes, and this one's greedy bytes are its
    own); elsewhere by running the decoder (`greedy_segment_features`: escaped segments, whose greedy
    bytes differ, and every segment of a line that does not come back).
    Returns features (N, 3) and the escape ids `encode` chose (N,) (-1 = none; the flag is id >= 0, a
    second digit `HierLevel.two_digit`) over the valid segments, row by row, and the number of segments
    whose features came from running the decoder.
    `encoded`: what `escape_decode` gave for the same batches of `batch` rows (its "encoded"), read
    instead of encoding each batch again (the probe's `--flag-fit` has encoded both texts already).
    """
    level = model.levels[0]
    feats, escapes, ran = [], [], 0
    starts = range(0, len(refs), batch)
    if encoded is not None and len(encoded) != len(starts):
        raise ValueError(
            f"encoded has {len(encoded)} batches; {len(refs)} rows in batches of {batch} need {len(starts)}."
        )
    for n, i in enumerate(starts):
        rows = refs[i : i + batch]
        ids, mask = pad_rows([torch.tensor(r) for r in rows])
        valid = mask.bool()
        if encoded is None:
            enc = model.encode(ids, mask)
            codes, seg_mask, esc = enc.codes[0], enc.code_mask[0], enc.escape_codes[0]  # (B, S) each
        else:
            codes, seg_mask, esc = encoded[n]
        seg_mask = seg_mask.bool()
        decoded = decoded_ids(model.decode(codes, seg_mask, level=0, escape_codes=esc))
        exact = torch.tensor([d == r for d, r in zip(decoded, rows)])  # (B,)
        p = level.bottom_up(ids, valid, encode=False)
        seg_id = p.layout.seg_id  # (B, T)
        base = level.code_context(level.quantizer.lookup(codes), codes)  # (B, S, D)
        B, S = codes.shape
        out = torch.zeros(B, S, 3)
        for j in range(S):
            before = torch.where(torch.arange(S)[None] < j, esc, torch.full_like(esc, -1))  # (B, S)
            ctx = level.decoder_context(base + level.escape_vectors(before), seg_id)  # (B, T+1, D)
            logp = level._decode(p, ctx)[0][:, : ids.shape[1]].float().log_softmax(-1)  # (B, T, V)
            out[:, j] = segment_features(logp, (seg_id == j) & valid)
            run_rows = (seg_mask[:, j] & ((esc[:, j] >= 0) | ~exact)).nonzero()[:, 0]  # (n,)
            if len(run_rows):
                out[run_rows, j] = greedy_segment_features(level, codes, seg_mask, esc, j, run_rows)
                ran += len(run_rows)
        feats.append(out[seg_mask])
        escapes.append(esc[seg_mask])
    return torch.cat(feats), torch.cat(escapes), ran


def fit_flag_model(x: torch.Tensor, y: torch.Tensor, steps: int = 50) -> torch.Tensor:
    """Logistic regression of the flag y (N,) on the features x (N, F) (and a bias) by Newton's method:
    weights (F + 1,). Features are used as they are (their scales are small)."""
    X = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)  # (N, F+1)
    t = y.double()
    w = torch.zeros(X.shape[1], dtype=torch.float64)
    for _ in range(steps):
        pr = torch.sigmoid(X @ w)
        grad = X.T @ (pr - t) / len(t)
        ridge = 1e-6 * torch.eye(X.shape[1], dtype=torch.float64)
        hess = (X * (pr * (1 - pr))[:, None]).T @ X / len(t) + ridge
        w = w - torch.linalg.solve(hess, grad)
        if float(grad.abs().max()) < 1e-10:
            break
    return w


def flag_bits(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy (bits a segment) of the flags y under the fitted model w: what an entropy coder
    that prices each flag from the decoder's features spends. A model that ignores the features (w = [0,
    ..., logit f]) gives H(f) at the share f it was fitted to."""
    X = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
    z = X @ w
    nats = torch.nn.functional.binary_cross_entropy_with_logits(z, y.double(), reduction="mean")
    return float(nats) / math.log(2)


def flag_context_report(
    model, fit_refs, refs, lines: list[bytes], batch: int = 32, fit_encoded=None, encoded=None
) -> dict:
    """The flag priced from context: fit `fit_flag_model` on `fit_refs`' segments, price `refs`' flags
    with it, and the code bits per byte that gives (codes + priced flags + log2 K_e an escape). With
    `escape_depth` 2, each escaped segment's second flag (one digit or two) is priced at its entropy
    among the escaped segments, and each second digit adds log2 K_e. `fit_encoded`, `encoded`: each
    text's batches as `escape_decode` encoded them (`flag_features`), or None to encode them here."""
    x_fit, esc_fit, _ = flag_features(model, fit_refs, batch, fit_encoded)
    w = fit_flag_model(x_fit, esc_fit >= 0)
    x, esc, ran = flag_features(model, refs, batch, encoded)
    y = esc >= 0  # (N,): the flags
    level = model.levels[0]
    n_bytes = sum(len(t) for t in lines)
    bits = flag_bits(w, x, y)
    K, K_e = level.cfg.num_codes, level.cfg.escape_codebook_size
    escaped, deep = int(y.sum()), int(level.two_digit(esc).sum())
    g = deep / max(escaped, 1)  # the second flag's share among the escaped
    second = shares_entropy([g, 1 - g])  # 0 at depth 1 (no second digits)
    return {
        "flag_bits_per_segment_context": bits,
        "flag_features": list(FLAG_FEATURES),
        "flag_segments_decoded": ran / max(len(y), 1),  # features from running the decoder
        "code_bits_per_byte_flag_context": (
            len(y) * math.log2(K) + len(y) * bits + escaped * second + (escaped + deep) * math.log2(K_e)
        )
        / n_bytes,
    }


def _decode_rows(model, rows: list[torch.Tensor]) -> list[list[int]]:
    codes, mask = pad_rows(rows)
    return decoded_ids(model.decode(codes, mask, level=0))


def run(model, lines: list[bytes], args) -> dict:
    refs = [frame_document(t).tolist() for t in lines]
    if args.probe == "escape":
        return escape_report(model, refs, lines, corrections=args.corrections)
    if args.probe == "list":
        res = [list_decode(model, r, args.beam, args.check_bits, not args.no_code_check) for r in refs]
        exact = sum(r["decoded"] == ref for r, ref in zip(res, refs))
        segs = sum(r["segments"] for r in res)
        return {
            "exact_match": exact / len(refs),
            "unchecked_segments": sum(r["unchecked_segments"] for r in res) / max(segs, 1),
        }
    exact = {"searched": 0, "nearest": 0}
    changed = unmatched = segs = 0
    for i in range(0, len(refs), 32):
        batch = refs[i : i + 32]
        res = [search_codes(model, r, args.top, args.criterion) for r in batch]
        for key, field in (("searched", "codes"), ("nearest", "nearest")):
            dec = _decode_rows(model, [r[field] for r in res])
            exact[key] += sum(d == r for d, r in zip(dec, batch))
        changed += sum(int((r["codes"] != r["nearest"]).sum()) for r in res)
        unmatched += sum(r["unmatched_segments"] for r in res)
        segs += sum(len(r["codes"]) for r in res)
    return {
        "exact_match": exact["searched"] / len(refs),
        "exact_match_nearest_codes": exact["nearest"] / len(refs),
        "codes_changed": changed / max(segs, 1),
        "segments_without_exact_code": unmatched / max(segs, 1),
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a saved 1-level hier_ae folder")
    p.add_argument("--text", required=True, help="a val.txt (or 'default'), as bench.recon's --text")
    p.add_argument("--probe", choices=["list", "search", "escape"], required=True)
    p.add_argument("--lines", type=int, default=256)
    p.add_argument("--docs", type=int, default=0, help="escape: also this many 1 KB windows (bench.recon's)")
    p.add_argument(
        "--escape-choice",
        type=int,
        default=None,
        help="escape: set the model's escape_choice_candidates (encode-only: k nearest escape codes tried)",
    )
    p.add_argument(
        "--escape-joint",
        type=int,
        default=None,
        help="escape: set the model's escape_joint_candidates (encode-only: codes chosen again with the "
        "escape code for escaped segments no escape code gives back)",
    )
    p.add_argument(
        "--flag-fit",
        default=None,
        help="escape: price each escape flag from the decoder's predictions (`flag_features`), fitted on "
        "this text's held-out lines (e.g. the other half of val.txt)",
    )
    p.add_argument(
        "--boundary-value",
        type=float,
        default=None,
        help="level 0's boundary threshold (budget) for encode and decode, instead of the saved one",
    )
    p.add_argument(
        "--corrections",
        action="store_true",
        help="escape: also encode token corrections (hier_ae.corrections) and price them in the rate",
    )
    p.add_argument(
        "--by-script",
        action="store_true",
        help="escape: also the figures per writing system of the lines (bench.script_breakdown)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--beam", type=int, default=8, help="list: hypotheses kept per step")
    p.add_argument("--check-bits", type=int, default=0, help="list: checksum bits stored per segment")
    p.add_argument("--no-code-check", action="store_true", help="list: skip the re-encode check")
    p.add_argument("--top", type=int, default=0, help="search: nearest codes tried (0: all K)")
    p.add_argument(
        "--criterion",
        choices=["exact", "likelihood"],
        default="exact",
        help="search: the nearest code that decodes the segment (else the most likely), or the most likely",
    )
    args = p.parse_args(argv)
    if args.by_script and args.probe != "escape":
        p.error(f"--by-script breaks down the escape probe's figures; --probe is {args.probe}")
    if args.beam < 1 or args.check_bits < 0 or args.top < 0 or args.lines < 1 or args.docs < 0:
        p.error("--beam and --lines must be >= 1, --check-bits, --top and --docs >= 0")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(0)
    model = HierAEModel.from_pretrained(args.model).eval()
    if model.num_levels != 1:
        raise SystemExit(
            f"--model has {model.num_levels} levels; the probes read level 0 of a 1-level model."
        )
    if args.probe == "escape" and not model.levels[0].cfg.escape_codebook_size:
        raise SystemExit("--probe escape reads escape codes: --model's level 0 has escape_codebook_size 0.")
    cfg = model.levels[0].cfg
    if args.escape_choice is not None:
        cfg.escape_choice_candidates = args.escape_choice
    if args.escape_joint is not None:
        cfg.escape_joint_candidates = args.escape_joint
    cfg.validate("levels[0]", model.config.max_input_bytes)  # the settings, checked like a config
    if args.boundary_value is not None:
        if not args.boundary_value >= 0:
            raise SystemExit(f"--boundary-value {args.boundary_value} is invalid: a number >= 0.")
        model.levels[0].boundary_value.fill_(args.boundary_value)
    _, docs = load_text(args.text)
    lines = held_out_lines(docs, args.lines, seed=args.seed)
    t0 = time.perf_counter()
    res = {"probe": args.probe, "lines": len(lines), **run(model, lines, args)}
    stats = res.pop("correction_stats", None)  # counts, escaped, token bits (N,) with --corrections
    encoded = res.pop("encoded", None)  # the escape probe's batches as encode gave them
    per_line = res.pop("per_line", None)  # the escape probe's figures of each line
    if args.probe == "escape" and args.flag_fit:
        fit_lines = held_out_lines(load_text(args.flag_fit)[1], args.lines, seed=args.seed)
        fit_refs = [frame_document(t).tolist() for t in fit_lines]
        refs = [frame_document(t).tolist() for t in lines]
        fit = None
        if stats is not None:  # the fit text with corrections too: its count shares price the counts
            fit = [escape_decode(model, fit_refs[i : i + 32], True) for i in range(0, len(fit_refs), 32)]
        fit_encoded = None if fit is None else [r["encoded"] for r in fit]
        res.update(flag_context_report(model, fit_refs, refs, lines, 32, fit_encoded, encoded))
        if stats is not None:  # the counts priced at the fit text's shares, as the flags
            fit_counts = torch.cat([r["correction_counts"] for r in fit])
            fit_esc = torch.cat([r["correction_escaped"] for r in fit])
            size = max(int(stats[0].max()), int(fit_counts.max())) + 2
            shares = [count_shares(fit_counts[g], size) for g in (~fit_esc, fit_esc)]
            c = correction_bits(*stats, model.levels[0].cfg.max_segment_len, shares)
            n_bytes = sum(len(t) for t in lines)
            res["correction_bits_per_byte_fit"] = c["correction_bits"] / n_bytes
            res["code_bits_per_byte_corrected_context"] = (
                res["code_bits_per_byte_flag_context"] + c["correction_bits"] / n_bytes
            )
    if args.probe == "escape" and args.docs:
        windows = document_windows(docs, args.docs, seed=args.seed)
        refs = [frame_document(t).tolist() for t in windows]
        w = escape_report(model, refs, windows, batch=8, corrections=args.corrections)
        w.pop("correction_stats", None)
        w.pop("encoded", None)
        w.pop("per_line", None)
        res["windows"] = {"docs": len(windows), **w}
    if args.by_script:
        cfg = model.levels[0].cfg
        res["by_script"] = script_breakdown(
            lines, per_line, stats, cfg.num_codes, cfg.escape_codebook_size, cfg.max_segment_len
        )
        print("\n".join(script_table(res["by_script"])), file=sys.stderr)  # stdout stays the JSON
    res["seconds"] = round(time.perf_counter() - t0, 1)
    keys = ("beam", "check_bits", "no_code_check", "top", "criterion", "escape_choice", "escape_joint")
    keys = (*keys, "corrections", "boundary_value", "by_script")
    settings = {k: getattr(args, k) for k in keys}
    res["settings"] = settings
    if args.probe == "list":
        res["extra_code_bits_per_segment"] = args.check_bits
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
