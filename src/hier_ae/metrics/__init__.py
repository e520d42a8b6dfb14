"""`evaluate` modules shipped with hier_ae, loadable offline from their folders.

    >>> from hier_ae import metrics
    >>> recon = metrics.load("reconstruction")     # == evaluate.load(metrics.path("reconstruction"))
    >>> recon.compute(predictions=[b"abc"], references=[b"abd"])["byte_accuracy"]
    0.666...

Each module is a folder holding `<name>/<name>.py` (an `evaluate.Metric` subclass, self-contained);
`evaluate.load(path)` imports it from the local path, so no Hub access is needed. Not part of the
model's remote-code closure.
"""

from __future__ import annotations

from pathlib import Path

METRICS = ("reconstruction", "bits_per_byte")


def path(name: str) -> str:
    """The folder of the shipped `evaluate` module `name` (what `evaluate.load` takes)."""
    if name not in METRICS:
        raise ValueError(f"unknown hier_ae metric {name!r}; shipped: {list(METRICS)}.")
    folder = Path(__file__).resolve().parent / name
    if not (folder / f"{name}.py").is_file():
        raise FileNotFoundError(
            f"{folder / f'{name}.py'} is missing: the package was installed without its metric modules "
            "(pyproject's package-data must list hier_ae.metrics' */*.py)."
        )
    return str(folder)


def load(name: str, **kwargs):
    """`evaluate.load` of a shipped metric by name ('reconstruction' or 'bits_per_byte'), offline."""
    import evaluate

    return evaluate.load(path(name), **kwargs)


__all__ = ["METRICS", "path", "load"]
