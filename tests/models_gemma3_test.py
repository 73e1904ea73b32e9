"""The real Gemma 3 270M GGUF (Q4_K_M: Q4_K, Q5_0, Q6_K, Q8_0 and F32 tensors) against
transformers' GGUF loader (Gemma3ForCausalLM, float32): Q4_K read bit for bit as gguf reads it,
token ids on every article of the Wikipedia excerpt, logits on a window longer than the sliding
window, perplexity on a 1024-token window (BOS first) through the streamed LM head, and the precision
semantics on the real model. The Gemma Terms of Use apply to the model
(https://ai.google.dev/gemma/terms)."""

from absl.testing import absltest
import chex
import gguf
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anda_jax import assets
from anda_jax import data
from anda_jax import models
from anda_jax.evaluation import evaluate
from anda_jax.matmul import ProductSpec
from anda_jax.numerics import int4
import testlib

_FORWARD = jax.jit(lambda m, t, p: m(t, p))


def _hf_nll_sum(hf, window) -> float:
  """transformers' summed next-token loss over one window [T] (T - 1 targets)."""
  import torch  # pylint: disable=g-import-not-at-top

  with torch.no_grad():
    tokens = torch.tensor(np.asarray(window)[None], dtype=torch.long)
    return float(hf(input_ids=tokens, labels=tokens).loss.item()) * (len(window) - 1)


