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
