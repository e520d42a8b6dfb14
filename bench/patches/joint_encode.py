"""Exact lines of a model trained with code_choice_by_decoder.patch, encoded with the training-time rule.

Run from a checkout with the patch applied (A-series in bench/experiments.md):

    PYTHONPATH=src:. python bench/patches/joint_encode.py MODEL_DIR VAL_TXT K

Each batch of held-out lines (bench.recon's sample) is encoded by `HierLevel._abs_choose` with K
candidates (K decoder passes, every segment switched to its i-th nearest code at once) and decoded
by the unchanged greedy `model.decode`. Autoencoder figures.
"""

import sys

import torch

import hier_ae.level as level_module
from bench.recon import decoded_ids, held_out_lines, load_text
from hier_ae.data.batching import frame_document, pad_rows
from hier_ae.modeling_hier_ae import HierAEModel


def main(model_dir: str, text: str, k: int) -> float:
    level_module.ABS_K = k
    model = HierAEModel.from_pretrained(model_dir).eval()
    lvl = model.levels[0]
    _, docs = load_text(text)
    refs = [frame_document(t).tolist() for t in held_out_lines(docs, 256)]
    exact = 0
    with torch.no_grad():
        for i in range(0, len(refs), 32):
            batch = refs[i : i + 32]
            ids, mask = pad_rows([torch.tensor(r) for r in batch])
            valid = mask.bool()
            p = lvl.bottom_up(ids, valid, encode=False)
            _, _, pooled = lvl.encode_segments(ids, valid, p.positions, p.layout)
            codes = lvl._abs_choose(p, pooled)  # (B, S)
            rows = decoded_ids(model.decode(codes, p.layout.seg_mask, level=0))
            exact += sum(d == r for d, r in zip(rows, batch))
    return exact / len(refs)


if __name__ == "__main__":
    rate = main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    print(f"exact lines, joint choice of {sys.argv[3]}: {rate:.4f}")
