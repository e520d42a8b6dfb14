"""examples/encode_dataset.py: code shards of a corpus, resume after SIGKILL, two processes, --verify,
bad inputs, and training the top LM on the shards (examples/train.py `data.code_shards`).

Every run encodes ~120 grammar sentences (plus two long documents that get chunked) with the tiny
trained 1-level model of conftest.py.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import SUBPROCESS_ENV
from helpers.grammar import sentences
from helpers.ties import MARGIN, NearTieWarning, code_gap, encode_with_pooled

REPO = Path(__file__).resolve().parents[1]
ENCODE = REPO / "examples" / "encode_dataset.py"
ENV = SUBPROCESS_ENV
sys.path.insert(0, str(REPO / "examples"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    docs = sentences(120, seed=7)
    docs.insert(5, " ".join(sentences(6, seed=8)))  # > 128 framed ids: chunked
    docs.insert(60, " ".join(sentences(5, seed=9)))
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def encode_args(model: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model", str(model), "--data", str(corpus), "--out", str(out), "--shard-size", "4",
        "--batch-size", "4", "--max-ids", "128", "--no-progress", *extra,
    ]  # fmt: skip


def folder_bytes(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@contextmanager
def one_thread():
    """Run in-process encodes with one thread, as the subprocesses run (ENV: OMP_NUM_THREADS=1).

    Shards are compared byte for byte across processes: that holds for the same shapes, kernels
    and thread count on one machine; another thread count may block a matmul differently and move
    a code that sits within float32 rounding of a tie.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def shard_row_near_tie(model, row: dict, enc, pooled, lengths: list[int]) -> str | None:
    """None if a shard row holds exactly `enc`'s segments and codes; a report if they first differ
    at a near-tie (helpers/ties.py); fails on a difference with a clear margin."""
    if row["lengths_0"] == lengths and row["codes_0"] == enc.codes[0][0].tolist():
        return None
    level = model.levels[0]
    if row["lengths_0"] != lengths:  # a boundary moved: the decision after token t - 1
        ends_a, ends_b = torch.tensor(row["lengths_0"]).cumsum(0), torch.tensor(lengths).cumsum(0)
        n = min(len(ends_a), len(ends_b))
        k = int((ends_a[:n] != ends_b[:n]).nonzero()[0]) if bool((ends_a[:n] != ends_b[:n]).any()) else n - 1
        t = int(min(ends_a[k], ends_b[k]))
        margin = abs(float(enc.entropy[0][0, t - 1]) - float(level.boundary_value))
        where = f"shard row: boundary at {t} differs, |H - theta| = {margin:.2e}"
        assert margin < MARGIN, where
        return where
    s = next(i for i, (a, b) in enumerate(zip(row["codes_0"], enc.codes[0][0].tolist())) if a != b)
    gap = code_gap(pooled[0][0, s], level.quantizer.codebook)
    where = f"shard row: code of segment {s} differs, gap {gap:.2e}"
    assert gap < MARGIN, where
    return where


@pytest.fixture(scope="module")
def reference(trained_1level, corpus, tmp_path_factory):
    """One uninterrupted single-process run with --verify (in-process)."""
    import encode_dataset

    _, folder = trained_1level
    out = tmp_path_factory.mktemp("codes") / "ref"
    t0 = time.perf_counter()
    with one_thread():
        manifest = encode_dataset.main(encode_args(folder, corpus, out, "--verify"))
    print(f"[reference] encode + verify: {time.perf_counter() - t0:.1f}s")
    return out, manifest


