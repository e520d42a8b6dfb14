"""The run config (`examples/train.py --config X.yaml`): every key and value checked before a run starts.

A misspelt key in a YAML file would otherwise be read as "not set" and silently replaced by its
default (``batchsize: 64`` trains with 16), and a wrong type would fail minutes later, deep inside
the run. :func:`check_run_config` refuses both up front with a ``ValueError`` that names the key,
says what is allowed and suggests the nearest known key::

    >>> check_run_config({"model": {}, "data": {"batchsize": 64}, "training": {"stages": []}})
    Traceback (most recent call last):
    ...
    ValueError: data.batchsize is not a known key (did you mean 'batch_size'?); data allows ...

The model section is the keyword arguments of `HierAEConfig` (which checks the values itself); the
other sections are listed here, with the type and range of each value. `--set KEY=VALUE` overrides
go through the same check, so a typo there is caught too.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import fields
from typing import Any

from ..configuration_hier_ae import HierAEConfig
from ..validation import did_you_mean
from .nonfinite import NONFINITE_POLICIES
from .stages import LOSS_TERMS, STAGE_KINDS, STAGE_ROWS, Stage, check_loss_weights

# a kind: (type name, type predicate); `_rule` turns one into (value predicate, what is allowed)
_INT = ("int", lambda v: isinstance(v, int) and not isinstance(v, bool))
_NUM = ("number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
_STR = ("str", lambda v: isinstance(v, str) and v != "")
_BOOL = ("bool", lambda v: isinstance(v, bool))


def _rule(kind, low=None, high=None, optional=False, choices=None):
    name, is_type = kind

    def ok(v):
        if v is None:
            return optional
        if choices is not None:
            return v in choices
        if not is_type(v):
            return False
        return (low is None or v >= low) and (high is None or v <= high)

    if choices is not None:
        allowed = f"one of {list(choices)}"
    else:
        bounds = " and ".join(f"{op} {b}" for op, b in ((">=", low), ("<=", high)) if b is not None)
        allowed = f"{'an' if name == 'int' else 'a'} {name}{' ' + bounds if bounds else ''}"
    if optional:
        allowed += " (or null)"
    return ok, allowed


DATA = {
    "source": _rule(_STR),
    "name": _rule(_STR, optional=True),
    "streaming": _rule(_BOOL),
    "text_field": _rule(_STR),
    "max_bytes": _rule(_INT, low=1, optional=True),
    "max_documents": _rule(_INT, low=1, optional=True),
    "val_fraction": _rule(_NUM, low=0.0, high=0.5),
    "min_document_bytes": _rule(_INT, low=1),
    "cache_dir": _rule(_STR, optional=True),
    "seq_len": _rule(_INT, low=2),
    "batch_size": _rule(_INT, low=1),
    "p_doc_start": _rule(_NUM, low=0.0, high=1.0),
    "p_line": _rule(_NUM, low=0.0, high=1.0),
    "code_shards": _rule(_STR, optional=True),
    "code_level": _rule(_INT, low=0, optional=True),
}
TRAINING = {
    "seed": _rule(_INT, low=0),
    "trackers": (lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v), "a list of names"),
    "mixed_precision": _rule(_STR, choices=("no", "bf16", "fp16", "fp8")),
    "find_unused_parameters": _rule(_BOOL),
    "stages": (
        lambda v: isinstance(v, list) and all(isinstance(s, dict) for s in v),
        "a list of stage dicts",
    ),
    "gradient_accumulation_steps": _rule(_INT, low=1),
    "grad_clip": _rule(_NUM, low=0.0),
    "checkpoint_every": _rule(_INT, low=1),
    "eval_every": _rule(_INT, low=0),
    "log_every": _rule(_INT, low=1),
    "on_nonfinite": _rule(_STR, choices=NONFINITE_POLICIES),
    "max_consecutive_skips": _rule(_INT, low=1),
    "keep_checkpoints": _rule(_INT, low=1),
}
EVALUATION = {
    "val_batches": _rule(_INT, low=1),
    "lines": _rule(_INT, low=0),
    "predict_docs": _rule(_INT, low=0),
    "corrections": _rule(_BOOL),
}


def _loss_weights_ok(v) -> bool:
    try:
        check_loss_weights(v, "loss_weights")
    except ValueError:
        return False
    return True


STAGE = {
    "kind": _rule(_STR, choices=STAGE_KINDS),
    "level": _rule(_INT, low=0, optional=True),
    "steps": _rule(_INT, low=0),
    "lr": _rule(_NUM, low=0.0),
    "warmup_steps": _rule(_INT, low=0),
    "weight_decay": _rule(_NUM, low=0.0),
    "loss_weights": (_loss_weights_ok, f"null or a mapping of {list(LOSS_TERMS)} to numbers >= 0"),
    "seq_len": _rule(_INT, low=2, optional=True),
    "batch_size": _rule(_INT, low=1, optional=True),
    "rows": _rule(_STR, choices=STAGE_ROWS),
    "p_line": _rule(_NUM, low=0.0, high=1.0, optional=True),
    "encode_bytes": _rule(_INT, low=1, optional=True),
    # a time budget: `steps` is then the most the stage runs (step_budget.py)
    "minutes": (lambda v: v is None or (_NUM[1](v) and v > 0), "null or a number of minutes > 0"),
}
assert set(STAGE) == {f.name for f in fields(Stage)}, "keep STAGE in step with stages.Stage"
TOP = {"model", "data", "training", "evaluation", "output_dir"}


def model_keys() -> list[str]:
    """The keys of the model section: `HierAEConfig`'s keyword arguments."""
    params = inspect.signature(HierAEConfig.__init__).parameters.values()
    return sorted(p.name for p in params if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD)


