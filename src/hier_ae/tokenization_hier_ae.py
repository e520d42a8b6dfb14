"""Byte-level tokenizer for ``hier_ae`` (ByT5-compatible byte ids).

Vocabulary (259 ids)::

    0 = <pad>    1 = </s> (eos)    2 = <s> (bos)    byte b -> b + 3

Text is always bytes: the string is UTF-8 encoded and every byte becomes one id. Special tokens are
never recognised inside text (``split_special_tokens=True`` by default), so the literal text ``"<s>"``
encodes as its three bytes and user text can never inject a BOS or EOS. For every ``str`` ``s``::

    tok(s)["input_ids"] == [b + 3 for b in s.encode("utf-8")]

The tokenizer never appends ``</s>``: lm-eval splits context and continuation by token counts, and an
automatic EOS would shift the continuation. By default it adds nothing at all; ``prepend_bos=True``
(alias ``add_bos_token=True`` at load time) prepends ``<s>``.

Worked example::

    >>> tok = HierAEByteTokenizer()
    >>> tok("hi")["input_ids"]            # "h" = 0x68 = 104, "i" = 0x69 = 105; each + 3
    [107, 108]
    >>> tok.encode_document("hi")         # a document is <s> + bytes + </s>
    [2, 107, 108, 1]
    >>> tok.decode([2, 107, 108, 1], skip_special_tokens=True)
    'hi'

Decoding bytes that are not valid UTF-8 uses ``errors="replace"`` and never raises. Ids outside
``[0, 259)`` raise ``ValueError``.

The ids are defined once, in ``configuration_hier_ae.py`` (``PAD_ID``, ``EOS_ID``, ``BOS_ID``,
``BYTE_OFFSET``); ``save_pretrained`` copies both files next to the weights for ``trust_remote_code``.
"""

from __future__ import annotations

from transformers import AddedToken, PreTrainedTokenizer

from .configuration_hier_ae import BOS_ID, BYTE_OFFSET, EOS_ID, PAD_ID

_NUM_BYTES = 256


