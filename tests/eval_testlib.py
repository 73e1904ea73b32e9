"""A tiny LLaMA checkpoint in Hugging Face layout (config.json, model.safetensors,
tokenizer.json) and a small text corpus, for the data / evaluation / experiment tests.

Built with numpy, safetensors and tokenizers only, so tests that don't compare against
transformers never import torch."""

import json
import pathlib

import numpy as np

# Varied English prose, so the BPE learns real merges and windows differ from one another.
_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Anda groups activations so that a shared exponent serves many mantissas.",
    "Perplexity measures how surprised a language model is by the next token.",
    "Bit-serial hardware pays for exactly the mantissa bits that a module needs.",
    "A calibration set is used to choose precisions, a test set to report them.",
    "Wikipedia articles are split by title, so no article appears in both sets.",
    "Rivers flow into the sea, and the sea returns the water to the clouds.",
    "Mathematics is the language in which the book of nature is written.",
]


def corpus_text(n_articles: int = 24, seed: int = 0) -> str:
  """Blank-line separated 'articles' of shuffled sentences."""
  rng = np.random.default_rng(seed)
  articles = []
  for i in range(n_articles):
    sentences = [_SENTENCES[j] for j in rng.integers(0, len(_SENTENCES), 6)]
    articles.append(f"Article {i}. " + " ".join(sentences))
  return "\n\n".join(articles)


def make_tokenizer(vocab_size: int = 200):
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import decoders, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top

  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator([corpus_text()], trainer)
  return tok


def make_checkpoint(directory, *, n_layers: int = 2, d_model: int = 32, n_heads: int = 4,
                    n_kv_heads: int = 2, d_ff: int = 64, vocab: int = 256, seed: int = 0,
                    tie: bool = False) -> pathlib.Path:
  """Writes a random LLaMA checkpoint in HF layout to `directory` and returns it."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  tok = make_tokenizer(min(vocab, 200))
  tok.save(str(directory / "tokenizer.json"))
  head_dim = d_model // n_heads
  rng = np.random.default_rng(seed)
  # Scaled so activations stay O(1) and the logits are far from uniform.
  lin = lambda n_out, k: (rng.standard_normal((n_out, k)) / np.sqrt(k)).astype(np.float32)
  t = {"model.embed_tokens.weight": rng.standard_normal((vocab, d_model)).astype(np.float32),
       "model.norm.weight": (1 + 0.1 * rng.standard_normal(d_model)).astype(np.float32)}
  if not tie:
    t["lm_head.weight"] = 2 * lin(vocab, d_model)
  for i in range(n_layers):
    p = f"model.layers.{i}."
    t[p + "input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(d_model)).astype(np.float32)
    t[p + "post_attention_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(d_model)).astype(np.float32)
    t[p + "self_attn.q_proj.weight"] = lin(n_heads * head_dim, d_model)
    t[p + "self_attn.k_proj.weight"] = lin(n_kv_heads * head_dim, d_model)
    t[p + "self_attn.v_proj.weight"] = lin(n_kv_heads * head_dim, d_model)
    t[p + "self_attn.o_proj.weight"] = lin(d_model, n_heads * head_dim)
    t[p + "mlp.gate_proj.weight"] = lin(d_ff, d_model)
    t[p + "mlp.up_proj.weight"] = lin(d_ff, d_model)
    t[p + "mlp.down_proj.weight"] = lin(d_model, d_ff)
  save_file(t, str(directory / "model.safetensors"))
  config = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=d_model,
                intermediate_size=d_ff, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                num_key_value_heads=n_kv_heads, head_dim=head_dim, vocab_size=vocab,
                rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu",
                tie_word_embeddings=tie, max_position_embeddings=512, torch_dtype="float32")
  (directory / "config.json").write_text(json.dumps(config, indent=1))
  return directory
