"""Training that meets bad data, NaN losses and failing disks: it counts, stops or skips, and loses nothing.

Tried here, with what each gets:

- jsonl: corrupt line, non-object line, record without field -> skipped, counted in `.skipped`, logged
- record text None / number / dict / list                    -> skipped, counted as "not text"
- record text "" / str with a lone surrogate                 -> skipped, counted ("empty", "not UTF-8 ...")
- jsonl where no record has `text_field`                     -> ValueError naming the field
- every record bad                                           -> ValueError with the skipped counts
- data.max_bytes / max_documents that stop before the end    -> `.capped` says so, logged, printed by train.py
- NaN loss term, on_nonfinite="raise"                        -> FloatingPointError: stage, step, term
- NaN loss term, on_nonfinite="skip"                         -> step dropped: weights, buffers, optimizer same
- Inf gradient with a finite loss, "skip"                    -> step dropped, named "gradient norm"
- N non-finite steps in a row, "skip"                        -> FloatingPointError after max_consecutive_skips
- on_nonfinite="ignore", max_consecutive_skips=0             -> ValueError naming the allowed values
- NaN weights at checkpoint time                             -> FloatingPointError; nothing written
- disk full (ENOSPC) inside `save_state`                     -> OSError; partial folder gone; previous intact
- permission denied (EACCES) writing the rank state          -> PermissionError; previous intact and loadable
- `training.on_nonfinite` in a train.py config               -> reaches `train_stage`; skipped records printed
- NaN step in an examples/train.py run, "skip"               -> losses.jsonl marks it; the run completes
- NaN on one of two DDP processes, "skip"                    -> both drop the step; weights stay bitwise equal

Tests run as root in CI, where `chmod` does not stop a write: failures are simulated with mocks.
"""

from __future__ import annotations

import errno
import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_config

from hier_ae import HierAEModel
from hier_ae.data.batching import DocumentCropper
from hier_ae.data.sources import Documents, as_document, load_documents
from hier_ae.training.checkpointing import latest_checkpoint, read_progress, save_checkpoint
from hier_ae.training.stages import Stage, train_stage

LINES = [f"line {i}: the cat sat on the mat number {i}." for i in range(60)]


# ---- data ---------------------------------------------------------------------------------------
def test_bad_records_are_skipped_and_counted(tmp_path, caplog):
    good = [{"text": t} for t in LINES[:20]]
    bad_lines = [
        '{"text": "unterminated',  # corrupt JSON line
        "[1, 2, 3]",  # JSON, but not an object
        '{"body": "no text field"}',
        '{"text": null}',
        '{"text": 42}',
        '{"text": {"nested": 1}}',
        '{"text": ["a", "b"]}',
        '{"text": ""}',
        '{"text": "\\ud800 lone surrogate"}',
    ]
    lines = [json.dumps(r).encode() for r in good[:10]] + [ln.encode() for ln in bad_lines]
    lines += [b'{"text": "\xff\xfe not UTF-8"}', b"", *(json.dumps(r).encode() for r in good[10:])]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines))
    cfg = {"source": str(path), "val_fraction": 0.0, "cache_dir": str(tmp_path / "cache")}
    with caplog.at_level(logging.WARNING, logger="hier_ae.data.sources"):
        docs = load_documents(cfg, "train", show_progress=False)
    assert isinstance(docs, Documents)
    assert list(docs) == [t.encode() for t in LINES[:20]]
    assert docs.skipped == {
        "corrupt JSON line": 2,
        "JSON line that is not an object": 1,
        "record without 'text'": 1,
        "not text": 4,
        "empty": 1,
        "not UTF-8 encodable": 1,
    }
    assert docs.num_skipped == len(bad_lines) + 1
    assert "10 records skipped" in caplog.text
    # the cached split keeps the counts
    again = load_documents(cfg, "train", show_progress=False)
    assert list(again) == list(docs) and again.skipped == docs.skipped


