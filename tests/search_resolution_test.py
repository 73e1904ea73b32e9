"""experiments.search_resolution: the half-width a tolerance is decided with, predicted from a
noise-floor study, and the refusal of a search that cannot resolve a tolerance."""

import json
import math

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from configs import search as search_config
from experiments import search_resolution
import testlib


def _config(study, **changes):
  cfg = search_config.get_config()
  cfg.noise_floor = str(study)
  for key, value in changes.items():
    *parents, name = key.split(".")
    target = cfg
    for part in parents:
      target = target[part]
    target[name] = value
  return cfg


def _write_study(folder, rows, **setup_changes):
  """A noise-floor study's folder for configs/search.py's setup with these csv rows
  (pair, tokens, half_width, estimate)."""
  folder.mkdir(parents=True, exist_ok=True)
  cfg = search_config.get_config()
  setup = dict(model=dict(name=cfg.model.name, int4_group_size=None, sha256="abc"),
               data=dict(corpus=cfg.data.corpus), group_size=cfg.format.group_sizes[0],
               exponent_bits=cfg.format.exponent_bits, rounding=cfg.format.rounding)
  setup.update(setup_changes)
  (folder / "setup.json").write_text(json.dumps(setup))
  lines = ["pair,windows,tokens,subsets,half_width,spread,estimate"]
  lines += [f"{pair},1,{tokens},1,{hw},,{estimate}" for pair, tokens, hw, estimate in rows]
  (folder / "noise_floor.csv").write_text("\n".join(lines) + "\n")
  return folder


ROWS = [("M8 vs fp", 4000.0, 0.006, -0.009), ("M8 vs fp", 1000.0, 0.01, -0.009),
        ("M6 vs fp", 4000.0, 0.02, 0.06), ("M8~ vs M8", 4000.0, 0.5, 0.0),
        ("fp~ vs fp", 4000.0, 0.4, 0.0)]


