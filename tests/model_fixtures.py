"""Shared model fixtures, loaded once per session (plugin listed in conftest.py)."""

import pytest

from aligners import models


@pytest.fixture(scope="session")
def tiny_lm():
    """(model, tokenizer) of the 2-layer random Llama with SmolLM2's tokenizer."""
    return models.load_causal_lm(models.TINY_LLAMA)


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the real SmolLM2-135M-Instruct (converted once into the cache)."""
    return models.load_causal_lm(models.SMOLLM2)
