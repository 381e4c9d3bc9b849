"""Faults of the machine, not of the user: a full disk, a folder that cannot be written, memory run out.

:func:`describe` finds one in an exception or its chain (PyTorch's zip writer raises a RuntimeError whose
context is the disk's ``ENOSPC``; SQLAlchemy wraps SQLite's "database or disk is full"; MLflow wraps
either) and says it in one line: what could not be written, where, the file system's free space, and
what to do. :func:`vae.errors.run_command` prints that line instead of a traceback, as it prints a
user's mistake; any other exception is a bug and keeps its traceback.

Nothing is lost to such a fault: every file the stages write goes to a temporary file first and is
renamed into place (:func:`vae.storage.atomic_write`), so a full disk leaves the previous file or none,
never half of one, and the train stage's last saved epoch resumes.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vae.errors import UserError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
SQLITE_FULL = "database or disk is full"


def chain(err: BaseException) -> Iterator[BaseException]:
    """``err``, then what caused it (``__cause__``, else ``__context__``), and so on, each once."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def human_size(size: float) -> str:
    """Bytes in words: ``12 KB``, ``3.4 MB``, ``1.2 GB`` (powers of 1,000, as ``df -H``)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit in ("bytes", "KB") else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def free_space(path: Path | str) -> int:
    """Bytes free to this user on the file system holding ``path`` (or its nearest existing folder)."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


class NotEnoughSpace(UserError, OSError):
    """The disk cannot hold what a stage is about to write; said before any work, with the figures."""


@dataclass(frozen=True)
class Rerun:
    """What a stage or command tells the user to do once the machine is fixed."""

    command: str = "dvc repro"  # the command to run again
    resume: Callable[[], str] | None = None  # what the rerun does, said when the fault happens (train: its epoch)
    batch_param: str | None = None  # the params.yaml key that lowers memory use
    store: Callable[[], str | None] | None = None  # the MLflow store's SQLite file, if it is one


def is_temporary_of(name: str | os.PathLike | None, path: Path) -> bool:
    """Whether ``name`` is one of :func:`vae.storage.atomic_write`'s temporary files for ``path``."""
    if name is None:
        return False
    name = Path(name).name
    return name.startswith(f".{path.name}.") and name.endswith(".tmp")


def name_the_file(err: BaseException, path: Path) -> None:
    """Make a disk fault in ``err``'s chain name ``path``, the file being written, rather than nothing (a write
    to an open file) or the temporary file it was written through."""
    for cause in chain(err):
        if isinstance(cause, OSError) and cause.errno in DISK_FULL + NOT_WRITABLE:
            if cause.filename is None or is_temporary_of(cause.filename, path):
                cause.filename = str(path)


def describe(err: BaseException, rerun: Rerun) -> str | None:
    """``err`` as one line when it is a fault of the machine, else None (a bug: keep its traceback)."""
    resume = rerun.resume() if rerun.resume else ""
    then = f"then rerun `{rerun.command}`" + (f": {resume}" if resume else "")
    store = rerun.store() if rerun.store else None
    for cause in chain(err):
        if isinstance(cause, OSError) and cause.errno in DISK_FULL:
            where = cause.filename or store or "a file"
            return (
                f"no space left on the disk writing {where} ({human_size(free_space(where))} free): free space, {then}"
            )
        if SQLITE_FULL in str(cause):
            where = store or "the MLflow store"
            return (
                f"no space left on the disk writing {where} (SQLite: {SQLITE_FULL}; "
                f"{human_size(free_space(where))} free): free space, {then}"
            )
        if isinstance(cause, OSError) and cause.errno in NOT_WRITABLE and cause.filename:
            folder = Path(cause.filename).parent
            return f"cannot write {cause.filename} ({cause.strerror}): make {folder} writable, {then}"
        if isinstance(cause, MemoryError) or type(cause).__name__ == "OutOfMemoryError":
            what = "GPU memory" if type(cause).__name__ == "OutOfMemoryError" else "memory"
            lower = f"lower {rerun.batch_param} in params.yaml, " if rerun.batch_param else ""
            return f"ran out of {what}: {lower}{then}"
    return None
