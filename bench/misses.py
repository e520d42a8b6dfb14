"""Where a level's teacher-forced misses fall (issue 21, item 3): by segment length, by offset in the
segment, and whether the segment's code is shared by other strings on the same text.

    python -m bench.misses --model runs/tiny/model --text ../shared/data/tinyshakespeare/val.txt
    python -m bench.misses --model M --text T --docs 16 --out /tmp/m.json --markdown /tmp/m.md

`bench.recon` says how many bytes the decoder gets wrong given the codes; this says which. Each sampled
text (the same samples as `bench.recon`: held-out lines of 20-120 bytes, or 1 KB windows) is framed
`<s>` + text + `</s>` and run through `forward` (reconstruct mode: the decoder reads each segment's own
code). Every segment of level `--level` becomes a record: its tokens (bytes at level 0), its code, and
which of its tokens the decoder's argmax got right. Over the records:

- **misses by segment length and by offset** in the segment (where in a segment the decoder fails);
- **shared codes**: a code is *shared* when segments holding different strings got it on this sample.
  A shared code cannot tell its strings apart; the decoder must pick one from the context. `minority`
  segments hold a string other than their code's most frequent one: a decoder that ignored the context
  would get each of them wrong. If most misses sit in shared-code segments, the quantiser merges what
  the decoder needs apart; if they sit in segments whose code is unique, the decoder does not read its
  code (or the code is rare in training);
- **split strings**: strings whose segments got more than one code (context-dependent codes);
- the most-missed segment strings, each with the number of strings its code holds.

Toy example (level 0, two segments per row): rows "ab|cd" and "ab|ce" where "cd" and "ce" both got code
7 -> code 7 is shared; of its segments one holds the minority string, so a context-blind decoder misses
at least one of the two.

Autoencoder figures (the decoder reads the codes of the text it rebuilds), not language-model figures.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import functools
import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.recon import DOC_BYTES, document_windows, held_out_lines, load_text
from hier_ae.data.batching import frame_document, pad_rows
from hier_ae.tokenization_hier_ae import HierAEByteTokenizer

TOP_MISSED = 15  # most-missed strings listed
MAX_OFFSET = 5  # offsets >= this are pooled in one row (segments are rarely longer)


@dataclass(frozen=True)
class SegmentRecord:
    """One segment of one row: its tokens, its code and which tokens the decoder's argmax got right."""

    row: int
    tokens: tuple[int, ...]
    code: int
    hits: tuple[bool, ...]

    @property
    def misses(self) -> int:
        return len(self.hits) - sum(self.hits)


@torch.no_grad()
def segment_records(model, texts: list[bytes], level: int = 0, batch_size: int = 32) -> list[SegmentRecord]:
    """Every segment of level `level` of every framed text, in row order then segment order.

    Tokens that belong to no segment (segment id -1) are left out; a segment's tokens are those with
    its id. E.g. segment ids [0, 0, 1, 1, 1] over tokens [2, 70, 71, 72, 1] -> two records, tokens
    (2, 70) with code c0 and (71, 72, 1) with code c1.
    """
    if not 0 <= level < model.num_levels:
        raise ValueError(f"level={level}: the model has levels 0..{model.num_levels - 1}.")
    model.eval()
    device = next(model.parameters()).device
    records = []
    refs = [frame_document(t) for t in texts]
    for i in range(0, len(refs), batch_size):
        ids, mask = pad_rows(refs[i : i + batch_size])
        out = model(ids.to(device), mask.to(device), run_top_lm=False)
        logits, tokens = out.reconstruct_logits[level], out.level_tokens[level]  # (B, T, V), (B, T)
        valid = out.level_mask[level].bool() & (out.segment_ids[level] >= 0)  # (B, T)
        hit = logits.argmax(dim=-1) == tokens  # (B, T)
        seg, codes = out.segment_ids[level], out.codes[level]  # (B, T), (B, S)
        for b in range(tokens.shape[0]):
            pos = valid[b].nonzero().flatten().tolist()
            groups = collections.defaultdict(list)  # segment id -> positions (ascending)
            for t in pos:
                groups[int(seg[b, t])].append(t)
            for s, ts in sorted(groups.items()):
                records.append(
                    SegmentRecord(
                        row=i + b,
                        tokens=tuple(int(tokens[b, t]) for t in ts),
                        code=int(codes[b, s]),
                        hits=tuple(bool(hit[b, t]) for t in ts),
                    )
                )
    return records


def render_tokens(tokens: tuple[int, ...], level: int) -> str:
    """Level 0: the byte tokenizer's tokens joined (`<s>` / `</s>` named, a byte as its latin-1
    character); above: the code ids. (2, 75, 100) -> '<s>Ha'."""
    if level > 0:
        return " ".join(str(t) for t in tokens)
    return "".join(_tokenizer().convert_ids_to_tokens(list(tokens)))


@functools.cache
def _tokenizer() -> HierAEByteTokenizer:
    return HierAEByteTokenizer()