def test_shards_manifest_and_load_dataset(reference, trained_1level, corpus):
    import datasets

    from hier_ae.codes.shards import code_rows, model_fingerprint, segment_spans, shard_files

    out, manifest = reference
    model, folder = trained_1level
    assert manifest["model"] == {
        "path": str(folder.resolve()),
        **model_fingerprint(folder),
        "num_levels": 1,
        "num_codes": [256],
    }
    assert manifest["data"]["source"] == str(corpus) and manifest["data"]["shard_size"] == 4
    assert manifest["documents"] == 122 and len(manifest["shards"]) == 31
    assert manifest["chunked_documents"] == 2 and manifest["rows"] > 122
    docs = [json.loads(line)["text"].encode() for line in corpus.read_text().splitlines()]
    assert manifest["bytes"] == sum(map(len, docs))
    assert manifest["code_bits_per_byte"] == pytest.approx(
        manifest["codes_per_level"][0] * 8 / manifest["bytes"]
    )

    ds = datasets.load_dataset("parquet", data_files=shard_files(out), split="train")
    assert ds.num_rows == manifest["rows"]
    rows = ds.to_list()
    assert [r["id"] for r in rows if r["part"] == 0] == list(range(122))
    # the codes are what encode gives for each row; the lengths cover the row's ids
    row = next(r for r in rows if r["id"] == 5 and r["part"] == 1)
    from hier_ae.data.batching import frame_document

    ids = frame_document(docs[5])[128:256]
    assert sum(row["lengths_0"]) == len(ids)
    # the script encoded this row loaded from the folder inside a batch of 4 (other shapes, other
    # memory: float32 rounding may differ), so equal up to a decision at a near-tie
    enc, pooled = encode_with_pooled(model, ids[None], None)
    lengths = torch.bincount(enc.segment_ids[0][0]).tolist()
    report = shard_row_near_tie(model, row, enc, pooled, lengths)
    if report:
        warnings.warn(NearTieWarning(report), stacklevel=1)
    assert row["num_bytes"] == len(ids) - int(row["last_part"])
    spans = segment_spans([row["lengths_0"]], starts_doc=False, ends_doc=row["last_part"])[0]
    assert (
        spans[0][0] == 0 and spans[-1][1] == len(ids) and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    )
    # the framed top stream of every row is what the model builds when it encodes the bytes
    framed, K = code_rows(out)
    assert K == 256 and len(framed) == len(rows)
    assert framed[0].tolist() == [K + 2, *rows[0]["codes_0"], K + 1]


def test_verify_reports_exact_match_and_catches_bad_codes(reference, trained_1level, corpus, tmp_path):
    import encode_dataset

    out, manifest = reference
    v = manifest["verify"]
    assert v["documents"] == 122 and v["exact_match"] >= 0.8, v
    # a shard whose codes are wrong (same run metadata) must show up as non-exact documents
    bad = tmp_path / "bad"
    small = ("--set", "data.max_documents=12")
    good = encode_dataset.main(encode_args(trained_1level[1], corpus, bad, *small, "--verify"))["verify"]
    assert good["documents"] == 12
    table = pq.read_table(bad / "shard-00000.parquet")
    codes = [[(c + 1) % 256 for c in row] for row in table.column("codes_0").to_pylist()]
    field = table.schema.field("codes_0")
    table = table.set_column(table.schema.get_field_index("codes_0"), field, pa.array(codes, field.type))
    pq.write_table(table, bad / "shard-00000.parquet")  # keeps the schema metadata: the run key
    v_bad = encode_dataset.main(encode_args(trained_1level[1], corpus, bad, *small, "--verify"))["verify"]
    assert v_bad["exact_documents"] <= good["exact_documents"] - 3, (v_bad, good)


@pytest.mark.slow  # end to end: a subprocess
def test_rerun_after_sigkill_equals_uninterrupted_run(reference, trained_1level, corpus, tmp_path):
    import encode_dataset

    ref, _ = reference
    out = tmp_path / "killed"
    cmd = [sys.executable, str(ENCODE), *encode_args(trained_1level[1], corpus, out)]
    proc = subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (out / "shard-00002.parquet").exists():
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, (
        "the run finished before it could be killed: " + err.decode()[-2000:]
    )
    assert not (out / "manifest.json").exists()
    finished = sorted(p.name for p in out.glob("shard-*.parquet"))
    assert 3 <= len(finished) < 31 and not (out / "verify").exists()
    for name in finished:  # what a killed run leaves is complete shards (and maybe one .tmp file)
        assert pq.read_table(out / name).num_rows > 0

    t0 = time.perf_counter()
    with one_thread():
        encode_dataset.main(encode_args(trained_1level[1], corpus, out))
    print(f"[resume] {time.perf_counter() - t0:.1f}s")
    # shards and manifest byte for byte (the reference also holds its --verify results)
    expected = {k: v for k, v in folder_bytes(ref).items() if not k.startswith("verify")}
    assert folder_bytes(out) == expected


