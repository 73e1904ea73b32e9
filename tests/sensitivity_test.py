"""Tests for experiments/sensitivity.py and its benchmark on a tiny checkpoint."""

import csv
import io
import json
import pathlib
import shutil
import tempfile
from contextlib import redirect_stdout
from unittest import mock

from absl.testing import absltest
import numpy as np

from anda_jax.evaluation import evaluate
from anda_jax.evaluation import intervals
from anda_jax import models
from configs import sensitivity as sensitivity_config
from experiments import bench_sensitivity
from experiments.harness import config_checks
from experiments.harness import loading
from experiments.harness import perplexity
from experiments.harness import run_folder
from experiments import sensitivity
import testlib



class SensitivityTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp())
    cls.ckpt = testlib.make_checkpoint(cls.tmp / "ckpt", n_layers=3)
    (cls.tmp / "corpus.txt").write_text(testlib.corpus_text())

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def config(self, run_name):
    c = sensitivity_config.get_config()
    c.run_name, c.results_dir = run_name, str(self.tmp / "results")
    c.model.name, c.data.corpus = str(self.ckpt), str(self.tmp / "corpus.txt")
    c.data.seq_len, c.data.windows = 24, 5
    c.format.group_sizes = (8,)
    c.mantissa_bits = (2, 5)
    c.window_batch = 2
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
    model, windows, *_ = loading.load_model_and_windows(self.config("x"))
    p = sensitivity.layer_type_configs(3, 2, "up", (2, 5))
    ppl = evaluate.perplexity(model, windows, p, config_checks.product_spec(self.config("x"), 8))
    np.testing.assert_allclose(ppl, [reused.rows["L2-up-M2"]["ppl"], reused.rows["L2-up-M5"]["ppl"]],
                               rtol=5e-5)
    run_dir = self.tmp / "results" / "reuse"
    for name in ("results.csv", "heatmap.png", "setup.json"):
      self.assertTrue((run_dir / name).exists(), name)

  def test_every_increase_carries_its_paired_interval(self):
    cfg = self.config("intervals")
    cfg.layers = (1,)
    # Three M: a configuration batch that test_prefix_reuse... (which counts compilations) does not use.
    cfg.mantissa_bits = (2, 5, 7)
    rows = sensitivity.run(cfg).rows
    base = rows["fp"]
    for r in rows.values():  # per-window sums kept, adding up to the row's loss
      self.assertLen(r["window_nll"], 5)
      self.assertAlmostEqual(sum(r["window_nll"]) / r["tokens"], r["nll"], places=12)
    run_dir = self.tmp / "results" / "intervals"
    with redirect_stdout(io.StringIO()):
      table = sensitivity.report(run_dir)
    csv_rows = {r["id"]: r for r in csv.DictReader((run_dir / "results.csv").open())}
    for name in ("L1-up-M2", "L1-qkv-M5"):
      # Paired over the same windows, against the float model's sums.
      want = intervals.relative_increase(rows[name]["window_nll"], base["window_nll"], base["window_tokens"])
      self.assertAlmostEqual(float(csv_rows[name]["rel_increase_low"]), want.low, places=12)
      self.assertAlmostEqual(float(csv_rows[name]["rel_increase_high"]), want.high, places=12)
      self.assertLess(want.low, want.high)
      self.assertIn(f"M={rows[name]['mantissa_bits']:<2} ppl {rows[name]['ppl']:.4f} ({want.estimate:+.2%} "
                    f"[{want.low:+.2%}, {want.high:+.2%}])", table)
    self.assertIn("[low, high]: the 95% paired-bootstrap interval over the windows", table)

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
    original = run_folder.Results.append
    calls = []

    def append_then_die(self_, rows):
      original(self_, rows)
      calls.append(1)
      if len(calls) == 3:  # baseline + 2 (layer, type) pairs
        raise KeyboardInterrupt

    with mock.patch.object(run_folder.Results, "append", append_then_die):
      with self.assertRaises(KeyboardInterrupt):
        sensitivity.run(cfg)
    sensitivity.run(cfg)
    lines = (self.tmp / "results" / "resume" / "results.jsonl").read_text().splitlines()
    ids = [json.loads(l)["id"] for l in lines]
    self.assertLen(ids, 1 + 2 * 4 * 2)
    self.assertLen(set(ids), len(ids))

    with mock.patch.object(evaluate, "window_nll_sums", side_effect=AssertionError("heavy work started")):
      bad = self.config("bad")
      bad.layers = (0, 3)
      with self.assertRaisesRegex(ValueError, "layers holds 3, which is invalid: the model has layers 0..2"):
        sensitivity.run(bad)
      bad = self.config("bad")
      bad.types = ("all",)
      with self.assertRaisesRegex(ValueError, "types=.*all.*invalid"):
        sensitivity.run(bad)
      bad = self.config("bad")
      bad.mantissa_bits = (30,)
      with self.assertRaisesRegex(ValueError, "mantissa_bits"):
        sensitivity.run(bad)
      bad = self.config("bad")
      bad.format.group_sizes = (8, 16)
      with self.assertRaisesRegex(ValueError, r"group_sizes=\(8, 16\) is invalid: the sensitivity study takes one"):
        sensitivity.run(bad)
    config_checks.check_keys(sensitivity_config.get_config("quick"), sensitivity_config.get_config())

  def test_report_shows_non_finite_perplexities_and_skips_broken_lines(self):
    run_dir = self.tmp / "results" / "report_only"
    run_dir.mkdir(parents=True)
    rows = [dict(id="fp", layer=None, type="fp", mantissa_bits=0, **perplexity.perplexity_fields(3.0)),
            dict(id="L0-up-M2", layer=0, type="up", mantissa_bits=2, **perplexity.perplexity_fields(900.0)),
            dict(id="L0-qkv-M2", layer=0, type="qkv", mantissa_bits=2, **perplexity.perplexity_fields(np.nan)),
            dict(id="L1-up-M2", layer=1, type="up", mantissa_bits=2, **perplexity.perplexity_fields(3.1))]
    with (run_dir / "results.jsonl").open("w") as f:
      f.write("".join(json.dumps(r) + "\n" for r in rows))
      f.write('{"id": "L1-o-M2"}\n')  # a row without the fields the report reads
      # An older run's NaN, written as JSON's NaN extension.
      f.write(json.dumps(dict(rows[3], id="L1-o-M2", type="o", ppl=float("nan"))) + "\n")
    with redirect_stdout(io.StringIO()):
      table = sensitivity.report(run_dir)
    self.assertIn("float model perplexity 20.0855", table)
    self.assertIn("layer   0    up M=2  ppl inf", table)
    self.assertIn("layer   0   qkv M=2  ppl nan", table)
    self.assertIn("layer   1     o M=2  ppl nan", table)
    self.assertIn("layer   1    up M=2  ppl 22.1980 (+10.52%)", table)
    self.assertNotIn("[", table)  # rows without per-window sums (older runs): no interval
    csv_text = (run_dir / "results.csv").read_text()
    self.assertIn("L0-up-M2,0,up,2,inf,inf,,,False,900.0,", csv_text)
    self.assertIn("L1-up-M2,1,up,2,22.197951281441636,0.10517091807564771,,,True,", csv_text)
    self.assertGreater((run_dir / "heatmap.png").stat().st_size, 1000)

  def test_benchmark_times_the_same_study_both_ways_without_compiling(self):
    out = io.StringIO()
    with redirect_stdout(out):
      timed = bench_sensitivity.run(["sensitivity", f"--model={self.ckpt}", f"--corpus={self.tmp / 'corpus.txt'}",
                                     "--seq_len=16", "--windows=2", "--group_size=8", "--types=qkv,down"])
    reused, full = timed["prefix"], timed["embedding"]
    # Both timed runs evaluate the whole study (3 layers x 2 types at M = 4, and the baseline) ...
    ids = {"fp"} | {f"L{l}-{t}-M4" for l in range(3) for t in ("qkv", "down")}
    self.assertEqual(set(reused.rows), ids)
    self.assertEqual(set(full.rows), ids)
    for k in ids:
      self.assertAlmostEqual(reused.rows[k]["ppl"] / full.rows[k]["ppl"], 1, delta=5e-5)
    # ... after the warm-up has compiled both paths, so the times hold no compilation.
    self.assertEqual((reused.compiles, full.compiles), (0, 0))
    # The printed figures are those of the runs.
    text = out.getvalue()
    self.assertIn(f"sensitivity study, {len(ids) - 1} configurations (2 x 16 tokens", text)
    self.assertIn(f"float-prefix reuse : {reused.seconds:8.1f} s  (0 compilations)", text)
    self.assertIn(f"from the embedding : {full.seconds:8.1f} s  (0 compilations)", text)
    self.assertIn(f"ratio              : {reused.seconds / full.seconds:8.2f}", text)


if __name__ == "__main__":
  absltest.main()
