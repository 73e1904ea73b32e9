"""Pallas kernels for the Anda format, one file per kernel, each beside its pure-jnp reference.
Installed as `anda_jax.kernels` (pyproject's package-dir maps this folder there), so it never
claims the generic top-level name `kernels`.

  anda_quantize      quantize_kernel.py   fused fake quantization
  bitplane_pack      bitplane_kernel.py   float -> bit planes (the runtime compressor)
  bitplane_unpack    bitplane_kernel.py   bit planes -> float
  bitserial_matmul   bitserial_kernel.py  bit planes x INT4 weights, plane by plane

Every wrapper takes interpret=None (interpret on CPU, compile elsewhere). On this project's
machines (CPU only) the kernels were run in interpret mode and lowered, not compiled, for
TPU (Mosaic) and GPU (Triton); see each file's docstring and tests/kernels_lowering_test.py.
"""

from anda_jax.kernels.bitplane_kernel import bitplane_pack, bitplane_unpack
from anda_jax.kernels.bitserial_kernel import bitserial_matmul, bitserial_partial_sums
from anda_jax.kernels.quantize_kernel import anda_quantize

__all__ = ["anda_quantize", "bitplane_pack", "bitplane_unpack", "bitserial_matmul",
           "bitserial_partial_sums"]
