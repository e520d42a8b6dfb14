"""Training documents through `datasets` (DESIGN §8): Hub datasets, local files and folders, default corpus.

A document is one record (jsonl / json / parquet / Hub row, read from `text_field`) or one file (a
folder of text files, or a single `.txt` file). Sources (`data.source` in a config):

    default                      the built-in corpus (the standard library's own sources; corpus.py)
    path/to/file.jsonl|.json     one record per document, text in `text_field`
    path/to/file.parquet         one row per document
    path/to/file.txt             the whole file is one document
    path/to/folder/              every file under it (recursively) is one document, sorted by path
    owner/name                   a Hub dataset (`data.name` config, `data.streaming` to stream)

The held-out validation split is the dataset's own `validation` (or `test`) split when it has one;
otherwise a fixed hash of each document's index (or path) sends `val_fraction` of documents to
validation, so the split does not depend on the order a stream arrives in.

Preparation (reading, filtering, framing-ready bytes) shows a progress bar and is cached with
`Dataset.save_to_disk` under `data.cache_dir` keyed by a hash of the data config and the source's
file sizes and modification times; a second run with the same config reads the cache.

Bad records are skipped and counted, never a crash and never a silent guess: a record whose text is
not a str or bytes (None, a number, a dict), a str that cannot be UTF-8 encoded (lone surrogates),
a document shorter than `data.min_document_bytes` (default 1: empty ones), a `.jsonl` line that is
not valid JSON or not an object, or an object without `text_field`. `load_documents` returns a
`Documents` list whose `skipped` maps each reason to its count; the count is shown on the progress
bar, logged (`logging`, logger `hier_ae.data.sources`) and printed by `examples/train.py`. `.jsonl` files are
read line by line for this reason: `datasets`' JSON loader fails the whole load on one bad line.

Not part of the model's remote-code closure (training-side code).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

from .corpus import default_corpus

logger = logging.getLogger(__name__)

SKIPPED = "skipped_records.json"  # in a cache folder: the skipped counts of the cached split
CAPPED = "capped.txt"  # in a cache folder: why a cap stopped the reading early ('' or none: it did not)
TEXT_SUFFIXES = {".txt", ".md", ".py", ".rst", ".c", ".h", ".json", ".yaml", ".yml", ".html", ".csv", ""}
LOADERS = {".json": "json", ".parquet": "parquet"}  # .jsonl is read line by line (`_iter_jsonl`)


class Documents(list):
    """The documents (bytes) of one split, plus `skipped`: {reason: count} of the records left out, and
    `capped`: '' or, when `max_bytes` / `max_documents` stopped the reading while the source had more
    records, a sentence that says so (those records are not read; `examples/train.py` prints it)."""

    def __init__(self, docs=(), skipped: dict[str, int] | None = None, capped: str = ""):
        super().__init__(docs)
        self.skipped = dict(skipped or {})
        self.capped = capped

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def skipped_summary(self) -> str:
        """'3 records skipped (2 not text, 1 corrupt JSON line)', or '' when none was."""
        if not self.skipped:
            return ""
        parts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
        return f"{self.num_skipped} records skipped ({parts})"


class Skip:
    """A record that cannot be a document, yielded in its place so that it is counted."""

    def __init__(self, reason: str):
        self.reason = reason


def as_document(text) -> bytes | Skip:
    """The bytes of one record's text, or a `Skip` saying why it has none.

    str -> UTF-8 bytes ("é" -> b"\\xc3\\xa9"); bytes / bytearray / memoryview -> bytes as they are
    (the model reads any bytes); None, numbers, dicts, lists -> Skip("not text"): `bytes(3)` would
    silently make three NUL bytes; a str with a lone surrogate -> Skip("not UTF-8 encodable").
    """
    if isinstance(text, Skip):
        return text
    if isinstance(text, str):
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            return Skip("not UTF-8 encodable")
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    return Skip("not text")


def _iter_jsonl(path: Path, text_field: str):
    """(key, text or Skip) per non-blank line of a JSON-lines file; a bad line is a Skip, not a crash.

    The key is the index among non-blank lines (as `datasets` numbers rows), so the split is stable.
    A file where no object has `text_field` is a configuration error: ValueError.
    """
    found = False
    with open(path, "rb") as f:
        lines = (ln for ln in f if ln.strip())
        for i, line in enumerate(lines):
            try:
                record = json.loads(line)
            except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
                yield str(i), Skip("corrupt JSON line")
                continue
            if not isinstance(record, dict):
                yield str(i), Skip("JSON line that is not an object")
            elif text_field not in record:
                yield str(i), Skip(f"record without {text_field!r}")
            else:
                found = True
                yield str(i), record[text_field]
    if not found:
        raise ValueError(f"data.text_field={text_field!r} is not a key of any record of {path}.")


def _hash01(key: str) -> float:
    """A stable number in [0, 1) for `key` (sha256), the same on every machine and Python version."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def _fingerprint(data_cfg: dict) -> str:
    """Hash of the data config plus, for local sources, the size and mtime of every file read."""
    keyed = {
        k: data_cfg.get(k)
        for k in sorted(data_cfg)
        if k not in ("batch_size", "seq_len", "p_doc_start", "p_line")
    }
    source = str(data_cfg.get("source", "default"))
    stats = []
    path = Path(source)
    if path.exists():
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    blob = json.dumps([keyed, stats], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _iter_local(path: Path, text_field: str):
    """(key, text) pairs of a local file or folder; the key decides the validation split.

    A file that cannot be read or parsed raises a `ValueError` naming it (never a half-read corpus);
    a bad record inside a readable `.jsonl` file is a `Skip` (counted), not an error.
    """
    import datasets

    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            try:
                data = f.read_bytes()
            except OSError as e:
                raise ValueError(f"data.source: cannot read {f}: {e}") from e
            yield f.relative_to(path).as_posix(), data
        return
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _iter_jsonl(path, text_field)
        return
    if suffix in LOADERS:
        try:
            ds = datasets.load_dataset(LOADERS[suffix], data_files=str(path), split="train")
        except Exception as e:  # datasets raises many types for a corrupt or unreadable file
            raise ValueError(
                f"data.source={str(path)!r} is not a readable {suffix[1:]} file ({type(e).__name__}: {e})"
            ) from e
        if text_field not in ds.column_names:
            raise ValueError(
                f"data.text_field={text_field!r} is not a column of {path}; columns: {ds.column_names}"
            )
        for i, row in enumerate(ds):
            yield str(i), row[text_field]
        return
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"data.source: cannot read {path}: {e}") from e
    yield path.name, data


