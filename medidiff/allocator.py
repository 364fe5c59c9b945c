"""Let glibc's malloc keep freed memory for reuse, so the U-Net's activations are not faulted in anew.

Every window batch allocates and frees the same activation buffers (tens of MiB). With glibc's
defaults, blocks above a threshold that starts at 128 KiB are mapped from the kernel on each
allocation and unmapped on each free, and the top of the heap is trimmed back after frees: each
batch then touches fresh pages, and the kernel zeroes every one of them (a page fault per 4 KiB).
On the benchmark brain that was 1.9 million page faults for two calls and about a quarter of a
cold process's denoising time (docs/design.md, section 6, "Memory reuse").
PyTorch's CPU performance guide suggests jemalloc or tcmalloc for the same reason; this does it
without another library: blocks up to 32 MiB (glibc's largest mmap threshold on 64-bit systems)
come from the heap, the heap grows 64 MiB at a time, and freed memory up to 1 GiB is kept at its
top rather than handed back. Peak memory is unchanged; what is kept is reused by the next call.

It is process-wide and only ever applied once. Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
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


def _apply() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False  # musl and others: mallopt is absent or a stub
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS)
