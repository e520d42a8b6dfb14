"""`HierAECache`: the generation state `HierAEForCausalLM` returns as `past_key_values`.

transformers' `generate()` feeds only the newest token after the prefill, so the cache must hold
everything the model needs. This version keeps the ids and mask seen so far and the model
recomputes the stack over them at every step: exact (it is the uncached computation), but
O(T) per new byte.
"""

from __future__ import annotations

import torch


class HierAECache:
    is_compileable = False
    is_croppable = False

    def __init__(self):
        self.input_ids: torch.Tensor | None = None  # (B, n) every id seen so far
        self.attention_mask: torch.Tensor | None = None  # (B, n)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self.input_ids is None else self.input_ids.shape[1]

    def extend(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        """Append the new ids; return (all ids, their mask, number of new ids).

        `attention_mask` may cover all ids so far (generate's convention) or only the new ones.
        """
        if input_ids is None or input_ids.dim() != 2:
            raise ValueError("input_ids must be a (batch, length) tensor when a cache is used.")
        n_new = input_ids.shape[1]
        if self.input_ids is None:
            ids = input_ids
        else:
            if input_ids.shape[0] != self.input_ids.shape[0]:
                raise ValueError(
                    f"batch size {input_ids.shape[0]} does not match the cache's {self.input_ids.shape[0]}."
                )
            ids = torch.cat([self.input_ids, input_ids], dim=1)
        if attention_mask is None:
            new_mask = torch.ones_like(input_ids)
            mask = (
                new_mask if self.attention_mask is None else torch.cat([self.attention_mask, new_mask], dim=1)
            )
        elif attention_mask.shape[1] == ids.shape[1]:
            mask = attention_mask
        elif attention_mask.shape[1] == n_new and self.attention_mask is not None:
            mask = torch.cat([self.attention_mask, attention_mask], dim=1)
        else:
            raise ValueError(
                f"attention_mask has {attention_mask.shape[1]} columns; "
                f"expected {ids.shape[1]} (all ids) or {n_new} (the new ones)."
            )
        self.input_ids, self.attention_mask = ids, mask.long()
        return ids, mask, n_new

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        self.input_ids = self.input_ids.index_select(0, beam_idx)
        self.attention_mask = self.attention_mask.index_select(0, beam_idx)
