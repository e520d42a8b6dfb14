"""HierAEByteTokenizer: byte ids, no automatic EOS, decoding, padding, and remote-code round trip."""

import doctest
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hier_ae.tokenization_hier_ae as tok_module
from hier_ae.tokenization_hier_ae import HierAEByteTokenizer

SPECIAL_TEXTS = ["<s>", "</s>", "<pad>"]

# Arbitrary text with special-token text spliced in at random places.
text_with_specials = st.lists(
    st.one_of(st.text(max_size=20), st.sampled_from(SPECIAL_TEXTS)), max_size=8
).map("".join)

SAMPLES = [
    "",
    "hi",
    "héllo wörld ✓",
    "a<s>b</s><pad>c",
    "  leading and trailing  ",
    " . , 's n't ",  # clean_up_tokenization_spaces would change this
    "tab\tnewline\nnull\x00end",
    "emoji 🙂 and CJK 漢字",
]


@pytest.fixture(scope="module")
def tok():
    return HierAEByteTokenizer()


def byte_ids(s: str) -> list[int]:
    return [b + 3 for b in s.encode("utf-8")]


# ---------------------------------------------------------------- vocabulary and docstring


def test_vocab_and_special_ids(tok):
    assert tok.vocab_size == 259
    assert len(tok) == 259
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2)
    assert (tok.pad_token, tok.eos_token, tok.bos_token) == ("<pad>", "</s>", "<s>")
    vocab = tok.get_vocab()
    assert len(vocab) == 259
    assert sorted(vocab.values()) == list(range(259))
    assert vocab["<pad>"] == 0 and vocab["</s>"] == 1 and vocab["<s>"] == 2
    assert vocab[chr(0)] == 3 and vocab[chr(255)] == 258
    assert tok.model_input_names == ["input_ids", "attention_mask"]
    assert tok.split_special_tokens is True
    assert tok.save_vocabulary("/nonexistent") == ()
    assert tok.model_max_length == int(1e30)  # the "no limit" sentinel, left alone


def test_module_docstring_example():
    result = doctest.testmod(tok_module, extraglobs={"HierAEByteTokenizer": HierAEByteTokenizer})
    assert result.attempted >= 3
    assert result.failed == 0


def test_worked_example(tok):
    assert tok("hi")["input_ids"] == [107, 108]
    assert tok.encode_document("hi") == [2, 107, 108, 1]
    assert tok.encode_document("") == [2, 1]
    assert tok.encode_document("<s>") == [2, *byte_ids("<s>"), 1]


# ---------------------------------------------------------------- encoding: text is always bytes


@settings(derandomize=True, deadline=None, max_examples=200)
@given(st.text())
def test_encode_is_bytes_and_roundtrips(s):
    tok = HierAEByteTokenizer()
    ids = tok(s)["input_ids"]
    assert ids == byte_ids(s)
    assert tok(s, add_special_tokens=False)["input_ids"] == ids
    assert tok.encode(s) == ids
    assert tok.decode(ids) == s


@settings(derandomize=True, deadline=None, max_examples=200)
@given(text_with_specials)
def test_special_token_text_is_bytes(s):
    tok = HierAEByteTokenizer()
    ids = tok(s)["input_ids"]
    assert ids == byte_ids(s)
    assert tok(s, add_special_tokens=False)["input_ids"] == ids
    assert all(i >= 3 for i in ids)
    assert tok.decode(ids) == s


def test_special_text_examples(tok):
    assert tok("<s>")["input_ids"] == [63, 118, 65]
    assert tok.encode("a<s>b</s><pad>") == byte_ids("a<s>b</s><pad>")
    assert tok.tokenize("a<s>") == ["a", "<", "s", ">"]
    assert tok.convert_tokens_to_ids(tok.tokenize("é")) == [0xC3 + 3, 0xA9 + 3]


@pytest.mark.parametrize("s", SAMPLES)
def test_samples_roundtrip(tok, s):
    ids = tok(s)["input_ids"]
    assert ids == byte_ids(s)
    assert tok.decode(ids) == s


# ---------------------------------------------------------------- decoding


@settings(derandomize=True, deadline=None, max_examples=200)
@given(st.binary(max_size=64))
def test_decode_arbitrary_bytes(data):
    tok = HierAEByteTokenizer()
    ids = [b + 3 for b in data]
    assert tok.decode(ids) == data.decode("utf-8", errors="replace")


def test_decode_invalid_utf8_examples(tok):
    for data in [b"\xff", b"\xc3", b"a\xe2\x82", b"\x80\x80abc", b"\xed\xa0\x80"]:
        assert tok.decode([b + 3 for b in data]) == data.decode("utf-8", errors="replace")


