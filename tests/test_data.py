"""Hub datasets through `hier_ae.data.sources`, with the Hub mocked (tests run offline).

`datasets.get_dataset_split_names` and `datasets.load_dataset` are replaced by in-memory datasets,
map-style or streaming (`IterableDataset`), so the code path a user with network access takes runs
here unchanged: a dataset's own validation split is used when it has one, otherwise a stable hash
of the row index holds out `val_fraction` of the rows; bad rows are skipped and counted.
"""

from __future__ import annotations

import datasets
import pytest

from hier_ae.data.sources import iter_documents, load_documents


def fake_hub(monkeypatch, splits: dict[str, list[dict]]):
    """Serve `splits` ({split: rows}) as the Hub dataset 'me/corpus'; record the calls."""
    calls = []

    def split_names(name, config=None, **kw):
        assert name == "me/corpus", name
        return list(splits)

    def load_dataset(name, config=None, split=None, streaming=False, **kw):
        calls.append((name, config, split, streaming))
        ds = datasets.Dataset.from_list(splits[split])
        return ds.to_iterable_dataset() if streaming else ds

    monkeypatch.setattr(datasets, "get_dataset_split_names", split_names)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


@pytest.mark.parametrize("streaming", [False, True])
def test_hub_dataset_with_its_own_validation_split(monkeypatch, streaming):
    calls = fake_hub(
        monkeypatch,
        {
            "train": [{"text": f"train doc {i}"} for i in range(5)],
            "validation": [{"text": "held out é"}, {"text": ""}],
        },
    )
    cfg = {"source": "me/corpus", "streaming": streaming, "cache_dir": None}
    train = load_documents(cfg, "train", show_progress=False)
    val = load_documents(cfg, "validation", show_progress=False)
    assert list(train) == [f"train doc {i}".encode() for i in range(5)]
    assert list(val) == ["held out é".encode()] and val.skipped == {"empty": 1}
    assert {c[2] for c in calls} == {"train", "validation"} and all(c[3] == streaming for c in calls)
    every = [d for _, d in iter_documents(cfg, "all")]
    assert every == list(train) + list(val)


def test_hub_dataset_without_validation_is_split_by_a_stable_hash(monkeypatch):
    rows = [{"text": f"row {i}"} for i in range(200)]
    fake_hub(monkeypatch, {"train": rows})
    cfg = {"source": "me/corpus", "val_fraction": 0.1, "cache_dir": None}
    train = load_documents(cfg, "train", show_progress=False)
    val = load_documents(cfg, "validation", show_progress=False)
    assert set(train).isdisjoint(val) and len(train) + len(val) == 200
    assert 5 <= len(val) <= 40  # about 10% of 200
    assert list(val) == list(load_documents(cfg, "validation", show_progress=False))  # stable


def test_bad_hub_rows_are_skipped_and_counted(monkeypatch):
    """Arrow unifies columns, so a row without the field reads as None ("not text"); a field that
    no row has skips every row, and the error says why."""
    fake_hub(monkeypatch, {"train": [{"text": "ok"}, {"body": "no text"}, {"text": ""}]})
    cfg = {"source": "me/corpus", "val_fraction": 0.0, "cache_dir": None}
    docs = load_documents(cfg, "train", show_progress=False)
    assert list(docs) == [b"ok"]
    assert docs.skipped == {"not text": 1, "empty": 1}
    with pytest.raises(ValueError, match="3 records skipped \\(3 record without 'missing'\\)"):
        load_documents({**cfg, "text_field": "missing"}, "train", show_progress=False)
