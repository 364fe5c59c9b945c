"""Let glibc's malloc keep freed memory for reuse, so the U-Net's activations are not faulted in anew.

Every window batch allocates and frees the same activation buffers (tens of MiB). With glibc's
defaults, blocks above a threshold that starts at 128 KiB are mapped from the kernel on each
allocation and unmapped on each free, and the top of the heap is trimmed back after frees: each
batch then touches fresh pages, and the kernel zeroes every one of them (a page fault per 4 KiB).
On the MNI152 brain that was 1.9 million page faults for two calls and up to a quarter of the
time of a fresh process's first denoising call (docs/design.md, section 6, "Memory reuse").
PyTorch's CPU performance guide suggests jemalloc or tcmalloc for the same reason; this does it
without another library: blocks up to 32 MiB (glibc's largest mmap threshold on 64-bit systems)
come from the heap, the heap grows 64 MiB at a time, and freed memory up to 1 GiB is kept at its
top rather than handed back. What is kept is reused by the next batch and the next call; the
benchmark's peak resident memory rose by about 5-20 % with it (docs/design.md).

It is process-wide and only ever applied once. It does nothing elsewhere than glibc (macOS, musl),
and nothing where the environment tunes malloc already (``MALLOC_*`` variables or
``GLIBC_TUNABLES``): setting e.g. ``GLIBC_TUNABLES=glibc.malloc.trim_threshold=131072`` keeps
glibc's behaviour for a process that calls :func:`medidiff.denoise`.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

SETTINGS = (
    (M_MMAP_THRESHOLD, 32 * 2**20),
    (M_TOP_PAD, 64 * 2**20),
    (M_TRIM_THRESHOLD, 2**30),
)

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply :data:`SETTINGS` with glibc's ``mallopt`` (once per process).

    Returns:
        True where glibc took every setting, False elsewhere (another C library, or refused).
    """
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _user_tuned() -> bool:
    """True where the user has tuned glibc's malloc through the environment (their settings win)."""
    return any(name.startswith("MALLOC_") or name == "GLIBC_TUNABLES" for name in os.environ)


def _glibc() -> ctypes.CDLL | None:
    """The process's C library where it is glibc (with ``mallopt``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None  # musl and others: mallopt is absent or a stub
    return libc


def _apply() -> bool:
    libc = None if _user_tuned() else _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    taken = [mallopt(param, value) == 1 for param, value in SETTINGS]  # every one tried, none skipped
    return all(taken)
