"""Tests for anda_jax.numerics.int4 against numpy float64 references and the `gguf` package."""

from absl.testing import absltest
from absl.testing import parameterized
import chex
import gguf
import jax
import jax.numpy as jnp
import numpy as np

from anda_jax.numerics import int4
import testlib

Q = gguf.GGMLQuantizationType


def _rtn_reference(w, group_size, symmetric):
  """float64 numpy RTN with the rules documented in int4.quantize_rtn.

  Returns (q int64 [K, N], d [K//Gw, N], z or None, ratio float64 [K, N]) where
  ratio is the unrounded code, used to find float32-vs-float64 near-ties.
  """
  k, n = w.shape
  g = w.astype(np.float64).reshape(k // group_size, group_size, n)
  if symmetric:
    d = np.abs(g).max(axis=1) / 7.0
    z = None
    base = g
    lo, hi = -8, 7
  else:
    z = g.min(axis=1)
    d = (g.max(axis=1) - z) / 15.0
    base = g - z[:, None, :]
    lo, hi = 0, 15
  ratio = base / np.where(d == 0, 1.0, d)[:, None, :]
  q = np.clip(np.round(ratio), lo, hi).astype(np.int64)
  return q.reshape(k, n), d, z, ratio.reshape(k, n)


class QuantizeRtnTest(parameterized.TestCase):

  @parameterized.product(symmetric=[True, False], group_size=[2, 8, 32, 64])
  def test_matches_float64_reference(self, symmetric, group_size):
    rng = np.random.default_rng(group_size + symmetric)
    w = (rng.normal(size=(64, 6)) * rng.uniform(0.01, 3, size=(1, 6))).astype(np.float32)
    w[:group_size, 0] = 0.0  # an all-zero group: d = 0, codes 0
    w[:group_size, 1] = 0.375  # a constant group: exact for asymmetric (z = w)
    qw = int4.quantize_rtn(w, group_size, symmetric)
    q_ref, d_ref, z_ref, ratio = _rtn_reference(w, group_size, symmetric)

    chex.assert_shape(qw.packed, (32, 6))
    chex.assert_shape(qw.scale, (64 // group_size, 6))
    self.assertEqual(qw.symmetric, symmetric)
    self.assertEqual(qw.shape, (64, 6))
    # d and z: one float32 rounding of the float64 value.
    np.testing.assert_allclose(np.asarray(qw.scale), d_ref, rtol=2e-7, atol=0)
    if symmetric:
      self.assertIsNone(qw.offset)
    else:
      np.testing.assert_array_equal(np.asarray(qw.offset), z_ref)

    # Codes agree exactly except where float32 arithmetic can land on the other side
    # of a rounding tie: there the float64 ratio is within 1e-4 of k + 1/2.
    q = np.asarray(int4.codes(qw))
    near_tie = np.abs(np.abs(ratio - np.floor(ratio)) - 0.5) < 1e-4
    mismatch = q != q_ref
    self.assertFalse(np.any(mismatch & ~near_tie), msg=f"{np.argwhere(mismatch & ~near_tie)}")
    self.assertTrue(np.all(np.abs(q - q_ref) <= 1))

    # RTN never clips with these scales, so the error is at most half a step.
    err = np.abs(np.asarray(int4.dequantize(qw), np.float64) - w)
    step = np.repeat(d_ref, group_size, axis=0)
    self.assertTrue(np.all(err <= step / 2 * (1 + 1e-5) + 1e-7))
    self.assertTrue(np.all(err[:group_size, 0] == 0))
    if not symmetric:  # symmetric d = 0.375 / 7 rounds, so only z = w is exact
      self.assertTrue(np.all(err[:group_size, 1] == 0))

  def test_batched_equals_per_matrix(self):
    w = np.random.default_rng(1).normal(size=(3, 32, 4)).astype(np.float32)
    qw = int4.quantize_rtn(w, 16, symmetric=False)
    self.assertEqual(qw.shape, (3, 32, 4))
    deq = np.asarray(int4.dequantize(qw))
    for i in range(3):
      np.testing.assert_array_equal(
          deq[i], np.asarray(int4.dequantize(int4.quantize_rtn(w[i], 16, False))))

  @parameterized.parameters(0, -8, 3, 48, 128, 1.5, True, None)
  def test_invalid_group_size_raises(self, group_size):
    w = np.zeros((64, 4), np.float32)
    with self.assertRaisesRegex(ValueError, "group_size"):
      int4.quantize_rtn(w, group_size, symmetric=True)

  def test_odd_k_and_bad_rank_raise(self):
    with self.assertRaisesRegex(ValueError, "K=7"):
      int4.quantize_rtn(np.zeros((7, 2), np.float32), 1, True)
    with self.assertRaisesRegex(ValueError, "shape"):
      int4.quantize_rtn(np.zeros((8,), np.float32), 8, True)


class PackingTest(parameterized.TestCase):

  @parameterized.parameters(True, False)
  def test_nibble_layout_and_round_trip(self, symmetric):
    rng = np.random.default_rng(7)
    nib = rng.integers(0, 16, size=(2, 16, 5), dtype=np.uint8)  # batched [2, K, N]
    # Independent packing: row 2j -> low nibble, row 2j+1 -> high nibble.
    packed = nib[:, 0::2] + 16 * nib[:, 1::2]
    scale = rng.uniform(0.5, 2, size=(2, 4, 5)).astype(np.float32)
    offset = None if symmetric else rng.normal(size=(2, 4, 5)).astype(np.float32)
    qw = int4.Int4Weights(packed=packed, scale=scale, offset=offset, group_size=4)
    q_ref = nib.astype(np.int64) - (8 if symmetric else 0)
    np.testing.assert_array_equal(np.asarray(int4.codes(qw)), q_ref)

    w_ref = q_ref * np.repeat(scale.astype(np.float64), 4, axis=1)
    if not symmetric:
      w_ref = w_ref + np.repeat(offset, 4, axis=1)
    # d*q is exact in float32 (|q| <= 15); d*q + z rounds once.
    np.testing.assert_allclose(np.asarray(int4.dequantize(qw)), w_ref, rtol=1e-7, atol=1e-7)

    # quantize_rtn of the dequantized matrix finds codes again and packs identically
    # for the asymmetric case whenever every group spans codes 0..15.
    w = np.zeros((16, 1), np.float32)
    w[:, 0] = np.arange(16) - (8 if symmetric else 0)
    if symmetric:
      w[0, 0] = -7  # RTN with d = max|w|/7 = 1 uses codes -7..7
    again = int4.quantize_rtn(w, 16, symmetric)
    np.testing.assert_array_equal(np.asarray(int4.codes(again))[:, 0], w[:, 0])
    np.testing.assert_array_equal(np.asarray(int4.dequantize(again)), w)
    first_byte = int(np.asarray(again.packed)[0, 0])
    lo, hi = (1, 1) if symmetric else (0, 1)  # nibble = code + 8 for symmetric
    self.assertEqual(first_byte, lo | (hi << 4))

  def test_pytree_and_jit(self):
    w = np.random.default_rng(3).normal(size=(32, 3)).astype(np.float32)
    for symmetric in (True, False):
      qw = int4.quantize_rtn(w, 8, symmetric)
      leaves, treedef = jax.tree_util.tree_flatten(qw)
      self.assertLen(leaves, 2 if symmetric else 3)  # group_size is static metadata
      again = jax.tree_util.tree_unflatten(treedef, leaves)
      self.assertEqual((again.group_size, again.symmetric), (8, symmetric))
      # Traced through an outer jit (and vmap over a stacked batch) like a model does.
      doubled = jax.jit(lambda qw: 2 * int4.dequantize(qw))(qw)
      chex.assert_trees_all_equal(doubled, 2 * int4.dequantize(qw))
      stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, a]), qw)
      chex.assert_trees_all_equal(jax.vmap(int4.dequantize)(stacked)[1], int4.dequantize(qw))


