"""Tests of anda_jax.numerics.baselines against independent float64 numpy references.

The references below never call the code under test: element formats are rounded with
frexp / rint / trunc on float64 (exact here), MX scales are powers of two, and each float32 step
of the NVFP4 and per-token recipes is computed in float64 and rounded to float32 (for one
+, *, / that equals the correctly rounded float32 operation)."""

import math

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from anda_jax.numerics.anda import AndaFormat
from anda_jax.numerics import baselines
from anda_jax.numerics.baselines import MXFormat, NVFP4Format, PerTokenFormat, fake_quantize
import testlib

# ---------------------------------------------------------------------------------------
# Independent reference. Element formats by the OCP MX v1.0 tables:
# name -> (stored mantissa bits, exponent of the smallest normal binade, emax, largest value).
FLOAT_ELEMENTS = {
    "fp8_e4m3": (3, -6, 8, 448.0),
    "fp8_e5m2": (2, -14, 15, 57344.0),
    "fp6_e3m2": (2, -2, 4, 28.0),
    "fp6_e2m3": (3, 0, 2, 7.5),
    "fp4_e2m1": (1, 0, 2, 6.0),
}
ELEMENT_EMAX = {"int8": 0, **{name: spec[2] for name, spec in FLOAT_ELEMENTS.items()}}


def ref_element(v, name, rounding="nearest"):
  """v >= 0 (finite float64) rounded to the element format, saturating. Returns the values and
  boolean masks of the cases the data must cover: exact ties, element subnormals, saturation."""
  rnd = np.rint if rounding == "nearest" else np.trunc  # rint: ties to even
  if name == "int8":  # two's complement with 6 fraction bits, clamped to +-127/64
    quantum = np.full_like(v, 2.0**-6)
    vmax, emin = 127 / 64, None
  else:
    mbits, emin, _, vmax = FLOAT_ELEMENTS[name]
    _, e = np.frexp(v)  # v = f * 2^e, f in [0.5, 1): floor(log2 v) = e - 1
    quantum = np.ldexp(1.0, np.maximum(e - 1, emin) - mbits)
  ratio = v / quantum
  out = np.minimum(rnd(ratio) * quantum, vmax)
  tie = ratio - np.floor(ratio) == 0.5
  subnormal = (v > 0) & (v < 2.0**emin) if emin is not None else np.zeros(v.shape, bool)
  return out, dict(ties=tie, subnormals=subnormal, saturated=v > vmax)


def _f32(v):
  """float64 -> the nearest float32, back in float64: one correctly rounded float32 op."""
  with np.errstate(over="ignore"):
    return np.asarray(v, np.float64).astype(np.float32).astype(np.float64)


def _blocks(x, block):
  """[rows, L] -> float64 [rows, n_blocks, block], zero padded."""
  rows, length = x.shape
  padded = np.zeros((rows, math.ceil(length / block) * block))
  padded[:, :length] = x
  return padded.reshape(rows, -1, block)


def _finish(out_abs, blocks, nonfinite, length):
  """Signs back (zeros keep theirs), NaN for non-finite blocks, padding dropped, float32."""
  out = np.where(nonfinite[..., None], np.nan, np.copysign(out_abs, blocks))
  return out.reshape(blocks.shape[0], -1)[:, :length].astype(np.float32)


def _count(stats, masks, valid):
  for key, mask in masks.items():
    stats[key] = stats.get(key, 0) + int(np.sum(mask & valid))


def ref_mx(x, name, block, rounding):
  """OCP MX by its specification (docs/formats.md, section 5): X = 2^clip(floor(log2 amax) - emax, -127, 127), elements rounded."""
  blocks = _blocks(x.astype(np.float64), block)
  finite = np.isfinite(blocks)
  nonfinite = ~np.all(finite, axis=-1)
  mag = np.where(finite, np.abs(blocks), 0.0)
  amax = np.max(mag, axis=-1, keepdims=True)
  _, e = np.frexp(amax)
  floor_log2 = np.where(amax > 0, e - 1, -126)  # microxcaling: log2 of the smallest normal for 0
  exp = np.clip(floor_log2 - ELEMENT_EMAX[name], -127, 127)
  scale = np.ldexp(1.0, exp)
  out, masks = ref_element(mag / scale, name, rounding)
  stats = dict(clamped_scales=int(np.sum((floor_log2 - ELEMENT_EMAX[name] < -127) & (amax > 0))),
               nonfinite_blocks=int(np.sum(nonfinite)))
  _count(stats, masks, ~nonfinite[..., None])
  return _finish(out * scale, blocks, nonfinite, x.shape[1]), stats


