"""Tests for experiments/sensitivity.py and its benchmark on a tiny checkpoint."""

import io
import json
import os
import pathlib
import shutil
import sys
import tempfile
from contextlib import redirect_stdout
from unittest import mock

from absl.testing import absltest
import numpy as np

from anda_jax import evaluate
from anda_jax import models
from configs import sensitivity_quick
from configs import sensitivity_smollm2
from experiments import bench_sensitivity
from experiments import sensitivity
from experiments import sweep

sys.path.insert(0, os.path.dirname(__file__))
import eval_testlib  # pylint: disable=g-import-not-at-top,wrong-import-position


class SensitivityTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp())
    cls.ckpt = eval_testlib.make_checkpoint(cls.tmp / "ckpt", n_layers=3)
    (cls.tmp / "corpus.txt").write_text(eval_testlib.corpus_text())

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def config(self, run_name):
    c = sensitivity_smollm2.get_config()
    c.run_name, c.results_dir = run_name, str(self.tmp / "results")
    c.model.name, c.data.corpus = str(self.ckpt), str(self.tmp / "corpus.txt")
    c.data.seq_len, c.data.windows = 24, 5
    c.format.group_size = 8
    c.mantissa_bits = (2, 5)
    c.batch_size = 2
    return c

  def test_prefix_reuse_equals_full_evaluation_with_one_compile(self):
    reused = sensitivity.run(self.config("reuse"))
    self.assertLen(reused.rows, 1 + 3 * 4 * 2)
    self.assertEqual(reused.compiles, 1)  # every (layer, type) and the baseline share it
    full = sensitivity.run(self.config("full"), reuse_prefix=False)
    self.assertEqual(set(reused.rows), set(full.rows))
    rel = np.array([reused.rows[k]["ppl"] / full.rows[k]["ppl"] - 1 for k in reused.rows])
    # Same numbers up to fp32 rounding (see evaluate_test.assert_agree_to_fp32_rounding).
    self.assertLess(np.median(np.abs(rel)), 2e-6)
    self.assertLess(np.abs(rel).max(), 5e-5)
    # And the same as evaluate.perplexity on the full per-layer configuration.
    model, windows, _ = sweep.load_model_and_windows(self.config("x"))
    p = sensitivity.layer_type_configs(3, 2, "up", (2, 5))
    ppl = evaluate.perplexity(model, windows, p, sensitivity.anda_format.AndaFormat(group_size=8))
    np.testing.assert_allclose(ppl, [reused.rows["L2-up-M2"]["ppl"], reused.rows["L2-up-M5"]["ppl"]],
                               rtol=5e-5)
    run_dir = self.tmp / "results" / "reuse"
    for name in ("results.csv", "heatmap.png", "setup.json"):
      self.assertTrue((run_dir / name).exists(), name)

  def test_float_prefix_matches_the_model(self):
    model, _ = models.load(str(self.ckpt))
    windows = np.arange(2 * 10).reshape(2, 10) % 50
    prefix = sensitivity.FloatPrefix(model, windows, batch_size=1)
    h2 = prefix.advance_to(2)
    out = model.head(model.run_layers(h2, np.zeros(4, np.int32), start=2))
    np.testing.assert_allclose(out, model(windows, np.zeros(4, np.int32)), rtol=1e-4, atol=1e-4)
    with self.assertRaisesRegex(ValueError, "increasing order"):
      prefix.advance_to(1)

  def test_resume_and_bad_configs(self):
    cfg = self.config("resume")
    cfg.layers = (0, 2)
    original = sweep.Results.append
    calls = []

    def append_then_die(self_, rows):
      original(self_, rows)
      calls.append(1)
      if len(calls) == 3:  # baseline + 2 (layer, type) pairs
        raise KeyboardInterrupt

    with mock.patch.object(sweep.Results, "append", append_then_die):
      with self.assertRaises(KeyboardInterrupt):
        sensitivity.run(cfg)
    sensitivity.run(cfg)
    lines = (self.tmp / "results" / "resume" / "results.jsonl").read_text().splitlines()
    ids = [json.loads(l)["id"] for l in lines]
    self.assertLen(ids, 1 + 2 * 4 * 2)
    self.assertLen(set(ids), len(ids))

    with mock.patch.object(evaluate, "nll_sums", side_effect=AssertionError("heavy work started")):
      bad = self.config("bad")
      bad.layers = (0, 3)
      with self.assertRaisesRegex(ValueError, "layers holds 3: the model has layers 0..2"):
        sensitivity.run(bad)
      bad = self.config("bad")
      bad.types = ("all",)
      with self.assertRaisesRegex(ValueError, "types=.*all.*invalid"):
        sensitivity.run(bad)
      bad = self.config("bad")
      bad.mantissa_bits = (30,)
      with self.assertRaisesRegex(ValueError, "mantissa_bits"):
        sensitivity.run(bad)
    sweep.check_keys(sensitivity_quick.get_config(), sensitivity_smollm2.get_config())

  def test_benchmark_prints_both_times(self):
    out = io.StringIO()
    with redirect_stdout(out):
      bench_sensitivity.run(["sensitivity", f"--model={self.ckpt}", f"--corpus={self.tmp / 'corpus.txt'}",
                             "--seq_len=16", "--windows=2", "--group_size=8", "--types=qkv,down"])
    text = out.getvalue()
    self.assertRegex(text, r"float-prefix reuse : +\d+\.\d s")
    self.assertRegex(text, r"from the embedding : +\d+\.\d s")
    self.assertRegex(text, r"ratio +: +\d\.\d\d")


if __name__ == "__main__":
  absltest.main()
