"""experiments/generate.py: greedy generation with a KV cache equals generation that reruns the
whole prefix, token for token, on tiny LLaMA, OPT and Gemma 3 models (a sliding window shorter
than the text), in float and with Anda; the
checks of --precision and of the prompt's length."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from anda_jax.matmul import ProductSpec
from anda_jax import models
from anda_jax.models.opt import OPT, OPTConfig
from anda_jax.numerics import anda
from experiments import generate
import testlib

SPEC = ProductSpec(anda.AndaFormat(group_size=8))


def tiny_opt(seed: int = 0, pre_ln: bool = True, n_layers: int = 2, d: int = 32, heads: int = 4,
             f: int = 64, vocab: int = 96, max_positions: int = 64) -> OPT:
  """A random OPT (learned positions, biases, LayerNorm), wide enough that logits differ."""
  rng = np.random.default_rng(seed)
  n = lambda *shape, scale=0.3: (scale * rng.standard_normal(shape)).astype(np.float32)
  layers = dict(attn_ln_w=1 + n(n_layers, d, scale=0.1), attn_ln_b=n(n_layers, d, scale=0.1),
                qkv=n(n_layers, d, 3 * d), qkv_b=n(n_layers, 3 * d, scale=0.1), o=n(n_layers, d, d),
                o_b=n(n_layers, d, scale=0.1), mlp_ln_w=1 + n(n_layers, d, scale=0.1),
                mlp_ln_b=n(n_layers, d, scale=0.1), up=n(n_layers, d, f), up_b=n(n_layers, f, scale=0.1),
                down=n(n_layers, f, d), down_b=n(n_layers, d, scale=0.1))
  weights = dict(embed=n(vocab, d, scale=1.0), positions=n(max_positions + 2, d, scale=0.5),
                 final_ln_w=1 + n(d, scale=0.1), final_ln_b=n(d, scale=0.1), layers=layers)
  config = OPTConfig(n_layers=n_layers, d_model=d, n_heads=heads, d_ff=f, vocab=vocab,
                     max_positions=max_positions, pre_ln=pre_ln)
  return OPT(config, weights)


class KVCacheTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    ckpt = testlib.make_checkpoint(testlib.tempdir(cls) / "llama")  # grouped-query attention
    gemma3 = testlib.tempdir(cls) / "gemma3"
    testlib.hf_tiny_model("gemma3", sliding_window=4).save_pretrained(gemma3)
    cls.models = dict(llama=models.load(str(ckpt))[0], opt=tiny_opt(), opt_post_ln=tiny_opt(1, pre_ln=False),
                      gemma3=models.load(str(gemma3))[0])

  @parameterized.product(model=("llama", "opt", "opt_post_ln", "gemma3"), precision=((0, 0, 0, 0), (6, 5, 4, 6)))
  def test_greedy_generation_with_the_cache_equals_rerunning_the_prefix(self, model, precision):
    m = self.models[model]
    prompt = [5, 17, 3, 42, 8, 11, 60]
    cached = generate.generate_ids(m, prompt, 12, np.asarray(precision, np.int32), SPEC, kv_cache=True)
    rerun = generate.generate_ids(m, prompt, 12, np.asarray(precision, np.int32), SPEC, kv_cache=False)
    self.assertLen(cached, 12)
    self.assertEqual(cached, rerun)

  @parameterized.parameters("llama", "opt", "gemma3")
  def test_prefill_and_steps_give_the_forward_logits(self, model):
    m, tokens = self.models[model], np.array([[5, 17, 3, 42, 8, 11, 60, 2, 9]], np.int32)
    p = np.array([6, 5, 4, 6], np.int32)
    full = np.asarray(m(tokens, p, SPEC))
    cache = m.init_cache(1, 12)
    h, cache = m.run_layers_cached(m.embed(tokens[:, :5]), cache, 0, p, SPEC)
    steps = [np.asarray(m.head(h))]
    for pos in range(5, 9):
      h, cache = m.run_layers_cached(m.embed(tokens[:, pos:pos + 1], pos), cache, pos, p, SPEC)
      steps.append(np.asarray(m.head(h)))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=2e-4, atol=2e-4)

  def test_one_compiled_step_serves_every_token(self):
    m = self.models["opt"]
    generate._decode_step.clear_cache()  # pylint: disable=protected-access
    out = generate.generate_ids(m, [1, 2, 3], 9, None, SPEC)
    self.assertLen(out, 9)
    self.assertEqual(generate._decode_step._cache_size(), 1)  # pylint: disable=protected-access

  def test_prompt_and_new_tokens_must_fit_the_context(self):
    m = self.models["opt"]  # max_positions 64
    with self.assertRaisesRegex(ValueError, "prompt \\+ max_new_tokens = 65 tokens is invalid: the "
                                            "model's context is 64 tokens"):
      generate.generate_ids(m, list(range(60)), 5)


class TokenizerTest(absltest.TestCase):

  def test_token_ids_beyond_the_models_vocabulary_are_refused(self):
    # A byte-level BPE has at least 256 ids: more than this model's 64 embedding rows.
    ckpt = testlib.make_checkpoint(testlib.tempdir(self) / "llama", vocab=64, n_layers=1)
    model, tokenizer = models.load(str(ckpt))
    self.assertGreater(max(tokenizer.encode("The quick brown fox")), 64)
    with self.assertRaisesRegex(ValueError, r"--prompt is invalid for this model: its tokens hold "
                                            r"token ids \d+\.\.\d+: must be in \[0, vocab=64\): the "
                                            "tokenizer gives ids beyond the model's vocabulary"):
      generate.generate(model, tokenizer, "The quick brown fox", 4)


class PrecisionFlagTest(parameterized.TestCase):

  @parameterized.parameters(("", None), ("8", [8, 8, 8, 8]), ("0,6,8,24", [0, 6, 8, 24]))
  def test_valid(self, text, expected):
    got = generate.parse_precision(text)
    self.assertEqual(None if got is None else got.tolist(), expected)

  @parameterized.parameters(("abc", "must be one integer or four"), ("25", r"in \[0, 24\]"),
                            ("-3", r"in \[0, 24\]"), ("8,8", "must be one integer or four"),
                            ("8,,8,8", "must be one integer or four"))
  def test_invalid(self, text, message):
    with self.assertRaisesRegex(ValueError, f"--precision='{text}' is invalid: .*{message}"):
      generate.parse_precision(text)


if __name__ == "__main__":
  absltest.main()
