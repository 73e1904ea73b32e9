"""Bit-serial FP-INT matmul in pure jnp.

Defined in docs/formats.md, section 4.

The reference the Pallas kernels must meet: bit-plane activations x [..., K] (Anda
groups along K) times Int4Weights [K, N]. For each block of K indices over which the
activation exponent E and the weight scale d (and offset z) are constant, all work is
integer:

    P_p = sum_i (1 - 2 sgn_i) b_{p,i} q_i        one bit-plane at a time, MSB first
    A   = sum_{p<M'} 2^(M'-1-p) P_p              (= sum_i +-m_i q_i)
    S   = sum_i (1 - 2 sgn_i) m_i                (only needed for the offset z)
    y  += 2^(E-M'+1) (d A + z S)                 the only floating-point step

Streaming only the first M' <= P planes gives the truncate-rounded M'-bit result. The
integer sums are exact in int32 (M <= 16, blocks <= 1024); y equals
decode(x) @ dequantize(W) up to fp32 rounding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from anda_jax.checks import check_int
from anda_jax.numerics import anda
from anda_jax.numerics import bitplane
from anda_jax.numerics import int4
from anda_jax.precision import MAX_PLANES

__all__ = ["block_size", "partial_sums", "matmul"]


def block_size(group_size: int, weight_group_size: int) -> int:
  """Block over which E and d, z are constant: min(G, Gw) when one divides the other."""
  for name, v in (("group_size", group_size), ("weight_group_size", weight_group_size)):
    check_int(name, v, 1)
  g, gw = int(group_size), int(weight_group_size)
  if g % gw and gw % g:
    raise ValueError(
        f"group_size={g} (activations) and weight_group_size={gw} (weights) are "
        "incompatible: one must divide the other (e.g. both powers of two), so that "
        "blocks of min(G, Gw) share one exponent and one weight scale")
  return min(g, gw)


def _check(bp: bitplane.BitPlanes, w: int4.Int4Weights, num_planes):
  """Validates shapes and returns (M' as int32, block, K)."""
  if not isinstance(w, int4.Int4Weights):
    raise ValueError(f"w must be an int4.Int4Weights, got {type(w).__name__}")
  if len(w.shape) != 2:
    raise ValueError(f"w must be a single [K, N] matrix, got Int4Weights of shape {w.shape}")
  k = w.shape[0]
  shape = bitplane.encoded_shape(bp)
  if bp.fmt.axis % len(shape) != len(shape) - 1:
    raise ValueError(f"fmt.axis={bp.fmt.axis} is invalid here: the activation must be "
                     f"grouped along its last (contraction) axis, shape {shape}")
  if bp.length != k:
    raise ValueError(f"contraction lengths differ: activation length={bp.length}, "
                     f"weight K={k}; they must be equal")
  p_count = bp.num_planes
  if p_count > MAX_PLANES:
    raise ValueError(f"BitPlanes holds {p_count} planes: at most {MAX_PLANES} allowed")
  block = block_size(bp.fmt.group_size, w.group_size)
  if num_planes is None:
    num_planes = p_count
  if isinstance(num_planes, jax.core.Tracer):
    # A traced M' cannot be checked; it is clipped to [1, P] like format.py clips M.
    if num_planes.shape != () or not jnp.issubdtype(num_planes.dtype, jnp.integer):
      raise ValueError(f"num_planes must be an integer scalar, got "
                       f"{num_planes.dtype}{list(num_planes.shape)}")
    return jnp.clip(num_planes, 1, p_count).astype(jnp.int32), block, k
  value = np.asarray(num_planes)
  if (value.shape != () or not np.issubdtype(value.dtype, np.integer)
      or isinstance(num_planes, bool) or not 1 <= int(value) <= p_count):
    raise ValueError(f"num_planes={num_planes!r} is invalid: must be an integer in [1, {p_count}]")
  return jnp.asarray(value, jnp.int32), block, k


def _plane_weights(p_count: int, m_prime):
  """2^(M'-1-p) for the first M' planes, 0 for the planes a unit stopping at M' skips."""
  p = jnp.arange(p_count, dtype=jnp.int32)
  return jnp.where(p < m_prime, jnp.left_shift(1, jnp.maximum(m_prime - 1 - p, 0)), 0)


def _signed_bits(bp: bitplane.BitPlanes, k: int):
  """Signed bits (1 - 2 sgn_i) b_{p,i}, int32 [..., P, K]."""
  g = bp.fmt.group_size
  planes = bitplane.bytes_to_bits(bp.planes, g)
  sign = bitplane.bytes_to_bits(bp.sign, g)
  # Flatten groups back onto K and drop the ragged tail's padding (it is zero anyway,
  # but the weights have no rows there).
  planes = jnp.swapaxes(planes, -3, -2)  # [..., P, n_groups, G]
  flat = lambda a: a.reshape(*a.shape[:-2], a.shape[-2] * a.shape[-1])[..., :k]  # sizes, not -1: empty axes
  planes = flat(planes)
  signs = 1 - 2 * flat(sign)
  return planes * signs[..., None, :]


@functools.partial(jax.jit, static_argnums=(3, 4))
def _bitserial(bp: bitplane.BitPlanes, w: int4.Int4Weights, m_prime, block: int, k: int):
  """Both entry points in one program (M' traced: one compilation serves every M' <= P).

  Returns A and S int32 [..., n_blocks, N] (S broadcast over N), y float32 [..., N].
  """
  signed_planes = _signed_bits(bp, k)  # [..., P, K]
  n_blocks = k // block
  sp = signed_planes.reshape(*signed_planes.shape[:-1], n_blocks, block)
  q = int4.codes(w).reshape(n_blocks, block, -1)  # [n_blocks, block, N]
  # One integer dot product per plane: what the bit-serial unit computes per cycle.
  plane_sums = jnp.einsum("...pbk,bkn->...pbn", sp, q, preferred_element_type=jnp.int32)
  weights = _plane_weights(bp.num_planes, m_prime)
  a = jnp.sum(plane_sums * weights[:, None, None], axis=-3)
  signed_m = jnp.sum(signed_planes * weights[:, None], axis=-2)  # +-m'_i, m' = m >> (P-M')
  s = jnp.sum(signed_m.reshape(*signed_m.shape[:-1], n_blocks, block), axis=-1)

  # The only floating-point step: y = sum_blocks 2^(E-M'+1) (d A + z S).
  # block divides both G and Gw, so per-block E, d, z are plain repeats (the ragged
  # tail of the activation may add blocks past K: cut them).
  e = jnp.repeat(bp.exponent.astype(jnp.int32), bp.fmt.group_size // block,
                 axis=-1)[..., :n_blocks]
  per_block = lambda v: jnp.repeat(v, w.group_size // block, axis=0)  # [n_blocks, N]
  t = per_block(w.scale) * a.astype(jnp.float32)
  if not w.symmetric:
    t = t + per_block(w.offset) * s[..., None].astype(jnp.float32)
  # 2^(E-M'+1) can be as small as 2^-141, below float32's normal range, and XLA on CPU
  # flushes subnormals; split it into two normal powers of two so that every block whose
  # result is normal is scaled exactly.
  lsb = e - m_prime + 1
  hi = jnp.maximum(lsb, -126)
  y_blocks = t * _pow2(hi)[..., None] * _pow2(lsb - hi)[..., None]
  nonfinite = (e == anda.NONFINITE_EXPONENT)[..., None]  # such groups decode to NaN
  y_blocks = jnp.where(nonfinite, jnp.nan, y_blocks)
  return a, jnp.broadcast_to(s[..., None], a.shape), jnp.sum(y_blocks, axis=-2)


def _pow2(e):
  """2.0**e as float32 for integer e in [-126, 127], built from bits (exact, no FTZ)."""
  return jax.lax.bitcast_convert_type(jnp.left_shift(e + 127, 23), jnp.float32)


def partial_sums(bp: bitplane.BitPlanes, w: int4.Int4Weights, num_planes=None):
  """Exact integer partial sums (A, S), each int32 [..., n_blocks, N].

  S does not depend on the output column; it is broadcast over N to keep one shape.
  num_planes = M' (an int in [1, P], or traced) streams only the first M' planes.
  """
  a, s, _ = _bitserial(bp, w, *_check(bp, w, num_planes))
  return a, s


def matmul(bp: bitplane.BitPlanes, w: int4.Int4Weights, num_planes=None):
  """float32 [..., N] = sum over blocks of 2^(E-M'+1) (d A + z S), streaming M' planes."""
  return _bitserial(bp, w, *_check(bp, w, num_planes))[2]
