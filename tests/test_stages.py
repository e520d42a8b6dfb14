"""The stage runner's freezing rules (DESIGN §8), checked on a trained 2-level checkpoint."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from hier_ae.data.batching import DocumentCropper, frame_document, pad_rows
from hier_ae.training.stages import Stage, default_stages, prepare_stage, train_stage


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stage_kinds_and_levels_are_validated():
    with pytest.raises(ValueError, match="level=0 must be None"):
        Stage("joint", 0, 10)
    with pytest.raises(ValueError, match="stage kind='jointly' is invalid"):
        Stage("jointly", None, 10)
    names = [s.name for s in default_stages(2, 1, 1, 1, predict_steps=1, joint_steps=1)]
    assert names == ["entropy-0", "autoencoder-0", "entropy-1", "autoencoder-1", "top_lm", "predict", "joint"]


def test_prepare_stage_rejects_a_level_the_model_lacks(trained_2level):
    model = copy.deepcopy(trained_2level[0])
    with pytest.raises(ValueError, match=r"level=2 is invalid: must be in \[0, 2\)"):
        prepare_stage(model, Stage("entropy", 2, 1))


def test_joint_stage_moves_encoders_but_never_segments_or_codebooks(trained_2level, grammar_data):
    """joint trains encoders, poolings, decoders, context maps and the top LM on both modes at once;
    entropy models and codebooks stay frozen, so every segment boundary stays where it was."""
    model = copy.deepcopy(trained_2level[0])
    rows = [frame_document(s.encode()) for s in grammar_data[1][:8]]
    ids, mask = pad_rows(rows)
    before_enc = model.encode(ids, mask)
    frozen = {
        f"{i}.{name}": _snapshot(getattr(lv, name))
        for i, lv in enumerate(model.levels)
        for name in ("entropy_model", "quantizer")
    }
    moving = {
        "encoder0": _snapshot(model.levels[0].encoder),
        "pooling1": _snapshot(model.levels[1].pooling),
        "decoder0": _snapshot(model.levels[0].decoder),
        "top_lm": _snapshot(model.top_lm),
    }
    plan = prepare_stage(model, Stage("joint", None, 1))
    assert plan.metric_names == ["predict CE", "recon CE", "commitment", "top-LM CE"]

    batches = DocumentCropper([s.encode() for s in grammar_data[0]], 8, 64, seed=3, p_doc_start=0.5)
    history = train_stage(model, Stage("joint", None, 4, 1e-3, warmup_steps=1), batches)
    assert len(history) == 4 and all(math.isfinite(x) for x in history)

    for key, snap in frozen.items():
        lv, name = key.split(".")
        assert _same(snap, _snapshot(getattr(model.levels[int(lv)], name))), f"{key} moved in joint"
    for key, snap in moving.items():
        module = {
            "encoder0": model.levels[0].encoder,
            "pooling1": model.levels[1].pooling,
            "decoder0": model.levels[0].decoder,
            "top_lm": model.top_lm,
        }[key]
        assert not _same(snap, _snapshot(module)), f"{key} did not train in joint"
    after_enc = model.encode(ids, mask)
    # level-0 segments come from the frozen entropy model alone: identical
    assert torch.equal(before_enc.segment_ids[0], after_enc.segment_ids[0])
    out = model.predict(ids, mask, with_reconstruct=True)
    assert out.commitment_loss.shape == (2,) and torch.isfinite(out.commitment_loss).all()


@pytest.mark.parametrize(
    "kind, level", [("entropy", 0), ("autoencoder", 0), ("top_lm", None), ("predict", None)]
)
def test_stage_objectives_use_the_config_loss_weights(kind, level):
    """Each stage minimises the config's weighted terms: the weights are set in one place."""
    from conftest import tiny_config

    from hier_ae import HierAEModel

    weights = {
        "entropy_loss_weight": 0.5,
        "reconstruct_loss_weight": 2.0,
        "commitment_loss_weight": 3.0,
        "predict_loss_weight": 5.0,
        "top_lm_loss_weight": 7.0,
    }
    torch.manual_seed(0)
    model = HierAEModel(tiny_config(1, **weights)).eval()
    plan = prepare_stage(model, Stage(kind, level, 1, 1e-3))
    ids, mask = pad_rows([frame_document(b"a dog runs."), frame_document(b"the cat")])
    with torch.no_grad():
        out = model(ids, mask, **plan.forward_kwargs)
    want = {
        "entropy": lambda: 0.5 * out.entropy_loss[0],
        "autoencoder": lambda: 2.0 * out.reconstruct_loss[0] + 3.0 * out.commitment_loss[0],
        "top_lm": lambda: 7.0 * out.top_lm_loss,
        "predict": lambda: (
            5.0 * out.predict_loss.sum() + 2.0 * out.reconstruct_loss.sum() + 7.0 * out.top_lm_loss
        ),
    }[kind]()
    torch.testing.assert_close(plan.objective(out), want)


