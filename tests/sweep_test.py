"""Tests for experiments/sweep.py on a tiny checkpoint: outputs, compile count, resume, config errors."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest

from anda_jax import evaluate
from configs import quickstart
from configs import sweep_smollm2
from experiments import sweep

sys.path.insert(0, os.path.dirname(__file__))
import eval_testlib  # pylint: disable=g-import-not-at-top,wrong-import-position

_REPO = pathlib.Path(__file__).resolve().parents[1]


class SweepTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp())
    cls.ckpt = eval_testlib.make_checkpoint(cls.tmp / "ckpt")
    (cls.tmp / "corpus.txt").write_text(eval_testlib.corpus_text())

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def config(self, run_name, **overrides):
    c = sweep_smollm2.get_config()
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
    before = evaluate.total_compiles()
    out = sweep.run(self.config("full"))
    self.assertEqual(evaluate.total_compiles() - before, 2)  # G = 8 and G = 16
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

  def test_interrupted_run_resumes_with_every_configuration_once(self):
    cfg = self.config("resume", format__group_sizes=(8,))
    original = sweep.Results.append
    calls = []

    def append_then_die(self_, rows):
      original(self_, rows)
      calls.append(len(rows))
      if len(calls) == 2:
        raise KeyboardInterrupt  # after k = 8 rows (two batches of 4)

    with mock.patch.object(sweep.Results, "append", append_then_die):
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
    before = evaluate.total_compiles()
    sweep.run(cfg)  # nothing left: no work, no compilation
    self.assertLen(self.rows("resume"), 11)
    self.assertEqual(evaluate.total_compiles(), before)

  def test_other_settings_are_refused_in_the_same_run_folder(self):
    sweep.run(self.config("settings", format__group_sizes=(8,), mantissa_bits=(3,), types=("all",)))
    with self.assertRaisesRegex(ValueError, "written for other settings.*seq_len"):
      sweep.run(self.config("settings", format__group_sizes=(8,), mantissa_bits=(3,), types=("all",),
                            data__seq_len=12))

  def test_bad_configs_fail_before_heavy_work(self):
    cases = [
        (dict(mantissa_bits=(4, 25)), r"mantissa_bits=\(4, 25\) is invalid.*\[1, 24\]"),
        (dict(mantissa_bits=(0,)), r"mantissa_bits=\(0,\) is invalid"),
        (dict(format__group_sizes=(8, 64)), "group_sizes holds 64: larger than the model's smallest "
                                            "contraction length 32"),
        (dict(format__group_sizes=(2000,)), r"group_sizes=\(2000,\) is invalid"),
        (dict(data__corpus=str(self.tmp / "missing.txt")), "data.corpus=.*missing.txt.*neither"),
        (dict(model__name=str(self.tmp / "missing.gguf")), "model.name=.*missing.gguf.*neither"),
        (dict(types=("qkv", "mlp")), "types=.*mlp.*invalid"),
        (dict(format__rounding="up"), "rounding='up' is invalid"),
        (dict(data__split="train"), "data.split='train' is invalid"),
    ]
    with mock.patch.object(evaluate, "nll_sums", side_effect=AssertionError("heavy work started")):
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

  def test_command_line_unknown_key_and_shipped_configs(self):
    for cfg in (quickstart.get_config(), sweep_smollm2.get_config()):
      sweep.check_keys(cfg, sweep.reference_config())
    out = subprocess.run([sys.executable, "-m", "experiments.sweep", "--config=configs/quickstart.py",
                          "--config.nonexistent=1"], cwd=_REPO, capture_output=True, text=True, timeout=120)
    self.assertNotEqual(out.returncode, 0)
    self.assertIn("nonexistent", out.stderr)


if __name__ == "__main__":
  absltest.main()
