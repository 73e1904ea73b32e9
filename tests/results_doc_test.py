"""docs/results.md is what the result files under docs/results give, and the generator's checks
hold: each recorded command is checked against its files, a wrong one is refused."""

import dataclasses
import json
import os
import pathlib
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from anda_jax.evaluation import intervals
from experiments import search_compare
from experiments.results_doc import __main__ as command
from experiments.results_doc import comparison
from experiments.results_doc import page
from experiments.results_doc import runs
from experiments.results_doc import studies
from experiments.results_doc import text
from experiments.results_doc import transfer
from synthetic_searches import MX, row, shifted, write_run
import testlib

_GENERATED = []


def generated() -> str:
  """The page the files give, generated once for the whole test file (about 5 s)."""
  if not _GENERATED:
    _GENERATED.append(page.generate())
  return _GENERATED[0]


class PageTest(absltest.TestCase):

  def test_docs_results_md_is_current(self):
    # The CI guard: fails when a result file changed and the page was not regenerated.
    self.assertEqual(runs.DOC.read_text(), generated(),
                     "docs/results.md is stale: run `python -m experiments.results_doc`")

  def test_check_mode_exits_1_on_a_stale_page_and_0_once_rewritten(self):
    current = generated()
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(page, "generate", lambda: current):
      doc = pathlib.Path(tmp) / "results.md"
      doc.write_text(current.replace("+6.70%", "+6.76%", 1))
      self.assertEqual(command.main(["--check", "--doc", str(doc)]), 1)
      self.assertEqual(command.main(["--doc", str(doc)]), 0)
      self.assertEqual(command.main(["--check", "--doc", str(doc)]), 0)
      self.assertEqual(doc.read_text(), current)

  def test_every_result_folder_is_on_the_page(self):
    folders = {p.parent.relative_to(runs.RESULTS).as_posix()
               for p in runs.RESULTS.rglob("setup.json")}
    self.assertEqual(folders, {r.folder for r in runs.RUNS.values()})
    for folder in folders:
      self.assertIn(f"(results/{folder}/", generated())

  def test_a_file_is_linked_as_stored_and_a_missing_one_is_refused(self):
    root = testlib.tempdir(self)
    (root / "run").mkdir()
    (root / "run" / "search.jsonl.gz").write_bytes(b"")
    (root / "run" / "pareto.png").write_bytes(b"")
    with mock.patch.object(runs, "RESULTS", root):
      run = runs.Run("run", "python -m experiments.search", runs.EPYC)
      self.assertEqual(runs.file_name(run, "search.jsonl"), "search.jsonl.gz")
      self.assertEqual(runs.file_name(run, "pareto.png"), "pareto.png")
      with self.assertRaisesRegex(FileNotFoundError, "run: neither path.png nor path.png.gz"):
        runs.file_name(run, "path.png")


class CommandTest(parameterized.TestCase):

  @parameterized.named_parameters((name, name) for name in runs.RUNS)
  def test_recorded_command_writes_its_files(self, name):
    self.assertEqual(runs.check_command(runs.RUNS[name]), [])

  @parameterized.named_parameters(
      ("search_without_its_settings", "search", "python -m experiments.search "
       "--config=configs/search.py", ("bound:", "test_path:")),
      ("nearest_without_rounding", "nearest", "python -m experiments.sweep "
       "--config=configs/sweep.py --config.run_name=sweep_smollm2_nearest "
       "--config.format.group_sizes='(64,)' --config.mantissa_bits='(6,7,8,9,10)' "
       "--config.types='(\"all\",)'", ("rounding:",)),
      ("layer_search_in_the_per_type_folder", "layer_from_type", "python -m experiments.search "
       "--config=configs/search.py --config.granularity=layer --config.start_types='(7,6,7,8)' "
       "--config.tolerances='(0.01,)' --config.max_accept=32", ("run_name:", "uniform_m:")),
      ("sweep_of_one_group_size", "sweep", "python -m experiments.sweep "
       "--config=configs/sweep.py --config.format.group_sizes='(64,)'",
       ("evaluated configurations:",)),
  )
  def test_a_wrong_command_is_refused(self, name, command_line, expected):
    run = dataclasses.replace(runs.RUNS[name], command=command_line)
    wrong = runs.check_command(run)
    for setting in expected:
      self.assertTrue(any(w.startswith(setting) for w in wrong), (setting, wrong))
    with self.assertRaisesRegex(ValueError, "does not match the files"):
      runs.source(run, ("setup.json",))

  def test_a_listed_difference_that_is_gone_is_reported(self):
    run = dataclasses.replace(runs.RUNS["sweep"], known=(("window_batch", "why"),))
    self.assertEqual(runs.check_command(run),
                     ["window_batch: listed as differing, but the command and the files agree"])


