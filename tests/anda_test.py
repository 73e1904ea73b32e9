"""Tests of anda_jax.numerics.anda against an independent float64 numpy implementation of the Anda
format (docs/formats.md, section 1)."""

import itertools
import math

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from anda_jax.numerics import anda
import testlib

# ---------------------------------------------------------------------------------------
# Independent reference: docs/formats.md, section 1, written literally in float64 numpy.


def reference_quantize(x, group_size, mantissa_bits, exponent_bits=8, rounding="truncate",
                       axis=-1, uniforms=None):
  """Returns (x_hat float32 in x's shape, E per group, s per group) by the definition's formulas."""
  x = np.moveaxis(np.asarray(x, np.float32).astype(np.float64), axis, -1)
  shape = x.shape
  length = shape[-1]
  n_groups = math.ceil(length / group_size)
  padded = np.zeros(shape[:-1] + (n_groups * group_size,))
  padded[..., :length] = x
  groups = padded.reshape(shape[:-1] + (n_groups, group_size))
  e_max = 2 ** (exponent_bits - 1) - 1
  e_min = -(2 ** (exponent_bits - 1) - 2)
  finite = np.all(np.isfinite(groups), axis=-1)
  a = np.max(np.abs(np.where(np.isfinite(groups), groups, 0.0)), axis=-1)
  _, frexp_exp = np.frexp(a)  # a = f * 2^e with f in [0.5, 1): floor(log2 a) = e - 1
  e = np.where(a > 0, np.clip(frexp_exp - 1, e_min, e_max), e_min)
  s = np.ldexp(1.0, e - mantissa_bits + 1)[..., None]
  with np.errstate(invalid="ignore"):
    ratio = np.abs(groups) / s
  if rounding == "truncate":
    m = np.floor(ratio)
  elif rounding == "nearest":
    m = np.round(ratio)  # numpy rounds half to even
  else:
    m = np.floor(ratio + uniforms)
  m = np.clip(m, 0, 2.0 ** mantissa_bits - 1)
  x_hat = np.where(np.signbit(groups), -1.0, 1.0) * m * s
  x_hat = np.where(finite[..., None], x_hat, np.nan)
  x_hat = x_hat.reshape(shape[:-1] + (-1,))[..., :length]
  return np.moveaxis(x_hat, -1, axis).astype(np.float32), e, s[..., 0]


def random_activations(rng, shape, log2_range=(-30, 30)):
  """Values spread over many binades, with exact zeros, to exercise every path."""
  magnitude = np.exp2(rng.uniform(*log2_range, size=shape)) * rng.uniform(1, 2, size=shape)
  x = np.where(rng.random(shape) < 0.5, -magnitude, magnitude)
  x[rng.random(shape) < 0.05] = 0.0
  return x.astype(np.float32)


SHAPES = [(200,), (3, 130), (2, 3, 67), (2, 2, 3, 45)]  # ranks 1-4, lengths G rarely divides


def _both_paths_over_all_m(fmt, grouped_shape):
  """quantize, decode(encode) and the stochastic-rounding bits for M = 1..24, in one
  compiled, vmapped call."""
  def both(x, m, key):
    bits = jax.random.bits(key, grouped_shape, jnp.uint32)
    return anda.quantize(x, fmt, m, key), anda.decode(anda.encode(x, fmt, m, key)), bits
  return jax.jit(jax.vmap(both, in_axes=(None, 0, 0)))


def prng_keys(n, seed=0):
  # The "rbg" PRNG: threefry's program takes ~10x longer to compile under vmap on CPU.
  return jax.random.split(jax.random.key(seed, impl="rbg"), n)


