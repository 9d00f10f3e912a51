"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

# Tiny test models run faster on one thread than on two (thread start-up and contention cost
# more than they save); set before torch is imported, and inherited by spawned processes.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real corpora beside the checkout (../shared/data); fail loudly if absent."""
    if not (SHARED_DATA / "MANIFEST.md").is_file():
        pytest.fail(
            f"real corpora not found at {SHARED_DATA}: these tests need ../shared/data "
            "(Multi30k, PTB characters, Tiny Shakespeare, MNIST) beside the repository"
        )
    return SHARED_DATA
