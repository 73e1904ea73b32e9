"""Tests for experiments/bench_sweep.py: the torch Anda quantizer against ours bit for bit, the
hooks against our model on a tiny checkpoint, the old LM head, the profile summary."""

import io
from contextlib import redirect_stdout

from absl.testing import absltest
from absl.testing import parameterized
import jax.numpy as jnp
import numpy as np

from anda_jax.evaluation import cross_entropy
from anda_jax.numerics import anda
from experiments import bench_sweep
import testlib
from anda_jax.matmul import ProductSpec
from anda_jax import models


class TorchQuantizerTest(parameterized.TestCase):

  @parameterized.product(mantissa_bits=(1, 3, 6, 8, 13, 24), group_size=(8, 64), length=(128, 100))
  def test_bit_identical_to_anda_format(self, mantissa_bits, group_size, length):
    import torch  # pylint: disable=g-import-not-at-top

    # Heavy tails, zeros, -0.0, an Inf group; a ragged last group when length = 100; tiny
    # groups whose exponent is clipped to E_min (values near and below 2^-126).
    x = np.array(testlib.heavy_tailed(mantissa_bits, (6, length), special_values=True))
    x[1] *= 1e-38
    x[2, :group_size] = 0.0
    want = np.asarray(anda.quantize(jnp.asarray(x), anda.AndaFormat(group_size=group_size),
                                           mantissa_bits))
    got = bench_sweep.anda_truncate_torch(torch.from_numpy(x), mantissa_bits, group_size).numpy()
    self.assertEqual(got.shape, x.shape)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_array_equal(got[ok].view(np.uint32), want[ok].view(np.uint32))  # -0.0 too


class FullLogitsTest(absltest.TestCase):

  def test_old_head_equals_the_streamed_one(self):
    rng = np.random.default_rng(0)
    features = jnp.asarray(rng.standard_normal((2, 5, 16)), jnp.float32)
    head = jnp.asarray(rng.standard_normal((300, 16)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 300, (2, 5)))
    np.testing.assert_allclose(bench_sweep.full_logits_nll(features, head, targets),
                               cross_entropy.streamed_nll(features, head, targets, chunk=64), rtol=1e-5)


class BenchmarkTest(absltest.TestCase):

  def test_the_full_logits_program_is_the_old_head(self):
    # JAX caches traces by function: a second jit of the same function would silently run the
    # streamed head again. The compiled programs name the source of their operations.

    model, _ = models.load(str(testlib.make_checkpoint(testlib.tempdir(self) / "ckpt")))
    windows = np.arange(2 * 12).reshape(2, 12) % 50
    precisions = np.zeros((1, 4), np.int32)
    texts = {full: bench_sweep.Ours(model, ProductSpec(), 1, 2, full_logits=full).one_call(windows, precisions)[0].as_text()
             for full in (False, True)}
    self.assertIn("cross_entropy.py", texts[False])
    self.assertNotIn("full_logits_nll", texts[False])
    self.assertNotIn("cross_entropy.py", texts[True])
    self.assertIn("full_logits_nll", texts[True])

  def test_tiny_run_compares_the_same_sweep_three_ways_and_profiles(self):
    tmp = testlib.tempdir(self)
    ckpt = testlib.make_checkpoint(tmp / "ckpt")
    (tmp / "corpus.txt").write_text(testlib.corpus_text())
    out = io.StringIO()
    with redirect_stdout(out):
      got = bench_sweep.run(["sweep", f"--model={ckpt}", f"--corpus={tmp / 'corpus.txt'}", "--windows=3",
                             "--seq_len=16", "--group_size=8", "--mantissa_bits=2,6",
                             "--settings=2x3,3x2", "--profile", "--top=5"])
    text = out.getvalue()
    self.assertLen(got["configs"], 1 + 5 * 2)
    self.assertEqual(set(got["tried"]), {(2, 3), (3, 2)})
    self.assertEqual(got["best"], min(got["tried"], key=got["tried"].get))
    self.assertEqual(set(got["seconds"]), {"ours", "full logits", "PyTorch"})
    self.assertEqual(set(got["memory"]), {"ours", "full logits"})
    self.assertRegex(text, rf"full logits \(window batch {got['best'][1]}\): [\d.]+ of the time; XLA "
                           rf"temporary buffers of one call {got['memory']['ours']:.0f} MB")
    ppl = got["ppl"]
    # The old head computes the same numbers; the hooked transformers model the same FP model,
    # and quantized configurations within float32 summation-order noise of ours.
    np.testing.assert_allclose(ppl["full logits"], ppl["ours"], rtol=1e-5)
    self.assertAlmostEqual(ppl["PyTorch"][0] / ppl["ours"][0], 1, delta=1e-4)
    np.testing.assert_allclose(ppl["PyTorch"], ppl["ours"], rtol=0.03)
    self.assertGreater(np.abs(ppl["ours"][1:] / ppl["ours"][0] - 1).max(), 1e-3)  # the hooks bite
    self.assertIn(f"throughput ours / PyTorch: {got['seconds']['PyTorch'] / got['seconds']['ours']:.2f}x", text)
    self.assertRegex(text, r"G8-all-M6 +[\d.]+ +[\d.]+ +[\d.]+ +[+-][\d.]+%")
    # The profile names XLA operations with their self time and what they compute.
    table = text[text.index("profile: one call"):].splitlines()
    self.assertLen(table, 2 + 5)
    self.assertRegex("\n".join(table[2:]), r"(dot|fusion|custom-call|while)")

  def test_bad_settings(self):
    with self.assertRaisesRegex(ValueError, "--settings='3' is invalid"):
      bench_sweep._settings("3")  # pylint: disable=protected-access


if __name__ == "__main__":
  absltest.main()