class ReferenceTest(parameterized.TestCase):

  @parameterized.parameters(
      itertools.product([1, 8, 16, 32, 64, 128], anda.ROUNDING_MODES, [5, 8], [0, -1]))
  def test_quantize_and_round_trip_match_reference(self, group_size, rounding, exponent_bits, axis):
    rng = np.random.default_rng(group_size * 100 + exponent_bits * 10 + axis)
    shape = SHAPES[(group_size + exponent_bits) % len(SHAPES)]
    x = random_activations(rng, shape)
    fmt = anda.AndaFormat(group_size=group_size, exponent_bits=exponent_bits, rounding=rounding, axis=axis)
    grouped_shape = np.moveaxis(x, axis, -1).shape[:-1] + (
        math.ceil(x.shape[axis] / group_size), group_size)
    ms = np.arange(1, 25, dtype=np.int32)
    quantized, round_trip, bits = _both_paths_over_all_m(fmt, grouped_shape)(x, ms, prng_keys(len(ms)))
    for i, m in enumerate(ms):
      uniforms = (np.asarray(bits[i]) >> 9).astype(np.float64) * 2.0 ** -23
      expected, _, _ = reference_quantize(x, group_size, int(m), exponent_bits, rounding, axis, uniforms)
      with self.subTest(mantissa_bits=int(m)):
        testlib.assert_bit_exact(quantized[i], expected)
        testlib.assert_bit_exact(round_trip[i], expected)

  @parameterized.parameters(8, 16, 32, 64)
  def test_encode_fields_match_reference(self, group_size):
    x = random_activations(np.random.default_rng(group_size), (4, 3 * group_size + 5), (-10, 10))
    enc = anda.encode(x, anda.AndaFormat(group_size=group_size), 6)
    _, e, s = reference_quantize(x, group_size, 6)
    np.testing.assert_array_equal(enc.exponent, e)
    chex.assert_shape(enc.magnitude, (4, 4, group_size))
    np.testing.assert_array_equal(enc.sign[:, :3], np.signbit(x[:, : 3 * group_size]).reshape(4, 3, -1))
    np.testing.assert_array_equal(enc.sign[:, 3, 5:], 0)  # padding
    self.assertEqual(enc.magnitude.dtype, jnp.int32)
    self.assertEqual(enc.sign.dtype, jnp.uint8)

  def test_mxint8_reference_point(self):
    """G = 32, M = 7, nearest is the element grid of OCP MXINT8 wherever no tie occurs."""
    x = random_activations(np.random.default_rng(7), (16, 256), (-4, 4))
    ours = np.asarray(anda.quantize(x, anda.AndaFormat(group_size=32, rounding="nearest"), 7))
    groups = x.astype(np.float64).reshape(16, 8, 32)
    scale = np.exp2(np.floor(np.log2(np.max(np.abs(groups), axis=-1, keepdims=True))))
    scaled = groups / scale * 64  # 6 fraction bits
    mx = (np.clip(np.round(scaled), -128, 127) / 64 * scale).reshape(16, 256)
    no_tie = (np.abs(scaled - np.floor(scaled) - 0.5) > 1e-9).reshape(16, 256)
    np.testing.assert_array_equal(ours[no_tie], mx[no_tie].astype(np.float32))


class PropertyTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.x = random_activations(np.random.default_rng(0), (8, 300), (-8, 8))

  def _encode(self, rounding, m, group_size=32, x=None):
    x = self.x if x is None else x
    fmt = anda.AndaFormat(group_size=group_size, rounding=rounding)
    enc = anda.encode(x, fmt, m)
    scale = np.exp2(np.asarray(enc.exponent, np.float64) - m + 1)  # [8, n_groups]
    per_elem = np.repeat(scale, group_size, axis=-1)[..., : x.shape[-1]]
    return enc, np.asarray(anda.decode(enc), np.float64), per_elem

  @parameterized.parameters(1, 3, 8, 16, 24)
  def test_truncate_error_bounds(self, m):
    _, x_hat, s = self._encode("truncate", m)
    x = self.x.astype(np.float64)
    self.assertTrue(np.all(np.abs(x - x_hat) < s))
    self.assertTrue(np.all(np.abs(x_hat) <= np.abs(x)))

  @parameterized.parameters(1, 3, 8, 16, 24)
  def test_nearest_error_bounds(self, m):
    enc, x_hat, s = self._encode("nearest", m)
    x = self.x.astype(np.float64)
    err = np.abs(x - x_hat)
    clamped = np.repeat(np.asarray(enc.magnitude) == 2**m - 1, 1, axis=-1).reshape(8, -1)[:, : x.shape[-1]]
    self.assertTrue(np.all(np.where(clamped, err < s, err <= s / 2)))

  @parameterized.parameters(itertools.product(anda.ROUNDING_MODES, [1, 4, 11, 24]))
  def test_idempotent(self, rounding, m):
    fmt = anda.AndaFormat(group_size=16, rounding=rounding)
    key = prng_keys(1, 1)[0]
    once = anda.quantize(self.x, fmt, m, key)
    testlib.assert_bit_exact(anda.quantize(once, fmt, m, prng_keys(1, 2)[0]), once)

  @parameterized.parameters(itertools.product([2, 8, 16, 24], [1, 5]))
  def test_prefix_property(self, m, drop):
    m_short = max(1, m - drop)
    full, _, _ = self._encode("truncate", m)
    short, _, _ = self._encode("truncate", m_short)
    np.testing.assert_array_equal(np.asarray(full.magnitude) >> (m - m_short), short.magnitude)
    np.testing.assert_array_equal(full.exponent, short.exponent)

  @parameterized.parameters(*anda.ROUNDING_MODES)
  def test_exact_when_on_grid(self, rounding):
    rng = np.random.default_rng(3)
    m = 6
    magnitudes = rng.integers(0, 2**m, size=(4, 64))
    magnitudes[:, ::16] = 2**m - 1  # every group holds its maximum: E = 5 - (m - 1) + ... = 0
    x = (np.where(rng.random((4, 64)) < 0.5, -1, 1) * magnitudes * 2.0 ** (1 - m)).astype(np.float32)
    fmt = anda.AndaFormat(group_size=16, rounding=rounding)
    testlib.assert_bit_exact(anda.quantize(x, fmt, m, prng_keys(1, 0)[0]), x)

  @parameterized.parameters(1, 4, 12, 24)
  def test_group_maximum_keeps_leading_bit(self, m):
    enc, _, _ = self._encode("truncate", m)
    groups = np.pad(self.x, [(0, 0), (0, 20)]).reshape(8, -1, 32)
    argmax = np.argmax(np.abs(groups), axis=-1)
    top = np.take_along_axis(np.asarray(enc.magnitude), argmax[..., None], -1)[..., 0]
    self.assertTrue(np.all(top >= 2 ** (m - 1)))