@pytest.mark.real_model
class Gemma3Test(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.path = assets.fetch("gemma3-270m")
    cls.model, cls.tokenizer = models.load("gemma3-270m")
    cls.hf_tokenizer, cls.hf_model = testlib.hf_gguf("gemma3-270m")
    cls.corpus = data.load_corpus("enwiki-excerpt")
    # Text the tests do not tune on: the test split's windows, 640 tokens (> the 512 window).
    cls.window = data.token_windows(cls.corpus.test, cls.tokenizer, 640, max_windows=1)
    cls.float_logits = _FORWARD(cls.model, cls.window, None)

  def test_config_and_weight_types(self):
    c = self.model.config
    self.assertEqual((c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.d_ff, c.vocab, c.head_dim),
                     (18, 640, 4, 1, 2048, 262144, 256))
    self.assertEqual(c.sliding_layers, ((True,) * 5 + (False,)) * 3)
    self.assertEqual((c.sliding_window, c.rope_theta, c.rope_local_theta, c.query_pre_attn_scalar),
                     (512, 1e6, 1e4, 256))
    o = self.model.layers.get_value()["o"]
    self.assertIsInstance(o, int4.Int4Weights)  # Q4_K, as stored
    self.assertEqual((o.symmetric, o.group_size), (False, 32))
    # What the file holds (its tensor list) and what each became.
    self.assertEqual(self.model.weight_types.counts(), {
        "F32 -> float32": 109, "Q4_K -> INT4 asymmetric G=32 (as stored)": 18,
        "Q4_K -> float32": 9, "Q5_0 -> float32": 81, "Q6_K -> float32": 9, "Q8_0 -> float32": 10})

  def test_q4_k_tensors_are_bit_identical_to_gguf(self):
    reader = testlib.gguf_reader(str(self.path))
    q4_k = [t for t in reader.tensors if t.tensor_type == gguf.GGMLQuantizationType.Q4_K]
    self.assertLen(q4_k, 27)
    for t in q4_k:
      k, n_out = (int(s) for s in t.shape)
      w = int4.from_gguf_q4_k(np.asarray(t.data), n_out, k)
      testlib.assert_bit_exact(np.asarray(int4.dequantize(w)).T,
                               gguf.quants.dequantize(np.asarray(t.data), t.tensor_type), err_msg=t.name)

  def test_token_ids_match_transformers_on_real_text(self):
    articles = self.corpus.calibration + self.corpus.test
    self.assertLen(articles, 106)
    n_tokens = 0
    for article in articles:  # every paragraph of the Wikipedia excerpt
      ids = self.tokenizer.encode(article)
      self.assertEqual(ids, self.hf_tokenizer(article)["input_ids"], msg=article[:60])
      self.assertEqual(ids[0], 2)  # BOS prepended
      n_tokens += len(ids)
    self.assertGreater(n_tokens, 500_000)
    edge_cases = ("<start_of_turn>user\nHi  there!<end_of_turn>\n\n\n", "\u00bd\u00a0 \U0001F600 \t x")
    for text in edge_cases:
      ids = self.tokenizer.encode(text)
      self.assertEqual(ids, self.hf_tokenizer(text)["input_ids"], msg=text)
      self.assertEqual(self.tokenizer.decode(ids[1:]), text)

  def test_logits_match_transformers_beyond_the_sliding_window(self):
    ref = testlib.hf_logits(self.hf_model, self.window)
    np.testing.assert_allclose(np.asarray(self.float_logits), ref, atol=2e-3, rtol=0)
    # And the model predicts real text: most next tokens rank in its top 10 (fewer than 10
    # logits above theirs).
    target_logits = np.take_along_axis(ref[0, :-1], self.window[0, 1:, None], axis=-1)
    self.assertGreater(np.mean(np.sum(ref[0, :-1] > target_logits, axis=-1) < 10), 0.5)

  def test_perplexity_with_bos_first_windows_matches_transformers_through_the_streamed_head(self):
    # Gemma 3 is trained with BOS first (its GGUF's add_bos_token), so data.bos "auto" puts BOS
    # at the start of every window, and the model is evaluated as it is used.
    self.assertTrue(data.bos_first("auto", self.tokenizer))
    windows = data.token_windows(self.corpus.test, self.tokenizer, 1024, max_windows=1, bos=True)
    self.assertEqual(windows.shape, (1, 1024))
    np.testing.assert_array_equal(windows[:, 0], self.tokenizer.bos_id)
    self.assertNotIn(self.tokenizer.bos_id, windows[:, 1:])  # BOS is never a target
    fp = np.zeros((1, 4), np.int32)
    ours = evaluate.perplexity(self.model, windows, fp, batch_size=1)[0]
    ref = np.exp(_hf_nll_sum(self.hf_model, windows[0]) / 1023)
    self.assertLess(abs(ours / ref - 1), 1e-3, (ours, ref))
    self.assertLess(ours, 100)
    # Evaluation never holds [batch, tokens, vocab] logits: XLA's temporary buffers of one call
    # stay below what one window's float32 logits alone would take.
    graphdef, state = nnx.split(self.model)
    compiled = evaluate._nll_sums.lower(  # pylint: disable=protected-access
        graphdef, state, windows, windows[:, 1:], np.ones((1, 1023), np.float32),
        fp, 0, None, 0, spec=ProductSpec(), mesh=None).compile()
    self.assertLess(compiled.memory_analysis().temp_size_in_bytes, 1024 * 262144 * 4 / 2)
    # The same targets (all but each window's first stream token) cost more without BOS before
    # them: BOS first is the setting the model was trained in.
    with_bos = evaluate.perplexity(self.model, windows, fp, batch_size=1, score_from=1)[0]
    without_bos = evaluate.perplexity(self.model, windows[:, 1:], fp, batch_size=1)[0]
    self.assertGreater(without_bos, with_bos)

  def test_precision_semantics(self):
    window = self.window[:, :128]  # the semantics need no long window
    float_logits = _FORWARD(self.model, window, None)
    err = lambda m: float(jnp.abs(_FORWARD(self.model, window, np.full(4, m, np.int32))
                                  - float_logits).max())
    chex.assert_trees_all_equal(_FORWARD(self.model, window, np.zeros(4, np.int32)), float_logits)
    self.assertLess(err(24), 1e-2)
    e8, e3 = err(8), err(3)
    self.assertGreater(e8, 1e-3)
    self.assertGreater(e3, 5 * e8)


if __name__ == "__main__":
  absltest.main()
