"""examples/train.py end to end: exact resume after SIGKILL, crash-safe checkpoints, two processes, data.

Each run uses a tiny 1-level model on a small slice of the built-in corpus, so a run is seconds.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import SUBPROCESS_ENV

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "examples" / "train.py"
ENV = SUBPROCESS_ENV


def mini_config(tmp_path: Path, stages: list[dict], level_options: dict | None = None, **training) -> Path:
    level = {
        "hidden_size": 32,
        "num_heads": 2,
        "intermediate_size": 64,
        "window": 16,
        "entropy_layers": 1,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "threshold": 2.0,
        "max_segment_len": 8,
        "codebook_size": 64,
        "dead_after_steps": 5,
        "pooling_heads": 2,
        "target_tokens_per_segment": 3.0,
        **(level_options or {}),
    }
    cfg = {
        "model": {
            "max_position_embeddings": 128,
            "levels": [level],
            "top_lm": {"hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "num_layers": 1},
        },
        "data": {
            "source": "default",
            "max_bytes": 150_000,
            "seq_len": 64,
            "batch_size": 4,
            "cache_dir": str(tmp_path / "data_cache"),
        },
        "training": {
            "seed": 0,
            "trackers": ["none"],
            "checkpoint_every": 4,
            "log_every": 5,
            "stages": stages,
            **training,
        },
        "evaluation": {"lines": 2, "val_batches": 1, "predict_docs": 2},
    }
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_train(config: Path, out: Path, *extra: str, timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(TRAIN), "--config", str(config), "--output-dir", str(out), *extra]
    proc = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def final_losses(out: Path) -> dict[tuple[str, int], float]:
    """The last value logged for every (stage, step): a resumed run overwrites what it re-ran."""
    losses = {}
    for line in (out / "losses.jsonl").read_text().splitlines():
        r = json.loads(line)
        losses[(r["stage"], r["step"])] = r["loss"]
    return losses


def kill_once_checkpointed(config: Path, out: Path, global_step: int, when=None) -> dict:
    """Start a run, SIGKILL it once a complete checkpoint at or past `global_step` exists (and whose
    progress satisfies `when`, if given); the newest complete checkpoint's progress."""
    cmd = [sys.executable, str(TRAIN), "--config", str(config), "--output-dir", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180

    def progress_of(folder: Path) -> dict:  # global step -1: not complete yet, or already rotated away
        try:
            return json.loads((folder / "progress.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {"global_step": -1}

    def step_of(folder: Path) -> int:
        return progress_of(folder)["global_step"]

    def ready(progress: dict) -> bool:
        return progress["global_step"] >= global_step and (when is None or when(progress))

    while time.time() < deadline and proc.poll() is None:
        if any(ready(progress_of(p)) for p in (out / "checkpoints").glob("step-*")):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    complete = [p for p in sorted((out / "checkpoints").glob("step-*")) if step_of(p) >= 0]
    return json.loads((complete[-1] / "progress.json").read_text())  # the one --resume reads


AE_STAGES = [
    {"kind": "entropy", "level": 0, "steps": 6, "lr": 3e-3, "warmup_steps": 2},
    {"kind": "autoencoder", "level": 0, "steps": 40, "lr": 3e-3, "warmup_steps": 2},
]


@pytest.mark.slow  # end to end: a subprocess
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    # with escape codes: their training draws (which segments read them) and their EMA codebook resume too
    config = mini_config(tmp_path, AE_STAGES, level_options={"escape_codebook_size": 16})
    ref = tmp_path / "ref"
    done = run_train(config, ref)
    reference = final_losses(ref)
    assert len(reference) == 46
    # the held-out lines through the lossless codec too: back exactly, whatever the codes alone decode to
    metrics = json.loads((ref / "metrics.json").read_text())
    assert metrics["codec_exact"] is True and metrics["codec_bytes"] > 0 < metrics["codec_bits_per_byte"]
    assert "lossless codec" in done.stdout and "exact round trip" in done.stdout
    # and with token corrections (evaluation.corrections, on by default): every line back from the codes
    assert metrics["corrected_exact_match"] == 1.0
    assert metrics["corrected_code_bits_per_byte"] >= metrics["code_bits_per_byte"]
    assert "with token corrections" in done.stdout

    # the same run, killed with SIGKILL once a checkpoint inside the autoencoder stage exists
    out = tmp_path / "killed"
    killed_at = kill_once_checkpointed(config, out, 14)
    assert not (out / "model").exists()
    assert killed_at["stage"] == "autoencoder-0" and killed_at["step"] < 40

    proc = run_train(config, out, "--resume")
    assert "resuming from" in proc.stdout
    resumed = final_losses(out)
    assert resumed.keys() == reference.keys()
    for key, value in reference.items():
        assert abs(resumed[key] - value) <= 1e-6, (key, resumed[key], value)
    # the final weights (EMA counters, restart pool, thresholds included) are the same too
    from safetensors.torch import load_file

    a, b = load_file(ref / "model" / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=0), k
    card = (out / "model" / "README.md").read_text()
    assert "trust_remote_code=True" in card and "exact_match" in card and "codec_bits_per_byte" in card


@pytest.mark.slow  # end to end: a subprocess
def test_resume_inside_a_top_lm_stage_on_code_rows_of_its_own(tmp_path):
    """A top_lm stage with `rows: codes` and its own row shape: its rows are the training documents'
    top codes (encoded when it starts), and a run killed inside it resumes exactly (the code rows are
    encoded again from the same levels, both streams' positions are put back)."""
    stages = [
        *AE_STAGES[:1],
        {"kind": "autoencoder", "level": 0, "steps": 8, "lr": 3e-3, "warmup_steps": 2},
        {"kind": "top_lm", "steps": 40, "lr": 3e-3, "warmup_steps": 2, "rows": "codes", "seq_len": 24}
        | {"encode_bytes": 20_000, "p_line": 0.5},
        {"kind": "predict", "steps": 4, "lr": 1e-3, "warmup_steps": 1, "batch_size": 2},
    ]
    config = mini_config(tmp_path, stages)
    ref = tmp_path / "ref"
    proc = run_train(config, ref)
    assert "[top_lm] rows of 24 codes, 4 per process per micro-batch" in proc.stdout
    assert "[predict] rows of 64 bytes, 2 per process per micro-batch" in proc.stdout
    assert re.search(
        r"code rows \([\d,]+ codes\) of \d+ training documents \(20,000 bytes\), encoded in", proc.stdout
    )
    assert re.search(
        r"code rows \([\d,]+ codes\) of \d+ training lines \(10,0\d\d bytes\), encoded in", proc.stdout
    )
    reference = final_losses(ref)
    assert len(reference) == 6 + 8 + 40 + 4
    card = (ref / "model" / "README.md").read_text()
    assert (
        "top_lm (40 steps, codes of 20,000 bytes, 50% lines, rows of 24)" in card
        and "predict (4 steps, 2 a batch)" in card
    )

    out = tmp_path / "killed"
    killed_at = kill_once_checkpointed(config, out, 6 + 8 + 4)
    assert killed_at["stage"] == "top_lm" and killed_at["step"] < 40
    run_train(config, out, "--resume")
    resumed = final_losses(out)
    assert resumed.keys() == reference.keys()
    for key, value in reference.items():
        assert abs(resumed[key] - value) <= 1e-6, (key, resumed[key], value)


@pytest.mark.slow  # end to end: a subprocess
def test_a_stage_sized_in_minutes_keeps_its_count_across_a_resume(tmp_path):
    """`minutes:` on a stage: the run sizes its step count on this machine (at most `steps`), writes it
    to its checkpoints, and a run killed after the last sizing resumes to the same count (the lr
    schedule ends where the uninterrupted run's would); the model card and the log say what it was
    sized to."""
    stages = [AE_STAGES[0], {**AE_STAGES[1], "steps": 100_000, "minutes": 0.15}]
    config = mini_config(tmp_path, stages)
    out = tmp_path / "killed"
    # sized at 5%, 25%, 50% and 75% of its 9 seconds: killed at the first checkpoint after the last
    killed_at = kill_once_checkpointed(config, out, 6, when=lambda p: p.get("stage_sizings") == 4)
    assert killed_at["stage"] == "autoencoder-0" and killed_at["stage_seconds"] >= 0.75 * 9
    sized = killed_at["stage_steps"]
    assert killed_at["sized_steps"] == {"autoencoder-0": sized} and killed_at["step"] < sized < 100_000
    proc = run_train(config, out, "--resume")
    assert "resuming from" in proc.stdout
    steps = sorted(step for stage, step in final_losses(out) if stage == "autoencoder-0")
    assert steps == list(range(1, sized + 1))
    assert f"autoencoder-0 ({sized} steps sized to 0.15 min)" in (out / "model" / "README.md").read_text()


@pytest.mark.slow  # end to end: a subprocess
def test_two_processes_ddp(tmp_path):
    """World size 2: bitwise-equal parameters and buffers, EMA counts of both ranks, only rank 0 writes."""
    stages = [
        {"kind": "entropy", "level": 0, "steps": 3, "lr": 3e-3, "warmup_steps": 1},
        {"kind": "autoencoder", "level": 0, "steps": 5, "lr": 3e-3, "warmup_steps": 1},
    ]
    config = mini_config(tmp_path, stages, checkpoint_every=100)
    out = tmp_path / "ddp"
    launch = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1", "--main_process_port", "29517",
        str(REPO / "tests" / "helpers" / "train_ddp_probe.py"),
        "--config", str(config), "--output-dir", str(out),
    ]  # fmt: skip
    env = {**ENV, "ACCELERATE_USE_CPU": "1"}
    proc = subprocess.run(launch, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es), DistributedType.MULTI_CPU, backend gloo" in proc.stdout

    probe = out / "probe"
    records = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in records] == [2, 2]
    # only rank 0 writes model folders (stages and the final one)
    assert records[1]["saves"] == []
    assert any(s.endswith("model") for s in records[0]["saves"])
    assert (out / "model" / "model.safetensors").exists() and (out / "model" / "README.md").exists()
    # EMA statistics: after the all-reduce each step's counts are the sum of both ranks' counts
    r0, r1 = records[0]["reduces"], records[1]["reduces"]
    assert len(r0) == len(r1) == 5
    for (b0, a0), (b1, a1) in zip(r0, r1):
        assert b0 > 0 and b1 > 0 and a0 == a1 == b0 + b1
    # every parameter and every shared buffer bitwise equal across ranks; the restart pools hold
    # each rank's own recent inputs by design (restarts draw from rank 0's and broadcast)
    s0, s1 = (torch.load(probe / f"rank{r}.pt") for r in (0, 1))
    per_rank = ("pool", "pool_ptr", "pool_fill")
    differing = [k for k in s0 if not torch.equal(s0[k], s1[k])]
    assert all(k.rsplit(".", 1)[-1] in per_rank for k in differing), differing
    assert any(k.endswith("quantizer.codebook") for k in s0)


def test_cli_overrides_and_local_data(tmp_path):
    """`--set` and shorthand flags override config keys; jsonl, parquet, text folders load as documents."""
    sys.path.insert(0, str(REPO / "examples"))
    import train

    from hier_ae.data.sources import load_documents

    config = mini_config(tmp_path, AE_STAGES)
    args = train.parse_args(
        ["--config", str(config), "--set", "data.batch_size=7", "--grad-accum", "3", "--data", "x.jsonl"]
    )
    cfg = train.load_config(args)
    assert cfg["data"]["batch_size"] == 7 and cfg["data"]["source"] == "x.jsonl"
    # a number indexes a list: the settings of one level
    args = train.parse_args(["--config", str(config), "--set", "model.levels.0.codebook_size=64"])
    assert train.load_config(args)["model"]["levels"][0]["codebook_size"] == 64
    with pytest.raises(ValueError, match="not an index"):
        train.load_config(train.parse_args(["--config", str(config), "--set", "model.levels.3.window=8"]))
    assert cfg["training"]["gradient_accumulation_steps"] == 3

    docs = [f"document {i}: " + "word " * (i + 1) for i in range(40)]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, d in enumerate(docs):
        (folder / f"{i:02d}.txt").write_text(d)
    import datasets

    parquet = tmp_path / "d.parquet"
    datasets.Dataset.from_dict({"body": docs}).to_parquet(str(parquet))
    cache = str(tmp_path / "cache")
    for source, extra in ((jsonl, {}), (folder, {}), (parquet, {"text_field": "body"})):
        data_cfg = {"source": str(source), "val_fraction": 0.2, "cache_dir": cache, **extra}
        train_docs = load_documents(data_cfg, "train", show_progress=False)
        val_docs = load_documents(data_cfg, "validation", show_progress=False)
        assert sorted(train_docs + val_docs) == sorted(d.encode() for d in docs), source
        assert train_docs and val_docs and not set(train_docs) & set(val_docs)
        # the second call reads the cache
        assert load_documents(data_cfg, "train", show_progress=False) == train_docs
    with pytest.raises(ValueError, match="text_field"):
        load_documents({"source": str(parquet), "cache_dir": None}, "train", show_progress=False)
