"""Tests for experiments/harness/loading.py in every experiment that evaluates a loaded model
(sweep, sensitivity, search, noise_floor, finetune): what only the loaded model and its windows
say (its context, its vocabulary, how many windows a split holds, the INT4 weights the
bit-serial kernel takes) is refused before the run folder gets anything, and a trained-parameter
file is applied only to the model and format it was trained for."""

import json
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from anda_jax import data
from anda_jax import finetune
from anda_jax import models
from configs import finetune as finetune_config
from configs import noise_floor as noise_floor_config
from configs import search as search_config
from configs import sensitivity as sensitivity_config
from configs import sweep as sweep_config
from experiments import finetune as exp_finetune
from experiments import noise_floor
from experiments import search
from experiments import sensitivity
from experiments import sweep
from experiments.harness import loading
import testlib

EXPERIMENTS = ("sweep", "sensitivity", "search", "noise_floor", "finetune")
_RUN = dict(sweep=sweep.run, sensitivity=sensitivity.run, search=search.run,
            noise_floor=noise_floor.run, finetune=exp_finetune.run)
_CONFIG = dict(sweep=sweep_config, sensitivity=sensitivity_config, search=search_config,
               noise_floor=noise_floor_config, finetune=finetune_config)


class _TinyRuns(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = testlib.tempdir(cls)
    cls.ckpt, cls.corpus = testlib.tiny_run_inputs(cls.tmp)

  def config(self, experiment: str, run_name: str = "run"):
    """The experiment's quick config on the tiny model: small, valid, every setting checked."""
    c = _CONFIG[experiment].get_config("quick")
    c.results_dir, c.run_name = str(self.tmp / "results"), f"{run_name}_{experiment}"
    c.model.name, c.data.corpus = str(self.ckpt), str(self.corpus)
    c.data.seq_len, c.data.windows = 16, 4
    c.format.group_sizes = (8,)
    if experiment in ("sweep", "sensitivity", "noise_floor", "finetune"):
      c.mantissa_bits = (3,)
    if experiment == "sweep":
      c.types = ("all",)
    elif experiment == "noise_floor":
      c.subsets = (2, 4)
    elif experiment == "search":
      c.test.windows, c.race_windows, c.other_formats = 2, None, ()
    elif experiment == "finetune":
      c.val.windows, c.test.windows, c.window_batch = 2, 2, None
    return c

  def refused(self, cfg, experiment: str, message: str):
    """`message` from the experiment's run, after the model was loaded, and no run folder."""
    with mock.patch.object(models, "load", wraps=models.load) as load:
      with self.assertRaisesRegex(ValueError, message):
        _RUN[experiment](cfg)
    self.assertTrue(load.called)
    self.assertFalse((self.tmp / "results" / cfg.run_name).exists())


class ModelFitsTest(_TinyRuns):

  @parameterized.parameters(*EXPERIMENTS)
  def test_windows_longer_than_the_context_are_refused(self, experiment):
    short = testlib.make_checkpoint(self.tmp / f"short_{experiment}")
    config = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps(dict(config, max_position_embeddings=12)))
    cfg = self.config(experiment, "long")
    cfg.model.name = str(short)
    self.refused(cfg, experiment, rf"^data.seq_len=16 is invalid for model.name='.*short_"
                                  rf"{experiment}': longer than the model's context of 12 "
                                  "positions$")

  @parameterized.parameters(*EXPERIMENTS)
  def test_token_ids_beyond_the_vocabulary_are_refused(self, experiment):
    # A tokenizer of other weights: the byte-level BPE has at least 256 ids, the model 64.
    small = testlib.make_checkpoint(self.tmp / f"small_vocab_{experiment}", vocab=64)
    cfg = self.config(experiment, "vocab")
    cfg.model.name = str(small)
    self.refused(cfg, experiment, r"^model.name=.* is invalid: its tokenizer's \w+ windows of "
                                  r"data.corpus=.* hold token ids \d+..\d+: must be in \[0, "
                                  r"vocab=64\) \(the tokenizer belongs to other weights\)$")

  @parameterized.parameters(
      ("sweep", "data.windows", 100000, "the test split"),
      ("sensitivity", "data.windows", 100000, "the calibration split"),
      ("noise_floor", "data.windows", 100000, "the calibration split"),
      ("search", "data.windows", 100000, "the calibration split"),
      ("search", "test.windows", 100000, "the test split"),
      ("finetune", "data.windows", 100000, "the calibration articles but the last"),
      ("finetune", "val.windows", 100000, "the last 1 calibration articles"),
      ("finetune", "test.windows", 100000, "the test split"))
  def test_more_windows_than_a_split_holds_are_refused(self, experiment, setting, n, where):
    cfg = self.config(experiment, "many")
    section, key = setting.split(".")
    cfg[section][key] = n
    self.refused(cfg, experiment, rf"^{setting}=100000 is invalid: {where}.* of data.corpus=.* "
                                  r"holds \d+ windows of 16 tokens; ask for at most \d+ \(or None: "
                                  r"all\)$")

  def test_every_window_of_the_split_is_the_default_and_subsets_must_divide_them(self):
    # data.windows None: all of them; the noise floor's subsets are checked against that number.
    cfg = self.config("noise_floor", "all_windows")
    cfg.data.windows, cfg.subsets = None, (2, 500)
    self.refused(cfg, "noise_floor", r"^subsets=\(2, 500\) is invalid: each must divide the \d+ "
                                     r"windows evaluated .* and 500 does not$")
    model, windows, *_ = loading.load_model_and_windows(cfg)
    self.assertGreater(len(windows), 8)
    del model

  @parameterized.parameters(*EXPERIMENTS)
  def test_every_experiment_evaluates_bos_first_windows_and_records_it(self, experiment):
    load = loading.load_model

    def load_with_bos(*args, **kwargs):  # a tokenizer that adds BOS, as Gemma 3's GGUF says
      model, tokenizer = load(*args, **kwargs)
      tokenizer.bos_id, tokenizer.add_bos = 1, True
      return model, tokenizer

    cfg = self.config(experiment, "bos")
    with mock.patch.object(loading, "load_model", side_effect=load_with_bos), \
         mock.patch.object(data, "token_windows", wraps=data.token_windows) as cut:
      _RUN[experiment](cfg)
    self.assertTrue(cut.called)
    self.assertTrue(all(call.kwargs["bos"] is True for call in cut.call_args_list))
    setup = json.loads((self.tmp / "results" / cfg.run_name / "setup.json").read_text())
    self.assertIs(setup["bos_first"], True)

  @parameterized.parameters("sweep", "sensitivity", "search", "noise_floor")
  def test_the_bit_serial_kernel_on_float_weights_names_the_setting(self, experiment):
    cfg = self.config(experiment, "bitserial")
    cfg.impl = "bitserial"
    self.refused(cfg, experiment, r"^impl='bitserial' is invalid for this model: its qkv, o, up, "
                                  "down weights are float, and the bit-serial kernel takes INT4 "
                                  r"weights; set --config.model.int4_group_size \(e.g. 32\) to "
                                  r"quantize them, or use impl='fake'$")


