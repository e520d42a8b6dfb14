"""Upload a trained model folder to the Hugging Face Hub with `huggingface_hub`.

`model.push_to_hub` would replace the card with the generic one and skip the tokenizer (see
notes/hf-integration.md §8), so the whole folder (safetensors, config, tokenizer, code, README.md
card) goes up with `HfApi.upload_folder`. Not part of the model's remote-code closure.
"""

from __future__ import annotations

from pathlib import Path

ALLOWED = ["*.safetensors", "*.json", "*.py", "README.md"]


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    message: str | None = None,
):
    """Create `repo_id` (if needed) and upload `folder`; return the commit info."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "config.json").exists() or not list(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"{folder} is not a saved model folder (config.json + *.safetensors)")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    return api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        allow_patterns=ALLOWED,
        commit_message=message or f"Upload hier_ae model from {folder.name}",
    )
