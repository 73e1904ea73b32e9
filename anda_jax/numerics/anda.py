"""The Anda activation format: encode, decode and fake-quantize.

Defined in docs/formats.md, section 1.

Everything is computed on the integer bits of float32 values. That makes the result exact
(no float rounding can creep in), independent of the backend's flush-to-zero behaviour
(XLA on CPU flushes subnormals in float arithmetic, so a float formulation would lose
values below 2^-126), and it is the same arithmetic a Pallas kernel or the hardware does.

Shape-changing settings (group size, exponent width, rounding, axis) live in the static
`AndaFormat`; the mantissa length is an ordinary (possibly traced) int32, so one compiled
program serves every M and `jax.vmap` over M values works.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from anda_jax.checks import check_int
from anda_jax.precision import MAX_MANTISSA_BITS, MIN_MANTISSA_BITS

ROUNDING_MODES = ("truncate", "nearest", "stochastic")
MAX_GROUP_SIZE = 1024
# Exponent value that marks a group holding NaN or +-Inf; such a group decodes to NaN in
# every element (like an OCP MX NaN scale). It lies outside [E_min, E_max] for every
# exponent width, so it can never collide with a real exponent, and it fits int8.
NONFINITE_EXPONENT = -128

_F32_MANTISSA_BITS = 23
_F32_BIAS = 127
_F32_EXP_FIELD_INF = 0xFF
_F32_ABS_MASK = 0x7FFFFFFF
_F32_FRAC_MASK = 0x7FFFFF


@dataclasses.dataclass(frozen=True)
class AndaFormat:
  """Static parameters of an Anda format (docs/formats.md, 1.1). Hashable: use it as a
  static argument under `jax.jit`."""

  group_size: int = 64
  exponent_bits: int = 8
  rounding: str = "truncate"
  axis: int = -1

  def __post_init__(self):
    check_int("group_size", self.group_size, 1, MAX_GROUP_SIZE)
    check_int("exponent_bits", self.exponent_bits, 2, 8)
    if self.rounding not in ROUNDING_MODES:
      raise ValueError(f"rounding={self.rounding!r} is invalid: must be one of {ROUNDING_MODES}")
    if isinstance(self.axis, bool) or not isinstance(self.axis, (int, np.integer)):
      raise ValueError(f"axis={self.axis!r} is invalid: must be an integer")

  @property
  def e_max(self) -> int:
    return 2 ** (self.exponent_bits - 1) - 1

  @property
  def e_min(self) -> int:
    return -(2 ** (self.exponent_bits - 1) - 2)

  def storage_bits(self, mantissa_bits) -> float:
    """Bits stored per element: sign + mantissa + the shared exponent's share."""
    return 1 + mantissa_bits + self.exponent_bits / self.group_size


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AndaEncoding:
  """An encoded tensor. The grouping axis is moved last and split into groups:
  sign and magnitude are [..., n_groups, G], exponent is [..., n_groups]."""

  sign: jax.Array  # uint8, 1 for negative values (and -0.0)
  magnitude: jax.Array  # int32, m_i in [0, 2^M - 1]; padding elements are 0
  exponent: jax.Array  # int32, E (or NONFINITE_EXPONENT)
  mantissa_bits: jax.Array  # int32 scalar, M
  fmt: AndaFormat = dataclasses.field(metadata=dict(static=True))
  shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
  dtype: Any = dataclasses.field(metadata=dict(static=True))

  @property
  def num_groups(self) -> int:
    return self.exponent.shape[-1]


def check_mantissa_bits(mantissa_bits, lo: int = MIN_MANTISSA_BITS, hi: int = MAX_MANTISSA_BITS):
  """Validates a concrete M (Python int or concrete array) and returns it as int32.

  A traced M cannot be checked here; callers clip it to the valid range instead."""
  if isinstance(mantissa_bits, jax.core.Tracer):
    if mantissa_bits.shape != () or not jnp.issubdtype(mantissa_bits.dtype, jnp.integer):
      raise ValueError(
          f"mantissa_bits must be an integer scalar, got {mantissa_bits.dtype}{list(mantissa_bits.shape)}")
    return mantissa_bits.astype(jnp.int32)
  value = np.asarray(mantissa_bits)
  if value.shape != () or not np.issubdtype(value.dtype, np.integer):
    raise ValueError(f"mantissa_bits={mantissa_bits!r} is invalid: must be an integer in [{lo}, {hi}]")
  check_int("mantissa_bits", int(value), lo, hi)
  return jnp.asarray(value, jnp.int32)