def ref_nvfp4(x):
  """NVFP4, ModelOpt's recipe with a per-token second-level scale (see baselines.py)."""
  blocks = _blocks(x.astype(np.float64), 16)
  finite = np.isfinite(blocks)
  nonfinite = ~np.all(finite, axis=-1)
  mag = np.where(finite, np.abs(blocks), 0.0)
  block_amax = np.max(mag, axis=-1)
  g = np.maximum(_f32(np.max(block_amax, axis=-1, keepdims=True) / 2688), 2.0**-100)
  block_scale = np.maximum(_f32(block_amax / _f32(6 * g)), 2.0**-9)
  e4m3, masks_scale = ref_element(block_scale, "fp8_e4m3")
  scale = _f32(e4m3 * g)[..., None]
  codes, masks = ref_element(_f32(mag * _f32(1 / scale)), "fp4_e2m1")
  stats = dict(nonfinite_blocks=int(np.sum(nonfinite)), clamped_block_scales=int(np.sum(
      (block_amax > 0) & (block_amax / (6 * g) < 2.0**-9))),
      e4m3_subnormal_scales=int(np.sum(masks_scale["subnormals"])))
  _count(stats, masks, ~nonfinite[..., None])
  return _finish(_f32(codes * scale), blocks, nonfinite, x.shape[1]), stats


def ref_per_token(x, element):
  """vLLM's dynamic per-token FP8 / INT8 (see baselines.py)."""
  rows = x.astype(np.float64)[:, None, :]  # one block per row
  finite = np.isfinite(rows)
  nonfinite = ~np.all(finite, axis=-1)
  mag = np.where(finite, np.abs(rows), 0.0)
  amax = np.max(mag, axis=-1, keepdims=True)
  if element == "fp8_e4m3":
    scale = np.maximum(_f32(amax / 448), _f32(1 / (448 * 512)))
    codes, masks = ref_element(_f32(mag * _f32(1 / scale)), "fp8_e4m3")
  else:
    scale = np.maximum(_f32(amax / 127), 2.0**-100)
    y = _f32(mag * _f32(1 / scale))
    codes = np.minimum(np.rint(y), 127)
    masks = dict(ties=y - np.floor(y) == 0.5, saturated=y > 127)
  stats = dict(nonfinite_rows=int(np.sum(nonfinite)), floored_scales=int(np.sum(
      amax < (448 * _f32(1 / (448 * 512)) if element == "fp8_e4m3" else 127 * 2.0**-100))))
  _count(stats, masks, ~nonfinite[..., None])
  return _finish(_f32(codes * scale), rows, nonfinite, x.shape[1]), stats


# ---------------------------------------------------------------------------------------
# Test data.

ROWS, LENGTH = 80, 200  # 16,000 values per case; 200 = 6*32 + 8 = 12*16 + 8: ragged last blocks


