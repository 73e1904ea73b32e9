"""anda-jax: the Anda variable-length grouped activation format in JAX, and the formats it is
compared with (OCP MX, NVFP4, per-token FP8 / INT8)."""

from anda_jax.matmul import ProductSpec, anda_matmul
from anda_jax.numerics.anda import AndaEncoding, AndaFormat, NONFINITE_EXPONENT, decode, encode, quantize
from anda_jax.numerics.baselines import (FormatChoice, MXFormat, NVFP4Format, PerTokenFormat,
                                        fake_quantize, storage_bits)
from anda_jax.precision import MODULE_TYPES

__all__ = [
    "AndaEncoding", "AndaFormat", "NONFINITE_EXPONENT", "decode", "encode", "quantize",
    "FormatChoice", "MXFormat", "NVFP4Format", "PerTokenFormat", "fake_quantize", "storage_bits",
    "ProductSpec", "anda_matmul", "MODULE_TYPES",
]
