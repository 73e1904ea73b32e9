"""experiments.search: the results file, the report drawn from it, the settings, and the search
end to end on a tiny checkpoint and (marked real_model) on SmolLM2's quick config. The
algorithm itself is tested in precision_search_test.py."""

import json
import re
import math
import pathlib

from absl import logging
from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import pytest

from anda_jax import assets
from anda_jax import cost
from anda_jax.evaluation.window_evaluator import WindowEvaluator
from anda_jax.numerics import baselines
from anda_jax import precision as anda_precision
from anda_jax import precision_search
from experiments.harness import loading
from experiments.harness import perplexity
from experiments import search as exp_search
from experiments import search_log
from experiments import search_report
import testlib
from anda_jax.evaluation import evaluate
from anda_jax.matmul import ProductSpec
from anda_jax import models
from anda_jax.numerics import anda
from configs import search as search_config
from experiments import bench_search

_REPO = pathlib.Path(__file__).resolve().parents[1]
MACS = np.array([3.0, 1.0, 8.0, 4.0])
SHAPE = dict(n_layers=2, d_model=8, n_heads=4, n_kv_heads=2, head_dim=2, d_ff=16, family="llama",
             vocab=32)


def _setup(n_calibration=2, n_test=3):
  return dict(model="tiny", int4_group_size=None, corpus="c", seq_len=8,
              format=dict(group_size=64, exponent_bits=8, rounding="truncate"),
              windows=dict(calibration=dict(n=n_calibration, sha256="x"),
                           test=dict(n=n_test, sha256="y")),
              shape=SHAPE)


def _chosen(chosen, uniform_m=(5, 6), **extra):
  return dict(granularity="type", start_m=6, min_m=2, uniform_m=list(uniform_m),
              chosen=[dict(tolerance=t, precision=p) for t, p in chosen], **extra)


def _key(config):
  return anda_precision.config_key(np.asarray(config))


