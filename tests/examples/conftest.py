"""Shared tiny fixtures for the example tests (no downloads)."""

from __future__ import annotations

import pytest

from examples import data, models

_TEXTS = [
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 6,
    "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n" * 6,
]


@pytest.fixture(scope="session")
def tiny_corpus() -> data.CharCorpus:
    return data.CharCorpus.from_texts(_TEXTS, val_fraction=0.2, credit="test")


@pytest.fixture(scope="session")
def tiny_cfg(tiny_corpus: data.CharCorpus) -> models.TransformerConfig:
    return models.TransformerConfig(
        vocab_size=tiny_corpus.vocab_size,
        d_model=16,
        n_layers=2,
        n_heads=2,
        max_len=16,
        scan_layers=True,
    )
