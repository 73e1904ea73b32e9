"""Tests for anda_jax.finetune and experiments/finetune.py on a tiny checkpoint: straight-through
gradients, a training step that lowers the loss, LoRA with B = 0 changing nothing, the parameter
file, bit-exact resume, the `finetune` setting of the experiments, and the experiment itself."""

import json
import pathlib

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
from flax import nnx
import numpy as np

from anda_jax.evaluation import evaluate
from anda_jax import finetune
from anda_jax.matmul import ProductSpec
from anda_jax import models
from anda_jax.numerics import anda
from anda_jax.numerics import int4
import testlib
from anda_jax.models import layers
from configs import finetune as finetune_config
from configs import search as search_config
from experiments import finetune as exp_finetune
from experiments import finetune_report
from experiments.harness import config_checks
from experiments.harness import loading
from experiments import search as exp_search

SPEC = ProductSpec(anda.AndaFormat(group_size=16))
MS = (0, 1, 2, 3, 4, 6, 8, 12, 23)


class _TinyModel(parameterized.TestCase):
  """A tiny LLaMA (2 layers, D = 32) with RTN INT4 weights and random windows."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = testlib.tempdir(cls)
    cls.ckpt = testlib.make_checkpoint(cls.tmp / "ckpt", n_layers=2, d_model=32, d_ff=64)
    cls.model, _ = models.load(str(cls.ckpt), int4_group_size=16)
    rng = np.random.default_rng(0)
    cls.windows = rng.integers(0, 256, (10, 16)).astype(np.int32)

  def fresh(self):
    return nnx.clone(self.model)


class GradientTest(_TinyModel):

  def test_product_gradient_is_straight_through(self):
    x = testlib.heavy_tailed(1, (6, 64))
    w = testlib.int4_weights(2, 64, 24, 16, False)
    g = jnp.asarray(np.random.default_rng(3).normal(size=(6, 24)), jnp.float32)

    @jax.jit
    def grads(x, w_float, m):  # M traced: one program for every M
      product = lambda x, wf: jnp.sum(g * jnp.matmul(SPEC.activation(x, m), wf, precision="highest"))
      return jax.grad(product, argnums=(0, 1))(x, w_float)

    w_float = int4.as_float(w)
    fx, fw = jax.grad(lambda x, wf: jnp.sum(g * jnp.matmul(x, wf, precision="highest")),
                      argnums=(0, 1))(x, w_float)
    for m in MS:
      gx, gw = grads(x, w_float, jnp.int32(m))
      self.assertEqual(gx.shape, x.shape)
      self.assertEqual(gw.shape, w_float.shape)
      self.assertTrue(np.isfinite(gx).all() and np.isfinite(gw).all(), f"M={m}")
      # d/dx: the straight-through estimator is the identity, at every M.
      testlib.assert_bit_exact(gx, fx, f"M={m}")
      if m == 0:
        testlib.assert_bit_exact(gw, fw)
      else:  # d/dW sees the quantized activation
        self.assertFalse(np.array_equal(gw, fw), f"M={m}")
    # Through ProductSpec itself (the product every model runs), against the float product.
    gx0 = jax.grad(lambda x: jnp.sum(g * SPEC(x, w, 0)))(x)
    testlib.assert_bit_exact(gx0, jax.grad(lambda x: jnp.sum(g * jnp.matmul(x, w_float, precision="highest")))(x))

  @parameterized.parameters("norms", "lora")
  def test_model_gradient_at_m0_is_the_float_gradient(self, subset):
    graphdef, state = nnx.split(self.model)
    params = finetune.init_params(self.model, subset, 4, jax.random.key(0))
    if subset == "lora":  # B = 0 has no gradient for A: move B off zero
      params = {k: v + 0.01 if k.endswith(".b") else v for k, v in params.items()}
    tokens = self.windows[:2]

    @jax.jit
    def grads(params, precision):
      return jax.grad(finetune.loss)(params, graphdef, state, tokens, precision, SPEC)

    float_grads = jax.jit(jax.grad(lambda p: finetune.loss(p, graphdef, state, tokens, None, SPEC)))(params)
    for m in MS:
      got = grads(params, jnp.full(4, m, jnp.int32))
      for name, value in got.items():
        self.assertEqual(value.shape, params[name].shape, name)
        self.assertTrue(np.isfinite(value).all(), f"{name}, M={m}")
        self.assertGreater(float(jnp.abs(value).max()), 0.0, f"{name}, M={m}")
        if m == 0:
          testlib.assert_bit_exact(value, float_grads[name], name)

  @parameterized.parameters("norms", "lora")
  def test_training_lowers_the_loss_on_a_fixed_batch(self, subset):
    batch = self.windows[:2]  # batch_size 2 of 2 windows: every step sees this batch
    precision = np.full(4, 3, np.int32)
    cfg = finetune.TrainConfig(subset=subset, rank=4, steps=8, batch_size=2, learning_rate=1e-2,
                               warmup_steps=0, eval_every=8, patience=0)
    state = finetune.train(self.model, batch, batch, precision, SPEC, cfg)
    graphdef, frozen = nnx.split(self.model)
    initial = finetune.init_params(self.model, subset, 4, jax.random.key(0))
    loss = lambda p: float(finetune.loss(p, graphdef, frozen, batch, precision, SPEC))
    self.assertLess(loss(state.params), loss(initial) - 0.05)
    self.assertEqual(state.best_step, 8)
    self.assertLess(state.best_val, state.val_history[0][1])
    self.assertLen(state.history, 8)


class Gemma3Test(absltest.TestCase):
  """Gemma 3's extra norms (queries, keys, the sublayer outputs) are in the norms subset, and
  training either subset lowers a fixed batch's loss under Anda."""

  def test_norms_and_lora_train(self):
    directory = testlib.tempdir(self)
    testlib.hf_tiny_model("gemma3").save_pretrained(directory)
    model, _ = models.load(directory, int4_group_size=16)
    self.assertEqual(finetune.norm_names(model), [
        "layers.attn_norm", "layers.mlp_norm", "layers.q_norm", "layers.k_norm",
        "layers.post_attn_norm", "layers.post_mlp_norm", "final_norm"])
    batch = np.random.default_rng(0).integers(0, testlib.HF_TINY_VOCAB, (2, 16)).astype(np.int32)
    precision = np.full(4, 3, np.int32)
    graphdef, frozen = nnx.split(model)
    for subset in ("norms", "lora"):
      cfg = finetune.TrainConfig(subset=subset, rank=4, steps=8, batch_size=2, learning_rate=1e-2,
                                 warmup_steps=0, eval_every=8, patience=0)
      state = finetune.train(model, batch, batch, precision, SPEC, cfg)
      initial = finetune.init_params(model, subset, 4, jax.random.key(0))
      loss = lambda p: float(finetune.loss(p, graphdef, frozen, batch, precision, SPEC))
      self.assertLess(loss(state.params), loss(initial) - 0.05, subset)


