"""`anda_matmul`: the one entry point through which models run an FP-INT product.

impl="fake" quantizes the activation and multiplies in floating point with the
dequantized weights (fast on any backend); impl="bitserial" runs the bit-serial Pallas
kernel, an exact emulation of the hardware. Both compute decode(x) @ dequantize(W).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from anda_jax import format as anda_format
from anda_jax import int4

IMPLS = ("fake", "bitserial")


def anda_matmul(x, w, fmt: anda_format.AndaFormat, mantissa_bits, impl: str = "fake", key=None):
  """x [..., K] (Anda along K) @ w [K, N] -> float32 [..., N].

  `w` is an `Int4Weights` or a float array. `mantissa_bits` (0..24, may be traced) is the
  activation's M; 0 leaves x in floating point, exactly."""
  if impl not in IMPLS:
    raise ValueError(f"impl={impl!r} is invalid: must be one of {IMPLS}")
  if fmt.axis not in (-1, jnp.ndim(x) - 1):
    raise ValueError(f"fmt.axis={fmt.axis} is invalid for anda_matmul: Anda groups run along the contraction axis (-1)")
  x = jnp.asarray(x, jnp.float32)
  m_bits = anda_format.check_mantissa_bits(mantissa_bits, lo=0)
  if impl == "bitserial":
    # The Pallas bit-serial kernel behind the runtime compressor (kernels/bitserial.py).
    # Imported here because kernels/ imports anda_jax (DESIGN.md: data flows format -> kernels).
    from kernels import bitserial as bitserial_kernel
    return bitserial_kernel.anda_matmul_bitserial(x, w, fmt, m_bits, key)
  # A cond, not a select: with a scalar M the float path skips quantization entirely (under
  # vmap over configurations JAX turns it into a select, which is still exact).
  activation = jax.lax.cond(
      m_bits > 0, lambda x: anda_format.quantize(x, fmt, jnp.maximum(m_bits, 1), key), lambda x: x, x)
  return activation @ int4.as_float(w)
