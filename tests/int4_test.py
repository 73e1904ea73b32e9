"""Tests for anda_jax.numerics.int4 against numpy float64 references and the `gguf` package."""

from absl.testing import absltest
from absl.testing import parameterized
import chex
import gguf
import jax
import jax.numpy as jnp
import numpy as np

from anda_jax.numerics import int4

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


def _random_gguf(rng, qtype, n_out, k):
  """Random GGUF blocks: random code bytes, finite random f16 scale/min fields."""
  block_bytes = {Q.Q4_0: 18, Q.Q4_1: 20, Q.Q8_0: 34}[qtype]
  nb = k // 32
  raw = rng.integers(0, 256, size=(n_out, nb, block_bytes), dtype=np.uint8)
  n_f16 = 2 if qtype == Q.Q4_1 else 1  # Q4_1 has d and m
  halves = rng.normal(size=(n_out, nb, n_f16)).astype(np.float16)
  raw[..., : 2 * n_f16] = halves.view(np.uint8).reshape(n_out, nb, 2 * n_f16)
  return raw.reshape(n_out, nb * block_bytes)


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
      (Q.Q4_0, int4.from_gguf_q4_0, True),
      (Q.Q4_1, int4.from_gguf_q4_1, False),
  )
  def test_random_blocks_match_gguf_dequantize(self, qtype, ctor, symmetric):
    rng = np.random.default_rng(int(qtype))
    n_out, k = 5, 128
    raw = _random_gguf(rng, qtype, n_out, k)
    ref = gguf.quants.dequantize(raw, qtype)  # [n_out, k] float32
    qw = ctor(raw, n_out, k)
    self.assertEqual(qw.shape, (k, n_out))
    self.assertEqual(qw.group_size, 32)
    self.assertEqual(qw.symmetric, symmetric)
    np.testing.assert_array_equal(np.asarray(int4.dequantize(qw)).T, ref)
    np.testing.assert_array_equal(np.asarray(jax.jit(int4.dequantize)(qw)).T, ref)

  @parameterized.parameters(Q.Q4_0, Q.Q4_1)
  def test_gguf_quantized_weights(self, qtype):
    # Real-looking data through gguf's own quantizer, as a GGUF file would hold it.
    w = np.random.default_rng(11).normal(size=(4, 64)).astype(np.float32)
    raw = gguf.quants.quantize(w, qtype)
    ctor = int4.from_gguf_q4_0 if qtype == Q.Q4_0 else int4.from_gguf_q4_1
    qw = ctor(raw, 4, 64)
    np.testing.assert_array_equal(
        np.asarray(int4.dequantize(qw)).T, gguf.quants.dequantize(raw, qtype))

  def test_q8_0_matches_gguf_dequantize(self):
    rng = np.random.default_rng(8)
    raw = _random_gguf(rng, Q.Q8_0, 3, 96)
    out = int4.gguf_q8_0_to_float(raw, 3, 96)
    self.assertEqual(out.dtype, np.float32)
    np.testing.assert_array_equal(out, gguf.quants.dequantize(raw, Q.Q8_0))
    # Flat bytes are accepted too.
    np.testing.assert_array_equal(int4.gguf_q8_0_to_float(raw.ravel(), 3, 96), out)

  @parameterized.parameters(
      (int4.from_gguf_q4_0, 18), (int4.from_gguf_q4_1, 20), (int4.gguf_q8_0_to_float, 34))
  def test_bad_inputs_raise(self, ctor, block_bytes):
    good = np.zeros(2 * 2 * block_bytes, np.uint8)  # n_out=2, k=64
    ctor(good, 2, 64)
    with self.assertRaisesRegex(ValueError, f"raw has {good.size - 1} bytes.*expected"):
      ctor(good[:-1], 2, 64)
    with self.assertRaisesRegex(ValueError, "k=48 must be a multiple of 32"):
      ctor(good, 2, 48)
    with self.assertRaisesRegex(ValueError, "n_out=.* is invalid: must be an integer >= 1"):
      ctor(good, 0, 64)
    with self.assertRaisesRegex(ValueError, "dtype float32"):
      ctor(good.astype(np.float32), 2, 64)


if __name__ == "__main__":
  absltest.main()
