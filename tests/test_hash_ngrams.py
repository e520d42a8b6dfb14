"""Hashed n-gram embeddings (hash_ngrams.py): the docstring's worked example, a streamed position
equals the whole row's, left padding changes nothing, and the config's checks."""

from __future__ import annotations

import pytest
import torch

from hier_ae import HierAEConfig
from hier_ae.configuration_hier_ae import MAX_COMPOSITE_CODES
from hier_ae.hash_ngrams import _BASE, _PRIME, HashNgramEmbedding, last_ids, ngram_hash, shift_in


def _emb() -> HashNgramEmbedding:
    torch.manual_seed(0)
    return HashNgramEmbedding([2, 3], buckets=97, dim=8)


def test_worked_example():
    """ngrams (2, 3), ids [7, 8, 9]: position 0 gets nothing, position 1 the 2-gram (7, 8), position
    2 the 2-gram (8, 9) and the 3-gram (7, 8, 9)."""
    emb = _emb()
    t2, t3 = (t.weight for t in emb.tables)
    out = emb(torch.tensor([[7, 8, 9]]))  # (1, 3, 8)
    h = lambda *ids: ngram_hash(torch.tensor(ids), 97)  # noqa: E731
    torch.testing.assert_close(out[0, 0], torch.zeros(8))
    torch.testing.assert_close(out[0, 1], t2[h(7, 8)])
    torch.testing.assert_close(out[0, 2], t2[h(8, 9)] + t3[h(7, 8, 9)])
    assert emb.history == 2


def test_the_hash_equals_a_rolling_hash():
    """ngram_hash's one product gives the rolling hash's values (h = (h * BASE + id + 1) mod PRIME per
    id), so the buckets a saved model's tables were trained with never move; ids up to the largest
    code id of a level (MAX_COMPOSITE_CODES + specials)."""
    g = torch.Generator().manual_seed(0)
    for n in range(2, 9):
        windows = torch.randint(0, MAX_COMPOSITE_CODES + 3, (500, n), generator=g)
        h = torch.zeros(500, dtype=torch.long)
        for k in range(n):
            h = (h * _BASE + windows[:, k] + 1) % _PRIME
        assert torch.equal(ngram_hash(windows, 4096), h % 4096)


def test_a_streamed_position_equals_the_whole_row():
    emb = _emb()
    ids = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    whole = emb(ids)  # (2, 9, 8)
    for t in range(9):
        history = last_ids(ids, torch.full((2,), t - 1), emb.history)  # (2, 2) the ids before t
        torch.testing.assert_close(emb(ids[:, t : t + 1], history)[:, 0], whole[:, t])


def test_padding_and_missing_history_add_nothing():
    """-1 (no token) before the row: a left-padded row equals the row alone."""
    emb = _emb()
    row = torch.tensor([[5, 6, 7, 8]])
    padded = torch.tensor([[-1, -1, 5, 6, 7, 8]])
    torch.testing.assert_close(emb(padded)[:, 2:], emb(row))
    assert emb(padded)[:, :2].abs().sum() == 0


def test_last_ids_example():
    """hash_ngrams.last_ids' docstring: ids [[5, 6, 7]], last [1], count 3 -> [[-1, 5, 6]]."""
    assert last_ids(torch.tensor([[5, 6, 7]]), torch.tensor([1]), 3).tolist() == [[-1, 5, 6]]
    assert last_ids(torch.tensor([[5, 6, 7]]), torch.tensor([2]), 0).shape == (1, 0)
    assert shift_in(torch.tensor([[-1, 5]]), torch.tensor([6])).tolist() == [[5, 6]]  # its docstring


def test_the_hash_spreads_ngrams_over_the_buckets():
    windows = torch.cartesian_prod(torch.arange(259), torch.arange(259))  # every byte 2-gram
    counts = torch.bincount(ngram_hash(windows, 4096), minlength=4096)
    assert (counts > 0).sum() > 4000  # 67,081 bigrams fill nearly every bucket
    assert counts.max() < 4 * counts.float().mean()


@pytest.mark.parametrize("value", [[1], [3, 3], [9], "3", [2.0]])
def test_decoder_ngrams_are_checked(value):
    with pytest.raises(ValueError, match=r"levels\[0\]\.decoder_ngrams.*distinct integers in \[2, 8\]"):
        HierAEConfig(levels=[{"decoder_ngrams": value}])


def test_ngram_buckets_are_checked():
    with pytest.raises(ValueError, match=r"levels\[0\]\.ngram_buckets.*integer >= 1"):
        HierAEConfig(levels=[{"decoder_ngrams": [3], "ngram_buckets": 0}])


def test_the_model_card_names_the_decoder_ngrams():
    from hier_ae.publishing.model_card import _architecture

    cfg = HierAEConfig(levels=[{"decoder_ngrams": [3, 4, 5], "ngram_buckets": 4096}, {}])
    lines = _architecture(cfg).splitlines()
    assert lines[0].endswith(", decoder hashed n-grams [3, 4, 5] x 4096 rows")
    assert "n-grams" not in lines[1]  # level 1 has none


def test_ngram_dropout_acts_in_training_only():
    """`ngram_dropout` zeroes part of the summed embeddings in training (scaling the rest by
    1 / (1 - p)); in eval mode the output is the plain sum, as streaming reads it."""
    plain = _emb()
    drop = HashNgramEmbedding([2, 3], buckets=97, dim=8, dropout=0.5)
    drop.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 259, (4, 30), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(drop.eval()(ids), plain(ids))
    torch.manual_seed(0)
    out = drop.train()(ids)
    ref = plain(ids)
    kept = out != 0
    assert 0.3 < kept[ref != 0].float().mean() < 0.7
    torch.testing.assert_close(out[kept], 2.0 * ref[kept])


@pytest.mark.parametrize("value", [-0.1, 1.0, True])
def test_ngram_dropout_is_checked(value):
    with pytest.raises(ValueError, match=r"levels\[0\]\.ngram_dropout.*\[0, 1\)"):
        HierAEConfig(levels=[{"decoder_ngrams": [3], "ngram_dropout": value}])
