"""The activation formats Anda is compared with, as fake quantizers: OCP MX, NVFP4, per-token
FP8 / INT8; and `fake_quantize`, one entry point for them and for `AndaFormat`.

Defined in docs/formats.md, sections 5 (OCP MX), 6 (NVFP4) and 7 (per-token FP8 / INT8);
`FormatChoice`, one of several of them chosen by a traced value, in section 10.

Every format groups along `axis` (the contraction axis of a matmul input, -1 by default) and
returns float32 values of the input's shape, with a straight-through gradient.

Recipes, and where they come from:

- MXFormat: OCP Microscaling Formats (MX) v1.0, as microsoft/microxcaling implements it
  (mx/mx_ops.py `_quantize_mx`, mx/elemwise_ops.py `_quantize_elemwise_core`, mx/formats.py).
  Per block of `block_size` elements: shared scale X = 2^s, s = floor(log2 amax) - emax_elem,
  clamped to E8M0's [-127, 127] (microxcaling: above 127 the scale is NaN, which a finite
  float32 block cannot reach; below -127 it is -127; an all-zero block takes log2 of the
  smallest normal, -126). Elements |x|/X are rounded to the element format with its
  subnormals, then normals saturate to the largest finite value. Rounding "nearest" is ties to
  even (microxcaling's "even"; its "nearest" rounds ties away from zero), "truncate" is toward
  zero (microxcaling's "floor"). MXINT8 elements are k/64 with k clamped to [-127, 127], as in
  microxcaling (OCP's two's complement code -128 is not used). The sign of zero is kept.
- NVFP4Format: E2M1 elements in blocks of 16 with FP8 E4M3 block scales and a float32 second
  level scale, following NVIDIA TensorRT Model Optimizer (modelopt/torch/quantization/qtensor/
  nvfp4_tensor.py, dynamic path), with the second-level scale taken per token (per row of
  `axis`) instead of per tensor, all in float32:
      g     = max(amax_row / (6 * 448), 2^-100)              per token
      s8    = E4M3(max(amax_block / (6 * g), 2^-9))           per block, round to nearest even
      S     = s8 * g;  x_hat = E2M1(|x| * (1 / S)) * S        E2M1 rounds to nearest even, saturates at 6
  Differences from ModelOpt: the floor on g, reached only by rows whose maximum is below
  ~2e-27 (ModelOpt divides by zero on an all-zero tensor); ModelOpt sets a zero block's scale to 1.0
  before clamping at 2^-9 (the block decodes to 0 either way); elements are scaled by the
  reciprocal 1/S, as TensorRT-LLM's FP4 quantize kernel does, where ModelOpt divides by S
  (XLA compiles x / S into x * (1/S) anyway).
- PerTokenFormat: dynamic per-token scaling as vLLM does it (tests/kernels/quant_utils.py
  `ref_dynamic_per_token_quant`, the reference of its CUDA kernels):
      fp8_e4m3: scale = max(amax / 448, 1 / (448 * 512));  x_hat = E4M3(|x| * (1 / scale)) * scale
      int8:     scale = max(amax / 127, 2^-100);           x_hat = clip(rint(|x| * (1 / scale)), 127) * scale
  (vLLM divides by the FP8 scale; we multiply by its reciprocal, as for NVFP4. The int8 floor
  is reached only by rows whose maximum is below ~1e-28, the all-zero row among them, which
  vLLM's reference turns into NaN.)

Exactness. Rounding to an element format, and MX's power-of-two scaling, are done on the integer
bits of float32 (as anda.py does), so they are exact for every input, float32
subnormals included: XLA on CPU flushes subnormals in float arithmetic. The float32 steps of the
NVFP4 and per-token recipes are single IEEE operations, each correctly rounded on CPU; their
floors keep every intermediate a normal float unless it is so small that its element rounds to
zero anyway, so flushing changes no result. XLA rewrites a / broadcast(b), constants included,
into a * (1/b); the few true divisions of the recipes (per row or per block) are kept exact by
an optimization barrier. A non-finite input (NaN, +-Inf) makes its block decode to NaN in every
element (for PerTokenFormat the block is the row); nothing else is affected (NVFP4's per-token
amax ignores non-finite values).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from anda_jax.checks import check_int
from anda_jax.numerics import anda
from anda_jax.numerics.anda import AndaFormat

_MANTISSA = 23  # float32 fraction bits
_BIAS = 127
_ABS_MASK = 0x7FFFFFFF
_FRAC_MASK = 0x7FFFFF
_INF_BITS = 0x7F800000  # |x| bits at or above this are Inf or NaN
_E8M0_RANGE = (-127, 127)
_MAX_BLOCK_SIZE = anda.MAX_GROUP_SIZE


@dataclasses.dataclass(frozen=True)
class _Element:
  """An element format: magnitudes n * 2^(max(e, emin) - mantissa) with e = floor(log2 |v|),
  so binades below 2^emin hold its subnormals; the largest finite magnitude is
  max_code * 2^(emax - mantissa)."""

  bits: int  # storage per element, sign included
  mantissa: int  # stored fraction bits
  emin: int  # exponent of the smallest normal binade
  emax: int  # exponent of the largest binade
  max_code: int


# OCP MX v1.0 element formats. MXINT8 is the fixed-point k * 2^-6: one binade at 2^0 with six
# fraction bits, clamped to 127/64.
_ELEMENTS = {
    "int8": _Element(bits=8, mantissa=6, emin=0, emax=0, max_code=127),
    "fp8_e4m3": _Element(bits=8, mantissa=3, emin=-6, emax=8, max_code=14),  # 448: S.1111.111 is NaN
    "fp8_e5m2": _Element(bits=8, mantissa=2, emin=-14, emax=15, max_code=7),  # 57344
    "fp6_e3m2": _Element(bits=6, mantissa=2, emin=-2, emax=4, max_code=7),  # 28
    "fp6_e2m3": _Element(bits=6, mantissa=3, emin=0, emax=2, max_code=15),  # 7.5
    "fp4_e2m1": _Element(bits=4, mantissa=1, emin=0, emax=2, max_code=3),  # 6
}
MX_ELEMENTS = tuple(_ELEMENTS)
MX_ROUNDING_MODES = ("nearest", "truncate")
PER_TOKEN_ELEMENTS = ("fp8_e4m3", "int8")
NVFP4_BLOCK_SIZE = 16
_E4M3_MAX, _E2M1_MAX, _INT8_MAX = 448.0, 6.0, 127.0
_SCALE_BITS = 32  # a float32 per-token scale
_FP8_MIN_SCALE = float(np.float32(1.0) / np.float32(_E4M3_MAX * 512.0))  # vLLM's floor
_MIN_SCALE = 2.0**-100  # floor of the other float32 scales: only rows with max below ~2e-27 reach it
_E4M3_MIN_BLOCK_SCALE = 2.0**-9  # E4M3's smallest subnormal: a block scale never rounds to 0


def _check_element(element, allowed):
  if element not in allowed:
    raise ValueError(f"element={element!r} is invalid: must be one of {allowed}")


def _check_axis(axis):
  if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
    raise ValueError(f"axis={axis!r} is invalid: must be an integer")


def _check_row_length(row_length):
  return check_int("row_length", row_length, 1, hint=" (elements per token sharing its float32 scale)")


@dataclasses.dataclass(frozen=True)
class MXFormat:
  """OCP MX v1.0: blocks of `block_size` elements share a power-of-two E8M0 scale. Hashable:
  use it as a static argument under `jax.jit`."""

  element: str = "fp4_e2m1"
  block_size: int = 32
  rounding: str = "nearest"
  axis: int = -1

  def __post_init__(self):
    _check_element(self.element, MX_ELEMENTS)
    check_int("block_size", self.block_size, 1, _MAX_BLOCK_SIZE)
    if self.rounding not in MX_ROUNDING_MODES:
      raise ValueError(f"rounding={self.rounding!r} is invalid: must be one of {MX_ROUNDING_MODES}")
    _check_axis(self.axis)

  @property
  def group_size(self) -> int:  # the name anda.to_groups reads
    return self.block_size

  def storage_bits(self) -> float:
    """Bits per element: the element plus the 8-bit scale's share (MXFP4 4.25, MXINT8 8.25)."""
    return _ELEMENTS[self.element].bits + 8 / self.block_size


