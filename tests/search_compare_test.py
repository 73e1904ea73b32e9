"""experiments.search_compare: searches compared on their shared test windows. Synthetic run
folders whose per-window sums are built so that every paired difference is known in closed form
(a shift of c nats per scored token on every window gives exp(c) - 1 on every bootstrap
resample, an alternating shift gives an estimate of 0 and an interval around it), the
refusals, and (end to end) two tiny searches compared."""

import json
import math
import os
import pathlib
import re
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from configs import search as search_config
from experiments import search as exp_search
from experiments import search_compare
from experiments import search_log
from experiments import search_report
from experiments.harness import perplexity
from anda_jax.precision import config_key
from synthetic_searches import ALTERNATING, BASE, MX, N, TOKENS, row, shifted, write_run
import testlib

_REPO = pathlib.Path(__file__).resolve().parents[1]


def ratio(a, b) -> float:
  """ppl_a / ppl_b - 1 from per-window sums on the same windows (the estimate, in float64)."""
  return float(np.expm1((np.sum(a) - np.sum(b)) / (N * TOKENS)))


class SyntheticTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = testlib.tempdir(self)
    # Anda (truncate): 0.5% chose M = 7 (8.125 bits), 1% M = 6 (7.125 bits); uniform M = 5, 7.
    # Against FP: M = 7 alternates +-0.05 nats a token (estimate 0), M = 6 is +0.02, M = 5
    # +0.1; MXINT8 at every site +0.005.
    self.anda = write_run(self.tmp / "anda", [(0.005, [7] * 4), (0.01, [6] * 4)], [
        row([7] * 4, shifted(0.05 * ALTERNATING)), row([6] * 4, shifted(0.02)),
        row([5] * 4, shifted(0.1)), row([1] * 4, shifted(0.005), "mxint8")],
        uniform_m=(5, 7), other_formats=("mxint8",))
    # MX: 0.5% chose MXINT8 everywhere (8.25 bits, FP's sums), 1% MXFP6 E2M3 (6.25, +0.01);
    # MXFP4 at every site (4.25 bits) +0.5.
    self.mx = write_run(self.tmp / "mx", [(0.005, [1] * 4), (0.01, [4] * 4)], [
        row([1] * 4, BASE), row([4] * 4, shifted(0.01)), row([6] * 4, shifted(0.5))],
        candidates=MX, packed=True)  # stored compressed, as a recorded run may be
    # Anda rounding to nearest: M = 5 at +0.05 (truncation's +0.1 is 0.05 a token above it).
    self.nearest = write_run(self.tmp / "nearest", [(0.01, [5] * 4)],
                             [row([5] * 4, shifted(0.05))], rounding="nearest", uniform_m=(5,))

  def compare(self, *runs):
    search_compare.write(runs or (self.anda, self.nearest, self.mx), self.tmp / "out")
    return (json.loads((self.tmp / "out" / "compare.json").read_text()),
            (self.tmp / "out" / "compare.md").read_text())

  def test_paired_differences_and_standings_at_each_tolerance(self):
    record, md = self.compare()
    self.assertEqual([r["label"] for r in record["runs"]],
                     ["Anda truncate", "Anda nearest", "MX"])
    pairs = {(t["tolerance"], p["anda_run"]): p for t in record["tolerances"] for p in t["pairs"]}
    # 1%: M = 6 (7.125 bits, +0.02) against MXFP6 E2M3 (6.25 bits, +0.01): every resample the
    # same ratio, resolved higher, at more bits: behind.
    p = pairs[0.01, "Anda truncate"]
    want = ratio(shifted(0.02), shifted(0.01))
    self.assertAlmostEqual(want, math.expm1(0.01))
    for k in ("estimate", "low", "high"):
      self.assertAlmostEqual(p["versus"][k], want, places=12)
    self.assertAlmostEqual(p["anda_bits"], 1 + 6 + 8 / 64)
    self.assertAlmostEqual(p["other_bits"], 6 + 8 / 32)
    self.assertEqual((p["verdict"], p["standing"]), ("higher", "behind"))
    self.assertIn("Anda truncate, mixed, 1% needs 0.88 more bits than MX, mixed, 1% (7.12 vs "
                  "6.25) at a test perplexity resolved higher (worse), +1.01% [+1.01, "
                  "+1.01]: **behind**.", md)
    # 0.5%: M = 7 (8.125 bits, alternating) against MXINT8 (8.25 bits, FP's sums): estimate 0,
    # not resolved, fewer bits: ahead.
    p = pairs[0.005, "Anda truncate"]
    self.assertAlmostEqual(p["versus"]["estimate"], 0.0, places=12)
    self.assertLess(p["versus"]["low"], 0)
    self.assertGreater(p["versus"]["high"], 0)
    self.assertEqual((p["verdict"], p["standing"]), ("not resolved", "ahead"))
    # The nearest run has no 0.5% choice: only its 1% one (M = 5, 6.125 bits, +0.05) is paired,
    # with MXFP6 E2M3 (+0.01): fewer bits, resolved higher: a trade-off.
    self.assertNotIn((0.005, "Anda nearest"), pairs)
    p = pairs[0.01, "Anda nearest"]
    self.assertAlmostEqual(p["versus"]["estimate"], ratio(shifted(0.05), shifted(0.01)))
    self.assertEqual(p["standing"], "trade-off")
    self.assertIn("Against MX mixed at the same tolerance, Anda truncate mixed is ahead at 0.5% "
                  "(8.12 vs 8.25 bits, +0.00% [", record["verdict"])
    self.assertIn("behind at 1% (7.12 vs 6.25 bits, +1.01% [+1.01, +1.01])", record["verdict"])

  def test_equal_bits_takes_the_most_accurate_anda_within_each_formats_bits(self):
    record, md = self.compare()
    rows = {(e["other"], e["anda_run"]): e for e in record["equal_bits"]}
    # MXFP6 E2M3 (6.25 bits, +0.01): within its bits Anda truncate has M = 5 only (6.125, +0.1).
    e = rows["MXFP6 E2M3", "Anda truncate"]
    self.assertEqual(e["best"]["choice"], "M 5, 5, 5, 5")
    for k in ("estimate", "low", "high"):
      self.assertAlmostEqual(e["versus"][k], ratio(shifted(0.1), shifted(0.01)), places=12)
    self.assertEqual(e["verdict"], "higher")
    # MXINT8 (8.25, +0.005; measured in two runs, taken once): the lowest perplexity within
    # 8.25 bits is M = 7's (FP's total): lower by the formats' 0.005 a token, not resolved.
    self.assertLen([p for p in record["points"] if p["name"] == "MXINT8"], 1)
    e = rows["MXINT8", "Anda truncate"]
    self.assertEqual(e["best"]["choice"], "M 7, 7, 7, 7")
    self.assertAlmostEqual(e["versus"]["estimate"], ratio(shifted(0.05 * ALTERNATING),
                                                         shifted(0.005)))
    self.assertEqual(e["verdict"], "not resolved")
    self.assertEqual(e["cheapest"]["choice"], "M 7, 7, 7, 7")
    # MXFP4 (4.25 bits): no Anda configuration stores as few.
    self.assertIsNone(rows["MXFP4", "Anda truncate"]["best"])
    self.assertIsNone(rows["MXFP4", "Anda truncate"]["verdict"])
    # The MX run's 1% choice (6.25 bits) against the nearest run's M = 5 (6.125, +0.05).
    e = rows["MX, mixed, 1%", "Anda nearest"]
    self.assertAlmostEqual(e["versus"]["high"], ratio(shifted(0.05), shifted(0.01)), places=12)
    self.assertIn("Within the bits of each format at every site, Anda truncate's most accurate "
                  "configuration is not resolved against MXINT8; resolved higher than MXFP6 "
                  "E2M3.", record["verdict"])
    self.assertIn("| MXFP6 E2M3 | 6.25 | +1.01% [+1.01, +1.01] | Anda truncate | M 5, 5, 5, 5 "
                  "(6.12) |", md)

  def test_rounding_pairs_the_same_configuration_of_each_rounding(self):
    record, md = self.compare()
    (uniform,) = [p for p in record["rounding"] if p["what"] == "uniform M"]
    self.assertEqual((uniform["anda_run"], uniform["other_run"], uniform["m"]),
                     ("Anda truncate", "Anda nearest", 5))
    self.assertAlmostEqual(uniform["versus"]["low"], ratio(shifted(0.1), shifted(0.05)),
                           places=12)
    self.assertEqual((uniform["verdict"], uniform["standing"]), ("higher", "behind"))
    (mixed,) = [p for p in record["rounding"] if p["what"] == "mixed"]
    self.assertEqual(mixed["tolerance"], 0.01)  # the only tolerance both searched
    self.assertIn("Rounding, Anda truncate against Anda nearest (paired, same G): at uniform M "
                  "its test perplexity is resolved higher at M=5", record["verdict"])
    self.assertIn("| Anda truncate / Anda nearest | uniform M=5 | 6.12 / 6.12 |", md)

  def test_the_plot_and_every_point_are_written(self):
    record, md = self.compare()
    self.assertTrue((self.tmp / "out" / "pareto.png").stat().st_size > 0)
    names = [p["name"] for p in record["points"]]
    self.assertEqual(names, [
        "Anda truncate, mixed, 0.5%", "Anda truncate, mixed, 1%", "Anda truncate, uniform M=5",
        "Anda truncate, uniform M=7", "Anda nearest, mixed, 1%", "Anda nearest, uniform M=5",
        "MX, mixed, 0.5%", "MX, mixed, 1%", "MXINT8", "MXFP6 E2M3", "MXFP4"])
    for p in record["points"]:
      self.assertIn(f"| {p['name']} |", md)

  def test_labels_name_the_folder_where_two_runs_would_read_alike(self):
    twin = write_run(self.tmp / "twin", [(0.01, [6] * 4)], [row([6] * 4, shifted(0.02))])
    record, _ = self.compare(self.anda, twin)
    self.assertEqual([r["label"] for r in record["runs"]],
                     ["Anda truncate (anda)", "Anda truncate (twin)"])
    self.assertEqual(record["tolerances"], [dict(tolerance=0.005, pairs=[]),
                                            dict(tolerance=0.01, pairs=[])])

  @parameterized.named_parameters(
      ("one_run", lambda t: [t.anda], "at least two finished search runs"),
      ("not_finished", lambda t: [t.anda, t.tmp / "anda_unfinished"],
       "is not a finished search run"),
      ("no_folder", lambda t: [t.anda, t.tmp / "nowhere"], "is not a folder"),
      ("twice", lambda t: [t.anda, t.anda], "named twice"),
      ("other_test_windows", lambda t: [t.anda, t.other_windows],
       r"differ in their test windows \(setup.json windows.test: "),
      ("other_model", lambda t: [t.anda, t.other_model], r"differ in their model \(setup.json model: "),
  )
  def test_refusals(self, runs, message):
    (self.tmp / "anda_unfinished").mkdir()
    (self.tmp / "anda_unfinished" / "setup.json").write_text("{}")
    self.other_windows = write_run(self.tmp / "w", [(0.01, [6] * 4)],
                                   [row([6] * 4, BASE)], test_sha="other")
    self.other_model = write_run(self.tmp / "o", [(0.01, [6] * 4)], [row([6] * 4, BASE)],
                                 model="other")
    with self.assertRaisesRegex(ValueError, message):
      search_compare.write(runs(self), self.tmp / "out")
    self.assertFalse((self.tmp / "out").exists())

  def test_a_bad_row_in_a_compressed_file_is_an_error(self):
    bad = write_run(self.tmp / "bad", [(0.01, [6] * 4)], [dict(split="test")], packed=True)
    with self.assertRaisesRegex(ValueError, r"search.jsonl.gz: row 2 is not a search row"):
      search_compare.write([self.anda, bad], self.tmp / "out")

  def test_out_that_is_a_run_is_refused(self):
    with self.assertRaisesRegex(ValueError, "--out=.* is one of the runs"):
      search_compare.write([self.anda, self.mx], self.mx)

  def test_the_command_refuses_in_one_line_with_status_2(self):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.search_compare", f"--runs={self.anda}",
         f"--out={self.tmp / 'out'}"], cwd=_REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    self.assertEqual(out.returncode, 2, out.stderr)
    lines = [l for l in out.stderr.splitlines() if not re.match(r"[IWEF]\d{4} ", l)]
    self.assertEqual(lines, [f"error: --runs={self.anda} is invalid: a comparison needs at "
                             "least two finished search runs"])


