"""lm-eval (0.4) on the shipped task YAMLs, cross-checked against the project's own computation.

The README's `lm_eval` command is run as written (only the model folder is swapped for the trained
1-level fixture, and --output_path / --log_samples are added), from the repository root: the YAMLs'
data paths are relative to it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from hier_ae.evaluation.reports import bits_per_byte, predict_loglikelihoods, rolling_windows

REPO = Path(__file__).resolve().parents[1]
TASK_DIR = REPO / "examples" / "lm_eval_tasks"
sys.path.insert(0, str(TASK_DIR))

import make_data  # noqa: E402


def readme_lm_eval_command() -> list[str]:
    """The `lm_eval` command of the README's "Evaluation" section, as argv (env assignments dropped)."""
    text = (REPO / "README.md").read_text()
    section = re.search(r"^## Evaluation\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert section, "README.md has no '## Evaluation' section"
    blocks = re.findall(r"```bash\n(.*?)```", section.group(1), flags=re.S)
    cmds = [b for b in blocks if "lm_eval --model" in b]
    assert len(cmds) == 1, f"expected one lm_eval command in the Evaluation section, found {len(cmds)}"
    argv = shlex.split(cmds[0].replace("\\\n", " "))
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
        argv.pop(0)
    assert argv[0] == "lm_eval", argv
    return argv


def arg(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def task_configs() -> dict[str, dict]:
    return {c["task"]: c for c in (yaml.safe_load(p.read_text()) for p in sorted(TASK_DIR.glob("*.yaml")))}


# ---- no model needed ----------------------------------------------------------------------------------
def test_readme_command_names_the_shipped_tasks():
    argv = readme_lm_eval_command()
    configs = task_configs()
    assert set(arg(argv, "--tasks").split(",")) == set(configs), "README --tasks != the task YAMLs"
    assert (REPO / arg(argv, "--include_path")).resolve() == TASK_DIR.resolve()
    assert sorted(c["output_type"] for c in configs.values()) == [
        "generate_until",
        "loglikelihood_rolling",
        "multiple_choice",
    ]
    assert "bits_per_byte" in [m["metric"] for c in configs.values() for m in c["metric_list"]]
    for c in configs.values():  # data paths are relative to the repository root
        for path in c["dataset_kwargs"]["data_files"].values():
            assert (REPO / path).is_file(), path
    model_args = dict(kv.split("=", 1) for kv in arg(argv, "--model_args").split(","))
    assert model_args["trust_remote_code"] == "True" and model_args["dtype"] == "float32"
    assert arg(argv, "--model") == "hf" and "--limit" in argv


def test_task_data_is_what_make_data_writes(tmp_path):
    make_data.main(tmp_path)
    for name in ("mc.jsonl", "gen.jsonl", "ppl.jsonl", "sentences.txt"):
        assert (tmp_path / name).read_bytes() == (make_data.DATA / name).read_bytes(), name
    mc = [json.loads(line) for line in (tmp_path / "mc.jsonl").read_text().splitlines()]
    assert all(len(d["choices"]) == 4 and len(set(d["choices"])) == 4 for d in mc)
    assert len({d["label"] for d in mc}) == 4  # the answer is not always in the same slot


@pytest.mark.parametrize("n", [0, 1, 5, 127, 128, 129, 256, 300, 1000])
@pytest.mark.parametrize("window", [1, 3, 128])
def test_rolling_windows_are_lm_eval_windows(n, window):
    """Our windows (no lm_eval import in the computation) equal lm-eval's rolling windows."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    toks = list(range(10, 10 + n))
    ref = [make_disjoint_window(w) for w in get_rolling_token_windows(toks, 2, window, 1)]
    # what _loglikelihood_tokens feeds the model: (context + continuation)[-(max_length + 1):][:-1]
    ref = [((ctx + cont)[-(window + 1) :][:-1], cont) for ctx, cont in ref]
    f = [2] + toks
    ours = [(f[lo:b], f[a + 1 : b + 1]) for lo, a, b in rolling_windows(n, window)]
    assert ours == ref
    covered = [t for _, a, b in rolling_windows(n, window, stride=max(window // 2, 1)) for t in range(a, b)]
    assert covered == list(range(n))  # overlapping windows still score every byte once


# ---- the CLI on the trained fixture -------------------------------------------------------------------
@pytest.mark.slow  # end to end: a subprocess
@pytest.mark.parametrize("fixture", ["trained_1level", "trained_inputs"])
def test_lm_eval_cli_matches_own_bits_per_byte(fixture, request, tmp_path):
    _, folder = request.getfixturevalue(fixture)
    argv = readme_lm_eval_command()
    model_args = arg(argv, "--model_args")
    argv[argv.index(model_args)] = re.sub(r"pretrained=[^,]+", f"pretrained={folder}", model_args)
    out = tmp_path / "lm_eval_out"
    cmd = [sys.executable, "-m", "lm_eval", *argv[1:], "--output_path", str(out), "--log_samples"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    print(f"lm_eval took {time.perf_counter() - t0:.1f}s")
    assert proc.returncode == 0, f"lm_eval failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    results_file = max(out.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    results = json.loads(results_file.read_text())["results"]
    print(json.dumps(results, indent=1))

    for task, metrics in (("hier_mc", ("acc,none", "acc_norm,none")), ("hier_gen", ("exact_match,none",))):
        for m in metrics:
            value = results[task][m]
            assert isinstance(value, (int, float)) and 0.0 <= value <= 1.0, (task, m, value)

    # the project's own computation: same text, same windows, forward logits, no lm_eval
    limit = int(arg(argv, "--limit"))
    ppl_file = REPO / task_configs()["hier_ppl"]["dataset_kwargs"]["data_files"]["test"]
    texts = [json.loads(line)["text"] for line in ppl_file.read_text().splitlines()][:limit]
    docs = [t.encode() for t in texts]
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    window = lm.config.max_position_embeddings
    assert any(len(d) > window for d in docs), "the check should span several windows"
    ours = predict_loglikelihoods(lm, docs, window=window, batch_size=1)
    ours_batched = predict_loglikelihoods(lm, docs, window=window, batch_size=8)
    ours_bpb = bits_per_byte(ours, docs)
    theirs_bpb = results["hier_ppl"]["bits_per_byte,none"]
    print(f"bits_per_byte: lm-eval {theirs_bpb:.6f}, own {ours_bpb:.6f}")
    assert math.isfinite(ours_bpb) and abs(ours_bpb - theirs_bpb) <= 1e-4

    samples_file = max(out.rglob("samples_hier_ppl_*.jsonl"), key=lambda p: p.stat().st_mtime)
    per_doc = {}
    for line in samples_file.read_text().splitlines():
        s = json.loads(line)
        ll = s["filtered_resps"][0]
        per_doc[s["doc"]["text"]] = float(ll[0] if isinstance(ll, list) else ll)
    assert sorted(per_doc) == sorted(texts)
    for t, a, b in zip(texts, ours, ours_batched):
        assert abs(per_doc[t] - a) <= 1e-3 and abs(a - b) <= 1e-3, (per_doc[t], a, b)
