"""GGUF and safetensors loading: tiny GGUF files written here with the gguf package (Q4_0, Q4_1,
Q8_0, F16, F32 tensors, llama.cpp's Q/K row permutation, tied and untied heads) against a
transformers model holding the same dequantized weights, and broken files -> ValueError."""

import os
import pathlib
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import gguf
import jax
import numpy as np

from anda_jax import int4
from anda_jax import models
from anda_jax.models import tokenizer as tokenizer_lib

Q = gguf.GGMLQuantizationType
D, F, HEADS, KV, LAYERS = 64, 128, 4, 2, 2
DH = D // HEADS
BYTE_TOKENS = list(tokenizer_lib._bytes_to_unicode().values())  # pylint: disable=protected-access
EXTRA_TOKENS = ["Ġt", "he", "Ġthe", "<|endoftext|>"]
VOCAB = len(BYTE_TOKENS) + len(EXTRA_TOKENS)
MIXED = dict(embed=Q.Q8_0, head=Q.F16, q=Q.Q4_0, k=Q.Q4_0, v=Q.Q4_0, o=Q.Q4_1, gate=Q.Q8_0, up=Q.Q8_0,
             down=Q.F16)
FLOAT = {k: Q.F32 for k in MIXED}
TOKENS = np.random.RandomState(0).randint(0, VOCAB, (2, 24)).astype(np.int32)


def _hf_llama(tied):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.manual_seed(1)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=VOCAB, hidden_size=D, intermediate_size=F, num_hidden_layers=LAYERS,
      num_attention_heads=HEADS, num_key_value_heads=KV, rms_norm_eps=1e-5, rope_theta=10000.0,
      tie_word_embeddings=tied))
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(1.0 + 0.2 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
  return model.eval()


def _llama_cpp_permute(w, n_head):
  """What llama.cpp's converter does to Q/K rows (interleaved rotary pairs)."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama_cpp_unpermute(w, n_head):
  return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, hf, types, arch="llama", omit=(), tied=False):
  """Writes hf's weights as a GGUF like llama.cpp's converter; sets hf's weights to the values the
  file holds (dequantized by the gguf package, an independent decoder) and returns hf."""
  import torch  # pylint: disable=g-import-not-at-top

  writer = gguf.GGUFWriter(str(path), arch)
  writer.add_block_count(LAYERS)
  writer.add_context_length(256)
  writer.add_embedding_length(D)
  writer.add_feed_forward_length(F)
  writer.add_head_count(HEADS)
  writer.add_head_count_kv(KV)
  writer.add_rope_dimension_count(DH)
  writer.add_rope_freq_base(10000.0)
  writer.add_layer_norm_rms_eps(1e-5)
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("default")
  writer.add_token_list(BYTE_TOKENS + EXTRA_TOKENS)
  writer.add_token_types([1] * (VOCAB - 1) + [3])
  writer.add_token_merges(["Ġ t", "h e", "Ġt he"])
  writer.add_eos_token_id(VOCAB - 1)

  params = dict(hf.named_parameters())

  def put(gguf_name, hf_name, qtype, permute_heads=None):
    if gguf_name in omit:
      return
    w = params[hf_name].detach().numpy().astype(np.float32)
    if permute_heads:
      w = _llama_cpp_permute(w, permute_heads)
    if qtype == Q.F32:
      data, stored = w, w
    elif qtype == Q.F16:
      data = w.astype(np.float16)
      stored = data.astype(np.float32)
    else:
      data = gguf.quants.quantize(w, qtype)
      stored = gguf.quants.dequantize(data, qtype).reshape(w.shape)
    writer.add_tensor(gguf_name, data, raw_dtype=qtype if qtype not in (Q.F32, Q.F16) else None)
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
    np.testing.assert_allclose(np.asarray(_FORWARD(model, TOKENS)), _hf_logits(hf, TOKENS), atol=1e-4, rtol=0)
    # The byte-level BPE tokenizer from the metadata, merges and specials included.
    ids = tokenizer.encode(" the cat<|endoftext|>")
    self.assertEqual(ids[0], len(BYTE_TOKENS) + 2)  # "Ġthe"
    self.assertEqual(ids[-1], VOCAB - 1)
    self.assertEqual(tokenizer.decode(ids), " the cat<|endoftext|>")

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
    path = self._tiny(types=dict(MIXED, v=Q.Q5_0))
    with self.assertRaisesRegex(ValueError, f"{path}: tensor 'blk.0.attn_v.weight' has unsupported type Q5_0"):
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

  def test_unsupported_model_type(self):
    directory, _ = self._checkpoint()
    config = directory / "config.json"
    config.write_text(config.read_text().replace('"model_type": "opt"', '"model_type": "gpt2"'))
    with self.assertRaisesRegex(ValueError, f"{config}: unsupported model_type 'gpt2'"):
      models.load(directory)

  def test_no_such_path(self):
    with self.assertRaisesRegex(ValueError, "neither a registry name"):
      models.load(os.path.join(tempfile.mkdtemp(), "nope"))


if __name__ == "__main__":
  absltest.main()
