"""Validation of user-given settings at the library's boundary: one clear ValueError naming
the setting, its value and what is allowed (docs/design.md: errors at the boundary)."""

from __future__ import annotations

from typing import Any

import numpy as np


def check_int(name: str, value: Any, lo: int, hi: int | None = None, hint: str = "") -> int:
  """Returns `value` as an int, or raises ValueError naming the parameter, value and range
  (hi None: no upper bound)."""
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
      or not lo <= value <= (value if hi is None else hi)):
    bounds = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
    raise ValueError(f"{name}={value!r} is invalid: must be an integer {bounds}{hint}")
  return int(value)


def check_token_ids(ids, vocab: int, what: str = "windows", why: str = "") -> np.ndarray:
  """`ids` as an array, or a ValueError if some token id is outside [0, vocab): `what` names the
  ids, `why` is appended. An id beyond the vocabulary must never reach a model: JAX clamps
  out-of-range gathers, so the embedding lookup would read another token's row without a word."""
  ids = np.asarray(ids)
  if ids.size and (ids.min() < 0 or ids.max() >= vocab):
    raise ValueError(f"{what} hold token ids {ids.min()}..{ids.max()}: must be in [0, vocab={vocab}){why}")
  return ids
