"""Encode a corpus to the codes of every level, as sharded Parquet files (resumable; multi-process).

    python examples/encode_dataset.py --model runs/tiny/model --out runs/tiny/codes
    python examples/encode_dataset.py --model runs/tiny/model --data docs.jsonl --split train \
        --out runs/tiny/codes --shard-size 5000 --verify
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no examples/encode_dataset.py --model M --out DIR

Data options are train.py's (`--config` for its `data:` section, `--data`, `--streaming`,
`--set data.KEY=VALUE`); `--split` picks train.py's training or validation documents, or all.
Documents stream in lazily, one shard (`--shard-size` documents) in memory at a time; shard k holds
documents [k * N, (k + 1) * N) in corpus order and process r of W encodes the shards k = r mod W.

Writes OUT/shard-00000.parquet, ... (one row per document: id, key, part, last_part, num_bytes,
codes_<l> and lengths_<l> per level; see `hier_ae.codes.shards`) and OUT/manifest.json (model
config and weights hashes, data options, per-shard counts, bytes, code bits per byte), last. Each
shard is written under a temporary name and renamed, so a rerun (after a crash or a kill) skips
the finished shards and ends with exactly the output of an uninterrupted run. `--verify` then
decodes every shard from its top-level codes and writes OUT/verify.json (exact-match rate).

Load the shards with `datasets.load_dataset("parquet", data_files=hier_ae.codes.shards.shard_files(OUT))`;
train a top LM on them with train.py's `data.code_shards: OUT`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch
import yaml

from hier_ae.cli import run
from hier_ae.codes.shards import (
    MANIFEST,
    atomic_write_text,
    build_manifest,
    check_model_folder,
    check_output_folder,
    code_bits,
    encode_shard,
    frame_chunks,
    load_model,
    model_fingerprint,
    read_manifest,
    run_key,
    shard_batches,
    shard_name,
    shard_stats,
    write_shard,
)
from hier_ae.data.sources import SPLITS, iter_documents

DATA_DEFAULTS = {
    "source": "default",
    "name": None,
    "text_field": "text",
    "streaming": False,
    "val_fraction": 0.05,
    "max_bytes": None,
    "max_documents": None,
    "min_document_bytes": 1,
}


def add_data_options(p: argparse.ArgumentParser) -> None:
    """train.py's data options (shared with inspect_codebook.py)."""
    g = p.add_argument_group("data (as in train.py)")
    g.add_argument("--config", help="a train.py YAML config; only its data: section is read")
    g.add_argument("--data", help="data.source: 'default', a file or folder, or a Hub dataset 'owner/name'")
    g.add_argument("--streaming", action="store_true", default=None, help="data.streaming (Hub datasets)")
    g.add_argument("--set", action="append", default=[], metavar="data.KEY=VALUE", help="override a data key")
    g.add_argument(
        "--split", choices=SPLITS, default="all", help="train.py's training / held-out documents, or all"
    )


