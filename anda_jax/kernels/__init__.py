"""Pallas kernels for the Anda format, one file per kernel, each beside its pure-jnp reference.

  anda_quantize      quantize_kernel.py   fused fake quantization
  bitplane_pack      bitplane_kernel.py   float -> bit planes (the runtime compressor)
  bitplane_unpack    bitplane_kernel.py   bit planes -> float
  bitserial_matmul   bitserial_kernel.py  bit planes x INT4 weights, plane by plane

Every wrapper takes interpret=None (interpret on CPU, compile elsewhere). The tests run every
kernel in interpret mode on the CPU and lower it (without compiling) for TPU (Mosaic) and GPU
(Triton); what was only interpreted is said in each file's docstring and
tests/kernels_lowering_test.py.
"""

from anda_jax.kernels.bitplane_kernel import bitplane_pack, bitplane_unpack
from anda_jax.kernels.bitserial_kernel import bitserial_matmul, bitserial_partial_sums
from anda_jax.kernels.quantize_kernel import anda_quantize

__all__ = ["anda_quantize", "bitplane_pack", "bitplane_unpack", "bitserial_matmul",
           "bitserial_partial_sums"]
