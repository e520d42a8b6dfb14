"""Where a text's code bits go, by writing system: the escape probe's figures per script of the lines.

    python -m bench.decode_probes --model runs/ml-escape-cap/model --probe escape --corrections \
        --lines 256 --text ../shared/data/multilingual/val.txt#2/2 --by-script

Autoencoder figures (issue 21; bench/experiments.md S42, where such a breakdown found the multilingual runs
had never seen 16 of the corpus' languages). Each line is put under the script most of its letters are
written in (`line_script`: the first word of their Unicode names, e.g. LATIN, CYRILLIC, TELUGU, CJK). Every
group is priced the way the whole text is at its ideal cost (`escape_rates`' flag at the whole text's
entropy, the correction counts at the whole text's shares, `correction_bits`), so the groups' bits add up
to the whole text's bits.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter

import torch

from hier_ae.corrections import correction_bits, own_count_shares
from hier_ae.evaluation.reports import shares_entropy


def line_script(line: bytes) -> str:
    """The script most of a line's letters are written in, as the first word of their Unicode names; "NONE"
    for a line without letters. b"Hello" -> "LATIN"; "Привет, world".encode() -> "CYRILLIC" (6 of 11
    letters); "日本".encode() -> "CJK"; b"1 + 2" -> "NONE". Ties go to the script met first."""
    names = Counter()
    for ch in line.decode("utf-8", "replace"):
        if ch.isalpha():
            names[unicodedata.name(ch, "UNKNOWN").split(" ")[0]] += 1
    return names.most_common(1)[0][0] if names else "NONE"


def script_breakdown(
    lines: list[bytes],
    per_line: list[dict],
    stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    K: int,
    K_e: int,
    max_segment_len: int,
) -> dict:
    """Per script: lines, bytes, exact shares and code bits per byte, priced as the whole text is.

    per_line: one dict a line, {"segments", "escaped", "deep", "exact", "exact_corrected"} (the escape
    probe's `per_line`); stats: the probe's correction stats, (counts, escaped, token bits) (N,) each over
    the valid segments in line order (line i owns per_line[i]["segments"] of them), or None without
    corrections.

    Worked example, K = 256, K_e = 16, no corrections: line a (LATIN, 10 bytes, 4 segments, 1 escaped)
    and line b (CJK, 6 bytes, 4 segments, 3 escaped): the whole text's flag share is 4/8, H = 1 bit a
    segment; LATIN: (4 x 8 + 4 x 1 + 1 x 4) / 10 = 4.0 bits/byte; CJK: (32 + 4 + 12) / 6 = 8.0; the two
    add up to the whole text's (40 + 48) / 16 = 5.5."""
    segs = sum(p["segments"] for p in per_line)
    esc = sum(p["escaped"] for p in per_line)
    deep = sum(p["deep"] for p in per_line)
    h = shares_entropy([(segs - esc) / max(segs, 1), (esc - deep) / max(segs, 1), deep / max(segs, 1)])
    # the whole text's count shares, as `correction_bits` prices the whole text
    shares = None if stats is None else own_count_shares(stats[0], stats[1])
    ends = torch.tensor([0] + [p["segments"] for p in per_line]).cumsum(0).tolist()
    groups: dict[str, list[int]] = {}
    for i, line in enumerate(lines):
        groups.setdefault(line_script(line), []).append(i)
    out = {}
    for name, idx in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        n_bytes = sum(len(lines[i]) for i in idx)
        s = sum(per_line[i]["segments"] for i in idx)
        e = sum(per_line[i]["escaped"] for i in idx)
        d = sum(per_line[i]["deep"] for i in idx)
        codes = s * math.log2(K)
        side = s * h + (e + d) * math.log2(K_e) if K_e else 0.0
        row = {
            "lines": len(idx),
            "bytes": n_bytes,
            "exact_match": sum(per_line[i]["exact"] for i in idx) / len(idx),
            "code_bits_per_byte_no_escape": codes / n_bytes,
            "code_bits_per_byte_flag_ideal": (codes + side) / n_bytes,
        }
        if stats is not None:
            seg = torch.cat([torch.arange(ends[i], ends[i + 1]) for i in idx])
            c = correction_bits(*(t[seg] for t in stats), max_segment_len, shares)
            row["exact_match_corrected"] = sum(per_line[i]["exact_corrected"] for i in idx) / len(idx)
            row["corrections_per_line"] = c["corrections"] / len(idx)
            row["code_bits_per_byte_corrected_ideal"] = (codes + side + c["correction_bits"]) / n_bytes
        out[name] = row
    return out


def script_table(by_script: dict) -> list[str]:
    """Markdown rows of `script_breakdown`, the most lines first."""
    rows = [
        "| script | lines | bytes | exact with escapes | codes alone (bits/B) | with escapes (bits/B) "
        "| exact with corrections | corrections a line | **with corrections (bits/B)** |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in by_script.items():
        corr = (
            f"{100 * r['exact_match_corrected']:.1f}% | {r['corrections_per_line']:.2f} | "
            f"**{r['code_bits_per_byte_corrected_ideal']:.3f}**"
            if "exact_match_corrected" in r
            else "- | - | -"
        )
        rows.append(
            f"| {name} | {r['lines']} | {r['bytes']} | {100 * r['exact_match']:.1f}% | "
            f"{r['code_bits_per_byte_no_escape']:.3f} | {r['code_bits_per_byte_flag_ideal']:.3f} | {corr} |"
        )
    return rows
