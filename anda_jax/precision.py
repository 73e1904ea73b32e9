"""Module types of a transformer block and precision configurations (docs/formats.md, section 8).

A precision configuration gives the mantissa length M of the activation feeding each
FP-INT product type, shape [4] (shared by all layers) or [n_layers, 4]. M = 0 keeps that
activation in floating point.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# The one home of these facts: every other module imports them from here.
MODULE_TYPES = ("qkv", "o", "up", "down")
QKV, O, UP, DOWN = range(len(MODULE_TYPES))  # indices into a configuration's last axis
TYPE_INDEX = {name: i for i, name in enumerate(MODULE_TYPES)}
FLOAT = 0  # M = 0: the activation stays in floating point (exactly; no Anda at all)
MIN_MANTISSA_BITS, MAX_MANTISSA_BITS = 1, 24  # Anda's M (docs/formats.md, section 1); fake quantization
MAX_PLANES = 16  # the bit-plane and bit-serial path: M <= 16 keeps its sums in int32 (docs/formats.md, section 4)


def layer_precision(precision, n_layers: int) -> jax.Array:
  """Returns `precision` as int32 [n_layers, 4], broadcasting a per-type [4] config.

  Concrete values are validated (FLOAT or 1..MAX_MANTISSA_BITS); traced ones are taken as they are."""
  shape = tuple(np.shape(precision))
  if shape not in ((len(MODULE_TYPES),), (n_layers, len(MODULE_TYPES))):
    raise ValueError(
        f"precision has shape {list(shape)}: must be [{len(MODULE_TYPES)}] (one M per type "
        f"{MODULE_TYPES}) or [{n_layers}, {len(MODULE_TYPES)}] (per layer and type)")
  if not isinstance(precision, jax.core.Tracer):
    check_values(precision, "precision")
  return jnp.broadcast_to(jnp.asarray(precision, jnp.int32), (n_layers, len(MODULE_TYPES)))


def check_values(values, name: str) -> np.ndarray:
  """Concrete precision values: integers in 0..MAX_MANTISSA_BITS, or ValueError naming `name`."""
  values = np.asarray(values)
  if not np.issubdtype(values.dtype, np.integer):
    raise ValueError(f"{name} must hold integers, got dtype {values.dtype}")
  if values.size and (values.min() < FLOAT or values.max() > MAX_MANTISSA_BITS):
    raise ValueError(
        f"{name} has values {values.min()}..{values.max()}: mantissa lengths must be in "
        f"[0, {MAX_MANTISSA_BITS}] (0 = keep floating point)")
  return values


def uniform(mantissa_bits: int) -> np.ndarray:
  """The configuration with the same M for every type."""
  return np.full(len(MODULE_TYPES), mantissa_bits, np.int32)


def single_type(type_name: str, mantissa_bits: int) -> np.ndarray:
  """M for one type, the others in floating point."""
  if type_name not in TYPE_INDEX:
    raise ValueError(f"type={type_name!r} is invalid: must be one of {MODULE_TYPES}")
  config = np.zeros(len(MODULE_TYPES), np.int32)
  config[TYPE_INDEX[type_name]] = mantissa_bits
  return config


Key = tuple  # (shape, values) of a configuration: hashable, for caches of results


def config_key(config: np.ndarray) -> Key:
  """A configuration as a dictionary key: equal for equal shapes and values."""
  config = np.asarray(config)
  return (config.shape, tuple(int(v) for v in config.ravel()))


def key_config(key: Key) -> np.ndarray:
  shape, values = key
  return np.asarray(values, np.int32).reshape(shape)
