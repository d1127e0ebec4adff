"""Weights read from a file into the process's own memory, in huge pages where the OS gives them.

`read_resident(path, start, length)` reads `length` bytes of a file from byte `start` into a
private anonymous mapping aligned to 2 MiB and returns them as a read-only uint8 array; on Linux
the mapping is marked MADV_HUGEPAGE first, so with transparent huge pages in `madvise` or
`always` mode the kernel backs it with 2 MiB pages. Decode reads every weight byte once per
token, and from such memory it runs measurably faster than from the file's page-cache memory
map (docs/performance.md, "Weights in memory"): fewer TLB misses, and physically contiguous
runs for the hardware prefetchers. The copy is a snapshot: the file may change or shrink
afterwards without touching the weights. It costs the read (a few threads copy from the
page cache at several GB/s; the first fault of each huge page may make the kernel compact memory)
and memory that the page cache can no longer share between processes, so
`fits_in_memory(n)` says whether n bytes leave a margin of the memory the OS reports
available; the loader maps the file instead when they do not (and always with `--mmap`).
`huge_page_bytes(array)` tells how much of a resident array the kernel put in huge pages
(Linux; None elsewhere), for `bench` and `info`.
"""

from __future__ import annotations

import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .errors import TinyExaoneError

HUGE_PAGE = 2 << 20
READ_CHUNK = 32 << 20  # bytes per read call
READ_THREADS = 4  # at most, and no more than the CPUs
MEMORY_MARGIN = 0.9  # share of the available memory a copy may take


def available_memory() -> int | None:
    """Bytes the OS reports available for new allocations (Linux MemAvailable, else free pages),
    or None when it cannot tell."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def fits_in_memory(nbytes: int) -> bool:
    """Whether a copy of nbytes leaves the margin of the available memory (True when unknown)."""
    available = available_memory()
    return available is None or nbytes <= MEMORY_MARGIN * available


def _anonymous_map(nbytes: int) -> mmap.mmap:
    if hasattr(mmap, "MAP_PRIVATE") and hasattr(mmap, "MAP_ANONYMOUS"):
        return mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return mmap.mmap(-1, nbytes)  # Windows: an anonymous mapping of the paging file


def read_resident(path: Path, start: int, length: int) -> np.ndarray:
    """Bytes [start, start + length) of the file as a read-only uint8 array [length] in anonymous
    memory aligned to HUGE_PAGE (see the module docstring)."""
    region = _anonymous_map(length + HUGE_PAGE)
    whole = np.frombuffer(region, np.uint8)  # [length + HUGE_PAGE]
    offset = (-whole.ctypes.data) % HUGE_PAGE  # a multiple of the small page size
    if hasattr(mmap, "MADV_HUGEPAGE") and length:
        try:
            region.madvise(mmap.MADV_HUGEPAGE, offset, length)
        except OSError:  # a kernel without transparent huge pages: small pages, still resident
            pass
    data = whole[offset : offset + length]  # [length]
    try:
        _read_into(path, start, memoryview(data))
    except OSError as exc:
        raise TinyExaoneError(f"{path}: cannot read ({exc.strerror or exc})") from None
    data.flags.writeable = False
    return data


def _read_into(path: Path, start: int, view: memoryview) -> None:
    """Fill view with the file's bytes from `start`: READ_CHUNK pieces read by a few threads at
    once where os.preadv exists (the page faults of the fresh memory then run on several cores
    too), else one sequential read."""
    length = len(view)

    def short(done: int) -> TinyExaoneError:
        return TinyExaoneError(f"{path}: the file ended after {start + done} bytes while being read "
                               f"(it changed while loading)")

    if not hasattr(os, "preadv"):
        with open(path, "rb") as f:
            f.seek(start)
            done = 0
            while done < length:
                got = f.readinto(view[done : done + READ_CHUNK])
                if not got:
                    raise short(done)
                done += got
        return
    fd = os.open(path, os.O_RDONLY)

    def piece(first: int) -> None:
        done, stop = first, min(first + READ_CHUNK, length)
        while done < stop:
            got = os.preadv(fd, [view[done:stop]], start + done)
            if not got:
                raise short(done)
            done += got

    try:
        with ThreadPoolExecutor(min(READ_THREADS, os.cpu_count() or 1)) as pool:
            list(pool.map(piece, range(0, length, READ_CHUNK)))
    finally:
        os.close(fd)


def huge_page_bytes(array: np.ndarray) -> int | None:
    """Bytes of the mapping holding `array` that the kernel backs with huge pages (Linux
    /proc/self/smaps "AnonHugePages"), or None where that cannot be read."""
    address = array.ctypes.data
    try:
        with open("/proc/self/smaps", encoding="ascii", errors="replace") as f:
            inside = False
            for line in f:
                first = line.split(" ", 1)[0]
                if "-" in first and not first.endswith(":"):
                    low, _, high = first.partition("-")
                    inside = int(low, 16) <= address < int(high, 16)
                elif inside and line.startswith("AnonHugePages:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None