def _iter_hub(data_cfg: dict, split: str):
    """(key, text) pairs of a Hub dataset split; `split` is 'train', 'validation' or 'all'.

    The key is None for rows of a dataset's own held-out split (no hash split needed).
    """
    import datasets

    name, config = data_cfg["source"], data_cfg.get("name")
    streaming = bool(data_cfg.get("streaming", False))
    text_field = data_cfg.get("text_field", "text")
    missing = Skip(f"record without {text_field!r}")
    splits = datasets.get_dataset_split_names(name, config)
    held_out = next((s for s in ("validation", "valid", "test") if s in splits), None)
    if held_out is not None:
        wanted = {"train": ["train"], "validation": [held_out], "all": ["train", held_out]}[split]
        for part in wanted:
            ds = datasets.load_dataset(name, config, split=part, streaming=streaming)
            for row in ds:
                yield None, row.get(text_field, missing)
        return
    ds = datasets.load_dataset(name, config, split="train", streaming=streaming)
    for i, row in enumerate(ds):
        yield str(i), row.get(text_field, missing)


SPLITS = ("train", "validation", "all")


def iter_documents(
    data_cfg: dict, split: str = "train", skipped: Counter | None = None, capped: list[str] | None = None
):
    """Lazily yield `(key, bytes)` for every document of `split` of a config's `data` section.

    `split` is 'train', 'validation' (the hash split of `load_documents`) or 'all' (every document,
    no split). Nothing is collected: a corpus larger than RAM streams through (local parquet files
    are memory-mapped by `datasets`, jsonl files read line by line; Hub datasets stream with
    `data.streaming`). The order is the corpus order, the same on every run and every process.
    `max_bytes` / `max_documents` / `min_document_bytes` apply as in `load_documents`. Keys: a
    folder file's relative path, a record's index in its file, a Hub row's index (None for a
    dataset's own held-out split), the default corpus document's index. Records that cannot be
    documents are left out and counted in `skipped` ({reason: count}) when it is given. When the cap
    stops the reading of a file, folder or Hub dataset that has more records, a sentence naming the cap
    is appended to `capped` (when given): a corpus in a sorted order (languages one after another, say)
    then loses its tail, which a run should say. (The built-in corpus is cut at `max_bytes` by design.)
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is invalid: one of {SPLITS}.")
    skipped = Counter() if skipped is None else skipped
    source = str(data_cfg.get("source", "default"))
    max_bytes = data_cfg.get("max_bytes")
    max_docs = data_cfg.get("max_documents")
    val_fraction = float(data_cfg.get("val_fraction", 0.05))
    min_doc_bytes = int(data_cfg.get("min_document_bytes", 1))
    if source == "default":
        docs = (
            default_corpus("train", max_bytes=max_bytes, val_fraction=0.0)
            if split == "all"
            else default_corpus(split, max_bytes=max_bytes, val_fraction=val_fraction)
        )
        yield from ((str(i), d) for i, d in enumerate(docs[:max_docs] if max_docs else docs))
        return
    path = Path(source)
    if path.exists():
        pairs = _iter_local(path, data_cfg.get("text_field", "text"))
    elif "/" in source and not source.startswith((".", "/")):
        pairs = _iter_hub(data_cfg, split)
    else:
        raise FileNotFoundError(
            f"data.source={source!r}: not a local file or folder, and not a Hub dataset name 'owner/name'. "
            "Use 'default' for the built-in corpus."
        )
    n = total = 0
    for key, text in pairs:
        if split != "all" and key is not None and (_hash01(key) < val_fraction) != (split == "validation"):
            continue
        data = as_document(text)
        if not isinstance(data, Skip) and len(data) < min_doc_bytes:
            data = Skip("empty" if not data else f"shorter than min_document_bytes={min_doc_bytes}")
        if isinstance(data, Skip):
            skipped[data.reason] += 1
            continue
        yield key, data
        n, total = n + 1, total + len(data)
        if (max_bytes is not None and total >= max_bytes) or (max_docs and n >= max_docs):
            if capped is not None and next(pairs, None) is not None:  # one more record: the source goes on
                cap = (
                    f"data.max_bytes={max_bytes:,}"
                    if max_bytes is not None and total >= max_bytes
                    else f"data.max_documents={max_docs:,}"
                )
                capped.append(
                    f"{cap} stopped the reading after {n:,} documents ({total:,} bytes) of the {split} "
                    f"split; the rest of {source} is not read (raise the cap, or remove it to read it all)"
                )
            return


def _collect(data_cfg: dict, split: str, show_progress: bool) -> Documents:
    """Read, split, filter and count the documents of `split`; see the module docstring."""
    from tqdm.auto import tqdm

    source = str(data_cfg.get("source", "default"))
    docs, skipped, capped = [], Counter(), []
    bar = tqdm(desc=f"preparing {split} documents", unit=" docs", disable=not show_progress)
    for _, data in iter_documents(data_cfg, split, skipped, capped):
        docs.append(data)
        bar.update(1)
        if skipped:
            bar.set_postfix(skipped=sum(skipped.values()), refresh=False)
    bar.close()
    result = Documents(docs, skipped, capped[0] if capped else "")
    if skipped:
        logger.warning("data.source=%r, %s split: %s", source, split, result.skipped_summary())
    if result.capped:
        logger.warning("data.source=%r: %s", source, result.capped)
    if not docs:
        val_fraction = float(data_cfg.get("val_fraction", 0.05))
        raise ValueError(
            f"data.source={source!r} gave no {split} documents (val_fraction={val_fraction}); "
            f"{result.skipped_summary() or 'no record was skipped'}."
        )
    return result


def load_documents(data_cfg: dict, split: str, show_progress: bool = True) -> Documents:
    """The documents (bytes) of `split` ('train' or 'validation') for a config's `data` section.

    Returns a `Documents` list; its `skipped` counts the records left out, by reason.

    Cached as a `datasets.Dataset` (one `bytes` column) under `data.cache_dir` (default
    `~/.cache/hier_ae/data`, or `$HF_DATASETS_CACHE/hier_ae`); `data.cache_dir: null` turns it off.
    """
    import os

    import datasets

    if split not in ("train", "validation"):
        raise ValueError(f"split={split!r} is invalid: 'train' or 'validation'.")
    default_root = Path(
        os.environ.get("HF_DATASETS_CACHE", Path.home() / ".cache" / "huggingface" / "datasets")
    )
    cache_root = data_cfg.get("cache_dir", str(default_root / "hier_ae"))
    cache = Path(cache_root) / f"{_fingerprint(data_cfg)}-{split}" if cache_root else None
    if cache is not None and (cache / "dataset_info.json").exists():
        skipped_file = cache / SKIPPED
        skipped = json.loads(skipped_file.read_text()) if skipped_file.exists() else {}
        capped = (cache / CAPPED).read_text() if (cache / CAPPED).exists() else ""
        return Documents(datasets.load_from_disk(str(cache))["bytes"], skipped, capped)
    docs = _collect(data_cfg, split, show_progress)
    if cache is not None:
        tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
        features = datasets.Features({"bytes": datasets.Value("binary")})
        datasets.Dataset.from_dict({"bytes": list(docs)}, features=features).save_to_disk(str(tmp))
        (tmp / SKIPPED).write_text(json.dumps(docs.skipped))
        (tmp / CAPPED).write_text(docs.capped)
        try:
            tmp.rename(cache)  # atomic: a concurrent process that got there first wins
        except OSError:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return docs
