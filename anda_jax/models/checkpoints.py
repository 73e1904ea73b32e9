"""What the checkpoint readers (gguf_reader, safetensors_reader) and the weight maps share: every
problem with a checkpoint file raises ValueError naming the file and what is wrong with it, never
a traceback from deep inside numpy."""

from __future__ import annotations

import numpy as np


def fail(path, problem: str):
  raise ValueError(f"{path}: {problem}")


def check_finite(path, name, a):
  """Fails unless every value of the float array `a` is finite. A float64 sum is exact for this
  (a NaN or an Inf makes it non-finite; float32 values cannot overflow it) and, unlike
  np.isfinite, allocates no array of a's size while the loader streams large tensors."""
  with np.errstate(invalid="ignore", over="ignore"):
    finite = np.isfinite(np.sum(np.asarray(a), dtype=np.float64))
  if not finite:
    fail(path, f"tensor '{name}' holds NaN or Inf values (corrupted?)")


_MISSING = object()


def positive_int(path, name: str, value=_MISSING) -> int:
  """A checkpoint's size setting (layers, width, heads, vocabulary, ...) as an int >= 1, or a
  ValueError naming the file and the setting: a missing key or a 0 would otherwise surface as a
  KeyError or a ZeroDivisionError far from the file."""
  if value is _MISSING or value is None:
    fail(path, f"missing setting '{name}'")
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    fail(path, f"setting '{name}' = {value!r} is invalid: must be an integer >= 1")
  return int(value)