@dataclasses.dataclass(frozen=True)
class NVFP4Format:
  """NVFP4: E2M1 elements, an E4M3 scale per block of 16, a float32 scale per token (row of
  `axis`). Hashable: use it as a static argument under `jax.jit`."""

  axis: int = -1

  def __post_init__(self):
    _check_axis(self.axis)

  @property
  def group_size(self) -> int:
    return NVFP4_BLOCK_SIZE

  def storage_bits(self, row_length: int) -> float:
    """Bits per element for tokens of `row_length` elements: 4 + 8/16 + 32/row_length."""
    return 4 + 8 / NVFP4_BLOCK_SIZE + _SCALE_BITS / _check_row_length(row_length)


@dataclasses.dataclass(frozen=True)
class PerTokenFormat:
  """Dynamic per-token scaling: one float32 scale per row of `axis`, FP8 E4M3 or symmetric INT8
  elements. Hashable: use it as a static argument under `jax.jit`."""

  element: str = "fp8_e4m3"
  axis: int = -1

  def __post_init__(self):
    _check_element(self.element, PER_TOKEN_ELEMENTS)
    _check_axis(self.axis)

  def storage_bits(self, row_length: int) -> float:
    """Bits per element for tokens of `row_length` elements: 8 + 32/row_length."""
    return 8 + _SCALE_BITS / _check_row_length(row_length)


