"""Tests for anda_jax.numerics.bitplane: layout vs numpy packbits, lossless round trip, prefix."""


from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from anda_jax.numerics import anda
from anda_jax.numerics import bitplane
import testlib

_FIELDS = ("sign", "magnitude", "exponent")


def _activations(rng, shape):
  """Random data over a wide dynamic range, with zeros, -0.0 and one NaN/Inf group."""
  x = testlib.binade_rows(rng, shape, (-30, 30))
  x.reshape(-1)[1] = -0.0
  x.reshape(-1)[-1] = np.inf  # the last (ragged) group of the last row: NaN group
  x.reshape(-1)[0] = np.nan
  return x


# Jitted: one compilation per shape instead of one per eager op.
_decode = jax.jit(anda.decode)


def _round_trip(x, fmt, m):
  enc = testlib.encode(x, fmt, m)
  bp = bitplane.pack(enc)  # P = M: pack and unpack compile once per P
  back = bitplane.unpack(bp)
  return enc, bp, back, _decode(back), _decode(enc)


def _packbits_reference(enc):
  """Independent layout: numpy packbits (little bit order) of each plane, MSB plane first."""
  m = np.asarray(enc.magnitude).astype(np.int64)
  big_m = int(enc.mantissa_bits)
  planes = np.stack([(m >> (big_m - 1 - p)) & 1 for p in range(big_m)], axis=-2)
  sign = np.packbits(np.asarray(enc.sign).astype(np.uint8), axis=-1, bitorder="little")
  planes = np.packbits(planes.astype(np.uint8), axis=-1, bitorder="little")
  return np.asarray(enc.exponent).astype(np.int8), sign, planes