def _normalize_axis(fmt: AndaFormat, ndim: int) -> int:
  if not -ndim <= fmt.axis < ndim:
    raise ValueError(f"axis={fmt.axis} is invalid for an input of rank {ndim}: must be in [{-ndim}, {ndim - 1}]")
  return fmt.axis % ndim


def check_input(x, fmt: AndaFormat) -> jax.Array:
  """x as a floating-point array that `fmt` can group (rank >= 1, axis in range), checked
  before anything is traced; every Anda entry point (pure jnp and Pallas) starts here."""
  if not isinstance(fmt, AndaFormat):
    raise ValueError(f"fmt={fmt!r} is invalid: must be an anda_jax.AndaFormat")
  return check_groupable(x, fmt)


def check_groupable(x, fmt) -> jax.Array:
  """x as a floating-point array of rank >= 1 whose axis `fmt.axis` exists (any block format)."""
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"x must be a floating-point array, got dtype {x.dtype}")
  if x.ndim == 0:
    raise ValueError("x has rank 0, which is invalid: must have at least one axis to group along")
  _normalize_axis(fmt, x.ndim)
  return x


def to_groups(x: jax.Array, fmt: AndaFormat) -> jax.Array:
  """[..., L, ...] -> [..., n_groups, G] with the grouping axis last, zero padded."""
  x = jnp.moveaxis(x, _normalize_axis(fmt, x.ndim), -1)
  length = x.shape[-1]
  n_groups = -(-length // fmt.group_size)
  pad = n_groups * fmt.group_size - length
  if pad:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
  return x.reshape(*x.shape[:-1], n_groups, fmt.group_size)


def from_groups(groups: jax.Array, shape: tuple[int, ...], fmt: AndaFormat) -> jax.Array:
  axis = _normalize_axis(fmt, len(shape))
  # Explicit sizes, not -1: an empty leading axis would make -1 ambiguous.
  flat = groups.reshape(*groups.shape[:-2], groups.shape[-2] * groups.shape[-1])[..., : shape[axis]]
  return jnp.moveaxis(flat, -1, axis)


def stochastic_uniforms(key: jax.Array, shape) -> jax.Array:
  """The 23-bit integers U behind the uniforms u = U * 2^-23 of stochastic rounding."""
  return (jax.random.bits(key, shape, jnp.uint32) >> 9).astype(jnp.int32)


def grouped_uniforms(shape, fmt: AndaFormat, key: jax.Array) -> jax.Array:
  """The stochastic-rounding integers U for an input of `shape`: drawn over its grouped,
  padded shape [..., n_groups, G], so every implementation rounds with the same draw."""
  moved = list(shape)
  length = moved.pop(_normalize_axis(fmt, len(shape)))
  return stochastic_uniforms(key, (*moved, -(-length // fmt.group_size), fmt.group_size))


def _shr(value, shift):
  """Logical right shift with the amount clamped to 31 (XLA leaves larger ones undefined)."""
  return jax.lax.shift_right_logical(value, jnp.minimum(shift, 31))


def _group_exponent(abs_bits, fmt: AndaFormat):
  """Shared exponent E [...] of groups [..., G] given |x|'s float32 bits, and whether the
  group holds a NaN or Inf."""
  # For non-negative floats the integer order of the bits is the float order, so the group
  # maximum and the non-finite test (exponent field 0xFF) need no float arithmetic.
  max_abs_bits = jnp.max(abs_bits, axis=-1)
  nonfinite = max_abs_bits >= (_F32_EXP_FIELD_INF << _F32_MANTISSA_BITS)
  # floor(log2 a) read off the exponent field; zero and subnormal maxima (field 0) lie
  # below every E_min and are clipped to it (docs/formats.md, 1.3).
  group_exp = jnp.clip((max_abs_bits >> _F32_MANTISSA_BITS) - _F32_BIAS, fmt.e_min, fmt.e_max)
  return group_exp, nonfinite


def encode_groups(groups: jax.Array, fmt: AndaFormat, mantissa_bits, uniforms=None):
  """Encodes float32 groups [..., G] -> (sign uint8, magnitude int32, exponent int32 [...]).

  The one implementation of docs/formats.md, 1.3: `encode` and the Pallas kernels call it."""
  m_bits = jnp.clip(mantissa_bits, MIN_MANTISSA_BITS, MAX_MANTISSA_BITS).astype(jnp.int32)
  bits = jax.lax.bitcast_convert_type(groups.astype(jnp.float32), jnp.int32)
  sign = (bits < 0).astype(jnp.uint8)
  abs_bits = bits & _F32_ABS_MASK
  exp_field = abs_bits >> _F32_MANTISSA_BITS
  group_exp, nonfinite = _group_exponent(abs_bits, fmt)
  exponent = jnp.where(nonfinite, NONFINITE_EXPONENT, group_exp)

  # |x| = significand * 2^(element exponent - 23); subnormals have no hidden bit.
  significand = (abs_bits & _F32_FRAC_MASK) | jnp.where(exp_field > 0, 1 << _F32_MANTISSA_BITS, 0)
  elem_exp = jnp.maximum(exp_field, 1) - _F32_BIAS
  e = group_exp[..., None]
  # m = |x| / s with s = 2^(E - M + 1): a right shift by k = (E - M + 1) - (elem_exp - 23).
  # k >= 0 whenever elem_exp <= E; larger elements only occur when E was clipped at E_max,
  # and they saturate.
  shift = e - m_bits + 1 - (elem_exp - _F32_MANTISSA_BITS)
  shift = jnp.maximum(shift, 0)
  truncated = _shr(significand, shift)
  max_code = (1 << m_bits) - 1

  if fmt.rounding == "truncate":
    magnitude = truncated
  elif fmt.rounding == "nearest":
    # Ties to even: beyond 25 bits of shift the 24-bit significand is below half a unit.
    k = jnp.minimum(shift, 25)
    trunc_k = jax.lax.shift_right_logical(significand, k)
    remainder = significand - jax.lax.shift_left(trunc_k, k)
    half = jax.lax.shift_left(1, jnp.maximum(k - 1, 0))
    round_up = (k > 0) & ((remainder > half) | ((remainder == half) & ((trunc_k & 1) == 1)))
    magnitude = trunc_k + round_up.astype(jnp.int32)
  elif fmt.rounding == "stochastic":
    if uniforms is None:
      raise ValueError("rounding='stochastic' needs a PRNG key")
    # floor(|x|/s + u) with u = U * 2^-23 rounds up iff frac >= 1 - u, i.e.
    # remainder / 2^k >= D / 2^23 with D = 2^23 - U, compared exactly in integers.
    k = jnp.minimum(shift, 31)
    remainder = significand - jax.lax.shift_left(truncated, k)
    d = (1 << _F32_MANTISSA_BITS) - uniforms
    lhs = jnp.where(
        shift <= _F32_MANTISSA_BITS,
        jax.lax.shift_left(remainder, jnp.maximum(_F32_MANTISSA_BITS - shift, 0)),
        _shr(remainder, shift - _F32_MANTISSA_BITS),
    )
    magnitude = truncated + (lhs >= d).astype(jnp.int32)
  else:  # unreachable: AndaFormat validates rounding
    raise ValueError(f"rounding={fmt.rounding!r}")

  saturated = elem_exp > e
  magnitude = jnp.where(saturated, max_code, jnp.minimum(magnitude, max_code))
  magnitude = jnp.where(nonfinite[..., None], 0, magnitude)
  return sign, magnitude, exponent


def decode_groups(sign, magnitude, exponent, mantissa_bits) -> jax.Array:
  """(sign, m, E, M) -> float32 x = (-1)^sign * m * 2^(E - M + 1), built bit by bit.

  Exact for every value the format can hold, subnormal results included."""
  m_bits = jnp.clip(mantissa_bits, MIN_MANTISSA_BITS, MAX_MANTISSA_BITS).astype(jnp.int32)
  e = exponent[..., None]
  lsb_exp = e - m_bits + 1  # exponent of one unit in the last place
  top_bit = 31 - jax.lax.clz(jnp.maximum(magnitude, 1))  # floor(log2 m)
  value_exp = lsb_exp + top_bit
  normal = (jax.lax.shift_left(value_exp + _F32_BIAS, _F32_MANTISSA_BITS)
            | (jax.lax.shift_left(magnitude, _F32_MANTISSA_BITS - top_bit) & _F32_FRAC_MASK))
  # Subnormal results are multiples of 2^-149: m << (lsb_exp + 149), never negative here
  # because lsb_exp >= E_min - 24 + 1 >= -149.
  subnormal = jax.lax.shift_left(magnitude, jnp.maximum(lsb_exp + 149, 0))
  bits = jnp.where(value_exp >= 1 - _F32_BIAS, normal, subnormal)
  bits = jnp.where(magnitude == 0, 0, bits)
  bits = bits | jax.lax.shift_left(sign.astype(jnp.int32), 31)
  x = jax.lax.bitcast_convert_type(bits, jnp.float32)
  return jnp.where((exponent == NONFINITE_EXPONENT)[..., None], jnp.nan, x)


def quantize_groups(groups: jax.Array, fmt: AndaFormat, mantissa_bits, uniforms=None) -> jax.Array:
  """decode(encode(groups)) for float32 groups [..., G], without materializing the encoding.

  For truncate and nearest, m * s is x's own significand with its low k bits cleared (or
  rounded half to even first), so the result is built by masking x's bits: no magnitude,
  no re-normalization. Bit-identical to decode_groups(*encode_groups(...)) (tested)."""
  if fmt.rounding == "stochastic":
    sign, magnitude, exponent = encode_groups(groups, fmt, mantissa_bits, uniforms)
    return decode_groups(sign, magnitude, exponent, mantissa_bits)
  m_bits = jnp.clip(mantissa_bits, MIN_MANTISSA_BITS, MAX_MANTISSA_BITS).astype(jnp.int32)
  bits = jax.lax.bitcast_convert_type(groups.astype(jnp.float32), jnp.int32)
  abs_bits = bits & _F32_ABS_MASK
  exp_field = abs_bits >> _F32_MANTISSA_BITS
  group_exp, nonfinite = _group_exponent(abs_bits, fmt)
  e = group_exp[..., None]
  elem_exp = jnp.maximum(exp_field, 1) - _F32_BIAS
  # Bits of x below the quantum s = 2^(E - M + 1): as in encode_groups.
  shift = jnp.maximum(e - m_bits + 1 - (elem_exp - _F32_MANTISSA_BITS), 0)
  k = jnp.minimum(shift, _F32_MANTISSA_BITS)  # masks stay inside the fraction field
  low_mask = jax.lax.shift_left(1, k) - 1
  if fmt.rounding == "truncate":
    # shift >= 24 drops the whole significand (hidden bit included): the result is 0.
    out = jnp.where(shift > _F32_MANTISSA_BITS, 0, abs_bits & ~low_mask)
  else:
    # Round half to even by adding (half - 1 + lsb) before masking; a carry out of the
    # fraction field correctly bumps the exponent (also from subnormal into normal).
    # The quotient's lowest bit; at k = 23 it is the hidden bit, which the float's bits
    # do not hold (bit 23 there is the exponent's lowest bit).
    lsb = jnp.where(k == _F32_MANTISSA_BITS, (exp_field > 0).astype(jnp.int32),
                    jax.lax.shift_right_logical(abs_bits, k) & 1)
    half = jax.lax.shift_left(1, jnp.maximum(k - 1, 0))
    rounded = jnp.where(k > 0, (abs_bits + half - 1 + lsb) & ~low_mask, abs_bits)
    # shift == 24: |x| / s = significand / 2^24 lies in [1/2, 1) for normal x; it rounds to
    # one quantum unless it is the tie 1/2 (fraction 0), which goes to the even 0.
    quantum_exp = e - m_bits + 1
    quantum = jnp.where(quantum_exp >= 1 - _F32_BIAS,
                        jax.lax.shift_left(quantum_exp + _F32_BIAS, _F32_MANTISSA_BITS),
                        jax.lax.shift_left(1, jnp.maximum(quantum_exp + 149, 0)))
    above_half = (exp_field > 0) & ((abs_bits & _F32_FRAC_MASK) != 0)
    out = jnp.where(shift == _F32_MANTISSA_BITS + 1, jnp.where(above_half, quantum, 0),
                    jnp.where(shift > _F32_MANTISSA_BITS + 1, 0, rounded))
  # Saturation: elements beyond 2^(E+1) (E clipped at E_max), or rounded up to 2^(E+1),
  # become the largest code (2^M - 1) * s, whose top bit sits at 2^E.
  largest = (jax.lax.shift_left(e + _F32_BIAS, _F32_MANTISSA_BITS)
             | (jax.lax.shift_left(jax.lax.shift_left(1, m_bits) - 1, _F32_MANTISSA_BITS + 1 - m_bits)
                & _F32_FRAC_MASK))
  out = jnp.where((out >> _F32_MANTISSA_BITS) - _F32_BIAS > e, largest, out)
  x = jax.lax.bitcast_convert_type(out | (bits & ~_F32_ABS_MASK), jnp.float32)
  return jnp.where(nonfinite[..., None], jnp.nan, x)


def _validate(x, fmt: AndaFormat, mantissa_bits, key):
  """Checks the user's input before anything is traced; returns (x, M as int32)."""
  x = check_input(x, fmt)
  if fmt.rounding == "stochastic" and key is None:
    raise ValueError("rounding='stochastic' needs a PRNG key: pass key=jax.random.key(...)")
  return x, check_mantissa_bits(mantissa_bits)


def _uniforms(key, shape):
  return None if key is None else stochastic_uniforms(key, shape)


def encode(x, fmt: AndaFormat, mantissa_bits, key=None) -> AndaEncoding:
  """Encodes `x` along `fmt.axis` (docs/formats.md, 1.3). `key` is needed for stochastic rounding;
  its uniforms are drawn over the grouped, padded shape ([..., n_groups, G])."""
  return _encode(*_validate(x, fmt, mantissa_bits, key), fmt=fmt, key=key)


# Validation happens eagerly above; the arithmetic is one compiled program, so eager calls
# do not dispatch dozens of small ops (and inside an outer jit it is simply inlined).
@functools.partial(jax.jit, static_argnames="fmt")
def _encode(x, m_bits, fmt, key) -> AndaEncoding:
  groups = to_groups(x, fmt)
  sign, magnitude, exponent = encode_groups(groups, fmt, m_bits, _uniforms(key, groups.shape))
  return AndaEncoding(sign=sign, magnitude=magnitude, exponent=exponent, mantissa_bits=m_bits,
                      fmt=fmt, shape=tuple(x.shape), dtype=x.dtype)


@jax.jit
def decode(enc: AndaEncoding) -> jax.Array:
  """The values an encoding stands for, in the input's shape and dtype."""
  groups = decode_groups(enc.sign, enc.magnitude, enc.exponent, enc.mantissa_bits)
  return from_groups(groups, enc.shape, enc.fmt).astype(enc.dtype)


@jax.custom_vjp
def _straight_through(x, quantized):
  del x
  return quantized


def _straight_through_fwd(x, quantized):
  return quantized, None


def _straight_through_bwd(_, grad):
  # The straight-through estimator: d quantize(x) / dx = identity.
  return grad, None


_straight_through.defvjp(_straight_through_fwd, _straight_through_bwd)


def quantize(x, fmt: AndaFormat, mantissa_bits, key=None) -> jax.Array:
  """Fake quantization: decode(encode(x)) in one fused computation, with a straight-through
  gradient. Same shape and dtype as `x`."""
  x, m_bits = _validate(x, fmt, mantissa_bits, key)
  return _straight_through(x, jax.lax.stop_gradient(_quantize(x, m_bits, fmt=fmt, key=key)))


@functools.partial(jax.jit, static_argnames="fmt")
def _quantize(x, m_bits, fmt, key):
  groups = to_groups(x, fmt)
  quantized = quantize_groups(groups, fmt, m_bits, _uniforms(key, groups.shape))
  return from_groups(quantized, x.shape, fmt).astype(x.dtype)