class EdgeCaseTest(parameterized.TestCase):

  @parameterized.parameters(*anda.ROUNDING_MODES)
  def test_all_zero_groups_and_negative_zero(self, rounding):
    x = np.array([0.0, -0.0, 0.0, -0.0, 1.5, -0.0, 0.0, 0.25], np.float32)
    fmt = anda.AndaFormat(group_size=4, rounding=rounding)
    enc = anda.encode(x, fmt, 4, prng_keys(1, 0)[0])
    self.assertEqual(int(enc.exponent[0]), fmt.e_min)
    testlib.assert_bit_exact(anda.decode(enc), x)
    np.testing.assert_array_equal(enc.sign, [[0, 1, 0, 1], [0, 1, 0, 0]])

  @parameterized.parameters(1, 2, 8, 24)
  def test_powers_of_two_are_exact(self, m):
    x = np.exp2(np.arange(-126, 128, dtype=np.float64)).astype(np.float32)
    testlib.assert_bit_exact(anda.quantize(x, anda.AndaFormat(group_size=1), m), x)

  def test_clamp_to_largest_code(self):
    # Rounding 1.999 to nearest with 3 bits gives 8 = 2^3, which clamps to 7.
    x = np.array([1.999, 0.5], np.float32)
    out = anda.quantize(x, anda.AndaFormat(group_size=2, rounding="nearest"), 3)
    np.testing.assert_array_equal(out, [1.75, 0.5])

  @parameterized.parameters(itertools.product([5, 8], anda.ROUNDING_MODES))
  def test_magnitudes_beyond_exponent_range(self, exponent_bits, rounding):
    fmt = anda.AndaFormat(group_size=4, exponent_bits=exponent_bits, rounding=rounding)
    tiny = 2.0 ** (fmt.e_min - 3)  # below 2^E_min (a float32 subnormal for 8 bits)
    # Above 2^(E_max + 1) saturates; no finite float32 is that large for 8 bits.
    huge = 2.0 ** (fmt.e_max + 3) if exponent_bits < 8 else np.finfo(np.float32).max
    x = np.array([tiny, -tiny * 1.5, tiny / 4, 0.0, huge, -huge, 1.0, 2.0 ** fmt.e_max], np.float32)
    m = 4
    key = prng_keys(1, 0)[0]
    uniforms = None
    if rounding == "stochastic":
      uniforms = (np.asarray(jax.random.bits(key, (2, 4), jnp.uint32)) >> 9) * 2.0 ** -23
    expected, e, _ = reference_quantize(x, 4, m, exponent_bits, rounding, uniforms=uniforms)
    out = np.asarray(anda.quantize(x, fmt, m, key))
    testlib.assert_bit_exact(out, expected)
    np.testing.assert_array_equal(e, [fmt.e_min, fmt.e_max if exponent_bits < 8 else 127])
    if exponent_bits < 8:
      largest = (2**m - 1) * 2.0 ** (fmt.e_max - m + 1)
      np.testing.assert_array_equal(out[4:6], [largest, -largest])

  @parameterized.parameters(np.nan, np.inf, -np.inf)
  def test_nonfinite_group_is_nan_and_neighbours_stay_exact(self, bad):
    x = np.array([[1.0, 0.5, -0.25, 0.75], [1.0, bad, 0.5, 2.0], [-3.0, 1.5, 0.0, 0.75]], np.float32)
    for rounding in anda.ROUNDING_MODES:
      fmt = anda.AndaFormat(group_size=4, rounding=rounding)
      enc = anda.encode(x, fmt, 8, prng_keys(1, 0)[0])
      out = np.asarray(anda.decode(enc))
      self.assertTrue(np.all(np.isnan(out[1])))
      testlib.assert_bit_exact(out[[0, 2]], x[[0, 2]])
      self.assertEqual(int(enc.exponent[1, 0]), anda.NONFINITE_EXPONENT)

  def test_ragged_last_group_and_zero_padding(self):
    x = random_activations(np.random.default_rng(5), (3, 70), (-5, 5))
    enc = anda.encode(x, anda.AndaFormat(group_size=32), 5)
    chex.assert_shape(enc.magnitude, (3, 3, 32))
    np.testing.assert_array_equal(enc.magnitude[:, -1, 6:], 0)
    chex.assert_shape(anda.decode(enc), (3, 70))

  def test_low_precision_input_dtypes_keep_dtype(self):
    x = jnp.asarray(random_activations(np.random.default_rng(2), (4, 64), (-3, 3)), jnp.bfloat16)
    out = anda.quantize(x, anda.AndaFormat(group_size=32), 4)
    self.assertEqual(out.dtype, jnp.bfloat16)
    expected, _, _ = reference_quantize(np.asarray(x, np.float32), 32, 4)
    np.testing.assert_array_equal(np.asarray(out, np.float32), expected)