class FinetuneFileTest(_TinyRuns):
  """`--config.finetune=<file>`: refused for another model or format, before the model loads."""

  def params_file(self, name: str, **metadata):
    model, _ = models.load(str(self.ckpt))
    params = {n: np.asarray(finetune._get(model, n)) for n in finetune.norm_names(model)}
    path = self.tmp / f"{name}.safetensors"
    finetune.save_params(path, params, dict(dict(
        subset="norms", model=str(self.ckpt), model_sha256=loading.model_sha256(str(self.ckpt)),
        int4_group_size=None, format=dict(group_size=8, exponent_bits=8, rounding="truncate")),
        **metadata))
    return str(path)

  def test_a_file_of_another_model_is_refused_naming_both(self):
    # Another model of the same shapes takes the parameters without an error of its own.
    other = testlib.make_checkpoint(self.tmp / "other_weights", seed=1)
    tuned = self.params_file("tuned")
    for experiment in ("sweep", "sensitivity", "search", "noise_floor"):
      with self.subTest(experiment):
        cfg = self.config(experiment, "other_model")
        cfg.model.name, cfg.finetune = str(other), tuned
        with mock.patch.object(models, "load", side_effect=AssertionError("model loaded")):
          with self.assertRaisesRegex(
              ValueError, rf"^finetune='{tuned}' is invalid for model.name='{other}': its "
                          rf"parameters were trained on model '{self.ckpt}' \(sha256 "
                          r"[0-9a-f]{12}…\), another model than this one \(sha256 "
                          r"[0-9a-f]{12}…\); apply a file trained on this model$"):
            _RUN[experiment](cfg)
        self.assertFalse((self.tmp / "results" / cfg.run_name).exists())

  def test_a_file_of_another_format_or_int4_grouping_is_refused(self):
    cases = [(dict(format=dict(group_size=16, exponent_bits=8, rounding="truncate")), {},
              r"invalid with format.group_sizes=\(8,\), exponent_bits=8, rounding='truncate': its "
              r"parameters were trained in Anda with G = 16, exponent_bits=8, rounding='truncate'"),
             ({}, dict(rounding="nearest"),
              "rounding='nearest': its parameters were trained in Anda with G = 8, "
              "exponent_bits=8, rounding='truncate'"),
             (dict(int4_group_size=32), {}, "invalid with model.int4_group_size=None: its "
                                            "parameters were trained on the weights quantized "
                                            "with int4_group_size=32")]
    for i, (metadata, fmt, message) in enumerate(cases):
      with self.subTest(message):
        cfg = self.config("sweep", "other_format")
        cfg.finetune = self.params_file(f"format_{i}", **metadata)
        for k, v in fmt.items():
          cfg.format[k] = v
        with self.assertRaisesRegex(ValueError, message):
          loading.check_finetune_file(cfg, loading.model_sha256(cfg.model.name))
    # The model and format it was trained for: applied.
    cfg = self.config("sweep", "same")
    cfg.finetune = self.params_file("same")
    loading.check_finetune_file(cfg, loading.model_sha256(cfg.model.name))
    cfg.format.group_sizes = (8, 16)  # a sweep over other group sizes too is another format
    with self.assertRaisesRegex(ValueError, r"format.group_sizes=\(8, 16\)"):
      loading.check_finetune_file(cfg, loading.model_sha256(cfg.model.name))


if __name__ == "__main__":
  absltest.main()
