"""Fixtures shared by several test files: our tokenizer and transformers' on the real
EXAONE-4.0-1.2B tokenizer files (tests/fixtures/exaone-4.0-1.2b), and `demo`, the shipped demo
model's directory (the tests that need it skip when a checkout lacks it)."""

from pathlib import Path

import pytest

from cli_models import shipped_model
from tinyexaone import load_tokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "exaone-4.0-1.2b"


@pytest.fixture(scope="session")
def ours():
    return load_tokenizer(FIXTURE)


@pytest.fixture(scope="session")
def reference():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(FIXTURE))


@pytest.fixture(scope="session")
def demo():
    path = shipped_model()
    if path is None:
        pytest.skip("the demo model is not in this checkout")
    return path