class GgufTest(parameterized.TestCase):

  @parameterized.parameters(
      (Q.Q4_0, int4.from_gguf_q4_0, True, 128),
      (Q.Q4_1, int4.from_gguf_q4_1, False, 128),
      (Q.Q4_K, int4.from_gguf_q4_k, False, 768),
  )
  def test_random_blocks_match_gguf_dequantize(self, qtype, ctor, symmetric, k):
    """Bit for bit: dequantizing our INT4 gives gguf's own dequantization, signed zeros too."""
    rng = np.random.default_rng(int(qtype))
    n_out = 5
    raw = testlib.random_gguf_blocks(rng, qtype, n_out, k, scale=0.05)
    ref = gguf.quants.dequantize(raw, qtype)  # [n_out, k] float32
    qw = ctor(raw, n_out, k)
    self.assertEqual(qw.shape, (k, n_out))
    self.assertEqual(qw.group_size, 32)
    self.assertEqual(qw.symmetric, symmetric)
    testlib.assert_bit_exact(np.asarray(int4.dequantize(qw)).T, ref)
    testlib.assert_bit_exact(np.asarray(jax.jit(int4.dequantize)(qw)).T, ref)
    # Flat bytes are accepted too.
    chex.assert_trees_all_equal(ctor(raw.ravel(), n_out, k), qw)

  def test_q4_k_scales_are_per_32_weight_sub_block(self):
    """Q4_K's 6-bit sub-block scales and minimums, decoded by a float64 reading of the layout
    (llama.cpp's get_scale_min_k4), give our scale and offset; codes are the stored nibbles."""
    raw = testlib.random_gguf_blocks(np.random.default_rng(4), Q.Q4_K, 3, 512)
    qw = int4.from_gguf_q4_k(raw, 3, 512)
    blocks = raw.reshape(3, 2, 144)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float64)
    dmin = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float64)
    s = blocks[..., 4:16].astype(np.int64)
    for j in range(8):
      if j < 4:
        sc, m = s[..., j] & 63, s[..., j + 4] & 63
      else:
        sc = (s[..., j + 4] & 0xF) | ((s[..., j - 4] >> 6) << 4)
        m = (s[..., j + 4] >> 4) | ((s[..., j] >> 6) << 4)
      np.testing.assert_array_equal(np.asarray(qw.scale)[j::8].T, d * sc)
      np.testing.assert_array_equal(np.asarray(qw.offset)[j::8].T, -dmin * m)
      qs = blocks[..., 16 + 32 * (j // 2):16 + 32 * (j // 2) + 32]
      nibbles = (qs >> (4 * (j % 2))) & 0xF  # [3, 2, 32]
      codes = np.asarray(int4.codes(qw)).T.reshape(3, 2, 8, 32)[:, :, j]
      np.testing.assert_array_equal(codes, nibbles)

  @parameterized.parameters(Q.Q4_0, Q.Q4_1)
  def test_gguf_quantized_weights(self, qtype):
    # Real-looking data through gguf's own quantizer, as a GGUF file would hold it.
    w = np.random.default_rng(11).normal(size=(4, 64)).astype(np.float32)
    raw = gguf.quants.quantize(w, qtype)
    qw = int4.GGUF_INT4_TYPES[qtype.name](raw, 4, 64)
    np.testing.assert_array_equal(
        np.asarray(int4.dequantize(qw)).T, gguf.quants.dequantize(raw, qtype))

  @parameterized.parameters(
      (int4.from_gguf_q4_0, 18, 32), (int4.from_gguf_q4_1, 20, 32), (int4.from_gguf_q4_k, 144, 256))
  def test_bad_inputs_raise(self, ctor, block_bytes, block):
    good = np.zeros(2 * 2 * block_bytes, np.uint8)  # n_out=2, k=2 blocks
    ctor(good, 2, 2 * block)
    with self.assertRaisesRegex(ValueError, f"raw has {good.size - 1} bytes.*expected"):
      ctor(good[:-1], 2, 2 * block)
    with self.assertRaisesRegex(ValueError, f"k=48 must be a multiple of {block}"):
      ctor(good, 2, 48)
    with self.assertRaisesRegex(ValueError, "n_out=.* is invalid: must be an integer >= 1"):
      ctor(good, 0, 2 * block)
    with self.assertRaisesRegex(ValueError, "dtype float32"):
      ctor(good.astype(np.float32), 2, 2 * block)


if __name__ == "__main__":
  absltest.main()
