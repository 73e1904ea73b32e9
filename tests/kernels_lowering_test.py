"""The kernels lower (not compile: there is no accelerator here) for TPU (Mosaic) and GPU
(Triton), so that block shapes, dtypes and ops stay within what those backends accept.

Lowering runs JAX's Pallas -> Mosaic / Triton-IR translation on the CPU, which rejects
e.g. misaligned TPU blocks, non-power-of-two Triton tensors, unsupported ops. It does not
run the backend compilers, so it is necessary, not sufficient, for the kernels to compile.
"""

import functools

import jax
import jax.numpy as jnp
from absl.testing import absltest
from absl.testing import parameterized
from jax._src import config as jax_config  # the switch between Mosaic GPU and Triton

from anda_jax import bitplane
from anda_jax import format as anda_format
from anda_jax import int4
from kernels import bitplane as bitplane_kernel
from kernels import bitserial as bitserial_kernel
from kernels import quantize as quantize_kernel

PLATFORMS = ("tpu", "cuda")  # cuda: lowered to Triton (the wrappers ask for it on GPU)


def _lower(fn, *args, platform):
  with jax_config.jax_pallas_use_mosaic_gpu(False):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


class LoweringTest(parameterized.TestCase):

  @parameterized.parameters(*PLATFORMS)
  def test_quantize_and_pack_lower(self, platform):
    fmt = anda_format.AndaFormat(group_size=64, rounding="nearest")
    x = jnp.ones((64, 576), jnp.float32)  # 9 groups: a ragged, non-power-of-two axis
    m = jnp.int32(4)
    short = functools.partial(quantize_kernel._quantize, uniforms=None, fmt=fmt, block_rows=32,
                              block_groups=32, interpret=False)
    self.assertIn("anda_", _lower(short, x[:, :192], m, platform=platform))  # 3 groups
    quantize = functools.partial(quantize_kernel._quantize, uniforms=None, fmt=fmt, block_rows=32,
                                 block_groups=32, interpret=False)
    pack = functools.partial(bitplane_kernel._pack, uniforms=None, fmt=fmt, num_planes=8,
                             block_rows=32, block_groups=128, interpret=False)
    unpack = functools.partial(bitplane_kernel._unpack, dtype=jnp.dtype(jnp.float32), block_rows=32,
                               block_groups=128, interpret=False)
    for name, fn, args in (("quantize", quantize, (x, m)), ("pack", pack, (x, m)),
                           ("unpack", unpack, (bitplane.pack(anda_format.encode(x, fmt, 8)),))):
      with self.subTest(name):
        self.assertIn("anda_", _lower(fn, *args, platform=platform))

  @parameterized.parameters(*PLATFORMS)
  def test_bitserial_lowers(self, platform):
    fmt = anda_format.AndaFormat(group_size=64)
    bp = bitplane.pack(anda_format.encode(jnp.ones((256, 576)), fmt, 8))
    for symmetric in (True, False):
      qw = int4.quantize_rtn(jnp.ones((576, 256)), 32, symmetric)
      for emit_sums in (False, True):
        fn = functools.partial(bitserial_kernel._bitserial, block_rows=128, block_n=128,
                               block_k=None, interpret=False, emit_sums=emit_sums)
        with self.subTest(symmetric=symmetric, emit_sums=emit_sums):  # M' is a runtime scalar
          self.assertIn("anda_bitserial", _lower(fn, bp, qw, jnp.int32(6), platform=platform))


if __name__ == "__main__":
  absltest.main()