class BitPlaneTest(parameterized.TestCase):

  def assert_same_encoding(self, got, want):
    for f in _FIELDS:
      np.testing.assert_array_equal(np.asarray(getattr(got, f)), np.asarray(getattr(want, f)),
                                    err_msg=f)
    self.assertEqual(int(got.mantissa_bits), int(want.mantissa_bits))
    self.assertEqual((got.fmt, got.shape, got.dtype), (want.fmt, want.shape, want.dtype))

  def check_round_trip(self, x, fmt, m):
    enc, bp, back, decoded, decoded_enc = _round_trip(x, fmt, m)
    length = x.shape[-1]
    n_groups, n_bytes = -(-length // fmt.group_size), -(-fmt.group_size // 8)
    chex.assert_shape(bp.exponent, x.shape[:-1] + (n_groups,))
    chex.assert_shape(bp.sign, x.shape[:-1] + (n_groups, n_bytes))
    chex.assert_shape(bp.planes, x.shape[:-1] + (n_groups, m, n_bytes))
    chex.assert_type([bp.exponent, bp.sign, bp.planes], [jnp.int8, jnp.uint8, jnp.uint8])
    self.assertEqual((bp.num_planes, bp.length), (m, length))
    for got, want in zip((bp.exponent, bp.sign, bp.planes), _packbits_reference(enc)):
      np.testing.assert_array_equal(np.asarray(got), want)
    self.assert_same_encoding(back, enc)
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(decoded_enc))
    # The NaN/Inf groups survive: exponent -128 and NaN on decode.
    self.assertEqual(int(bp.exponent.reshape(-1)[0]), anda.NONFINITE_EXPONENT)
    self.assertEqual(int(bp.exponent.reshape(-1)[-1]), anda.NONFINITE_EXPONENT)
    self.assertTrue(np.isnan(np.asarray(decoded).reshape(-1)[-1]))
    return bp

  def test_round_trip_every_mantissa_length_and_prefix(self):
    # G not a multiple of 8, ragged L (30 = 2 * 12 + 6) and 5-bit (clipping) exponents.
    x = _activations(np.random.default_rng(0), (2, 3, 30))
    fmt = anda.AndaFormat(group_size=12, exponent_bits=5)
    bps = {m: self.check_round_trip(x, fmt, m) for m in range(1, 17)}
    # The first M' planes of the M-bit layout are the M'-bit layout (truncate rounding),
    # and bps[M'] was just shown to be exactly encode(x, M').
    for m in (4, 8, 16):
      for m_prime in range(1, m):
        short = bitplane.truncate(bps[m], m_prime)
        self.assertEqual(short.num_planes, m_prime)
        chex.assert_trees_all_equal(short, bps[m_prime])
    self.assert_same_encoding(bitplane.unpack(bitplane.truncate(bps[16], 5)),
                              testlib.encode(x, fmt, 5))

  @parameterized.parameters((5, 23), (8, 40), (64, 100), (1, 3))
  def test_round_trip_other_group_sizes(self, group_size, length):
    x = _activations(np.random.default_rng(group_size), (3, length))
    fmt = anda.AndaFormat(group_size=group_size)
    for m in (3, 16):
      self.check_round_trip(x, fmt, m)

  def test_other_axis_and_dtype_round_trip(self):
    x = _activations(np.random.default_rng(0), (3, 20)).T.astype(jnp.bfloat16)  # [20, 3]
    fmt = anda.AndaFormat(group_size=8, axis=0)
    enc = testlib.encode(x, fmt, 5)
    bp = bitplane.pack(enc)
    chex.assert_shape(bp.planes, (3, 3, 5, 1))
    self.assert_same_encoding(bitplane.unpack(bp), enc)
    # Without the optional shape/dtype the shape is rebuilt from fmt.axis (float32).
    bare = bitplane.BitPlanes(exponent=bp.exponent, sign=bp.sign, planes=bp.planes,
                              fmt=fmt, length=20)
    self.assertEqual(bitplane.unpack(bare).shape, (20, 3))

  def test_bit_order(self):
    # Element j of a group is bit j % 8 of byte j // 8; plane 0 is the MSB.
    x = np.zeros(16, np.float32)
    x[9] = -1.0  # the group maximum: m = 2^(M-1) = 0b100
    x[2] = 0.25  # m = 0b001
    bp = bitplane.pack(testlib.encode(x, anda.AndaFormat(group_size=16), 3))
    np.testing.assert_array_equal(np.asarray(bp.sign), [[0, 2]])
    np.testing.assert_array_equal(np.asarray(bp.planes), [[[0, 2], [0, 0], [4, 0]]])
    self.assertEqual(int(bp.exponent[0]), 0)

  def test_extra_planes_are_zero_and_keep_values(self):
    x = _activations(np.random.default_rng(2), (3, 40))
    fmt = anda.AndaFormat(group_size=16)
    enc = testlib.encode(x, fmt, 5)
    wide = bitplane.unpack(bitplane.pack(enc, num_planes=12))
    np.testing.assert_array_equal(np.asarray(wide.magnitude), np.asarray(enc.magnitude) << 7)
    self.assertEqual(int(wide.mantissa_bits), 12)
    np.testing.assert_array_equal(np.asarray(_decode(wide)),
                                  np.asarray(_decode(enc)))

  def test_traced_mantissa_bits_one_compilation(self):
    x = _activations(np.random.default_rng(3), (2, 50))
    fmt = anda.AndaFormat(group_size=16)
    traces = []

    @jax.jit
    def pack16(x, m):
      traces.append(m)
      return bitplane.pack(testlib.encode(x, fmt, m), num_planes=16)

    for m in (1, 6, 16):
      got = pack16(x, jnp.int32(m))
      want = bitplane.pack(testlib.encode(x, fmt, m), num_planes=16)
      chex.assert_trees_all_equal(got, want)
    self.assertLen(traces, 1)
    with self.assertRaisesRegex(ValueError, "num_planes=None needs a concrete"):
      jax.jit(lambda x, m: bitplane.pack(testlib.encode(x, fmt, m)))(x, 4)

  @parameterized.parameters((8, 64), (32, 128), (64, 64))
  def test_storage_bits(self, group_size, length):
    fmt = anda.AndaFormat(group_size=group_size)
    x = np.ones((2, length), np.float32)
    for m in (1, 16):
      bp = bitplane.pack(testlib.encode(x, fmt, m))
      self.assertEqual(bp.storage_bits(), 1 + m + 8 / group_size)
      self.assertEqual(bp.storage_bits(), fmt.storage_bits(m))
      # With G a multiple of 8, L a multiple of G and 8-bit exponents the arrays hold
      # exactly the bit count of docs/formats.md, section 9.
      self.assertEqual(bp.nbytes * 8 / x.size, bp.storage_bits())
    # G not a multiple of 8 pads each plane to whole bytes.
    odd = bitplane.pack(testlib.encode(np.ones((1, 12), np.float32),
                                           anda.AndaFormat(group_size=12), 3))
    self.assertEqual(odd.nbytes, 1 + 2 + 3 * 2)
    self.assertAlmostEqual(odd.storage_bits(), 1 + 3 + 8 / 12)

  def test_invalid_arguments_raise(self):
    fmt = anda.AndaFormat(group_size=8)
    x = np.ones((2, 16), np.float32)
    enc = testlib.encode(x, fmt, 8)
    for bad in (0, 17, 2.0, True):
      with self.assertRaisesRegex(ValueError, f"num_planes={bad!r} is invalid.*\\[1, 16\\]"):
        bitplane.pack(enc, num_planes=bad)
    with self.assertRaisesRegex(ValueError, "mantissa_bits=8 does not fit num_planes=4"):
      bitplane.pack(enc, num_planes=4)
    with self.assertRaisesRegex(ValueError, r"mantissa_bits=20 is invalid.*\[1, 16\]"):
      bitplane.pack(testlib.encode(x, fmt, 20))
    bp = bitplane.pack(enc)
    for bad in (0, 9):
      with self.assertRaisesRegex(ValueError, f"num_planes={bad} is invalid.*\\[1, 8\\]"):
        bitplane.truncate(bp, bad)


if __name__ == "__main__":
  absltest.main()