class ReportTest(absltest.TestCase):
  """The report's figures come from the run's files, not from a search in memory."""

  def _write_old_run(self, run_dir):
    """A run from before the intervals: rows without per-window sums, chosen.json without rule."""
    (run_dir / "setup.json").write_text(json.dumps(_setup()))
    rows = [("calibration", [0, 0, 0, 0], 20.0), ("calibration", [6, 6, 6, 6], 20.01),
            ("calibration", [6, 5, 6, 6], 20.018), ("calibration", [6, 5, 6, 5], 20.15),
            ("calibration", [5, 5, 5, 5], 20.9), ("test", [0, 0, 0, 0], 30.0),
            ("test", [6, 5, 6, 6], 30.06), ("test", [6, 5, 6, 5], 30.3)]
    with (run_dir / "search.jsonl").open("w") as f:
      for split, p, ppl in rows:
        f.write(json.dumps(dict(split=split, precision=p, perplexity=ppl)) + "\n")
      f.write('{"split": "calibr')  # a torn last line from an interrupted run
    (run_dir / "chosen.json").write_text(json.dumps(_chosen(
        [(0.001, [6, 5, 6, 6]), (0.01, [6, 5, 6, 5])])))
    return cost.ModelShape(**SHAPE)

  def test_report_reads_an_old_run_without_intervals(self):
    run_dir = testlib.tempdir(self) / "tiny_run"
    run_dir.mkdir()
    shape = self._write_old_run(run_dir)
    text = search_report.write_report(run_dir)
    self.assertEqual((run_dir / "report.md").read_text(), text)
    self.assertTrue((run_dir / "pareto.png").stat().st_size > 1000)
    lines = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[2:-1]]
             for l in text.splitlines() if l.startswith("| ") and "%" in l.split("|")[1]
             or l.startswith("| uniform") or l.startswith("| FP16 activations")}
    # Tolerance 1%: [6, 5, 6, 5] -> 20.150 (+0.75%) on calibration, 30.300 (+1.00%) on test.
    row = lines["1%"]
    self.assertEqual(row[:5], ["6, 5, 6, 5", "20.150", "+0.75%", "30.300", "+1.00%"])
    s = cost.summarize(shape, np.array([6, 5, 6, 5]))
    self.assertEqual(row[5], f"{(128 * 6 + 64 * 5 + 256 * 6 + 128 * 5) / 576:.2f}")
    self.assertEqual(row[7], f"{100 * s['bops_saving']:.1f}%")
    self.assertEqual(row[8], f"{s['speedup_vs_fp16']:.2f}x")
    self.assertEqual(lines["0.1%"][1:5], ["20.018", "+0.09%", "30.060", "+0.20%"])
    self.assertEqual(lines["FP16 activations"][1:5], ["20.000", "+0.00%", "30.000", "+0.00%"])
    self.assertEqual(lines["uniform M=5"][1:5], ["20.900", "+4.50%", "–", "–"])
    self.assertIn("no noise floor", text)
    self.assertIn("Resolution before the run: not recorded", text)
    self.assertIn("with the LM head as a site of its own (`cost.lm_head=True`, "
                  f"{100 * 256 / (1152 + 256):.1f}% of the MACs)", text)
    # Changing a file changes the report: nothing is cached elsewhere. A new row with its
    # per-window sums joins the old ones.
    log = search_log.SearchLog(run_dir)  # repairs the torn line
    log.appender("test", np.full(3, 7.0))(np.full(4, 5), np.full(3, 7 * math.log(33.0)))
    self.assertIn("| uniform M=5 | 5, 5, 5, 5 | 20.900 | +4.50% | 33.000 | +10.00% |",
                  search_report.write_report(run_dir))

  def test_report_with_intervals_noise_floor_and_racing_rows(self):
    run_dir = testlib.tempdir(self) / "run"
    run_dir.mkdir()
    (run_dir / "setup.json").write_text(json.dumps(_setup(n_calibration=4, n_test=3)))
    rng = np.random.default_rng(0)
    base = {"calibration": rng.uniform(20, 30, 4), "test": rng.uniform(20, 30, 3)}
    tokens = 7.0
    log = search_log.SearchLog(run_dir)
    losses = {(0, 0, 0, 0): 0.0, (6, 6, 6, 6): 0.0005, (6, 5, 6, 6): 0.002, (6, 5, 6, 5): 0.005,
              (5, 5, 5, 5): 0.05}
    for split, n in (("calibration", 4), ("test", 3)):
      for config, added in losses.items():
        # Per-window sums whose loss differs from window to window around `added` (nats/token).
        sums = base[split] + tokens * added * (1 + 0.5 * np.arange(n) - 0.25 * (n - 1))
        log.appender(split, np.full(n, tokens))(np.array(config), sums)
    # A candidate racing dropped after the first 2 windows: a partial row, not a result.
    log.appender("calibration", np.full(4, tokens))(np.array([6, 5, 5, 5]), base["calibration"][:2] + 5)
    (run_dir / "chosen.json").write_text(json.dumps(_chosen(
        [(0.0001, [6, 6, 6, 6]), (0.01, [6, 5, 6, 5])], rule="upper", race_windows=2,
        race_level=0.99)))
    text = search_report.write_report(run_dir)
    rows = search_report.rows_by_key(search_log.read_rows(run_dir / "search.jsonl"), "calibration")
    want = perplexity.increase_interval(rows[_key([6, 5, 6, 5])], rows[_key([0, 0, 0, 0])])
    self.assertIn(f"[{100 * want.low:+.2f}, {100 * want.high:+.2f}]", text)
    self.assertLess(want.high, 0.01)
    self.assertIn("| 1% | 6, 5, 6, 5 |", text)
    # The noise floor: the half-width of the interval of (6, 6, 6, 6), the loss closest to 0.
    floor = perplexity.increase_interval(rows[_key([6, 6, 6, 6])], rows[_key([0, 0, 0, 0])])
    self.assertIn(f"**±{100 * floor.half_width:.2f}%**", text)
    self.assertGreater(floor.half_width, 0.0001)
    self.assertIn("| 0.01% | upper | yes", text)
    self.assertIn("| 1% | upper | no |", text)
    # Under the upper rule 0.01% is over for (6, 6, 6, 6) although its estimate is +0.05%.
    self.assertIn("| 0.01% (start over tolerance) | 6, 6, 6, 6 |", text)
    self.assertIn("5 configurations evaluated on calibration, 1 more only on the first 2 windows", text)
    self.assertGreater((run_dir / "pareto.png").stat().st_size, 1000)

  def test_report_measures_other_formats_and_takes_the_cost_settings(self):
    run_dir = testlib.tempdir(self) / "run"
    run_dir.mkdir()
    (run_dir / "setup.json").write_text(json.dumps(_setup(n_calibration=2, n_test=2)))
    shape, config, tokens = cost.ModelShape(**SHAPE), [6, 5, 6, 5], np.full(2, 10.0)
    uniform = int(np.ceil(cost.mean_mantissa_bits(shape, np.array(config))))
    log = search_log.SearchLog(run_dir)
    for split, scale in (("calibration", 1.0), ("test", 1.5)):
      for c, nll in (([0] * 4, 3.0), (config, 3.01), ([uniform] * 4, 3.005)):
        log.appender(split, tokens)(np.array(c), scale * nll * tokens)
      # MXINT8 at all four sites, measured: 2% over FP on calibration (the windows differ).
      log.appender(split, tokens, "mxint8")(np.ones(4, int), scale * tokens * [3.01, 3.03])
    hw = dict(fp16_fma_lanes=16.0, tokens_per_weight_read=4)
    (run_dir / "chosen.json").write_text(json.dumps(_chosen(
        [(0.01, config)], rule="upper", other_formats=["mxint8", "nvfp4"], cost=hw)))
    text = search_report.write_report(run_dir)
    modes = cost.compare_formats_by_mode(shape, np.array(config), hw=cost.Accelerator(**hw),
                                         uniform_m=uniform,
                                         other_formats=[baselines.MXFormat("int8"),
                                                        baselines.NVFP4Format()])
    want = list(zip(*modes.values()))  # each format's rows, one per FP-element model
    table = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[2:-1]]
             for l in text.split("## The chosen configurations in other")[1].split(
                 "## The cost model")[0].splitlines()
             if l.startswith("| ") and not l.startswith("| format")}
    self.assertEqual(list(table), [r[0]["format"] for r in want][:6])
    mx = table["mxint8"]
    self.assertEqual(mx[0], f"{math.exp(3.02):.3f}")
    self.assertTrue(mx[1].startswith(f"{100 * (math.exp(0.02) - 1):+.2f}% ["), mx[1])
    self.assertEqual(mx[2], f"{math.exp(1.5 * 3.02):.3f}")
    self.assertEqual(mx[4:], cost.cost_cells(want[2]).split(" | "))  # the cost settings apply
    # Both FP-element models: MXINT8 the same in both, NVFP4's E2M1 too (2 + 2 lanes = 4 planes).
    self.assertEqual(mx[6], mx[7])
    self.assertEqual(table["nvfp4"][:4], ["–"] * 4)  # not measured in this run
    self.assertEqual(table[f"BFP, uniform M={uniform}"][0], f"{math.exp(3.005):.3f}")
    self.assertEqual(table["Anda (this config)"][2], f"{math.exp(1.5 * 3.01):.3f}")
    self.assertEqual(table["FP16xFP16 (GPU-like)"][:2], [f"{math.exp(3.0):.3f}", "+0.00%"])
    # The assumptions table starts from the run's settings, then changes one at a time.
    s = cost.summarize(shape, np.array(config), hw=cost.Accelerator(**hw))
    self.assertIn(f"| as configured | {s['speedup_vs_fp16']:.2f}x |", text)
    self.assertIn("| `fp16_fma_lanes` | 16.0 | ", text)  # the assumptions table, as run
    self.assertIn("| `tokens_per_weight_read` | 4 | ", text)
    at60 = cost.summarize(shape, np.array(config), hw=cost.Accelerator(**hw | dict(
        fp16_fma_lanes=60.0)))
    self.assertIn(f"| 60 | {at60['speedup_vs_fp16']:.2f}x | {at60['energy_saving_vs_fp16']:.2f}x |",
                  text)
    self.assertIn("| 16 (configured) | ", text)
    self.assertIn("| area efficiency (throughput per area) | 4.0x | "
                  f"{s['speedup_vs_fp16']:.2f}x |", text)
    # Anda's own rows ignore the format rows (they share the configuration [1, 1, 1, 1]).
    self.assertNotIn(_key([1, 1, 1, 1]), log.cache("calibration"))

  def test_report_without_the_vocabulary_leaves_the_head_out_and_says_so(self):
    run_dir = testlib.tempdir(self) / "old"
    run_dir.mkdir()
    shape = self._write_old_run(run_dir)
    setup = json.loads((run_dir / "setup.json").read_text())
    del setup["shape"]["vocab"]
    (run_dir / "setup.json").write_text(json.dumps(setup))
    text = search_report.write_report(run_dir)
    self.assertIn("without the LM head, although `cost.lm_head` asks for it", text)
    s = cost.summarize(shape, np.array([6, 5, 6, 5]), hw=cost.Accelerator(lm_head=False))
    row = text.split("| 1% |")[1].splitlines()[0]
    self.assertTrue(row.endswith(f"| {s['speedup_vs_fp16']:.2f}x | {s['energy_saving_vs_fp16']:.2f}x |"),
                    row)

  def test_results_log_appends_partial_and_whole_rows_and_resumes(self):
    run_dir = testlib.tempdir(self)
    log = search_log.SearchLog(run_dir, dict(model="tiny"))
    tokens = np.array([5.0, 5.0, 6.0])
    log.appender("test", tokens)(np.array([3, 4, 5, 6]), np.array([10.0, 11.0, 12.0]))
    log.appender("calibration", tokens)(np.array([[3, 4, 5, 6]]), np.array([9.0]))
    log.appender("calibration", tokens)(np.array([[3, 4, 5, 6]]), np.array([9.0, 8.0, 7.0]))
    rows = search_log.read_rows(run_dir / "search.jsonl")
    self.assertEqual([r["windows"] for r in rows], [3, 1, 3])
    self.assertAlmostEqual(rows[0]["perplexity"], math.exp(33.0 / 16.0))
    self.assertEqual(rows[1]["window_tokens"], [5.0])
    # An old row without per-window sums still loads, but the search evaluates it again.
    with (run_dir / "search.jsonl").open("a") as f:
      f.write(json.dumps(dict(split="test", precision=[1, 1, 1, 1], perplexity=50.0)) + "\n")
    again = search_log.SearchLog(run_dir, dict(model="tiny"))
    self.assertLen(again.rows, 3)
    self.assertEqual(set(again.cache("test")), {_key([3, 4, 5, 6])})
    np.testing.assert_array_equal(again.cache("calibration")[_key([[3, 4, 5, 6]])], [9.0, 8.0, 7.0])
    with self.assertRaisesRegex(ValueError, "invalid for these settings: .*model: 'tiny' -> 'other'"):
      search_log.SearchLog(run_dir, dict(model="other"))

  def test_setup_record_keeps_the_recorded_runs_form(self):
    # docs/results/search_smollm2/setup.json: with the same settings, the new record holds every
    # recorded key with the same value, and at most the model's content and the batch sizes more.

    recorded = json.loads((_REPO / "docs/results/search_smollm2/setup.json").read_text())
    shape = cost.ModelShape(**recorded["shape"])
    windows = {s: np.zeros((w["n"], 4), np.int32) for s, w in recorded["windows"].items()}
    cfg = search_config.get_config()
    digest = loading.model_sha256(cfg.model.name)
    setup = exp_search.setup_of(cfg, windows, shape, digest)
    self.assertEqual({k: v for k, v in setup.items() if k in recorded and k != "windows"},
                     {k: v for k, v in recorded.items() if k != "windows"})
    self.assertEqual(list(setup["windows"]), ["calibration", "test"])
    extra = dict(model_sha256=assets.REGISTRY["smollm2-135m"].sha256,
                 window_batch=cfg.window_batch, config_batch=None)
    self.assertEqual(setup, {k: v for k, v in extra.items() if k not in recorded} | recorded
                     | dict(windows=setup["windows"]))
    # What is known before loading is the record without windows and shape.
    self.assertEqual(exp_search.setup_of(cfg, None, None, digest),
                     {k: v for k, v in setup.items() if k not in ("windows", "shape")})
    cfg.mesh = (2, 1)  # config shards change no bit: the record of before
    self.assertEqual(exp_search.setup_of(cfg, windows, shape, digest), setup)
    cfg.data.stride, cfg.impl, cfg.window_batch, cfg.mesh = 128, "bitserial", 4, (1, 2)
    setup = exp_search.setup_of(cfg, windows, shape, digest)
    self.assertEqual((setup["stride"], setup["impl"], setup["window_batch"], setup["model_shards"]),
                     (128, "bitserial", 4, 2))
    self.assertNotIn("candidates", setup)  # Anda's M: the recorded runs' form
    cfg.impl, cfg.candidates = "fake", ("mxfp4:block_size=32", "nvfp4")
    self.assertEqual(exp_search.setup_of(cfg, None, None, digest)["candidates"], ["mxfp4", "nvfp4"])

  def test_broken_lines_are_moved_aside_and_non_finite_sums_fail(self):
    run_dir = testlib.tempdir(self)
    log = search_log.SearchLog(run_dir, dict(model="tiny"))
    tokens = np.full(2, 4.0)
    add = lambda config, sums: log.appender("calibration", tokens)(np.array(config), np.array(sums))
    add([0, 0, 0, 0], [12.0, 12.0])
    add([6, 6, 5, 6], [12.0, np.nan])
    add([6, 5, 6, 6], [np.inf, 12.0])
    add([5, 5, 5, 5], [12.01, 12.0])
    path = run_dir / "search.jsonl"
    rows = path.read_text().splitlines()
    for line in rows:
      json.loads(line, parse_constant=lambda c: self.fail(f"{c} written"))  # strict JSON
    self.assertEqual([(json.loads(r)["finite"], json.loads(r)["window_nll"]) for r in rows][1:3],
                     [(False, [12.0, None]), (False, [None, 12.0])])
    broken = [b"garbage", b"{}", b'{"split": "train", "precision": [1, 2, 3, 4], "perplexity": 3}',
              b'{"split": "test", "precision": "\xff", "perplexity": 3}',
              b'{"split": "test", "precision": [1, 2, 3, 4], "perplexity": 3, "window_nll": [1]}']
    path.write_bytes(b"\n".join([rows[0].encode(), broken[0], rows[1].encode(), broken[1], broken[2],
                                 rows[2].encode(), broken[3], rows[3].encode(), broken[4]]) + b"\n")
    with testlib.warnings_logged(logging) as warnings:
      again = search_log.SearchLog(run_dir, dict(model="tiny"))
    self.assertLen(warnings, 5)
    self.assertIn(f"{path}:2: not a JSON line", warnings[0])
    self.assertEqual((run_dir / "search.jsonl.broken").read_bytes().splitlines(), broken)
    self.assertLen(search_log.read_rows(path), 4)
    # Not finite: over every tolerance, so the search never accepts it. Lowering `up` (the most
    # MACs) would be the first step were its sums finite.
    cache = again.cache("calibration")
    self.assertEqual(cache[_key([6, 5, 6, 6])][0], np.inf)
    evaluator = precision_search.CachedEvaluator(
        lambda p, w, b: np.tile([12.005, 12.005][w], (len(p), 1)), tokens, cache=cache)
    result = precision_search.search(evaluator, MACS, np.full(4, 6, np.int32), (0.5,), min_m=5)[0.5]
    self.assertEqual(result.path[1].tolist(), [6, 6, 6, 5])
    # The report reads them as "not finite", never crashes, and draws them as gaps.
    (run_dir / "setup.json").write_text(json.dumps(_setup()))
    (run_dir / "chosen.json").write_text(json.dumps(_chosen([(0.5, [6, 6, 5, 6])], rule="upper")))
    text = search_report.write_report(run_dir)
    self.assertIn("| 50% (start over tolerance) | 6, 6, 5, 6 | not finite | – |", text)
    self.assertIn("| uniform M=5 | 5, 5, 5, 5 | 20.111 | +0.13% [+0.00, +0.25] |", text)
    self.assertGreater((run_dir / "pareto.png").stat().st_size, 1000)


