"""LLaMA, Gemma 3 and OPT models against Hugging Face transformers (torch CPU, float32) on tiny
random checkpoints this test builds with `save_pretrained`, and the precision semantics of the
models."""

import json
import pathlib

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from anda_jax import AndaFormat
from anda_jax.matmul import ProductSpec
from anda_jax import models
from anda_jax.numerics import int4
import testlib

VOCAB = testlib.HF_TINY_VOCAB


def _save(test, hf):
  """hf saved with save_pretrained into a folder removed after `test` (a TestCase or class)."""
  directory = testlib.tempdir(test)
  hf.save_pretrained(directory)
  return str(directory)


TOKENS = np.random.RandomState(0).randint(0, VOCAB, (2, 40)).astype(np.int32)

CASES = (
    ("llama_gqa_tied", "llama", {}),
    ("llama_mha_untied", "llama", dict(num_key_value_heads=4, tie_word_embeddings=False)),
    ("opt_pre_ln", "opt", {}),
    ("opt_post_ln_project", "opt", dict(do_layer_norm_before=False, word_embed_proj_dim=32)),
    ("opt_pre_ln_project_untied", "opt", dict(word_embed_proj_dim=32, tie_word_embeddings=False)),
    ("gemma3_local_global", "gemma3", {}),
    ("gemma3_untied_mha_linear_rope", "gemma3", dict(
        num_key_value_heads=4, tie_word_embeddings=False,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 500.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}})),
)
_CLASSES = {"llama": models.Llama, "opt": models.OPT, "gemma3": models.Gemma3}

_FORWARD = jax.jit(lambda m, t, p: m(t, p, ProductSpec(AndaFormat(group_size=32))))


class HFParityTest(parameterized.TestCase):

  @parameterized.named_parameters(*CASES)
  def test_logits_match_transformers(self, kind, overrides):
    hf = testlib.hf_tiny_model(kind, **overrides)
    model, tokenizer = models.load(_save(self, hf))
    self.assertIsNone(tokenizer)  # no tokenizer.json in these directories
    self.assertIsInstance(model, _CLASSES[kind])
    ref = testlib.hf_logits(hf, TOKENS)
    self.assertGreater(np.abs(ref).max(), 1.0)
    np.testing.assert_allclose(np.asarray(_FORWARD(model, TOKENS, None)), ref, atol=1e-4, rtol=0)

  @parameterized.named_parameters(("llama", "llama"), ("opt", "opt"), ("gemma3", "gemma3"))
  def test_int4_rtn_equals_float_model_on_dequantized_weights(self, kind):
    """RTN INT4 loading: the model computes with exactly the dequantized weights."""
    import torch  # pylint: disable=g-import-not-at-top

    hf = testlib.hf_tiny_model(kind)
    directory = _save(self, hf)
    model, _ = models.load(directory, int4_group_size=32)
    self.assertIsInstance(model.layers.get_value()["up"], int4.Int4Weights)
    rtn = "F32 -> INT4 asymmetric G=32 (RTN)"
    self.assertEqual(model.weight_types.counts()[rtn], 7 * 3 if kind != "opt" else 6 * 3)
    self.assertEqual(model.weight_types.as_dict()["down"],
                     {"F32": {"tensors": 3, "as": "INT4 asymmetric G=32 (RTN)"}})
    # Reference: HF with every FP-INT weight replaced by its RTN-dequantized value.
    with torch.no_grad():
      for name, p in hf.named_parameters():
        if p.ndim == 2 and ("proj" in name or "fc" in name) and "project_" not in name:
          w = p.numpy().T  # [K, N], grouped along K like ours
          p.copy_(torch.from_numpy(np.array(int4.dequantize(int4.quantize_rtn(w, 32, symmetric=False))).T))
    np.testing.assert_allclose(np.asarray(_FORWARD(model, TOKENS, None)),
                               testlib.hf_logits(hf, TOKENS), atol=1e-4, rtol=0)

  def test_gemma3_older_config_keys(self):
    """config.json as transformers < 5 wrote it: the layer pattern and the rotary bases as single
    settings (here describing the same model as the tiny default)."""
    hf = testlib.hf_tiny_model("gemma3")
    directory = _save(self, hf)
    path = pathlib.Path(directory) / "config.json"
    cfg = json.loads(path.read_text())
    for key in ("layer_types", "rope_parameters"):
      del cfg[key]
    cfg.update(sliding_window_pattern=2, rope_theta=500.0, rope_local_base_freq=50.0)
    path.write_text(json.dumps(cfg))
    model, _ = models.load(directory)
    self.assertEqual(model.config.sliding_layers, (True, False, True))
    np.testing.assert_allclose(np.asarray(_FORWARD(model, TOKENS, None)), testlib.hf_logits(hf, TOKENS),
                               atol=1e-4, rtol=0)

  def test_weight_types_of_a_float_checkpoint(self):
    model, _ = models.load(_save(self, testlib.hf_tiny_model("llama")))
    # 3 layers x (2 norms + 7 matrices), the embedding and the final norm (the head is tied).
    self.assertEqual(model.weight_types.counts(), {"F32 -> float32": 3 * 9 + 2})
    self.assertEqual(model.weight_types.as_dict()["qkv"], {"F32": {"tensors": 9, "as": "float32"}})
    self.assertEqual(str(model.weight_types), "F32 -> float32: 29")

  def test_bad_int4_group_size(self):
    directory = _save(self, testlib.hf_tiny_model("llama"))
    with self.assertRaisesRegex(ValueError, "int4_group_size=48"):
      models.load(directory, int4_group_size=48)
    with self.assertRaisesRegex(ValueError, "int4_group_size"):
      models.load(directory, int4_group_size=0)


class PrecisionTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.models = {kind: models.load(_save(cls, testlib.hf_tiny_model(kind)), int4_group_size=32)[0]
                  for kind in ("llama", "opt", "gemma3")}

  @parameterized.parameters("llama", "opt", "gemma3")
  def test_precision_semantics(self, kind):
    model = self.models[kind]
    float_logits = _FORWARD(model, TOKENS, None)
    zero = _FORWARD(model, TOKENS, np.zeros(4, np.int32))
    chex.assert_trees_all_equal(zero, float_logits)  # M = 0 is the float model, exactly
    err = lambda m: float(jnp.abs(_FORWARD(model, TOKENS, m) - float_logits).max())
    self.assertLess(err(np.full(4, 24, np.int32)), 1e-3)
    self.assertLess(err(np.full((3, 4), 24, np.int32)), 1e-3)
    e8, e3 = err(np.full(4, 8, np.int32)), err(np.full(4, 3, np.int32))
    self.assertGreater(e3, 0.1)
    self.assertGreater(e3, 4 * e8)
    # One type at a time changes the result: each site is wired to its own M.
    for site in range(4):
      m = np.zeros(4, np.int32)
      m[site] = 2
      self.assertGreater(err(m), 1e-3, msg=f"site {site}")

  @parameterized.parameters("llama", "opt", "gemma3")
  def test_run_layers_with_traced_start_reuses_float_prefix(self, kind):
    model = self.models[kind]
    prec = np.full((3, 4), 6, np.int32)
    prec[0] = 0  # layer 0 in float: its output is the float prefix
    h0 = model.embed(jnp.asarray(TOKENS))
    traces = []

    @jax.jit
    def from_start(model, h, start, prec):
      traces.append(1)
      return model.run_layers(h, prec, ProductSpec(AndaFormat(group_size=32)), start=start)

    prefix = model.run_layers(h0, None, start=0, stop=1)
    full = model.head(from_start(model, h0, jnp.int32(0), prec))
    resumed = model.head(from_start(model, prefix, jnp.int32(1), prec))
    np.testing.assert_allclose(resumed, full, atol=1e-5, rtol=0)
    np.testing.assert_allclose(full, _FORWARD(model, TOKENS, prec), atol=1e-5, rtol=0)
    self.assertLen(traces, 1)  # one compilation serves every start
    untouched = from_start(model, h0, jnp.int32(3), prec)
    chex.assert_trees_all_equal(untouched, h0)

  def test_vmap_over_precisions(self):
    model = self.models["llama"]
    precisions = jnp.asarray([[0, 0, 0, 0], [4, 5, 6, 7], [3, 3, 3, 3]], jnp.int32)
    batched = jax.jit(jax.vmap(lambda p: model(jnp.asarray(TOKENS), p, ProductSpec(AndaFormat(group_size=32)))))(precisions)
    for i in range(3):
      np.testing.assert_allclose(batched[i], _FORWARD(model, TOKENS, precisions[i]), atol=1e-5, rtol=0)

  def test_macs_per_token(self):
    d, f, h, kv, dh = 64, 96, 4, 2, 16
    self.assertEqual(self.models["llama"].macs_per_token(),
                     dict(qkv=3 * d * (h + 2 * kv) * dh, o=3 * h * dh * d, up=3 * d * 2 * f, down=3 * f * d))
    self.assertEqual(self.models["opt"].macs_per_token(),
                     dict(qkv=3 * d * 3 * d, o=3 * d * d, up=3 * d * f, down=3 * f * d))
    self.assertEqual(self.models["gemma3"].macs_per_token(),
                     dict(qkv=3 * d * (h + 2 * kv) * dh, o=3 * h * dh * d, up=3 * d * 2 * f, down=3 * f * d))

  def test_invalid_precision(self):
    model = self.models["llama"]
    with self.assertRaisesRegex(ValueError, "precision"):
      model(jnp.asarray(TOKENS), np.zeros(3, np.int32))
    with self.assertRaisesRegex(ValueError, "precision"):
      model(jnp.asarray(TOKENS), np.full(4, 25, np.int32))
    with self.assertRaisesRegex(ValueError, "start=4"):
      model.run_layers(model.embed(jnp.asarray(TOKENS)), None, start=4)


if __name__ == "__main__":
  absltest.main()