class LoraAndFilesTest(_TinyModel):

  @parameterized.parameters(0, 3, 8)
  def test_zero_b_adapters_leave_logits_bit_identical(self, m):
    tuned = finetune.apply_params(self.fresh(), finetune.init_params(self.model, "lora", 4, jax.random.key(1)))
    self.assertIn("qkv_lora", tuned.layers.get_value())
    self.assertNotIn("qkv_lora", self.model.layers.get_value())
    precision = np.full(4, m, np.int32)
    testlib.assert_bit_exact(tuned(self.windows[:3], precision, SPEC), self.model(self.windows[:3], precision, SPEC))

  def test_nonzero_adapters_see_the_quantized_activation(self):
    params = finetune.init_params(self.model, "lora", 4, jax.random.key(1))
    params = {k: v + 0.05 if k.endswith(".b") else v for k, v in params.items()}
    tuned = finetune.apply_params(self.fresh(), params)
    x = testlib.heavy_tailed(4, (5, 32))
    lora = {"a": params["layers.qkv_lora.a"][0], "b": params["layers.qkv_lora.b"][0]}
    w = self.model.layers.get_value()["qkv"]
    w0 = jax.tree.map(lambda a: a[0], w)
    y = layers.linear(x, w0, 3, SPEC, lora=lora)
    x_q = anda.quantize(x, SPEC.fmt, 3)
    want = SPEC(x, w0, 3) + (x_q @ lora["a"]) @ lora["b"]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    self.assertFalse(np.array_equal(tuned(self.windows[:1], np.full(4, 3)), self.model(self.windows[:1], np.full(4, 3))))

  @parameterized.parameters("norms", "lora")
  def test_save_load_apply_round_trip(self, subset):
    params = finetune.init_params(self.model, subset, 4, jax.random.key(2))
    params = {k: v * 1.1 + 0.01 for k, v in params.items()}
    path = self.tmp / f"{subset}.safetensors"
    finetune.save_params(path, params, dict(subset=subset, precision=[4, 4, 4, 4]))
    loaded, meta = finetune.load_params(path)
    self.assertEqual(meta, dict(subset=subset, precision=[4, 4, 4, 4]))
    self.assertEqual(set(loaded), set(params))
    for k in params:
      testlib.assert_bit_exact(loaded[k], params[k], k)
    a = finetune.apply_params(self.fresh(), params)
    b = self.fresh()
    self.assertEqual(finetune.apply_file(b, path), meta)
    testlib.assert_bit_exact(a(self.windows[:2], np.full(4, 4), SPEC), b(self.windows[:2], np.full(4, 4), SPEC))
    if subset == "norms":
      self.assertEqual(sorted(params), ["final_norm", "layers.attn_norm", "layers.mlp_norm"])

  def test_bad_files_and_parameters_are_refused(self):
    bad = self.tmp / "garbage.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with self.assertRaisesRegex(ValueError, "garbage.safetensors.*not a readable safetensors"):
      finetune.load_params(bad)
    with self.assertRaisesRegex(ValueError, "no such file"):
      finetune.load_params(self.tmp / "missing.safetensors")
    from safetensors import numpy as st  # pylint: disable=g-import-not-at-top
    foreign = self.tmp / "foreign.safetensors"
    st.save_file({"x": np.zeros(3, np.float32)}, str(foreign))
    with self.assertRaisesRegex(ValueError, "not written by anda_jax.finetune"):
      finetune.load_params(foreign)
    nan = self.tmp / "nan.safetensors"
    finetune.save_params(nan, {"final_norm": np.array([1.0, np.nan] * 16, np.float32)})
    with self.assertRaisesRegex(ValueError, "nan.safetensors' is invalid: parameter 'final_norm' holds "
                                            "NaN or Inf values"):
      finetune.apply_file(self.fresh(), nan)
    ints = self.tmp / "ints.safetensors"
    ints.write_bytes(st.save({"final_norm": np.ones(32, np.int32)}, metadata={"anda_jax.finetune": "{}"}))
    with self.assertRaisesRegex(ValueError, "parameter 'final_norm' has dtype int32, must be float"):
      finetune.load_params(ints)
    listed = self.tmp / "listed.safetensors"
    listed.write_bytes(st.save({"final_norm": np.ones(32, np.float32)}, metadata={"anda_jax.finetune": "[1]"}))
    with self.assertRaisesRegex(ValueError, "metadata is not a JSON object"):
      finetune.load_params(listed)
    wrong = self.tmp / "wrong.safetensors"
    finetune.save_params(wrong, {"layers.attn_norm": np.ones((2, 7), np.float32)})
    with self.assertRaisesRegex(ValueError, r"wrong.safetensors.*'layers.attn_norm' has shape \[2, 7\]"):
      finetune.apply_file(self.fresh(), wrong)
    with self.assertRaisesRegex(ValueError, "'layers.qkv.a' is invalid"):
      finetune.apply_params(self.fresh(), {"layers.qkv.a": np.ones((2, 32, 4))})
    with self.assertRaisesRegex(ValueError, "only one of its factors"):
      finetune.apply_params(self.fresh(), {"layers.o_lora.a": np.ones((2, 32, 4))})
    with self.assertRaisesRegex(ValueError, "subset='lorax' is invalid"):
      finetune.TrainConfig(subset="lorax")
    with self.assertRaisesRegex(ValueError, "learning_rate=0 is invalid"):
      finetune.TrainConfig(learning_rate=0)


