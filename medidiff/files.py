"""Safe file writing: atomic replace, no clobbering, no stray temporary files."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medidiff.errors import MedidiffError, OutputExistsError

TEMP_PREFIX = ".medidiff-tmp-"


def check_output(path: str | os.PathLike[str], force: bool = False) -> Path:
    """Return ``path`` as a Path after checking it may be written.

    Raises:
        OutputExistsError: the file exists and ``force`` is False.
        MedidiffError: the parent folder does not exist or the path is a folder.
    """
    out = Path(path)
    if out.is_dir():
        raise MedidiffError(f"{out}: is a folder; give a file name for the output")
    if out.exists() and not force:
        raise OutputExistsError(f"{out}: exists already; pass --force to overwrite it")
    if not out.parent.exists():
        raise MedidiffError(f"{out.parent}: output folder does not exist; create it first")
    return out


def _suffixes(path: Path) -> str:
    # keep the full extension (".nii.gz") so writers that dispatch on it still work
    return "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file lives in the target folder (so the rename is atomic) and is removed on any
    error or interrupt, including KeyboardInterrupt.
    """
    out = check_output(path, force)
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=_suffixes(out), dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if out.exists() and not force:  # appeared while we worked
            raise OutputExistsError(f"{out}: exists already; pass --force to overwrite it")
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike[str], text: str, force: bool = True) -> Path:
    """Write a small text file atomically (sidecars, JSON state)."""
    with atomic_path(path, force=force) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
