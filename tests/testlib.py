"""Helpers shared by the test files: temporary folders, multi-device subprocesses, test data,
independent float64 readings of the library's objects, Hugging Face reference models, a tiny
checkpoint with its corpus.

tests/ is on pytest's `pythonpath` (pyproject.toml), so a test file says `import testlib`;
conftest.py beside this file holds the pytest side (what the markers mean, enforced).
torch and transformers are imported inside the functions that need them, so tests that do not
compare against Hugging Face never import them."""

import contextlib
import functools
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import textwrap
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from anda_jax import assets
from anda_jax.numerics import anda
from anda_jax.numerics import int4

# ------------------------------------------------------------------------------ folders, processes


def tempdir(test) -> pathlib.Path:
  """A new folder, removed when `test` is done: a TestCase (in setUp or a test) or its class
  (in setUpClass). tempfile rather than absltest's create_tempdir, which needs absl's flags
  parsed (pytest does not parse them)."""
  path = pathlib.Path(tempfile.mkdtemp(prefix="anda_jax_test_"))
  cleanup = test.addClassCleanup if isinstance(test, type) else test.addCleanup
  cleanup(shutil.rmtree, path, ignore_errors=True)
  return path


def asset_cache(test) -> pathlib.Path:
  """A new empty folder that the asset, corpus and token caches use (ANDA_JAX_CACHE) while
  `test` (a TestCase) runs, so that it neither reads nor fills the user's cache."""
  path = tempdir(test)
  test.enterContext(mock.patch.dict(os.environ, {"ANDA_JAX_CACHE": str(path)}))
  return path


REPO = pathlib.Path(__file__).resolve().parents[1]


def run_with_cpu_devices(test, script: str, n_devices: int, timeout: float = 300):
  """Runs the Python `script` in a new process that sees `n_devices` CPU devices (JAX fixes the
  device count when it starts), from the repo root, and returns the JSON value its last line of
  output holds. Fails `test` with the script's stderr if the script fails."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)
  test.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
  return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ activations


def heavy_tailed(seed: int, shape, special_values: bool = False) -> jax.Array:
  """float32 Student-t(2) values with ~5% of the channels (last axis) 30x larger, like LLM layer
  inputs. special_values adds 10% exact zeros, a -0.0 (flat index 1) and an Inf (the last
  element, so its group is a NaN group). numpy: jax's t sampler takes seconds to compile for
  every new shape."""
  rng = np.random.default_rng(seed)
  x = rng.standard_t(2.0, shape) * np.where(rng.random(shape[-1:]) < 0.05, 30.0, 1.0)
  if special_values:
    x = np.where(rng.random(shape) < 0.1, 0.0, x).astype(np.float32)
    x.reshape(-1)[1] = -0.0
    x.reshape(-1)[-1] = np.inf
  return jnp.asarray(x, jnp.float32)


def binade_rows(rng: np.random.Generator, shape, exponents: tuple[int, int]) -> np.ndarray:
  """float32 normal values, each row scaled by 2^e for a random integer e in [exponents[0],
  exponents[1]), with 10% exact zeros: the shared exponent E and the magnitudes vary across
  groups."""
  x = rng.normal(size=shape) * np.exp2(rng.integers(*exponents, size=shape[:-1] + (1,)))
  return np.where(rng.random(shape) < 0.1, 0.0, x).astype(np.float32)


def assert_bit_exact(actual, expected, err_msg: str = ""):
  """Equal float32 bit patterns (so -0.0 differs from +0.0), NaN where expected is NaN."""
  actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
  np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=err_msg)
  mask = ~np.isnan(expected)
  np.testing.assert_array_equal(actual.view(np.uint32)[mask], expected.view(np.uint32)[mask],
                                err_msg=err_msg)


# Jitted with a traced M: one compilation per (shape, format), not one per op and per M (eager
# encode compiles dozens of small programs; the machine is shared).
encode = jax.jit(anda.encode, static_argnums=1)

# ------------------------------------------------------------------------------ INT4 weights

# One compilation per (shape, Gw, symmetric) instead of one per eager op.
quantize_rtn = jax.jit(int4.quantize_rtn, static_argnums=(1, 2))


@functools.lru_cache(maxsize=None)
def int4_weights(seed: int, k: int, n: int, group_size: int, symmetric: bool,
                 std: float = 1.0) -> int4.Int4Weights:
  """RTN INT4 weights [K, N] of a normal(0, std) matrix; cached, as several cases share them."""
  w = np.random.default_rng(seed).normal(size=(k, n)) * std
  return quantize_rtn(w.astype(np.float32), group_size, symmetric)


def int4_float64(qw: int4.Int4Weights):
  """(q int64, d float64, z float64), each [K, N], of unbatched weights, so that W = d q + z
  (z = 0 for symmetric weights). The codes come from the packed nibbles by numpy alone (row 2j
  is the low nibble, row 2j + 1 the high one), not through int4.codes."""
  k, n = qw.shape
  packed = np.asarray(qw.packed, np.int64)
  q = np.stack([packed & 15, packed >> 4], axis=1).reshape(k, n) - (8 if qw.symmetric else 0)
  d = np.repeat(np.asarray(qw.scale, np.float64), qw.group_size, axis=0)
  z = (np.zeros_like(d) if qw.symmetric
       else np.repeat(np.asarray(qw.offset, np.float64), qw.group_size, axis=0))
  return q, d, z


# Where each GGUF block holds its f16 scale (and minimum) fields, in bytes from the block's start.
_GGUF_F16_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
                    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
                    "IQ4_NL": (0,), "IQ4_XS": (0,)}


def random_gguf_blocks(rng: np.random.Generator, qtype, n_out: int, k: int, scale: float = 1.0):
  """Raw bytes uint8 [n_out, bytes per row] of a GGUF tensor [n_out, k] of type `qtype` (a
  gguf.GGMLQuantizationType of _GGUF_F16_FIELDS): random code and sub-scale bytes, and f16
  scale / minimum fields drawn from normal(0, scale) (finite, either sign), with one block's
  fields exactly zero when there are several blocks."""
  import gguf  # pylint: disable=g-import-not-at-top

  block, type_size = gguf.GGML_QUANT_SIZES[qtype]
  nb = k // block
  raw = rng.integers(0, 256, size=(n_out, nb, type_size), dtype=np.uint8)
  for offset in _GGUF_F16_FIELDS[qtype.name]:
    halves = (rng.normal(size=(n_out, nb)) * scale).astype(np.float16)
    if n_out * nb > 1:
      halves[0, 0] = 0.0
    raw[..., offset:offset + 2] = halves[..., None].view(np.uint8)
  return raw.reshape(n_out, nb * type_size)


# ------------------------------------------------------------------------------ Hugging Face

HF_TINY_VOCAB = 96
# The tiny models' defaults; keyword arguments of hf_tiny_model override them.
_HF_TINY = dict(
    llama=dict(vocab_size=HF_TINY_VOCAB, hidden_size=64, intermediate_size=96,
               num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
               tie_word_embeddings=True, rope_theta=500.0),
    opt=dict(vocab_size=HF_TINY_VOCAB, hidden_size=64, ffn_dim=96, num_hidden_layers=3,
             num_attention_heads=4, max_position_embeddings=64, do_layer_norm_before=True),
    # A sliding window (8) shorter than the test windows, a global layer between local ones,
    # and a query scale other than head_dim^-1/2.
    gemma3=dict(vocab_size=HF_TINY_VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
                layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                query_pre_attn_scalar=24, max_position_embeddings=256, tie_word_embeddings=True,
                rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 500.0},
                                 "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}}),
)


def hf_tiny_model(kind: str, seed: int = 0, **config):
  """A random transformers LlamaForCausalLM ("llama"), OPTForCausalLM ("opt") or
  Gemma3ForCausalLM ("gemma3"), float32, in eval mode. The default init (std 0.02) leaves logits
  near zero, so the weights are wider (std 0.15, norm factors 1 +- 0.2: Gemma's norm weights w
  scale by 1 + w) and a parity check against it bites."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.manual_seed(seed)
  kwargs = dict(_HF_TINY[kind], **config)
  if kind == "llama":
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs))
  elif kind == "gemma3":
    model = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**kwargs))
  else:
    model = transformers.OPTForCausalLM(transformers.OPTConfig(**kwargs))
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name and name.endswith("weight"):
        p.copy_((0.0 if kind == "gemma3" else 1.0) + 0.2 * torch.randn_like(p))
      else:
        p.copy_(0.15 * torch.randn_like(p))
  return model.eval()


