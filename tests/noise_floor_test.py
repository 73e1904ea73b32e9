"""Tests for experiments/noise_floor.py on a tiny checkpoint: rows, subsets, the table, resume."""

import csv
import io
from contextlib import redirect_stdout
from unittest import mock

from absl.testing import absltest
import numpy as np

from anda_jax.evaluation import evaluate
from anda_jax.evaluation import intervals
from configs import noise_floor as noise_floor_config
from experiments import noise_floor
import testlib


class NoiseFloorTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = testlib.tempdir(cls)
    cls.ckpt = testlib.make_checkpoint(cls.tmp / "ckpt")
    (cls.tmp / "corpus.txt").write_text(testlib.corpus_text())

  def config(self, run_name):
    c = noise_floor_config.get_config("quick")
    c.run_name, c.results_dir = run_name, str(self.tmp / "results")
    c.model.name, c.data.corpus = str(self.ckpt), str(self.tmp / "corpus.txt")
    c.data.seq_len, c.data.windows = 24, 8
    c.format.group_sizes = (8,)
    c.mantissa_bits = (5, 3)
    c.subsets = (2, 4, 8)
    return c

  def test_rows_table_and_resume(self):
    with redirect_stdout(io.StringIO()) as out:
      rows = noise_floor.run(self.config("run"))
    self.assertEqual(set(rows), {"fp", "M5", "M3", "fp~", "M5~", "M3~"})
    for r in rows.values():
      self.assertLen(r["window_nll"], 8)
    # The perturbation moves the losses, by far less than M = 3 does.
    fp, fp_perturbed = (np.array(rows[k]["window_nll"]) for k in ("fp", "fp~"))
    self.assertFalse(np.array_equal(fp, fp_perturbed))
    np.testing.assert_allclose(fp_perturbed, fp, rtol=1e-4)
    self.assertGreater(abs(rows["M3"]["nll"] / rows["fp"]["nll"] - 1), 1e-3)

    run_dir = self.tmp / "results" / "run"
    entries = list(csv.DictReader((run_dir / "noise_floor.csv").open()))
    self.assertEqual([e["pair"] for e in entries[::3]], ["M5 vs fp", "M3 vs fp", "fp~ vs fp", "M5~ vs M5", "M3~ vs M3"])
    self.assertEqual([(e["windows"], e["subsets"]) for e in entries[:3]], [("2", "4"), ("4", "2"), ("8", "1")])
    # Subset j of size 2 holds windows j and j + 4; the half-width is the median over subsets.
    want = [intervals.relative_increase(np.array(rows["M3"]["window_nll"])[[j, j + 4]],
                                        fp[[j, j + 4]], [23.0, 23.0]) for j in range(4)]
    m3 = entries[3]
    self.assertAlmostEqual(float(m3["half_width"]), np.median([iv.half_width for iv in want]), places=12)
    self.assertAlmostEqual(float(m3["spread"]), 1.96 * np.std([iv.estimate for iv in want], ddof=1), places=12)
    self.assertEqual(entries[5]["spread"], "")  # one subset: no spread
    self.assertIn("fp~ vs fp", out.getvalue())
    self.assertGreater((run_dir / "noise_floor.png").stat().st_size, 1000)

    with mock.patch.object(evaluate, "window_nll_sums", side_effect=AssertionError("evaluated again")):
      with redirect_stdout(io.StringIO()):
        self.assertEqual(noise_floor.run(self.config("run")), rows)

  def test_perturbation_is_one_ulp(self):
    h = np.tile(np.array([1.0, -2.5, 0.0, 3e-39], np.float32), 50)
    p = noise_floor.perturb_last_bit(h, seed=0)
    up, down = np.nextafter(h, np.float32(np.inf)), np.nextafter(h, np.float32(-np.inf))
    self.assertTrue(np.all((p == up) | (p == down)))
    self.assertBetween(np.mean(p == up), 0.3, 0.7)  # both directions, at random
    self.assertEqual(p.dtype, np.float32)

  def test_bad_configs(self):
    for change, message in ((dict(subsets=(3,)), r"subsets=\(3,\) is invalid: each must divide data.windows=8"),
                            (dict(subsets=(1,)), r"subsets\[0\]=1 is invalid"),
                            (dict(mantissa_bits=(0,)), r"mantissa_bits\[0\]=0 is invalid")):
      cfg = self.config("bad")
      for k, v in change.items():
        cfg[k] = v
      with self.subTest(str(change)):
        with self.assertRaisesRegex(ValueError, message):
          noise_floor.run(cfg)
    common_keys = set(noise_floor_config.get_config("quick").keys())
    self.assertEqual(common_keys, set(noise_floor_config.get_config().keys()))


if __name__ == "__main__":
  absltest.main()