def _unknown(where: str, key: str, allowed) -> ValueError:
    """`where.key is not a known key (did you mean ...?)`; at the top level (where="") a section."""
    near = did_you_mean(key, allowed)
    hint = f" (did you mean {near!r}?)" if near else ""
    if not where:
        known = sorted(allowed)
        return ValueError(f"{key!r} is not a known section of the run config{hint}; allowed: {known}.")
    return ValueError(f"{where}.{key} is not a known key{hint}; {where} allows {sorted(allowed)}.")


def _section(where: str, section: Any, rules: dict) -> None:
    if not isinstance(section, dict):
        raise ValueError(f"{where} must be a mapping of keys to values, got {type(section).__name__}.")
    for key, value in section.items():
        if key not in rules:
            raise _unknown(where, key, rules)
        ok, allowed = rules[key]
        if not ok(value):
            raise ValueError(f"{where}.{key}={value!r} is invalid: must be {allowed}.")


def check_run_config(cfg: Any) -> dict:
    """Raise `ValueError` naming the first unknown key or bad value of a run config; return it."""
    if not isinstance(cfg, dict):
        raise ValueError(
            f"the run config must be a YAML mapping with sections {sorted(TOP)}, got {type(cfg).__name__}."
        )
    for key in cfg:
        if key not in TOP:
            raise _unknown("", key, TOP)
    if "model" not in cfg and not (cfg.get("data") or {}).get("code_shards"):
        raise ValueError("the run config has no 'model' section (HierAEConfig's keyword arguments).")
    if "stages" not in (cfg.get("training") or {}):
        raise ValueError("training.stages is missing: the list of stages to run (see configs/tiny.yaml).")
    model = cfg.get("model") or {}
    if not isinstance(model, dict):
        raise ValueError(
            f"model must be a mapping of HierAEConfig keyword arguments, got {type(model).__name__}."
        )
    allowed_model = model_keys()
    for key in model:
        if key == "num_levels":
            raise ValueError(
                "model.num_levels is not a key: model.levels holds one dict per level (bottom first)."
            )
        if key not in allowed_model:
            raise _unknown("model", key, allowed_model)
    _section("data", cfg.get("data") or {}, DATA)
    _section("training", cfg["training"], TRAINING)
    _section("evaluation", cfg.get("evaluation") or {}, EVALUATION)
    for i, stage in enumerate(cfg["training"]["stages"]):
        # the loss weights first: their own check names the bad term, not just "invalid"
        check_loss_weights(stage.get("loss_weights"), f"training.stages[{i}].loss_weights")
        _section(f"training.stages[{i}]", stage, STAGE)
        if "kind" not in stage:
            raise ValueError(f"training.stages[{i}] has no 'kind'; see configs/tiny.yaml for the stage list.")
    if "output_dir" in cfg and not _STR[1](cfg["output_dir"]):
        raise ValueError(f"output_dir={cfg['output_dir']!r} is invalid: must be a folder path.")
    return cfg