class ResolutionTest(parameterized.TestCase):

  def test_pairs_against_fp_at_their_most_tokens(self):
    study = _write_study(testlib.tempdir(self) / "study", ROWS)
    _, pairs = search_resolution.read_noise_floor(study)
    self.assertEqual(set(pairs), {"M8 vs fp", "M6 vs fp"})  # not the perturbation pairs
    self.assertAlmostEqual(pairs["M8 vs fp"]["scale"], 0.006 * math.sqrt(4000))
    self.assertEqual(pairs["M8 vs fp"]["tokens"], 4000.0)

  def test_each_tolerance_takes_the_pair_nearest_its_loss(self):
    study = _write_study(testlib.tempdir(self) / "study", ROWS)
    cfg = _config(study, tolerances=(0.001, 0.01, 0.05))
    record = search_resolution.resolution(cfg, 80)
    self.assertEqual([t["pair"] for t in record["tolerances"]],
                     ["M8 vs fp", "M8 vs fp", "M6 vs fp"])
    self.assertEqual(record["calibration_tokens"], 80 * 255)
    self.assertIsNone(record["unchecked"])

  @parameterized.parameters(range(20))
  def test_tokens_needed_is_the_least_that_resolves(self, seed):
    rng = np.random.default_rng(seed)
    half_width, tolerance = rng.uniform(0.001, 0.05), rng.uniform(0.0005, 0.05)
    study = _write_study(testlib.tempdir(self) / "study",
                         [("M8 vs fp", 1000.0, half_width, 0.0)])
    cfg = _config(study, tolerances=(float(tolerance),))
    scale = half_width * math.sqrt(1000)
    t = search_resolution.resolution(cfg, 16)["tolerances"][0]
    n = t["tokens_needed"]
    # An independent check: at n tokens the tolerance is 2 half-widths or more, at n - 1 not.
    self.assertLessEqual(2 * scale / math.sqrt(n), tolerance * (1 + 1e-12))
    if n > 1:
      self.assertGreater(2 * scale / math.sqrt(n - 1), tolerance)
    self.assertEqual(t["windows_needed"], math.ceil(n / 255))
    self.assertAlmostEqual(t["half_width"], scale / math.sqrt(16 * 255))
    # Resolved from windows_needed on, not below.
    for windows, resolved in ((t["windows_needed"], True), (t["windows_needed"] - 1, False)):
      if windows > 0:
        got = search_resolution.resolution(cfg, windows)["tolerances"][0]["resolved"]
        self.assertEqual(got, resolved)

  def test_a_zero_tolerance_is_never_resolved(self):
    study = _write_study(testlib.tempdir(self) / "study", ROWS)
    cfg = _config(study, tolerances=(0.0,))
    t = search_resolution.resolution(cfg, 10 ** 6)["tolerances"][0]
    self.assertEqual((t["tokens_needed"], t["windows_needed"], t["resolved"]), (None, None, False))
    with self.assertRaisesRegex(ValueError, "0% is below .* no number of tokens resolves it"):
      search_resolution.check(cfg, 10)

  def test_refusal_names_the_tokens_and_windows_needed_unless_allowed(self):
    study = _write_study(testlib.tempdir(self) / "study", ROWS)
    cfg = _config(study, tolerances=(0.01, 0.001))
    # 0.001: M8, (2 x 0.006 x sqrt(4000) / 0.001)^2 = 576,000 tokens.
    with self.assertRaisesRegex(ValueError, r"tolerances=\(0.01, 0.001\) is invalid with "
                                r"data.windows=16: 0.1% is below 2 x the half-width predicted on "
                                r"4,080 scored calibration tokens \(±.*\); it needs 576,000 "
                                r"tokens, data.windows >= 2,259 of seq_len=256"):
      search_resolution.check(cfg, 16)
    cfg.allow_unresolved = True
    record = search_resolution.check(cfg, 16)
    self.assertEqual([t["resolved"] for t in record["tolerances"]], [False, False])
    self.assertTrue(record["allow_unresolved"])

  @parameterized.named_parameters(
      ("model", dict(model=dict(name="other", int4_group_size=None)), "model.name: study 'other'"),
      ("rounding", dict(rounding="nearest"), "format.rounding: study 'nearest'"),
      ("group_size", dict(group_size=32), "format.group_size: study 32, search 64"),
      ("finetune", dict(finetune=dict(file="params.safetensors")), "finetune: study"))
  def test_a_study_of_another_setup_is_not_used(self, change, message):
    study = _write_study(testlib.tempdir(self) / "study", ROWS, **change)
    cfg = _config(study, tolerances=(0.01,))
    record = search_resolution.resolution(cfg, 10 ** 4)
    self.assertIn(message, record["unchecked"])
    self.assertEqual(record["tolerances"], [])
    with self.assertRaisesRegex(ValueError, "cannot tell whether the tolerances are resolved: "
                                ".*" + message + ".*allow_unresolved=True"):
      search_resolution.check(cfg, 10 ** 4)
    cfg.allow_unresolved = True
    self.assertEqual(search_resolution.check(cfg, 10 ** 4)["unchecked"], record["unchecked"])

  def test_the_model_content_is_compared_once_known(self):
    study = _write_study(testlib.tempdir(self) / "study", ROWS)
    cfg = _config(study, tolerances=(0.05,))
    self.assertIsNone(search_resolution.resolution(cfg, 100, "abc")["unchecked"])
    self.assertIn("model content (sha256): study 'abc', search 'def'",
                  search_resolution.resolution(cfg, 100, "def")["unchecked"])

  def test_bos_first_windows_are_compared_once_known(self):
    # A study of windows cut from the stream does not stand for a search of BOS-first windows
    # (the first targets of a window cost another loss), nor the other way around.
    plain = _write_study(testlib.tempdir(self) / "plain", ROWS)
    cfg = _config(plain, tolerances=(0.05,))
    self.assertIsNone(search_resolution.resolution(cfg, 100, "abc", bos_first=False)["unchecked"])
    self.assertIn("BOS first (data.bos): study False, search True",
                  search_resolution.resolution(cfg, 100, "abc", bos_first=True)["unchecked"])
    with_bos = _write_study(testlib.tempdir(self) / "bos", ROWS, bos_first=True)
    cfg = _config(with_bos, tolerances=(0.05,))
    self.assertIsNone(search_resolution.resolution(cfg, 100, "abc", bos_first=True)["unchecked"])
    self.assertIn("BOS first (data.bos): study True, search False",
                  search_resolution.resolution(cfg, 100, "abc", bos_first=False)["unchecked"])

  def test_a_missing_study_is_named(self):
    cfg = _config(testlib.tempdir(self) / "nowhere", tolerances=(0.01,))
    with self.assertRaisesRegex(ValueError, "noise_floor=.*nowhere.* is invalid: it must be the "
                                "folder of a noise-floor study"):
      search_resolution.check(cfg, 100)


class ShippedConfigTest(absltest.TestCase):
  """configs/search.py against the recorded study docs/results/noise_floor_smollm2."""

  def test_the_numbers_the_config_states(self):
    cfg = search_config.get_config()
    cfg.tolerances = (0.01, 0.005, 0.001)
    record = search_resolution.resolution(cfg, cfg.data.windows)
    self.assertIsNone(record["unchecked"])
    self.assertEqual([t["tokens_needed"] for t in record["tolerances"]], [5019, 20075, 501855])
    self.assertEqual(record["calibration_tokens"], 20400)

  def test_the_default_resolves_its_tolerances_and_the_recorded_runs_did_not(self):
    cfg = search_config.get_config()
    self.assertTrue(all(t["resolved"] for t in search_resolution.check(cfg, cfg.data.windows)[
        "tolerances"]))
    cfg.tolerances = (0.001, 0.01)
    record = search_resolution.resolution(cfg, 16)
    self.assertEqual([t["resolved"] for t in record["tolerances"]], [False, False])
    quick = search_config.get_config("quick")
    self.assertTrue(quick.allow_unresolved)
    self.assertFalse(any(t["resolved"] for t in search_resolution.check(
        quick, quick.data.windows)["tolerances"]))


if __name__ == "__main__":
  absltest.main()
