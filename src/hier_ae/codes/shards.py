"""Code shards: a corpus encoded to the discrete codes of every level, as sharded Parquet files.

One row per document (or per chunk of a document longer than the model's `max_input_bytes`):

    id            int64    the document's index in corpus order (0, 1, 2, ...)
    key           string   the source's key (a folder file's path, a record's index), may be null
    part          int32    chunk index within the document (0 unless the document was chunked)
    last_part     bool     this row holds the document's end (its `</s>`)
    num_bytes     int64    the document bytes in this row (framing `<s>` / `</s>` not counted)
    codes_<l>     list<int32>  the codes of level l, one per segment, in [0, K_l^R_l)
    lengths_<l>   list<int32>  tokens of level l's stream in each segment (same length as codes_<l>)

A document is `<s>` + bytes + `</s>` (`batching.frame_document`). One longer than `max_input_bytes`
ids is cut into chunks of that many framed ids: chunk 0 starts with `<s>`, the last ends with `</s>`,
and each is encoded as its own row (the manifest counts them). Level l's stream is bytes at l = 0 and
the codes of level l - 1 framed as bos, codes, eos above (`frame_codes`), so segment lengths locate
every code in the bytes (`segment_spans`). Toy example, the row `<s>hi yo</s>` with 2 levels:

    level 0 ids     [<s>, h, i, ' ', y, o, </s>]     codes_0 [5, 9]   lengths_0 [3, 4]
    level 1 tokens  [bos, 5, 9, eos]                 codes_1 [7]      lengths_1 [4]

Sharding: shard k holds documents [k * N, (k + 1) * N) in corpus order (N = shard size), so the
assignment never depends on the number of processes; rank r of W encodes the shards k = r mod W.
Every shard is written as `shard-00000.parquet.tmp-<pid>` and renamed (`os.replace`, atomic), so a
shard file is complete or absent; its Parquet metadata names the run (model + data), so a rerun
skips finished shards and refuses another run's. `manifest.json` is written last, atomically.

Not part of the model's remote-code closure (training-side code).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from ..configuration_hier_ae import LevelVocab
from ..data.batching import frame_document, pad_rows

MANIFEST = "manifest.json"
FORMAT = "hier_ae-code-shards/1"
META_KEY = b"hier_ae_shard"


# ---- the model ------------------------------------------------------------------------------------
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(folder: str | Path) -> dict:
    """`config_hash` (sha256 of config.json's content, sorted keys, without `transformers_version`)
    and `weights_hash` (sha256 of model.safetensors) of a saved model folder."""
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("transformers_version", None)
    config_hash = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()
    return {"config_hash": config_hash, "weights_hash": _sha256_file(folder / "model.safetensors")}


def check_model_folder(folder: str | Path) -> Path:
    """A saved `hier_ae` model folder (config.json with model_type 'hier_ae' and model.safetensors),
    or a `FileNotFoundError` / `ValueError` that says what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--model {folder}: no such folder (expected a saved hier_ae model folder).")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"--model {folder} is not a hier_ae model folder: it has no config.json.")
    try:
        model_type = json.loads(cfg_path.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(f"--model {folder}: config.json is not a JSON object ({e}).") from e
    if model_type != "hier_ae":
        raise ValueError(
            f"--model {folder} is not a hier_ae model: config.json has model_type={model_type!r}."
        )
    if not (folder / "model.safetensors").is_file():
        raise ValueError(
            f"--model {folder} has no model.safetensors (hier_ae folders hold safetensors weights)."
        )
    return folder


def load_model(folder: str | Path, device: str | torch.device = "cpu"):
    """`AutoModel.from_pretrained(folder, trust_remote_code=True)` in fp32 eval mode, after the checks."""
    from transformers import AutoModel

    folder = check_model_folder(folder)
    return AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).to(device).eval()


# ---- rows -----------------------------------------------------------------------------------------
def frame_chunks(doc: bytes, max_ids: int) -> list[torch.Tensor]:
    """The framed document `<s>` + bytes + `</s>` cut into pieces of at most `max_ids` ids.

    doc b"abcde", max_ids 4: framed [2, 100, 101, 102, 103, 104, 1] -> [2, 100, 101, 102], [103, 104, 1]
    (chunk 0 starts with `<s>`, the last chunk ends with `</s>`).
    """
    if max_ids < 2:
        raise ValueError(f"max_ids={max_ids} must be >= 2.")
    framed = frame_document(doc)  # (N + 2,)
    return [framed[i : i + max_ids] for i in range(0, len(framed), max_ids)]


def frame_codes(codes: list[int], num_codes: int, bos: bool = True, eos: bool = True) -> torch.Tensor:
    """Codes of a level as the token stream of the level above (DESIGN §2): bos, codes, eos.

    Specials sit after the codes: pad = K, eos = K + 1, bos = K + 2. K = 10, codes [7, 3, 9]:
    [12, 7, 3, 9, 11]. A chunk that does not start the document has no bos; one that does not end
    it has no eos (as `frame_upper_stream` frames it inside the model).
    """
    vocab = LevelVocab.of_codes(num_codes)
    head = [vocab.bos_id] if bos else []
    tail = [vocab.eos_id] if eos else []
    return torch.tensor(head + list(codes) + tail, dtype=torch.long)


def segment_lengths(segment_ids: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Tokens per segment: segment_ids (B, T) with -1 on padding -> lengths (B, S), S = num_segments.

    segment_ids [[0, 0, 0, 1, 1, 1, 1, -1]] -> [[3, 4]].
    """
    B = segment_ids.shape[0]
    sink = torch.where(segment_ids < 0, torch.full_like(segment_ids, num_segments), segment_ids)  # (B, T)
    counts = torch.zeros(B, num_segments + 1, dtype=torch.long, device=segment_ids.device)  # (B, S+1)
    counts.scatter_add_(1, sink, torch.ones_like(sink))
    return counts[:, :num_segments]  # (B, S)


def length_batches(lengths: list[int], batch_size: int, max_batch_ids: int) -> list[list[int]]:
    """Indices grouped into batches, longest rows first: at most `batch_size` rows and at most
    `max_batch_ids` padded ids (rows x longest row) per batch; a longer row goes alone.

    lengths [3, 9, 4, 8], batch_size 4, max_batch_ids 16 -> [[1], [3, 2], [0]]
    (9 goes alone: 2 x 9 > 16; 8 and 4 pad to 2 x 8 = 16; adding 3 would make 3 x 8 > 16).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        last = batches[-1] if batches else None
        if last and len(last) < batch_size and (len(last) + 1) * lengths[last[0]] <= max_batch_ids:
            last.append(i)
        else:
            batches.append([i])
    return batches


@torch.no_grad()
def encode_rows(
    model, rows: list[torch.Tensor], batch_size: int = 16, max_batch_ids: int = 32768
) -> list[dict]:
    """Encode framed rows (1-D id tensors) with `model.encode`; per row, codes and lengths per level.

    Rows are sorted by length and batched (`length_batches`), which limits padding and bounds the
    memory of a batch; the results come back in the input order as dicts {"codes": [list per
    level], "lengths": [list per level]}. The batches depend only on `rows`, so the same rows
    always give the same codes.
    """
    device = next(model.parameters()).device
    out: list[dict | None] = [None] * len(rows)
    for idx in length_batches([len(r) for r in rows], batch_size, max_batch_ids):
        ids, mask = pad_rows([rows[i] for i in idx])  # (B, T)
        enc = model.encode(ids.to(device), mask.to(device))
        per_level = []
        for lv in range(len(enc.codes)):
            codes, cmask = enc.codes[lv].cpu(), enc.code_mask[lv].cpu()  # (B, S)
            lengths = segment_lengths(enc.segment_ids[lv].cpu(), codes.shape[1])  # (B, S)
            per_level.append((codes, cmask, lengths, enc.level_mask[lv].cpu().sum(dim=1)))
        for j, i in enumerate(idx):
            rec = {"codes": [], "lengths": []}
            for codes, cmask, lengths, n_tokens in per_level:
                n = int(cmask[j].sum())
                rec["codes"].append(codes[j, :n].tolist())
                rec["lengths"].append(lengths[j, :n].tolist())
                assert sum(rec["lengths"][-1]) == int(n_tokens[j]), "segments must cover the level's tokens"
            out[i] = rec
    return out


def segment_spans(lengths: list[list[int]], starts_doc: bool, ends_doc: bool) -> list[list[tuple[int, int]]]:
    """Per level, the range of framed ids [lo, hi) each segment covers in its row.

    Level 0 tokens are the row's ids, so segment spans follow from the lengths. Level l + 1 reads
    [bos] + one token per level-l segment + [eos] (bos only if the row starts the document, eos
    only if it ends it); framing tokens cover no ids, and a segment covers the union of its tokens.
    Example `<s>hi yo</s>`: lengths [[3, 4], [4]] -> [[(0, 3), (3, 7)], [(0, 7)]]
    (level 1: tokens bos, 5, 9, eos with spans None, (0, 3), (3, 7), None; one segment of 4 tokens).
    """
    token_spans: list[tuple[int, int] | None] = [(t, t + 1) for t in range(sum(lengths[0]))]
    out = []
    for lv, lens in enumerate(lengths):
        if lv > 0:
            token_spans = ([None] if starts_doc else []) + out[-1] + ([None] if ends_doc else [])
        assert len(token_spans) == sum(lens), "lengths must cover the level's token stream"
        spans, t = [], 0
        for n in lens:
            covered = [s for s in token_spans[t : t + n] if s is not None]
            spans.append((covered[0][0], covered[-1][1]) if covered else (0, 0))
            t += n
        out.append(spans)
    return out


# ---- shards ---------------------------------------------------------------------------------------
def shard_name(k: int) -> str:
    return f"shard-{k:05d}.parquet"


def shard_schema(num_levels: int):
    import pyarrow as pa

    fields = [
        pa.field("id", pa.int64()),
        pa.field("key", pa.string()),
        pa.field("part", pa.int32()),
        pa.field("last_part", pa.bool_()),
        pa.field("num_bytes", pa.int64()),
    ]
    for lv in range(num_levels):
        fields += [
            pa.field(f"codes_{lv}", pa.list_(pa.int32())),
            pa.field(f"lengths_{lv}", pa.list_(pa.int32())),
        ]
    return pa.schema(fields)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_shard(path: Path, records: list[dict], num_levels: int, meta: dict) -> None:
    """Write one shard atomically: `<path>.tmp-<pid>`, then `os.replace` onto `path`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict[str, list] = {name: [] for name in shard_schema(num_levels).names}
    for r in records:
        for name in ("id", "key", "part", "last_part", "num_bytes"):
            cols[name].append(r[name])
        for lv in range(num_levels):
            cols[f"codes_{lv}"].append(r["codes"][lv])
            cols[f"lengths_{lv}"].append(r["lengths"][lv])
    schema = shard_schema(num_levels).with_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})
    table = pa.table(cols, schema=schema)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_shard_meta(path: Path) -> dict | None:
    """The run metadata of a finished shard, or None if the file is not a readable hier_ae shard."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[META_KEY])
    except (OSError, KeyError, ValueError):
        return None


def read_manifest(out: str | Path) -> dict:
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{out} has no {MANIFEST}: not a finished code-shard folder (run encode_dataset.py)."
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}.")
    return manifest


def run_key(fingerprint: dict, data: dict) -> str:
    """The identity of an encoding run: the model's hashes and every option that changes the rows."""
    blob = json.dumps({"model": fingerprint, "data": data}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def check_output_folder(out: Path, key: str, fingerprint: dict) -> None:
    """Refuse a folder that holds another run's shards or manifest (nothing is written or removed)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder.")
    manifest = out / MANIFEST
    if manifest.is_file():
        old = json.loads(manifest.read_text())
        if old.get("run_key") != key:
            old_model = old.get("model", {})
            same_model = all(old_model.get(k) == fingerprint[k] for k in ("config_hash", "weights_hash"))
            what = "the same model with other data options" if same_model else "another model"
            raise ValueError(
                f"--out {out} holds code shards of {what} (manifest run_key {old.get('run_key')} != {key}); "
                "nothing was overwritten. Use a new --out folder, or delete that one."
            )
    for path in sorted(out.glob("shard-*.parquet")):
        meta = read_shard_meta(path)
        if meta is None or meta.get("run_key") != key:
            raise ValueError(
                f"--out {out}: {path.name} is not a shard of this run (model and data options differ, or it "
                "is not a hier_ae shard); nothing was overwritten. Use a new --out folder."
            )


def shard_batches(docs: Iterable[tuple[str | None, bytes]], shard_size: int) -> Iterator[tuple[int, list]]:
    """Group documents into shards in corpus order: (k, [(id, key, bytes), ...]) for shard k.

    shard_size 2, documents a b c d e -> (0, [a, b]), (1, [c, d]), (2, [e]); ids are 0..4.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size={shard_size} must be >= 1.")
    buf, k = [], 0
    for i, (key, data) in enumerate(docs):
        buf.append((i, key, data))
        if len(buf) == shard_size:
            yield k, buf
            buf, k = [], k + 1
    if buf:
        yield k, buf


def encode_shard(
    model,
    docs: list[tuple[int, str | None, bytes]],
    max_ids: int,
    batch_size: int,
    max_batch_ids: int = 32768,
) -> list[dict]:
    """Rows of one shard: each document framed, chunked to `max_ids`, encoded; in corpus order."""
    rows, meta = [], []
    for doc_id, key, data in docs:
        chunks = frame_chunks(data, max_ids)
        for part, chunk in enumerate(chunks):
            last = part == len(chunks) - 1
            n_bytes = len(chunk) - int(part == 0) - int(last)
            rows.append(chunk)
            meta.append({"id": doc_id, "key": key, "part": part, "last_part": last, "num_bytes": n_bytes})
    encoded = encode_rows(model, rows, batch_size, max_batch_ids)
    return [{**m, **e} for m, e in zip(meta, encoded)]


def shard_stats(records: list[dict], num_levels: int) -> dict:
    return {
        "documents": len({r["id"] for r in records}),
        "rows": len(records),
        "chunked_documents": len({r["id"] for r in records if r["part"] > 0}),
        "bytes": sum(r["num_bytes"] for r in records),
        "codes": [sum(len(r["codes"][lv]) for r in records) for lv in range(num_levels)],
    }


def code_bits(num_codes: list[int], codes: list[int], n_bytes: int) -> list[float]:
    """Code bits per byte per level: codes x log2(K^R) / bytes (top level: what `decode` needs)."""
    return [c * math.log2(k) / max(n_bytes, 1) for c, k in zip(codes, num_codes)]


def build_manifest(out: Path, header: dict, n_shards: int, num_codes: list[int]) -> dict:
    """The manifest from the finished shards' own metadata (their Parquet footers, no data read)."""
    shards = []
    for k in range(n_shards):
        meta = read_shard_meta(out / shard_name(k))
        if meta is None or meta.get("run_key") != header["run_key"]:
            raise FileNotFoundError(f"{out / shard_name(k)} is missing or not a shard of this run.")
        shards.append({"file": shard_name(k), **meta["stats"]})
    total = {
        name: sum(s[name] for s in shards) for name in ("documents", "rows", "chunked_documents", "bytes")
    }
    codes = [sum(s["codes"][lv] for s in shards) for lv in range(len(num_codes))]
    per_level = code_bits(num_codes, codes, total["bytes"])
    return {
        **header,
        "shards": shards,
        **total,
        "codes_per_level": codes,
        "code_bits_per_byte": per_level[-1],
        "code_bits_per_byte_per_level": per_level,
    }


def code_rows_from_documents(
    model, docs: list[bytes], level: int, max_ids: int | None = None, batch_size: int = 16
) -> list[torch.Tensor]:
    """What `code_rows` gives for these documents, encoded now: the rows (chunks of at most
    `max_ids` framed ids, default `max_input_bytes`) and their codes of `level` framed as the
    stream of the level above. Used for held-out batches, and to check stored codes."""
    max_ids = max_ids or model.config.max_input_bytes
    rows, framing = [], []
    for d in docs:
        chunks = frame_chunks(d, max_ids)
        rows += chunks
        framing += [(part == 0, part == len(chunks) - 1) for part in range(len(chunks))]
    num_codes = model.levels[level].cfg.num_codes
    encoded = encode_rows(model, rows, batch_size)
    return [frame_codes(e["codes"][level], num_codes, bos, eos) for e, (bos, eos) in zip(encoded, framing)]


# ---- reading shards back --------------------------------------------------------------------------
def shard_files(out: str | Path) -> list[str]:
    """The shard files of a finished folder, in shard order (for `datasets.load_dataset('parquet', ...)`)."""
    manifest = read_manifest(out)
    return [str(Path(out) / s["file"]) for s in manifest["shards"]]


def code_rows(out: str | Path, level: int | None = None) -> tuple[list[torch.Tensor], int]:
    """Every row's codes of `level` (default: the top level) framed as the stream of the level above.

    Loads the shards with `datasets.load_dataset("parquet", data_files=...)`. Returns the framed rows
    (bos, codes, eos; see `frame_codes`) and the level's number of codes K^R. The model forward reads
    them with `start_level = level + 1`.
    """
    import datasets

    manifest = read_manifest(out)
    num_codes = manifest["model"]["num_codes"]
    lv = len(num_codes) - 1 if level is None else level
    if not 0 <= lv < len(num_codes):
        raise ValueError(f"code level={level} is invalid: the shards hold levels 0..{len(num_codes) - 1}.")
    ds = datasets.load_dataset("parquet", data_files=shard_files(out), split="train")
    ds = ds.select_columns([f"codes_{lv}", "part", "last_part"])
    rows = [frame_codes(r[f"codes_{lv}"], num_codes[lv], bos=r["part"] == 0, eos=r["last_part"]) for r in ds]
    return rows, num_codes[lv]
