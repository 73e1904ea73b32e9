"""The product dispatcher: every FP-INT product of a model runs through `ProductSpec`.

impl="fake" quantizes the activation and multiplies in floating point with the dequantized
weights (fast on any backend); impl="bitserial" packs the activation into bit planes with the
runtime-compressor kernel and runs the bit-serial Pallas kernel, an exact emulation of the
hardware. Both compute decode(x) @ dequantize(W). This module sits above the kernels and
below the models (docs/design.md: numerics -> kernels -> product -> models).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from anda_jax.kernels import bitplane_kernel
from anda_jax.kernels import bitserial_kernel
from anda_jax.numerics import anda
from anda_jax.numerics import baselines
from anda_jax.numerics import int4
from anda_jax.precision import FLOAT, MAX_PLANES, MODULE_TYPES

IMPLS = ("fake", "bitserial")
MATMUL_PRECISIONS = {"highest": jax.lax.Precision.HIGHEST, "default": jax.lax.Precision.DEFAULT}


@dataclasses.dataclass(frozen=True)
class ProductSpec:
  """The static settings of a model's FP-INT products, which travel together: the activation
  format and the implementation. Hashable, so it is a static argument under `jax.jit`; the
  mantissa lengths stay traced operands.

  fmt: one format for every product type, or a tuple of one per type (qkv, o, up, down):
  `AndaFormat` (M from the precision configuration) or any of `anda_jax.numerics.baselines` (MX, NVFP4,
  per-token), which have no M: there a configuration's M > 0 switches the format on and
  M = FLOAT leaves the activation in floating point, so one vector of M still selects sites.
  A `baselines.FormatChoice` reads the configuration's value as the index of its format
  (docs/formats.md, section 10)."""

  fmt: Any = anda.AndaFormat()
  impl: str = "fake"

  def __post_init__(self):
    fmts = self.fmt if isinstance(self.fmt, tuple) else (self.fmt,)
    if isinstance(self.fmt, tuple) and len(fmts) != len(MODULE_TYPES):
      raise ValueError(f"fmt holds {len(fmts)} formats: must be one, or one per type {MODULE_TYPES}")
    for fmt in fmts:
      if not isinstance(fmt, baselines.FORMATS):
        raise ValueError(f"fmt={fmt!r} is invalid: must be one of "
                         f"{[f.__name__ for f in baselines.FORMATS]}")
      if fmt.axis != -1:
        raise ValueError(f"fmt.axis={fmt.axis} is invalid for a product: activations are grouped "
                         "along the contraction axis (-1)")
    if self.impl not in IMPLS:
      raise ValueError(f"impl={self.impl!r} is invalid: must be one of {IMPLS}")
    if self.impl == "bitserial" and not all(isinstance(f, anda.AndaFormat) for f in fmts):
      raise ValueError("impl='bitserial' is invalid for non-Anda formats: the bit-serial kernel "
                       "streams Anda bit planes (use impl='fake')")

  def at(self, site: int) -> ProductSpec:
    """The spec of product type `site` (precision.QKV, ...): its own format."""
    return dataclasses.replace(self, fmt=self.fmt[site]) if isinstance(self.fmt, tuple) else self

  @property
  def formats(self) -> tuple:
    return self.fmt if isinstance(self.fmt, tuple) else (self.fmt,) * len(MODULE_TYPES)

  @property
  def stochastic(self) -> bool:
    """Whether a product rounds stochastically (and so needs a PRNG key)."""
    return any(getattr(f, "rounding", None) == "stochastic" for f in self.formats)

  def __call__(self, x, w, mantissa_bits, key=None, precision="highest") -> jax.Array:
    """x [..., K] (Anda along K) @ w [K, N] -> float32 [..., N]. `w` is `Int4Weights` or a
    float array; `mantissa_bits` (FLOAT = 0 keeps x in floating point, exactly) may be traced.
    `precision`: of the floating-point product (see `lax_precision`)."""
    if isinstance(self.fmt, tuple):
      raise ValueError("this ProductSpec holds one format per product type: call spec.at(site)")
    x = jnp.asarray(x, jnp.float32)
    m_bits = anda.check_mantissa_bits(mantissa_bits, lo=FLOAT)
    precision = lax_precision(precision)
    if self.impl == "bitserial":
      return _bitserial(x, w, self.fmt, m_bits, key, precision)
    return jnp.matmul(self.activation(x, m_bits, key), int4.as_float(w), precision=precision)

  def activation(self, x, mantissa_bits, key=None) -> jax.Array:
    """The activation the product multiplies: x fake-quantized (straight-through gradient),
    x itself at M = FLOAT. Also what a LoRA adapter beside the product sees (models.layers.linear)."""
    x = jnp.asarray(x, jnp.float32)
    m_bits = anda.check_mantissa_bits(mantissa_bits, lo=FLOAT)
    if isinstance(self.fmt, anda.AndaFormat):
      quantize = lambda x: anda.quantize(x, self.fmt, jnp.maximum(m_bits, 1), key)
    elif isinstance(self.fmt, baselines.FormatChoice):  # the value picks the format
      quantize = lambda x: baselines.fake_quantize(x, self.fmt, m_bits)
    else:
      quantize = lambda x: baselines.fake_quantize(x, self.fmt)
    # A cond, not a select: with a scalar M the float path skips quantization entirely (under
    # vmap over configurations JAX turns it into a select, which is still exact).
    return jax.lax.cond(m_bits > FLOAT, quantize, lambda x: x, x)


def lax_precision(name: str) -> jax.lax.Precision:
  """The precision every floating-point product of a model runs at, by name. "highest" (the
  default) is a true float32 product everywhere; "default" lets the backend choose, which on TPU
  is one bfloat16 pass and on recent GPUs TF32: 8 to 10 mantissa bits, an error larger than the
  M = 8..10 effects Anda studies measure. On the CPU both are float32."""
  if name not in MATMUL_PRECISIONS:
    raise ValueError(f"matmul_precision={name!r} is invalid: must be one of {tuple(MATMUL_PRECISIONS)}")
  return MATMUL_PRECISIONS[name]


def anda_matmul(x, w, fmt: anda.AndaFormat, mantissa_bits, impl: str = "fake", key=None):
  """x [..., K] @ w [K, N] with x in Anda `fmt` at `mantissa_bits`: `ProductSpec(fmt, impl)`
  applied once, for callers outside a model."""
  return ProductSpec(fmt, impl)(x, w, mantissa_bits, key)


def _bitserial(x, w, fmt, m_bits, key, precision) -> jax.Array:
  """x [..., K] -> runtime compressor (bitplane_pack) -> bit-serial kernel -> float32 [..., N].

  A concrete M is packed into M planes; a traced M into MAX_PLANES static planes, the
  zero-padded encoding of the same values, of which the kernel streams only the first M, so
  one compiled program serves every M with the same result and plane count as a concrete M.
  A traced M above MAX_PLANES is clipped to it."""
  if not isinstance(w, int4.Int4Weights):
    raise ValueError(f"w={type(w).__name__} is invalid for impl='bitserial': the bit-serial "
                     "kernel needs anda_jax.numerics.int4.Int4Weights (use impl='fake' for float weights)")
  if x.ndim == 0:
    raise ValueError("x has rank 0, which is invalid: must be [..., K]")
  traced = isinstance(m_bits, jax.core.Tracer)
  if not traced and int(m_bits) > MAX_PLANES:
    raise ValueError(f"mantissa_bits={int(m_bits)} is invalid for impl='bitserial': the bit-plane "
                     f"path supports at most {MAX_PLANES} (docs/formats.md, section 4)")
  lead, k = x.shape[:-1], x.shape[-1]
  x2 = x.reshape(-1, k)  # the kernel wants [rows, K]
  exact = lambda: jnp.matmul(x2, int4.dequantize(w), precision=precision).reshape(*lead, w.shape[1])
  if x.size == 0 or (not traced and int(m_bits) == FLOAT):
    return exact()
  num_planes = MAX_PLANES if traced else int(m_bits)
  planes = bitplane_kernel.bitplane_pack(x2, fmt, jnp.maximum(m_bits, 1), num_planes, key)
  y = bitserial_kernel.bitserial_matmul(planes, w, jnp.maximum(m_bits, 1) if traced else None)
  y = y.reshape(*lead, w.shape[1])
  return jnp.where(m_bits > FLOAT, y, exact()) if traced else y