class HierAEByteTokenizer(PreTrainedTokenizer):
    """UTF-8 byte tokenizer: ``0=<pad>``, ``1=</s>``, ``2=<s>``, byte ``b -> b + 3`` (vocab 259).

    Args:
        pad_token: padding token, id 0.
        eos_token: end-of-sequence token, id 1. Never appended automatically.
        bos_token: beginning-of-sequence token, id 2.
        prepend_bos: if True, ``add_special_tokens=True`` (the default of ``__call__``/``encode``)
            prepends ``<s>``. The alias ``add_bos_token`` is accepted too (lm-eval passes it).
        split_special_tokens: defaults to True, so special-token text inside a string is encoded as
            bytes. Do not change it unless you want ``"<s>"`` in text to become id 2.
    """

    model_input_names = ["input_ids", "attention_mask"]
    vocab_files_names = {}

    def __init__(
        self,
        pad_token: str | AddedToken = "<pad>",
        eos_token: str | AddedToken = "</s>",
        bos_token: str | AddedToken = "<s>",
        prepend_bos: bool = False,
        **kwargs,
    ) -> None:
        pad_token, eos_token, bos_token = (
            AddedToken(t, lstrip=False, rstrip=False, special=True) if isinstance(t, str) else t
            for t in (pad_token, eos_token, bos_token)
        )
        # Fixed ids for the specials; must exist BEFORE super().__init__ (it calls get_vocab and would
        # otherwise append the specials at the end of the vocabulary).
        self._added_tokens_decoder = {PAD_ID: pad_token, EOS_ID: eos_token, BOS_ID: bos_token}
        self.offset = BYTE_OFFSET
        # save_pretrained drops add_bos_token/add_eos_token, hence our own name; accept the alias.
        add_bos = kwargs.pop("add_bos_token", None)
        if add_bos is not None:
            prepend_bos = add_bos
        kwargs.pop("add_eos_token", None)  # EOS is never appended, whatever is asked
        self.prepend_bos = bool(prepend_bos)
        kwargs.setdefault("split_special_tokens", True)
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(
            pad_token=pad_token,
            eos_token=eos_token,
            bos_token=bos_token,
            prepend_bos=self.prepend_bos,
            **kwargs,
        )

    # ------------------------------------------------------------------ vocabulary

    @property
    def vocab_size(self) -> int:
        return _NUM_BYTES + self.offset

    def get_vocab(self) -> dict[str, int]:
        """Byte tokens are the one-character strings ``chr(b)``; specials map to their fixed ids."""
        vocab = {chr(b): b + self.offset for b in range(_NUM_BYTES)}
        for idx, token in self._added_tokens_decoder.items():
            vocab[str(token)] = idx
        return vocab

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        return ()  # the vocabulary is fixed; nothing to write

    # ------------------------------------------------------------------ text <-> tokens <-> ids

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(
                f"HierAEByteTokenizer: the text holds {text[e.start : e.end]!r} at position {e.start}, "
                "a lone surrogate that UTF-8 cannot encode; allowed: any str for which "
                "s.encode('utf-8') succeeds (read files as bytes, or decode them with errors='replace')."
            ) from None
        return [chr(b) for b in data]

    def _convert_token_to_id(self, token: str) -> int:
        if len(token) == 1 and ord(token) < _NUM_BYTES:
            return ord(token) + self.offset
        return self.pad_token_id  # unreachable for text (every token is one byte)

    def _convert_id_to_token(self, index: int) -> str:
        index = int(index)
        if not 0 <= index < self.vocab_size:
            raise ValueError(
                f"HierAEByteTokenizer: token id {index} is out of range; allowed ids are "
                f"[0, {self.vocab_size}) (0=<pad>, 1=</s>, 2=<s>, byte b -> b + {self.offset})."
            )
        if index < self.offset:  # a special token removed from the added tokens; not expected
            return str(self._added_tokens_decoder.get(index, ""))
        return chr(index - self.offset)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Join byte tokens into bytes, then decode UTF-8 with ``errors="replace"``."""
        out = bytearray()
        for token in tokens:
            if token in self._added_tokens_encoder:  # special: its text
                out += token.encode("utf-8")
            elif len(token) == 1 and ord(token) < _NUM_BYTES:
                out.append(ord(token))
            else:  # anything else (never produced by this tokenizer): its text
                out += token.encode("utf-8")
        return out.decode("utf-8", errors="replace")

    def _decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str:
        ids = [token_ids] if isinstance(token_ids, int) else list(token_ids)
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(
                    f"HierAEByteTokenizer.decode: token id {i} is out of range; allowed ids are "
                    f"[0, {self.vocab_size})."
                )
        return super()._decode(ids, skip_special_tokens=skip_special_tokens, **kwargs)

    # ------------------------------------------------------------------ special tokens

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """``[<s>] + a + b`` if ``prepend_bos`` else ``a + b``. Never appends ``</s>``."""
        prefix = [self.bos_token_id] if self.prepend_bos else []
        return prefix + list(token_ids_0) + list(token_ids_1 or [])

    def get_special_tokens_mask(
        self,
        token_ids_0: list[int],
        token_ids_1: list[int] | None = None,
        already_has_special_tokens: bool = False,
    ) -> list[int]:
        if already_has_special_tokens:
            specials = set(self.all_special_ids)
            return [1 if i in specials else 0 for i in list(token_ids_0) + list(token_ids_1 or [])]
        prefix = [1] if self.prepend_bos else []
        return prefix + [0] * (len(token_ids_0) + len(token_ids_1 or []))

    def create_token_type_ids_from_sequences(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        return [0] * len(self.build_inputs_with_special_tokens(token_ids_0, token_ids_1))

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return 1 if self.prepend_bos else 0

    # ------------------------------------------------------------------ convenience

    def encode_document(self, text: str) -> list[int]:
        """Frame one document as ``[<s>] + bytes + [</s>]``, e.g. ``"hi" -> [2, 107, 108, 1]``.

        Independent of ``prepend_bos``; special-token text inside ``text`` stays bytes. Used by the
        training code, where every document is framed this way.
        """
        return [self.bos_token_id] + [b + self.offset for b in text.encode("utf-8")] + [self.eos_token_id]


__all__ = ["HierAEByteTokenizer"]
