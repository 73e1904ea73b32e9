"""Tests for experiments/sweep.py on a tiny checkpoint: outputs, compile count, resume, config errors."""

import csv
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

from absl import logging
from absl.testing import absltest
import numpy as np

from anda_jax.evaluation import evaluate
from anda_jax.evaluation import intervals
from anda_jax.matmul import ProductSpec
from anda_jax import models
from anda_jax.numerics import baselines as anda_formats
from anda_jax.numerics.baselines import MXFormat, NVFP4Format, PerTokenFormat
from configs import formats as formats_config
from configs import sweep as sweep_config
from experiments.harness import compile_cache
from experiments.harness import config_checks
from experiments.harness import loading
from experiments.harness import perplexity
from experiments.harness import run_folder
from experiments import sweep
import testlib


_REPO = pathlib.Path(__file__).resolve().parents[1]


def flatten(d: dict, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}."""
  out = {}
  for k, v in d.items():
    out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
  return out


class SweepTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp())
    cls.ckpt = testlib.make_checkpoint(cls.tmp / "ckpt")
    (cls.tmp / "corpus.txt").write_text(testlib.corpus_text())

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def config(self, run_name, **overrides):
    c = sweep_config.get_config()
    c.run_name = run_name
    c.results_dir = str(self.tmp / "results")
    c.model.name = str(self.ckpt)
    c.data.corpus = str(self.tmp / "corpus.txt")
    c.data.seq_len, c.data.windows = 24, 5
    c.format.group_sizes = (8, 16)
    c.mantissa_bits = (2, 5)
    c.config_batch = 4
    for k, v in overrides.items():  # "data__seq_len" sets c.data.seq_len
      *parents, name = k.split("__")
      target = c
      for p in parents:
        target = target[p]
      target[name] = v
    return c

  def rows(self, run_name):
    path = self.tmp / "results" / run_name / "results.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines()]

  def test_full_run_outputs_and_one_compile_per_group_size(self):
    with evaluate.count_compilations() as compiled:
      out = sweep.run(self.config("full"))
    self.assertLen(compiled, 2)  # G = 8 and G = 16
    rows = self.rows("full")
    self.assertLen(rows, 1 + 2 * 2 * 5)
    self.assertEqual({r["id"] for r in rows}, set(out))
    self.assertEqual(rows[0]["id"], "fp")
    base = rows[0]["ppl"]
    by_id = {r["id"]: r for r in rows}
    self.assertEqual(by_id["G16-up-M5"]["precision"], [0, 0, 5, 0])
    self.assertEqual(by_id["G8-all-M2"]["precision"], [2, 2, 2, 2])
    self.assertEqual(by_id["G8-all-M2"]["storage_bits"], 1 + 2 + 8 / 8)
    self.assertTrue(any(abs(r["ppl"] / base - 1) > 1e-3 for r in rows[1:]))
    run_dir = self.tmp / "results" / "full"
    for name in ("results.csv", "ppl_vs_m.png", "heatmap.png", "setup.json"):
      self.assertTrue((run_dir / name).exists(), name)
    self.assertLen((run_dir / "results.csv").read_text().splitlines(), 1 + len(rows))
    table = sweep.report(run_dir)
    self.assertIn(f"baseline perplexity: {base:.4f}", table)
    self.assertIn("M=5", table)
    # What the weights were is recorded and reported.
    weights = json.loads((run_dir / "setup.json").read_text())["weights"]
    self.assertEqual(weights, models.load(str(self.ckpt))[0].weight_types.counts())
    self.assertTrue(weights)
    self.assertTrue(table.startswith("weights (stored type -> what it became: tensors): "), table)

  def test_every_increase_carries_its_paired_interval(self):
    # G = 4: a group size that test_full_run... (which counts compilations) does not use.
    cfg = self.config("intervals", format__group_sizes=(4,), mantissa_bits=(2, 5), types=("up", "all"))
    sweep.run(cfg)
    rows = {r["id"]: r for r in self.rows("intervals")}
    base = rows["fp"]
    for r in rows.values():  # the per-window sums are kept, and they add up to the row's loss
      self.assertLen(r["window_nll"], 5)
      self.assertEqual(r["window_tokens"], [23.0] * 5)
      self.assertAlmostEqual(sum(r["window_nll"]) / r["tokens"], r["nll"], places=12)
    run_dir = self.tmp / "results" / "intervals"
    table = sweep.report(run_dir)
    csv_rows = {r["id"]: r for r in csv.DictReader((run_dir / "results.csv").open())}
    self.assertEqual((csv_rows["fp"]["rel_increase_low"], csv_rows["fp"]["rel_increase_high"]), ("", ""))
    for name in ("G4-up-M2", "G4-up-M5", "G4-all-M2", "G4-all-M5"):
      # Paired over the same windows, against the baseline's sums.
      want = intervals.relative_increase(rows[name]["window_nll"], base["window_nll"], [23.0] * 5)
      self.assertAlmostEqual(float(csv_rows[name]["rel_increase_low"]), want.low, places=12)
      self.assertAlmostEqual(float(csv_rows[name]["rel_increase_high"]), want.high, places=12)
      self.assertLess(want.low, want.high)
      ratio = rows[name]["ppl"] / base["ppl"]
      shown = (f"{ratio - 1:+.1%} ±{100 * want.half_width:.1f}" if ratio < 2
               else f"x{ratio:.1f} ±{want.half_width:.1f}")
      self.assertIn(shown, " ".join(table.split()))
    self.assertIn("±: half the width of the 95% paired-bootstrap interval over the windows", table)

    # Rows of an older run hold no per-window sums: shown without an interval, never an error.
    path = run_dir / "results.jsonl"
    old = [{k: v for k, v in r.items() if k not in ("window_nll", "window_tokens")} for r in rows.values()]
    path.write_text("".join(json.dumps(r) + "\n" for r in old))
    table = sweep.report(run_dir)
    self.assertNotIn("±", table)
    self.assertRegex(table, r"4   all +\d+\.\d\d \( *x?[+\-\d.%]+\) ")
    csv_rows = list(csv.DictReader((run_dir / "results.csv").open()))
    self.assertEqual({(r["rel_increase_low"], r["rel_increase_high"]) for r in csv_rows}, {("", "")})
    for name in ("ppl_vs_m.png", "heatmap.png"):
      self.assertGreater((run_dir / name).stat().st_size, 1000)

  def test_an_interval_needs_per_window_sums_on_the_same_windows(self):
    base = dict(perplexity.window_fields([30.0, 40.0, 35.0], [10.0, 10.0, 10.0]))
    row = dict(perplexity.window_fields([31.0, 40.5, 36.0], [10.0, 10.0, 10.0]))
    iv = perplexity.increase_interval(row, base)
    self.assertEqual(iv, intervals.relative_increase([31.0, 40.5, 36.0], [30.0, 40.0, 35.0], [10.0] * 3))
    self.assertIsNone(perplexity.increase_interval({}, base))  # a row of an older run
    self.assertIsNone(perplexity.increase_interval(row, None))
    self.assertIsNone(perplexity.increase_interval(row, dict(base, window_tokens=[10.0, 10.0, 9.0])))
    self.assertIsNone(perplexity.increase_interval(dict(perplexity.window_fields([1.0], [5.0])),
                                               dict(perplexity.window_fields([1.0], [5.0]))))  # one window
    nan = perplexity.increase_interval(dict(perplexity.window_fields([31.0, np.nan, 36.0], [10.0] * 3)), base)
    self.assertTrue(math.isnan(nan.low))
    self.assertEqual(perplexity.interval_columns(iv), dict(rel_increase_low=iv.low, rel_increase_high=iv.high))
    self.assertEqual(perplexity.interval_columns(None), dict(rel_increase_low="", rel_increase_high=""))

  def test_interrupted_run_resumes_with_every_configuration_once(self):
    cfg = self.config("resume", format__group_sizes=(8,))
    original = run_folder.Results.append
    calls = []

    def append_then_die(self_, rows):
      original(self_, rows)
      calls.append(len(rows))
      if len(calls) == 2:
        raise KeyboardInterrupt  # after k = 8 rows (two batches of 4)

    with mock.patch.object(run_folder.Results, "append", append_then_die):
      with self.assertRaises(KeyboardInterrupt):
        sweep.run(cfg)
    done_before = {r["id"]: r["ppl"] for r in self.rows("resume")}
    self.assertLen(done_before, 8)
    # A torn last line (killed mid-write) is dropped, not kept.
    path = self.tmp / "results" / "resume" / "results.jsonl"
    with path.open("a") as f:
      f.write('{"id": "G8-o-M')
    sweep.run(cfg)
    ids = [r["id"] for r in self.rows("resume")]
    self.assertLen(ids, 1 + 2 * 5)
    self.assertCountEqual(ids, set(ids))  # every configuration exactly once
    for r in self.rows("resume")[:8]:
      self.assertEqual(r["ppl"], done_before[r["id"]])
    with evaluate.count_compilations() as compiled:
      sweep.run(cfg)  # nothing left: no work, no compilation
    self.assertLen(self.rows("resume"), 11)
    self.assertEmpty(compiled)

  def test_other_settings_are_refused_in_the_same_run_folder(self):
    sweep.run(self.config("settings", format__group_sizes=(8,), mantissa_bits=(3,), types=("all",)))
    with mock.patch.object(models, "load", side_effect=AssertionError("model loaded")):
      # Refused before the model is loaded, with one message saying what changed.
      for change, message in ((dict(data__seq_len=12), "data.seq_len: 24 -> 12"),
                              (dict(window_batch=2), "window_batch: None -> 2"),
                              (dict(config_batch=2), "config_batch: 4 -> 2")):
        with self.subTest(str(change)):
          with self.assertRaisesRegex(ValueError, "run folder .*settings' is invalid for these "
                                                  f"settings: .*{message}.*choose another --config.run_name"):
            sweep.run(self.config("settings", format__group_sizes=(8,), mantissa_bits=(3,),
                                  types=("all",), **change))

  def test_a_changed_model_or_corpus_is_refused(self):
    ckpt = testlib.make_checkpoint(self.tmp / "ckpt_changing")
    corpus = self.tmp / "corpus_changing.txt"
    corpus.write_text(testlib.corpus_text())
    kw = dict(format__group_sizes=(4,), mantissa_bits=(3,), types=("all",), model__name=str(ckpt),
              data__corpus=str(corpus))
    first = sweep.run(self.config("changing", **kw))
    # Other weights at the same path: the rows of two models must not mix.
    testlib.make_checkpoint(ckpt, seed=1)
    with self.assertRaisesRegex(ValueError, "invalid for these settings: the model's content "
                                            r"changed.*model\.sha256: "):
      sweep.run(self.config("changing", **kw))
    testlib.make_checkpoint(ckpt)  # the original weights again: the run resumes
    self.assertEqual(sweep.run(self.config("changing", **kw)), first)
    corpus.write_text(testlib.corpus_text(seed=1))  # other text: other token windows
    with self.assertRaisesRegex(ValueError, "invalid for these settings: .*windows_sha256: "):
      sweep.run(self.config("changing", **kw))

  def test_windows_with_bos_first_are_part_of_the_setup(self):
    load = loading.load_model

    def load_with_bos(*args, **kwargs):  # a tokenizer that adds BOS, as Gemma 3's GGUF says
      model, tokenizer = load(*args, **kwargs)
      tokenizer.bos_id, tokenizer.add_bos = 1, True
      return model, tokenizer

    kw = dict(format__group_sizes=(8,), mantissa_bits=(3,), types=("all",))
    setup = lambda run: json.loads((self.tmp / "results" / run / "setup.json").read_text())
    with mock.patch.object(loading, "load_model", side_effect=load_with_bos):
      with_bos = sweep.run(self.config("bos", **kw))  # data.bos "auto": BOS first
      self.assertIs(setup("bos")["bos_first"], True)
      self.assertNotIn("bos", setup("bos")["data"])
      # Forced on, the windows are the same: the run resumes with nothing left to do.
      self.assertEqual(sweep.run(self.config("bos", data__bos="true", **kw)), with_bos)
      with self.assertRaisesRegex(ValueError, r"invalid for these settings: .*bos_first: True -> "
                                              r"\(not recorded\).*windows_sha256: "):
        sweep.run(self.config("bos", data__bos="false", **kw))
      forced_off = sweep.run(self.config("no_bos", data__bos="false", **kw))
    self.assertNotIn("bos_first", setup("no_bos"))
    self.assertNotIn("bos", setup("no_bos")["data"])
    # A tokenizer that adds no BOS: "auto" cuts the windows as before, so that run resumes.
    self.assertEqual(sweep.run(self.config("no_bos", **kw)), forced_off)
    with self.assertRaisesRegex(ValueError, r"invalid for these settings: .*bos_first: \(not "
                                            r"recorded\) -> True"):
      with mock.patch.object(loading, "load_model", side_effect=load_with_bos):
        sweep.run(self.config("no_bos", **kw))
    self.assertNotEqual(with_bos["fp"]["ppl"], forced_off["fp"]["ppl"])

  def test_rows_without_a_setup_are_never_adopted(self):
    kw = dict(format__group_sizes=(8,), mantissa_bits=(3,), types=("all",))
    sweep.run(self.config("no_setup", data__windows=2, **kw))
    run_dir = self.tmp / "results" / "no_setup"
    (run_dir / "setup.json").unlink()  # an older version's run folder, or the file removed
    with mock.patch.object(models, "load", side_effect=AssertionError("model loaded")):
      with self.assertRaisesRegex(ValueError, f"run folder '{run_dir}' is invalid: it holds "
                                              "heatmap.png, ppl_vs_m.png, results.csv, "
                                              "results.jsonl but no setup.json"):
        sweep.run(self.config("no_setup", data__windows=3, **kw))
    self.assertFalse((run_dir / "setup.json").exists())
    self.assertLen(self.rows("no_setup"), 2)

  def test_a_failure_after_loading_leaves_nothing_that_refuses_the_corrected_command(self):
    kw = dict(format__group_sizes=(8,), mantissa_bits=(3,), types=("all",), data__windows=2)
    run_dir = self.tmp / "results" / "corrected"
    small = testlib.make_checkpoint(self.tmp / "small_vocab", vocab=64)  # a tokenizer of 256+ ids
    with self.assertRaisesRegex(ValueError, r"must be in \[0, vocab=64\)"):
      sweep.run(self.config("corrected", model__name=str(small), **kw))
    self.assertFalse(run_dir.exists())
    # What an older version left in that case, the lock and a setup.json beside no rows, does
    # not refuse the corrected command either.
    run_dir.mkdir(parents=True)
    (run_dir / ".lock").write_text("")
    (run_dir / "setup.json").write_text(json.dumps(dict(model=dict(name=str(small)))))
    rows = sweep.run(self.config("corrected", **kw))
    self.assertCountEqual(rows, ["fp", "G8-all-M3"])
    setup = json.loads((run_dir / "setup.json").read_text())
    self.assertEqual(setup["model"]["name"], str(self.ckpt))

  def test_a_run_resumes_only_on_as_many_model_shards(self):
    # Two host devices. Config shards split the configurations, whole: no bit moves, and a run
    # resumes on them. Model shards add the row-parallel products' partial sums in another
    # order: a run started on one is refused on two.
    script = f"""
        import json, pathlib
        from configs import sweep as sweep_config
        from experiments import sweep
        def config(run_name, mesh):
          c = sweep_config.get_config()
          c.run_name, c.results_dir, c.mesh = run_name, {str(self.tmp / "mesh_results")!r}, mesh
          c.model.name, c.data.corpus = {str(self.ckpt)!r}, {str(self.tmp / "corpus.txt")!r}
          c.data.seq_len, c.data.windows, c.format.group_sizes = 24, 6, (8,)
          c.mantissa_bits, c.config_batch = (2, 4, 8), 4
          return c
        out = dict(one=sweep.run(config("one", None)))
        out["config_shards"] = sweep.run(config("config_shards", (2, 1)))
        sweep.run(config("one", (2, 1)))  # resumes: nothing left to do
        try:
          sweep.run(config("one", (1, 2)))
        except ValueError as e:
          out["refused"] = str(e)
        out["model_shards"] = sweep.run(config("model_shards", (1, 2)))
        out["setup"] = json.loads(pathlib.Path({str(self.tmp / "mesh_results")!r}, "model_shards",
                                               "setup.json").read_text())
        print(json.dumps(out))
        """
    out = testlib.run_with_cpu_devices(self, script, 2)
    one, by_config, by_model = out["one"], out["config_shards"], out["model_shards"]
    self.assertEqual({k: r["window_nll"] for k, r in by_config.items()},
                     {k: r["window_nll"] for k, r in one.items()})
    self.assertRegex(out["refused"], r"invalid for these settings: .*model_shards: "
                                     r"\(not recorded\) -> 2.*choose another --config.run_name")
    self.assertEqual(out["setup"]["model_shards"], 2)
    self.assertNotEqual({k: r["window_nll"] for k, r in by_model.items()},
                        {k: r["window_nll"] for k, r in one.items()})
    np.testing.assert_allclose(by_model["fp"]["ppl"], one["fp"]["ppl"], rtol=1e-6)
    for k in one:  # the tiny model is far from chaotic; SmolLM2 at low M is not (configs/common.py)
      np.testing.assert_allclose(by_model[k]["ppl"], one[k]["ppl"], rtol=1e-4, err_msg=k)

  def test_broken_lines_are_moved_aside_and_recomputed(self):
    cfg = self.config("broken", format__group_sizes=(4,), mantissa_bits=(3,), types=("qkv", "o", "all"))
    first = sweep.run(cfg)
    path = self.tmp / "results" / "broken" / "results.jsonl"
    lines = path.read_bytes().splitlines()
    self.assertLen(lines, 4)
    # Garbage, {}, a row without "id" and non-UTF-8 bytes, in place of three rows and between.
    broken = [b"garbage", b"{}", b'{"type": "o", "ppl": 3.0}', b'{"id": "G4-all-M3\xff"}']
    path.write_bytes(b"\n".join([lines[0], broken[0], broken[1], broken[2], broken[3]]) + b"\n")
    with testlib.warnings_logged(logging) as warnings:
      again = sweep.run(cfg)  # no error: the three missing rows are computed again
    self.assertEqual({k: v["ppl"] for k, v in again.items()}, {k: v["ppl"] for k, v in first.items()})
    self.assertLen(self.rows("broken"), 4)
    self.assertEqual((path.parent / "results.jsonl.broken").read_bytes().splitlines(), broken)
    warned = "\n".join(warnings)
    for line_no in (2, 3, 4, 5):
      self.assertIn(f"{path}:{line_no}:", warned)
    self.assertLen((path.parent / "results.csv").read_text().splitlines(), 5)

  def test_non_finite_perplexities_are_recorded_and_reported_as_such(self):
    real = evaluate.window_nll_sums

    def overflow_and_nan(model, windows, precisions, spec, *, on_batch, **kw):
      def patched(idx, sums):  # per-window sums [configs, windows]
        sums = np.array(sums)
        for j, i in enumerate(idx):
          if list(precisions[i]) == [3, 3, 3, 3]:
            sums[j] = 1e6  # perplexity exp(1e6 / tokens) overflows a float
          elif list(precisions[i]) == [0, 0, 3, 0]:
            sums[j, 1] = np.nan  # one window's loss
        on_batch(idx, sums)
      return real(model, windows, precisions, spec, on_batch=patched, **kw)

    cfg = self.config("nonfinite", format__group_sizes=(4,), mantissa_bits=(3, 5), types=("up", "all"))
    with mock.patch.object(evaluate, "window_nll_sums", overflow_and_nan):
      rows = sweep.run(cfg)
    self.assertEqual((rows["G4-all-M3"]["ppl"], rows["G4-all-M3"]["finite"]), (None, False))
    self.assertEqual((rows["G4-up-M3"]["ppl"], rows["G4-up-M3"]["nll"], rows["G4-up-M3"]["finite"]),
                     (None, None, False))
    self.assertTrue(rows["G4-all-M5"]["finite"])
    self.assertIsNone(rows["G4-up-M3"]["window_nll"][1])  # JSON has no NaN
    run_dir = self.tmp / "results" / "nonfinite"
    for line in (run_dir / "results.jsonl").read_text().splitlines():
      json.loads(line, parse_constant=lambda c: self.fail(f"{c} written"))  # strict JSON
    csv_rows = {r["id"]: r for r in csv.DictReader((run_dir / "results.csv").open())}
    self.assertEqual((csv_rows["G4-all-M3"]["ppl"], csv_rows["G4-all-M3"]["finite"]), ("inf", "False"))
    self.assertEqual((csv_rows["G4-up-M3"]["ppl"], csv_rows["G4-up-M3"]["rel_increase"]), ("nan", "nan"))
    table = sweep.report(run_dir)
    self.assertRegex(table, r"4    up +nan +\d")
    self.assertRegex(table, r"4   all +inf +\d")
    for name in ("ppl_vs_m.png", "heatmap.png"):
      self.assertGreater((run_dir / name).stat().st_size, 1000)
    # Rows of an older run that wrote NaN and Infinity (JSON that Python reads) report too.
    with (run_dir / "results.jsonl").open("a") as f:
      f.write(json.dumps(dict(rows["G4-all-M5"], id="G4-all-M7", mantissa_bits=7, ppl=math.nan)) + "\n")
      f.write(json.dumps(dict(rows["fp"], ppl=math.inf)) + "\n")
    self.assertIn("baseline perplexity: inf (not finite)", sweep.report(run_dir))

  def test_bad_configs_fail_before_heavy_work(self):
    cases = [
        (dict(mantissa_bits=(4, 25)), r"mantissa_bits\[1\]=25 is invalid.*\[1, 24\]"),
        (dict(mantissa_bits=(0,)), r"mantissa_bits\[0\]=0 is invalid"),
        (dict(mantissa_bits=()), r"mantissa_bits=\(\) is invalid: must be a non-empty list"),
        (dict(format__group_sizes=(8, 64)), "group_sizes holds 64, which is invalid: larger than "
                                            "the model's smallest contraction length 32"),
        (dict(format__group_sizes=(2000,)), r"format.group_sizes\[0\]=2000 is invalid"),
        (dict(impl="exact"), "impl='exact' is invalid"),
        (dict(window_batch=0), "window_batch=0 is invalid"),
        (dict(data__stride=25), r"data.stride=25 is invalid.*\[1, 24\]"),
        (dict(data__corpus=str(self.tmp / "missing.txt")), "data.corpus=.*missing.txt.*neither"),
        (dict(model__name=str(self.tmp / "missing.gguf")), "model.name=.*missing.gguf.*neither"),
        (dict(types=("qkv", "mlp")), "types=.*mlp.*invalid"),
        (dict(format__rounding="up"), "rounding='up' is invalid"),
        (dict(data__split="train"), "data.split='train' is invalid"),
    ]
    with mock.patch.object(evaluate, "window_nll_sums", side_effect=AssertionError("heavy work started")):
      for overrides, message in cases:
        with self.subTest(str(overrides)):
          with self.assertRaisesRegex(ValueError, message):
            sweep.run(self.config("bad", **overrides))
      cfg = self.config("bad")
      cfg.unlock()
      cfg.batchsize = 3
      with self.assertRaisesRegex(ValueError, r"unknown config keys \['batchsize'\]"):
        sweep.run(cfg)
    self.assertFalse((self.tmp / "results" / "bad" / "results.jsonl").exists())

  def test_other_formats_next_to_anda(self):
    """The formats study (configs/formats.py) on the tiny model: each other format through
    ProductSpec at its sites, one compilation each, storage bits by hand, resumable."""
    kw = dict(format__group_sizes=(8,), format__rounding="nearest", mantissa_bits=(2, 5),
              types=("all",), other_format_types=("all", "up"))
    cfg = self.config("formats", other_formats=("mxfp4", "nvfp4:", "int8_token"), **kw)
    with evaluate.count_compilations() as compiled:
      sweep.run(cfg)
    self.assertLen(compiled, 1 + 3)  # G = 8, and one per other format
    rows = {r["id"]: r for r in self.rows("formats")}
    self.assertCountEqual(rows, ["fp", "G8-all-M2", "G8-all-M5", "mxfp4-all", "mxfp4-up",
                                 "nvfp4-all", "nvfp4-up", "int8_token-all", "int8_token-up"])
    self.assertEqual((rows["nvfp4-up"]["format"], rows["nvfp4-up"]["precision"]), ("nvfp4", [0, 0, 1, 0]))
    self.assertEqual(rows["G8-all-M5"]["format"], "anda")
    # Tiny model: K = 32 at qkv, o, up and 64 at down; elements per token 32, 32, 32, 64.
    # NVFP4 4 + 8/16 + 32/K; INT8 per token 8 + 32/K; MXFP4 4 + 8/32.
    self.assertEqual(rows["mxfp4-all"]["storage_bits"], 4.25)
    self.assertAlmostEqual(rows["nvfp4-all"]["storage_bits"], (96 * 5.5 + 64 * 5.0) / 160)
    self.assertAlmostEqual(rows["nvfp4-up"]["storage_bits"], 5.5)
    self.assertAlmostEqual(rows["int8_token-all"]["storage_bits"], (96 * 9 + 64 * 8.5) / 160)
    # The same numbers as evaluating the format through ProductSpec at those sites directly
    # (in the same batches: float32 sums depend on the batch shape).
    model, windows, *_ = loading.load_model_and_windows(cfg)
    for name, fmt in (("mxfp4", MXFormat("fp4_e2m1")), ("nvfp4", NVFP4Format()),
                      ("int8_token", PerTokenFormat("int8"))):
      sums, _ = evaluate.window_nll_sums(model, windows, [[1, 1, 1, 1], [0, 0, 1, 0]],
                                         ProductSpec(fmt), config_batch=cfg.config_batch)
      self.assertEqual([rows[f"{name}-all"]["window_nll"], rows[f"{name}-up"]["window_nll"]],
                       sums.tolist())
    self.assertNotEqual(rows["mxfp4-all"]["ppl"], rows["int8_token-all"]["ppl"])
    run_dir = self.tmp / "results" / "formats"
    self.assertGreater((run_dir / "pareto.png").stat().st_size, 1000)
    text = (run_dir / "formats.md").read_text()
    self.assertIn("| mxfp4 | 4.250 | ", text)
    self.assertIn("| anda G=8 M=5 | 7.000 | ", text)
    self.assertRegex(text, r"\| int8_token \| .* \| .* \| .* \| .* \|")  # one site at a time
    self.assertIn("## Anda against each format at equal bits", text)
    csv_rows = {r["id"]: r for r in csv.DictReader((run_dir / "results.csv").open())}
    self.assertEqual(csv_rows["nvfp4-up"]["format"], "nvfp4")
    # Resumed: nothing to do; a format added later is the only work.
    with evaluate.count_compilations() as compiled:
      sweep.run(cfg)
      self.assertEmpty(compiled)
      sweep.run(self.config("formats", other_formats=("mxfp4", "nvfp4", "int8_token", "mxint8"), **kw))
    self.assertLen(compiled, 1)
    self.assertLen(self.rows("formats"), 9 + 2)

  def test_formats_report_compares_at_equal_bits(self):
    """formats.md from hand-made rows: who is ahead, by the paired interval of the two formats'
    perplexity ratio, and the cheapest Anda at least as accurate."""
    run_dir = self.tmp / "results" / "formats_report"
    run_dir.mkdir(parents=True)
    tokens = [10.0] * 4
    noise = np.array([0.3, -0.2, 0.1, -0.2])

    def row(id_, fmt, bits, loss, g=None, m=None, wiggle=0.0):  # loss: mean NLL added per token
      sums = 20.0 + 10 * loss + wiggle * noise
      return dict(id=id_, format=fmt, type="fp" if id_ == "fp" else "all", group_size=g,
                  mantissa_bits=m, ppl=math.exp(sums.sum() / 40), nll=sums.sum() / 40, tokens=40.0,
                  storage_bits=bits, window_nll=list(sums), window_tokens=tokens)

    rows = [row("fp", "anda", 16.0, 0.0),
            row("G32-all-M3", "anda", 4.25, 0.5, 32, 3), row("G32-all-M5", "anda", 6.25, 0.05, 32, 5),
            row("G32-all-M7", "anda", 8.25, 0.001, 32, 7, wiggle=1.0),
            row("mxfp4-all", "mxfp4", 4.25, 0.2),       # ahead of Anda at 4.25 bits
            row("mxfp6_e3m2-all", "mxfp6_e3m2", 6.25, 0.1),  # behind Anda at 6.25
            row("mxint8-all", "mxint8", 8.25, 0.0),     # not resolved from Anda M = 7
            row("fp8_token-all", "fp8_token", 8.5, 0.001, wiggle=1.0)]  # Anda M = 7's own sums
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = sweep.report(run_dir)
    lines = {l.split(" | ")[0].strip("| "): l for l in table.splitlines()
             if l.startswith(("| mx", "| fp8"))}
    self.assertRegex(lines["mxfp4"], r"anda G=32 M=3 \(4.250\) \| .* \| \+34.99% \[\+34.99, \+34.99\]: "
                                     r"mxfp4 ahead \| anda G=32 M=5 \(6.250\) \| -2.000 \|")
    self.assertRegex(lines["mxfp6_e3m2"], r"-4.88% .*: Anda ahead \| anda G=32 M=5 \(6.250\) \| \+0.000 \|")
    self.assertRegex(lines["mxint8"], r"anda G=32 M=7 \(8.250\) .*: not resolved \| none on this grid \| – \|")
    self.assertIn("anda G=32 M=7 (8.250) | +0.10% [-1.88, +2.12] | +0.00% [+0.00, +0.00]: identical "
                  "on these windows |", lines["fp8_token"])
    self.assertGreater((run_dir / "pareto.png").stat().st_size, 1000)

  def test_bad_other_formats_fail_before_heavy_work(self):
    cases = [
        (dict(other_formats=("mxfp5",)), r"other_formats\[0\]: format name 'mxfp5' is invalid: 'mxfp5' "
                                         r"must be one of \('mxfp4', "),
        (dict(other_formats=("mxfp4", "mxfp4:block_size=32")), r"other_formats\[1\]='mxfp4:block_size=32' "
                                                               "is invalid: it repeats 'mxfp4'"),
        (dict(other_formats=("nvfp4:rounding=truncate",)), "takes no options"),
        (dict(other_formats=("mxfp4",), other_format_types=("al",)), r"types=\('al',\) is invalid"),
        (dict(other_formats=("mxfp4",), impl="bitserial"), "impl='bitserial' is invalid with other_formats"),
    ]
    with mock.patch.object(evaluate, "window_nll_sums", side_effect=AssertionError("heavy work started")):
      for overrides, message in cases:
        with self.subTest(str(overrides)):
          with self.assertRaisesRegex(ValueError, message):
            sweep.run(self.config("bad_formats", **overrides))
    self.assertFalse((self.tmp / "results" / "bad_formats").exists())

  def test_formats_config_is_the_sweep_with_other_formats(self):
    full, quick = formats_config.get_config(), formats_config.get_config("quick")
    for c in (full, quick):
      config_checks.check_keys(c, sweep_config.get_config())  # the sweep runs it
      self.assertEqual(c.other_formats, anda_formats.FORMAT_NAMES)
      self.assertEqual((c.format.rounding, c.types), ("nearest", ("all",)))
    # The full study runs on the full sweep's windows: only these settings differ from it.
    diff = {k: v for k, v in flatten(full.to_dict()).items()
            if flatten(sweep_config.get_config().to_dict())[k] != v}
    self.assertEqual(diff, {"run_name": "formats_smollm2", "format.rounding": "nearest",
                            "types": ("all",), "other_formats": anda_formats.FORMAT_NAMES,
                            "other_format_types": ("all", "qkv", "o", "up", "down"),
                            "config_batch": 5})

  def test_quick_variant_is_the_readme_quickstart(self):
    # The README's quickstart table was measured with exactly these settings: the full sweep's
    # but for these.
    quick = flatten(sweep_config.get_config("quick").to_dict())
    full = flatten(sweep_config.get_config().to_dict())
    self.assertEqual(quick.keys(), full.keys())
    self.assertEqual({k: v for k, v in quick.items() if full[k] != v},
                     {"run_name": "quickstart", "format.group_sizes": (64,), "mantissa_bits": (3, 4, 6, 8),
                      "data.seq_len": 128, "data.windows": 3, "config_batch": 3, "window_batch": 3})
    self.assertEqual((full["data.split"], full["data.stride"], full["format.rounding"], full["impl"]),
                     ("test", None, "truncate", "fake"))
    with self.assertRaisesRegex(ValueError, "config argument 'quik' is invalid"):
      sweep_config.get_config("quik")

  def test_a_second_process_compiles_nothing_with_the_compilation_cache(self):
    cache = self.tmp / "asset_cache"
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(ANDA_JAX_CACHE=str(cache), JAX_PLATFORMS="cpu")

    def sweep_process(run_name, *flags):
      out = subprocess.run(
          [sys.executable, "-m", "experiments.sweep", "--config=configs/sweep.py",
           f"--config.model.name={self.ckpt}", f"--config.data.corpus={self.tmp / 'corpus.txt'}",
           "--config.data.seq_len=24", "--config.data.windows=2", "--config.format.group_sizes=(8,)",
           "--config.mantissa_bits=(3,)", "--config.types=('all',)",
           f"--config.results_dir={self.tmp / 'results'}", f"--config.run_name={run_name}", *flags],
          cwd=_REPO, env=env, capture_output=True, text=True, timeout=300)
      self.assertEqual(out.returncode, 0, out.stderr[-3000:])
      return out.stdout

    folder = compile_cache.compilation_cache_dir  # under ANDA_JAX_CACHE, one folder per CPU
    with mock.patch.dict(os.environ, {"ANDA_JAX_CACHE": str(cache)}):
      folder = folder()
    first = sweep_process("cache_1")
    self.assertRegex(first, rf"compilation cache {folder}: 0 programs loaded, [1-9]\d* compiled and stored")
    self.assertNotEmpty(list(folder.iterdir()))
    # Another run (a new run folder: everything is evaluated again) in a new process.
    second = sweep_process("cache_2")
    self.assertRegex(second, rf"compilation cache {folder}: [1-9]\d* programs loaded, 0 compiled and stored")
    # Off: compiled again, nothing said about a cache.
    off = sweep_process("cache_3", "--config.compilation_cache=False")
    self.assertNotIn("compilation cache", off)
    self.assertEqual(len(list(folder.iterdir())), int(re.search(r"(\d+) compiled and stored", first)[1]))

  def test_command_line_unknown_key(self):
    out = subprocess.run([sys.executable, "-m", "experiments.sweep", "--config=configs/sweep.py:quick",
                          "--config.nonexistent=1"], cwd=_REPO, capture_output=True, text=True, timeout=120)
    # One line naming the key and the valid keys nearest to it, exit status 2 (tests/cli_test.py
    # has the other command-line errors).
    self.assertEqual((out.returncode, out.stderr.count("\n")), (2, 1), out.stderr)
    self.assertRegex(out.stderr, r"^error: config key 'nonexistent' .* is invalid: configs/sweep.py has "
                                 r"no such setting; valid keys: .*config_batch, .*data, ")


if __name__ == "__main__":
  absltest.main()