def test_a_cap_that_cuts_the_source_short_is_reported(tmp_path, caplog):
    """A corpus in a sorted order (one language after another) loses its tail to `max_bytes`: the
    run must say so, also from the cache; a cap the source does not reach says nothing."""
    path = tmp_path / "langs.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"document {i:02d}"}) for i in range(10)))  # 11 bytes each
    cfg = {"source": str(path), "val_fraction": 0.0, "cache_dir": str(tmp_path / "cache"), "max_bytes": 30}
    with caplog.at_level(logging.WARNING, logger="hier_ae.data.sources"):
        docs = load_documents(cfg, "train", show_progress=False)
    assert len(docs) == 3  # 33 bytes >= 30
    assert docs.capped.startswith("data.max_bytes=30 stopped the reading after 3 documents (33 bytes)")
    assert docs.capped in caplog.text
    assert load_documents(cfg, "train", show_progress=False).capped == docs.capped  # from the cache
    by_count = load_documents(
        {**cfg, "max_bytes": None, "max_documents": 4, "cache_dir": None}, "train", False
    )
    assert len(by_count) == 4 and by_count.capped.startswith("data.max_documents=4 stopped")
    for whole in ({"max_bytes": 110}, {"max_bytes": 10_000}, {"max_documents": 10}, {}):  # all 10 read
        docs = load_documents({**cfg, "max_bytes": None, **whole, "cache_dir": None}, "train", False)
        assert len(docs) == 10 and docs.capped == "", whole


def test_as_document_never_guesses():
    assert as_document("é") == b"\xc3\xa9"
    assert as_document(b"\x00\xff") == b"\x00\xff"  # NUL and non-UTF-8 bytes are valid documents
    for value in (None, 3, 2.5, {"a": 1}, [1, 2], True):
        assert as_document(value).reason == "not text", value  # bytes(3) would be three NUL bytes


def test_unusable_sources_raise_value_error(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"body": t}) for t in LINES[:5]))
    with pytest.raises(ValueError, match="text_field='text' is not a key of any record"):
        load_documents({"source": str(path), "cache_dir": None}, "train", show_progress=False)
    path.write_text("\n".join(['{"text": ""}', "{broken", '{"text": null}']))
    with pytest.raises(ValueError, match=r"gave no train documents.*3 records skipped"):
        load_documents({"source": str(path), "cache_dir": None, "val_fraction": 0.0}, "train", False)


# ---- non-finite losses --------------------------------------------------------------------------
def stream():
    return DocumentCropper([t.encode() for t in LINES], batch_size=4, seq_len=32, seed=0, p_doc_start=1.0)


def fresh_model():
    torch.manual_seed(0)
    return HierAEModel(tiny_config(1))


def poison(model, bad_calls, term="reconstruct_loss"):
    """Make `term` of the forward calls numbered in `bad_calls` NaN (level 0); record acc counts."""
    orig, calls, seen = model.forward, {"n": 0}, []

    def forward(*args, **kwargs):
        out = orig(*args, **kwargs)
        seen.append(float(model.levels[0].quantizer.acc_count.sum()))
        if calls["n"] in bad_calls:
            value = getattr(out, term).clone()
            value[0] = float("nan")
            setattr(out, term, value)
        calls["n"] += 1
        return out

    model.forward = forward
    return seen


AE = Stage("autoencoder", 0, steps=5, lr=3e-3, warmup_steps=1)


def test_nan_loss_raises_naming_stage_step_and_term():
    model = fresh_model()
    poison(model, {2})
    with pytest.raises(
        FloatingPointError, match=r"stage autoencoder-0 step 2: .*reconstruct_loss\[level 0\]=nan"
    ):
        train_stage(model, AE, stream())