_FIXED_FORMATS = (MXFormat, NVFP4Format, PerTokenFormat)  # no mantissa length to choose


@dataclasses.dataclass(frozen=True)
class FormatChoice:
  """One of several formats per product, chosen by a configuration's value (docs/formats.md,
  section 10): value i in 1..len(formats) is formats[i - 1], 0 keeps the activation in floating
  point. The value takes M's place in a precision configuration and may be traced, so one
  compiled program serves every mix of the formats. Hashable: use it as a static argument
  under `jax.jit`.

  formats: MX, NVFP4 or per-token formats (each at most once, one shared `axis`); at most
  MAX_MANTISSA_BITS of them, the largest value a configuration holds."""

  formats: tuple

  def __post_init__(self):
    formats = tuple(self.formats) if isinstance(self.formats, (list, tuple)) else None
    if not formats:
      raise ValueError(f"formats={self.formats!r} is invalid: must be a non-empty tuple of "
                       f"{[f.__name__ for f in _FIXED_FORMATS]}")
    object.__setattr__(self, "formats", formats)
    for i, fmt in enumerate(formats):
      if not isinstance(fmt, _FIXED_FORMATS):
        raise ValueError(f"formats[{i}]={fmt!r} is invalid: must be one of "
                         f"{[f.__name__ for f in _FIXED_FORMATS]}")
      if fmt in formats[:i]:
        raise ValueError(f"formats[{i}]={fmt!r} is invalid: it repeats an earlier format")
      if fmt.axis != formats[0].axis:
        raise ValueError(f"formats[{i}].axis={fmt.axis} is invalid: every format of a choice "
                         f"groups along one axis ({formats[0].axis})")
    check_int("len(formats)", len(formats), 1, anda.MAX_MANTISSA_BITS)

  @property
  def axis(self) -> int:
    return self.formats[0].axis

  @property
  def group_size(self) -> int | None:
    """The least common multiple of the formats' block sizes (a span that holds whole blocks
    of each, as a model shard must), None if none has blocks (per-token formats)."""
    sizes = [f.group_size for f in self.formats if hasattr(f, "group_size")]
    return math.lcm(*sizes) if sizes else None

  def chosen(self, value: int):
    """The format of a concrete value 1..len(formats)."""
    return self.formats[check_int("value", value, 1, len(self.formats),
                                  " (0 is floating point)") - 1]

  def storage_bits(self, value: int, row_length: int) -> float:
    """Bits per element of the format `value` chooses, on tokens of `row_length` elements."""
    return storage_bits(self.chosen(value), row_length=row_length)