def test_decode_specials(tok):
    ids = [2, 107, 108, 1, 0, 0]
    assert tok.decode(ids) == "<s>hi</s><pad><pad>"
    assert tok.decode(ids, skip_special_tokens=True) == "hi"
    assert tok.decode(1) == "</s>"
    assert tok.decode(107) == "h"
    assert tok.decode(torch.tensor(ids), skip_special_tokens=True) == "hi"
    assert tok.batch_decode([[2, 107, 1], [108, 0]], skip_special_tokens=True) == ["h", "i"]
    assert tok.convert_ids_to_tokens([0, 1, 2, 107]) == ["<pad>", "</s>", "<s>", "h"]


@pytest.mark.parametrize("bad", [300, -1, 259])
def test_decode_out_of_range_raises(tok, bad):
    with pytest.raises(ValueError, match=rf"token id {bad} is out of range.*\[0, 259\)"):
        tok.decode([107, bad])
    with pytest.raises(ValueError, match=rf"token id {bad}"):
        tok.decode(bad)


# ---------------------------------------------------------------- no EOS, optional BOS


def test_never_appends_eos(tok):
    for s in ["abc", "", "<s>x</s>"]:
        ids = tok(s)["input_ids"]
        assert 1 not in ids and 2 not in ids
        assert tok(s, add_special_tokens=True)["input_ids"] == ids
    assert tok.num_special_tokens_to_add() == 0
    assert tok.num_special_tokens_to_add(pair=True) == 0
    assert tok.build_inputs_with_special_tokens([5, 6]) == [5, 6]
    assert tok.build_inputs_with_special_tokens([5], [6]) == [5, 6]
    assert tok.get_special_tokens_mask([5, 6]) == [0, 0]
    assert tok.get_special_tokens_mask([2, 5, 1], already_has_special_tokens=True) == [1, 0, 1]
    assert tok("ab", "cd")["input_ids"] == byte_ids("abcd")


@pytest.mark.parametrize("kwargs", [{"prepend_bos": True}, {"add_bos_token": True}])
def test_prepend_bos(kwargs):
    tok = HierAEByteTokenizer(**kwargs)
    assert tok.prepend_bos is True
    assert tok("abc")["input_ids"] == [2, *byte_ids("abc")]
    assert tok.encode("abc") == [2, *byte_ids("abc")]
    assert tok("abc", add_special_tokens=False)["input_ids"] == byte_ids("abc")
    assert 1 not in tok("abc")["input_ids"]
    assert tok.num_special_tokens_to_add() == 1
    assert tok.build_inputs_with_special_tokens([5], [6]) == [2, 5, 6]
    enc = tok("ab", return_special_tokens_mask=True)
    assert enc["special_tokens_mask"] == [1, 0, 0]
    assert tok.get_special_tokens_mask([5, 6]) == [1, 0, 0]
    assert tok.decode(tok.encode("abc"), skip_special_tokens=True) == "abc"


def test_add_eos_token_is_ignored():
    tok = HierAEByteTokenizer(add_eos_token=True)
    assert tok("abc")["input_ids"] == byte_ids("abc")


# ---------------------------------------------------------------- lm-eval's _encode_pair contract

PAIRS = [
    ("Question: 2+2=", "4"),
    ("The cat", " sat on the mat."),
    ("", "whole continuation"),
    ("context only", ""),
    ("Ünïcödé ", "✓ 漢字 🙂"),
    ("ends with a special <s", ">"),
    ("A: <s>", "</s><pad>"),
]


def _encode_pair(tok, context, continuation):
    """lm-eval's split: by token counts, with the tokenizer's default add_special_tokens."""
    whole = tok(context + continuation)["input_ids"]
    context_enc = tok(context)["input_ids"]
    return context_enc, whole[len(context_enc) :]


@pytest.mark.parametrize("context, continuation", PAIRS)
def test_encode_pair_contract(tok, context, continuation):
    context_enc, cont_enc = _encode_pair(tok, context, continuation)
    assert cont_enc == tok(continuation)["input_ids"] == byte_ids(continuation)
    assert context_enc == byte_ids(context)


@pytest.mark.parametrize("context, continuation", PAIRS)
def test_encode_pair_contract_with_bos(context, continuation):
    tok = HierAEByteTokenizer(prepend_bos=True)
    context_enc, cont_enc = _encode_pair(tok, context, continuation)
    assert context_enc == [2, *byte_ids(context)]
    assert cont_enc == byte_ids(continuation)


@settings(derandomize=True, deadline=None, max_examples=100)
@given(text_with_specials, text_with_specials)
def test_encode_pair_contract_property(context, continuation):
    tok = HierAEByteTokenizer()
    _, cont_enc = _encode_pair(tok, context, continuation)
    assert cont_enc == tok(continuation)["input_ids"]


