"""Awkward text through the tokenizer and the model: each input works as documented or raises clearly.

Tried here, with what each gets (an untrained tiny model, max_input_bytes=64):

- "" (one empty string)                  -> ids []; the model: ValueError "empty" (no token to encode)
- [] (an empty batch)                    -> the tokenizer: ValueError (transformers' own message)
- ["", "ab"] padded                      -> the empty row has no code and decodes to nothing;
                                            `generate`: ValueError "no real token" for that row
- "\\x00a" (NUL bytes)                    -> ids [3, 100]: a byte like any other, never padding (0)
- bytes that are not UTF-8 (ids 0xff+3)  -> encode/decode run; the tokenizer decodes them as U+FFFD
- a str with a lone surrogate            -> ValueError naming the character and what is allowed
- b"..." given to the tokenizer          -> ValueError (transformers: str, list of str or ids)
- literal "<s>" / "</s>" in text         -> their bytes; the model sees no BOS/EOS inside the text
- one byte ("a", or <s> alone)           -> encode, decode, forward, predict and generate run
- longer than max_input_bytes            -> ValueError "exceeds max_input_bytes ... split into chunks"
- generating past max_input_bytes        -> ValueError "over max_input_bytes" before the model reads more
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_TOP, tiny_level

from hier_ae import HierAEByteTokenizer, HierAEConfig, HierAEForCausalLM


@pytest.fixture(scope="module")
def tok():
    return HierAEByteTokenizer()


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    cfg = HierAEConfig(levels=[tiny_level()], top_lm=TINY_TOP, max_position_embeddings=64, max_input_bytes=64)
    return HierAEForCausalLM(cfg).eval()


def test_empty_string_and_empty_batch(tok, lm):
    assert tok("")["input_ids"] == []
    enc = tok([""], return_tensors="pt")
    assert enc["input_ids"].shape == (1, 0)
    for call in (lm.model.encode, lm.model, lm):
        with pytest.raises(ValueError, match="empty"):
            call(enc["input_ids"])
    with pytest.raises(ValueError):
        tok([], return_tensors="pt")


def test_empty_row_inside_a_batch(tok, lm):
    enc = tok(["", "ab"], return_tensors="pt", padding=True)
    codes = lm.model.encode(enc["input_ids"], enc["attention_mask"])
    assert not codes.top_mask[0].any() and codes.top_mask[1].any()
    dec = lm.model.decode(codes.top_codes, codes.top_mask)
    assert not dec.attention_mask[0].any()
    with pytest.raises(ValueError, match=r"prompt rows \[0\] have no real token"):
        lm.generate(
            **tok(["", "ab"], return_tensors="pt", padding=True, padding_side="left"), max_new_tokens=2
        )


def test_nul_bytes_are_bytes_not_padding(tok, lm):
    ids = tok("\x00a\x00", return_tensors="pt")
    assert ids["input_ids"].tolist() == [[3, 100, 3]] and ids["attention_mask"].all()
    assert tok.decode(ids["input_ids"][0]) == "\x00a\x00"
    enc = lm.model.encode(ids["input_ids"], ids["attention_mask"])
    assert enc.level_mask[0].all()  # no NUL was taken for padding


def test_invalid_utf8_bytes(tok, lm):
    raw = b"\xff\xfe\xc3"  # not UTF-8: the model reads bytes, the tokenizer decodes with replacement
    ids = torch.tensor([[b + 3 for b in raw]])
    enc = lm.model.encode(ids)
    lm.model.decode(enc.top_codes, enc.top_mask)
    assert tok.decode(ids[0]) == "\ufffd\ufffd\ufffd"


def test_lone_surrogate_and_bytes_input(tok):
    with pytest.raises(ValueError, match=r"'\\ud800' at position 2, a lone surrogate.*allowed"):
        tok("ab\ud800")
    with pytest.raises(ValueError, match="Input must be"):
        tok(b"abc")


@pytest.mark.parametrize("text", ["<s>", "</s>", "a</s>b<s>", "<pad>"])
def test_special_token_text_stays_bytes(tok, lm, text):
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == [b + 3 for b in text.encode()]
    enc = lm.model.encode(ids)
    assert not bool((enc.level_tokens[0] < 3).any())  # no pad, eos or bos inside the text


@pytest.mark.parametrize("ids", [[100], [2], [2, 1]])
def test_one_byte_inputs(lm, ids):
    x = torch.tensor([ids])
    enc = lm.model.encode(x)
    assert enc.top_mask.sum() >= 1
    lm.model.decode(enc.top_codes, enc.top_mask)
    assert torch.isfinite(lm.model(x).loss)
    assert lm(x, use_cache=False).logits.shape == (1, len(ids), 259)
    out = lm.generate(x, max_new_tokens=2, do_sample=False)
    assert out.shape[1] <= len(ids) + 2 and out[0, : len(ids)].tolist() == ids


def test_longer_than_the_maximum(tok, lm):
    ids = tok("x" * 65, return_tensors="pt")["input_ids"]
    for call in (lm.model.encode, lm.model, lm):
        with pytest.raises(ValueError, match="input length 65 exceeds max_input_bytes=64; split"):
            call(ids)
    prompt = tok("x" * 62, return_tensors="pt")["input_ids"]
    kw = {"do_sample": False, "min_new_tokens": 3}
    # the model reads at most 64 ids: the 3rd new id is predicted from 64, and never read
    assert lm.generate(prompt, max_new_tokens=3, **kw).shape[1] == 65
    with pytest.raises(ValueError, match="would feed the model 65 ids, over max_input_bytes=64"):
        lm.generate(prompt, max_new_tokens=4, **kw)