FORMATS = (AndaFormat, *_FIXED_FORMATS, FormatChoice)


def storage_bits(fmt, mantissa_bits=None, row_length=None) -> float:
  """Bits stored per activation element for any format: Anda needs `mantissa_bits`, NVFP4 and
  per-token formats need `row_length` (their per-token scale's share), a FormatChoice both
  (its value in place of M)."""
  if isinstance(fmt, AndaFormat):
    return fmt.storage_bits(check_int("mantissa_bits", mantissa_bits, 1))
  if isinstance(fmt, FormatChoice):
    return fmt.storage_bits(mantissa_bits, row_length)
  if isinstance(fmt, MXFormat):
    return fmt.storage_bits()
  if isinstance(fmt, (NVFP4Format, PerTokenFormat)):
    return fmt.storage_bits(row_length)
  raise ValueError(f"fmt={fmt!r} is invalid: must be one of {[f.__name__ for f in FORMATS]}")


def fake_quantize(x, fmt, mantissa_bits=None, key=None) -> jax.Array:
  """x rounded to `fmt` and back, as float32 of x's shape, with a straight-through gradient.

  `mantissa_bits` (may be traced) is Anda's M, or a FormatChoice's value (0: x itself); `key`
  (stochastic rounding) is Anda's and only Anda's."""
  if isinstance(fmt, AndaFormat):
    if mantissa_bits is None:
      raise ValueError("mantissa_bits=None is invalid for an AndaFormat: must be an integer in "
                       f"[{anda.MIN_MANTISSA_BITS}, {anda.MAX_MANTISSA_BITS}]")
    x = anda.check_input(x, fmt)
    return anda.quantize(x.astype(jnp.float32), fmt, mantissa_bits, key)
  if isinstance(fmt, FormatChoice):
    if key is not None:
      raise ValueError("key is invalid for FormatChoice: must be None (only AndaFormat rounds "
                       "stochastically)")
    return _choose(x, fmt, mantissa_bits)
  if not isinstance(fmt, FORMATS):
    raise ValueError(f"fmt={fmt!r} is invalid: must be one of {[f.__name__ for f in FORMATS]}")
  name = type(fmt).__name__
  if mantissa_bits is not None:
    raise ValueError(f"mantissa_bits={mantissa_bits!r} is invalid for {name}: must be None "
                     "(only AndaFormat has a mantissa length)")
  if key is not None:
    raise ValueError(f"key is invalid for {name}: must be None (only AndaFormat rounds stochastically)")
  x = anda.check_groupable(x, fmt).astype(jnp.float32)
  # Anda's straight-through estimator: d fake_quantize(x) / dx = identity.
  return anda._straight_through(x, jax.lax.stop_gradient(_fake_quantize(x, fmt=fmt)))


def _choose(x, fmt: FormatChoice, value) -> jax.Array:
  """x in the format `value` chooses (0: x itself; a traced value out of range is clipped to
  it, as jax.lax.switch clips). Under vmap over values the switch becomes a select of every
  branch: each format is computed, the chosen one kept, bit for bit."""
  if value is None:
    raise ValueError("mantissa_bits=None is invalid for a FormatChoice: must be its value, an "
                     f"integer in [0, {len(fmt.formats)}] (0: floating point)")
  if jnp.shape(value) != () or not jnp.issubdtype(jnp.result_type(value), jnp.integer):
    raise ValueError(f"value={value!r} is invalid for a FormatChoice: must be an integer scalar")
  if not isinstance(value, jax.core.Tracer):
    check_int("value", int(value), 0, len(fmt.formats), " (0 is floating point)")
  for f in fmt.formats:
    x = anda.check_groupable(x, f)
  branches = [lambda x: x] + [functools.partial(fake_quantize, fmt=f) for f in fmt.formats]
  return jax.lax.switch(jnp.clip(value, 0, len(fmt.formats)), branches, x.astype(jnp.float32))


