"""`HierAECache`: the generation state `HierAEForCausalLM` returns as `past_key_values`.

transformers' `generate()` feeds only the newest token after the prefill, so the cache holds all
the state the model needs: a `StreamState` (per level the windowed KV caches of the entropy model,
encoder and decoder, the open segment, the boundary state and the current context; the KV cache
of the top LM). Per new byte, each byte-level module processes one position and each code-level
module one position per new code (DESIGN §7).
"""

from __future__ import annotations

import torch


class HierAECache:
    is_compileable = False
    is_croppable = False

    def __init__(self):
        self.state = None  # a StreamState once the prompt has been read
        self.seen = 0  # ids read so far (prompt + fed-back tokens)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        if self.state is not None:
            self.state.reorder(beam_idx)