def test_skip_drops_the_step_and_leaves_no_trace():
    model = fresh_model()
    seen = poison(model, {2})
    states, infos, opts = {}, {}, []

    def on_step(step, info):
        states[step] = {k: v.clone() for k, v in model.state_dict().items()}
        infos[step] = info
        opts.append(int(opts_ref[0].state[next(iter(opts_ref[0].state))]["step"]))

    opts_ref = []
    history = train_stage(
        model, AE, stream(), on_nonfinite="skip", on_step=on_step, on_prepared=lambda n, o: opts_ref.append(o)
    )
    assert len(history) == 4 and all(map(torch.isfinite, torch.tensor(history)))
    assert infos[3]["skipped"] and "reconstruct_loss[level 0]=nan" in " ".join(infos[3]["skipped"])
    assert infos[3]["loss"] is None
    assert seen[2] > 0, "the dropped step's forward gathered EMA statistics (they must be discarded)"
    for k in states[2]:  # every weight and buffer (EMA accumulators, pool, thresholds) as before
        assert torch.equal(states[2][k], states[3][k]), k
    assert opts == [1, 2, 2, 3, 4]  # the optimizer did not step on the dropped step
    assert not any(
        torch.equal(states[3][k], states[4][k]) for k in states[3] if "encoder" in k and "weight" in k
    )


def test_inf_gradient_is_skipped_as_gradient_norm():
    model = fresh_model()
    hook = model.levels[0].decoder.head.weight.register_hook(lambda g: g * float("inf"))
    skipped = []
    with pytest.raises(FloatingPointError, match="2 optimizer steps in a row dropped"):
        train_stage(
            model,
            AE,
            stream(),
            on_nonfinite="skip",
            max_consecutive_skips=2,
            on_step=lambda s, info: skipped.append(info.get("skipped")),
        )
    hook.remove()
    assert len(skipped) == 1 and "gradient norm=" in skipped[0][0]
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"on_nonfinite": "ignore"}, r"on_nonfinite='ignore'.*'raise', 'skip'"),
        ({"max_consecutive_skips": 0}, ">= 1"),
    ],
)
def test_bad_policy_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_stage(fresh_model(), AE, stream(), **kwargs)


# ---- checkpoints --------------------------------------------------------------------------------
@pytest.fixture
def acc_and_first(tmp_path):
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model, opt = acc.prepare(model, opt)
    root = tmp_path / "checkpoints"
    first = save_checkpoint(acc, root, 1, {"stage_index": 0, "stage": "s", "step": 1}, rank_state={"x": 1})
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    return acc, model, root, first, before


def assert_intact(acc, root, first, before):
    assert latest_checkpoint(root) == first
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert read_progress(first)["step"] == 1
    assert not list(root.glob(".tmp-*")), "the partial folder is removed"
    acc.load_state(str(first))


def test_kill_during_checkpoint_write_keeps_previous(acc_and_first, monkeypatch):
    acc, _, root, first, before = acc_and_first

    def dying_save_state(output_dir, **kw):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(acc, "save_state", dying_save_state)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(acc, root, 2, {"stage_index": 0, "stage": "s", "step": 2})
    assert (root / ".tmp-step-0000002").exists()  # a kill leaves the torn write behind; it is ignored
    assert latest_checkpoint(root) == first
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert read_progress(first)["step"] == 1
    monkeypatch.undo()
    second = save_checkpoint(acc, root, 2, {"stage_index": 0, "stage": "s", "step": 2})
    assert latest_checkpoint(root) == second and not (root / ".tmp-step-0000002").exists()
    acc.load_state(str(second))


def test_disk_full_while_writing_keeps_previous(acc_and_first, monkeypatch):
    acc, _, root, first, before = acc_and_first

    def full_disk(output_dir, **kw):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(acc, "save_state", full_disk)
    with pytest.raises(OSError, match=r"No space left.*previous checkpoint .*step-0000001.* is intact") as e:
        save_checkpoint(acc, root, 2, {"stage_index": 0, "stage": "s", "step": 2})
    assert e.value.errno == errno.ENOSPC
    assert_intact(acc, root, first, before)


def test_permission_denied_while_writing_keeps_previous(acc_and_first, monkeypatch):
    acc, _, root, first, before = acc_and_first
    import hier_ae.training.checkpointing as ckpt

    def denied(*a, **kw):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(ckpt.torch, "save", denied)
    with pytest.raises(PermissionError, match="Permission denied"):
        save_checkpoint(acc, root, 2, {"stage_index": 0, "stage": "s", "step": 2}, rank_state={"x": 2})
    monkeypatch.undo()
    assert_intact(acc, root, first, before)


