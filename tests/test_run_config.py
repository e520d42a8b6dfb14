"""The run config (`examples/train.py --config`) and how the example scripts report a user's mistake.

Tried here, with what the error names:

- a misspelt key in any section          -> "<section>.<key> is not a known key (did you mean ...)"
- a misspelt section ("trainning")       -> "is not a known section ... (did you mean 'training'?)"
- model.num_levels (a derived property)   -> "one dict per level"
- a misspelt stage key ("step")          -> "training.stages[0].step ... did you mean 'steps'"
- a wrong type or range (batch_size "8", 0; val_fraction 0.9; on_nonfinite "ignore")
                                         -> "<section>.<key>=<value> is invalid: must be ..."
- no training.stages                     -> "training.stages is missing"
- a stage's loss_weights with a typo     -> "training.stages[0].loss_weights has an unknown term ..."
- the same typo given by `--set`         -> the same error, before anything runs
- `train.py` on a bad config             -> one line "train.py: error: ...", exit status 1, no traceback
                                            (HIER_AE_TRACEBACK=1 shows it)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SUBPROCESS_ENV

from hier_ae.cli import run
from hier_ae.training.run_config import check_run_config

GOOD = {"model": {"levels": [{}]}, "data": {"batch_size": 4}, "training": {"stages": [{"kind": "top_lm"}]}}


def with_(section: str, key: str, value) -> dict:
    cfg = yaml.safe_load(yaml.safe_dump(GOOD))
    cfg.setdefault(section, {})[key] = value
    return cfg


CASES = [
    (with_("data", "batchsize", 64), r"data\.batchsize is not a known key \(did you mean 'batch_size'\?\)"),
    (with_("training", "chekpoint_every", 5), r"did you mean 'checkpoint_every'"),
    (with_("evaluation", "line", 5), r"evaluation\.line .*did you mean 'lines'"),
    (with_("model", "max_position_embedding", 64), r"did you mean 'max_position_embeddings'"),
    (with_("model", "num_levels", 2), r"model\.num_levels is not a key: .*one dict per level"),
    ({**GOOD, "trainning": {}}, r"'trainning' is not a known section .*did you mean 'training'"),
    (with_("data", "batch_size", "8"), r"data\.batch_size='8' is invalid: must be an int >= 1"),
    (with_("data", "batch_size", 0), r"data\.batch_size=0 is invalid"),
    (
        with_("data", "val_fraction", 0.9),
        r"data\.val_fraction=0\.9 is invalid: must be a number >= 0\.0 and <= 0\.5",
    ),
    (with_("data", "streaming", "yes"), r"data\.streaming='yes' is invalid: must be a bool"),
    (
        with_("training", "on_nonfinite", "ignore"),
        r"training\.on_nonfinite='ignore' is invalid: must be one of",
    ),
    (with_("training", "stages", [{"kind": "top_lm", "step": 3}]), r"training\.stages\[0\]\.step .*'steps'"),
    (with_("training", "stages", [{"steps": 3}]), r"training\.stages\[0\] has no 'kind'"),
    (
        with_("training", "stages", [{"kind": "predict", "loss_weights": {"recon": 0}}]),
        r"training\.stages\[0\]\.loss_weights has an unknown term 'recon'; allowed: \['entropy'",
    ),
    ({"model": {}, "training": {}}, r"training\.stages is missing"),
    ([1, 2], r"must be a YAML mapping"),
]


@pytest.mark.parametrize("cfg,match", CASES, ids=[m[:40] for _, m in CASES])
def test_bad_run_config_names_the_key(cfg, match):
    with pytest.raises(ValueError, match=match):
        check_run_config(cfg)


RECIPES = sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "bench" / "variants").rglob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_configs_pass(path):
    """The shipped configs and every benchmark recipe a reader reruns (bench/variants)."""
    cfg = yaml.safe_load(path.read_text())
    assert check_run_config(cfg) is cfg


def test_set_override_typo_is_caught_before_anything_runs(tmp_path):
    sys.path.insert(0, str(REPO / "examples"))
    import train

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    args = train.parse_args(["--config", str(path), "--set", "data.seq_length=64"])
    with pytest.raises(ValueError, match=r"data\.seq_length .*did you mean 'seq_len'"):
        train.load_config(args)
    args = train.parse_args(["--config", str(path), "--set", "data.seq_len=64"])
    assert train.load_config(args)["data"]["seq_len"] == 64


def test_cli_run_exit_codes(capsys):
    with pytest.raises(SystemExit) as e:
        run(lambda: {"ok": 1}, prog="x.py")
    assert e.value.code == 0
    with pytest.raises(SystemExit) as e:
        run(lambda: (_ for _ in ()).throw(FileNotFoundError("no such file: a.yaml")), prog="x.py")
    assert e.value.code == "x.py: error: no such file: a.yaml"  # printed to stderr, exit status 1
    with pytest.raises(RuntimeError, match="a bug"):  # anything else is a bug: it keeps its traceback
        run(lambda: (_ for _ in ()).throw(RuntimeError("a bug")), prog="x.py")


@pytest.mark.slow  # end to end: a subprocess
@pytest.mark.parametrize("traceback", [False, True])
def test_train_script_reports_one_line(tmp_path: Path, traceback: bool):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(with_("data", "batchsize", 64)))
    env = {**SUBPROCESS_ENV, **({"HIER_AE_TRACEBACK": "1"} if traceback else {})}
    cmd = [sys.executable, str(REPO / "examples" / "train.py"), "--config", str(path)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "data.batchsize is not a known key (did you mean 'batch_size'?)" in proc.stderr
    assert ("Traceback" in proc.stderr) is traceback, proc.stderr[-2000:]
    if not traceback:
        assert proc.stderr.strip().splitlines()[-1].startswith("train.py: error: data.batchsize")
    assert not (tmp_path / "runs").exists(), "nothing was written"