@functools.partial(jax.jit, static_argnames="fmt")
def _fake_quantize(x, fmt):
  if isinstance(fmt, PerTokenFormat):
    rows = jnp.moveaxis(x, fmt.axis, -1)
    return jnp.moveaxis(_per_token(rows, fmt.element), -1, fmt.axis)
  groups = anda.to_groups(x, fmt)  # [..., n_blocks, block], zero padded
  out = _mx(groups, fmt) if isinstance(fmt, MXFormat) else _nvfp4(groups)
  return anda.from_groups(out, x.shape, fmt)


# ------------------------------------------------------------------------ integer-bit helpers


def _bits(x):
  return jax.lax.bitcast_convert_type(x, jnp.int32)


def _float(bits):
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _floor_log2(abs_bits):
  """floor(log2 |x|) from float32 bits, exact for subnormals too (their leading bit is in the
  fraction: |x| = bits * 2^-149)."""
  exp_field = abs_bits >> _MANTISSA
  return jnp.where(exp_field > 0, exp_field - _BIAS, -118 - jax.lax.clz(abs_bits))


def _bits_of(n, q):
  """float32 bits of n * 2^q for integers 0 <= n < 2^24 and q >= -149 (a result below 2^-126
  is a float32 subnormal: n shifted into the fraction field)."""
  top = 31 - jax.lax.clz(jnp.maximum(n, 1))
  e = q + top
  normal = (jax.lax.shift_left(e + _BIAS, _MANTISSA)
            | (jax.lax.shift_left(n, _MANTISSA - top) & _FRAC_MASK))
  subnormal = jax.lax.shift_left(n, jnp.maximum(q + 149, 0))
  return jnp.where(n == 0, 0, jnp.where(e >= 1 - _BIAS, normal, subnormal))


def _round_element(abs_bits, scale_exp, elem: _Element, rounding: str):
  """Bits of X * R(|x| / X) for X = 2^scale_exp, R the rounding to `elem` (subnormals kept,
  saturating at its largest finite value), |x| given as finite float32 bits.

  Needs scale_exp + elem.emin - elem.mantissa >= -149 (the element grid lies on float32's)."""
  exp_field = abs_bits >> _MANTISSA
  significand = (abs_bits & _FRAC_MASK) | jnp.where(exp_field > 0, 1 << _MANTISSA, 0)
  ulp_exp = jnp.maximum(exp_field, 1) - (_BIAS + _MANTISSA)  # |x| = significand * 2^ulp_exp
  # The element's quantum around |x| is 2^q: its own binade, or the subnormal spacing.
  q = jnp.maximum(_floor_log2(abs_bits), scale_exp + elem.emin) - elem.mantissa
  q_top = scale_exp + elem.emax - elem.mantissa
  # n = |x| / 2^q drops k low bits of the significand. k >= 0 by the grid condition; beyond 25
  # the 24-bit significand is below half a unit and rounds to 0 either way.
  k = jnp.clip(q - ulp_exp, 0, 25)
  n = jax.lax.shift_right_logical(significand, k)
  if rounding == "nearest":  # ties to even
    remainder = significand - jax.lax.shift_left(n, k)
    half = jax.lax.shift_left(1, jnp.maximum(k - 1, 0))
    n = n + ((k > 0) & ((remainder > half) | ((remainder == half) & ((n & 1) == 1)))).astype(jnp.int32)
  # Saturate: beyond the top binade, or rounded past the largest code in it. (Below the top
  # binade n <= 2^(mantissa + 1), a value at most 2^mantissa * 2^q_top: never too large.)
  saturated = (q > q_top) | ((q == q_top) & (n > elem.max_code))
  return _bits_of(jnp.where(saturated, elem.max_code, n), jnp.where(saturated, q_top, q))


