"""A trained model's levels with a fresh top code LM of another shape (issue 21: the codec's code bits).

    python -m bench.swap_top_lm --model runs/ts/model --out runs/ts-lm128/model \
        --set hidden_size=128 --set num_layers=4 --set intermediate_size=384 --set dropout=0.1

The codec (`hier_ae.codes.codec`) prices each top code under the top LM, so a better top LM lowers the
rate without touching the codes. This writes a model folder whose levels (entropy models, encoders,
codebooks, decoders) are the source's, bit for bit, and whose top LM is new (`top_lm` config keys from
`--set`, seeded weights); the top level's `context_proj` (predict mode's map from the top LM's
width) is new too, as its shape follows the top LM's. Train the new top LM alone on the source's codes:

    python examples/encode_dataset.py --model runs/ts-lm128/model --data DOCS --split train \
        --out runs/ts-lm128/codes
    accelerate launch examples/train.py --config CONFIG --data DOCS --output-dir runs/ts-lm128-trained \
        --set data.code_shards=runs/ts-lm128/codes \
        --set "training.stages=[{kind: top_lm, steps: 3000, lr: 2.0e-3}]"

(the model section of CONFIG is not used with code shards). Predict mode (the causal LM) needs a
`predict` stage after that: its context maps start untrained.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml


def swap_top_lm(model, top_lm: dict, seed: int = 0):
    """A new `HierAEModel`: `model`'s config with `top_lm` keys replaced, `model`'s level weights
    copied, the top LM and the top level's context map freshly initialised (seeded)."""
    from hier_ae import HierAEConfig, HierAEModel

    cfg = model.config.to_dict()
    unknown = set(top_lm) - set(cfg["top_lm"])
    if unknown:
        raise ValueError(f"unknown top_lm keys {sorted(unknown)}: one of {sorted(cfg['top_lm'])}")
    cfg["top_lm"] = {**cfg["top_lm"], **top_lm}
    torch.manual_seed(seed)
    new = HierAEModel(HierAEConfig.from_dict(cfg))

    top = f"levels.{model.num_levels - 1}.context_proj."

    def fresh(name: str) -> bool:
        return name.startswith(("top_lm.", top))

    kept = {k: v for k, v in model.state_dict().items() if not fresh(k)}
    missing, unexpected = new.load_state_dict(kept, strict=False)
    if unexpected or not all(fresh(k) for k in missing):
        raise RuntimeError(f"swap_top_lm: unexpected {unexpected}, missing level weights {missing}")
    return new


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="saved model folder whose levels are kept")
    p.add_argument("--out", required=True, help="folder for the new model (must not exist)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a top_lm config key")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from hier_ae import HierAEModel
    from hier_ae.codes.shards import check_model_folder

    out = Path(args.out)
    if out.exists():
        raise FileExistsError(f"{out} exists: choose a new folder")
    sets = {}
    for kv in args.set:
        if "=" not in kv:
            raise ValueError(f"--set {kv!r} is invalid: KEY=VALUE, e.g. hidden_size=128")
        key, value = kv.split("=", 1)
        sets[key] = yaml.safe_load(value)
    model = HierAEModel.from_pretrained(check_model_folder(args.model))
    new = swap_top_lm(model, sets, seed=args.seed)
    new.save_pretrained(out)
    n = sum(t.numel() for t in new.top_lm.parameters())
    print(
        f"{out}: the levels of {args.model} with a new top LM ({n:,} parameters: {new.config.top_lm_config})"
    )
    return out


if __name__ == "__main__":
    from hier_ae.cli import run

    run(main)