class ConfigTest(parameterized.TestCase):

  @parameterized.parameters(
      ("data.split", "test", "data.split='test' is invalid: the search runs on 'calibration'"),
      ("format.group_sizes", (32, 64), r"group_sizes=\(32, 64\) is invalid: the search takes one"),
      ("start_m", 25, r"start_m=25 is invalid: must be an integer in \[1, 24\]"),
      ("uniform_m", (), r"uniform_m=\(\) is invalid"),
      ("test.windows", 0, "test.windows=0 is invalid"),
      ("granularity", "block", "granularity='block' is invalid"),
      ("window_batch", -1, "window_batch=-1 is invalid"),
      ("uniform_m", (0, 4), r"uniform_m\[0\]=0 is invalid"),
      ("tolerances", (-0.1,), r"tolerances=\(-0.1,\) is invalid: must be a non-empty list of finite"),
      ("tolerances", (), r"tolerances=\(\) is invalid"),
      ("tolerances", (float("nan"),), r"tolerances=\(nan,\) is invalid"),
      ("min_m", 11, "min_m=11 is invalid: must be at most start_m="),
      ("start_types", (8, 6, 8), r"start_types=\(8, 6, 8\) is invalid: must be one M per type"),
      ("start_types", (8, 6, 8, 30), r"start_types\[3\]=30 is invalid: must be an integer in \[1, 24\]"),
      ("start_types", (8, 1, 8, 8), r"min_m=\d is invalid: must be at most every start_types entry=1"),
      ("other_formats", ("mxfp5",), r"other_formats\[0\]: format name 'mxfp5' is invalid"),
      ("cost.lanes", 0, "cost.lanes=0 is invalid"),
      ("cost.fp_elements", "serial", "cost.fp_elements='serial' is invalid"),
      ("run_name", "../out", "run_name='../out' is invalid"),
      ("rule", "median", r"rule='median' is invalid: must be one of \('upper', 'point'\)"),
      ("race_windows", 0, "race_windows=0 is invalid"),
      ("race_level", 1.0, r"race_level=1.0 is invalid: must be a number in \(0, 1\)"),
      ("max_rounds", -1, "max_rounds=-1 is invalid"),
      ("max_accept", 0, "max_accept=0 is invalid: must be an integer >= 1"),
      ("format.rounding", "stochastic", "race_windows=.* is invalid with format.rounding='stochastic'"),
      ("window_batch", 3, "race_windows=4 is invalid with window_batch=3: racing needs"),
      ("window_batch", None, "race_windows=4 is invalid with window_batch=None"),
      ("cost.head_mantissa_bits", 25, "cost.head_mantissa_bits=25 is invalid"),
      ("candidates", "mxx", r"candidates='mxx' is invalid: must be 'anda', one of \('mx', "
       r"'nvfp4_mx'\) or a tuple of format names"),
      ("candidates", 4, r"candidates=4 is invalid: must be 'anda'"),
      ("candidates", ("mxint8", "mxfp5"), r"candidates\[1\]: format name 'mxfp5' is invalid"),
      ("candidates", ("mxint8", "mxint8:block_size=32"), r"candidates\[1\]=.* repeats 'mxint8'"),
      ("candidates", (), r"candidates=\(\) is invalid: must name at least one format"))
  def test_bad_configs_are_refused(self, key, value, message):
    for variant in (None, "quick"):
      cfg = search_config.get_config(variant)
      *parents, name = key.split(".")
      target = cfg
      for part in parents:
        target = target[part]
      target[name] = value
      with self.assertRaisesRegex(ValueError, message):
        exp_search.validate(cfg)

  def test_shipped_configs_are_valid(self):
    for variant in (None, "quick"):
      exp_search.validate(search_config.get_config(variant))
      for candidates in ("mx", "nvfp4_mx", ("fp8_token", "mxfp4:block_size=16")):
        cfg = search_config.get_config(variant)
        cfg.candidates = candidates
        exp_search.validate(cfg)

  def test_settings_that_are_andas_are_refused_with_formats(self):
    cfg = search_config.get_config("quick")
    cfg.candidates, cfg.start_types = "mx", (8, 6, 8, 8)
    with self.assertRaisesRegex(ValueError, r"start_types=\(8, 6, 8, 8\) is invalid with "
                                "candidates='mx': it is Anda's M per type"):
      exp_search.validate(cfg)
    cfg.start_types, cfg.cost.head_mantissa_bits = None, 7
    with self.assertRaisesRegex(ValueError, "cost.head_mantissa_bits=7 is invalid with candidates"):
      exp_search.validate(cfg)
    cfg.cost.head_mantissa_bits, cfg.other_formats, cfg.impl = 0, (), "bitserial"
    with self.assertRaisesRegex(ValueError, "impl='bitserial' is invalid with candidates"):
      exp_search.validate(cfg)

  def test_unresolved_tolerances_are_refused_before_loading_unless_allowed(self):
    cfg = search_config.get_config()  # its study: docs/results/noise_floor_smollm2
    cfg.tolerances = (0.001, 0.01)
    with self.assertRaisesRegex(ValueError, r"tolerances=\(0.001, 0.01\) is invalid with "
                                r"data.windows=80: 0.1% is below 2 x .* it needs 501,855 tokens, "
                                r"data.windows >= 1,969 .*allow_unresolved=True"):
      exp_search.validate(cfg)
    cfg.tolerances, cfg.data.windows = (0.01,), 16  # 4,080 tokens: 1% needs 5,019
    with self.assertRaisesRegex(ValueError, "data.windows >= 20 "):
      exp_search.validate(cfg)
    cfg.data.windows = 20
    exp_search.validate(cfg)
    cfg.data.windows, cfg.allow_unresolved = 16, True
    exp_search.validate(cfg)
    # A study of another setup decides nothing: refused, unless allowed.
    cfg.allow_unresolved, cfg.data.windows, cfg.format.rounding = False, 20, "nearest"
    with self.assertRaisesRegex(ValueError, "cannot tell.*format.rounding: study 'truncate', "
                                "search 'nearest'"):
      exp_search.validate(cfg)


