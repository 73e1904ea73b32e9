"""Helpers shared by the Pallas kernels: interpret-mode choice, padding, scalar operands."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def resolve_interpret(interpret) -> bool:
  """interpret=None means: interpret on CPU (Pallas cannot compile for it), compile elsewhere."""
  if interpret is None:
    return jax.default_backend() == "cpu"
  if not isinstance(interpret, bool):
    raise ValueError(f"interpret={interpret!r} is invalid: must be None, True or False")
  return interpret


def compiler_params():
  """On GPU the kernels are written in the Triton style (whole-block array ops), so ask for
  the Triton backend rather than Mosaic GPU; on TPU the default (Mosaic) is right."""
  if jax.default_backend() == "gpu":
    from jax.experimental.pallas import triton as pltriton
    return pltriton.CompilerParams()
  return None


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def pad_axis(x: jax.Array, axis: int, size: int, value=0) -> jax.Array:
  """Zero-pads `axis` of x up to `size` (no-op when it already has that size)."""
  pad = size - x.shape[axis]
  if pad == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths, constant_values=value)


def next_pow2(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()


def tile(n: int, preferred: int) -> int:
  """The tile for an axis of length n: a power of two (Triton needs one), at most
  `preferred`. The caller pads the axis to a multiple of it, so a short axis becomes one
  whole-dimension block, which TPU accepts whatever its alignment."""
  return min(next_pow2(n), preferred)


def check_block(name: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value & (value - 1):
    raise ValueError(f"{name}={value!r} is invalid: must be a positive power of two")
  return value