class TracingTest(parameterized.TestCase):

  def test_one_compilation_serves_every_mantissa_length(self):
    traces = []

    @jax.jit
    def fn(x, m):
      traces.append(1)
      return anda.quantize(x, anda.AndaFormat(group_size=64), m)

    x = random_activations(np.random.default_rng(0), (4, 256), (-5, 5))
    for m in range(1, 17):
      fn(x, jnp.int32(m)).block_until_ready()
    self.assertLen(traces, 1)

  def test_vmap_over_mantissa_lengths_equals_loop(self):
    x = random_activations(np.random.default_rng(1), (4, 256), (-5, 5))
    fmt = anda.AndaFormat(group_size=64, rounding="nearest")
    ms = jnp.arange(1, 17, dtype=jnp.int32)
    batched = jax.vmap(lambda m: anda.quantize(x, fmt, m))(ms)
    for i, m in enumerate(range(1, 17)):
      testlib.assert_bit_exact(batched[i], anda.quantize(x, fmt, m))

  def test_gradient_is_straight_through(self):
    x = random_activations(np.random.default_rng(2), (3, 64), (-5, 5))
    fmt = anda.AndaFormat(group_size=16)
    grad = jax.grad(lambda x: jnp.sum(anda.quantize(x, fmt, 3)))(x)
    np.testing.assert_array_equal(grad, np.ones_like(x))
    weights = np.arange(x.size, dtype=np.float32).reshape(x.shape)
    grad = jax.grad(lambda x: jnp.sum(weights * anda.quantize(x, fmt, jnp.int32(5))))(x)
    np.testing.assert_array_equal(grad, weights)


class ValidationTest(parameterized.TestCase):

  @parameterized.parameters(
      (dict(group_size=0), "group_size=0"),
      (dict(group_size=-4), "group_size=-4"),
      (dict(group_size=2048), "group_size=2048"),
      (dict(group_size=8.0), "group_size=8.0"),
      (dict(exponent_bits=1), "exponent_bits=1"),
      (dict(exponent_bits=9), "exponent_bits=9"),
      (dict(rounding="floor"), "rounding='floor'"),
  )
  def test_bad_format_parameters(self, kwargs, message):
    with self.assertRaisesRegex(ValueError, message + ".*must"):
      anda.AndaFormat(**kwargs)

  @parameterized.parameters(0, 25, -1, 2.5)
  def test_bad_mantissa_bits(self, m):
    with self.assertRaisesRegex(ValueError, rf"mantissa_bits={m}.*\[1, 24\]"):
      anda.quantize(np.ones(8, np.float32), anda.AndaFormat(group_size=8), m)

  def test_bad_inputs(self):
    fmt = anda.AndaFormat(group_size=8, axis=2)
    with self.assertRaisesRegex(ValueError, "axis=2.*rank 2"):
      anda.quantize(np.ones((2, 8), np.float32), fmt, 4)
    with self.assertRaisesRegex(ValueError, "floating-point.*int32"):
      anda.quantize(np.ones(8, np.int32), anda.AndaFormat(group_size=8), 4)
    with self.assertRaisesRegex(ValueError, "stochastic.*key"):
      anda.quantize(np.ones(8, np.float32), anda.AndaFormat(group_size=8, rounding="stochastic"), 4)

  def test_storage_bits(self):
    self.assertEqual(anda.AndaFormat(group_size=64).storage_bits(7), 1 + 7 + 8 / 64)


if __name__ == "__main__":
  absltest.main()