def test_stage_loss_weights_override_the_config_for_that_stage_only():
    """A stage's `loss_weights` replace the config's weights for its objective; the config is untouched."""
    from conftest import tiny_config

    from hier_ae import HierAEModel

    torch.manual_seed(0)
    model = HierAEModel(tiny_config(1, reconstruct_loss_weight=2.0, top_lm_loss_weight=7.0)).eval()
    ids, mask = pad_rows([frame_document(b"a dog runs."), frame_document(b"the cat")])
    plan = prepare_stage(model, Stage("predict", None, 1, 1e-3, loss_weights={"top_lm": 0.5}))
    with torch.no_grad():
        out = model(ids, mask, **plan.forward_kwargs)
    want = out.predict_loss.sum() + 2.0 * out.reconstruct_loss.sum() + 0.5 * out.top_lm_loss
    torch.testing.assert_close(plan.objective(out), want)
    assert model.config.top_lm_loss_weight == 7.0
    plan = prepare_stage(model, Stage("autoencoder", 0, 1, 1e-3, loss_weights={"commitment": 0.0}))
    with torch.no_grad():
        out = model(ids, mask, **plan.forward_kwargs)
    torch.testing.assert_close(plan.objective(out), 2.0 * out.reconstruct_loss[0])


def test_predict_stage_without_the_reconstruct_term_skips_that_pass(trained_2level, grammar_data):
    """`loss_weights={"reconstruct": 0}` on predict: no reconstruct-mode pass runs (its terms are None),
    the objective is the causal-LM terms alone, and the stage trains the decoders and the top LM."""
    model = copy.deepcopy(trained_2level[0])
    stage = Stage("predict", None, 3, 1e-3, warmup_steps=1, loss_weights={"reconstruct": 0.0})
    plan = prepare_stage(model, stage)
    assert plan.forward_kwargs == {"mode": "predict", "reconstruct_levels": ()}
    assert plan.metric_names == ["predict CE", "top-LM CE"]
    assert prepare_stage(model, Stage("predict", None, 1)).metric_names == [
        "predict CE",
        "recon CE",
        "top-LM CE",
    ]
    rows = [frame_document(s.encode()) for s in grammar_data[1][:4]]
    ids, mask = pad_rows(rows)
    with torch.no_grad():
        out = model(ids, mask, **plan.forward_kwargs)
    assert out.reconstruct_loss is None and out.commitment_loss is None
    torch.testing.assert_close(plan.objective(out), out.predict_loss.sum() + out.top_lm_loss)
    before = _snapshot(model.levels[0].decoder)
    batches = DocumentCropper([s.encode() for s in grammar_data[0]], 4, 64, seed=3, p_doc_start=0.5)
    history = train_stage(model, stage, batches)
    assert len(history) == 3 and all(math.isfinite(x) for x in history)
    assert not _same(before, _snapshot(model.levels[0].decoder))


def test_predict_mode_reconstructs_every_level_or_none(trained_2level):
    model = trained_2level[0]
    ids, mask = pad_rows([frame_document(b"a dog runs.")])
    with pytest.raises(ValueError, match=r"reconstruct_levels=\(0,\) is invalid with mode='predict'"):
        model(ids, mask, mode="predict", reconstruct_levels=(0,))
    with torch.no_grad():
        out = model(ids, mask, mode="predict", reconstruct_levels=(0, 1))
    assert out.reconstruct_loss.shape == (2,)


@pytest.mark.parametrize(
    "weights, match",
    [
        ({"recon": 0.0}, r"unknown term 'recon'; allowed: \['entropy', 'reconstruct'"),
        ({"reconstruct": -1.0}, r"\['reconstruct'\]=-1.0 is invalid: must be a finite number >= 0"),
        ({"top_lm": float("nan")}, r"loss_weights\['top_lm'\]=nan is invalid"),
        ([0.0], r"must be a mapping of \['entropy'"),
    ],
)
def test_stage_loss_weights_are_validated(weights, match):
    with pytest.raises(ValueError, match=match):
        Stage("predict", None, 1, loss_weights=weights)
