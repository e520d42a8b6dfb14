"""Classical compressors on the validation text, as bits per byte: the floor any model should beat."""

from __future__ import annotations

import shutil
import subprocess

COMPRESSORS = {  # name -> command line (reads stdin, writes stdout)
    "gzip -9": ["gzip", "-9", "-c"],
    "bzip2 -9": ["bzip2", "-9", "-c"],
    "xz -9e": ["xz", "-9e", "-c"],
    "zstd -19": ["zstd", "-19", "-c", "-q"],
}


def compressed_bits_per_byte(data: bytes, argv: list[str]) -> float:
    out = subprocess.run(argv, input=data, stdout=subprocess.PIPE, check=True).stdout
    return 8 * len(out) / max(len(data), 1)


def compressor_table(data: bytes) -> dict[str, float | None]:
    """Bits per byte per compressor; None where the tool is not installed (e.g. zstd on some CI)."""
    return {
        name: compressed_bits_per_byte(data, argv) if shutil.which(argv[0]) else None
        for name, argv in COMPRESSORS.items()
    }
