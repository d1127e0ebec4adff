"""Fixtures shared by the tokenizer and chat-template tests: our tokenizer and transformers'
on the real EXAONE-4.0-1.2B tokenizer files (tests/fixtures/exaone-4.0-1.2b)."""

from pathlib import Path

import pytest

from tinyexaone import load_tokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "exaone-4.0-1.2b"


@pytest.fixture(scope="session")
def ours():
    return load_tokenizer(FIXTURE)


@pytest.fixture(scope="session")
def reference():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(FIXTURE))