@pytest.mark.slow  # end to end: a subprocess
def test_two_processes_write_the_same_shards(reference, trained_1level, corpus, tmp_path):
    ref, _ = reference
    out = tmp_path / "ddp"
    launch = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1", "--main_process_port", "29531",
        str(ENCODE), *encode_args(trained_1level[1], corpus, out, "--verify"),
    ]  # fmt: skip
    proc = subprocess.run(
        launch, env={**ENV, "ACCELERATE_USE_CPU": "1"}, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "process 0 of 2" in proc.stdout and "process 1 of 2" in proc.stdout
    # rank r encoded the shards k = r mod 2, and the result is the single-process one, byte for byte
    assert "process 0: encoded 16 shard(s)" in proc.stdout and "process 1: encoded 15 shard(s)" in proc.stdout
    assert folder_bytes(out) == folder_bytes(ref)


def test_bad_inputs_raise_and_overwrite_nothing(reference, trained_1level, corpus, tmp_path):
    import encode_dataset

    ref, _ = reference
    _, folder = trained_1level
    before = folder_bytes(ref)
    # not a model folder
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        encode_dataset.main(encode_args(tmp_path / "empty", corpus, tmp_path / "o1"))
    other_type = tmp_path / "bert"
    other_type.mkdir()
    (other_type / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type='bert'"):
        encode_dataset.main(encode_args(other_type, corpus, tmp_path / "o2"))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        encode_dataset.main(encode_args(tmp_path / "missing", corpus, tmp_path / "o3"))
    # an output folder with another model's shards (a different config), with or without a manifest
    other = tmp_path / "other_model"
    shutil.copytree(folder, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["initializer_range"] = cfg.get("initializer_range", 0.02) * 2
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="another model"):
        encode_dataset.main(encode_args(other, corpus, ref))
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(ref / "shard-00003.parquet", partial)
    with pytest.raises(ValueError, match="not a shard of this run"):
        encode_dataset.main(encode_args(other, corpus, partial))
    assert [p.name for p in partial.iterdir()] == ["shard-00003.parquet"]
    # the same model with other data options into the same folder
    with pytest.raises(ValueError, match="other data options"):
        encode_dataset.main(encode_args(folder, corpus, ref, "--set", "data.max_documents=10"))
    assert folder_bytes(ref) == before
    # an unreadable data file: a clear error, nothing written
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ValueError, match="not a readable parquet file"):
        encode_dataset.main(encode_args(folder, broken, tmp_path / "o4"))
    assert not list((tmp_path / "o4").glob("*"))
    with pytest.raises(FileNotFoundError, match="not a local file or folder"):
        encode_dataset.main(encode_args(folder, tmp_path / "nope.jsonl", tmp_path / "o5"))


def test_forward_from_stored_codes_equals_encoding_bytes(reference, trained_1level, corpus):
    """The top-LM loss of code rows (start_level) equals the one of the same documents' bytes."""
    from hier_ae.codes.shards import code_rows, code_rows_from_documents, shard_files
    from hier_ae.data.batching import frame_document, pad_rows

    out, _ = reference
    model, _ = trained_1level
    docs = [json.loads(line)["text"].encode() for line in corpus.read_text().splitlines()][10:18]
    stored, _ = code_rows(out)
    ids = [i for f in shard_files(out) for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]
    rows = [r for r, i in zip(stored, ids) if 10 <= i < 18]  # one row each (document 5 has several)
    assert [r.tolist() for r in rows] == [r.tolist() for r in code_rows_from_documents(model, docs, 0)]
    ids, mask = pad_rows([frame_document(d) for d in docs])
    codes, cmask = pad_rows(rows)
    with torch.no_grad():
        from_bytes = model(input_ids=ids, attention_mask=mask, reconstruct_levels=()).top_lm_loss
        from_codes = model(input_ids=codes, attention_mask=cmask, start_level=1).top_lm_loss
    assert from_codes.item() == pytest.approx(from_bytes.item(), abs=1e-5)
    with pytest.raises(ValueError, match="start_level"):
        model(input_ids=codes, attention_mask=cmask, start_level=2)


def test_train_top_lm_on_code_shards(reference, trained_1level, corpus, tmp_path):
    """examples/train.py with data.code_shards: the top LM trains on stored codes, no byte re-encoding."""
    import train
    import yaml

    out, _ = reference
    cfg = {
        "model": {"levels": [{}]},  # not used: the model is the one that made the shards
        "data": {
            "source": str(corpus),
            "code_shards": str(out),
            "seq_len": 24,
            "batch_size": 8,
            "cache_dir": None,
        },
        "training": {
            "seed": 0,
            "trackers": ["none"],
            "checkpoint_every": 1000,
            "stages": [{"kind": "top_lm", "steps": 30, "lr": 3e-3, "warmup_steps": 2}],
        },
        "evaluation": {"lines": 2, "val_batches": 1, "predict_docs": 2},
    }
    path = tmp_path / "shards.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    train.main(["--config", str(path), "--output-dir", str(run)])
    losses = [json.loads(line)["loss"] for line in (run / "losses.jsonl").read_text().splitlines()]
    assert len(losses) == 30 and all(map(math.isfinite, losses))
    # the top LM trained (its weights moved) and nothing else did: the levels that made the codes
    # are the shards' model, bit for bit (the fixture's top LM is already trained, so its loss on
    # these few steps need not fall; what moved is the test)
    from safetensors.torch import load_file

    def weights(folder):  # the fixture folder was saved as HierAEForCausalLM ("model." prefix)
        return {k.removeprefix("model."): v for k, v in load_file(folder / "model.safetensors").items()}

    before, after = weights(trained_1level[1]), weights(run / "model")
    assert before.keys() == after.keys()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("top_lm.") for k in moved), sorted(moved)[:5]
    # a stage that needs bytes below the stored codes is refused with a clear message
    cfg["training"]["stages"] = [{"kind": "autoencoder", "level": 0, "steps": 2}]
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="cannot train on stored codes of level 0"):
        train.main(["--config", str(path), "--output-dir", str(tmp_path / "run2")])


