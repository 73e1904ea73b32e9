"""anda_jax.evaluation.cross_entropy.streamed_nll against a float64 numpy reference: every chunk size
(ragged last chunks, which mask, and whole ones, which do not), targets on chunk boundaries,
large logits. The head is [vocab, D], as checkpoints store it."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from anda_jax.evaluation.cross_entropy import streamed_nll

_VOCAB = 1000


def _reference(features, head, targets):
  logits = features.astype(np.float64) @ head.astype(np.float64).T
  top = logits.max(axis=-1)
  logz = top + np.log(np.exp(logits - top[..., None]).sum(axis=-1))
  return logz - np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]


class StreamedNllTest(parameterized.TestCase):

  @parameterized.parameters(1, 7, 64, 300, 999, 1000, 4096)
  def test_equals_the_full_softmax(self, chunk):
    rng = np.random.default_rng(chunk)
    features = (3 * rng.standard_normal((2, 6, 16))).astype(np.float32)
    head = rng.standard_normal((_VOCAB, 16)).astype(np.float32)
    targets = rng.integers(0, _VOCAB, (2, 6))
    # Targets at the first and last id, and on both sides of chunk boundaries.
    boundary = [0, _VOCAB - 1, chunk, chunk - 1, (_VOCAB // chunk) * chunk - 1]
    targets[0, :5] = np.clip(boundary, 0, _VOCAB - 1)
    got = streamed_nll(features, head, targets, chunk, jax.lax.Precision.HIGHEST)
    np.testing.assert_allclose(got, _reference(features, head, targets), rtol=1e-5, atol=1e-5)

  def test_large_logits_do_not_overflow(self):
    rng = np.random.default_rng(0)
    features = (200 * rng.standard_normal((3, 16))).astype(np.float32)
    head = rng.standard_normal((_VOCAB, 16)).astype(np.float32)
    targets = rng.integers(0, _VOCAB, 3)
    got = np.asarray(streamed_nll(features, head, targets, 128, jax.lax.Precision.HIGHEST))
    self.assertTrue(np.all(np.isfinite(got)))
    np.testing.assert_allclose(got, _reference(features, head, targets), rtol=1e-5)

  def test_bad_chunk(self):
    with self.assertRaisesRegex(ValueError, "chunk=0 is invalid"):
      streamed_nll(np.ones((1, 4), np.float32), np.ones((8, 4), np.float32), np.zeros(1, np.int32), 0)


if __name__ == "__main__":
  absltest.main()