def summarize(records: list[SegmentRecord], level: int = 0) -> dict:
    """The figures of the module docstring from the records (plain dict, JSON-ready)."""
    if not records:
        raise ValueError("summarize needs at least one segment record.")
    tokens = sum(len(r.tokens) for r in records)
    misses = sum(r.misses for r in records)
    by_length, by_offset = {}, {}
    for r in records:
        row = by_length.setdefault(len(r.tokens), {"segments": 0, "tokens": 0, "misses": 0})
        row["segments"] += 1
        row["tokens"] += len(r.tokens)
        row["misses"] += r.misses
        for j, h in enumerate(r.hits):
            o = by_offset.setdefault(min(j, MAX_OFFSET), {"tokens": 0, "misses": 0})
            o["tokens"] += 1
            o["misses"] += not h
    strings_of = collections.defaultdict(collections.Counter)  # code -> string counts
    codes_of = collections.defaultdict(set)  # string -> codes
    for r in records:
        strings_of[r.code][r.tokens] += 1
        codes_of[r.tokens].add(r.code)
    majority = {c: cnt.most_common(1)[0][0] for c, cnt in strings_of.items()}
    shared = [r for r in records if len(strings_of[r.code]) > 1]
    minority = [r for r in records if r.tokens != majority[r.code]]
    missed = collections.Counter()
    for r in records:
        if r.misses:
            missed[(r.tokens, len(strings_of[r.code]))] += 1
    return {
        "level": level,
        "segments": len(records),
        "tokens": tokens,
        "misses": misses,
        "teacher_forced_accuracy": 1 - misses / tokens,
        "by_length": {str(k): v for k, v in sorted(by_length.items())},
        "by_offset": {str(k): v for k, v in sorted(by_offset.items())},
        "codes_used": len(strings_of),
        "strings": len(codes_of),
        "split_strings": sum(len(c) > 1 for c in codes_of.values()),
        "shared_code_segments": len(shared),
        "minority_segments": len(minority),
        "misses_in_shared_code_segments": sum(r.misses for r in shared),
        "misses_in_minority_segments": sum(r.misses for r in minority),
        "misses_in_unique_code_segments": misses - sum(r.misses for r in shared),
        "most_missed": [
            {"string": render_tokens(s, level), "strings_of_its_code": n, "segments_missed": k}
            for (s, n), k in missed.most_common(TOP_MISSED)
        ],
    }


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.1f}%" if b else "-"


def markdown(result: dict) -> str:
    """The summary as markdown: header figures, the two tables and the most-missed strings."""
    s = result["summary"]
    L = [
        f"# Teacher-forced misses of level {s['level']} ({result['sample']})",
        "",
        f"{result['date']}, {result['machine']}. Command: `{result['command']}`. Autoencoder figures.",
        "",
        f"{s['segments']} segments, {s['tokens']} tokens, {s['misses']} missed (teacher-forced accuracy "
        f"{100 * s['teacher_forced_accuracy']:.2f}%). Codes used {s['codes_used']} by {s['strings']} "
        f"distinct strings ({s['split_strings']} strings got more than one code).",
        "",
        f"- segments whose code is shared by other strings: "
        f"{_pct(s['shared_code_segments'], s['segments'])}; "
        f"they hold {_pct(s['misses_in_shared_code_segments'], s['misses'])} of the misses",
        f"- segments holding a string other than their code's majority: "
        f"{_pct(s['minority_segments'], s['segments'])}; "
        f"{_pct(s['misses_in_minority_segments'], s['misses'])} of the misses",
        f"- misses in segments whose code holds one string: "
        f"{_pct(s['misses_in_unique_code_segments'], s['misses'])}",
        "",
        "| segment length | segments | tokens | missed | miss rate |",
        "|---:|---:|---:|---:|---:|",
    ]
    for k, v in s["by_length"].items():
        L.append(
            f"| {k} | {v['segments']} | {v['tokens']} | {v['misses']} | {_pct(v['misses'], v['tokens'])} |"
        )
    L += ["", "| offset in segment | tokens | miss rate |", "|---:|---:|---:|"]
    for k, v in s["by_offset"].items():
        name = f">= {k}" if int(k) == MAX_OFFSET else k
        L.append(f"| {name} | {v['tokens']} | {_pct(v['misses'], v['tokens'])} |")
    L += ["", "| most-missed string | strings of its code | segments missed |", "|---|---:|---:|"]
    for m in s["most_missed"]:
        shown = m["string"].replace("\n", "\\n").replace("|", "\\|")
        L.append(f"| `{shown}` | {m['strings_of_its_code']} | {m['segments_missed']} |")
    return "\n".join(L) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.misses", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="saved model folder (AutoModel, trust_remote_code)")
    p.add_argument("--text", required=True, help="a val.txt, or 'default' (the built-in corpus' split)")
    p.add_argument("--lines", type=int, default=256, help="held-out lines (20-120 bytes) to sample")
    p.add_argument("--docs", type=int, default=0, help="1 KB windows instead of lines (0: lines)")
    p.add_argument("--level", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", default=None, help="write the JSON here")
    p.add_argument("--markdown", default=None, help="write the markdown here")
    args = p.parse_args(argv)
    if args.docs < 0 or args.lines < 1 and args.docs == 0:
        p.error(f"--lines {args.lines} / --docs {args.docs}: give --lines >= 1, or --docs >= 1.")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from transformers import AutoModel

    model = AutoModel.from_pretrained(args.model, trust_remote_code=True).eval()
    name, docs = load_text(args.text)
    if args.docs:
        texts = document_windows(docs, args.docs, seed=args.seed)
        sample = f"{len(texts)} windows of {DOC_BYTES} bytes of {name}"
    else:
        texts = held_out_lines(docs, args.lines, seed=args.seed)
        sample = f"{len(texts)} held-out lines of {name}"
    if not texts:
        raise ValueError(f"--text {args.text}: no {'window' if args.docs else 'line'} to sample.")
    records = segment_records(model, texts, args.level, args.batch_size)
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {platform.processor() or platform.system()}",
        "command": "python -m bench.misses " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model,
        "sample": sample,
        "summary": summarize(records, args.level),
    }
    md = markdown(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(md)
    print(md)
    return result


if __name__ == "__main__":
    from hier_ae.cli import run

    run(main)