class NumbersTest(parameterized.TestCase):

  @parameterized.parameters(range(20))
  def test_smallest_m_against_a_direct_reading(self, seed):
    rng = np.random.default_rng(seed)
    ms = sorted(rng.choice(np.arange(2, 12), rng.integers(1, 8), replace=False).tolist())
    losses = {m: (None if rng.random() < 0.1 else float(rng.normal(0.01, 0.01))) for m in ms}
    got = studies.smallest_m(losses, 0.01)
    within = lambda m: losses[m] is not None and losses[m] <= 0.01
    if got is None:
      self.assertFalse(within(ms[-1]))
    else:
      self.assertTrue(all(within(m) for m in ms if m >= got))
      below = [m for m in ms if m < got]
      self.assertTrue(not below or not within(below[-1]))

  def test_loss_text(self):
    iv = intervals.Interval(0.0123, 0.0080, 0.0170)
    self.assertEqual(text.loss(iv.estimate, iv), "+1.23% [+0.80, +1.70]")
    self.assertEqual(text.loss(6.42, intervals.Interval(6.42, 5.9, 7.01)), "x7.42 [x6.90, x8.01]")
    self.assertEqual(text.loss(-0.0087, None), "-0.87%")
    self.assertEqual(text.loss(float("nan")), "not finite")

  def test_increase_is_the_paired_bootstrap_of_the_rows(self):
    rng = np.random.default_rng(0)
    tokens = [255.0] * 8
    base = dict(ppl=20.0, window_nll=rng.normal(800, 50, 8).tolist(), window_tokens=tokens)
    row = dict(ppl=21.0, window_nll=(np.array(base["window_nll"]) + rng.normal(5, 3, 8)).tolist(),
               window_tokens=tokens)
    estimate, iv = text.increase(row, base)
    want = intervals.relative_increase(row["window_nll"], base["window_nll"], tokens)
    self.assertEqual((estimate, iv), (want.estimate, want))
    self.assertEqual(text.increase(dict(ppl=21.0), dict(ppl=20.0)), (21.0 / 20.0 - 1, None))


class ComparisonTest(absltest.TestCase):
  """A recorded comparison of searches is checked against what its command computes now."""

  COMMAND = ("python -m experiments.search_compare --runs=docs/results/anda,docs/results/mx "
             "--out=docs/results/cmp")

  def setUp(self):
    super().setUp()
    root = testlib.tempdir(self)
    results = root / "docs" / "results"
    write_run(results / "anda", [(0.01, [6] * 4)], [row([6] * 4, shifted(0.02))],
              uniform_m=(6,))
    write_run(results / "mx", [(0.01, [4] * 4)], [row([4] * 4, shifted(0.01))], candidates=MX)
    cwd = os.getcwd()
    os.chdir(root)  # the command names its folders from the repository's root
    self.addCleanup(os.chdir, cwd)
    search_compare.write(["docs/results/anda", "docs/results/mx"], "docs/results/cmp")
    for name, value in (("ROOT", root), ("RESULTS", results)):
      patcher = mock.patch.object(runs, name, value)
      patcher.start()
      self.addCleanup(patcher.stop)
    self.results = results

  def test_the_command_that_wrote_it_is_accepted(self):
    self.assertEqual(runs.check_comparison(runs.Run("cmp", self.COMMAND, runs.EPYC)), [])

  def test_section_tables_each_run_and_choice_and_gives_the_verdict(self):
    with mock.patch.dict(runs.RUNS, cmp=runs.Run("cmp", self.COMMAND, runs.EPYC)):
      lines = comparison.comparison_section("cmp", "Searches compared")
    record = json.loads((self.results / "cmp" / "compare.json").read_text())
    self.assertEqual(lines[0], "## Searches compared")
    self.assertIn("| Anda truncate | M (G = 64, truncate) | 4 | "
                  f"{record['runs'][0]['fp_test_ppl']:.3f} | not checked |", lines)
    # M = 6 everywhere, +0.02 nats a token on every window: exp(0.02) - 1 on every resample.
    self.assertIn("| Anda truncate | M 6, 6, 6, 6 | 7.12 | +2.02% [+2.02, +2.02] | yes |", lines)
    self.assertIn(record["verdict"], lines)

  def test_a_changed_search_or_another_folder_is_refused(self):
    log = self.results / "anda" / "search.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    rows[-1] = row([6] * 4, shifted(0.03))  # the chosen configuration's test loss moved
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    wrong = runs.check_comparison(runs.Run("cmp", self.COMMAND, runs.EPYC))
    self.assertTrue(any(w.startswith("compare.json points") for w in wrong), wrong)
    self.assertEqual(
        runs.check_comparison(runs.Run("cmp", self.COMMAND.replace("out=docs/results/cmp",
                                                                   "out=docs/results/x"),
                                       runs.EPYC)),
        ["out: command gives 'docs/results/x', files are in 'cmp'"])
    only_one = self.COMMAND.replace("docs/results/anda,", "")
    with mock.patch.dict(runs.RUNS, cmp=runs.Run("cmp", only_one, runs.EPYC)):
      with self.assertRaisesRegex(ValueError, "does not match the files"):
        comparison.comparison_section("cmp", "Searches compared")
    self.assertRegex(runs.check_comparison(runs.Run("cmp", only_one, runs.EPYC))[0],
                     "runs: the command is refused: .*at least two")


