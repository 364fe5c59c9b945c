"""Safe file writing: atomic replace, no clobbering, no stray temporary files."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from medidiff.errors import MedidiffError, OutputExistsError

TEMP_PREFIX = ".medidiff-tmp-"


def expand_user(path: str | os.PathLike[str]) -> Path:
    """``~`` and ``~user`` expanded; a ``~name`` with no such user (or no home) stays as written.

    ``Path.expanduser`` raises RuntimeError there, which would surface as an internal error.
    """
    return Path(os.path.expanduser(os.fspath(path)))


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


def shared_mode(mode: int) -> int:
    """``mode`` less the process umask: the permissions a plain ``open`` or ``mkdir`` would give."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file lives in the target folder (so the rename is atomic) and is removed on any
    error or interrupt, including KeyboardInterrupt.
    """
    out = check_output(path, force)
    tmp: Path | None = None
    try:
        # the name is known before the file exists, so an interrupt at any point (even right after
        # it is created) finds it in ``tmp`` and removes it; mode 0o666 & umask (not mkstemp's
        # 0o600) so that colleagues can read the outputs
        for _ in range(100):
            tmp = out.parent / f"{TEMP_PREFIX}{secrets.token_hex(6)}{_suffixes(out)}"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                tmp = None  # not ours: never remove it
                continue
            except OSError as exc:
                tmp = None
                raise MedidiffError(f"{out.parent}: cannot write there ({exc.strerror}); check the folder") from None
            os.close(fd)
            break
        if tmp is None:
            raise MedidiffError(f"{out.parent}: cannot create a temporary file there")
        yield tmp
        if out.exists() and not force:  # appeared while we worked
            raise OutputExistsError(f"{out}: exists already; pass --force to overwrite it")
        os.chmod(tmp, shared_mode(0o666))  # writers that recreate the file (safetensors) leave 0o600
        os.replace(tmp, out)
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def write_text_atomic(path: str | os.PathLike[str], text: str, force: bool = True) -> Path:
    """Write a small text file atomically (sidecars, JSON state)."""
    with atomic_path(path, force=force) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def make_folder(folder: str | os.PathLike[str]) -> list[Path]:
    """Create ``folder`` and its missing parents; return the ones it created, innermost first."""
    folder = Path(folder)
    created = [d for d in (folder, *folder.parents) if not d.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return created


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove each of ``folders`` (innermost first) that is still empty; others are left as they are."""
    for folder in folders:
        with contextlib.suppress(OSError):  # not empty, or gone
            folder.rmdir()
