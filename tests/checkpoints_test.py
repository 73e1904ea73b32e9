"""GGUF and safetensors loading: tiny GGUF files written here with the gguf package (Q4_0, Q4_1,
Q8_0, F16, F32 tensors, K-quants, llama.cpp's Q/K row permutation, tied and untied heads, the
llama and gemma3 architectures) against a transformers model holding the same dequantized
weights, every tensor type gguf dequantizes read as gguf reads it, int4_group_size on GGUF
files, what weight_types records, broken files -> ValueError, and memory-lean loading: float16 /
bfloat16 weights stay so in the model, and INT4 loading quantizes one tensor at a time without
ever holding the model in float32."""

import json
import os
import pathlib
import re
import shutil
import tempfile
import tracemalloc
from unittest import mock
import weakref
import zlib

from absl.testing import absltest
from absl.testing import parameterized
import chex
from flax import nnx
import gguf
import jax
import jax.numpy as jnp
import numpy as np

from anda_jax import AndaFormat
from anda_jax.matmul import ProductSpec
from anda_jax import models
from anda_jax.models import gguf_reader
from anda_jax.models import tokenizer as tokenizer_lib
from anda_jax.numerics import int4
import testlib

Q = gguf.GGMLQuantizationType
D, F, HEADS, KV, LAYERS = 64, 128, 4, 2, 2
DH = D // HEADS
BYTE_TOKENS = list(tokenizer_lib._bytes_to_unicode().values())  # pylint: disable=protected-access
EXTRA_TOKENS = ["Ġt", "he", "Ġthe", "<|endoftext|>"]
VOCAB = len(BYTE_TOKENS) + len(EXTRA_TOKENS)
MIXED = dict(embed=Q.Q8_0, head=Q.F16, q=Q.Q4_0, k=Q.Q4_0, v=Q.Q4_0, o=Q.Q4_1, gate=Q.Q8_0, up=Q.Q8_0,
             down=Q.F16)
FLOAT = {k: Q.F32 for k in MIXED}
# K-quants and the other types gguf decodes but cannot encode need rows of 256 weights: a wider
# model (K_D, K_F) holds them.
K_D, K_F = 256, 512
K_QUANTS = dict(embed=Q.Q6_K, head=Q.Q5_K, q=Q.Q4_K, k=Q.Q2_K, v=Q.IQ4_XS, o=Q.Q4_K, gate=Q.Q3_K,
                up=Q.Q5_1, down=Q.Q6_K)
TOKENS = np.random.RandomState(0).randint(0, VOCAB, (2, 24)).astype(np.int32)