class ResumeTest(_TinyModel):

  def test_killed_run_resumes_to_the_same_parameters_bit_for_bit(self):
    cfg = finetune.TrainConfig(subset="lora", rank=4, steps=7, batch_size=2, learning_rate=5e-3,
                               warmup_steps=2, eval_every=3, patience=0, checkpoint_every=2, seed=5)
    args = (self.model, self.windows[:8], self.windows[8:], np.full(4, 3, np.int32), SPEC, cfg)
    whole = finetune.train(*args, checkpoint=self.tmp / "whole.safetensors")

    class Killed(Exception):
      pass

    def kill_at_5(state, val):
      del val
      if state.step == 5:
        raise Killed

    ckpt = self.tmp / "killed.safetensors"
    with self.assertRaises(Killed):
      finetune.train(*args, checkpoint=ckpt, on_step=kill_at_5)
    steps_seen = []
    resumed = finetune.train(*args, checkpoint=ckpt, on_step=lambda s, v: steps_seen.append(s.step))
    self.assertEqual(steps_seen, [5, 6, 7])  # continued after the checkpoint at step 4
    self.assertEqual(resumed.history, whole.history)
    self.assertEqual(resumed.val_history, whole.val_history)
    self.assertEqual(resumed.best_step, whole.best_step)
    for name in whole.params:
      testlib.assert_bit_exact(resumed.params[name], whole.params[name], name)
      testlib.assert_bit_exact(resumed.best_params[name], whole.best_params[name], name)
    for a, b in zip(jax.tree.leaves(resumed.opt_state), jax.tree.leaves(whole.opt_state)):
      np.testing.assert_array_equal(a, b)
    # A checkpoint of other settings is refused.
    other = finetune.TrainConfig(**{**cfg.__dict__, "learning_rate": 1e-3})
    with self.assertRaisesRegex(ValueError, "killed.safetensors.*learning_rate: 0.005 -> 0.001"):
      finetune.train(*args[:-1], other, checkpoint=ckpt)

  def test_early_stopping_keeps_the_best_parameters(self):
    cfg = finetune.TrainConfig(subset="norms", steps=30, batch_size=2, learning_rate=0.5,
                               warmup_steps=0, eval_every=2, patience=2, clip_norm=None)
    state = finetune.train(self.model, self.windows[:8], self.windows[8:], np.full(4, 3), SPEC, cfg)
    self.assertTrue(state.stopped_early)
    self.assertLess(state.step, 30)
    vals = dict(state.val_history)
    self.assertEqual(state.best_val, min(vals.values()))
    self.assertEqual(vals[state.best_step], state.best_val)
    self.assertEqual(state.bad_evals, 2)


