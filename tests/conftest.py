"""Shared test fixtures."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

# Tiny test models run faster on one thread than on two (thread start-up and contention cost
# more than they save); set before torch is imported, and inherited by spawned processes.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from helpers import (
    CORPUS_PAIRS,
    CORPUS_VOCAB,
    TEST_DATA,
    TEST_DECODING,
    tiny_translation_model,
    train_wordpieces,
)

from nmt.bundle import write_bundle

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CORPORA = TEST_DATA / "corpora"


@pytest.fixture(scope="session")
def corpora() -> Path:
    """Slices of the real corpora committed in tests/data/corpora, in the layout of
    ../shared/data (tests/data/make_corpora.py writes them): what the fast tests read."""
    return CORPORA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real corpora beside the checkout (../shared/data); fail loudly if absent."""
    if not (SHARED_DATA / "MANIFEST.md").is_file():
        pytest.fail(
            f"real corpora not found at {SHARED_DATA}: these tests need ../shared/data "
            "(Multi30k, PTB characters, Tiny Shakespeare, MNIST) beside the repository"
        )
    return SHARED_DATA


@pytest.fixture(scope="module")
def corpus(corpora: Path, tmp_path_factory) -> Path:
    """The first real Multi30k pairs of every split, prepared by ``nmt prep translation``."""
    from data_prep import parallel_corpus

    raw = tmp_path_factory.mktemp("multi30k")
    for split, count in CORPUS_PAIRS.items():
        for lang in ("en", "de"):
            with gzip.open(corpora / "multi30k" / f"{split}.{lang}.gz", "rt") as file:
                lines = "".join(next(file) for _ in range(count))
            (raw / f"{split}.{lang}.gz").write_bytes(gzip.compress(lines.encode("utf-8")))
    out = tmp_path_factory.mktemp("prepared") / "multi30k.en-de"
    argv = ["--corpus", "multi30k", "--src", "en", "--tgt", "de", "--data-dir", str(raw)]
    argv += ["--out", str(out), "--vocab-size", str(CORPUS_VOCAB), "--num-proc", "1"]
    assert parallel_corpus.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, corpora) -> Path:
    """A tiny translation bundle (untrained model, real wordpieces) for the server tests."""
    return write_bundle(
        tmp_path_factory.mktemp("bundles") / "en-de",
        task="translation",
        model=tiny_translation_model(),
        wordpieces=train_wordpieces(corpora).model_bytes,
        decoding=TEST_DECODING,
    )