def _hf_llama(tied, d=D, f=F):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.manual_seed(1)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=VOCAB, hidden_size=d, intermediate_size=f, num_hidden_layers=LAYERS,
      num_attention_heads=HEADS, num_key_value_heads=KV, rms_norm_eps=1e-5, rope_theta=10000.0,
      tie_word_embeddings=tied, head_dim=d // HEADS))
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(1.0 + 0.2 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
  return model.eval()


def _llama_cpp_permute(w, n_head):
  """What llama.cpp's converter does to Q/K rows (interleaved rotary pairs)."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama_cpp_unpermute(w, n_head):
  return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _stored(w, qtype, seed=0):
  """(the data to write, the float32 values the file then holds) of weights w [n_out, k] stored
  as qtype. Types gguf decodes but cannot encode (K-quants, ...) get random blocks whose weights
  have about w's spread: what the model reads is what gguf.quants.dequantize makes of them."""
  if qtype == Q.F32:
    return w, w
  if qtype == Q.F16:
    return w.astype(np.float16), w.astype(np.float16).astype(np.float32)
  if qtype == Q.I32:  # a type gguf does not dequantize
    return np.round(w * 100).astype(np.int32), None
  try:
    data = gguf.quants.quantize(w, qtype)
  except NotImplementedError:
    blocks = lambda scale: testlib.random_gguf_blocks(np.random.default_rng(seed), qtype, *w.shape, scale)
    data = blocks(w.std() / gguf.quants.dequantize(blocks(1.0), qtype).std())
  return data, gguf.quants.dequantize(data, qtype).reshape(w.shape)


def write_gguf(path, hf, types, arch="llama", omit=(), tied=False, head_count=HEADS,
               merges=("Ġ t", "h e", "Ġt he")):
  """Writes hf's weights as a GGUF like llama.cpp's converter; sets hf's weights to the values the
  file holds (dequantized by the gguf package, an independent decoder) and returns hf."""
  import torch  # pylint: disable=g-import-not-at-top

  d, f = hf.config.hidden_size, hf.config.intermediate_size
  writer = gguf.GGUFWriter(str(path), arch)
  writer.add_block_count(LAYERS)
  writer.add_context_length(256)
  writer.add_embedding_length(d)
  writer.add_feed_forward_length(f)
  writer.add_head_count(head_count)
  writer.add_head_count_kv(KV)
  writer.add_rope_dimension_count(hf.config.head_dim)
  writer.add_rope_freq_base(10000.0)
  writer.add_layer_norm_rms_eps(1e-5)
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("default")
  writer.add_token_list(BYTE_TOKENS + EXTRA_TOKENS)
  writer.add_token_types([1] * (VOCAB - 1) + [3])
  writer.add_token_merges(list(merges))
  writer.add_eos_token_id(VOCAB - 1)

  params = dict(hf.named_parameters())

  def put(gguf_name, hf_name, qtype, permute_heads=None):
    if gguf_name in omit:
      return
    w = params[hf_name].detach().numpy().astype(np.float32)
    if permute_heads:
      w = _llama_cpp_permute(w, permute_heads)
    data, stored = _stored(w, qtype, seed=zlib.crc32(gguf_name.encode()))
    writer.add_tensor(gguf_name, data, raw_dtype=qtype if qtype not in (Q.F32, Q.F16, Q.I32) else None)
    if stored is None:
      return
    if permute_heads:
      stored = _llama_cpp_unpermute(stored, permute_heads)
    with torch.no_grad():
      params[hf_name].copy_(torch.from_numpy(np.ascontiguousarray(stored)))

  put("token_embd.weight", "model.embed_tokens.weight", types["embed"])
  put("output_norm.weight", "model.norm.weight", Q.F32)
  if not tied:
    put("output.weight", "lm_head.weight", types["head"])
  for i in range(LAYERS):
    p = f"model.layers.{i}."
    put(f"blk.{i}.attn_norm.weight", p + "input_layernorm.weight", Q.F32)
    put(f"blk.{i}.ffn_norm.weight", p + "post_attention_layernorm.weight", Q.F32)
    put(f"blk.{i}.attn_q.weight", p + "self_attn.q_proj.weight", types["q"], HEADS)
    put(f"blk.{i}.attn_k.weight", p + "self_attn.k_proj.weight", types["k"], KV)
    put(f"blk.{i}.attn_v.weight", p + "self_attn.v_proj.weight", types["v"])
    put(f"blk.{i}.attn_output.weight", p + "self_attn.o_proj.weight", types["o"])
    put(f"blk.{i}.ffn_gate.weight", p + "mlp.gate_proj.weight", types["gate"])
    put(f"blk.{i}.ffn_up.weight", p + "mlp.up_proj.weight", types["up"])
    put(f"blk.{i}.ffn_down.weight", p + "mlp.down_proj.weight", types["down"])
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return hf


# A SentencePiece vocabulary as Gemma's GGUF spells it: control tokens, a user-defined token, a
# run of spaces stored with real spaces, byte-fallback tokens, pieces with U+2581 for spaces.
SP_CONTROL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>"]
SP_TOKENS = (SP_CONTROL + ["\n\n"] + [f"<0x{b:02X}>" for b in range(256)]
             + ["\u2581", "t", "h", "e", "\u2581t", "he", "\u2581the", "  ", "a", "\u2581a"])
SP_TYPES = [3] * len(SP_CONTROL) + [4] + [6] * 256 + [1] * 10
# Gemma 3's layer pattern needs 6 layers for one global layer; K-quant rows need 256 weights.
G_LAYERS, G_D, G_F, G_HEADS, G_DH = 6, 256, 512, 2, 128
GEMMA_TYPES = dict(embed=Q.Q8_0, q=Q.Q5_0, k=Q.Q5_0, v=Q.Q8_0, o=Q.Q4_K, gate=Q.Q5_K, up=Q.Q5_0,
                   down=lambda i: Q.Q6_K if i % 2 else Q.Q4_K)


def _hf_gemma3():
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.manual_seed(2)
  model = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
      vocab_size=len(SP_TOKENS), hidden_size=G_D, intermediate_size=G_F, num_hidden_layers=G_LAYERS,
      num_attention_heads=G_HEADS, num_key_value_heads=1, head_dim=G_DH, sliding_window=8,
      query_pre_attn_scalar=G_DH, max_position_embeddings=256, rms_norm_eps=1e-6))
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(0.2 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
  return model.eval()


def write_gemma3_gguf(path, hf, types):
  """Writes hf (a Gemma3ForCausalLM) as llama.cpp's converter does: every norm weight stored as
  1 + w, Q/K rows in their own order, a SentencePiece vocabulary without merges. Sets hf's
  weights to the file's values as transformers reads them back (norms: the stored 1 + w, minus 1)
  and returns hf."""
  import torch  # pylint: disable=g-import-not-at-top

  writer = gguf.GGUFWriter(str(path), "gemma3")
  for add, value in ((writer.add_block_count, G_LAYERS), (writer.add_context_length, 256),
                     (writer.add_embedding_length, G_D), (writer.add_feed_forward_length, G_F),
                     (writer.add_head_count, G_HEADS), (writer.add_head_count_kv, 1),
                     (writer.add_key_length, G_DH), (writer.add_value_length, G_DH),
                     (writer.add_sliding_window, 8), (writer.add_rope_freq_base, 1e6),
                     (writer.add_layer_norm_rms_eps, 1e-6)):
    add(value)
  writer.add_tokenizer_model("llama")
  writer.add_tokenizer_pre("default")
  writer.add_token_list(SP_TOKENS)
  writer.add_token_scores([-1000.0] * len(SP_CONTROL) + [-1000.0] + [0.0] * 256 + [-float(i) for i in range(10)])
  writer.add_token_types(SP_TYPES)
  for add, value in ((writer.add_bos_token_id, 2), (writer.add_eos_token_id, 1),
                     (writer.add_unk_token_id, 3), (writer.add_pad_token_id, 0),
                     (writer.add_add_bos_token, True), (writer.add_add_space_prefix, False)):
    add(value)
  params = dict(hf.named_parameters())

  def put(gguf_name, hf_name, qtype, norm=False):
    w = params[hf_name].detach().numpy().astype(np.float32)
    data, stored = _stored(1.0 + w if norm else w, qtype, seed=zlib.crc32(gguf_name.encode()))
    writer.add_tensor(gguf_name, data, raw_dtype=qtype if qtype != Q.F32 else None)
    with torch.no_grad():
      params[hf_name].copy_(torch.from_numpy(np.ascontiguousarray(stored - 1.0 if norm else stored)))

  put("token_embd.weight", "model.embed_tokens.weight", types["embed"])
  put("output_norm.weight", "model.norm.weight", Q.F32, norm=True)
  for i in range(G_LAYERS):
    p = f"model.layers.{i}."
    for name, hf_name in (("attn_norm", "input_layernorm"), ("post_attention_norm", "post_attention_layernorm"),
                          ("ffn_norm", "pre_feedforward_layernorm"), ("post_ffw_norm", "post_feedforward_layernorm"),
                          ("attn_q_norm", "self_attn.q_norm"), ("attn_k_norm", "self_attn.k_norm")):
      put(f"blk.{i}.{name}.weight", p + hf_name + ".weight", Q.F32, norm=True)
    for name, hf_name, kind in (("attn_q", "self_attn.q_proj", "q"), ("attn_k", "self_attn.k_proj", "k"),
                                ("attn_v", "self_attn.v_proj", "v"), ("attn_output", "self_attn.o_proj", "o"),
                                ("ffn_gate", "mlp.gate_proj", "gate"), ("ffn_up", "mlp.up_proj", "up"),
                                ("ffn_down", "mlp.down_proj", "down")):
      qtype = types[kind](i) if callable(types[kind]) else types[kind]
      put(f"blk.{i}.{name}.weight", p + hf_name + ".weight", qtype)
  for step in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file,
               writer.close):
    step()
  return hf