class ExperimentTest(absltest.TestCase):
  """The setup experiments/finetune.py records."""

  def test_setup_records_what_changes_the_test_evaluations(self):
    # The recorded run's setup.json (docs/results/finetune_smollm2) reads as before: the
    # settings known before loading are recorded with the same values, and nothing else.
    recorded = json.loads((pathlib.Path(__file__).resolve().parents[1] / "docs/results/"
                           "finetune_smollm2/setup.json").read_text())
    cfg = finetune_config.get_config()
    setup = exp_finetune.setup_of(cfg, None, recorded["model"]["sha256"])
    self.assertEqual(setup, {k: v for k, v in recorded.items() if k != "windows"})
    # The window batch of the test evaluations and the model shards are recorded where set.
    cfg.window_batch, cfg.mesh = 4, (1, 2)
    setup = exp_finetune.setup_of(cfg, None, recorded["model"]["sha256"])
    self.assertEqual((setup["window_batch"], setup["model_shards"]), (4, 2))


def _tiny_config(tmp: pathlib.Path, ckpt, corpus, run_name: str):
  cfg = finetune_config.get_config("quick")
  cfg.results_dir, cfg.run_name = str(tmp / "results"), run_name
  cfg.model.name, cfg.data.corpus = str(ckpt), str(corpus)
  cfg.format.group_sizes = (16,)
  cfg.data.seq_len, cfg.data.windows, cfg.val.windows, cfg.test.windows = 16, 8, 3, 4
  cfg.mantissa_bits = (3,)
  cfg.train.steps, cfg.train.eval_every, cfg.train.checkpoint_every = 4, 2, 2
  cfg.window_batch = 4
  return cfg


