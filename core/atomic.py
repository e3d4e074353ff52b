"""Atomic writes: every file or folder the project writes appears whole or not at all.

A writer works on a unique temporary path beside the target (same filesystem, so the
final rename is atomic; unique, so two writers never share a temporary file) and
renames it onto the target only when complete; on any error the temporary is removed.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def staging_path(target: Path, suffix: str = "") -> Path:
    """A fresh temporary path beside ``target`` (hidden, unique per process and call)."""
    target = Path(target)
    return target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


@contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``target`` in one rename.

    ``suffix`` keeps an extension writers look at (e.g. ``.nii.gz``, ``.png``).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_path(target, suffix)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def keep_previous(target: str | os.PathLike[str], previous: str | os.PathLike[str]) -> None:
    """Make ``previous`` a whole copy of ``target`` as it is now (nothing if it does not
    exist), in one rename: a hard link when the filesystem allows it, else a copy."""
    target, previous = Path(target), Path(previous)
    if not target.is_file():
        return
    with atomic_path(previous) as tmp:
        try:
            os.link(target, tmp)
        except OSError:
            shutil.copyfile(target, tmp)
