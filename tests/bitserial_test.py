"""Tests for anda_jax.numerics.bitserial against plain numpy int64 / float64 references."""

import itertools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from anda_jax.numerics import anda
from anda_jax.numerics import bitplane
from anda_jax.numerics import bitserial
import testlib

_SIZES = (32, 64, 128)
_MANTISSA_BITS = (1, 4, 8, 16)
# A covering design instead of the full 2 x 3 x 3 x 4 product (each case costs a
# compilation): every (symmetric, G, Gw) combination runs once, M cycles through
# {1, 4, 8, 16} so that each M meets both weight kinds, every G and every Gw, and every
# case also streams M' < M planes (1 and about M/2) from the same program.
_CASES = [
    dict(symmetric=sym, group_size=g, weight_group_size=gw,
         mantissa_bits=_MANTISSA_BITS[(i + sym) % len(_MANTISSA_BITS)])
    for i, (g, gw) in enumerate(itertools.product(_SIZES, _SIZES))
    for sym in (True, False)
]


def _weights(group_size, symmetric, k=256, n=5):
  """Shared across cases (cached): quantizing costs a compilation per (Gw, symmetric)."""
  return testlib.int4_weights(group_size + 2 * symmetric, k, n, group_size, symmetric)


def _activations(rng, shape):
  """Rows over different binades, with exact zeros, so E and m vary across groups."""
  return testlib.binade_rows(rng, shape, (-8, 9))


def _reference(enc, w, m_prime):
  """numpy int64 (A, S) and float64 y for the first m_prime planes, plus the error scale.

  Built from the encoding's integers directly, not through the bit planes: the M'-bit
  truncated magnitude is m >> (M - M') (docs/formats.md, section 1.5, prefix property).
  """
  big_m = int(enc.mantissa_bits)
  g = enc.fmt.group_size
  k, n = w.shape
  m = np.asarray(enc.magnitude, np.int64) >> (big_m - m_prime)
  signs = 1 - 2 * np.asarray(enc.sign, np.int64)
  batch = m.shape[:-2]
  signed = (signs * m).reshape(*batch, -1)[..., :k]  # +-m'_i along K, padding dropped
  e = np.repeat(np.asarray(enc.exponent, np.int64), g, axis=-1)[..., :k]

  q, d, z = testlib.int4_float64(w)  # codes straight from the nibbles, in numpy
  block = min(g, w.group_size)
  nb = k // block
  blocks = signed.reshape(*batch, nb, block)
  a = np.einsum("...bk,bkn->...bn", blocks, q.reshape(nb, block, n))
  s = blocks.sum(-1)

  x_hat = np.ldexp(signed.astype(np.float64), e - m_prime + 1)  # exact in float64
  y = x_hat @ (d * q + z)  # decode(x) @ dequantize(W), in float64 (error ~1e-16)
  # Error scale: sum_k |x_k| (|d q_k| + |z|). fp32 error of the bit-serial result
  # relative to it: the int32 -> fp32 conversion of A (and S), d*A, z*S and their sum
  # round once each (|A| <= sum |m q| and |S| <= sum |m|), the scaling by 2^(E-M'+1) is
  # exact, and the sum over n_blocks blocks adds at most n_blocks - 1 roundings. Hence
  # |y - y_ref| <= (n_blocks + 4) * 2^-24 * scale to first order; we allow n_blocks + 6.
  scale = np.abs(x_hat) @ (np.abs(d * q) + np.abs(z))
  return a, s, y, (nb + 6) * 2.0**-24 * scale