class WindowEvaluatorTest(absltest.TestCase):

  def test_prefix_reuse_gives_the_very_sums_of_a_forward_from_the_tokens(self):
    model, _ = models.load(str(testlib.make_checkpoint(testlib.tempdir(self) / "ckpt", n_layers=3,
                                                       d_model=32, d_ff=64)))
    windows = (np.arange(4 * 16).reshape(4, 16) * 7) % 50
    spec = ProductSpec(anda.AndaFormat(group_size=32))
    base = np.full((3, 4), 4, np.int32)
    candidates = np.stack(precision_search.candidates(base))  # one per (layer, type)
    kw = dict(score_from=0, batch_size=2, config_batch=4)
    fast = WindowEvaluator(model, windows, spec, reuse_prefix=True, **kw)
    plain = WindowEvaluator(model, windows, spec, reuse_prefix=False, **kw)
    for part in (slice(0, 2), slice(2, 4)):
      # Bit for bit: on this tiny model an unbatched prefix differs in the last bits.
      np.testing.assert_array_equal(fast(candidates, part, base), plain(candidates, part, base))
    self.assertEqual(plain.layer_passes, plain.layer_passes_without_reuse)
    # Per slice: 12 candidates x 2 windows x (3, 2, 1 layers), the prefix 4 copies x 2 windows x 2.
    self.assertEqual(fast.layer_passes, 2 * (4 * 2 * (3 + 2 + 1) + 4 * 2 * 2))
    self.assertEqual(fast.layer_passes_without_reuse, 2 * 12 * 2 * 3)
    # As a bounded round asks: one module type at a time, the slices alternating. Two a batch:
    # (layer 0, layer 1) from the tokens, (layer 2) from the kept state entering layer 2.
    by_type = candidates.reshape(3, 4, 3, 4).transpose(1, 0, 2, 3).reshape(12, 3, 4)
    kw["config_batch"] = 2
    kept = WindowEvaluator(model, windows, spec, reuse_prefix=True, **kw)
    plain = WindowEvaluator(model, windows, spec, reuse_prefix=False, **kw)
    for group in np.split(by_type, 4):
      for part in (slice(0, 2), slice(2, 4)):
        np.testing.assert_array_equal(kept(group, part, base), plain(group, part, base))
    # Per type and slice: 2 windows x (2 x 3 + 1 x 1 layers); the prefix (2 copies x 2 windows
    # x 2 layers) once per slice, not once per type.
    self.assertEqual(kept.layer_passes, 4 * 2 * 2 * (2 * 3 + 1) + 2 * (2 * 2 * 2))


