"""Byte-level mutations of safetensors-style files, shared by the fuzz tests of both formats.

A mutation is (kind, where, value). `BYTE_MUTATIONS` draws the generic kinds: flip a byte of the
JSON header or of anything, truncate, insert a byte. `mutate_bytes` applies one of them (header
flips leave a file whose header is already broken unchanged) and returns None for a kind it
does not know, so each test adds its own format-aware edits on top.
"""

import struct

from hypothesis import strategies as st

BYTE_MUTATIONS = [
    # the header region is small, so half the flips are aimed at it
    st.tuples(st.just("flip_header"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("flip_any"), st.integers(0, 10**9), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**9), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
]


def header_length(raw: bytes) -> int:
    """The 8-byte little-endian header length, or 0 for a file too short to have one."""
    return struct.unpack("<Q", raw[:8])[0] if len(raw) >= 8 else 0


def header_intact(raw: bytes) -> bool:
    n = header_length(raw)
    return 0 < n and 8 + n <= len(raw)


def mutate_bytes(raw: bytes, kind: str, where: int, value) -> bytes | None:
    if kind == "flip_header":
        if not header_intact(raw):
            return raw
        i = 8 + where % header_length(raw)
        return raw[:i] + bytes([raw[i] ^ value]) + raw[i + 1 :]
    if kind == "flip_any":
        i = where % len(raw)
        return raw[:i] + bytes([raw[i] ^ value]) + raw[i + 1 :]
    if kind == "truncate":
        return raw[: where % len(raw)]
    if kind == "insert":
        i = where % len(raw)
        return raw[:i] + bytes([value]) + raw[i:]
    return None