def _signed(out_abs, bits, nonfinite):
  """|x_hat| (float32) with x's sign (zeros keep theirs); NaN where the block is non-finite."""
  out = _float(_bits(out_abs) | (bits & ~_ABS_MASK))
  return jnp.where(nonfinite, jnp.nan, out)


def _divide(a, b):
  """a / b correctly rounded. XLA rewrites a / broadcast(b) (a constant b included) into
  a * (1/b), which rounds twice; an optimization barrier hides the denominator. It is b at a's
  shape built from `a` (a select that always picks b) so that under vmap it is batched like `a`
  and no broadcast appears after the barrier. Used on per-block or per-row arrays only (cheap)."""
  return a / jax.lax.optimization_barrier(jnp.where(jnp.isnan(a), b, b))


# --------------------------------------------------------------------------------- formats


def _mx(groups, fmt: MXFormat):
  elem = _ELEMENTS[fmt.element]
  bits = _bits(groups)
  abs_bits = bits & _ABS_MASK
  amax_bits = jnp.max(abs_bits, axis=-1, keepdims=True)  # integer order = float order for |x|
  # floor(log2 amax) exactly; microxcaling takes log2 of the smallest normal for amax = 0.
  amax_log2 = jnp.where(amax_bits == 0, 1 - _BIAS, _floor_log2(amax_bits))
  scale_exp = jnp.clip(amax_log2 - elem.emax, *_E8M0_RANGE)
  out = _round_element(abs_bits, scale_exp, elem, fmt.rounding)
  return _signed(_float(out), bits, amax_bits >= _INF_BITS)


def _nvfp4(groups):
  bits = _bits(groups)
  abs_bits = bits & _ABS_MASK
  nonfinite = jnp.max(abs_bits, axis=-1, keepdims=True) >= _INF_BITS
  abs_bits = jnp.where(abs_bits >= _INF_BITS, 0, abs_bits)  # poisons its block only
  block_amax = _float(jnp.max(abs_bits, axis=-1))  # [..., n_blocks]
  row_amax = jnp.max(block_amax, axis=-1, keepdims=True)
  g = jnp.maximum(_divide(row_amax, _E2M1_MAX * _E4M3_MAX), _MIN_SCALE)
  block_scale = jnp.maximum(_divide(block_amax, _E2M1_MAX * g), _E4M3_MIN_BLOCK_SCALE)
  e4m3 = _float(_round_element(_bits(block_scale), 0, _ELEMENTS["fp8_e4m3"], "nearest"))
  scale = (e4m3 * g)[..., None]
  codes = _round_element(_bits(_float(abs_bits) * (1.0 / scale)), 0, _ELEMENTS["fp4_e2m1"], "nearest")
  return _signed(_float(codes) * scale, bits, nonfinite)


def _per_token(rows, element: str):
  bits = _bits(rows)
  abs_bits = bits & _ABS_MASK
  amax_bits = jnp.max(abs_bits, axis=-1, keepdims=True)
  amax = _float(amax_bits)
  if element == "fp8_e4m3":
    scale = jnp.maximum(_divide(amax, _E4M3_MAX), _FP8_MIN_SCALE)
    elem, scale_exp = _ELEMENTS["fp8_e4m3"], 0
  else:
    # Integers in [-127, 127] are MXINT8's k/64 scaled by 2^6.
    scale = jnp.maximum(_divide(amax, _INT8_MAX), _MIN_SCALE)
    elem, scale_exp = _ELEMENTS["int8"], 6
  codes = _round_element(_bits(_float(abs_bits) * (1.0 / scale)), scale_exp, elem, "nearest")
  return _signed(_float(codes) * scale, bits, amax_bits >= _INF_BITS)


