"""Configs with impossible values: each raises a ValueError that names the field and what is allowed.

Tried here (keyword given to `HierAEConfig`, or written into a saved `config.json`), with the field
the error names:

- levels=[] / "abc" / [None]                  -> levels: a non-empty list of per-level dicts
- negative or zero sizes (hidden, heads, ...)  -> levels[0].<size>: an integer >= 1
- sizes that are floats, bools or strings      -> levels[0].<size>: an integer >= 1
- a codebook of 0, 1 or True                   -> levels[0].codebook_size: an integer >= 2
- K^R over 65536                               -> levels[0].codebook_size**codebook_depth
- window > max_input_bytes                     -> levels[0].window
- max_position_embeddings > max_input_bytes    -> max_position_embeddings
- max_segment_len 0, 2000 or True              -> levels[0].max_segment_len: in [1, 1024]
- heads that do not divide the width           -> levels[0].hidden_size / pooling_heads
- threshold "2", None or NaN; negative bits    -> levels[0].threshold: a finite number, bits >= 0
- ema_decay 1.0 / "x", beta None, negative     -> levels[0].ema_decay / beta
- target_tokens_per_segment > max_segment_len  -> levels[0].target_tokens_per_segment
- restart_dead_codes "yes"                     -> levels[0].restart_dead_codes: True or False
- an unknown key                               -> "unknown keys", with the allowed keys listed
- top_lm with 0 layers or rope_theta -1        -> top_lm.num_layers / top_lm.rope_theta
- vocab_size 300, loss weight -1 / "1" / None  -> vocab_size / entropy_loss_weight
- initializer_range -1                         -> initializer_range
- a saved config.json with codebook_size 0     -> the same ValueError from from_pretrained
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import tiny_config

from hier_ae import HierAEConfig

CASES = [
    ({"levels": []}, "levels"),
    ({"levels": "abc"}, "levels"),
    ({"levels": [None]}, "levels[0] must be a dict"),
    ({"levels": [{"hidden_size": -4}]}, "levels[0].hidden_size"),
    ({"levels": [{"num_heads": 0}]}, "levels[0].num_heads"),
    ({"levels": [{"intermediate_size": -1}]}, "levels[0].intermediate_size"),
    ({"levels": [{"encoder_layers": 0}]}, "levels[0].encoder_layers"),
    ({"levels": [{"window": 0}]}, "levels[0].window"),
    ({"levels": [{"hidden_size": 64.0}]}, "levels[0].hidden_size"),
    ({"levels": [{"decoder_layers": True}]}, "levels[0].decoder_layers"),
    ({"levels": [{"entropy_layers": "2"}]}, "levels[0].entropy_layers"),
    ({"levels": [{"codebook_size": 0}]}, "levels[0].codebook_size"),
    ({"levels": [{"codebook_size": 1}]}, "levels[0].codebook_size"),
    ({"levels": [{"codebook_size": True}]}, "levels[0].codebook_size"),
    ({"levels": [{"codebook_size": 300, "codebook_depth": 2}]}, "codebook_size**codebook_depth"),
    ({"levels": [{"window": 70000}]}, "levels[0].window"),
    ({"max_input_bytes": 512, "max_position_embeddings": 1024}, "max_position_embeddings"),
    ({"max_position_embeddings": 100000}, "max_position_embeddings"),
    ({"max_input_bytes": 0}, "max_input_bytes"),
    ({"levels": [{"max_segment_len": 0}]}, "levels[0].max_segment_len"),
    ({"levels": [{"max_segment_len": 2000}]}, "levels[0].max_segment_len"),
    ({"levels": [{"max_segment_len": True}]}, "levels[0].max_segment_len"),
    ({"levels": [{"hidden_size": 60, "num_heads": 8}]}, "levels[0].hidden_size"),
    ({"levels": [{"pooling_heads": 3}]}, "levels[0].pooling_heads"),
    ({"levels": [{"boundary_mode": "quantile"}]}, "levels[0].boundary_mode"),
    ({"levels": [{"threshold": "2"}]}, "levels[0].threshold"),
    ({"levels": [{"threshold": None}]}, "levels[0].threshold"),
    ({"levels": [{"threshold": float("nan")}]}, "levels[0].threshold"),
    ({"levels": [{"threshold": -1.0}]}, "levels[0].threshold"),
    ({"levels": [{"ema_decay": 1.0}]}, "levels[0].ema_decay"),
    ({"levels": [{"ema_decay": "x"}]}, "levels[0].ema_decay"),
    ({"levels": [{"beta": None}]}, "levels[0].beta"),
    ({"levels": [{"beta": -1}]}, "levels[0].beta"),
    ({"levels": [{"threshold_adapt_rate": None}]}, "levels[0].threshold_adapt_rate"),
    ({"levels": [{"target_tokens_per_segment": 40.0}]}, "levels[0].target_tokens_per_segment"),
    ({"levels": [{"target_tokens_per_segment": "3"}]}, "levels[0].target_tokens_per_segment"),
    ({"levels": [{"restart_dead_codes": "yes"}]}, "levels[0].restart_dead_codes"),
    ({"levels": [{"colour": 3}]}, "unknown keys"),
    ({"top_lm": {"num_layers": 0}}, "top_lm.num_layers"),
    ({"top_lm": {"rope_theta": -1}}, "top_lm.rope_theta"),
    ({"top_lm": [1]}, "top_lm must be a dict"),
    ({"vocab_size": 300}, "vocab_size"),
    ({"entropy_loss_weight": -1}, "entropy_loss_weight"),
    ({"entropy_loss_weight": "1"}, "entropy_loss_weight"),
    ({"entropy_loss_weight": None}, "entropy_loss_weight"),
    ({"initializer_range": -1}, "initializer_range"),
]


@pytest.mark.parametrize("kwargs,field", CASES, ids=[f for _, f in CASES])
def test_impossible_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=re.escape(field)) as e:
        HierAEConfig(**kwargs)
    message = str(e.value)
    assert "invalid" in message or "must be" in message or "allowed" in message, message


def test_unknown_keys_list_the_allowed_ones():
    with pytest.raises(ValueError, match=r"allowed keys are \[.*'codebook_size'"):
        HierAEConfig(levels=[{"colour": 3}])


def test_saved_config_with_impossible_values(tmp_path):
    tiny_config(1).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["levels"][0]["codebook_size"] = 0
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"levels\[0\].codebook_size=0 is invalid: must be an integer >= 2"):
        HierAEConfig.from_pretrained(tmp_path)