def _full_rows(run_dir, split="calibration"):
  n = json.loads((run_dir / "setup.json").read_text())["windows"][split]["n"]
  return {k: r["window_nll"] for k, r in search_report.rows_by_key(
      search_log.read_rows(run_dir / "search.jsonl"), split).items() if r["windows"] == n}


class ExperimentTest(absltest.TestCase):
  """experiments.search end to end on a tiny checkpoint with the real evaluator."""

  def _config(self, tmp, run_name, **changes):
    cfg = search_config.get_config("quick")
    cfg.results_dir, cfg.run_name = str(tmp / "results"), run_name
    cfg.model.name, cfg.data.corpus = str(tmp / "ckpt"), str(tmp / "corpus.txt")
    cfg.format.group_sizes = (32,)  # at most the model's contraction length (32)
    cfg.data.seq_len, cfg.data.windows, cfg.test.windows = 16, 16, 8
    cfg.start_m, cfg.min_m, cfg.tolerances, cfg.uniform_m = 6, 2, (0.0, 0.01, 0.1), (2, 4, 6)
    cfg.window_batch, cfg.test.uniform, cfg.rule, cfg.race_windows = 8, True, "point", 8
    cfg.other_formats = ()
    for k, v in changes.items():
      setattr(cfg, k, v)
    return cfg

  def test_tiny_model_run_resume_racing_and_prefix_reuse(self):
    tmp = testlib.tempdir(self)
    testlib.make_checkpoint(tmp / "ckpt", n_layers=2, d_model=32, d_ff=64)
    (tmp / "corpus.txt").write_text(testlib.corpus_text())
    cfg = self._config(tmp, "tiny")
    with evaluate.count_compilations() as compiled:
      run_dir = exp_search.run(cfg)
    # Every round (the racing slice and the rest), the uniform curve, the test split: one program.
    self.assertLen(compiled, 1)
    chosen = json.loads((run_dir / "chosen.json").read_text())
    self.assertLen(chosen["chosen"], 3)
    self.assertGreater(sum(c["dropped_by_racing"] for c in chosen["chosen"]), 0)
    rows = search_report.rows_by_key(search_log.read_rows(run_dir / "search.jsonl"), "calibration")
    fp = rows[_key(np.zeros(4))]
    for c in chosen["chosen"]:  # never over tolerance on the calibration windows
      row = rows[_key(c["precision"])]
      if not c["within_tolerance"]:  # only where the start is over it (here 0%)
        self.assertLen(c["path"], 1)
        continue
      self.assertLessEqual(row["perplexity"] / fp["perplexity"] - 1, c["tolerance"])
      interval = perplexity.increase_interval(row, fp)
      self.assertAlmostEqual(c["loss"]["calibration"]["high"], interval.high)
    report = (run_dir / "report.md").read_text()
    self.assertIn("| 10% |", report)
    self.assertTrue((run_dir / "pareto.png").exists())

    # Resume: nothing is evaluated again, the file is unchanged, the choice is the same.
    before = (run_dir / "search.jsonl").read_text()
    exp_search.run(cfg)
    self.assertEqual((run_dir / "search.jsonl").read_text(), before)
    self.assertEqual(json.loads((run_dir / "chosen.json").read_text())["chosen"], chosen["chosen"])
    # The work of both processes is counted (the second evaluated nothing).
    work = json.loads((run_dir / "chosen.json").read_text())["work"]
    self.assertEqual(work["processes"], 2)
    self.assertEqual(work["calibration_window_evaluations"],
                     chosen["work"]["calibration_window_evaluations"])
    # A run from before work.json: its last process's record in chosen.json is kept, and the
    # report says that earlier processes are missing.
    old_chosen = json.loads((run_dir / "chosen.json").read_text())
    for k in ("processes", "earlier_unrecorded"):
      del old_chosen["work"][k]
    (run_dir / "chosen.json").write_text(json.dumps(old_chosen))
    (run_dir / "work.json").unlink()
    exp_search.run(cfg)
    work = json.loads((run_dir / "chosen.json").read_text())["work"]
    self.assertEqual((work["processes"], work["earlier_unrecorded"]), (2, True))
    self.assertEqual(work["calibration_window_evaluations"],
                     chosen["work"]["calibration_window_evaluations"])
    self.assertIn("The last 2 processes of this run (earlier ones were not recorded): search",
                  (run_dir / "report.md").read_text())
    # Cut short (after one round) and resumed: in all, the uninterrupted run's work, over two
    # processes, each one's in work.json.
    cut = self._config(tmp, "tiny_cut", max_rounds=1)
    cut_dir = exp_search.run(cut)
    cut.max_rounds = None
    exp_search.run(cut)
    cut_work = json.loads((cut_dir / "chosen.json").read_text())["work"]
    processes = json.loads((cut_dir / "work.json").read_text())["processes"].values()
    self.assertEqual(cut_work["processes"], 2)
    self.assertEqual(cut_work["calibration_window_evaluations"],
                     chosen["work"]["calibration_window_evaluations"])
    self.assertTrue(all(p["calibration_window_evaluations"] > 0 for p in processes))
    self.assertIn("This run, over 2 processes (resumed): search",
                  (cut_dir / "report.md").read_text())
    # The path on the test split, added by a rerun with test.path: every accepted configuration
    # on every test window, a table row each where a path has more than its start, and the plot.
    cut.test.path = True
    exp_search.run(cut)
    test_rows = search_report.rows_by_key(search_log.read_rows(cut_dir / "search.jsonl"), "test")
    cut_chosen = json.loads((cut_dir / "chosen.json").read_text())["chosen"]
    for c in cut_chosen:
      for config in c["path"]:
        self.assertEqual(test_rows[_key(config)]["windows"], 8)
    report = (cut_dir / "report.md").read_text()
    self.assertIn("## The path on the test split", report)
    self.assertLen(re.findall(r"^\| \d+(?:\.\d+)?% \| \d+ \| \d+\.\d\d \|", report, re.M),
                   sum(len(c["path"]) for c in cut_chosen if len(c["path"]) > 1))
    self.assertTrue((cut_dir / "path.png").exists())
    self.assertNotIn("The path on the test split", (run_dir / "report.md").read_text())
    # Without racing: the same choices, and the same sums for every configuration both ran whole.
    plain_dir = exp_search.run(self._config(tmp, "tiny_plain", race_windows=None))
    self.assertEqual([c["path"] for c in json.loads((plain_dir / "chosen.json").read_text())["chosen"]],
                     [c["path"] for c in chosen["chosen"]])
    raced, plain = _full_rows(run_dir), _full_rows(plain_dir)
    self.assertLessEqual(len(raced), len(plain))
    self.assertEqual({k: plain[k] for k in raced}, raced)

    # Per layer, with racing, the bound and prefix reuse: the same choices and sums as without.
    layer = dict(granularity="layer", start_m=4, tolerances=(0.02, 0.2), rule="upper")
    with evaluate.count_compilations() as compiled:
      fast_dir = exp_search.run(self._config(tmp, "tiny_layer", **layer))
    self.assertLen(compiled, 1)  # from a hidden state (the one from the tokens exists above)
    slow_dir = exp_search.run(self._config(tmp, "tiny_layer_plain", race_windows=None,
                                           prefix_reuse=False, bound=False, **layer))
    fast = json.loads((fast_dir / "chosen.json").read_text())
    slow = json.loads((slow_dir / "chosen.json").read_text())
    self.assertEqual([c["path"] for c in fast["chosen"]], [c["path"] for c in slow["chosen"]])
    self.assertGreater(len(fast["chosen"][-1]["path"]), 1)
    self.assertEqual(np.shape(fast["chosen"][0]["precision"]), (2, 4))
    fast_rows, slow_rows = _full_rows(fast_dir), _full_rows(slow_dir)
    self.assertEqual({k: slow_rows[k] for k in fast_rows}, fast_rows)  # bit for bit
    # (No saving asserted here: on this 2-layer model the prefix's copies per configuration batch
    # cost more layer passes than the skipped layers save; the saving is a 30-layer effect.)
    self.assertGreater(fast["work"]["layer_passes"], 0)
    self.assertEqual(slow["work"]["layer_passes"], slow["work"]["layer_passes_without_prefix_reuse"])
    self.assertIn("(layer mean)", (fast_dir / "report.md").read_text())
    self.assertRegex((fast_dir / "report.md").read_text(), r"\d+ skipped by the bound\.")
    self.assertEqual(sum(c["skipped_by_bound"] for c in slow["chosen"]), 0)
    self.assertTrue((fast_dir / "layers.png").exists())  # the chosen M per (layer, type)
    self.assertFalse((run_dir / "layers.png").exists())  # per type: the table says it all
    self.assertRegex((slow_dir / "report.md").read_text(),
                     r"One bit removed per round .* layer passes, \d+ without prefix reuse \(0% saved\)")
    # Several bits a round: fewer rounds, still within each tolerance on the calibration windows.
    many_dir = exp_search.run(self._config(tmp, "tiny_layer_accept", max_accept=4, **layer))
    many = json.loads((many_dir / "chosen.json").read_text())
    rows = search_report.rows_by_key(search_log.read_rows(many_dir / "search.jsonl"), "calibration")
    for c, one in zip(many["chosen"], fast["chosen"]):
      steps = np.diff(np.reshape(c["path"], (len(c["path"]), -1)).sum(1))
      self.assertTrue(np.all((-steps >= 1) & (-steps <= 4)))
      self.assertLessEqual(c["rounds"], one["rounds"])
      if not c["within_tolerance"]:  # the start is over 2%
        continue
      interval = perplexity.increase_interval(rows[_key(c["precision"])], rows[_key(np.zeros((2, 4)))])
      self.assertLessEqual(interval.high, c["tolerance"])
    self.assertGreater(max(c["rounds"] for c in fast["chosen"]) - max(c["rounds"] for c in many["chosen"]), 0)
    self.assertIn("Up to 4 of a round's fitting candidates accepted together",
                  (many_dir / "report.md").read_text())
    # Another setup in the same directory is refused.
    cfg.data.seq_len = 12
    with self.assertRaisesRegex(ValueError, "invalid for these settings: .*seq_len: 16 -> 12"):
      exp_search.run(cfg)

  def test_tiny_model_measures_other_formats_on_both_splits(self):
    tmp = testlib.tempdir(self)
    testlib.make_checkpoint(tmp / "ckpt", n_layers=2, d_model=32, d_ff=64)
    (tmp / "corpus.txt").write_text(testlib.corpus_text())
    cfg = self._config(tmp, "formats", other_formats=("mxint8", "nvfp4"), tolerances=(0.1,),
                       start_types=(4, 3, 5, 4), uniform_m=(4,))
    cfg.data.seq_len = 12  # not the other tests' shapes: their compilation counts stay theirs
    # A noise-floor study of this setup that resolves 10% on these windows: no override needed.
    cfg.noise_floor, cfg.allow_unresolved = str(_study(tmp, cfg)), False
    run_dir = exp_search.run(cfg)
    rows = search_log.read_rows(run_dir / "search.jsonl")
    model, tokenizer = loading.load_model(cfg.model)
    windows = loading.load_windows(cfg.data, tokenizer, dict(calibration=16, test=8))
    for name, fmt in (("mxint8", baselines.MXFormat("int8")), ("nvfp4", baselines.NVFP4Format())):
      for split, n in (("calibration", 16), ("test", 8)):
        row = search_report.rows_by_key(rows, split, name)[_key(np.ones(4))]
        self.assertEqual(row["windows"], n)
        # The same sums as an independent evaluation of the format at every site.
        want, _ = evaluate.window_nll_sums(
            model, windows[split], np.ones((1, 4), np.int32), ProductSpec(fmt),
            weights=evaluate.target_weights(n, 12, loading.score_from(cfg.data)), batch_size=8)
        np.testing.assert_allclose(row["window_nll"], want[0], rtol=1e-6)
      line = next(l for l in (run_dir / "report.md").read_text().splitlines()
                  if l.startswith(f"| {name} |"))
      self.assertEqual(line.split("|")[2].strip(),
                       f"{search_report.rows_by_key(rows, 'calibration', name)[_key(np.ones(4))]['perplexity']:.3f}")
    self.assertNotIn(_key(np.ones(4)), search_report.rows_by_key(rows, "calibration"))  # not Anda's
    chosen = json.loads((run_dir / "chosen.json").read_text())
    self.assertEqual((chosen["start_m"], chosen["chosen"][0]["path"][0]), ([4, 3, 5, 4], [4, 3, 5, 4]))
    self.assertEqual(chosen["other_formats"], ["mxint8", "nvfp4"])
    resolution = chosen["resolution"]
    self.assertEqual((chosen["allow_unresolved"], resolution["unchecked"]), (False, None))
    self.assertEqual(resolution["calibration_tokens"], 16 * 11)
    self.assertEqual(resolution["tolerances"][0]["pair"], "M8 vs fp")
    self.assertTrue(resolution["tolerances"][0]["resolved"])
    self.assertIn(f"| 10% | M8 vs fp | ±{100 * 0.001 * math.sqrt(1000 / 176):.2f}% | 1 | yes |",
                  (run_dir / "report.md").read_text())
    # Resumed: nothing evaluated again.
    before = (run_dir / "search.jsonl").read_text()
    exp_search.run(cfg)
    self.assertEqual((run_dir / "search.jsonl").read_text(), before)


  def test_tiny_model_search_among_mx_formats(self):
    """candidates='mx': the search walks MX formats by storage bits with the same machinery
    (one compiled program), records what each entry chose and its bits, and the rows are those
    of the per-type formats evaluated on their own."""
    tmp = testlib.tempdir(self)
    testlib.make_checkpoint(tmp / "ckpt", n_layers=2, d_model=32, d_ff=64)
    (tmp / "corpus.txt").write_text(testlib.corpus_text())
    cfg = self._config(tmp, "mx", candidates="mx", tolerances=(0.003, 0.05), rule="upper")
    with evaluate.count_compilations() as compiled:
      run_dir = exp_search.run(cfg)
    self.assertLen(compiled, 1)  # every round, the uniform formats and the test split
    names = list(exp_search.search_candidates.CANDIDATE_SETS["mx"])
    setup = json.loads((run_dir / "setup.json").read_text())
    chosen = json.loads((run_dir / "chosen.json").read_text())
    self.assertEqual((setup["candidates"], chosen["candidates"]), (names, names))
    rows = search_log.read_rows(run_dir / "search.jsonl")
    by_key = {split: search_report.rows_by_key(rows, split) for split in search_log.SPLITS}
    shape = cost.ModelShape(**setup["shape"])
    choice = baselines.FormatChoice(tuple(baselines.parse_format(n) for n in names))
    bits = np.array([16, 8.25, 8.25, 8.25, 6.25, 6.25, 4.25])
    model, tokenizer = loading.load_model(cfg.model)
    windows = loading.load_windows(cfg.data, tokenizer, dict(calibration=16, test=8))
    for c in chosen["chosen"]:
      config = np.asarray(c["precision"])
      self.assertEqual(c["formats"], [(["fp16"] + names)[v] for v in config])
      self.assertEqual(c["storage_bits"], cost.format_storage_bits(shape, config, choice))
      self.assertEqual(rows[0]["storage_bits"], 16.0)
      self.assertNotIn("mean_m", rows[0])
      for before, after in zip(c["path"], c["path"][1:]):  # one entry, one level down
        (e,) = np.flatnonzero(np.subtract(before, after))
        self.assertEqual(bits[after[e]], bits[bits < bits[before[e]]].max())
      fp, row = by_key["calibration"][_key(np.zeros(4))], by_key["calibration"][_key(config)]
      interval = perplexity.increase_interval(row, fp)
      self.assertLessEqual(interval.high, c["tolerance"])
      test_interval = perplexity.increase_interval(by_key["test"][_key(config)],
                                                   by_key["test"][_key(np.zeros(4))])
      self.assertAlmostEqual(c["loss"]["test"]["estimate"], test_interval.estimate)
      self.assertAlmostEqual(c["loss"]["test"]["high"], test_interval.high)
      # The same sums as the formats it names, each at its type, evaluated on their own.
      per_type = ProductSpec(tuple(choice.formats[max(v, 1) - 1] for v in config))
      want, _ = evaluate.window_nll_sums(
          model, windows["test"], np.minimum(config, 1)[None], per_type,
          weights=evaluate.target_weights(8, 16, loading.score_from(cfg.data)), batch_size=8)
      np.testing.assert_allclose(by_key["test"][_key(config)]["window_nll"], want[0], rtol=1e-6)
    self.assertGreater(len(chosen["chosen"][-1]["path"]), 4)  # past the 8.25-bit level
    self.assertEqual([u["label"] for u in chosen["uniform"]], [f"uniform {n}" for n in names])
    self.assertEqual([u["storage_bits"] for u in chosen["uniform"]], list(bits[1:]))
    self.assertTrue(all(u["loss"]["test"]["high"] >= u["loss"]["test"]["low"]
                        for u in chosen["uniform"]))
    report = (run_dir / "report.md").read_text()
    line = next(l for l in report.splitlines() if l.startswith("| mixed, tolerance 5% |"))
    self.assertIn(" | " + ", ".join(chosen["chosen"][-1]["formats"]) + " | ", line)
    self.assertIn(f" | {chosen['chosen'][-1]['storage_bits']:.2f} | ", line)
    self.assertIn("| uniform mxfp6_e3m2 | mxfp6_e3m2, mxfp6_e3m2, mxfp6_e3m2, mxfp6_e3m2 |", report)
    self.assertIn("| `fp16_fma_lanes` |", report)
    self.assertNotIn("Against the paper's figures", report)
    # Resumed: nothing evaluated again. Other candidates in the same folder: refused.
    before = (run_dir / "search.jsonl").read_text()
    exp_search.run(cfg)
    self.assertEqual((run_dir / "search.jsonl").read_text(), before)
    cfg.candidates = "nvfp4_mx"
    with self.assertRaisesRegex(ValueError,
                                r"invalid for these settings: .*candidates: \['mxint8'"):
      exp_search.run(cfg)

  def test_a_split_too_short_for_a_tolerance_is_refused_after_loading(self):
    tmp = testlib.tempdir(self)
    testlib.make_checkpoint(tmp / "ckpt", n_layers=2, d_model=32, d_ff=64)
    (tmp / "corpus.txt").write_text(testlib.corpus_text())
    cfg = self._config(tmp, "short", tolerances=(0.001,))
    cfg.data.seq_len = 20  # not the other tests' shapes: their compilation counts stay theirs
    cfg.noise_floor, cfg.allow_unresolved, cfg.data.windows = str(_study(tmp, cfg)), False, None
    exp_search.validate(cfg)  # how many windows the split holds is known only once loaded
    # 0.1% needs (2 x 0.001 x sqrt(1000) / 0.001)^2 = 4,000 scored tokens: more than the split.
    with self.assertRaisesRegex(ValueError, r"invalid with data.windows=\d+: 0.1% .* it needs "
                                "4,000 tokens, data.windows >= 211 of seq_len=20"):
      exp_search.run(cfg)
    self.assertFalse((tmp / "results" / "short").exists())  # nothing was written
    # The quick config's override runs it, and says so in chosen.json and the report.
    cfg.allow_unresolved, cfg.data.windows = True, 16
    run_dir = exp_search.run(cfg)
    chosen = json.loads((run_dir / "chosen.json").read_text())
    self.assertTrue(chosen["allow_unresolved"])
    self.assertFalse(chosen["resolution"]["tolerances"][0]["resolved"])
    self.assertIn("**`allow_unresolved=True`**: the search ran although its calibration tokens do "
                  "not resolve 0.1%", (run_dir / "report.md").read_text())