class EndToEndTest(absltest.TestCase):
  """Two tiny searches (Anda and mixed MX) on the same windows, compared."""

  def test_tiny_searches_compared(self):
    tmp = testlib.tempdir(self)
    testlib.make_checkpoint(tmp / "ckpt", n_layers=2, d_model=32, d_ff=64)
    (tmp / "corpus.txt").write_text(testlib.corpus_text())
    runs = []
    for name, candidates in (("anda", "anda"), ("mx", "mx")):
      cfg = search_config.get_config("quick")
      cfg.results_dir, cfg.run_name, cfg.candidates = str(tmp / "results"), name, candidates
      cfg.model.name, cfg.data.corpus = str(tmp / "ckpt"), str(tmp / "corpus.txt")
      cfg.format.group_sizes = (32,)
      cfg.data.seq_len, cfg.data.windows, cfg.test.windows = 16, 8, 4
      cfg.start_m, cfg.min_m, cfg.tolerances, cfg.uniform_m = 6, 4, (0.05,), (4, 6)
      cfg.window_batch, cfg.test.uniform, cfg.rule, cfg.race_windows = 4, True, "point", None
      cfg.other_formats = ("mxint8",)
      runs.append(exp_search.run(cfg))
    search_compare.write(runs, tmp / "compare")
    record = json.loads((tmp / "compare" / "compare.json").read_text())
    self.assertEqual([r["label"] for r in record["runs"]], ["Anda truncate", "MX"])
    (pair,) = record["tolerances"][0]["pairs"]
    # The paired interval is the one of the two runs' test rows, as any report computes it.
    test_rows = [search_report.rows_by_key(search_log.read_rows(r / "search.jsonl"), "test")
                 for r in runs]
    chosen = [json.loads((r / "chosen.json").read_text())["chosen"][0] for r in runs]
    want = perplexity.increase_interval(
        *(rows[config_key(np.asarray(c["precision"]))] for rows, c in zip(test_rows, chosen)))
    self.assertAlmostEqual(pair["versus"]["estimate"], want.estimate)
    self.assertAlmostEqual(pair["versus"]["low"], want.low)
    self.assertAlmostEqual(pair["anda_bits"], chosen[0]["storage_bits"])
    self.assertAlmostEqual(pair["other_bits"], chosen[1]["storage_bits"])
    self.assertEqual({p["name"] for p in record["points"] if p["what"] == "format"},
                     {"MXINT8", "MXFP8 E4M3", "MXFP8 E5M2", "MXFP6 E2M3", "MXFP6 E3M2", "MXFP4"})
    self.assertTrue((tmp / "compare" / "pareto.png").exists())


if __name__ == "__main__":
  absltest.main()