class _Killed(Exception):
  pass


class RunTest(absltest.TestCase):
  """experiments.finetune end to end on a tiny checkpoint: both subsets at M = 3, two seeds,
  with the control arm; the trainings' precisions are recorded as they are asked for."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = testlib.tempdir(cls)
    cls.ckpt, cls.corpus = testlib.tiny_run_inputs(cls.tmp)
    cls.cfg = _tiny_config(cls.tmp, cls.ckpt, cls.corpus, "tiny")
    cls.cfg.seeds, cls.cfg.control = 2, True
    cls.trained = {}  # (precision, seed, subset) of every training
    real = finetune.train

    def recording(model, train_w, val_w, precision, spec, tcfg, **kwargs):
      cls.trained[pathlib.Path(kwargs["checkpoint"]).stem] = (np.asarray(precision).tolist(),
                                                             tcfg.seed, tcfg.subset)
      return real(model, train_w, val_w, precision, spec, tcfg, **kwargs)

    with absltest.mock.patch.object(finetune, "train", side_effect=recording):
      cls.rows = exp_finetune.run(cls.cfg)
    cls.run_dir = cls.tmp / "results" / "tiny"
    cls.model, tokenizer = loading.load_model(cls.cfg.model)
    cls.windows = exp_finetune.load_windows(cls.cfg, tokenizer)

  def test_every_training_and_its_rows(self):
    anda_ids = {"M3-norms", "M3-lora", "M3-norms-seed1", "M3-lora-seed1"}
    control_ids = {"control-norms", "control-lora", "control-norms-seed1", "control-lora-seed1"}
    self.assertEqual(set(self.rows), {"before"} | anda_ids | control_ids)
    self.assertEqual(set(self.rows), exp_finetune.run_ids(self.cfg))
    self.assertEqual(set(self.trained), anda_ids | control_ids)
    for run_id, (precision, seed, subset) in self.trained.items():
      r = self.rows[run_id]
      self.assertEqual((r["seed"], r["subset"]), (seed, subset))
      self.assertEqual(seed, 1 if run_id.endswith("seed1") else 0)
      # The control trains with float activations; the others at M = 3 on every type.
      self.assertEqual(precision, [0] * 4 if run_id in control_ids else [3] * 4, run_id)
      self.assertEqual(r["arm"], "control" if run_id in control_ids else "anda")
      self.assertEqual(r["steps"], 4)
      self.assertEqual(r["val_history"][0][1], self.rows["before"]["val_ppl"][
          0 if run_id in control_ids else 1])  # untrained = before, at the training's precision
      self.assertLessEqual(r["val_ppl"], r["val_ppl_before"])
      self.assertTrue((self.run_dir / r["params_file"]).is_file())
    self.assertFalse(any((self.run_dir / "checkpoints").iterdir()))
    self.assertTrue((self.run_dir / "loss_curves.png").is_file())

  def test_rows_carry_window_sums_of_every_evaluation(self):
    n = self.cfg.test.windows
    tokens = self.rows["before"]["window_tokens"]
    self.assertLen(tokens, n)
    self.assertEqual(sum(tokens), n * (self.cfg.data.seq_len - 1))
    pairs = [(ppl, sums) for r in self.rows.values() if isinstance(r["test_ppl"], list)
             for ppl, sums in zip(r["test_ppl"], r["test_window_nll"])]
    pairs += [(r[f"test_ppl{s}"], r[f"test_window_nll{s}"]) for r in self.rows.values()
              if not isinstance(r["test_ppl"], list) for s in ("", "_fp")]
    self.assertLen(pairs, 2 + 4 * 2 + 4 * 2)  # before at FP and M; each row at M and FP
    for ppl, sums in pairs:
      self.assertLen(sums, n)
      self.assertAlmostEqual(ppl, np.exp(np.sum(sums) / np.sum(tokens)), places=9)
    # The tuned model's evaluation is its own: recomputed from its parameter file.
    for run_id, m in (("M3-lora-seed1", 3), ("control-norms", 3), ("control-norms", 0)):
      r = self.rows[run_id]
      tuned = finetune.apply_params(nnx.clone(self.model),
                                    finetune.load_params(self.run_dir / r["params_file"])[0])
      sums, _ = evaluate.window_nll_sums(tuned, self.windows["test"], exp_finetune.precision_of(
          self.cfg, m)[None], config_checks.product_spec(self.cfg, 16), batch_size=4)
      if r["arm"] == "control":
        got = r["test_window_nll"][r["mantissa_bits"].index(m)]
      else:
        got = r["test_window_nll"] if m else r["test_window_nll_fp"]
      np.testing.assert_allclose(got, sums[0], rtol=1e-6, err_msg=f"{run_id} at M = {m}")

  def test_control_is_evaluated_at_every_m_and_at_fp(self):
    for subset in ("norms", "lora"):
      r = self.rows[f"control-{subset}"]
      self.assertEqual(r["mantissa_bits"], [0, 3])
      self.assertEqual(r["precision"], [0, 0, 0, 0])  # trained at
      at_fp, at_m = r["test_ppl"]
      self.assertNotEqual(at_fp, at_m)
      # Trained without Anda, it is not the model trained under it.
      self.assertNotEqual(at_m, self.rows[f"M3-{subset}"]["test_ppl"])

  def test_seeds_are_distinct_runs(self):
    for subset in ("norms", "lora"):
      for prefix in ("M3-", "control-"):
        a, b = self.rows[f"{prefix}{subset}"], self.rows[f"{prefix}{subset}-seed1"]
        self.assertNotEqual(a["history"], b["history"], f"{prefix}{subset}")
        pa, _ = finetune.load_params(self.run_dir / a["params_file"])
        pb, _ = finetune.load_params(self.run_dir / b["params_file"])
        self.assertTrue(any(not np.array_equal(pa[k], pb[k]) for k in pa))

  def test_report_pairs_intervals_and_spreads_over_seeds(self):
    before, arms = finetune_report.read(self.run_dir)
    tokens = np.array(self.rows["before"]["window_tokens"])
    base = np.array(self.rows["before"]["test_window_nll"][0])
    increase = lambda sums, base: float(np.expm1((np.sum(sums) - np.sum(base)) / tokens.sum()))
    self.assertLen(arms, 8)  # 4 under Anda, 4 controls at M = 3
    for a in arms:
      self.assertIsNotNone(a.vs_untuned_fp[1], a.row["id"])
      self.assertAlmostEqual(a.vs_untuned_fp[0], increase(a.at_m["window_nll"], base), places=9)
      self.assertAlmostEqual(a.fp_vs_untuned_fp[0], increase(a.at_fp["window_nll"], base), places=9)
      pairs = (a.vs_untuned_fp, a.fp_vs_untuned_fp) + ((a.vs_control,) if a.arm == "anda" else ())
      for estimate, iv in pairs:
        self.assertLessEqual(iv.low, estimate)
        self.assertLessEqual(estimate, iv.high)
      if a.arm == "anda":  # against the control of the same subset and seed, both at M
        control = self.rows[f"control-{a.subset}" + ("-seed1" if a.seed else "")]
        self.assertAlmostEqual(a.vs_control[0], increase(a.at_m["window_nll"],
                                                         control["test_window_nll"][1]), places=9)
      else:
        self.assertEqual(a.vs_control, (None, None))
    spreads = finetune_report.spreads(arms)
    for subset in ("norms", "lora"):
      values = [increase(self.rows[i]["test_window_nll"], base)
                for i in (f"M3-{subset}", f"M3-{subset}-seed1")]
      s = spreads[(3, subset, "anda")]["vs_untuned_fp"]
      self.assertEqual(s.n, 2)
      self.assertAlmostEqual(s.mean, np.mean(values), places=9)
      self.assertAlmostEqual(s.low, min(values), places=9)
      self.assertAlmostEqual(s.high, max(values), places=9)
    text = finetune_report.report(self.run_dir)
    self.assertIn("paired-bootstrap interval", text)
    self.assertIn("mean", text)
    buys = [l for l in text.splitlines() if l.startswith("M = 3")]
    self.assertLen(buys, 2)
    for line, subset in zip(buys, ("norms", "lora")):
      ivs = [a.vs_control[1] for a in arms if a.arm == "anda" and a.subset == subset]
      verdict = ("beats the control" if all(iv.high < 0 for iv in ivs) else "control beats"
                 if all(iv.low > 0 for iv in ivs) else "not resolved")
      self.assertIn(verdict, line)
      self.assertIn(f"M = 3, {subset}: tuned under Anda over the control, both at M: "
                    f"{spreads[(3, subset, 'anda')]['vs_control']}", line)
      control_ppl = [self.rows[i]["test_ppl"][1] for i in (f"control-{subset}",
                                                           f"control-{subset}-seed1")]
      recovered = np.log(before[3]["ppl"]) - np.mean(np.log(control_ppl))
      self.assertIn(f"the control {recovered:+.4f}", line)
    self.assertNotIn("without intervals", text)
    header, *lines = (self.run_dir / "results.csv").read_text().splitlines()
    self.assertIn("vs_control_low", header.split(","))
    self.assertLen(lines, 8)

  def test_report_of_rows_without_window_sums(self):
    # The recorded run (before per-window sums, seeds and controls) still reads, without intervals.
    recorded = pathlib.Path(__file__).resolve().parents[1] / "docs/results/finetune_smollm2"
    folder = testlib.tempdir(self)
    for name in ("results.jsonl", "setup.json"):
      (folder / name).write_text((recorded / name).read_text())
    text = finetune_report.report(folder)
    self.assertIn("shown without intervals", text)
    self.assertIn("No control arm", text)
    self.assertIn("One seed", text)
    _, arms = finetune_report.read(folder)
    self.assertLen(arms, 6)
    self.assertTrue(all(a.vs_untuned_fp[1] is None and a.vs_untuned_fp[0] is not None
                        for a in arms))

  def test_rerun_trains_nothing_and_an_interrupted_run_resumes(self):
    text = (self.run_dir / "results.jsonl").read_text()
    with absltest.mock.patch.object(finetune, "train", side_effect=AssertionError("trained again")):
      exp_finetune.run(self.cfg)
    self.assertEqual((self.run_dir / "results.jsonl").read_text(), text)
    # A run killed in its control training continues from the checkpoint to the same rows.
    cfg = _tiny_config(self.tmp, self.ckpt, self.corpus, "killed")
    cfg.subsets, cfg.seeds, cfg.control = ("norms",), 1, True
    real = finetune.train
    steps = []

    def killed_at_3(*args, on_step=None, **kwargs):
      def step(state, val):
        on_step(state, val)
        steps.append((pathlib.Path(kwargs["checkpoint"]).stem, state.step))
        if not np.any(args[3]) and state.step == 3:
          raise _Killed
      return real(*args, on_step=step, **kwargs)

    with absltest.mock.patch.object(finetune, "train", side_effect=killed_at_3):
      with self.assertRaises(_Killed):
        exp_finetune.run(cfg)
    folder = self.tmp / "results" / "killed"
    self.assertTrue((folder / "checkpoints" / "control-norms.safetensors").is_file())
    self.assertEqual(set(finetune_report.read(folder)[0]), {0, 3})  # "before" was written
    steps.clear()
    def recording(*args, on_step=None, **kwargs):
      def step(state, val):
        on_step(state, val)
        steps.append((pathlib.Path(kwargs["checkpoint"]).stem, state.step))
      return real(*args, on_step=step, **kwargs)

    with absltest.mock.patch.object(finetune, "train", side_effect=recording):
      rows = exp_finetune.run(cfg)
    # Continued from the checkpoint at step 2.
    self.assertEqual(steps, [("control-norms", 3), ("control-norms", 4)])
    timing = ("train_seconds", "eval_seconds", "seconds")
    for run_id in ("before", "M3-norms", "control-norms"):
      self.assertEqual({k: v for k, v in rows[run_id].items() if k not in timing},
                       {k: v for k, v in self.rows[run_id].items() if k not in timing}, run_id)
    self.assertFalse(any((folder / "checkpoints").iterdir()))

  def test_search_runs_on_the_tuned_model(self):
    cfg = self.cfg.copy_and_resolve_references()
    cfg.finetune = str(self.tmp / "missing.safetensors")  # refused here, checked where used
    with self.assertRaisesRegex(ValueError, "finetune=.*missing.safetensors.* is invalid"):
      exp_finetune.validate(cfg)
    tuned_file = str(self.run_dir / self.rows["M3-norms"]["params_file"])
    s = search_config.get_config("quick")
    s.results_dir, s.run_name = str(self.tmp / "results"), "search_tuned"
    s.model.name, s.data.corpus, s.finetune = str(self.ckpt), str(self.corpus), tuned_file
    s.format.group_sizes = (16,)
    s.data.seq_len, s.data.windows, s.test.windows = 16, 3, 3
    s.start_m, s.min_m, s.tolerances, s.uniform_m = 4, 3, (0.01,), (3, 4)
    search_dir = exp_search.run(s)
    setup = json.loads((search_dir / "setup.json").read_text())
    self.assertEqual(setup["finetune"]["file"], tuned_file)
    plain, _ = loading.load_model(s.model)
    tuned, _ = loading.load_model(s.model, tuned_file)
    tokens = np.arange(16, dtype=np.int32)[None]
    self.assertFalse(np.array_equal(plain(tokens, np.full(4, 3)), tuned(tokens, np.full(4, 3))))
    s.finetune = None  # the same folder without the tuned model is another setup
    with self.assertRaisesRegex(ValueError, "invalid for these settings"):
      exp_search.run(s)

  def test_bad_seeds_are_refused(self):
    cfg = self.cfg.copy_and_resolve_references()
    cfg.seeds = 0
    with self.assertRaisesRegex(ValueError, "seeds=0 is invalid"):
      exp_finetune.validate(cfg)


if __name__ == "__main__":
  absltest.main()