def test_index_arithmetic_of_the_docstrings():
    from hier_ae.codes.shards import (
        frame_chunks,
        frame_codes,
        length_batches,
        segment_lengths,
        segment_spans,
        shard_batches,
    )

    assert [c.tolist() for c in frame_chunks(b"abcde", 4)] == [[2, 100, 101, 102], [103, 104, 1]]
    assert frame_codes([7, 3, 9], 10).tolist() == [12, 7, 3, 9, 11]
    assert frame_codes([7], 10, bos=False, eos=False).tolist() == [7]
    assert segment_lengths(torch.tensor([[0, 0, 0, 1, 1, 1, 1, -1]]), 2).tolist() == [[3, 4]]
    assert segment_spans([[3, 4], [4]], True, True) == [[(0, 3), (3, 7)], [(0, 7)]]
    assert segment_spans([[3, 4], [1, 1]], False, False) == [[(0, 3), (3, 7)], [(0, 3), (3, 7)]]
    assert length_batches([3, 9, 4, 8], 4, 16) == [[1], [3, 2], [0]]
    assert length_batches([5] * 5, 2, 100) == [[0, 1], [2, 3], [4]]
    docs = [(None, bytes([i])) for i in range(5)]
    got = [(k, [d[0] for d in shard]) for k, shard in shard_batches(docs, 2)]
    assert got == [(0, [0, 1]), (1, [2, 3]), (2, [4])]
    with pytest.raises(ValueError, match="shard_size"):
        next(shard_batches(docs, 0))


def test_documents_stream_lazily(tmp_path, monkeypatch):
    """iter_documents reads a folder one file at a time (nothing is collected up front)."""
    from hier_ae.data.sources import iter_documents

    for i in range(50):
        (tmp_path / f"{i:02d}.txt").write_text(f"document {i}")
    reads = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self.name) or real(self))
    stream = iter_documents({"source": str(tmp_path)}, "all")
    assert next(stream) == ("00.txt", b"document 0") and reads == ["00.txt"]
    assert next(stream)[0] == "01.txt" and len(reads) == 2
    assert len(list(stream)) == 48
    train = [k for k, _ in iter_documents({"source": str(tmp_path), "val_fraction": 0.3}, "train")]
    val = [k for k, _ in iter_documents({"source": str(tmp_path), "val_fraction": 0.3}, "validation")]
    assert sorted(train + val) == [f"{i:02d}.txt" for i in range(50)] and train and val


def test_bad_records_are_skipped_counted_and_recorded(trained_1level, tmp_path, capsys):
    """A corrupt JSON line, a record that is not text and an empty one are left out and counted,
    in the log and in the manifest; the good documents are encoded as usual."""
    import encode_dataset

    path = tmp_path / "mixed.jsonl"
    good = sentences(3, seed=11)
    lines = [json.dumps({"text": good[0]}), "{not json", json.dumps({"text": 7}), json.dumps({"text": ""})]
    lines += [json.dumps({"text": t}) for t in good[1:]]
    path.write_text("\n".join(lines) + "\n")
    args = encode_args(trained_1level[1], path, tmp_path / "out", "--split", "all")
    manifest = encode_dataset.main(args)
    assert manifest["documents"] == 3
    assert manifest["skipped_records"] == {"corrupt JSON line": 1, "empty": 1, "not text": 1}
    assert "3 records skipped (1 corrupt JSON line, 1 empty, 1 not text)" in capsys.readouterr().out
