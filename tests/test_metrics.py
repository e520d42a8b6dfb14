"""The `evaluate` modules shipped in `hier_ae.metrics`: loaded offline from their folders, values by hand."""

from __future__ import annotations

import math
import os
import random
import socket
from pathlib import Path

import pytest

evaluate = pytest.importorskip("evaluate")

from hier_ae import metrics  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _dp_levenshtein(a, b) -> int:
    """The textbook O(len(a) * len(b)) table, to check the bit-vector version against."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """The Hub unreachable: offline flags set and any socket connection refused."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE")}
    for k in saved:
        os.environ[k] = "1"
    real_connect = socket.socket.connect

    def refuse(self, *args, **kwargs):
        raise OSError("network disabled in test_metrics")

    socket.socket.connect = refuse
    yield
    socket.socket.connect = real_connect
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def recon(offline):
    return metrics.load("reconstruction")


@pytest.fixture(scope="module")
def bpb(offline):
    return metrics.load("bits_per_byte")


def test_modules_are_evaluate_metrics_with_features(recon, bpb):
    assert isinstance(recon, evaluate.Metric) and isinstance(bpb, evaluate.Metric)
    assert set(recon.features) == {"predictions", "references"}
    assert set(bpb.features) == {"nll", "num_bytes"}
    assert "Levenshtein" in recon.description and "bits per byte" in bpb.description.lower()


def test_load_by_path_equals_helper(offline):
    """`evaluate.load(<folder>)` works directly, the way a user without the helper loads it."""
    folder = REPO / "src" / "hier_ae" / "metrics" / "reconstruction"
    m = evaluate.load(str(folder))
    assert m.compute(predictions=[[1, 2]], references=[[1, 2]])["exact_match"] == 1.0
    assert Path(metrics.path("bits_per_byte")).name == "bits_per_byte"
    with pytest.raises(ValueError, match="unknown hier_ae metric"):
        metrics.path("bleu")


def test_reconstruction_values_by_hand(recon):
    ref = [2, 10, 11, 12, 1]  # <s> a b c </s>
    preds = [
        [2, 10, 11, 12, 1],  # exact: distance 0
        [2, 10, 99, 12, 1],  # one substitution at 2: distance 1
        [2, 10, 11],  # ends early at 3: two deletions
        [5, 2, 10, 11, 12, 1],  # one insertion at the start: distance 1, first error at 0
    ]
    r = recon.compute(predictions=preds, references=[ref] * 4)
    assert r["exact_match"] == pytest.approx(1 / 4)
    assert r["mean_edit_distance"] == pytest.approx((0 + 1 + 2 + 1) / 4)
    assert r["byte_accuracy"] == pytest.approx(1 - 4 / 20)
    assert r["mean_byte_accuracy"] == pytest.approx((1 + 0.8 + 0.6 + 0.8) / 4)
    assert r["first_error_mean"] == pytest.approx((2 + 3 + 0) / 3)
    assert r["first_error_median"] == pytest.approx(2.0)
    assert r["first_error_relative_mean"] == pytest.approx((2 / 5 + 3 / 5 + 0) / 3)
    assert r["first_error_at_start"] == pytest.approx(1 / 4)
    assert r["num_pairs"] == 4


def test_reconstruction_takes_bytes_and_clips_accuracy(recon):
    r = recon.compute(predictions=[b"sitting"], references=[b"kitten"])
    assert r["mean_edit_distance"] == 3
    assert r["byte_accuracy"] == pytest.approx(0.5)
    assert r["first_error_mean"] == 0
    # far more edits than reference bytes: accuracy is 0, never negative
    r = recon.compute(predictions=[b"x" * 10], references=[b"ab"])
    assert r["byte_accuracy"] == 0.0 and r["mean_byte_accuracy"] == 0.0
    # every pair exact: no first error to average
    r = recon.compute(predictions=[b"ab", b"c"], references=[b"ab", b"c"])
    assert r["exact_match"] == 1.0 and r["first_error_mean"] is None and r["first_error_median"] is None


def test_reconstruction_add_batch_accumulates(recon):
    recon.add_batch(predictions=[b"abc"], references=[b"abd"])
    recon.add(prediction=[7, 8], reference=[7, 8])
    r = recon.compute()
    assert r["num_pairs"] == 2 and r["exact_match"] == 0.5
    assert r["byte_accuracy"] == pytest.approx(1 - 1 / 5)


def test_reconstruction_refuses_str(recon):
    with pytest.raises(ValueError, match="encode it first"):
        recon.compute(predictions=["abc"], references=[b"abc"])


def test_levenshtein_matches_the_dp_table():
    """The bit-vector edit distance equals the textbook table on random sequences (incl. > 64 long)."""
    from hier_ae.metrics.reconstruction.reconstruction import levenshtein

    rng = random.Random(0)
    for _ in range(300):
        n, m = rng.randint(0, 90), rng.randint(0, 90)
        alphabet = rng.randint(1, 5)
        a = [rng.randrange(alphabet) for _ in range(n)]
        b = [rng.randrange(alphabet) for _ in range(m)]
        assert levenshtein(a, b) == _dp_levenshtein(a, b), (a, b)
    assert levenshtein(b"kitten", b"sitting") == 3
    assert levenshtein([], [1, 2]) == 2


def test_bits_per_byte_values_by_hand(bpb):
    r = bpb.compute(nll=[10 * math.log(2), 20 * math.log(2)], num_bytes=[8, 12])
    assert r["bits_per_byte"] == pytest.approx(30 / 20)
    assert r["total_bytes"] == 20
    assert r["total_nll_nats"] == pytest.approx(30 * math.log(2))


def test_bits_per_byte_refuses_bad_input(bpb):
    with pytest.raises(ValueError, match="sums to 0"):
        bpb.compute(nll=[0.0], num_bytes=[0])
    with pytest.raises(ValueError, match="finite"):
        bpb.compute(nll=[float("nan")], num_bytes=[3])
    with pytest.raises(ValueError, match=">= 0"):
        bpb.compute(nll=[-1.0], num_bytes=[3])


def test_package_data_lists_the_metric_scripts():
    """An installed wheel carries the modules: pyproject's package-data matches their scripts."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "*/*.py" in data["hier_ae.metrics"]
    for name in metrics.METRICS:
        assert (REPO / "src" / "hier_ae" / "metrics" / name / f"{name}.py").is_file()
