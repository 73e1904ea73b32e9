"""anda_jax.evaluation.intervals: the paired-bootstrap interval of a relative perplexity increase."""

from absl.testing import absltest
import numpy as np

from anda_jax.evaluation import intervals


def _windows(rng, n, shift, noise=0.02, tokens=256):
  """Per-window NLL sums of a baseline (text difficulty varies a lot between windows) and of a
  configuration that adds `shift` nats per token plus a little per-window noise."""
  difficulty = rng.uniform(2.5, 4.0, n) * tokens
  base = difficulty + rng.normal(0, 0.01, n) * tokens
  config = difficulty + (shift + rng.normal(0, noise, n)) * tokens
  return config, base, np.full(n, float(tokens))


class RelativeIncreaseTest(absltest.TestCase):

  def test_estimate_is_the_perplexity_ratio(self):
    a, b, tok = _windows(np.random.default_rng(0), 16, 0.01)
    got = intervals.relative_increase(a, b, tok)
    want = np.exp(a.sum() / tok.sum()) / np.exp(b.sum() / tok.sum()) - 1
    self.assertAlmostEqual(got.estimate, want, places=12)
    self.assertLess(got.low, got.estimate)
    self.assertGreater(got.high, got.estimate)

  def test_same_configuration_has_a_zero_width_interval(self):
    a, _, tok = _windows(np.random.default_rng(1), 8, 0.0)
    got = intervals.relative_increase(a, a, tok)
    self.assertEqual((got.estimate, got.low, got.high), (0.0, 0.0, 0.0))

  def test_pairing_removes_the_variation_between_texts(self):
    # Window difficulty varies by +-20%; the paired interval must be far narrower than that.
    a, b, tok = _windows(np.random.default_rng(2), 32, 0.005)
    self.assertLess(intervals.relative_increase(a, b, tok).half_width, 0.02)

  def test_coverage_near_the_nominal_level(self):
    # 400 independent data sets with a known true increase: about 95% of the intervals hold it.
    rng = np.random.default_rng(3)
    shift, hits = 0.01, 0
    for _ in range(400):
      a, b, tok = _windows(rng, 32, shift)
      true = np.expm1(shift)  # the per-window noise has mean zero
      iv = intervals.relative_increase(a, b, tok, n_bootstrap=500, seed=int(rng.integers(1 << 30)))
      hits += iv.low <= true <= iv.high
    self.assertBetween(hits / 400, 0.90, 0.99)

  def test_half_width_shrinks_like_one_over_root_n(self):
    rng = np.random.default_rng(4)
    widths = {n: np.mean([intervals.relative_increase(*_windows(rng, n, 0.01)).half_width
                          for _ in range(20)]) for n in (16, 64)}
    self.assertBetween(widths[16] / widths[64], 1.6, 2.5)  # sqrt(4) = 2

  def test_reproducible_and_seeded(self):
    a, b, tok = _windows(np.random.default_rng(5), 16, 0.01)
    self.assertEqual(intervals.relative_increase(a, b, tok), intervals.relative_increase(a, b, tok))
    self.assertNotEqual(intervals.relative_increase(a, b, tok, seed=1), intervals.relative_increase(a, b, tok))

  def test_non_finite_sums_give_no_interval(self):
    a, b, tok = _windows(np.random.default_rng(6), 4, 0.01)
    a[1] = np.inf
    got = intervals.relative_increase(a, b, tok)
    self.assertTrue(np.isnan(got.low) and np.isnan(got.high))

  def test_bad_input(self):
    with self.assertRaisesRegex(ValueError, "must be equal"):
      intervals.relative_increase([1.0, 2.0], [1.0], [1.0, 1.0])
    with self.assertRaisesRegex(ValueError, "level=1.5 is invalid"):
      intervals.relative_increase([1.0], [1.0], [1.0], level=1.5)


if __name__ == "__main__":
  absltest.main()
