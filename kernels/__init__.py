"""Pallas kernels for the Anda format, one file per kernel, each beside its pure-jnp reference.

  anda_quantize      kernels/quantize.py   fused fake quantization
  bitplane_pack      kernels/bitplane.py   float -> bit planes (the runtime compressor)
  bitplane_unpack    kernels/bitplane.py   bit planes -> float
  bitserial_matmul   kernels/bitserial.py  bit planes x INT4 weights, plane by plane

(The files are not named after the functions: `from kernels import bitplane_pack` must give
the function, and a module of the same name would be shadowed by it.)

Every wrapper takes interpret=None (interpret on CPU, compile elsewhere). On this project's
machines (CPU only) the kernels were run in interpret mode and lowered, not compiled, for
TPU (Mosaic) and GPU (Triton); see each file's docstring and tests/kernels_lowering_test.py.
"""

from kernels.bitplane import bitplane_pack, bitplane_unpack
from kernels.bitserial import bitserial_matmul, bitserial_partial_sums
from kernels.quantize import anda_quantize

__all__ = ["anda_quantize", "bitplane_pack", "bitplane_unpack", "bitserial_matmul",
           "bitserial_partial_sums"]