# ---------------------------------------------------------------- padding


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("how", ["call_kwarg", "attribute"])
def test_padding(side, how):
    texts = ["a", "abc", ""]
    if how == "attribute":
        tok = HierAEByteTokenizer(padding_side=side)
        enc = tok(texts, padding=True, return_tensors="pt")
    else:
        tok = HierAEByteTokenizer()
        enc = tok(texts, padding=True, padding_side=side, return_tensors="pt")
    a, abc = byte_ids("a"), byte_ids("abc")
    if side == "left":
        ids = [[0, 0, *a], abc, [0, 0, 0]]
        mask = [[0, 0, 1], [1, 1, 1], [0, 0, 0]]
    else:
        ids = [[*a, 0, 0], abc, [0, 0, 0]]
        mask = [[1, 0, 0], [1, 1, 1], [0, 0, 0]]
    assert enc["input_ids"].tolist() == ids
    assert enc["attention_mask"].tolist() == mask
    assert set(enc.keys()) == {"input_ids", "attention_mask"}
    decoded = tok.batch_decode(enc["input_ids"], skip_special_tokens=True)
    assert decoded == texts


def test_padding_with_bos_left():
    tok = HierAEByteTokenizer(prepend_bos=True)
    enc = tok(["a", "abc"], padding=True, padding_side="left")
    assert enc["input_ids"] == [[0, 0, 2, *byte_ids("a")], [2, *byte_ids("abc")]]
    assert enc["attention_mask"] == [[0, 0, 1, 1], [1, 1, 1, 1]]


# ---------------------------------------------------------------- save / remote-code load

_LOADER = textwrap.dedent(
    """
    import json, sys
    sys.modules["hier_ae"] = None  # make sure the installed package cannot be used
    try:
        import hier_ae  # noqa: F401
        raise SystemExit("hier_ae is importable in the subprocess")
    except ImportError:
        pass
    from transformers import AutoTokenizer

    folder, samples = sys.argv[1], json.loads(sys.argv[2])
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True, use_fast=True)
    bos_tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True, add_bos_token=True)
    out = {
        "class_name": type(tok).__name__,
        "module": type(tok).__module__,
        "len": len(tok),
        "special_ids": [tok.pad_token_id, tok.eos_token_id, tok.bos_token_id],
        "prepend_bos": tok.prepend_bos,
        "ids": [tok(s)["input_ids"] for s in samples],
        "bos_ids": [bos_tok(s)["input_ids"] for s in samples],
        "decoded": [tok.decode(tok(s)["input_ids"]) for s in samples],
        "invalid": tok.decode([0xFF + 3, 0xC3 + 3, 107]),
        "doc": tok.encode_document("hi"),
        "left": tok(["a", "abc"], padding=True, padding_side="left")["input_ids"],
        "model_max_length": str(tok.model_max_length),
    }
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.slow  # end to end: a subprocess
def test_save_and_load_with_remote_code(tmp_path):
    folder = tmp_path / "tokenizer"
    HierAEByteTokenizer.register_for_auto_class("AutoTokenizer")  # hier_ae/__init__.py does this too
    HierAEByteTokenizer().save_pretrained(str(folder))

    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["auto_map"]["AutoTokenizer"][0] == "tokenization_hier_ae.HierAEByteTokenizer"
    assert config["split_special_tokens"] is True
    assert config["prepend_bos"] is False
    assert (folder / "tokenization_hier_ae.py").is_file()

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf_modules")  # no stale copy from another run
    proc = subprocess.run(
        [sys.executable, "-c", _LOADER, str(folder), json.dumps(SAMPLES)],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    out = json.loads(line[len("RESULT") :])

    tok = HierAEByteTokenizer()
    assert out["class_name"] == "HierAEByteTokenizer"
    assert out["module"].startswith("transformers_modules")
    assert out["len"] == 259
    assert out["special_ids"] == [0, 1, 2]
    assert out["prepend_bos"] is False
    assert out["ids"] == [tok(s)["input_ids"] for s in SAMPLES] == [byte_ids(s) for s in SAMPLES]
    assert out["bos_ids"] == [[2, *byte_ids(s)] for s in SAMPLES]
    assert out["decoded"] == SAMPLES
    assert out["invalid"] == tok.decode([0xFF + 3, 0xC3 + 3, 107]) == "\ufffd\ufffdh"
    assert out["doc"] == [2, 107, 108, 1]
    assert out["left"] == [[0, 0, 100], [100, 101, 102]]
    assert out["model_max_length"] == str(int(1e30))
