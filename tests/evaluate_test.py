"""Tests for anda_jax.evaluate: perplexity vs a float64 reference and transformers, vmapped vs
looped, sharded vs unsharded, compile counts, validation."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import textwrap

from absl.testing import absltest
import jax
import numpy as np

from anda_jax import evaluate
from anda_jax import format as anda_format
from anda_jax import models

sys.path.insert(0, os.path.dirname(__file__))
import eval_testlib  # pylint: disable=g-import-not-at-top,wrong-import-position

_REPO = pathlib.Path(__file__).resolve().parents[1]
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
    cls.tmp = tempfile.mkdtemp()
    cls.ckpt = eval_testlib.make_checkpoint(pathlib.Path(cls.tmp) / "ckpt")
    cls.model, tok = models.load(str(cls.ckpt))
    ids = np.asarray(tok.encode(eval_testlib.corpus_text()), np.int32)
    cls.windows = ids[:5 * 24].reshape(5, 24)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

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
    fmt = anda_format.AndaFormat(group_size=8)
    before = evaluate.total_compiles()
    # 7 configs in chunks of 3 (last one padded), 5 windows in batches of 2 (last one padded).
    evaluate.perplexity(self.model, self.windows, _CONFIGS, fmt, batch_size=2, config_batch=3)
    self.assertEqual(evaluate.total_compiles() - before, 1)
    evaluate.perplexity(self.model, self.windows[:3], _CONFIGS[:5], fmt, batch_size=2, config_batch=3)
    self.assertEqual(evaluate.total_compiles() - before, 1)

    stochastic = anda_format.AndaFormat(group_size=8, rounding="stochastic")
    with self.assertRaisesRegex(ValueError, "stochastic.*key"):
      evaluate.perplexity(self.model, self.windows, _CONFIGS[:2], stochastic)
    key = jax.random.key(0)
    kw = dict(batch_size=2, config_batch=3)
    a = evaluate.perplexity(self.model, self.windows, _CONFIGS[1:3], stochastic, key=key, **kw)
    self.assertEqual(evaluate.total_compiles() - before, 2)
    b = evaluate.perplexity(self.model, self.windows, _CONFIGS[1:3], stochastic, key=key, **kw)
    np.testing.assert_array_equal(a, b)
    c = evaluate.perplexity(self.model, self.windows, _CONFIGS[1:3], stochastic, key=jax.random.key(1), **kw)
    self.assertFalse(np.array_equal(a, c))
    # A configuration's uniforms come from its contents, not from where it sits in a batch.
    d = evaluate.perplexity(self.model, self.windows, _CONFIGS[2:0:-1], stochastic, key=key, **kw)
    np.testing.assert_allclose(d[::-1], a, rtol=1e-6)
    self.assertEqual(evaluate.total_compiles() - before, 2)

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

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(self.ckpt), torch_dtype=torch.float32)
    hf.eval()
    with torch.no_grad():
      tokens = torch.tensor(self.windows, dtype=torch.long)
      loss = hf(input_ids=tokens, labels=tokens).loss.item()  # mean over all windows' targets
    ppl = evaluate.perplexity(self.model, self.windows, np.zeros((1, 4), np.int32), **_KW)[0]
    np.testing.assert_allclose(ppl, np.exp(loss), rtol=1e-3)

  def test_sharded_equals_unsharded(self):
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        sys.path.insert(0, {str(_REPO / 'tests')!r})
        import jax
        from anda_jax import evaluate, models
        import eval_testlib
        model, tok = models.load({str(self.ckpt)!r})
        ids = np.asarray(tok.encode(eval_testlib.corpus_text()), np.int32)
        w = ids[:5 * 24].reshape(5, 24)
        configs = np.array({_CONFIGS.tolist()})
        mesh = evaluate.config_mesh()
        sharded = evaluate.perplexity(model, w, configs, batch_size=2)  # 7 configs padded to 8
        plain = evaluate.perplexity(model, w, configs, batch_size=2, mesh=None)
        print(json.dumps(dict(devices=mesh.size, sharded=sharded.tolist(), plain=plain.tolist())))
        """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=_REPO, capture_output=True,
                         text=True, timeout=300)
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    res = json.loads(out.stdout.strip().splitlines()[-1])
    self.assertEqual(res["devices"], 4)
    assert_agree_to_fp32_rounding(res["sharded"], res["plain"])


class SmolLM2BaselineTest(absltest.TestCase):
  """The real model: our FP-activation perplexity vs transformers' (which dequantizes the same
  GGUF to float32) on 2 test windows of 128 tokens. Downloads ~93 MB on first use."""

  def test_smollm2_baseline_matches_transformers(self):
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    from anda_jax import assets, data  # pylint: disable=g-import-not-at-top

    model, tok = models.load("smollm2-135m")
    windows = data.token_windows(data.load_corpus("enwiki-excerpt").test, tok, 128, max_windows=2)
    ppl = evaluate.perplexity(model, windows, np.zeros((1, 4), np.int32))[0]
    path = assets.fetch("smollm2-135m")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                           torch_dtype=torch.float32)
    with torch.no_grad():
      tokens = torch.tensor(windows, dtype=torch.long)
      loss = hf(input_ids=tokens, labels=tokens).loss.item()
    print(f"SmolLM2-135M FP-activation perplexity: ours {ppl:.5f}, transformers {np.exp(loss):.5f}")
    np.testing.assert_allclose(ppl, np.exp(loss), rtol=1e-3)


if __name__ == "__main__":
  absltest.main()