def hf_logits(model, tokens) -> np.ndarray:
  """A transformers causal LM's float logits [B, T, vocab] for int tokens [B, T]."""
  import torch  # pylint: disable=g-import-not-at-top

  with torch.no_grad():
    return model(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


def hf_perplexity(model, windows) -> float:
  """exp(the transformers model's mean next-token loss over every target of the windows)."""
  import torch  # pylint: disable=g-import-not-at-top

  with torch.no_grad():
    tokens = torch.tensor(np.asarray(windows), dtype=torch.long)
    return float(np.exp(model(input_ids=tokens, labels=tokens).loss.item()))


@functools.lru_cache(maxsize=None)
def gguf_reader(path: str):
  """gguf's own reader of a GGUF file, parsed once per test process (it only reads the file).
  The class from its defining module: `hf_gguf` replaces the package's name with this function."""
  from gguf import gguf_reader as reader_module  # pylint: disable=g-import-not-at-top

  return reader_module.GGUFReader(path)


def hf_gguf(name: str):
  """transformers' own GGUF tokenizer and model (dequantized to float32) for the asset `name`:
  the reference for our loader. Fetches the file on first use (the test must be marked
  real_model). transformers parses the file's metadata once per object it builds (tokenizer,
  config, weights); here the three share one parse of the file (`gguf_reader`)."""
  import gguf  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  path = assets.fetch(name)
  with mock.patch.object(gguf, "GGUFReader", gguf_reader):
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
  return tokenizer, model


# ------------------------------------------------------------------------------ tiny checkpoint
# A tiny LLaMA checkpoint in Hugging Face layout (config.json, model.safetensors,
# tokenizer.json) and a small text corpus, for the data / evaluation / experiment tests. Built
# with numpy, safetensors and tokenizers only (no torch).

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
  """A byte-level BPE (the `tokenizers` package) trained on corpus_text()."""
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


def tiny_run_inputs(folder) -> tuple[pathlib.Path, pathlib.Path]:
  """(checkpoint, corpus file) written to `folder`/ckpt and `folder`/corpus.txt: the tiny model
  (make_checkpoint's defaults) and corpus_text(), what an experiment on the tiny model reads."""
  folder = pathlib.Path(folder)
  corpus = folder / "corpus.txt"
  corpus.write_text(corpus_text())
  return make_checkpoint(folder / "ckpt"), corpus


@contextlib.contextmanager
def warnings_logged(logging_module):
  """The messages `logging_module.warning(...)` is called with inside the block, formatted:
  independent of the process-wide logging setup (handlers, levels) other tests leave behind."""
  messages = []

  def record(msg, *args, **kwargs):
    del kwargs
    messages.append(msg % args if args else msg)

  with mock.patch.object(logging_module, "warning", side_effect=record):
    yield messages
