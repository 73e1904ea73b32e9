"""anda-jax: the Anda variable-length grouped activation format in JAX."""

from anda_jax.format import AndaEncoding, AndaFormat, NONFINITE_EXPONENT, decode, encode, quantize
from anda_jax.matmul import anda_matmul
from anda_jax.precision import MODULE_TYPES

__all__ = [
    "AndaEncoding", "AndaFormat", "NONFINITE_EXPONENT", "decode", "encode", "quantize",
    "anda_matmul", "MODULE_TYPES",
]
