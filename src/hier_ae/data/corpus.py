"""The built-in default corpus: the Python standard library's own source files.

Every Python installation carries them, so the README's main command trains without a download.
One file is one document. The split is stable across machines and Python patch releases of the
same minor version: a file goes to validation when a hash of its relative path falls in the first
`val_fraction` of the hash range.

Not part of the model's remote-code closure (training-side code).
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _is_val(rel: str, val_fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "big")
    return h / 2**64 < val_fraction


def default_corpus(
    split: str = "train",
    max_bytes: int | None = None,
    val_fraction: float = 0.05,
    max_file_bytes: int = 200_000,
) -> list[bytes]:
    """Documents (bytes) of the standard library's top-level `*.py` files, sorted by path.

    `split` is "train" or "validation"; `max_bytes` stops once that many bytes are collected.
    Files in test and site-packages folders are skipped, as are files over `max_file_bytes`.
    """
    if split not in ("train", "validation"):
        raise ValueError(f"split={split!r} is invalid: 'train' or 'validation'.")
    root = stdlib_root()
    docs, total = [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("site-packages/", "test/", "idlelib/idle_test/")) or "/tests/" in rel:
            continue
        if _is_val(rel, val_fraction) != (split == "validation"):
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if not data or len(data) > max_file_bytes:
            continue
        docs.append(data)
        total += len(data)
        if max_bytes is not None and total >= max_bytes:
            break
    if not docs:
        raise FileNotFoundError(f"no standard-library source files found under {root}")
    return docs
