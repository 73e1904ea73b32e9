"""What a user error is, and how a command reports one: one line on stderr, `error: <what> is
invalid: <why>`, exit status 2 (--traceback or --verbosity=1 shows the stack); and an interrupt
(Ctrl-C): one line saying what was kept, exit status 130 (128 + SIGINT, as a shell reports it).
"""

from __future__ import annotations

import os
import sys

from absl import flags

from anda_jax import assets
from anda_jax import files


# What a clean error is: a bad setting or input (ValueError with a message naming it), a run
# folder in use, an asset that cannot be fetched. Anything else is a bug: its stack is shown.
CLEAN_ERRORS = (ValueError, files.LockedError, assets.AssetError)


def _show_stack() -> bool:
  f = flags.FLAGS
  return (("traceback" in f and f["traceback"].present and f.traceback)
          or ("verbosity" in f and f.verbosity >= 1))


def error_exit(message) -> None:
  """Prints `error: <message>` as one line on stderr and exits with status 2."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(2)


def call_cleanly(fn, *args):
  """fn(*args); a clean error becomes one line on stderr and exit status 2 (the stack with
  --traceback or --verbosity=1)."""
  try:
    return fn(*args)
  except CLEAN_ERRORS as e:
    if _show_stack():
      raise
    error_exit(e)


INTERRUPTED = 130  # 128 + SIGINT


def interrupted_exit(kept: str) -> None:
  """Prints `interrupted: <kept>` as one line on stderr and ends the process with status 130
  at once. Without the interpreter's shutdown: interrupted while XLA compiles or runs, it can
  crash in the threads XLA leaves behind (a segmentation fault after the message). Nothing is
  lost: results are flushed as they are appended and files written whole (temp file + rename)."""
  print(f"\ninterrupted: {' '.join(kept.split())}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(INTERRUPTED)  # pylint: disable=protected-access
