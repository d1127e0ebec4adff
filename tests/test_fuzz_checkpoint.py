"""Fuzzing the Hugging Face checkpoint reader: mutated safetensors files load or fail cleanly.

Every mutated file must either load (and then run a forward pass without crashing) or raise
`TinyExaoneError`; any other exception, a hang or a crash is a bug. CI runs a reduced count;
`pytest -m slow` runs the full 2,000 cases.
"""

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tinyexaone
from byte_mutations import BYTE_MUTATIONS, header_intact, header_length, mutate_bytes
from reference_models import LAYOUTS, build_reference_model
from tinyexaone.errors import TinyExaoneError


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pristine")
    build_reference_model(directory, seed=9, **LAYOUTS["gqa4_odd_hidden"])
    return directory, (directory / "model.safetensors").read_bytes()


mutation = st.one_of(
    *BYTE_MUTATIONS,
    st.tuples(st.just("length"), st.integers(0, 2**64 - 1), st.just(0)),
    st.tuples(st.just("json_value"), st.integers(0, 10**6), st.sampled_from(
        ['-1', '1e999', '[]', '{}', 'null', '"BF16"', '"F64"', '[0, 99999999999999999999]', '[[[[[[[[[[',
         '18446744073709551617', 'true'])),
)


def apply(raw: bytes, kind: str, where: int, value) -> bytes:
    """One mutation; header mutations of a file whose header is already broken change nothing."""
    mutated = mutate_bytes(raw, kind, where, value)
    if mutated is not None:
        return mutated
    if kind == "length":
        return struct.pack("<Q", value) + raw[8:]
    if not header_intact(raw):
        return raw
    n = header_length(raw)
    # replace one JSON scalar/array value in the header by another token
    try:
        header = raw[8 : 8 + n].decode()
    except UnicodeDecodeError:
        return raw
    spots = [i for i, c in enumerate(header) if c in "[0123456789\""]
    if not spots:
        return raw
    i = spots[where % len(spots)]
    j = i + 1
    while j < len(header) and header[j] not in ",}]":
        j += 1
    new_header = (header[:i] + value + header[j:]).encode()
    return struct.pack("<Q", len(new_header)) + new_header + raw[8 + n :]


def check_case(directory: Path, raw: bytes, mutated: bytes) -> None:
    (directory / "model.safetensors").write_bytes(mutated)
    try:
        model = tinyexaone.load(directory)
    except TinyExaoneError as exc:
        assert "\n" not in str(exc)
        return
    logits = model.forward([1, 2, 3])
    assert logits.shape == (3, model.config.vocab_size)


def run_fuzz(pristine, tmp_path_factory, examples: int):
    src, raw = pristine
    work = tmp_path_factory.mktemp("fuzz")
    shutil.copy(src / "config.json", work / "config.json")

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.lists(mutation, min_size=1, max_size=3))
    def fuzz(mutations):
        mutated = raw
        for kind, where, value in mutations:
            if not mutated:
                break
            mutated = apply(mutated, kind, where, value)
        check_case(work, raw, mutated)

    with np.errstate(all="ignore"):  # flipped data bytes may be NaN/inf: fine, not a crash
        fuzz()


def test_fuzz_safetensors_reduced(pristine, tmp_path_factory):
    run_fuzz(pristine, tmp_path_factory, examples=300)


@pytest.mark.slow
def test_fuzz_safetensors_full(pristine, tmp_path_factory):
    run_fuzz(pristine, tmp_path_factory, examples=2000)


def test_fuzz_config_json(pristine, tmp_path):
    """Random JSON values in config.json fields: parsed or rejected with TinyExaoneError."""
    src, _ = pristine
    shutil.copytree(src, tmp_path / "m")
    base = json.loads((src / "config.json").read_text())
    values = [None, -1, 0, 1, 3, 2.5, "x", [], {}, True, 10**30, "LLLG", ["full_attention"]]

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.sampled_from(sorted(base)), st.sampled_from(values))
    def fuzz(key, value):
        cfg = dict(base)
        cfg[key] = value
        (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
        try:
            tinyexaone.load(tmp_path / "m")
        except TinyExaoneError:
            pass

    fuzz()
