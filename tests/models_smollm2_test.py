"""The real SmolLM2-135M-Instruct GGUF (Q4_1 layers, Q8_0 tied embedding) against transformers'
GGUF loader: token ids on edge cases and on every article of the Wikipedia excerpt, logits on a
128-token window, and the precision semantics on the real model."""

from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anda_jax import data
from anda_jax import models
from anda_jax.evaluation import evaluate
from anda_jax.numerics import int4
import testlib

PARAGRAPHS = (
    "The lighthouse stood at the end of a narrow spit of land, where the sea had worn the rocks "
    "into long grey ribs. Every evening the keeper climbed the spiral stair, trimmed the wick and "
    "polished the great lens until it caught the last of the daylight. Ships that passed in the "
    "night never saw him, only the slow white beam turning over the water.",
    "Bread is one of the oldest prepared foods. Flour and water are mixed into a dough, which is "
    "left to rise when yeast or a sourdough starter is added; the gas the yeast produces is trapped "
    "by the gluten and gives the loaf its open crumb. Baking then sets the structure and browns "
    "the crust, whose flavour comes from the Maillard reaction.",
    "In the autumn the committee met again. Some members argued that the old bridge should be "
    "repaired, others that a new one would be cheaper in the long run. Nobody could agree on who "
    "would pay for it, and the meeting ended, as it usually did, with a vote to ask the engineers "
    "for another report.",
    "Honeybees communicate the direction and distance of flowers through a waggle dance performed "
    "on the comb. The angle of the dance relative to vertical encodes the direction of the food "
    "relative to the sun, while the duration of the waggle run encodes the distance.",
)


_FORWARD = jax.jit(lambda m, t, p: m(t, p))


@pytest.mark.real_model
class SmolLM2Test(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model, cls.tokenizer = models.load("smollm2-135m")
    cls.hf_tokenizer, cls.hf_model = testlib.hf_gguf("smollm2-135m")
    ids = cls.tokenizer.encode("\n\n".join(PARAGRAPHS))
    assert len(ids) >= 128, len(ids)
    cls.window = np.asarray(ids[:128], np.int32)[None]
    cls.float_logits = _FORWARD(cls.model, cls.window, None)

  def test_config_and_weights(self):
    c = self.model.config
    self.assertEqual((c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.d_ff, c.vocab),
                     (30, 576, 9, 3, 1536, 49152))
    self.assertTrue(c.tie_embeddings)
    for site, w in self.model.layers.get_value().items():
      if site in ("qkv", "o", "up", "down"):  # Q4_1 stays 4-bit, as stored
        self.assertIsInstance(w, int4.Int4Weights)
        self.assertFalse(w.symmetric)
        self.assertEqual(w.group_size, 32)

  def test_token_ids_match_transformers(self):
    edge_cases = ("<|im_start|>user\nHello there!<|im_end|>\n",
                  "In 2024:\n\n1. cost 45 \u00bd\u00bc, dating from\u00a03 BC")  # digits after whitespace
    for text in PARAGRAPHS + (" ".join(PARAGRAPHS),) + edge_cases:
      ours = self.tokenizer.encode(text)
      self.assertEqual(ours, self.hf_tokenizer(text)["input_ids"], msg=text[:40])
      self.assertEqual(self.tokenizer.decode(ours), text)
    # Its GGUF adds no BOS (add_bos_token false), as transformers' tokenizer: data.bos "auto"
    # keeps its windows cut from the token stream alone, the windows of its recorded results.
    self.assertFalse(self.tokenizer.add_bos)
    self.assertFalse(data.bos_first("auto", self.tokenizer))

  def test_token_ids_match_transformers_on_real_text(self):
    corpus = data.load_corpus("enwiki-excerpt")
    articles = corpus.calibration + corpus.test
    self.assertLen(articles, 106)
    for article in articles:  # every paragraph of the Wikipedia excerpt, 650k tokens in all
      self.assertEqual(self.tokenizer.encode(article), self.hf_tokenizer(article)["input_ids"],
                       msg=article[:60])

  def test_logits_match_transformers(self):
    ref = testlib.hf_logits(self.hf_model, self.window)
    np.testing.assert_allclose(np.asarray(self.float_logits), ref, atol=2e-3, rtol=0)
    # And the model predicts real text: most next tokens rank in its top 10.
    top10 = np.argsort(-ref[0, :-1], axis=-1)[:, :10]
    self.assertGreater(np.mean(np.any(top10 == self.window[0, 1:, None], axis=-1)), 0.5)

  def test_perplexity_matches_transformers_on_real_text(self):
    # The FP-activation perplexity of the evaluation path on 2 test windows of 128 tokens.
    windows = data.token_windows(data.load_corpus("enwiki-excerpt").test, self.tokenizer, 128,
                                 max_windows=2)
    ppl = evaluate.perplexity(self.model, windows, np.zeros((1, 4), np.int32))[0]
    np.testing.assert_allclose(ppl, testlib.hf_perplexity(self.hf_model, windows), rtol=1e-3)

  def test_precision_semantics(self):
    err = lambda m: float(jnp.abs(_FORWARD(self.model, self.window, np.full(4, m, np.int32))
                                  - self.float_logits).max())
    chex.assert_trees_all_equal(_FORWARD(self.model, self.window, np.zeros(4, np.int32)),
                                self.float_logits)
    self.assertLess(err(24), 1e-3)
    e8, e3 = err(8), err(3)
    self.assertGreater(e8, 1e-3)
    self.assertGreater(e3, 5 * e8)


if __name__ == "__main__":
  absltest.main()
