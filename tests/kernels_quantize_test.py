"""kernels.anda_quantize (interpret mode) vs anda_jax.numerics.anda.quantize, bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from anda_jax.kernels import quantize_kernel
from anda_jax.numerics import anda
import testlib

MANTISSAS = (1, 4, 8, 16)


class QuantizeKernelTest(parameterized.TestCase):

  # Each group size and each rounding mode, not their product: interpret mode is slow.
  @parameterized.parameters((32, "truncate"), (64, "nearest"), (128, "nearest"), (64, "truncate"))
  def test_bit_exact_vs_format_one_compile(self, group_size, rounding):
    fmt = anda.AndaFormat(group_size=group_size, rounding=rounding)
    # 13 rows and L=200 are ragged for every tile and group size; small blocks force a
    # multi-program grid with ragged edge tiles.
    x = testlib.heavy_tailed(group_size, (13, 200))
    traces = []

    @jax.jit
    def kernel(x, m):
      traces.append(m)  # runs once per trace, i.e. per compilation
      return quantize_kernel.anda_quantize(x, fmt, m, block_rows=8, block_groups=2)

    # The reference under jit too: eagerly, every one of its ops would compile on its own.
    reference = jax.jit(lambda x, m: anda.quantize(x, fmt, m))
    for m in MANTISSAS:
      got = kernel(x, m)
      want = reference(x, m)
      testlib.assert_bit_exact(got, want, err_msg=f"M={m}")
    self.assertLen(traces, 1)

  @parameterized.parameters("truncate", "nearest")
  def test_matches_float64_spec_formula(self, rounding):
    # An independent reference written straight from docs/formats.md, section 1, in float64.
    fmt = anda.AndaFormat(group_size=32, rounding=rounding)
    x = np.asarray(testlib.heavy_tailed(7, (6, 64)), np.float64)
    m = 5
    got = np.asarray(quantize_kernel.anda_quantize(x.astype(np.float32), fmt, m), np.float64)
    g = x.reshape(6, 2, 32)
    e = np.clip(np.floor(np.log2(np.max(np.abs(g), axis=-1, keepdims=True))), fmt.e_min, fmt.e_max)
    s = 2.0 ** (e - m + 1)
    r = np.abs(g) / s
    mag = np.minimum(np.floor(r) if rounding == "truncate" else np.round(r), 2 ** m - 1)
    want = (np.sign(g) * mag * s).reshape(6, 64)
    np.testing.assert_array_equal(got, want)

  def test_stochastic_bit_exact(self):
    fmt = anda.AndaFormat(group_size=32, rounding="stochastic")
    x = testlib.heavy_tailed(1, (5, 70))
    key = jax.random.key(3)
    got = jax.jit(lambda x, k: quantize_kernel.anda_quantize(x, fmt, 4, k))(x, key)
    want = jax.jit(lambda x, k: anda.quantize(x, fmt, 4, k))(x, key)
    testlib.assert_bit_exact(got, want)

  def test_bfloat16_other_axis_and_nonfinite(self):
    fmt = anda.AndaFormat(group_size=32, rounding="nearest", axis=0)
    x = testlib.heavy_tailed(2, (40, 3, 5)).astype(jnp.bfloat16)
    x = x.at[1, 2, 4].set(jnp.inf)
    got = quantize_kernel.anda_quantize(x, fmt, 6)
    want = jax.jit(lambda x: anda.quantize(x, fmt, 6))(x)
    self.assertEqual(got.dtype, jnp.bfloat16)
    self.assertEqual(got.shape, x.shape)
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    # The Inf poisons exactly its own group (rows 0..31 of column (2, 4)).
    nan = np.isnan(np.asarray(got, np.float32))
    self.assertTrue(nan[:32, 2, 4].all())
    self.assertEqual(nan.sum(), 32)

  def test_rejects_bad_input_before_tracing(self):
    fmt = anda.AndaFormat()
    with self.assertRaisesRegex(ValueError, "dtype int32"):
      quantize_kernel.anda_quantize(jnp.ones((4, 64), jnp.int32), fmt, 4)
    with self.assertRaisesRegex(ValueError, "rank 0"):
      quantize_kernel.anda_quantize(jnp.float32(1.0), fmt, 4)
    with self.assertRaisesRegex(ValueError, "mantissa_bits=25"):
      quantize_kernel.anda_quantize(jnp.ones((4, 64)), fmt, 25)
    with self.assertRaisesRegex(ValueError, "axis=2"):
      quantize_kernel.anda_quantize(jnp.ones((4, 64)), anda.AndaFormat(axis=2), 4)
    with self.assertRaisesRegex(ValueError, "block_rows=12"):
      quantize_kernel.anda_quantize(jnp.ones((4, 64)), fmt, 4, block_rows=12)
    with self.assertRaisesRegex(ValueError, "stochastic"):
      quantize_kernel.anda_quantize(jnp.ones((4, 64)), anda.AndaFormat(rounding="stochastic"), 4)


if __name__ == "__main__":
  absltest.main()
