"""Runnable experiments (`python -m experiments.<name>`) and their shared harness.

Importing the package makes Ctrl-C end a command in one line, wherever it lands (the commands
say what they kept once they run: experiments.harness.cli)."""

import _thread
import sys
import threading


def _interrupted_hook(kind, value, tb, previous=sys.excepthook):
  """Ctrl-C before a command could handle it (while it imports JAX, say, which takes seconds):
  one line instead of a stack through the import machinery."""
  if issubclass(kind, KeyboardInterrupt):
    print("\ninterrupted: nothing was written: run the command again", file=sys.stderr)
  else:
    previous(kind, value, tb)


def _unraisable_hook(unraisable, previous=sys.unraisablehook):
  """A Ctrl-C that lands in a garbage-collection callback (JAX registers one) is an "exception
  ignored" for Python: it prints a stack and the command goes on. Raise it again in the main
  thread, where the command handles it: from another thread, a moment later, once the main
  thread has left the callback (raised here, it would land in this hook and be ignored again;
  should it land in a callback again, it comes back here)."""
  if isinstance(unraisable.exc_value, KeyboardInterrupt):
    timer = threading.Timer(0.05, _thread.interrupt_main)
    timer.daemon = True
    timer.start()
  else:
    previous(unraisable)


sys.excepthook = _interrupted_hook
sys.unraisablehook = _unraisable_hook
