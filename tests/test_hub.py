"""Publishing: the model card renders offline, and `push_folder` uploads the whole folder (Hub mocked)."""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

from conftest import tiny_config

from hier_ae import HierAEByteTokenizer, HierAEModel
from hier_ae.publishing.model_card import render_model_card


def test_model_card_and_push_to_hub_mocked(tmp_path):
    from huggingface_hub import HfApi, ModelCard

    from hier_ae.publishing.hub import push_folder

    folder = tmp_path / "model"
    model = HierAEModel(tiny_config(1))
    model.save_pretrained(folder)
    HierAEByteTokenizer().save_pretrained(folder)
    render_model_card(
        folder,
        config=model.config,
        repo_id="me/hier-ae-tiny",
        training_data="the built-in default corpus",
        stages=["entropy-0 (3 steps)", "autoencoder-0 (3 steps)"],
        train_seconds=12.0,
        hardware="1 x CPU",
        metrics={"exact_match": 0.5, "code_bits_per_byte": 2.25, "tokens_per_segment": [3.5]},
    )
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
    text = card.text
    for needle in (
        'AutoModel.from_pretrained("me/hier-ae-tiny", trust_remote_code=True)',
        "AutoModelForCausalLM",
        "generate(",
        "| exact_match | 0.5000 |",
        "level 0: width 64",
        "1 x CPU",
        "transformers>=",
    ):
        assert needle in text, needle
    assert "{{" not in text

    committed = []

    def fake_create_commit(self, repo_id, operations, **kw):
        committed.extend(op.path_in_repo for op in operations)
        return mock.MagicMock(commit_url=f"https://huggingface.co/{repo_id}/commit/0", oid="0")

    with (
        mock.patch.object(HfApi, "create_repo", lambda self, repo_id, **kw: mock.MagicMock(repo_id=repo_id)),
        mock.patch.object(HfApi, "create_commit", fake_create_commit),
        mock.patch.object(HfApi, "_validate_yaml", lambda self, content, **kw: None),
        mock.patch("huggingface_hub.hf_api.is_xet_available", return_value=False),
    ):
        push_folder(folder, "me/hier-ae-tiny", token="hf_dummy")
    expected = {
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer_config.json",
        "configuration_hier_ae.py",
        "modeling_hier_ae.py",
        "tokenization_hier_ae.py",
        "quantizer.py",
    }
    assert expected <= set(committed), sorted(committed)
    assert not any(p.endswith((".bin", ".pt", ".pkl")) for p in committed)
    assert len(committed) == len({p.name for p in folder.iterdir()}), sorted(committed)


def test_push_flag_reaches_push_folder(tmp_path, monkeypatch):
    """`--push-to-hub REPO_ID` uploads the final folder after training (upload mocked)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import train

    parsed = train.parse_args(["--config", "x.yaml", "--push-to-hub", "me/repo", "--hub-private"])
    assert parsed.push_to_hub == "me/repo" and parsed.hub_private
