"""Model folders that are broken or not ours: each one gets a clear error, none loads silently.

Tried here, with the error each gets:
- truncated `model.safetensors`            -> safetensors' SafetensorError ("incomplete metadata")
- no weights file                          -> OSError ("no file named model.safetensors")
- pickled weights only (`pytorch_model.bin`) -> OSError: safetensors only, pickles are never unpickled
- `use_safetensors=False`                  -> ValueError
- config whose model_type is not hier_ae   -> ValueError naming both types
- weights whose shapes do not match config -> RuntimeError with transformers' mismatch report
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import tiny_config
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from hier_ae import HierAEForCausalLM


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
    AutoModel.from_pretrained(saved, trust_remote_code=True)


def test_truncated_weights(saved, tmp_path):
    d = copy(saved, tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(SafetensorError, match="incomplete metadata"):
        AutoModel.from_pretrained(d, trust_remote_code=True)


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
