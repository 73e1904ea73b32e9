"""kernels.bitplane / bitplane_unpack (interpret mode) vs anda_jax.numerics.bitplane, bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from anda_jax.kernels import bitplane_kernel
from anda_jax.numerics import anda
from anda_jax.numerics import bitplane
import testlib

MANTISSAS = (1, 4, 8, 16)
NUM_PLANES = 16  # a traced M is packed into 16 static planes


def _reference(x, fmt, m, num_planes):
  return bitplane.pack(anda.encode(x, fmt, m), num_planes)


def _assert_same_planes(test, got, want, msg=""):
  test.assertEqual((got.fmt, got.length, got.shape, got.dtype), (want.fmt, want.length, want.shape, want.dtype))
  for field in ("exponent", "sign", "planes"):
    a, b = getattr(got, field), getattr(want, field)
    test.assertEqual((a.dtype, a.shape), (b.dtype, b.shape), f"{field} {msg}")
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{field} {msg}")


class BitplanePackKernelTest(parameterized.TestCase):

  # Each group size and each rounding mode, not their product: interpret mode is slow.
  @parameterized.parameters((32, "truncate"), (64, "nearest"), (128, "truncate"))
  def test_pack_bit_exact_one_compile(self, group_size, rounding):
    fmt = anda.AndaFormat(group_size=group_size, rounding=rounding)
    # Ragged rows, ragged last group.
    x = testlib.heavy_tailed(group_size, (11, 300), special_values=True)
    traces = []

    @jax.jit
    def kernel(x, m):
      traces.append(m)
      return bitplane_kernel.bitplane_pack(x, fmt, m, NUM_PLANES, block_rows=8, block_groups=2)

    reference = jax.jit(lambda x, m: _reference(x, fmt, m, NUM_PLANES))
    for m in MANTISSAS:
      _assert_same_planes(self, kernel(x, m), reference(x, m), f"M={m}")
    self.assertLen(traces, 1)

  def test_traced_m_above_planes_keeps_top_bits(self):
    # As anda_jax.numerics.bitplane.pack: M = 8 (nearest) into 4 planes keeps the top 4 bits.
    fmt = anda.AndaFormat(group_size=32, rounding="nearest")
    x = testlib.heavy_tailed(4, (6, 64), special_values=True)
    kernel = jax.jit(lambda x, m: bitplane_kernel.bitplane_pack(x, fmt, m, 4))
    reference = jax.jit(lambda x, m: _reference(x, fmt, m, 4))
    _assert_same_planes(self, kernel(x, 8), reference(x, 8))

  def test_pack_static_m_other_axis(self):
    # Concrete M packs into M planes; grouping along axis 0 of a 3-D input.
    fmt = anda.AndaFormat(group_size=32, axis=0)
    x = testlib.heavy_tailed(5, (70, 3, 4), special_values=True)
    got = bitplane_kernel.bitplane_pack(x, fmt, 5)
    self.assertEqual(got.num_planes, 5)
    enc = testlib.encode(x, fmt, 5)
    _assert_same_planes(self, got, bitplane.pack(enc))

  def test_unpack_inverts_pack(self):
    fmt = anda.AndaFormat(group_size=64, rounding="nearest")
    x = testlib.heavy_tailed(3, (9, 200), special_values=True)
    bp = bitplane_kernel.bitplane_pack(x, fmt, 6)
    got = bitplane_kernel.bitplane_unpack(bp, block_rows=4, block_groups=2)
    want = jax.jit(lambda bp: anda.decode(bitplane.unpack(bp)))(bp)
    self.assertEqual(got.shape, x.shape)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    self.assertTrue(np.isnan(np.asarray(got)[-1, -8:]).all())  # the Inf's group

  def test_rejects_bad_input_before_tracing(self):
    fmt = anda.AndaFormat(group_size=32)
    x = jnp.ones((4, 64))
    with self.assertRaisesRegex(ValueError, "dtype int8"):
      bitplane_kernel.bitplane_pack(jnp.ones((4, 64), jnp.int8), fmt, 4)
    with self.assertRaisesRegex(ValueError, "rank 0"):
      bitplane_kernel.bitplane_pack(jnp.float32(2.0), fmt, 4)
    with self.assertRaisesRegex(ValueError, "num_planes=3"):
      bitplane_kernel.bitplane_pack(x, fmt, 4, num_planes=3)
    with self.assertRaisesRegex(ValueError, "mantissa_bits=17"):
      bitplane_kernel.bitplane_pack(x, fmt, 17)
    with self.assertRaisesRegex(ValueError, "num_planes=None"):
      jax.jit(lambda x, m: bitplane_kernel.bitplane_pack(x, fmt, m))(x, 4)
    with self.assertRaisesRegex(ValueError, "BitPlanes"):
      bitplane_kernel.bitplane_unpack(x)


if __name__ == "__main__":
  absltest.main()