class BitSerialTest(parameterized.TestCase):

  def check(self, bp, enc, w, m_prime):
    a, s = bitserial.partial_sums(bp, w, num_planes=m_prime)
    y = bitserial.matmul(bp, w, num_planes=m_prime)
    a_ref, s_ref, y_ref, tol = _reference(enc, w, m_prime)
    chex.assert_type([a, s, y], [jnp.int32, jnp.int32, jnp.float32])
    chex.assert_shape([a, s], a_ref.shape)
    np.testing.assert_array_equal(np.asarray(a), a_ref)  # integers: exact
    np.testing.assert_array_equal(np.asarray(s), np.broadcast_to(s_ref[..., None], a_ref.shape))
    err = np.abs(np.asarray(y, np.float64) - y_ref)
    self.assertTrue(np.all(err <= tol), msg=f"M'={m_prime} max err/tol {np.max(err / tol)}")

  def test_streaming_m_prime_planes_equals_the_m_prime_bit_encoding(self):
    # Spec section 4: streaming the first M' planes of a truncate-rounded M-bit encoding
    # gives the truncate-rounded M'-bit result, so it must equal, bit for bit, the product
    # of the M'-bit encoding of the same activations with all of its planes.
    rng = np.random.default_rng(10)
    w = _weights(32, False, k=128)
    x = _activations(rng, (4, 128))
    fmt = anda.AndaFormat(group_size=64)  # truncate
    bp = bitplane.pack(testlib.encode(x, fmt, 12))
    for m_prime in (1, 5, 11):
      short = bitplane.pack(testlib.encode(x, fmt, m_prime))
      chex.assert_trees_all_equal(bitserial.partial_sums(bp, w, num_planes=m_prime),
                                  bitserial.partial_sums(short, w), custom_message=f"M'={m_prime}")
      chex.assert_trees_all_equal(bitserial.matmul(bp, w, num_planes=m_prime),
                                  bitserial.matmul(short, w), custom_message=f"M'={m_prime}")

  @parameterized.parameters(*_CASES)
  def test_matches_integer_and_float_references(
      self, symmetric, group_size, weight_group_size, mantissa_bits):
    w = _weights(weight_group_size, symmetric)
    rng = np.random.default_rng(group_size * 7 + weight_group_size + symmetric)
    x = _activations(rng, (3, w.shape[0]))
    enc = testlib.encode(x, anda.AndaFormat(group_size=group_size), mantissa_bits)
    bp = bitplane.pack(enc)
    self.assertEqual(bitserial.block_size(group_size, weight_group_size),
                     min(group_size, weight_group_size))
    for m_prime in sorted({1, (mantissa_bits + 1) // 2, mantissa_bits}):
      self.check(bp, enc, w, m_prime)
    # Default: all planes.
    chex.assert_trees_all_equal(bitserial.matmul(bp, w),
                                bitserial.matmul(bp, w, num_planes=mantissa_bits))

  def test_ragged_batched_activations(self):
    # K = 160: weights in groups of 32, activations in groups of 128 (the second one
    # ragged and zero padded), blocks of 32; leading batch dims [2, 2].
    rng = np.random.default_rng(5)
    w = testlib.quantize_rtn(rng.normal(size=(160, 3)).astype(np.float32), 32, False)
    x = _activations(rng, (2, 2, 160))
    enc = testlib.encode(x, anda.AndaFormat(group_size=128), 6)
    bp = bitplane.pack(enc)
    for m_prime in (2, 6):
      self.check(bp, enc, w, m_prime)

  def test_tiny_activations_are_not_flushed(self):
    # E = -120 and M = 16: one unit in the last place is 2^-135, a float32 subnormal.
    rng = np.random.default_rng(6)
    w = testlib.quantize_rtn(rng.normal(size=(64, 4)).astype(np.float32), 32, True)
    x = (rng.uniform(1, 2, size=(2, 64)) * 2.0**-120).astype(np.float32)
    enc = testlib.encode(x, anda.AndaFormat(group_size=32), 16)
    bp = bitplane.pack(enc)
    self.check(bp, enc, w, 16)
    self.assertTrue(np.all(np.asarray(bitserial.matmul(bp, w)) != 0))

  def test_nonfinite_group_gives_nan_row(self):
    rng = np.random.default_rng(7)
    w = testlib.quantize_rtn(rng.normal(size=(64, 4)).astype(np.float32), 32, False)
    x = _activations(rng, (3, 64))
    x[1, 40] = np.inf
    enc = testlib.encode(x, anda.AndaFormat(group_size=32), 8)
    y = np.asarray(bitserial.matmul(bitplane.pack(enc), w))
    self.assertTrue(np.all(np.isnan(y[1])))
    self.assertTrue(np.all(np.isfinite(y[[0, 2]])))
    _, _, y_ref, tol = _reference(enc, w, 8)
    self.assertTrue(np.all(np.abs(y[[0, 2]] - y_ref[[0, 2]]) <= tol[[0, 2]]))

  def test_traced_num_planes(self):
    rng = np.random.default_rng(8)
    w = testlib.quantize_rtn(rng.normal(size=(64, 4)).astype(np.float32), 32, True)
    bp = bitplane.pack(testlib.encode(_activations(rng, (2, 64)), anda.AndaFormat(32), 8))
    traced = jax.jit(bitserial.matmul)
    for m_prime in (1, 5, 8):
      chex.assert_trees_all_equal(traced(bp, w, jnp.int32(m_prime)),
                                  bitserial.matmul(bp, w, num_planes=m_prime))
    self.assertEqual(traced._cache_size(), 1)  # pylint: disable=protected-access

  def test_invalid_arguments_raise(self):
    with self.assertRaisesRegex(
        ValueError, r"group_size=48 \(activations\) and weight_group_size=32 .*divide"):
      bitserial.block_size(48, 32)
    with self.assertRaisesRegex(ValueError, "weight_group_size=0 is invalid"):
      bitserial.block_size(32, 0)

    rng = np.random.default_rng(9)
    w = testlib.quantize_rtn(rng.normal(size=(96, 2)).astype(np.float32), 32, True)
    x = _activations(rng, (2, 96))
    bp48 = bitplane.pack(testlib.encode(x, anda.AndaFormat(group_size=48), 4))
    with self.assertRaisesRegex(ValueError, "group_size=48 .* weight_group_size=32"):
      bitserial.matmul(bp48, w)
    bp = bitplane.pack(testlib.encode(x, anda.AndaFormat(group_size=32), 4))
    for bad in (0, 5, 2.5):
      with self.assertRaisesRegex(ValueError, rf"num_planes={bad!r} is invalid.*\[1, 4\]"):
        bitserial.partial_sums(bp, w, num_planes=bad)
    w64 = testlib.quantize_rtn(rng.normal(size=(64, 2)).astype(np.float32), 32, True)
    with self.assertRaisesRegex(ValueError, "activation length=96, weight K=64"):
      bitserial.matmul(bp, w64)
    with self.assertRaisesRegex(ValueError, "Int4Weights"):
      bitserial.matmul(bp, np.zeros((96, 2), np.float32))
    too_deep = bitplane.BitPlanes(
        exponent=bp.exponent, sign=bp.sign, fmt=bp.fmt, length=96,
        planes=jnp.zeros(bp.planes.shape[:-2] + (17, bp.planes.shape[-1]), jnp.uint8))
    with self.assertRaisesRegex(ValueError, "17 planes: at most 16"):
      bitserial.matmul(too_deep, w)


if __name__ == "__main__":
  absltest.main()
