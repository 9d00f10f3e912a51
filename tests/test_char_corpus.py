"""Character corpora: PTB's official symbols and splits, plain text split by fraction, errors,
nothing half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_prep import char_corpus
from nmt.errors import UserError
from nmt.models.char_lm import CharVocabulary
from nmt.special_tokens import RESERVED_PIECES, UNK_ID

# Mikolov's PTB character set: 26 letters, 10 digits, N (numbers), _ (word break), the end of a
# line, and the punctuation and markup that survive in the treebank text.
PTB_SYMBOLS = sorted(
    list("abcdefghijklmnopqrstuvwxyz0123456789") + ["N", "_", "\n"] + list("#$&'*-./<>\\")
)


@pytest.fixture(scope="module")
def ptb(corpora, tmp_path_factory):
    out = tmp_path_factory.mktemp("ptb") / "ptb_char"
    assert char_corpus.main(["--ptb", str(corpora / "ptb_char"), "--out", str(out)]) == 0
    return out


def test_ptb_vocabulary_is_the_official_50_symbols(ptb):
    symbols = json.loads((ptb / "vocab.json").read_text(encoding="utf-8"))
    assert len(PTB_SYMBOLS) == 50
    assert symbols == [*RESERVED_PIECES, *PTB_SYMBOLS]


def test_ptb_splits_hold_every_symbol_in_order(ptb, corpora):
    vocabulary = CharVocabulary.load(ptb / "vocab.json")
    manifest = json.loads((ptb / "manifest.json").read_text())
    for split in ("train", "valid", "test"):
        raw = (corpora / "ptb_char" / f"ptb.char.{split}.txt").read_text()
        ids = np.load(ptb / f"{split}.npy", mmap_mode="r")
        # every symbol is followed by one space, the end of a line included
        assert len(ids) == len(raw) // 2 == manifest["splits"][split]["symbols"]
        assert ids.dtype == np.uint8 and UNK_ID not in set(np.unique(ids[:100_000]))
        head = 3_000
        assert vocabulary.decode(ids[:head].tolist()) == raw[: 2 * head : 2]


@pytest.mark.slow
def test_the_full_ptb_train_split_has_5_02m_symbols(shared_data, tmp_path):
    out = tmp_path / "ptb_char"
    assert char_corpus.main(["--ptb", str(shared_data / "ptb_char"), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["symbols"] == 5_017_482  # "5.02M" of the data manifest


def test_plain_text_is_split_by_fractions(corpora, tmp_path):
    text = (corpora / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    text = text[: text.index("\n", 20_000) + 1]  # whole lines
    n = len(text)
    source = tmp_path / "shakespeare.txt"
    source.write_text(text, encoding="utf-8")
    out = tmp_path / "chars"
    char_corpus.main(["--text", str(source), "--out", str(out), "--split", "0.8", "0.1", "0.1"])
    vocabulary = CharVocabulary.load(out / "vocab.json")
    assert vocabulary.symbols[4:] == sorted(set(text[: round(0.8 * n)]))
    parts = [np.load(out / f"{split}.npy") for split in ("train", "valid", "test")]
    assert [len(p) for p in parts] == [
        round(0.8 * n),
        round(0.9 * n) - round(0.8 * n),
        n - round(0.9 * n),
    ]
    decoded = "".join(vocabulary.symbols[i] if i != UNK_ID else "?" for p in parts for i in p)
    expected = "".join(c if c in vocabulary.index else "?" for c in text)
    assert decoded == expected


def test_bad_input_raises_user_errors(tmp_path):
    bad = tmp_path / "ptb"
    bad.mkdir()
    for split in ("train", "valid", "test"):
        (bad / f"ptb.char.{split}.txt").write_text("a b _ c \n a bc _ d \n")
    with pytest.raises(UserError, match=r"ptb.char.train.txt, line 2: 'bc' is not a single"):
        char_corpus.main(["--ptb", str(bad), "--out", str(tmp_path / "out")])
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("first line\nGr\xfc\xdfe\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.txt: invalid UTF-8 at line 2"):
        char_corpus.main(["--text", str(latin1), "--out", str(tmp_path / "out")])
    text = tmp_path / "text.txt"
    text.write_text("some text\n" * 10)
    with pytest.raises(UserError, match="must add up to 1"):
        char_corpus.main(["--text", str(text), "--split", "0.5", "0.2", "0.2"])
    with pytest.raises(UserError, match="no such file"):
        char_corpus.main(["--ptb", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_interrupted_write_leaves_no_output(tmp_path, monkeypatch):
    text = tmp_path / "text.txt"
    text.write_text("an interrupted run\n" * 20)

    def interrupted(path, array):
        raise KeyboardInterrupt

    monkeypatch.setattr(char_corpus.np, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        char_corpus.main(["--text", str(text), "--out", str(tmp_path / "out")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.txt"]
