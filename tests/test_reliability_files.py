"""Model folders that are broken or not ours: each one gets a clear error, none loads silently.

Tried here, with the error each gets:
- truncated or corrupt `model.safetensors` -> OSError naming the file and what to do (download or
                                               save it again), safetensors' message kept
- no weights file                          -> OSError ("no file named model.safetensors")
- pickled weights only (`pytorch_model.bin`) -> OSError: safetensors only, pickles are never unpickled
- `use_safetensors=False`                  -> ValueError
- config whose model_type is not hier_ae   -> ValueError naming both types
- weights whose shapes do not match config -> RuntimeError with transformers' mismatch report
- no `config.json`                           -> FileNotFoundError "has no config.json" (HierAE* classes);
                                               the Auto classes: transformers' ValueError naming config.json
- a local path that does not exist           -> FileNotFoundError "does not exist" (HierAE* classes);
                                               the Auto classes: transformers' OSError naming the path
- an Accelerate training-state folder        -> the same: not a model folder (no config.json); those
                                               folders are `checkpointing.py`'s separate format
- custom code without trust_remote_code=True -> ValueError asking for it; the folder's code never ran
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import tiny_config
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from hier_ae import HierAEByteTokenizer, HierAEForCausalLM


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ok")
    HierAEForCausalLM(tiny_config(1)).save_pretrained(folder)
    return folder


def copy(saved, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(saved, dst)
    return dst


def test_intact_folder_loads(saved):
    """The control case: the intact folder loads every weight as saved, with no key missing or extra."""
    from safetensors.torch import load_file

    model, info = AutoModel.from_pretrained(saved, trust_remote_code=True, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    stored = {k.removeprefix("model."): v for k, v in load_file(saved / "model.safetensors").items()}
    state = model.state_dict()
    assert stored.keys() == state.keys()
    assert all(torch.equal(stored[k], state[k]) for k in stored)


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda data: data[: len(data) // 2], "incomplete metadata"),  # an interrupted download
        (lambda data: data[:8], "invalid header length"),  # only the length prefix arrived
        (lambda data: bytes(len(data)), "invalid JSON"),  # zeroed (a sparse file never written)
    ],
)
def test_truncated_or_corrupt_weights(saved, tmp_path, damage, why):
    d = copy(saved, tmp_path)
    weights = d / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    for auto in (AutoModel, AutoModelForCausalLM):
        with pytest.raises(OSError, match="truncated or corrupt") as info:
            auto.from_pretrained(d, trust_remote_code=True)
        msg = str(info.value)
        assert str(weights) in msg and why in msg, msg  # names the file, keeps safetensors' reason
        assert "download it again" in msg and "save_pretrained" in msg, msg
        assert isinstance(info.value.__cause__, SafetensorError)


def test_missing_weights(saved, tmp_path):
    d = copy(saved, tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(OSError, match="model.safetensors"):
        AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True)


def test_pickled_weights_are_refused(saved, tmp_path):
    d = copy(saved, tmp_path)
    state = HierAEForCausalLM.from_pretrained(saved).state_dict()
    (d / "model.safetensors").unlink()
    torch.save(state, d / "pytorch_model.bin")
    with pytest.raises(OSError, match="model.safetensors"):
        AutoModel.from_pretrained(d, trust_remote_code=True)
    with pytest.raises(ValueError, match="safetensors weights only"):
        AutoModel.from_pretrained(d, trust_remote_code=True, use_safetensors=False)


def test_wrong_model_type(saved, tmp_path):
    d = copy(saved, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "llama"
    (d / "config.json").write_text(json.dumps(cfg))
    for load in (AutoConfig.from_pretrained, AutoModel.from_pretrained):
        with pytest.raises(ValueError, match="model_type='llama'"):
            load(d, trust_remote_code=True)


def test_shapes_that_do_not_match_the_config(saved, tmp_path):
    d = copy(saved, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["levels"][0]["codebook_size"] = 128  # the weights hold 256 codes
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModel.from_pretrained(d, trust_remote_code=True)


def test_missing_config_or_folder(saved, tmp_path):
    d = copy(saved, tmp_path)
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        HierAEForCausalLM.from_pretrained(d)  # not a default config silently filled with the weights
    with pytest.raises(ValueError, match="config.json"):
        AutoModel.from_pretrained(d, trust_remote_code=True)
    with pytest.raises(FileNotFoundError, match="no-such-folder does not exist"):
        HierAEForCausalLM.from_pretrained(tmp_path / "no-such-folder")
    with pytest.raises(OSError, match="no-such-folder"):
        AutoModel.from_pretrained(tmp_path / "no-such-folder", trust_remote_code=True)


def test_training_state_folder_is_not_a_model_folder(tmp_path):
    from accelerate import Accelerator

    from hier_ae import HierAEModel
    from hier_ae.training.checkpointing import save_checkpoint

    acc = Accelerator(cpu=True)
    model = acc.prepare(HierAEModel(tiny_config(1)))
    ckpt = save_checkpoint(acc, tmp_path / "checkpoints", 1, {"stage_index": 0, "stage": "s", "step": 1})
    assert (ckpt / "model.safetensors").exists()  # weights are there, but it is not a model folder
    with pytest.raises(FileNotFoundError, match="training-state folder"):
        HierAEModel.from_pretrained(ckpt)
    with pytest.raises(ValueError, match="config.json"):
        AutoModel.from_pretrained(ckpt, trust_remote_code=True)
    assert model is not None


@pytest.mark.slow  # end to end: a subprocess
def test_folder_code_runs_only_with_trust_remote_code(saved, tmp_path):
    """In a process without hier_ae, a folder's code is imported only when trust_remote_code=True."""
    d = copy(saved, tmp_path)
    HierAEByteTokenizer().save_pretrained(d)
    marker = tmp_path / "code-ran"
    code = d / "configuration_hier_ae.py"
    code.write_text(code.read_text() + f"\nopen({str(marker)!r}, 'w').close()\n")  # runs on import
    script = textwrap.dedent(
        f"""
        import os
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        for load in (AutoConfig.from_pretrained, AutoModel.from_pretrained, AutoTokenizer.from_pretrained):
            try:
                load({str(d)!r})
            except ValueError as e:
                assert "trust_remote_code=True" in str(e), e
            else:
                raise SystemExit("loaded without trust_remote_code")
        assert not os.path.exists({str(marker)!r}), "the folder's code ran without trust_remote_code"
        AutoModel.from_pretrained({str(d)!r}, trust_remote_code=True)
        assert os.path.exists({str(marker)!r})
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
