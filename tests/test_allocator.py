"""glibc malloc tuning: freed blocks are reused instead of faulted in again; Denoiser applies it unless told not to."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import medidiff.allocator
from medidiff.inference import Denoiser

GLIBC = medidiff.allocator._glibc() is not None

# a pattern like the U-Net's window batches: buffers of 1-16 MiB allocated, freed, allocated again
_FAULTS = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    if sys.argv[1] == "tuned":
        from medidiff.allocator import keep_freed_memory
        assert keep_freed_memory()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        buffers = [np.ones(n * 2**18, np.float32) for n in (1, 3, 8, 2, 12, 5, 16, 4)]
        del buffers
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _page_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


@pytest.mark.skipif(not GLIBC, reason="the tuning applies to glibc's malloc only")
@pytest.mark.skipif(medidiff.allocator._user_tuned(), reason="the environment tunes malloc, so medidiff leaves it")
def test_freed_memory_is_reused_rather_than_faulted_in_again() -> None:
    default, tuned = _page_faults("default"), _page_faults("tuned")
    assert tuned < default / 2, (default, tuned)


def test_applied_once_and_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(medidiff.allocator, "_applied", None)
    monkeypatch.setattr(medidiff.allocator, "_apply", lambda: calls.append(1) or GLIBC)
    assert medidiff.allocator.keep_freed_memory() is GLIBC
    assert medidiff.allocator.keep_freed_memory() is GLIBC
    assert calls == [1]


def test_denoiser_applies_it_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(medidiff.allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    Denoiser(device="cpu", reuse_memory=False)
    assert calls == []
    Denoiser(device="cpu")
    assert calls == [1]


def test_left_alone_where_the_environment_tunes_malloc_or_not_on_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072")
    assert medidiff.allocator._apply() is False
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert medidiff.allocator._apply() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    monkeypatch.setattr(medidiff.allocator.sys, "platform", "darwin")
    assert medidiff.allocator._apply() is False
