"""kernels.bitserial_matmul (interpret mode): integer partial sums exactly equal to
anda_jax.numerics.bitserial's, the float result within float32 rounding of an exact float64
product, and anda_matmul(impl="bitserial") agreeing with impl="fake"."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
import pytest

import anda_jax
from anda_jax.kernels import bitserial_kernel
from anda_jax.numerics import anda
from anda_jax.numerics import bitplane
from anda_jax.numerics import bitserial
import testlib
from anda_jax import models
from anda_jax.models import layers

_EPS32 = 2.0 ** -23


def _weights(seed, k, n, group_size, symmetric):
  return testlib.int4_weights(seed, k, n, group_size, symmetric, std=0.05)


def _exact_and_bound(x, fmt, m, qw):
  """decode(x) @ dequantize(W) in float64 from the exact integer codes, and a float32
  rounding bound: (blocks + 4) ulps of sum |x_i| |w_i| (blocks are added one by one)."""
  xq = np.asarray(anda.decode(testlib.encode(x, fmt, m)), np.float64)
  q, d, z = testlib.int4_float64(qw)
  exact = xq @ (d * q + z)
  n_blocks = qw.shape[0] // min(fmt.group_size, qw.group_size)
  bound = (n_blocks + 4) * _EPS32 * (np.abs(xq) @ (np.abs(d * q) + np.abs(z)))
  return exact, bound


class BitserialKernelTest(parameterized.TestCase):

  @parameterized.parameters(
      # (G, Gw, symmetric, M, num_planes): every G in {32, 64, 128}, G < Gw, G > Gw, G = Gw,
      # both weight kinds, progressive precision (num_planes < M).
      (32, 32, True, 4, None),
      (64, 32, False, 8, 5),
      (128, 64, True, 16, None),
      (32, 128, False, 1, None),
  )
  def test_sums_exact_and_matmul_within_rounding(self, g, gw, symmetric, m, num_planes):
    rows, k, n = 13, 256, 40  # ragged rows and N for the 8 x 16 tiles below
    fmt = anda.AndaFormat(group_size=g, rounding="nearest" if m > 4 else "truncate")
    x = testlib.heavy_tailed(g + m, (rows, k))
    qw = _weights(gw, k, n, gw, symmetric)
    bp = bitplane.pack(testlib.encode(x, fmt, m))
    tiles = dict(block_rows=8, block_n=16, block_k=2 * max(g, gw))

    got_a, got_s = bitserial_kernel.bitserial_partial_sums(bp, qw, num_planes, **tiles)
    want_a, want_s = bitserial.partial_sums(bp, qw, num_planes)
    self.assertEqual(got_a.dtype, jnp.int32)
    np.testing.assert_array_equal(np.asarray(got_a), np.asarray(want_a))
    np.testing.assert_array_equal(np.asarray(got_s), np.asarray(want_s))

    y = bitserial_kernel.bitserial_matmul(bp, qw, num_planes, **tiles)
    self.assertEqual((y.shape, y.dtype), ((rows, n), jnp.float32))
    # Streaming M' planes is the truncate-rounded M'-bit encoding (docs/formats.md, section 4).
    m_eff = m if num_planes is None else num_planes
    fmt_eff = fmt if num_planes is None else anda.AndaFormat(group_size=g)
    x_eff = x if num_planes is None else anda.decode(testlib.encode(x, fmt, m))
    exact, bound = _exact_and_bound(x_eff, fmt_eff, m_eff, qw)
    np.testing.assert_array_less(np.abs(np.asarray(y, np.float64) - exact), bound + 1e-30)
    ref = np.asarray(bitserial.matmul(bp, qw, num_planes), np.float64)
    np.testing.assert_array_less(np.abs(np.asarray(y, np.float64) - ref), 2 * bound + 1e-30)

  def test_traced_num_planes_streams_that_many_planes_one_compile(self):
    # M' is a runtime operand of the kernel: under jit a traced M' gives the partial sums of
    # exactly M' planes (not of all 12 the activations hold), with one compilation for all M'.
    g, gw, k, n = 32, 32, 128, 16
    fmt = anda.AndaFormat(group_size=g)
    qw = _weights(3, k, n, gw, symmetric=False)
    bp = bitplane.pack(testlib.encode(testlib.heavy_tailed(3, (8, k)), fmt, 12))
    sums = jax.jit(lambda p: bitserial_kernel.bitserial_partial_sums(bp, qw, p, block_rows=8, block_n=16))
    for m_prime in (1, 3, 12):
      want_a, want_s = bitserial.partial_sums(bp, qw, m_prime)
      got_a, got_s = sums(jnp.int32(m_prime))
      np.testing.assert_array_equal(np.asarray(got_a), np.asarray(want_a), err_msg=f"M'={m_prime}")
      np.testing.assert_array_equal(np.asarray(got_s), np.asarray(want_s), err_msg=f"M'={m_prime}")
    self.assertEqual(sums._cache_size(), 1)

  def test_anda_matmul_bitserial_agrees_with_fake_one_compile(self, symmetric=False):
    # A layer-shaped product on heavy-tailed activations, with a leading batch axis; M is
    # traced, so one compiled program serves every M (including M = 0: stay float).
    fmt = anda.AndaFormat(group_size=64, rounding="nearest")
    x = testlib.heavy_tailed(1, (2, 5, 192))
    qw = _weights(2, 192, 48, 32, symmetric)
    traces = []

    @jax.jit
    def bitserial_impl(x, m):
      traces.append(m)
      return anda_jax.anda_matmul(x, qw, fmt, m, impl="bitserial")

    fake_impl = jax.jit(lambda x, m: anda_jax.anda_matmul(x, qw, fmt, m, impl="fake"))
    for m in (0, 1, 4, 8, 16):
      got = np.asarray(bitserial_impl(x, m), np.float64)
      want = np.asarray(fake_impl(x, m), np.float64)
      _, bound = _exact_and_bound(x.reshape(10, 192), fmt, max(m, 1), qw)
      np.testing.assert_array_less(np.abs(got - want).reshape(10, 48), 2 * bound + 1e-30, err_msg=f"M={m}")
    self.assertLen(traces, 1)

  @pytest.mark.real_model
  def test_anda_matmul_agrees_on_a_smollm2_layer_input(self):
    # A real layer's activations: the qkv input (RMSNorm of the embeddings) of SmolLM2-135M's
    # first layer, times its real Q4_1 (asymmetric, Gw = 32) qkv weights (fetched into the
    # asset cache on first use).
    model, tokenizer = models.load("smollm2-135m")
    text = "In 1905 Einstein published four papers that changed physics, and the quick brown fox"
    tokens = jnp.asarray([tokenizer.encode(text)[:16]], jnp.int32)
    w = jax.tree.map(lambda a: a[0], model.layers.get_value())
    x = layers.rms_norm(model.embed(tokens), w["attn_norm"], model.config.norm_eps)[0]
    qw = w["qkv"]
    fmt = anda.AndaFormat(group_size=64, rounding="nearest")
    m = 6  # one M: every concrete M is its own compile
    got = np.asarray(anda_jax.anda_matmul(x, qw, fmt, m, impl="bitserial"), np.float64)
    want = np.asarray(anda_jax.anda_matmul(x, qw, fmt, m, impl="fake"), np.float64)
    _, bound = _exact_and_bound(x, fmt, m, qw)
    np.testing.assert_array_less(np.abs(got - want), 2 * bound + 1e-30)
    self.assertGreater(np.abs(want).max(), 0.1)  # a real, non-degenerate product

  def test_nonfinite_group_gives_nan_row(self):
    fmt = anda.AndaFormat(group_size=32)
    x = testlib.heavy_tailed(3, (3, 64)).at[1, 40].set(jnp.inf)
    qw = _weights(4, 64, 16, 32, True)
    y = np.asarray(bitserial_kernel.bitserial_matmul(bitplane.pack(testlib.encode(x, fmt, 4)), qw))
    self.assertTrue(np.isnan(y[1]).all())
    self.assertFalse(np.isnan(y[[0, 2]]).any())

  def test_rejects_bad_input_before_tracing(self):
    fmt = anda.AndaFormat(group_size=32)
    bp = bitplane.pack(testlib.encode(jnp.ones((4, 64)), fmt, 4))
    qw = _weights(0, 64, 16, 32, True)
    with self.assertRaisesRegex(ValueError, "num_planes=5"):
      bitserial_kernel.bitserial_matmul(bp, qw, num_planes=5)
    with self.assertRaisesRegex(ValueError, "K=64 .* K=96"):
      bitserial_kernel.bitserial_matmul(bp, _weights(0, 96, 16, 32, True))
    with self.assertRaisesRegex(ValueError, "incompatible"):
      bitserial_kernel.bitserial_matmul(bp, _weights(0, 64, 16, 16, True).__class__(
          packed=qw.packed, scale=jnp.ones((3, 16)), offset=None, group_size=24))
    with self.assertRaisesRegex(ValueError, "dtype int32"):
      bitserial_kernel.bitserial_matmul(bp.__class__(
          exponent=bp.exponent.astype(jnp.int32), sign=bp.sign, planes=bp.planes,
          fmt=bp.fmt, length=bp.length), qw)
    with self.assertRaisesRegex(ValueError, "rank 1"):
      bitserial_kernel.bitserial_matmul(bitplane.pack(testlib.encode(jnp.ones((64,)), fmt, 4)), qw)
    with self.assertRaisesRegex(ValueError, "Int4Weights"):
      bitserial_kernel.bitserial_matmul(bp, jnp.ones((64, 16)))
    with self.assertRaisesRegex(ValueError, "Int4Weights"):
      anda_jax.anda_matmul(jnp.ones((4, 64)), jnp.ones((64, 16)), fmt, 4, impl="bitserial")
    with self.assertRaisesRegex(ValueError, "mantissa_bits=20"):
      anda_jax.anda_matmul(jnp.ones((4, 64)), qw, fmt, 20, impl="bitserial")


if __name__ == "__main__":
  absltest.main()