def _facts(ranked, bias_high, verdicts, edge, search_m=(7, 6, 7, 8)):
  """One model's facts as transfer.facts gives them, with what the findings read."""
  iv = intervals.Interval(bias_high - 0.002, bias_high - 0.004, bias_high)
  return dict(sweep=dict(ranked=ranked, cheapest=16 if edge < 3 else 64),
              bias=((iv.estimate, iv), (0.001, None)),
              formats={n: (v, None) for n, v in verdicts.items()},
              below_fp=[8, 9, 10] if bias_high < 0 else [],
              sensitivity=dict(edge=edge, common=ranked[-1]), noise=125_000.0,
              search=(list(search_m), 7.16, (-0.0078, None), 80))


class TransferTest(parameterized.TestCase):

  def test_a_model_without_studies_shows_not_run_in_every_row(self):
    column = transfer.cells({}, ["mxfp4", "nvfp4"])
    self.assertLen(column, 9 + 2)
    self.assertEqual(set(column), {transfer.NOT_RUN})

  @parameterized.parameters(
      (("o", "qkv", "down", "up"), ("o", "qkv", "down", "up"), "transfers", "transfers"),
      (("o", "qkv", "down", "up"), ("qkv", "o", "up", "down"), "does not transfer",
       "does not transfer"),
      (("o", "qkv", "down", "up"), ("qkv", "down", "o", "up"), "transfers",
       "does not transfer"))
  def test_findings_say_what_transfers(self, ranked_a, ranked_b, most, least):
    a = _facts(ranked_a, -0.003, dict(mxfp4="mxfp4 ahead", mxint8="Anda ahead"), 5)
    b = _facts(ranked_b, +0.002, dict(mxfp4="mxfp4 ahead", mxint8="not resolved"), 2)
    lines = transfer.transfer_findings({"A": a, "B": b}, ["mxfp4", "mxint8"])
    self.assertIn(f"- The most sensitive type: `{ranked_a[-1]}` on A, `{ranked_b[-1]}` on B "
                  f"({most}).", lines)
    self.assertIn(f"- The least sensitive type: `{ranked_a[0]}` on A, `{ranked_b[0]}` on B "
                  f"({least}).", lines)
    self.assertIn("- Truncation's interval lies below FP (all four types, G = 64) at M = 8, 9, 10 "
                  "on A and nowhere on B (on A only).", lines)
    self.assertIn("- The cheapest G with all four types within 1%: 64 on A, 16 on B (does not "
                  "transfer).", lines)
    self.assertIn("- Anda against the other formats at equal bits, the same verdict on both: "
                  "mxfp4; a different one: mxint8.", lines)
    self.assertNotIn("Not recorded", "".join(lines))

  @parameterized.parameters(
      ((8, 5, 8, 8), "`o` on B (transfers)"),
      ((6, 6, 8, 7), "`qkv`, `o` on B (does not transfer)"),
      ((7, 7, 6, 8), "`up` on B (does not transfer)"))
  def test_findings_compare_where_the_searches_spend_fewest_bits(self, search_b, says):
    a = _facts(("o", "qkv", "down", "up"), -0.003, {}, 5)
    b = _facts(("o", "qkv", "down", "up"), -0.003, {}, 5, search_m=search_b)
    lines = transfer.transfer_findings({"A": a, "B": b}, [])
    self.assertIn(f"- The per-type search at 1% gives the fewest bits to `o` on A and {says}.",
                  lines)

  def test_findings_name_the_studies_not_recorded_on_both(self):
    a = _facts(("o", "qkv", "down", "up"), -0.003, {}, 5)
    lines = transfer.transfer_findings({"A": a, "B": dict(sensitivity=a["sensitivity"])}, [])
    self.assertIn("- Not recorded on both models yet: formats, noise, search, sweep.", lines)


if __name__ == "__main__":
  absltest.main()