def data_config(args) -> dict:
    """The `data` section from --config, --data, --streaming and --set data.KEY=VALUE, with defaults."""
    cfg = dict(DATA_DEFAULTS)
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"--config {path}: no such file.")
        cfg.update((yaml.safe_load(path.read_text()) or {}).get("data", {}))
    if args.data is not None:
        cfg["source"] = args.data
    if args.streaming is not None:
        cfg["streaming"] = args.streaming
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("data.") or key.count(".") != 1:
            raise ValueError(f"--set {item!r}: expected data.KEY=VALUE, e.g. data.text_field=body")
        cfg[key[5:]] = yaml.safe_load(value)
    return {k: cfg.get(k) for k in DATA_DEFAULTS}  # only the keys that choose documents


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="saved hier_ae model folder")
    p.add_argument("--out", required=True, help="output folder for the shards and manifest.json")
    add_data_options(p)
    p.add_argument("--shard-size", type=int, default=10_000, help="documents per shard")
    p.add_argument("--batch-size", type=int, default=16, help="rows per encode batch (at most)")
    p.add_argument(
        "--max-batch-ids",
        type=int,
        default=32768,
        help="padded ids per encode batch (at most; bounds memory)",
    )
    p.add_argument(
        "--max-ids",
        type=int,
        default=None,
        help="chunk documents longer than this many framed ids (default: the model's max_input_bytes)",
    )
    p.add_argument("--verify", action="store_true", help="decode the shards; write OUT/verify.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def verify_shards(model, out: Path, docs, shard_size, max_ids, rank, world, batch_size) -> dict:
    """Decode this process's shards from their top-level codes; compare with the source documents.

    A row is exact if `decode` gives back exactly its framed ids (up to and including `</s>` if the
    row ends the document); a document is exact if all its rows are. Per-shard results go to
    OUT/verify/shard-*.json; returns this process's totals.
    """
    import pyarrow.parquet as pq

    from hier_ae.configuration_hier_ae import EOS_ID
    from hier_ae.data.batching import pad_rows

    top = f"codes_{model.num_levels - 1}"
    (out / "verify").mkdir(exist_ok=True)
    totals = {"documents": 0, "exact_documents": 0, "rows": 0, "exact_rows": 0}
    device = next(model.parameters()).device
    for k, shard_docs in shard_batches(docs, shard_size):
        if k % world != rank:
            continue
        recs = pq.read_table(out / shard_name(k), columns=["id", "part", top]).to_pylist()
        refs = {(i, part): c for i, _, d in shard_docs for part, c in enumerate(frame_chunks(d, max_ids))}
        if sorted(refs) != sorted((r["id"], r["part"]) for r in recs):
            raise ValueError(f"{out / shard_name(k)} does not hold the rows of the source documents {k}.")
        exact_doc = {r["id"]: True for r in recs}
        exact_rows = 0
        order = sorted(range(len(recs)), key=lambda i: (-len(recs[i][top]), i))
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            codes, mask = pad_rows([torch.tensor(recs[i][top], dtype=torch.long) for i in idx])  # (B, S)
            dec = model.decode(codes.to(device), mask.bool().to(device))
            for j, i in enumerate(idx):
                got = dec.sequences[j][dec.attention_mask[j].bool()].cpu().tolist()
                if EOS_ID in got:
                    got = got[: got.index(EOS_ID) + 1]
                ok = got == refs[(recs[i]["id"], recs[i]["part"])].tolist()
                exact_doc[recs[i]["id"]] &= ok
                exact_rows += int(ok)
        result = {
            "documents": len(exact_doc),
            "exact_documents": sum(exact_doc.values()),
            "rows": len(recs),
            "exact_rows": exact_rows,
        }
        for name in totals:
            totals[name] += result[name]
        atomic_write_text(out / "verify" / f"shard-{k:05d}.json", json.dumps(result))
    return totals


def main(argv=None) -> dict:
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    args = parse_args(argv)
    data_cfg = data_config(args)
    state = Accelerator()  # PartialState() stays world 1 under ACCELERATE_USE_CPU (checked)
    rank, world, main_proc = state.process_index, state.num_processes, state.is_main_process
    folder = check_model_folder(args.model)
    fingerprint = model_fingerprint(folder)
    model = load_model(folder, state.device)
    num_codes = [lv.cfg.num_codes for lv in model.levels]
    max_ids = args.max_ids or model.config.max_input_bytes
    if not 2 <= max_ids <= model.config.max_input_bytes:
        raise ValueError(
            f"--max-ids {max_ids} must be in [2, max_input_bytes={model.config.max_input_bytes}]."
        )
    options = {**data_cfg, "split": args.split, "shard_size": args.shard_size, "max_ids": max_ids}
    key = run_key(fingerprint, options)
    out = Path(args.out)
    check_output_folder(out, key, fingerprint)  # every process, before anything is written
    state.wait_for_everyone()
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    for tmp in out.glob("shard-*.parquet.tmp-*"):  # torn writes of a killed run (this process's shards)
        if int(tmp.name[6:11]) % world == rank:
            tmp.unlink(missing_ok=True)
    print(
        f"encode_dataset: process {rank} of {world} ({state.distributed_type}), "
        f"device {state.device}, run {key}",
        flush=True,
    )

    # encode: every process reads the document stream, encodes its own shards, skips finished ones
    bar = tqdm(unit=" docs", desc="encoding", disable=args.no_progress or not main_proc, dynamic_ncols=True)
    t0, n_shards, done = time.perf_counter(), 0, {"bytes": 0, "codes": 0, "skipped": 0, "encoded": 0}
    skipped = Counter()  # bad records (not text, empty, corrupt JSON lines): left out and counted
    for k, docs in shard_batches(iter_documents(data_cfg, args.split, skipped), args.shard_size):
        n_shards = k + 1
        if k % world != rank:
            continue
        path = out / shard_name(k)
        if path.exists():  # finished by an earlier run (check_output_folder checked its run key)
            done["skipped"] += 1
            bar.update(len(docs))
            continue
        records = encode_shard(model, docs, max_ids, args.batch_size, args.max_batch_ids)
        stats = shard_stats(records, len(num_codes))
        write_shard(path, records, len(num_codes), {"run_key": key, "shard": k, "stats": stats})
        done["encoded"] += 1
        done["bytes"] += stats["bytes"]
        done["codes"] += stats["codes"][-1]
        rate = done["bytes"] / max(time.perf_counter() - t0, 1e-9)
        bits = code_bits(num_codes[-1:], [done["codes"]], done["bytes"])[0]
        bar.update(len(docs))
        bar.set_postfix_str(f"{rate:,.0f} bytes/s, {bits:.3f} code bits/byte, shard {k}")
    bar.close()
    if n_shards == 0:
        raise ValueError(f"data.source={data_cfg['source']!r} gave no documents for split {args.split!r}.")
    seconds = time.perf_counter() - t0
    print(
        f"process {rank}: encoded {done['encoded']} shard(s), skipped {done['skipped']} finished, "
        f"{done['bytes']:,} bytes in {seconds:.1f}s ({done['bytes'] / max(seconds, 1e-9):,.0f} bytes/s)",
        flush=True,
    )
    if skipped:
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()))
        print(f"process {rank}: {sum(skipped.values())} records skipped ({reasons})", flush=True)
    state.wait_for_everyone()

    # the manifest, last, from the shards' own metadata
    header = {
        "format": "hier_ae-code-shards/1",
        "run_key": key,
        "model": {
            "path": str(folder.resolve()),
            **fingerprint,
            "num_levels": len(num_codes),
            "num_codes": num_codes,
        },
        "data": options,
        "skipped_records": dict(sorted(skipped.items())),
        "long_documents": f"chunked into rows of at most {max_ids} framed ids (column part)",
        "columns": "id, key, part, last_part, num_bytes, codes_<l>, lengths_<l> for each level l",
    }
    if main_proc:
        manifest = build_manifest(out, header, n_shards, num_codes)
        atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        print(
            f"wrote {n_shards} shard(s) and {out / MANIFEST}: {manifest['documents']} documents, "
            f"{manifest['bytes']:,} bytes, code bits per byte {manifest['code_bits_per_byte']:.4f}",
            flush=True,
        )
    state.wait_for_everyone()
    manifest = read_manifest(out)
    if args.verify:
        docs = iter_documents(data_cfg, args.split)
        verify_shards(model, out, docs, args.shard_size, max_ids, rank, world, args.batch_size)
        state.wait_for_everyone()
        if main_proc:
            per_shard = [
                json.loads((out / "verify" / f"shard-{k:05d}.json").read_text()) for k in range(n_shards)
            ]
            n = sum(s["documents"] for s in per_shard)
            exact = sum(s["exact_documents"] for s in per_shard)
            report = {"documents": n, "exact_documents": exact, "exact_match": exact / max(n, 1)}
            atomic_write_text(out / "verify.json", json.dumps(report, indent=2) + "\n")
            print(
                f"verify: {exact} of {n} documents decode exactly ({report['exact_match']:.2%})", flush=True
            )
        state.wait_for_everyone()
        manifest["verify"] = json.loads((out / "verify.json").read_text())
    return manifest


if __name__ == "__main__":
    run(main)