def mixed_values(seed, rows=ROWS, length=LENGTH):
  """float32 values that reach every path: short significands (exact ties of every element
  format), random significands over many binades below the block maximum (element subnormals,
  underflow to 0), values just below a power of two (rounding up, saturation), zeros and -0.0;
  each row scaled by 2^k with k from float32's subnormals to near its overflow (E8M0 clamp at
  -127, subnormal blocks); a few NaN, +-Inf and FLT_MAX."""
  rng = np.random.default_rng(seed)
  shape = (rows, length)
  short = rng.integers(1, 2 ** rng.integers(1, 10, shape)) * np.exp2(rng.integers(-4, 8, shape))
  full = np.exp2(rng.uniform(-16, 8, shape))
  near_top = (1 - np.exp2(-rng.integers(2, 25, shape))) * np.exp2(rng.integers(-8, 8, shape))
  kind = rng.integers(0, 3, shape)
  mag = np.choose(kind, [short, full, near_top])
  mag[rng.random(shape) < 0.05] = 0.0
  x = np.where(rng.random(shape) < 0.5, -mag, mag)
  shifts = np.array([-150, -145, -140, -136, -133, -130, -128, -126, -120, -60, -20, -8, 0, 0, 0,
                     8, 20, 60, 100, 110])
  x = x * np.exp2(rng.choice(shifts, (rows, 1)))
  flat = x.reshape(-1)  # a view: specials at random places, some rows kept clean
  for value in (np.nan, np.inf, -np.inf):
    flat[rng.choice(rows * length // 2, 3, replace=False)] = value
  flat[rng.choice(rows * length, 3, replace=False)] = np.float32(3.4028235e38)
  flat[rng.choice(rows * length, 20, replace=False)] = -0.0
  return x.astype(np.float32)


def scaled_rows(seed, top, block=None, rows=ROWS // 2, length=LENGTH):
  """Rows whose float32 scales come out as exact powers of two, so that the recipes' float
  steps are exact and their elements meet exact ties: each row's maximum is top * 2^k and its
  values are short multiples of 2^k. With `block` (NVFP4), every block's maximum is 6 * 2^j
  times the row's 2^k, so its E4M3 scale is 2^j (j from below E4M3's range to 2^8)."""
  rng = np.random.default_rng(seed)
  if block is None:
    mag = rng.integers(0, 64, (rows, length)) / 16 * np.exp2(rng.integers(-12, 6, (rows, length)))
    mag = np.where(mag < top, mag, 0.0)
  else:
    j = np.exp2(rng.integers(-12, 9, (rows, math.ceil(length / block), 1)))
    mag = rng.integers(0, 25, (rows, j.shape[1], block)) / 4 * j
    mag[..., 0] = 6 * j[..., 0]
    mag = mag.reshape(rows, -1)[:, :length]
  mag[:, 0] = top
  x = np.where(rng.random(mag.shape) < 0.5, -mag, mag)
  return (x * np.exp2(rng.integers(-60, 60, (rows, 1)))).astype(np.float32)


def run(x, fmt, mantissa_bits=None):
  return np.asarray(fake_quantize(jnp.asarray(x), fmt, mantissa_bits))


# ---------------------------------------------------------------------------------------


class MXTest(parameterized.TestCase):

  @parameterized.product(element=baselines.MX_ELEMENTS, rounding=baselines.MX_ROUNDING_MODES)
  def test_matches_reference(self, element, rounding):
    x = mixed_values(seed=len(element) + 7 * len(rounding))
    expected, stats = ref_mx(x, element, 32, rounding)
    testlib.assert_bit_exact(run(x, MXFormat(element, 32, rounding)), expected, str(stats))
    # The data reaches every case (else the comparison above proves less than it claims).
    self.assertGreater(x.size, 10**4)
    self.assertGreater(np.sum((x != 0) & (np.abs(x) < np.finfo(np.float32).tiny)), 100)
    self.assertGreater(stats["ties"], 100, stats)
    self.assertGreater(stats["saturated"], 20 if element != "int8" else 5, stats)
    self.assertGreater(stats["clamped_scales"], 5, stats)
    self.assertGreater(stats["nonfinite_blocks"], 5, stats)
    if element != "int8":
      self.assertGreater(stats["subnormals"], 200, stats)

  @parameterized.parameters(1, 7, 16, 64)
  def test_other_block_sizes(self, block):
    x = mixed_values(seed=block)[:8]
    for element in ("fp8_e4m3", "fp4_e2m1"):
      testlib.assert_bit_exact(run(x, MXFormat(element, block)), ref_mx(x, element, block, "nearest")[0])

  def test_golden_values(self):
    """MXFP4 by hand: the block maximum 7 gives X = 2^(2 - 2) = 1; the grid is 0, .5, 1, 1.5,
    2, 3, 4, 6; ties go to the even code."""
    x = np.array([[7, 5, 0.25, 0.75, 1.25, 2.5, 3.5, -0.75, -0.0, 0.1]], np.float32)
    np.testing.assert_array_equal(run(x, MXFormat()), [[6, 4, 0, 1, 1, 2, 4, -1, -0.0, 0]])
    np.testing.assert_array_equal(run(x, MXFormat(rounding="truncate")),
                                  [[6, 4, 0, 0.5, 1, 2, 3, -0.5, -0.0, 0]])
    self.assertTrue(np.signbit(run(x, MXFormat())[0, 8]))
    # FP8 E4M3: 500 has X = 2^(8 - 8), and saturates to 448 (S.1111.111 is NaN, not a number).
    np.testing.assert_array_equal(run(np.float32([[500, 1]]), MXFormat("fp8_e4m3")), [[448, 1]])
    # A NaN or Inf makes its own block NaN and no other.
    y = run(np.float32([[1, np.inf] + [1] * 30 + [1, 2]]), MXFormat("fp8_e4m3"))
    self.assertTrue(np.all(np.isnan(y[0, :32])))
    np.testing.assert_array_equal(y[0, 32:], [1, 2])

  def test_mxint8_is_anda_g32_m7_nearest_but_for_the_scale_clamp(self):
    """docs/formats.md, section 5: G = 32, M = 7, nearest has MXINT8's element grid (quantum
    2^(floor(log2 amax) - 6), magnitudes clamped to 127, ties to even in both). They differ only
    where the shared exponent is clamped: E8M0 goes down to 2^-127, Anda's 8-bit E to -126, so
    blocks whose maximum is a float32 subnormal keep one more bit in MX."""
    x = np.concatenate([mixed_values(seed=3), mixed_values(seed=4)])
    mx = run(x, MXFormat("int8", 32))
    anda = run(x, AndaFormat(group_size=32, rounding="nearest"), 7)
    amax = np.max(np.where(np.isfinite(_blocks(x, 32)), np.abs(_blocks(x, 32)), 0), axis=-1)
    normal_max = np.repeat(amax >= 2.0**-126, 32, axis=-1)[:, : x.shape[1]]
    testlib.assert_bit_exact(mx[normal_max], anda[normal_max])
    differ = mx.view(np.uint32) != anda.view(np.uint32)
    self.assertGreater(np.sum(differ), 20)
    self.assertFalse(np.any(differ & normal_max))
    # By hand: 2^-133 is a tie at Anda's quantum 2^-132 (-> 0) and exact at MX's 2^-133.
    block = np.float32([[1.5 * 2.0**-127, 2.0**-133]])
    np.testing.assert_array_equal(run(block, MXFormat("int8")), block)
    np.testing.assert_array_equal(run(block, AndaFormat(32, rounding="nearest"), 7), [[1.5 * 2.0**-127, 0]])
    # The symmetric clamp: -(2 - 2^-9) rounds to -128/64 and both clamp it to -127/64 (OCP's
    # two's complement code -128 would allow -2).
    both = np.float32([[-(2 - 2.0**-9), 1]])
    np.testing.assert_array_equal(run(both, MXFormat("int8")), [[-127 / 64, 1]])
    np.testing.assert_array_equal(run(both, AndaFormat(32, rounding="nearest"), 7), [[-127 / 64, 1]])


class NVFP4Test(absltest.TestCase):

  def test_matches_reference(self):
    x = np.concatenate([mixed_values(seed=11, rows=ROWS // 2), scaled_rows(12, 2688, block=16)])
    expected, stats = ref_nvfp4(x)
    testlib.assert_bit_exact(run(x, NVFP4Format()), expected, str(stats))
    self.assertGreater(x.size, 10**4)
    for key, least in dict(ties=500, subnormals=200, saturated=20, nonfinite_blocks=5,
                           clamped_block_scales=20, e4m3_subnormal_scales=20).items():
      self.assertGreater(stats[key], least, (key, stats))

  def test_golden_values(self):
    """A row with maximum 2688 has g = 1; a block with maximum 6 has E4M3 scale 1, so its
    elements round to E2M1 directly; non-finite poisons its block of 16 only."""
    x = np.zeros((1, 48), np.float32)
    x[0, 0] = 2688
    x[0, 16:22] = [6, 5, 0.25, 0.75, -2.5, 1.2]
    x[0, 32:34] = [np.nan, 1]
    y = run(x, NVFP4Format())
    np.testing.assert_array_equal(y[0, 16:22], [6, 4, 0, 1, -2, 1])
    self.assertEqual(y[0, 0], 2688)
    self.assertTrue(np.all(np.isnan(y[0, 32:])))
    self.assertFalse(np.any(np.isnan(y[0, :32])))


class PerTokenTest(parameterized.TestCase):

  @parameterized.parameters(("fp8_e4m3", 448), ("int8", 127))
  def test_matches_reference(self, element, top):
    x = np.concatenate([mixed_values(seed=21, rows=ROWS // 2), scaled_rows(22, top)])
    expected, stats = ref_per_token(x, element)
    testlib.assert_bit_exact(run(x, PerTokenFormat(element)), expected, str(stats))
    self.assertGreater(x.size, 10**4)
    for key, least in dict(ties=200, saturated=0, nonfinite_rows=3, floored_scales=3).items():
      self.assertGreaterEqual(stats[key], least, (key, stats))

  def test_golden_values(self):
    x = np.float32([[127, 63.5, -0.5, 1.5, 0.2, -0.0], [0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(run(x, PerTokenFormat("int8")), [[127, 64, -0.0, 2, 0, -0.0], [0] * 6])
    x = np.float32([[448, 17, 0.01, -1.0625]])  # scale 1: E4M3 ties 17 -> 16, 1.0625 -> 1
    np.testing.assert_array_equal(run(x, PerTokenFormat()), [[448, 16, 0.009765625, -1]])


class EntryPointTest(parameterized.TestCase):

  FORMATS = [(MXFormat(), None), (MXFormat("int8", 8, "truncate"), None), (NVFP4Format(), None),
             (PerTokenFormat(), None), (PerTokenFormat("int8"), None),
             (AndaFormat(group_size=16, rounding="nearest"), 4)]

  @parameterized.parameters(*FORMATS)
  def test_straight_through_gradient(self, fmt, m):
    x = testlib.heavy_tailed(0, (3, 40))
    w = jax.random.normal(jax.random.key(1), x.shape)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(fake_quantize(x, fmt, m) * w)))(x)
    testlib.assert_bit_exact(grad, w)

  @parameterized.parameters(*FORMATS)
  def test_float32_out_of_any_float_input(self, fmt, m):
    x = testlib.heavy_tailed(1, (2, 3, 40))
    for dtype in (jnp.bfloat16, jnp.float16):
      y = fake_quantize(x.astype(dtype), fmt, m)
      chex.assert_type(y, jnp.float32)
      chex.assert_shape(y, x.shape)
      testlib.assert_bit_exact(y, fake_quantize(x.astype(dtype).astype(jnp.float32), fmt, m))

  @parameterized.parameters(*FORMATS)
  def test_axis(self, fmt, m):
    x = testlib.heavy_tailed(2, (40, 3, 5))
    moved = fake_quantize(jnp.moveaxis(x, 0, -1), fmt, m)
    testlib.assert_bit_exact(fake_quantize(x, type(fmt)(**{**vars(fmt), "axis": 0}), m),
                             jnp.moveaxis(moved, -1, 0))

  @parameterized.parameters(*FORMATS)
  def test_vmap(self, fmt, m):
    """Batching must not change the arithmetic (XLA rewrites some divisions it can see)."""
    x = mixed_values(seed=5, rows=24, length=72).reshape(3, 8, 72)
    batched = jax.vmap(lambda x: fake_quantize(x, fmt, m))(x)
    for i in range(3):
      testlib.assert_bit_exact(batched[i], fake_quantize(x[i], fmt, m))

  def test_one_compilation_per_format(self):
    x = testlib.heavy_tailed(3, (4, 64))
    before = baselines._fake_quantize._cache_size()
    for _ in range(3):
      fake_quantize(x, MXFormat("fp6_e3m2", 16))  # equal objects hash alike: one compilation
    jax.jit(fake_quantize, static_argnames="fmt")(x, fmt=MXFormat("fp6_e3m2", 16))
    self.assertEqual(baselines._fake_quantize._cache_size(), before + 1)

  def test_storage_bits(self):
    self.assertEqual(MXFormat("fp4_e2m1").storage_bits(), 4.25)
    self.assertEqual(MXFormat("int8").storage_bits(), 8.25)
    self.assertEqual(MXFormat("fp6_e2m3").storage_bits(), 6.25)
    self.assertEqual(MXFormat("fp8_e5m2", block_size=16).storage_bits(), 8.5)
    self.assertEqual(NVFP4Format().storage_bits(row_length=4096), 4.5 + 32 / 4096)
    self.assertEqual(PerTokenFormat("int8").storage_bits(576), 8 + 32 / 576)
    self.assertEqual(baselines.storage_bits(AndaFormat(group_size=32), mantissa_bits=7), 8.25)
    self.assertEqual(baselines.storage_bits(NVFP4Format(), row_length=64), 5.0)
    self.assertEqual(baselines.storage_bits(MXFormat()), 4.25)

  def test_value_errors(self):
    x = jnp.ones((2, 32))
    cases = [
        (lambda: MXFormat("fp4"), r"element='fp4' is invalid: must be one of \('int8', 'fp8_e4m3'"),
        (lambda: MXFormat(block_size=0), r"block_size=0 is invalid: must be an integer in \[1, 1024\]"),
        (lambda: MXFormat(block_size=2048), r"block_size=2048 is invalid"),
        (lambda: MXFormat(block_size=32.0), r"block_size=32.0 is invalid"),
        (lambda: MXFormat(rounding="stochastic"), r"rounding='stochastic' is invalid: must be one of \('nearest', 'truncate'\)"),
        (lambda: MXFormat(axis=None), r"axis=None is invalid"),
        (lambda: PerTokenFormat("fp8_e5m2"), r"element='fp8_e5m2' is invalid: must be one of \('fp8_e4m3', 'int8'\)"),
        (lambda: NVFP4Format().storage_bits(0), r"row_length=0 is invalid"),
        (lambda: fake_quantize(jnp.ones((2, 32), jnp.int32), MXFormat()), r"floating-point array, got dtype int32"),
        (lambda: fake_quantize(x, MXFormat(), mantissa_bits=4), r"mantissa_bits=4 is invalid for MXFormat: must be None"),
        (lambda: fake_quantize(x, NVFP4Format(), key=jax.random.key(0)), r"key is invalid for NVFP4Format"),
        (lambda: fake_quantize(x, AndaFormat()), r"mantissa_bits=None is invalid for an AndaFormat"),
        (lambda: fake_quantize(x, "mxfp4"), r"fmt='mxfp4' is invalid: must be one of"),
        (lambda: fake_quantize(x, PerTokenFormat(axis=2)), r"axis=2 is invalid for an input of rank 2"),
        (lambda: fake_quantize(jnp.float32(1), MXFormat()), r"rank 0"),
        (lambda: fake_quantize(jnp.ones(4, jnp.int8), AndaFormat(), 3), r"floating-point array, got dtype int8"),
    ]
    for make, message in cases:
      with self.subTest(message):
        with self.assertRaisesRegex(ValueError, message):
          make()


def ref_format(x, fmt):
  """The independent reference of one of CHOICE's formats (or x itself for None: float)."""
  if fmt is None:
    return x
  if isinstance(fmt, MXFormat):
    return ref_mx(x, fmt.element, fmt.block_size, fmt.rounding)[0]
  if isinstance(fmt, NVFP4Format):
    return ref_nvfp4(x)[0]
  return ref_per_token(x, fmt.element)[0]


# Every kind of format, blocks of two sizes, both MX roundings; value i picks CHOICE[i - 1].
CHOICE = baselines.FormatChoice((MXFormat("int8"), MXFormat("fp8_e4m3"), MXFormat("fp4_e2m1", 16),
                                 NVFP4Format(), PerTokenFormat("int8"), PerTokenFormat(),
                                 MXFormat("fp6_e3m2", rounding="truncate")))


class FormatChoiceTest(parameterized.TestCase):
  """docs/formats.md, section 10: value i is the i-th format, bit for bit, 0 is x itself."""

  def test_each_value_is_its_format_against_the_reference(self):
    x = mixed_values(seed=31, rows=24)
    expected = [ref_format(x, f) for f in (None, *CHOICE.formats)]
    for value, want in enumerate(expected):
      testlib.assert_bit_exact(run(x, CHOICE, value), want, f"value {value}")
    # Traced: one compilation serves every value, and it equals the eager results.
    traces = []

    @jax.jit
    def choose(x, value):
      traces.append(1)
      return fake_quantize(x, CHOICE, value)

    for value, want in enumerate(expected):
      testlib.assert_bit_exact(choose(x, jnp.int32(value)), want, f"jit, value {value}")
    self.assertLen(traces, 1)

  def test_vmap_over_configurations_selects_bit_for_bit(self):
    """As the evaluator batches configurations: each its own value and its own activation
    (under vmap the switch computes every branch and selects)."""
    x = mixed_values(seed=32, rows=16, length=96).reshape(8, 2, 96)
    values = jnp.array([0, 1, 2, 3, 4, 5, 6, 7])
    batched = jax.jit(jax.vmap(lambda x, v: fake_quantize(x, CHOICE, v)))(x, values)
    shared = jax.jit(jax.vmap(lambda v: fake_quantize(x[0], CHOICE, v)))(values)
    for i, value in enumerate(values.tolist()):
      fmt = None if value == 0 else CHOICE.formats[value - 1]
      testlib.assert_bit_exact(batched[i], ref_format(x[i], fmt), f"value {value}")
      testlib.assert_bit_exact(shared[i], ref_format(x[0], fmt), f"shared x, value {value}")

  def test_straight_through_gradient_at_every_value(self):
    x = testlib.heavy_tailed(4, (3, 48))
    w = jax.random.normal(jax.random.key(2), x.shape)
    grad = jax.jit(jax.grad(lambda x, v: jnp.sum(fake_quantize(x, CHOICE, v) * w)))
    for value in range(len(CHOICE.formats) + 1):
      testlib.assert_bit_exact(grad(x, jnp.int32(value)), w)

  def test_storage_bits_group_size_and_hash(self):
    k = 576
    want = [8.25, 8.25, 4.5, 4 + 8 / 16 + 32 / k, 8 + 32 / k, 8 + 32 / k, 6.25]
    self.assertEqual([baselines.storage_bits(CHOICE, v, k) for v in range(1, 8)], want)
    self.assertEqual(CHOICE.group_size, 32)  # lcm(32, 16); per-token formats have no blocks
    self.assertEqual(baselines.FormatChoice((MXFormat("int8", 48), NVFP4Format())).group_size, 48)
    self.assertIsNone(baselines.FormatChoice((PerTokenFormat(),)).group_size)
    self.assertEqual(hash(CHOICE), hash(baselines.FormatChoice(list(CHOICE.formats))))

  def test_value_errors(self):
    x = jnp.ones((2, 32))
    cases = [
        (lambda: baselines.FormatChoice(()), r"formats=\(\) is invalid: must be a non-empty tuple"),
        (lambda: baselines.FormatChoice(MXFormat()), r"formats=MXFormat.* is invalid"),
        (lambda: baselines.FormatChoice((MXFormat(), AndaFormat())),
         r"formats\[1\]=AndaFormat.* is invalid"),
        (lambda: baselines.FormatChoice((MXFormat(), MXFormat())),
         r"formats\[1\]=.* repeats an earlier"),
        (lambda: baselines.FormatChoice((MXFormat(), NVFP4Format(axis=0))),
         r"formats\[1\].axis=0 is invalid"),
        (lambda: baselines.FormatChoice(tuple(MXFormat(block_size=b) for b in range(1, 26))),
         r"len\(formats\)=25 is invalid: must be an integer in \[1, 24\]"),
        (lambda: fake_quantize(x, CHOICE), r"mantissa_bits=None is invalid for a FormatChoice"),
        (lambda: fake_quantize(x, CHOICE, 8),
         r"value=8 is invalid: must be an integer in \[0, 7\]"),
        (lambda: fake_quantize(x, CHOICE, 1.0), r"value=1.0 is invalid for a FormatChoice"),
        (lambda: fake_quantize(x, CHOICE, 1, key=jax.random.key(0)),
         r"key is invalid for FormatChoice"),
        (lambda: CHOICE.storage_bits(0, 64), r"value=0 is invalid: must be an integer in \[1, 7\]"),
    ]
    for make, message in cases:
      with self.subTest(message):
        with self.assertRaisesRegex(ValueError, message):
          make()


class NamesTest(parameterized.TestCase):
  """Configs name formats by strings: baselines.parse_format and its inverse format_name."""

  @parameterized.parameters(
      ("mxfp4", MXFormat("fp4_e2m1")), ("mxfp6_e2m3", MXFormat("fp6_e2m3")),
      ("mxfp6_e3m2", MXFormat("fp6_e3m2")), ("mxfp8_e4m3", MXFormat("fp8_e4m3")),
      ("mxfp8_e5m2", MXFormat("fp8_e5m2")), ("mxint8", MXFormat("int8")),
      ("nvfp4", NVFP4Format()), ("fp8_token", PerTokenFormat("fp8_e4m3")),
      ("int8_token", PerTokenFormat("int8")),
      ("mxfp4:block_size=16", MXFormat("fp4_e2m1", block_size=16)),
      ("mxint8:rounding=truncate", MXFormat("int8", rounding="truncate")),
      ("mxfp6_e2m3:block_size=64,rounding=truncate", MXFormat("fp6_e2m3", 64, "truncate")))
  def test_every_name_and_its_round_trip(self, name, fmt):
    self.assertEqual(baselines.parse_format(name), fmt)
    self.assertEqual(baselines.format_name(fmt), name)
    self.assertEqual(baselines.parse_format(baselines.format_name(fmt)), fmt)

  def test_the_names_cover_every_element_and_format(self):
    self.assertLen(baselines.FORMAT_NAMES, 9)
    parsed = [baselines.parse_format(n) for n in baselines.FORMAT_NAMES]
    self.assertEqual({f.element for f in parsed if isinstance(f, MXFormat)}, set(baselines.MX_ELEMENTS))
    self.assertEqual({f.element for f in parsed if isinstance(f, PerTokenFormat)},
                     set(baselines.PER_TOKEN_ELEMENTS))
    self.assertIn(NVFP4Format(), parsed)
    # Spaces around options are forgiven; default options read as the bare name.
    self.assertEqual(baselines.format_name(baselines.parse_format(" mxfp4: block_size=32 , rounding=nearest")),
                     "mxfp4")

  @parameterized.named_parameters(
      ("unknown", "mxfp5", r"'mxfp5' must be one of \('mxfp4', 'mxfp6_e2m3', .*'int8_token'\)"),
      ("not_a_string", 4, "must be a string, one of"),
      ("unknown_option", "mxfp4:block=16", r"'block=16' must be key=value with key one of \('block_size', 'rounding'\)"),
      ("no_value", "mxfp4:block_size", "must be key=value"),
      ("no_options", "nvfp4:block_size=16", "takes no options"),
      ("not_integer", "mxint8:block_size=big", "block_size='big' must be an integer"),
      ("twice", "mxfp4:block_size=16,block_size=8", "'block_size' is given twice"),
      ("block_range", "mxfp4:block_size=0", r"'mxfp4:block_size=0' is invalid: block_size=0 is invalid"),
      ("rounding", "mxfp4:rounding=stochastic", r"rounding='stochastic' is invalid: must be one of \('nearest', 'truncate'\)"))
  def test_errors_name_what_is_allowed(self, name, message):
    with self.assertRaisesRegex(ValueError, message):
      baselines.parse_format(name)

  def test_formats_without_a_name(self):
    for fmt in (AndaFormat(), MXFormat(axis=0)):
      with self.assertRaisesRegex(ValueError, "has no name"):
        baselines.format_name(fmt)
    self.assertEqual(baselines.element_spec("fp6_e3m2").bits, 6)
    with self.assertRaisesRegex(ValueError, "element='fp5'"):
      baselines.element_spec("fp5")


if __name__ == "__main__":
  absltest.main()
