"""The bit-plane layout of an Anda-encoded tensor.

Defined in docs/formats.md, section 2.

This is what the runtime compressor writes and a bit-serial unit reads: per group one
int8 exponent, one sign plane and P mantissa planes, most significant plane first, each
plane ceil(G/8) bytes with element j of the group in bit (j mod 8) of byte (j div 8).
Because plane 0 is the MSB, the first M' planes are themselves a valid M'-bit encoding
(the prefix property, docs/formats.md 1.5), which is what lets a bit-serial unit stop early.

Everything is vectorised jnp without Python loops, so `pack`/`unpack` work under jit
with a traced mantissa length; the number of planes P is a shape and therefore static.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from anda_jax.checks import check_int
from anda_jax.numerics import anda
from anda_jax.precision import MAX_PLANES

__all__ = ["BitPlanes", "pack", "unpack", "truncate"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BitPlanes:
  """An Anda encoding in the bit-plane layout, grouping axis last.

  exponent: int8  [..., n_groups]            E (or format.NONFINITE_EXPONENT)
  sign:     uint8 [..., n_groups, ceil(G/8)]
  planes:   uint8 [..., n_groups, P, ceil(G/8)]   plane p = bit (P-1-p) of every m_i
  fmt, length (L, the grouped axis' length) and, optionally, the encoded tensor's shape
  and dtype are static; `unpack` uses shape/dtype to rebuild the exact AndaEncoding and
  derives them (float32, grouped axis at fmt.axis) when they are None.
  """

  exponent: jax.Array
  sign: jax.Array
  planes: jax.Array
  fmt: anda.AndaFormat = dataclasses.field(metadata=dict(static=True))
  length: int = dataclasses.field(metadata=dict(static=True))
  shape: tuple[int, ...] | None = dataclasses.field(default=None, metadata=dict(static=True))
  dtype: Any = dataclasses.field(default=None, metadata=dict(static=True))

  @property
  def num_planes(self) -> int:
    """P, the mantissa bits this layout holds."""
    return self.planes.shape[-2]

  def storage_bits(self) -> float:
    """Bits per element as docs/formats.md (section 2) counts them: 1 + P + exponent_bits / G."""
    return self.fmt.storage_bits(self.num_planes)

  @property
  def nbytes(self) -> int:
    """Bytes actually held by the three arrays (int8 exponent, whole bytes per plane)."""
    return sum(int(np.prod(a.shape)) * a.dtype.itemsize
               for a in (self.exponent, self.sign, self.planes))


def bits_to_bytes(bits: jax.Array) -> jax.Array:
  """0/1 values [..., G] -> uint8 [..., ceil(G/8)]; element j is bit j%8 of byte j//8."""
  g = bits.shape[-1]
  n_bytes = -(-g // 8)
  bits = jnp.pad(bits.astype(jnp.int32), [(0, 0)] * (bits.ndim - 1) + [(0, 8 * n_bytes - g)])
  bits = bits.reshape(*bits.shape[:-1], n_bytes, 8)
  # Shift in int32 (not uint8): narrow shifts do not lower everywhere (docs/design.md).
  weights = jnp.left_shift(1, jnp.arange(8, dtype=jnp.int32))
  return jnp.sum(bits * weights, axis=-1).astype(jnp.uint8)


def bytes_to_bits(packed: jax.Array, group_size: int) -> jax.Array:
  """uint8 [..., ceil(G/8)] -> int32 0/1 [..., G] (inverse of bits_to_bytes)."""
  shifts = jnp.arange(8, dtype=jnp.int32)
  bits = (packed.astype(jnp.int32)[..., None] >> shifts) & 1
  return bits.reshape(*packed.shape[:-1], 8 * packed.shape[-1])[..., :group_size]


def pack(enc: anda.AndaEncoding, num_planes: int | None = None) -> BitPlanes:
  """AndaEncoding -> BitPlanes with P = num_planes planes (static; default M, if concrete).

  Plane p holds bit (M-1-p) of m. For P > M the extra low planes are zero, which is the
  P-bit encoding of the same values (m << (P-M) with the same E). A traced M larger than
  P keeps the top P bits, i.e. the truncate-rounded P-bit encoding (prefix property).
  """
  m_bits = enc.mantissa_bits
  concrete_m = None if isinstance(m_bits, jax.core.Tracer) else int(np.asarray(m_bits))
  if num_planes is None:
    if concrete_m is None:
      raise ValueError("num_planes=None needs a concrete mantissa_bits; under jit with a "
                       f"traced mantissa length pass num_planes (an int in [1, {MAX_PLANES}])")
    if not 1 <= concrete_m <= MAX_PLANES:
      raise ValueError(f"mantissa_bits={concrete_m} is invalid for the bit-plane layout: "
                       f"must be an integer in [1, {MAX_PLANES}] (the bit-serial sums fit "
                       "int32 only up to 16 bits; fake quantization goes to 24)")
    num_planes = concrete_m
  p_count = check_int("num_planes", num_planes, 1, MAX_PLANES)
  if concrete_m is not None and concrete_m > p_count:
    raise ValueError(f"mantissa_bits={concrete_m} does not fit num_planes={p_count}: "
                     f"the bit-plane layout needs num_planes >= mantissa_bits and at most "
                     f"{MAX_PLANES}; use truncate() to drop planes on purpose")
  return _pack(enc, p_count)


@functools.partial(jax.jit, static_argnums=1)
def _pack(enc: anda.AndaEncoding, p_count: int) -> BitPlanes:
  """pack() after validation; one compiled program per (shapes, P), any M."""
  # Which bit of m each plane holds; negative = below the LSB of an M-bit code (zero).
  m_bits = jnp.asarray(enc.mantissa_bits, jnp.int32)
  bit_index = m_bits - 1 - jnp.arange(p_count, dtype=jnp.int32)
  mag = enc.magnitude.astype(jnp.int32)[..., None, :]  # [..., n_groups, 1, G]
  bits = (mag >> jnp.maximum(bit_index, 0)[:, None]) & 1
  bits = jnp.where(bit_index[:, None] >= 0, bits, 0)  # [..., n_groups, P, G]
  return BitPlanes(
      exponent=enc.exponent.astype(jnp.int8),  # E and NONFINITE_EXPONENT (-128) fit int8
      sign=bits_to_bytes(enc.sign),
      planes=bits_to_bytes(bits),
      fmt=enc.fmt,
      length=int(enc.shape[enc.fmt.axis]),
      shape=tuple(enc.shape),
      dtype=enc.dtype,
  )


def encoded_shape(bp: BitPlanes) -> tuple[int, ...]:
  """The encoded tensor's shape: stored, or rebuilt by putting L back at fmt.axis."""
  if bp.shape is not None:
    return tuple(bp.shape)
  batch = list(bp.exponent.shape[:-1])
  ndim = len(batch) + 1
  if not -ndim <= bp.fmt.axis < ndim:
    raise ValueError(f"fmt.axis={bp.fmt.axis} is invalid for BitPlanes of rank {ndim}")
  batch.insert(bp.fmt.axis % ndim, bp.length)
  return tuple(batch)


@jax.jit
def unpack(bp: BitPlanes) -> anda.AndaEncoding:
  """BitPlanes -> AndaEncoding with mantissa_bits = P (lossless inverse of pack)."""
  g = bp.fmt.group_size
  p_count = bp.num_planes
  bits = bytes_to_bits(bp.planes, g)  # [..., n_groups, P, G]
  weights = jnp.left_shift(1, p_count - 1 - jnp.arange(p_count, dtype=jnp.int32))
  magnitude = jnp.sum(bits * weights[:, None], axis=-2, dtype=jnp.int32)
  return anda.AndaEncoding(
      sign=bytes_to_bits(bp.sign, g).astype(jnp.uint8),
      magnitude=magnitude,
      exponent=bp.exponent.astype(jnp.int32),
      mantissa_bits=jnp.asarray(p_count, jnp.int32),
      fmt=bp.fmt,
      shape=encoded_shape(bp),
      dtype=jnp.float32 if bp.dtype is None else bp.dtype,
  )


def truncate(bp: BitPlanes, num_planes: int) -> BitPlanes:
  """Keep the first num_planes (MSB) planes: the truncate-rounded num_planes-bit encoding."""
  keep = check_int("num_planes", num_planes, 1, bp.num_planes)
  return dataclasses.replace(bp, planes=bp.planes[..., :keep, :])