# ------------------------------------------------------------------------------ names

# The formats by the names configs give them (configs/formats.py, configs/search.py), each a
# class and the fields its name fixes; the fields a name leaves open are its options.
_NAMES = {
    "mxfp4": (MXFormat, dict(element="fp4_e2m1")),
    "mxfp6_e2m3": (MXFormat, dict(element="fp6_e2m3")),
    "mxfp6_e3m2": (MXFormat, dict(element="fp6_e3m2")),
    "mxfp8_e4m3": (MXFormat, dict(element="fp8_e4m3")),
    "mxfp8_e5m2": (MXFormat, dict(element="fp8_e5m2")),
    "mxint8": (MXFormat, dict(element="int8")),
    "nvfp4": (NVFP4Format, {}),
    "fp8_token": (PerTokenFormat, dict(element="fp8_e4m3")),
    "int8_token": (PerTokenFormat, dict(element="int8")),
}
FORMAT_NAMES = tuple(_NAMES)
# Options a name takes after a colon: "mxfp4:block_size=16,rounding=truncate". `axis` is not
# one: a product groups its activation along the contraction axis.
_OPTIONS = {MXFormat: dict(block_size=int, rounding=str), NVFP4Format: {}, PerTokenFormat: {}}


def parse_format(name: str):
  """The format object a config names: one of FORMAT_NAMES, optionally followed by options,
  e.g. "mxfp4", "mxint8:block_size=16", "mxfp6_e2m3:block_size=64,rounding=truncate" (MX
  formats take block_size and rounding; the others none). ValueError naming what is wrong and
  what is allowed."""
  if not isinstance(name, str):
    raise ValueError(f"format name {name!r} is invalid: must be a string, one of {FORMAT_NAMES}")
  base, _, options = name.strip().partition(":")
  if base not in _NAMES:
    raise ValueError(f"format name {name!r} is invalid: {base!r} must be one of {FORMAT_NAMES} "
                     "(options after a colon, e.g. 'mxfp4:block_size=16,rounding=truncate')")
  cls, fixed = _NAMES[base]
  allowed = _OPTIONS[cls]
  fields = dict(fixed)
  for item in filter(None, (s.strip() for s in options.split(","))):
    key, eq, value = (s.strip() for s in item.partition("="))
    if key not in allowed or not eq:
      raise ValueError(f"format name {name!r} is invalid: option {item!r} must be key=value with "
                       f"key one of {tuple(allowed) or 'none (this format takes no options)'}")
    if key in fields:
      raise ValueError(f"format name {name!r} is invalid: option {key!r} is given twice")
    try:
      fields[key] = allowed[key](value)
    except ValueError:
      raise ValueError(f"format name {name!r} is invalid: {key}={value!r} must be an integer") from None
  try:
    return cls(**fields)
  except ValueError as e:  # a value the class refuses: say which name held it
    raise ValueError(f"format name {name!r} is invalid: {e}") from None


def format_name(fmt) -> str:
  """The canonical name of a format object `parse_format` can build (options only where they
  differ from the defaults): parse_format(format_name(f)) == f."""
  for base, (cls, fixed) in _NAMES.items():
    if type(fmt) is cls and all(getattr(fmt, k) == v for k, v in fixed.items()):
      if fmt.axis != -1:
        break
      default = cls(**fixed)
      options = [f"{k}={getattr(fmt, k)}" for k in _OPTIONS[cls] if getattr(fmt, k) != getattr(default, k)]
      return base + (":" + ",".join(options) if options else "")
  raise ValueError(f"fmt={fmt!r} has no name: must be a format of {FORMAT_NAMES} along axis -1")


def element_spec(element: str) -> _Element:
  """An element format's bits (sign included), stored mantissa bits, smallest normal and
  largest binade exponents, and largest code: what a cost model needs to know of it."""
  _check_element(element, MX_ELEMENTS)
  return _ELEMENTS[element]
