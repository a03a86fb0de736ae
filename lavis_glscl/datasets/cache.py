"""The one way generated or converted data enters the cache: :func:`ensure_cached`.

A cached directory counts as complete only when its marker ``<name>.complete`` sits beside it.  It is written
into a temporary sibling, renamed into place, and only then marked, all under an exclusive lock on
``<name>.lock``, so that several ranks or processes asking for the same set generate it once and never read
half of it.
"""
import fcntl
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


class CacheWriteError(RuntimeError):
    """Writing a cached directory failed; nothing of it was kept."""


def marker_path(directory: Path) -> Path:
    """The file whose presence says ``directory`` was written completely."""
    return directory.with_name(directory.name + ".complete")


def is_complete(directory: Path) -> bool:
    """Whether ``directory`` is there and was marked complete after its write."""
    return directory.is_dir() and marker_path(directory).is_file()


@contextmanager
def _exclusive_lock(directory: Path) -> Iterator[None]:
    """Hold ``<name>.lock`` beside ``directory``.  The lock file stays: removing it would let a waiter and a
    newcomer lock two different files.  The kernel drops the lock if the holder dies."""
    with open(directory.with_name(directory.name + ".lock"), "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logging.info("waiting for another process to finish writing %s", directory)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_and_publish(directory: Path, write: Callable[[Path], None]) -> None:
    """Run ``write`` on an empty staging directory, then rename it to ``directory`` and mark it complete."""
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".partial", dir=directory.parent))
    try:
        # A subdirectory, not the mkdtemp one itself, so the published directory gets the usual permissions.
        contents = staging / "contents"
        contents.mkdir()
        try:
            write(contents)
        except Exception as error:
            raise CacheWriteError(f"writing cached data into {directory} failed ({type(error).__name__}: "
                                  f"{error}); nothing was kept, the next call writes it again") from error
        os.replace(contents, directory)
        marker_path(directory).touch()
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure_cached(directory: Path, write: Callable[[Path], None]) -> Path:
    """``directory``, first filled by ``write(empty_directory)`` unless a complete copy is already there.

    Concurrent callers (threads, processes, ranks) wait for the one that writes.  A ``directory`` without
    its marker is the remains of an interrupted run (killed between rename and marker) or of an older layout,
    and is replaced.  If ``write`` raises, :class:`CacheWriteError` (chained to the cause) is raised and
    neither the directory nor its marker exists afterwards.
    """
    directory = Path(directory)
    if is_complete(directory):
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(directory):
        if is_complete(directory):  # another caller wrote it while this one waited
            return directory
        marker_path(directory).unlink(missing_ok=True)
        if directory.exists():
            shutil.rmtree(directory)
        _write_and_publish(directory, write)
    return directory
