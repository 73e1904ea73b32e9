"""models.layers.causal_attention against a float64 numpy reading of causal softmax attention."""

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from anda_jax.models import layers


def reference_attention(q, k, v, scale):
  """q [B, T, H, Dh], k, v [B, T, Hkv, Dh] -> [B, T, H * Dh], in float64, head by head."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  b, t, h, dh = q.shape
  rep = h // k.shape[2]
  out = np.zeros((b, t, h, dh))
  causal = np.tril(np.ones((t, t), bool))
  for head in range(h):
    scores = q[:, :, head] @ k[:, :, head // rep].transpose(0, 2, 1) * scale
    scores = np.where(causal, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out[:, :, head] = probs @ v[:, :, head // rep]
  return out.reshape(b, t, h * dh)


# Jitted as the models run it (and one compilation per shape instead of one per eager op).
attention = jax.jit(layers.causal_attention, static_argnums=3)


class CausalAttentionTest(parameterized.TestCase):

  # Lengths cover one block, ragged last blocks, many blocks of 64 queries, and longer blocks
  # (at most 16 blocks: 69 queries each at T = 1100).
  @parameterized.product(seq_len=(1, 5, 64, 100, 300, 700, 1100), heads=((4, 4), (6, 2)))
  def test_matches_float64_reference(self, seq_len, heads):
    h, g = heads
    rng = np.random.default_rng(seq_len * 10 + g)
    q = rng.standard_normal((2, seq_len, h, 16)).astype(np.float32)
    k = rng.standard_normal((2, seq_len, g, 16)).astype(np.float32)
    v = rng.standard_normal((2, seq_len, g, 16)).astype(np.float32)
    got = attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), 0.25)
    chex.assert_shape(got, (2, seq_len, h * 16))
    np.testing.assert_allclose(np.asarray(got), reference_attention(q, k, v, 0.25), rtol=1e-5, atol=1e-5)

  def test_later_tokens_do_not_change_earlier_outputs(self):
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((1, 300, 2, 8)), jnp.float32) for _ in range(3))
    full = attention(q, k, v, 1.0)
    prefix = attention(q[:, :130], k[:, :130], v[:, :130], 1.0)
    np.testing.assert_allclose(np.asarray(full[:, :130]), np.asarray(prefix), rtol=1e-6, atol=1e-6)


if __name__ == "__main__":
  absltest.main()