def _study(tmp, cfg) -> pathlib.Path:
  """A noise-floor study's folder for cfg's setup: M = 8 vs FP at ±0.1% on 1,000 tokens."""
  folder = tmp / "noise_floor"
  folder.mkdir(exist_ok=True)
  (folder / "setup.json").write_text(json.dumps(dict(
      model=dict(name=cfg.model.name, int4_group_size=None,
                 sha256=loading.model_sha256(cfg.model.name)),
      data=dict(corpus=cfg.data.corpus), group_size=cfg.format.group_sizes[0],
      exponent_bits=cfg.format.exponent_bits, rounding=cfg.format.rounding)))
  (folder / "noise_floor.csv").write_text(
      "pair,windows,tokens,subsets,half_width,spread,estimate\n"
      "M8 vs fp,2,500.0,2,0.0001,0.0,0.0\nM8 vs fp,4,1000.0,1,0.001,,0.0\n"
      "M8~ vs M8,4,1000.0,1,0.5,,0.0\n")
  return folder


class BenchTest(absltest.TestCase):

  def test_benchmark_runs_both_ways_to_the_same_choices(self):
    tmp = testlib.tempdir(self)
    ckpt = testlib.make_checkpoint(tmp / "ckpt", n_layers=4, d_model=32, d_ff=64)
    (tmp / "corpus.txt").write_text(testlib.corpus_text())
    out = bench_search.run(["search", f"--model={ckpt}", f"--corpus={tmp / 'corpus.txt'}",
                            "--group_size=32", "--seq_len=16", "--windows=16", "--race_windows=8",
                            "--type_start_m=6", "--layer_start_m=5,3",
                            "--layer_rounds_from_type=2"])
    self.assertEqual(list(out)[:3], ["type", "layer from M=5", "layer from M=3"])
    self.assertStartsWith(list(out)[3], "layer from the per-type result")
    self.assertLen(out, 4)
    for runs in out.values():
      plain, fast = runs["plain"]["results"], runs["fast"]["results"]
      self.assertEqual({t: [c.tolist() for c in r.path] for t, r in plain.items()},
                       {t: [c.tolist() for c in r.path] for t, r in fast.items()})
      self.assertLessEqual(runs["fast"]["window_evaluations"], runs["plain"]["window_evaluations"])
    layer = out["layer from M=5"]
    self.assertLess(layer["fast"]["layer_passes"], layer["plain"]["layer_passes"])


@pytest.mark.real_model
class QuickConfigTest(absltest.TestCase):
  """configs/search.py:quick on SmolLM2: racing and the bound choose what full evaluation
  chooses."""

  def test_racing_and_the_bound_choose_what_full_evaluation_chooses(self):
    tmp = testlib.tempdir(self)
    chosen = {}
    for name, race, bound in (("fast", search_config.get_config("quick").race_windows, True),
                              ("plain", None, False)):
      cfg = search_config.get_config("quick")
      cfg.results_dir, cfg.run_name, cfg.race_windows, cfg.bound = str(tmp), name, race, bound
      chosen[name] = json.loads((exp_search.run(cfg) / "chosen.json").read_text())["chosen"]
    self.assertEqual([c["path"] for c in chosen["fast"]], [c["path"] for c in chosen["plain"]])
    self.assertGreater(sum(c["dropped_by_racing"] for c in chosen["fast"]), 0)


if __name__ == "__main__":
  absltest.main()
