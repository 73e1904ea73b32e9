"""Tests for anda_jax.evaluation.evaluate: perplexity vs a float64 reference and transformers, vmapped vs
looped, sharded vs unsharded, compile counts, validation."""

from absl.testing import absltest
import jax
import numpy as np

from anda_jax.evaluation import evaluate
from anda_jax.matmul import ProductSpec
from anda_jax import models
from anda_jax.numerics import anda
import testlib

# Every call uses these batch shapes (the last batches padded), so the tests share compilations.
_KW = dict(batch_size=2, config_batch=4)
_CONFIGS = np.array([[0, 0, 0, 0], [4, 4, 4, 4], [2, 0, 0, 0], [0, 0, 0, 3], [8, 8, 8, 8],
                     [1, 1, 1, 1], [0, 5, 0, 0]], np.int32)


def _log_softmax64(logits):
  z = logits.astype(np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def assert_agree_to_fp32_rounding(a, b):
  """Perplexities of the same configurations computed with different batching.

  Batching changes the fp32 rounding inside the matmuls (~1e-7 relative). Where that moves an
  activation across a quantization step, the quantized value changes by a whole quantum and a
  configuration's perplexity by up to ~1e-5 on these few tokens. So: the float configuration
  (first) and most configurations agree to rounding, and none by more than one such step."""
  rel = np.abs(np.asarray(a) / np.asarray(b) - 1)
  assert rel[0] < 2e-6, rel
  assert np.median(rel) < 2e-6, rel
  assert rel.max() < 5e-5, rel


class EvaluateTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = testlib.tempdir(cls)
    cls.ckpt = testlib.make_checkpoint(cls.tmp / "ckpt")
    cls.model, tok = models.load(str(cls.ckpt))
    ids = np.asarray(tok.encode(testlib.corpus_text()), np.int32)
    cls.windows = ids[:5 * 24].reshape(5, 24)

  def test_matches_float64_reference_with_padding_and_score_from(self):
    # 5 windows in batches of 2: the last batch is padded and must not count.
    ppl = evaluate.perplexity(self.model, self.windows, _CONFIGS[:2], score_from=3, **_KW)
    for c in range(2):
      logits = np.asarray(self.model(self.windows, _CONFIGS[c]))
      logp = _log_softmax64(logits[:, :-1])
      nll = -np.take_along_axis(logp, self.windows[:, 1:, None], -1)[..., 0]
      np.testing.assert_allclose(ppl[c], np.exp(nll[:, 3:].mean()), rtol=1e-5)

  def test_vmapped_equals_looped(self):
    vmapped = evaluate.perplexity(self.model, self.windows, _CONFIGS, **_KW)
    looped = [evaluate.perplexity(self.model, self.windows, p[None], batch_size=2, config_batch=1)[0]
              for p in _CONFIGS]
    assert_agree_to_fp32_rounding(vmapped, looped)
    self.assertGreater(np.ptp(vmapped), 1.0)  # the configurations really differ

  def test_one_compile_per_format_and_window_shape_and_stochastic_rounding(self):
    # One test, so that the stochastic format is both the "second format" of the compile
    # count and the subject of the key checks (each compilation costs seconds).
    fmt = ProductSpec(anda.AndaFormat(group_size=8))
    compiled = self.enterContext(evaluate.count_compilations())
    # 7 configs in chunks of 3 (last one padded), 5 windows in batches of 2 (last one padded).
    evaluate.perplexity(self.model, self.windows, _CONFIGS, fmt, batch_size=2, config_batch=3)
    self.assertLen(compiled, 1)
    evaluate.perplexity(self.model, self.windows[:3], _CONFIGS[:5], fmt, batch_size=2, config_batch=3)
    self.assertLen(compiled, 1)

    stochastic = ProductSpec(anda.AndaFormat(group_size=8, rounding="stochastic"))
    with self.assertRaisesRegex(ValueError, "stochastic.*key"):
      evaluate.perplexity(self.model, self.windows, _CONFIGS[:2], stochastic)
    key = jax.random.key(0)
    kw = dict(batch_size=2, config_batch=3)
    a = evaluate.perplexity(self.model, self.windows, _CONFIGS[1:3], stochastic, key=key, **kw)
    self.assertLen(compiled, 2)
    b = evaluate.perplexity(self.model, self.windows, _CONFIGS[1:3], stochastic, key=key, **kw)
    np.testing.assert_array_equal(a, b)
    c = evaluate.perplexity(self.model, self.windows, _CONFIGS[1:3], stochastic, key=jax.random.key(1), **kw)
    self.assertFalse(np.array_equal(a, c))
    # A configuration's uniforms come from its contents, not from where it sits in a batch.
    d = evaluate.perplexity(self.model, self.windows, _CONFIGS[2:0:-1], stochastic, key=key, **kw)
    np.testing.assert_allclose(d[::-1], a, rtol=1e-6)
    self.assertLen(compiled, 2)

  def test_per_layer_configs(self):
    per_layer = np.zeros((2, 2, 4), np.int32)
    per_layer[0, 1, 2] = 3  # layer 1, "up"
    per_layer[1] = 3  # everything: equals the [4] config
    ppl = evaluate.perplexity(self.model, self.windows, per_layer, **_KW)
    ref = evaluate.perplexity(self.model, self.windows, np.array([[0, 0, 0, 0], [3, 3, 3, 3]]), **_KW)
    self.assertNotAlmostEqual(ppl[0], ref[0], places=3)
    np.testing.assert_allclose(ppl[1], ref[1], rtol=2e-6)

  def test_validation(self):
    m, w = self.model, self.windows
    with self.assertRaisesRegex(ValueError, "mantissa lengths must be in"):
      evaluate.perplexity(m, w, np.array([[25, 0, 0, 0]]))
    with self.assertRaisesRegex(ValueError, r"precisions has shape \[3\]"):
      evaluate.perplexity(m, w, np.array([1, 2, 3]))
    with self.assertRaisesRegex(ValueError, "token ids"):
      evaluate.perplexity(m, w + 1000, _CONFIGS[:1])
    with self.assertRaisesRegex(ValueError, "score_from"):
      evaluate.perplexity(m, w, _CONFIGS[:1], score_from=23)

  def test_baseline_matches_transformers(self):
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(self.ckpt), dtype=torch.float32)
    ppl = evaluate.perplexity(self.model, self.windows, np.zeros((1, 4), np.int32), **_KW)[0]
    np.testing.assert_allclose(ppl, testlib.hf_perplexity(hf.eval(), self.windows), rtol=1e-3)

  def test_sharded_equals_unsharded(self):
    np.save(self.tmp / "windows.npy", self.windows)
    script = f"""
        import json
        import numpy as np
        from anda_jax import models, sharding
        from anda_jax.evaluation import evaluate
        model, _ = models.load({str(self.ckpt)!r})
        w = np.load({str(self.tmp / 'windows.npy')!r})
        configs = np.array({_CONFIGS.tolist()})
        mesh = sharding.make_mesh()  # what mesh="auto" uses: every device on "config"
        sharded = evaluate.perplexity(model, w, configs, batch_size=2)  # 7 configs padded to 8
        plain = evaluate.perplexity(model, w, configs, batch_size=2, mesh=None)
        print(json.dumps(dict(devices=mesh.size, sharded=sharded.tolist(), plain=plain.tolist())))
        """
    res = testlib.run_with_cpu_devices(self, script, 4)
    self.assertEqual(res["devices"], 4)
    assert_agree_to_fp32_rounding(res["sharded"], res["plain"])


if __name__ == "__main__":
  absltest.main()