def _finite_random_tensor(qtype, n_out, k):
  """(raw data, gguf's float32 values [n_out, k]) of random bytes of type qtype with every value
  finite: blocks with a non-finite value are drawn again (random f16 / E8M0 scale fields are NaN
  or huge now and then)."""
  block, type_size = gguf.GGML_QUANT_SIZES[qtype]
  rng = np.random.default_rng(int(qtype))
  if qtype in (Q.F32, Q.F16, Q.BF16):  # plain floats: normal values, as bytes
    values = rng.normal(size=(n_out, k)).astype(np.float32)
    if qtype == Q.BF16:
      raw = (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(n_out, -1)
    else:
      raw = values.astype(np.float16 if qtype == Q.F16 else np.float32).view(np.uint8)
    return raw, gguf.quants.dequantize(raw, qtype).reshape(n_out, k)
  blocks = rng.integers(0, 256, (n_out * k // block, type_size), dtype=np.uint8)
  for _ in range(100):
    with np.errstate(all="ignore"):
      bad = ~np.isfinite(gguf.quants.dequantize(blocks, qtype)).all(axis=-1)
    if not bad.any():
      raw = blocks.reshape(n_out, -1)
      return raw, gguf.quants.dequantize(raw, qtype).reshape(n_out, k)
    blocks[bad] = rng.integers(0, 256, (int(bad.sum()), type_size), dtype=np.uint8)
  raise AssertionError(f"no finite random {qtype.name} tensor")


def _hf_logits(hf, tokens):
  import torch  # pylint: disable=g-import-not-at-top

  with torch.no_grad():
    return hf(torch.tensor(tokens, dtype=torch.long)).logits.numpy()


_FORWARD = jax.jit(lambda m, t: m(t))


class GGUFTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = pathlib.Path(tempfile.mkdtemp())

  @parameterized.named_parameters(
      ("mixed_types_untied", MIXED, False),
      ("f32_tied", FLOAT, True),
  )
  def test_logits_match_transformers_on_same_weights(self, types, tied):
    path = self.dir / "tiny.gguf"
    hf = write_gguf(path, _hf_llama(tied), types, tied=tied)
    model, tokenizer = models.load(path)
    self.assertEqual(model.config.tie_embeddings, tied)
    layers = model.layers.get_value()
    if types is MIXED:  # 4-bit tensors stay 4-bit, the rest is float
      self.assertIsInstance(layers["qkv"], int4.Int4Weights)
      self.assertTrue(layers["qkv"].symmetric)
      self.assertIsInstance(layers["o"], int4.Int4Weights)
      self.assertFalse(layers["o"].symmetric)
      self.assertNotIsInstance(layers["up"], int4.Int4Weights)
      # F16 tensors stay float16 (upcast where used); Q8_0 ones are float32 (d * q).
      self.assertEqual(layers["down"].dtype, np.float16)
      self.assertEqual(model.lm_head[...].dtype, np.float16)
      self.assertEqual(layers["up"].dtype, np.float32)
    np.testing.assert_allclose(np.asarray(_FORWARD(model, TOKENS)), _hf_logits(hf, TOKENS), atol=1e-4, rtol=0)
    # The byte-level BPE tokenizer from the metadata, merges and specials included.
    ids = tokenizer.encode(" the cat<|endoftext|>")
    self.assertEqual(ids[0], len(BYTE_TOKENS) + 2)  # "Ġthe"
    self.assertEqual(ids[-1], VOCAB - 1)
    self.assertEqual(tokenizer.decode(ids), " the cat<|endoftext|>")

  def test_k_quants_match_transformers_on_same_weights(self):
    """Q4_K stays INT4 as stored (group 32, a scale and minimum per sub-block), the other types
    become float32 with gguf's values; weight_types says so."""
    path = self.dir / "k.gguf"
    hf = write_gguf(path, _hf_llama(False, K_D, K_F), K_QUANTS)
    model, _ = models.load(path)
    layers = model.layers.get_value()
    self.assertIsInstance(layers["o"], int4.Int4Weights)
    self.assertEqual((layers["o"].symmetric, layers["o"].group_size), (False, 32))
    for site in ("qkv", "up", "down"):
      self.assertEqual(layers[site].dtype, np.float32)
    self.assertEqual(model.weight_types.counts(), {
        "F32 -> float32": 2 * LAYERS + 1, "IQ4_XS -> float32": LAYERS, "Q2_K -> float32": LAYERS,
        "Q3_K -> float32": LAYERS, "Q4_K -> INT4 asymmetric G=32 (as stored)": LAYERS,
        "Q4_K -> float32": LAYERS, "Q5_1 -> float32": LAYERS, "Q5_K -> float32": 1,
        "Q6_K -> float32": LAYERS + 1})
    np.testing.assert_allclose(np.asarray(_FORWARD(model, TOKENS)), _hf_logits(hf, TOKENS), atol=1e-4, rtol=0)

  def test_every_type_gguf_dequantizes_reads_as_gguf_dequantizes_it(self):
    """Each type of gguf_reader.supported_types() (everything gguf.quants.dequantize decodes),
    from random bytes: as a table, gguf's values bit for bit (F16 / BF16 in their own dtype);
    as a linear layer, the 4-bit types of int4.GGUF_INT4_TYPES INT4 with those values."""
    n_out, k = 3, 512
    types = gguf_reader.supported_types()
    self.assertContainsSubset({"Q4_K", "Q5_0", "Q6_K", "Q8_0", "IQ4_XS", "MXFP4", "BF16"}, types)
    for name in types:
      qtype = Q[name]
      with self.subTest(qtype=name):
        raw, ref = _finite_random_tensor(qtype, n_out, k)
        path = self.dir / f"{name}.gguf"
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_tensor("t", raw, raw_dtype=qtype)
        for step in (writer.write_header_to_file, writer.write_kv_data_to_file,
                     writer.write_tensors_to_file, writer.close):
          step()
        f = gguf_reader.GGUFFile(path)
        self.assertEqual(f.kind("t"), name)
        table = f.rows("t", n_out, k)
        self.assertEqual(table.dtype, {"F16": np.float16, "BF16": jnp.bfloat16}.get(name, np.float32))
        testlib.assert_bit_exact(table.astype(np.float32), ref)
        w = f.matrix("t", n_out, k)
        self.assertEqual(isinstance(w, int4.Int4Weights), name in int4.GGUF_INT4_TYPES)
        testlib.assert_bit_exact(np.asarray(int4.as_float(w)).T, ref)

  def test_int4_group_size_on_gguf(self):
    """int4_group_size=G re-quantizes (RTN, from the file's values) every FP-INT matrix that is
    not INT4 with group G already; at G = 32 the file's 4-bit tensors stay as stored."""
    import torch  # pylint: disable=g-import-not-at-top

    path = self.dir / "tiny.gguf"
    hf = write_gguf(path, _hf_llama(False), MIXED)
    file_values = {name: p.detach().numpy().copy() for name, p in hf.named_parameters()}
    at_32, _ = models.load(path, int4_group_size=32)
    plain, _ = models.load(path)
    for site in ("qkv", "o"):  # Q4_0 and Q4_1: as stored
      chex.assert_trees_all_equal(at_32.layers.get_value()[site], plain.layers.get_value()[site])
    self.assertEqual(at_32.weight_types.as_dict()["qkv"],
                     {"Q4_0": {"tensors": 3 * LAYERS, "as": "INT4 symmetric G=32 (as stored)"}})
    self.assertEqual(at_32.weight_types.as_dict()["up"],
                     {"Q8_0": {"tensors": 2 * LAYERS, "as": "INT4 asymmetric G=32 (RTN)"}})
    self.assertEqual(at_32.weight_types.as_dict()["down"],
                     {"F16": {"tensors": LAYERS, "as": "INT4 asymmetric G=32 (RTN)"}})
    # G = 64: every site RTN from the file's values, 4-bit tensors included.
    at_64, _ = models.load(path, int4_group_size=64)
    counts = at_64.weight_types.counts()
    for kind, n in (("Q4_0", 3 * LAYERS), ("Q4_1", LAYERS), ("Q8_0", 2 * LAYERS), ("F16", LAYERS)):
      self.assertEqual(counts[f"{kind} -> INT4 asymmetric G=64 (RTN)"], n)
    self.assertEqual(counts["Q8_0 -> float32"], 1)  # the embedding stays as the file has it
    self.assertEqual(counts["F16 -> float16"], 1)  # and so does the head
    with torch.no_grad():
      for name, p in hf.named_parameters():
        if "proj" in name:
          w = file_values[name].T  # [K, N], grouped along K like ours
          p.copy_(torch.from_numpy(np.array(int4.dequantize(int4.quantize_rtn(w, 64, symmetric=False))).T))
    np.testing.assert_allclose(np.asarray(_FORWARD(at_64, TOKENS)), _hf_logits(hf, TOKENS), atol=1e-4, rtol=0)
    with self.assertRaisesRegex(ValueError, f"{path}: int4_group_size=48 must divide"):
      models.load(path, int4_group_size=48)

  def test_gemma3_matches_transformers_on_same_weights(self):
    """A gemma3 GGUF: norms stored as 1 + w, one global layer after five local ones (sliding
    window 8, shorter than the tokens), mixed types (Q4_K o as INT4, Q4_K and Q6_K down layers
    joined as float), and its SentencePiece tokenizer as transformers' GGUF tokenizer reads it."""
    from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top

    path = self.dir / "gemma3.gguf"
    hf = write_gemma3_gguf(path, _hf_gemma3(), GEMMA_TYPES)
    model, tokenizer = models.load(path)
    self.assertIsInstance(model, models.Gemma3)
    c = model.config
    self.assertEqual(c.sliding_layers, (True,) * 5 + (False,))
    self.assertEqual((c.sliding_window, c.rope_theta, c.rope_local_theta, c.query_pre_attn_scalar),
                     (8, 1e6, 1e4, G_DH))
    self.assertIsInstance(model.layers.get_value()["o"], int4.Int4Weights)
    self.assertEqual(model.weight_types.as_dict()["down"], {"Q4_K": {"tensors": 3, "as": "float32"},
                                                           "Q6_K": {"tensors": 3, "as": "float32"}})
    tokens = np.random.RandomState(1).randint(0, len(SP_TOKENS), (2, 24)).astype(np.int32)
    np.testing.assert_allclose(np.asarray(_FORWARD(model, tokens)), _hf_logits(hf, tokens), atol=1e-4, rtol=0)

    hf_tokenizer = AutoTokenizer.from_pretrained(str(self.dir), gguf_file=path.name)
    bos, the, space, a, t = 2, *(SP_TOKENS.index(p) for p in ("\u2581the", "\u2581", "a", "t"))
    c_bytes = [SP_TOKENS.index("<0x63>")]
    self.assertEqual(tokenizer.encode(" the cat"), [bos, the, space] + c_bytes + [a, t])
    for text in (" the cat", "the  hat\n\nthe<start_of_turn>é a", "  the   ", ""):
      ids = tokenizer.encode(text)
      self.assertEqual(ids, hf_tokenizer(text)["input_ids"], msg=repr(text))
      self.assertEqual(tokenizer.decode(ids[1:]), text)

  def _tiny(self, name="tiny.gguf", **kwargs):
    path = self.dir / name
    write_gguf(path, _hf_llama(False), kwargs.pop("types", MIXED), **kwargs)
    return path

  def test_truncated_file(self):
    path = self._tiny()
    data = path.read_bytes()
    for keep in (len(data) // 2, 100):
      path.write_bytes(data[:keep])
      with self.assertRaisesRegex(ValueError, f"{path}.*(truncated|corrupted|missing|bad data)"):
        models.load(path)

  def test_corrupted_magic(self):
    path = self._tiny()
    data = bytearray(path.read_bytes())
    data[:4] = b"XXXX"
    path.write_bytes(bytes(data))
    with self.assertRaisesRegex(ValueError, f"{path}: not a readable GGUF"):
      models.load(path)

  def test_nan_scales(self):
    path = self._tiny(types=dict(MIXED, o=Q.F32))
    reader = gguf.GGUFReader(str(path), "r+")
    tensor = next(t for t in reader.tensors if t.name == "blk.1.attn_output.weight")
    tensor.data[0, 0] = np.nan
    reader.data.flush()
    del reader
    with self.assertRaisesRegex(ValueError, f"{path}: tensor 'blk.1.attn_output.weight' holds NaN"):
      models.load(path)

  def test_unsupported_architecture(self):
    path = self._tiny(arch="falcon")
    with self.assertRaisesRegex(ValueError, f"{path}: unsupported architecture 'falcon'"):
      models.load(path)

  def test_unsupported_tensor_type(self):
    path = self._tiny(types=dict(MIXED, v=Q.I32))
    with self.assertRaisesRegex(ValueError, f"{path}: tensor 'blk.0.attn_v.weight' has unsupported type I32: "
                                "supported are the types the gguf package dequantizes, .*'Q4_K'"):
      models.load(path)

  def test_zero_heads(self):
    path = self._tiny(head_count=0)
    with self.assertRaisesRegex(ValueError, f"{path}: setting 'llama.attention.head_count' = 0 is invalid"):
      models.load(path)

  def test_merge_outside_the_vocabulary(self):
    path = self._tiny(merges=("Ġ t", "x yz"))
    with self.assertRaisesRegex(ValueError, rf"{path}: tokenizer.ggml.merges\[1\]='x yz' is invalid"):
      models.load(path)

  def test_missing_tensor(self):
    path = self._tiny(omit=("blk.1.ffn_down.weight",))
    with self.assertRaisesRegex(ValueError, f"{path}: missing tensor 'blk.1.ffn_down.weight'"):
      models.load(path)


class SafetensorsTest(absltest.TestCase):

  def _checkpoint(self):
    import transformers  # pylint: disable=g-import-not-at-top

    model = transformers.OPTForCausalLM(transformers.OPTConfig(
        vocab_size=64, hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=32))
    directory = pathlib.Path(tempfile.mkdtemp())
    model.save_pretrained(directory)
    return directory, directory / "model.safetensors"

  def test_truncated(self):
    directory, file = self._checkpoint()
    data = file.read_bytes()
    for keep in (len(data) - 100, 20):
      file.write_bytes(data[:keep])
      with self.assertRaisesRegex(ValueError, f"{file}: not a readable safetensors file"):
        models.load(directory)

  def test_corrupted_header(self):
    directory, file = self._checkpoint()
    data = bytearray(file.read_bytes())
    data[8:16] = b"\xff" * 8
    file.write_bytes(bytes(data))
    with self.assertRaisesRegex(ValueError, f"{file}: not a readable safetensors file"):
      models.load(directory)

  def test_missing_tensor(self):
    from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top

    directory, file = self._checkpoint()
    tensors = load_file(str(file))
    del tensors["model.decoder.layers.1.fc2.weight"]
    save_file(tensors, str(file), metadata={"format": "pt"})
    with self.assertRaisesRegex(ValueError, f"{directory}: missing tensor 'model.decoder.layers.1.fc2.weight'"):
      models.load(directory)

  def test_missing_or_zero_size_setting(self):
    directory, _ = self._checkpoint()
    config = directory / "config.json"
    text = config.read_text()
    config.write_text(text.replace('"hidden_size": 32,', ''))
    with self.assertRaisesRegex(ValueError, f"{config}: missing setting 'hidden_size'"):
      models.load(directory)
    config.write_text(text.replace('"num_attention_heads": 4', '"num_attention_heads": 0'))
    with self.assertRaisesRegex(ValueError, f"{config}: setting 'num_attention_heads' = 0 is invalid"):
      models.load(directory)

  def test_unsupported_model_type(self):
    directory, _ = self._checkpoint()
    config = directory / "config.json"
    config.write_text(config.read_text().replace('"model_type": "opt"', '"model_type": "gpt2"'))
    with self.assertRaisesRegex(ValueError, f"{config}: unsupported model_type 'gpt2'"):
      models.load(directory)

  def test_no_such_path(self):
    with self.assertRaisesRegex(ValueError, "neither a registry name"):
      models.load(os.path.join(tempfile.mkdtemp(), "nope"))


def _recast(src, dst, dtype, then=None):
  """A copy of the HF checkpoint directory `src` with every tensor cast to the torch `dtype`
  (and then to `then`, if given: e.g. float16 values stored as float32)."""
  import torch  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top

  dst = pathlib.Path(dst)
  dst.mkdir()
  for name in ("config.json", "tokenizer.json"):
    shutil.copy(pathlib.Path(src) / name, dst / name)
  tensors = {k: torch.from_numpy(v).to(dtype) for k, v in load_file(str(pathlib.Path(src) / "model.safetensors")).items()}
  if then is not None:
    tensors = {k: v.to(then) for k, v in tensors.items()}
  save_file(tensors, str(dst / "model.safetensors"))
  return dst


def _float_leaves(model):
  """{path: dtype} of the model's float weights outside INT4 (whose scales are float32)."""
  state = nnx.state(model)
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, int4.Int4Weights))[0]:
    if not isinstance(leaf, int4.Int4Weights) and jnp.issubdtype(leaf.dtype, jnp.floating):
      out[jax.tree_util.keystr(path)] = leaf.dtype
  return out


_SPEC = ProductSpec(AndaFormat(group_size=32))
_FORWARD_P = jax.jit(lambda m, t, p: m(t, p, _SPEC))


class LowPrecisionCheckpointTest(parameterized.TestCase):
  """A float16 / bfloat16 checkpoint keeps its dtype in the model and gives the logits of the
  same values stored as float32 (upcasting is exact), bit for bit, with and without INT4."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = testlib.tempdir(cls)
    cls.f32 = testlib.make_checkpoint(cls.dir / "f32", n_layers=2, d_model=64, n_heads=4, n_kv_heads=2,
                                      d_ff=128, vocab=200, seed=3)
    cls.tokens = np.random.RandomState(0).randint(0, 200, (2, 24)).astype(np.int32)

  @parameterized.named_parameters(("float16", "float16"), ("bfloat16", "bfloat16"))
  def test_weights_stay_in_checkpoint_dtype_with_the_same_logits(self, dtype):
    import torch  # pylint: disable=g-import-not-at-top

    low = _recast(self.f32, self.dir / dtype, getattr(torch, dtype))
    upcast = _recast(self.f32, self.dir / f"{dtype}_as_f32", getattr(torch, dtype), torch.float32)
    model_low, _ = models.load(low)
    model_32, _ = models.load(upcast)
    for w in (model_low.embedding, model_low.lm_head, model_low.final_norm):
      self.assertEqual(w[...].dtype, jnp.dtype(dtype))
    self.assertEqual(model_low.layers.get_value()["qkv"].dtype, jnp.dtype(dtype))
    dtypes = _float_leaves(model_low)
    self.assertEqual(set(dtypes.values()), {jnp.dtype(dtype)}, dtypes)
    self.assertEqual(set(_float_leaves(model_32).values()), {jnp.dtype("float32")})
    m8 = np.full(4, 8, np.int32)
    for precision in (None, m8):
      np.testing.assert_array_equal(np.asarray(_FORWARD_P(model_low, self.tokens, precision)),
                                    np.asarray(_FORWARD_P(model_32, self.tokens, precision)))
    # RTN INT4 from float16 values or from the same values in float32: the same codes and scales.
    q_low, _ = models.load(low, int4_group_size=32)
    q_32, _ = models.load(upcast, int4_group_size=32)
    for site in ("qkv", "o", "up", "down"):
      chex.assert_trees_all_equal(q_low.layers.get_value()[site], q_32.layers.get_value()[site])
    np.testing.assert_array_equal(np.asarray(_FORWARD_P(q_low, self.tokens, m8)),
                                  np.asarray(_FORWARD_P(q_32, self.tokens, m8)))


class StreamingLoadTest(absltest.TestCase):
  """INT4 loading reads and quantizes one matrix at a time: the quantizer sees each checkpoint
  tensor alone, in its stored dtype, after the previous one is gone; and the loader's peak of
  numpy memory stays well below the model's matrices in float32 (what reading the whole
  checkpoint into float32 first, as the loader once did, costs at least)."""

  N_LAYERS, D, F = 6, 256, 512

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    import torch  # pylint: disable=g-import-not-at-top

    cls.dir = testlib.tempdir(cls)
    f32 = testlib.make_checkpoint(cls.dir / "f32", n_layers=cls.N_LAYERS, d_model=cls.D, n_heads=4,
                                  n_kv_heads=4, d_ff=cls.F, vocab=200, seed=5)
    cls.f16 = _recast(f32, cls.dir / "f16", torch.float16)
    # float32 bytes of the FP-INT matrices (q, k, v, o: D x D; gate, up, down: D x F)
    cls.f32_matrix_bytes = cls.N_LAYERS * (4 * cls.D * cls.D + 3 * cls.D * cls.F) * 4

  def test_quantizer_sees_one_stored_tensor_at_a_time(self):
    seen, alive = [], []
    real = int4.quantize_rtn

    def recording(w, *args, **kwargs):
      alive.append(sum(r() is not None for r in seen))  # earlier inputs still referenced
      seen.append(weakref.ref(w))
      self.assertIsInstance(w, np.ndarray)
      self.assertEqual((w.ndim, w.dtype), (2, np.float16), "one tensor as stored")
      return real(w, *args, **kwargs)

    with mock.patch.object(int4, "quantize_rtn", recording):
      model, _ = models.load(self.f16, int4_group_size=32)
    self.assertLen(seen, 7 * self.N_LAYERS)  # q, k, v, o, gate, up, down of every layer
    self.assertEqual(max(alive), 0, alive)
    self.assertIsInstance(model.layers.get_value()["up"], int4.Int4Weights)

  def test_peak_numpy_memory_below_the_model_in_float32(self):
    models.load(self.f16, int4_group_size=32)  # compiles, fills caches: not what is measured
    tracemalloc.start()
    try:
      model, _ = models.load(self.f16, int4_group_size=32)
      _, peak = tracemalloc.get_traced_memory()
    finally:
      tracemalloc.stop()
    self.assertIsInstance(model.layers.get_value()["down"], int4.Int4Weights)
    # Expected: the packed stack (1/8 of float32) with its scales, one layer's float16 tensors,
    # the embedding and head: about 1/4 of the float32 matrices.
    self.assertLess(peak, 0.5 * self.f32_matrix_bytes,
                    f"peak {peak / 1e6:.1f} MB vs {self.f32_matrix_bytes / 1e6:.1f} MB of float32 matrices")


class HFConfigTest(parameterized.TestCase):
  """config.json settings of the wrong type, or that the model config refuses: one ValueError
  naming the file, the key and what is expected."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = testlib.tempdir(cls)
    cls.ckpt = testlib.make_checkpoint(cls.tmp / "ckpt", n_layers=1)
    cls.config = json.loads((cls.ckpt / "config.json").read_text())

  def _with(self, **changes):
    """A copy of the tiny checkpoint whose config.json has `changes` (None: key removed)."""
    directory = testlib.tempdir(self) / "ckpt"
    shutil.copytree(self.ckpt, directory)
    config = {k: v for k, v in dict(self.config, **changes).items() if v is not None}
    (directory / "config.json").write_text(json.dumps(config))
    return directory

  @parameterized.named_parameters(
      ("head_dim_string", dict(head_dim="8"), r"setting 'head_dim' = '8' is invalid: must be an integer"),
      ("rope_theta_string", dict(rope_theta="abc"),
       r"setting 'rope_theta' = 'abc' is invalid: must be a finite number"),
      ("eps_bool", dict(rms_norm_eps=True), r"setting 'rms_norm_eps' = True is invalid: must be a finite number"),
      ("tie_string", dict(tie_word_embeddings="false"),
       r"setting 'tie_word_embeddings' = 'false' is invalid: must be true or false"),
      ("nested_rope_theta", dict(rope_scaling=dict(rope_type="default", rope_theta="1e4")),
       r"setting 'rope_scaling.rope_theta' = '1e4' is invalid: must be a finite number"),
      ("rope_scaling_string", dict(rope_scaling="linear"),
       r"setting 'rope_scaling' = 'linear' is invalid: must be an object of settings"),
      ("layers_float", dict(num_hidden_layers=1.0), r"setting 'num_hidden_layers' = 1.0 is invalid"),
      # Checked by LlamaConfig, which does not know the file: the loader names it.
      ("kv_heads", dict(num_key_value_heads=3), r"LlamaConfig: n_heads=4 must be a multiple of n_kv_heads=3"),
  )
  def test_bad_setting_names_file_and_key(self, changes, message):
    directory = self._with(**changes)
    with self.assertRaisesRegex(ValueError, "^" + re.escape(f"{directory / 'config.json'}: ") + message):
      models.load(directory)

  def test_not_an_object(self):
    directory = self._with()
    (directory / "config.json").write_text("[1, 2]")
    with self.assertRaisesRegex(ValueError, re.escape(f"{directory / 'config.json'}: must be a JSON "
                                                      "object of settings, not a list")):
      models.load(directory)

  def test_null_is_absent(self):
    directory = self._with()
    nulls = dict(head_dim=None, rope_theta=None, rms_norm_eps=None, max_position_embeddings=None,
                 rope_scaling=dict(rope_type="default", rope_theta=None))
    (directory / "config.json").write_text(json.dumps(dict(self.config, **nulls)))
    config = models.load(directory)[0].config
    self.assertEqual((config.head_dim, config.rope_theta, config.norm_eps, config.max_positions),
                     (8, 10000.0, 1e-6, 2048))

  def test_home_folder_is_expanded(self):
    home = testlib.tempdir(self)
    shutil.copytree(self.ckpt, home / "models" / "tiny")
    with mock.patch.dict(os.environ, {"HOME": str(home)}):
      model, tokenizer = models.load("~/models/tiny")
    self.assertEqual(model.config.n_layers, 1)
    self.assertIsNotNone(tokenizer)


if __name__ == "__main__":
  absltest.main()
