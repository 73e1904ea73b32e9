"""Safe file writes shared by the cache and the experiments: an atomic write (temp file +
rename, so a reader never sees half a file, whatever kills the writer) and an advisory lock
(so two processes never work on the same folder at once)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import tempfile

# The process's umask (reading it means setting it: set it straight back).
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: os.PathLike, write) -> None:
  """Calls write(binary file) on a temporary file beside `path`, then renames it onto `path`."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
  try:
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; give the usual mode
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def atomic_write_text(path: os.PathLike, text: str) -> None:
  atomic_write(path, lambda f: f.write(text.encode()))


class LockedError(RuntimeError):
  """Another process holds the lock."""


@contextlib.contextmanager
def locked(lock_path: os.PathLike, wait: bool = True, holder: str = ""):
  """Holds an exclusive advisory lock on `lock_path` (created if needed) for the block. The
  kernel releases it when the process dies, so a killed run never leaves a stale lock.
  wait=False raises LockedError naming the file (and `holder`, what the other process is
  doing) instead of waiting."""
  lock_path = pathlib.Path(lock_path)
  lock_path.parent.mkdir(parents=True, exist_ok=True)
  with open(lock_path, "a+") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
      f.seek(0)
      other = f.read().strip()
      raise LockedError(f"{lock_path} is locked by another process{f' ({other})' if other else ''}"
                        f"{holder}") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}")
    f.flush()
    try:
      yield
    finally:
      f.truncate(0)
      fcntl.flock(f, fcntl.LOCK_UN)