def test_nan_weights_are_never_checkpointed(acc_and_first):
    acc, model, root, first, before = acc_and_first
    with torch.no_grad():
        acc.unwrap_model(model).weight[0, 0] = float("nan")
    with pytest.raises(
        FloatingPointError, match=r"refusing to write checkpoint .*non-finite values in weight"
    ):
        save_checkpoint(acc, root, 2, {"stage_index": 0, "stage": "s", "step": 2})
    assert not (root / "step-0000002").exists()
    assert_intact(acc, root, first, before)


# ---- the training script ------------------------------------------------------------------------
def test_train_script_plumbs_the_policy_and_prints_skipped_records(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(REPO / "examples"))
    import train
    from test_train import mini_config

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join([json.dumps({"text": t}) for t in LINES] + ["{oops", '{"text": null}']))
    config = mini_config(tmp_path, [{"kind": "entropy", "level": 0, "steps": 2}], on_nonfinite="skip")
    seen = {}

    class Stop(Exception):
        pass

    def fake_train_stage(model, stage, batches, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(train, "train_stage", fake_train_stage)
    argv = ["--config", str(config), "--output-dir", str(tmp_path / "out"), "--data", str(data)]
    with pytest.raises(Stop):
        train.main([*argv, "--set", "training.max_consecutive_skips=3", "--set", "data.val_fraction=0.1"])
    assert seen["on_nonfinite"] == "skip" and seen["max_consecutive_skips"] == 3
    out = capsys.readouterr().out
    assert "1 corrupt JSON line" in out and "1 not text" in out and "records skipped" in out
    assert "WARNING" not in out  # the whole file was read
    with pytest.raises(Stop):  # a cap that leaves most of the file unread is printed, not silent
        train.main([*argv, "--set", "data.max_bytes=200", "--set", "data.val_fraction=0.1"])
    assert "data: train: WARNING: data.max_bytes=200 stopped the reading after" in capsys.readouterr().out


@pytest.mark.slow  # end to end: a subprocess
def test_ddp_skip_is_collective(tmp_path):
    """World size 2, NaN on rank 1 only: both ranks drop the same steps and stay bitwise equal."""
    import os
    import subprocess

    launch = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1", "--main_process_port", "29519",
        str(REPO / "tests" / "helpers" / "nonfinite_ddp_probe.py"),
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(launch, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK [(1, 3), (2, 2)]" in proc.stdout, (
        proc.stdout[-3000:] + proc.stderr[-3000:]
    )


def test_train_script_skips_a_nan_step_end_to_end(tmp_path, monkeypatch):
    """examples/train.py with on_nonfinite=skip: the NaN step is logged as dropped, the run completes."""
    sys.path.insert(0, str(REPO / "examples"))
    import train
    from test_train import mini_config

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in LINES))
    stages = [
        {"kind": "entropy", "level": 0, "steps": 2, "warmup_steps": 1},
        {"kind": "autoencoder", "level": 0, "steps": 4, "warmup_steps": 1},
    ]
    config = mini_config(tmp_path, stages, on_nonfinite="skip", checkpoint_every=2)
    original, calls = HierAEModel.forward, {"n": 0}

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 4:  # the 2nd optimizer step of the autoencoder stage
                value = out.reconstruct_loss.clone()
                value[0] = float("nan")
                out.reconstruct_loss = value
        return out

    monkeypatch.setattr(HierAEModel, "forward", forward)
    out_dir = tmp_path / "out"
    train.main(["--config", str(config), "--output-dir", str(out_dir), "--data", str(data)])
    records = [json.loads(line) for line in (out_dir / "losses.jsonl").read_text().splitlines()]
    dropped = [r for r in records if r.get("skipped")]
    assert [(r["stage"], r["step"], r["loss"]) for r in dropped] == [("autoencoder-0", 2, None)]
    assert "reconstruct_loss[level 0]=nan" in " ".join(dropped[0]["skipped"])
    assert len(records) == 6 and (out_dir / "model" / "model.safetensors").exists()
    assert latest_checkpoint(out_dir / "checkpoints").name == "step-0000006"
