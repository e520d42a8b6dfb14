"""The model card (README.md) of a trained model folder, rendered from `model_card_template.md`.

Uses huggingface_hub's `ModelCard` / `ModelCardData`, offline (no YAML validation against the Hub).
Not part of the model's remote-code closure (training-side code).
"""

from __future__ import annotations

import json
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "model_card_template.md"  # package data


def _architecture(config) -> str:
    lines = []
    for i, lv in enumerate(config.level_configs):
        depth = f" x depth {lv.codebook_depth}" if lv.codebook_depth > 1 else ""
        codes = f"codebook {lv.codebook_size}{depth}"
        if lv.quantizer == "fsq":
            codes = f"FSQ levels {list(lv.fsq_levels)} ({lv.num_codes} codes)"
        lines.append(
            f"- level {i}: width {lv.hidden_size}, entropy / encoder / decoder layers "
            f"{lv.entropy_layers} / {lv.encoder_layers} / {lv.decoder_layers}, window {lv.window}, "
            f"{lv.boundary_mode} boundaries, "
            + ("never inside a UTF-8 character, " if lv.utf8_boundaries else "")
            + (f"min segment {lv.min_segment_len}, " if lv.min_segment_len > 1 else "")
            + f"max segment {lv.max_segment_len}, "
            f"{codes}"
            + (
                f", decoder hashed n-grams {list(lv.decoder_ngrams)} x {lv.ngram_buckets} rows"
                if lv.decoder_ngrams
                else ""
            )
            + (", decoder reads the entropy model's states" if lv.decoder_reads_entropy else "")
            + (f", entropy model window {lv.entropy_window}" if lv.entropy_window is not None else "")
            + (f", decoder dropout {lv.decoder_dropout}" if lv.decoder_dropout else "")
            + (", decoder reads a learned embedding of each code's id" if lv.decoder_code_embedding else "")
            + (
                f", codes chosen by the decoder among the {lv.code_choice_candidates} nearest"
                if lv.code_choice_candidates
                else ""
            )
            + (
                ", predictive codes (pooled vector minus its prediction from the context)"
                if lv.predictive_codes
                else ""
            )
            + (
                f", escape codebook {lv.escape_codebook_size} (variable rate: segments the code alone "
                "does not give back also carry an escape code"
                + (
                    f", chosen by the decoder among the {lv.escape_choice_candidates} nearest"
                    if lv.escape_choice_candidates
                    else ""
                )
                + (
                    f"; where none gives the segment back, code and escape code are chosen together, "
                    f"the code among its {lv.escape_joint_candidates} nearest"
                    if lv.escape_joint_candidates
                    else ""
                )
                + (
                    "; where still none does, a second escape code (two depths) that gives it back"
                    if lv.escape_depth == 2
                    else ""
                )
                + ")"
                if lv.escape_codebook_size
                else ""
            )
        )
    top = config.top_lm_config
    lines.append(
        f"- top code LM: width {top.hidden_size}, {top.num_layers} layers"
        + (f", attention window {top.window} codes" if top.window else "")
        + (", reads each code's pooled vector" if top.reads_pooled else "")
        + (f", dropout {top.dropout}" if top.dropout else "")
    )
    return "\n".join(lines)


def _evaluation(metrics: dict) -> str:
    rows = ["| metric | value |", "|---|---|"]
    for key, value in metrics.items():
        if isinstance(value, list) and any(isinstance(v, dict) for v in value):
            continue  # examples (held-out lines beside their decodes), not figures
        if value is None:
            value = "-"
        elif isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, list):
            value = ", ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in value)
        rows.append(f"| {key} | {value} |")
    return "\n".join(rows)


def render_model_card(
    folder: str | Path,
    *,
    config,
    repo_id: str | None,
    training_data: str,
    stages: list[str],
    train_seconds: float,
    hardware: str,
    metrics: dict,
    license: str = "apache-2.0",
    template: str | Path = TEMPLATE,
):
    """Write `folder/README.md`; return the `ModelCard`."""
    import transformers
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    model_name = repo_id.split("/")[-1] if repo_id else folder.name
    card_data = ModelCardData(
        language="en",
        license=license,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["hier_ae", "byte-level", "autoencoder", "custom_code"],
        model_name=model_name,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(template),
        model_name=model_name,
        repo_id=repo_id or str(folder),
        architecture=_architecture(config),
        config_json=json.dumps(config.to_dict(), indent=2, default=str),
        training_data=training_data,
        stages=" -> ".join(stages),
        training_time=f"{train_seconds / 60:.1f} min",
        hardware=hardware,
        evaluation=_evaluation(metrics),
        transformers_version=transformers.__version__,
        license=f"{license} (see LICENSE in the source repository)",
    )
    card.save(str(folder / "README.md"))
    return card
