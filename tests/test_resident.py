"""Weights read into memory (tinyexaone/resident.py, the loader's default for compact files).

`read_resident` is held to the file's own bytes at odd offsets and lengths, on fresh seeds, and
to its contract (read-only, aligned to a huge page, one error line for a file that ends early).
A compact file loaded into memory computes exactly the logits of the same file memory-mapped,
keeps no map of the file (so truncating the file afterwards changes nothing), and falls back to
the memory map when the copy would not fit in the available memory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import tinyexaone
from tinyexaone import resident
from tinyexaone.errors import TinyExaoneError

DEMO_INT4 = Path(__file__).resolve().parents[1] / "models" / "exaone4-demo" / "exaone4-demo-int4.tx"


@pytest.mark.parametrize("chunk", [resident.READ_CHUNK, 4099])  # the default, and many odd-sized pieces
def test_read_resident_returns_the_files_bytes(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(resident, "READ_CHUNK", chunk)
    rng = np.random.default_rng()
    data = rng.integers(0, 256, int(rng.integers(100_000, 300_000)), np.uint8)
    path = tmp_path / "blob"
    path.write_bytes(data.tobytes())
    for _ in range(5):
        start = int(rng.integers(0, 1000))
        length = int(rng.integers(0, len(data) - start))
        got = resident.read_resident(path, start, length)
        assert got.dtype == np.uint8 and got.shape == (length,)
        assert np.array_equal(got, data[start : start + length])
        assert not got.flags.writeable
        assert got.ctypes.data % resident.HUGE_PAGE == 0


def test_read_resident_of_a_file_that_ends_early_is_one_error(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(b"x" * 1000)
    with pytest.raises(TinyExaoneError, match="ended after 1000 bytes"):
        resident.read_resident(path, 0, 5000)
    with pytest.raises(TinyExaoneError, match="cannot read"):
        resident.read_resident(tmp_path / "missing", 0, 10)


def test_a_compact_file_in_memory_computes_what_its_memory_map_does(tmp_path):
    path = tmp_path / "demo.tx"
    shutil.copyfile(DEMO_INT4, path)
    in_memory = tinyexaone.load(path)
    mapped = tinyexaone.load(path, mmap=True)
    assert in_memory.model.weights.mapped_files == [] and mapped.model.weights.mapped_files
    ids = np.random.default_rng().integers(0, in_memory.config.vocab_size, 7)
    expected = mapped.model.forward(ids)
    assert np.array_equal(in_memory.model.forward(ids), expected)
    del mapped
    os.truncate(path, 100)  # the copy is a snapshot: the file no longer matters
    assert np.array_equal(in_memory.model.forward(ids), expected)
    if resident.huge_page_bytes(in_memory.model.weights.lm_head._codes) is not None:  # Linux
        assert 0 <= resident.huge_page_bytes(in_memory.model.weights.lm_head._codes) <= path.stat().st_size + (4 << 20)


def test_a_compact_file_that_does_not_fit_in_memory_stays_mapped(monkeypatch):
    monkeypatch.setattr(resident, "available_memory", lambda: DEMO_INT4.stat().st_size)  # less than file / margin
    model = tinyexaone.load(DEMO_INT4)
    assert model.model.weights.mapped_files
    monkeypatch.setattr(resident, "available_memory", lambda: None)  # unknown: read it in
    assert tinyexaone.load(DEMO_INT4).model.weights.mapped_files == []
