"""Checkpoint readers and weight mapping: GGUF (llama architecture) and Hugging Face
directories (config.json + safetensors, LLaMA or OPT) -> (config, weights) for our models.

Our layout is y = x @ W with W [K, N]; per-layer matrices are stacked along a leading layer
axis, and matrices that share an activation are fused along N (q|k|v, gate|up), which gives the
same columns as separate products. 4-bit GGUF tensors stay `Int4Weights` (packed codes and
scales as stored); Q8_0 / F16 / BF16 / F32 tensors become float32.

Every problem with a file raises ValueError naming the file and what is wrong.
"""

from __future__ import annotations

import json
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from anda_jax import int4
from anda_jax.models import llama as llama_lib
from anda_jax.models import opt as opt_lib

_REQUIRED = object()


def _fail(path, problem: str):
  raise ValueError(f"{path}: {problem}")


# ----------------------------------------------------------------------------- joining


def _numpy(w):
  # Load-time reshuffling runs in numpy: jnp would compile a gather per shape.
  return jax.tree.map(np.asarray, w)


def _join(ws, op):
  """Concatenates / stacks matrices (float or Int4Weights). INT4 stays INT4 when all parts
  share a quantization scheme; otherwise (rare mixed files) all parts become float."""
  schemes = {(w.symmetric, w.group_size) if isinstance(w, int4.Int4Weights) else None for w in ws}
  if len(schemes) == 1 and None not in schemes:
    return jax.tree.map(lambda *a: op(a), *map(_numpy, ws))
  if len(schemes) > 1:
    logging.warning("mixed weight types %s in one stack: using float weights for it", schemes)
  return op([np.asarray(int4.dequantize(w)) if isinstance(w, int4.Int4Weights) else np.asarray(w)
             for w in ws])


def fuse(ws):
  """Matrices [K, N_i] sharing one activation -> [K, sum N_i]."""
  return _join(ws, lambda a: np.concatenate(a, axis=-1))


def stack(ws):
  """Per-layer weights -> [n_layers, ...]."""
  return _join(ws, lambda a: np.stack(a, axis=0))


def stack_layers(per_layer: list[dict]) -> dict:
  return {name: (None if per_layer[0][name] is None else stack([lw[name] for lw in per_layer]))
          for name in per_layer[0]}


def quantize_sites(layers: dict, sites, group_size: int, path) -> dict:
  """RTN INT4 (asymmetric, as GGUF Q4_1) of the float FP-INT matrices, group size along K."""
  out = dict(layers)
  for site in sites:
    w = layers[site]
    if isinstance(w, int4.Int4Weights):
      continue
    k = w.shape[-2]
    if k % group_size or k % 2:
      _fail(path, f"int4_group_size={group_size} must divide the contraction length {k} of '{site}' (and it must be even)")
    out[site] = int4.quantize_rtn(w, group_size, symmetric=False)
  return out


# ----------------------------------------------------------------------------- GGUF

_GGUF_FLOAT_TYPES = ("F32", "F16", "BF16", "Q8_0")
_GGUF_INT4_TYPES = ("Q4_0", "Q4_1")


def _reader_class():
  import gguf  # pylint: disable=g-import-not-at-top

  class Reader(gguf.GGUFReader):
    """gguf.GGUFReader, faster: it parses ~100k vocabulary strings through numpy.memmap slicing,
    whose per-slice bookkeeping dominates; slicing a plain ndarray view of the same mapping
    gives the same bytes several times faster."""

    def _get(self, offset, dtype, count=1, override_order=None):
      plain = self.__dict__.get("_plain")
      if plain is None:
        plain = self._plain = self.data.view(np.ndarray)
      count, dtype = int(count), np.dtype(dtype)
      arr = plain[offset:offset + dtype.itemsize * count].view(dtype)[:count]
      return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

  return Reader


class GGUFFile:
  """A GGUF file's metadata and tensors (data memory-mapped by gguf.GGUFReader)."""

  def __init__(self, path):
    self.path = pathlib.Path(path)
    if not self.path.is_file():
      _fail(self.path, "no such GGUF file")
    try:
      reader = _reader_class()(str(self.path))
      self.tensors = {t.name: t for t in reader.tensors}
    except Exception as e:  # the reader fails in many ways on a broken file
      _fail(self.path, f"not a readable GGUF file (truncated or corrupted?): {type(e).__name__}: {e}")
    self.fields = reader.fields

  def meta(self, key: str, default=_REQUIRED):
    field = self.fields.get(key)
    if field is None:
      if default is _REQUIRED:
        _fail(self.path, f"missing GGUF metadata key '{key}'")
      return default
    try:
      return field.contents()
    except Exception as e:
      _fail(self.path, f"unreadable GGUF metadata key '{key}': {e}")

  def _get(self, name, shape):
    t = self.tensors.get(name)
    if t is None:
      _fail(self.path, f"missing tensor '{name}'")
    got = tuple(int(s) for s in t.shape)  # GGUF order: ne0 (contiguous) first
    if got != tuple(shape):
      _fail(self.path, f"tensor '{name}' has shape {list(got)}, expected {list(shape)}")
    return t

  def _float_rows(self, name, t, n_rows, n_cols) -> np.ndarray:
    """A float-convertible tensor as float32 [n_rows, n_cols] in GGUF row order."""
    import gguf  # pylint: disable=g-import-not-at-top

    kind = t.tensor_type.name
    if kind not in _GGUF_FLOAT_TYPES:
      _fail(self.path, f"tensor '{name}' has unsupported type {kind}: supported are "
            f"{_GGUF_FLOAT_TYPES + _GGUF_INT4_TYPES}")
    try:
      if kind == "Q8_0":
        out = int4.gguf_q8_0_to_float(np.asarray(t.data).reshape(-1), n_rows, n_cols)
      elif kind == "BF16":
        out = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
      else:
        out = np.asarray(t.data, np.float32)
      out = np.asarray(out, np.float32).reshape(n_rows, n_cols)
    except ValueError as e:
      _fail(self.path, f"tensor '{name}' ({kind}) has bad data: {e}")
    _check_finite(self.path, name, out)
    return out

  def vector(self, name, n) -> np.ndarray:
    t = self._get(name, (n,))
    return self._float_rows(name, t, 1, n)[0]

  def rows(self, name, n_rows, n_cols) -> np.ndarray:
    """float32 [n_rows, n_cols] as stored (e.g. an embedding table [vocab, d])."""
    t = self._get(name, (n_cols, n_rows))
    if t.tensor_type.name in _GGUF_INT4_TYPES:  # not an FP-INT product site: use float
      return np.asarray(int4.dequantize(self.matrix(name, n_rows, n_cols))).T
    return self._float_rows(name, t, n_rows, n_cols)

  def matrix(self, name, n_out, k):
    """A linear layer stored [n_out, k] -> W [k, n_out] for x @ W: Int4Weights for 4-bit
    tensors (codes and scales as stored), float32 otherwise."""
    t = self._get(name, (k, n_out))
    kind = t.tensor_type.name
    if kind in _GGUF_INT4_TYPES:
      convert = int4.from_gguf_q4_0 if kind == "Q4_0" else int4.from_gguf_q4_1
      try:
        w = convert(np.asarray(t.data).reshape(-1), n_out, k)
      except ValueError as e:
        _fail(self.path, f"tensor '{name}' ({kind}) has bad data: {e}")
      _check_finite(self.path, name, w.scale)
      if w.offset is not None:
        _check_finite(self.path, name, w.offset)
      return w
    return self._float_rows(name, t, n_out, k).T


def _check_finite(path, name, a):
  if not np.all(np.isfinite(np.asarray(a))):
    _fail(path, f"tensor '{name}' holds NaN or Inf values (corrupted?)")


def _unpermute_rotary(w, n_heads, head_dim):
  """llama.cpp's converter reorders Q/K output rows per head from "rotate half" pairs (i, i + Dh/2)
  to interleaved pairs (2i, 2i + 1). Undo it on the N axis of W [K, n_heads * Dh]: HF row
  h*Dh + j*Dh/2 + i is GGUF row h*Dh + 2i + j."""
  perm = np.arange(n_heads * head_dim).reshape(n_heads, head_dim // 2, 2).transpose(0, 2, 1).reshape(-1)
  return jax.tree.map(lambda a: a[..., perm], _numpy(w))


def llama_from_gguf(path, int4_group_size=None):
  """A llama-architecture GGUF -> (LlamaConfig, weights, GGUFFile)."""
  f = GGUFFile(path)
  arch = f.meta("general.architecture")
  if arch != "llama":
    _fail(f.path, f"unsupported architecture '{arch}': supported is 'llama'")
  a = lambda key, default=_REQUIRED: f.meta(f"llama.{key}", default)
  n_heads = int(a("attention.head_count"))
  d_model = int(a("embedding_length"))
  head_dim = int(a("attention.key_length", d_model // n_heads))
  rope_dim = int(a("rope.dimension_count", head_dim))
  if rope_dim != head_dim:
    _fail(f.path, f"partial rotary (rope.dimension_count={rope_dim} < head_dim={head_dim}) is not supported")
  scaling = a("rope.scaling.type", "none")
  if scaling not in ("none", None):
    _fail(f.path, f"unsupported rope scaling '{scaling}': supported is none")
  embd = f.tensors.get("token_embd.weight")
  if embd is None:
    _fail(f.path, "missing tensor 'token_embd.weight'")
  vocab = int(embd.shape[1])
  config = llama_lib.LlamaConfig(
      n_layers=int(a("block_count")), d_model=d_model, n_heads=n_heads,
      n_kv_heads=int(a("attention.head_count_kv", n_heads)), d_ff=int(a("feed_forward_length")),
      vocab=vocab, head_dim=head_dim, rope_theta=float(a("rope.freq_base", 10000.0)),
      norm_eps=float(a("attention.layer_norm_rms_epsilon", 1e-5)),
      tie_embeddings="output.weight" not in f.tensors)
  c = config
  nq, nkv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
  per_layer = []
  for i in range(c.n_layers):
    p = f"blk.{i}."
    q = _unpermute_rotary(f.matrix(p + "attn_q.weight", nq, d_model), c.n_heads, c.head_dim)
    k = _unpermute_rotary(f.matrix(p + "attn_k.weight", nkv, d_model), c.n_kv_heads, c.head_dim)
    v = f.matrix(p + "attn_v.weight", nkv, d_model)
    per_layer.append(dict(
        attn_norm=f.vector(p + "attn_norm.weight", d_model),
        qkv=fuse([q, k, v]),
        o=f.matrix(p + "attn_output.weight", d_model, nq),
        mlp_norm=f.vector(p + "ffn_norm.weight", d_model),
        up=fuse([f.matrix(p + "ffn_gate.weight", c.d_ff, d_model),
                 f.matrix(p + "ffn_up.weight", c.d_ff, d_model)]),
        down=f.matrix(p + "ffn_down.weight", d_model, c.d_ff)))
  layers = stack_layers(per_layer)
  if int4_group_size is not None:
    layers = quantize_sites(layers, ("qkv", "o", "up", "down"), int4_group_size, f.path)
  weights = dict(
      embed=f.rows("token_embd.weight", vocab, d_model),
      final_norm=f.vector("output_norm.weight", d_model),
      head=None if c.tie_embeddings else f.rows("output.weight", vocab, d_model).T,
      layers=layers)
  return config, weights, f


# ----------------------------------------------------------------------------- Hugging Face


def read_config(directory) -> dict:
  path = pathlib.Path(directory) / "config.json"
  if not path.is_file():
    _fail(path, "no config.json in the checkpoint directory")
  try:
    return json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    _fail(path, f"not valid JSON: {e}")


def read_safetensors(directory) -> dict[str, np.ndarray]:
  """All tensors of a directory's *.safetensors files (sharded or not) as float32 numpy."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top

  directory = pathlib.Path(directory)
  files = sorted(directory.glob("*.safetensors"))
  if not files:
    _fail(directory, "no *.safetensors files in the checkpoint directory")
  out = {}
  for file in files:
    try:
      # "flax" reads every dtype safetensors has (numpy lacks bfloat16).
      with safe_open(str(file), framework="flax") as s:
        for name in s.keys():
          out[name] = np.asarray(jnp.asarray(s.get_tensor(name), jnp.float32))
    except Exception as e:  # SafetensorError and friends on truncated / corrupted files
      _fail(file, f"not a readable safetensors file (truncated or corrupted?): {type(e).__name__}: {e}")
  return out


class _Tensors:
  """Name -> tensor with errors that name the directory, and a prefix search."""

  def __init__(self, directory, tensors, prefixes):
    self.directory, self.tensors = directory, tensors
    self.prefix = next((p for p in prefixes if any(k.startswith(p) for k in tensors)), prefixes[0])

  def has(self, name):
    return self.prefix + name in self.tensors

  def get(self, name, shape):
    full = self.prefix + name
    if full not in self.tensors:
      _fail(self.directory, f"missing tensor '{full}' in the safetensors files")
    t = self.tensors[full]
    if tuple(t.shape) != tuple(shape):
      _fail(self.directory, f"tensor '{full}' has shape {list(t.shape)}, expected {list(shape)}")
    _check_finite(self.directory, full, t)
    return t

  def linear(self, name, n_out, k):
    """torch Linear weight [n_out, k] -> W [k, n_out]."""
    return self.get(name, (n_out, k)).T


def llama_from_hf(directory, cfg: dict, int4_group_size=None):
  directory = pathlib.Path(directory)
  for flag in ("attention_bias", "mlp_bias"):
    if cfg.get(flag):
      _fail(directory / "config.json", f"{flag}=true is not supported")
  if cfg.get("hidden_act", "silu") != "silu":
    _fail(directory / "config.json", f"hidden_act={cfg['hidden_act']!r} is not supported: must be silu")
  rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type != "default":
    _fail(directory / "config.json", f"rope_type={rope_type!r} is not supported: must be 'default'")
  d = cfg["hidden_size"]
  n_heads = cfg["num_attention_heads"]
  config = llama_lib.LlamaConfig(
      n_layers=cfg["num_hidden_layers"], d_model=d, n_heads=n_heads,
      n_kv_heads=cfg.get("num_key_value_heads") or n_heads, d_ff=cfg["intermediate_size"],
      vocab=cfg["vocab_size"], head_dim=cfg.get("head_dim") or d // n_heads,
      rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
      norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(cfg.get("tie_word_embeddings", False)))
  c = config
  t = _Tensors(directory, read_safetensors(directory), ("model.", ""))
  nq, nkv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
  per_layer = []
  for i in range(c.n_layers):
    p = f"layers.{i}."
    per_layer.append(dict(
        attn_norm=t.get(p + "input_layernorm.weight", (d,)),
        qkv=np.concatenate([t.linear(p + "self_attn.q_proj.weight", nq, d),
                            t.linear(p + "self_attn.k_proj.weight", nkv, d),
                            t.linear(p + "self_attn.v_proj.weight", nkv, d)], axis=-1),
        o=t.linear(p + "self_attn.o_proj.weight", d, nq),
        mlp_norm=t.get(p + "post_attention_layernorm.weight", (d,)),
        up=np.concatenate([t.linear(p + "mlp.gate_proj.weight", c.d_ff, d),
                           t.linear(p + "mlp.up_proj.weight", c.d_ff, d)], axis=-1),
        down=t.linear(p + "mlp.down_proj.weight", d, c.d_ff)))
  layers = stack_layers(per_layer)
  if int4_group_size is not None:
    layers = quantize_sites(layers, ("qkv", "o", "up", "down"), int4_group_size, directory)
  head = None
  if not c.tie_embeddings:
    # lm_head sits outside the "model." prefix.
    full = "lm_head.weight"
    if full not in t.tensors:
      _fail(directory, f"missing tensor '{full}' (tie_word_embeddings is false)")
    head = _Tensors(directory, t.tensors, ("",)).get(full, (c.vocab, d)).T
  weights = dict(embed=t.get("embed_tokens.weight", (c.vocab, d)),
                 final_norm=t.get("norm.weight", (d,)), head=head, layers=layers)
  return config, weights


def opt_from_hf(directory, cfg: dict, int4_group_size=None):
  directory = pathlib.Path(directory)
  if not cfg.get("layer_norm_elementwise_affine", True):
    _fail(directory / "config.json", "layer_norm_elementwise_affine=false is not supported")
  if not cfg.get("enable_bias", True):
    _fail(directory / "config.json", "enable_bias=false is not supported")
  d = cfg["hidden_size"]
  pre_ln = bool(cfg.get("do_layer_norm_before", True))
  config = opt_lib.OPTConfig(
      n_layers=cfg["num_hidden_layers"], d_model=d, n_heads=cfg["num_attention_heads"],
      d_ff=cfg["ffn_dim"], vocab=cfg["vocab_size"],
      max_positions=cfg.get("max_position_embeddings", 2048),
      word_embed_dim=cfg.get("word_embed_proj_dim") or d, pre_ln=pre_ln,
      final_ln=pre_ln and not cfg.get("_remove_final_layer_norm", False),
      activation=cfg.get("activation_function", "relu"),
      tie_embeddings=bool(cfg.get("tie_word_embeddings", True)))
  c = config
  t = _Tensors(directory, read_safetensors(directory), ("model.decoder.", "decoder."))
  per_layer = []
  for i in range(c.n_layers):
    p = f"layers.{i}."
    lin = lambda name, n_out, k: t.linear(p + name + ".weight", n_out, k)
    bias = lambda name, n: t.get(p + name + ".bias", (n,))
    per_layer.append(dict(
        attn_ln_w=t.get(p + "self_attn_layer_norm.weight", (d,)),
        attn_ln_b=bias("self_attn_layer_norm", d),
        qkv=np.concatenate([lin("self_attn.q_proj", d, d), lin("self_attn.k_proj", d, d),
                            lin("self_attn.v_proj", d, d)], axis=-1),
        qkv_b=np.concatenate([bias("self_attn.q_proj", d), bias("self_attn.k_proj", d),
                              bias("self_attn.v_proj", d)]),
        o=lin("self_attn.out_proj", d, d), o_b=bias("self_attn.out_proj", d),
        mlp_ln_w=t.get(p + "final_layer_norm.weight", (d,)), mlp_ln_b=bias("final_layer_norm", d),
        up=lin("fc1", c.d_ff, d), up_b=bias("fc1", c.d_ff),
        down=lin("fc2", d, c.d_ff), down_b=bias("fc2", d)))
  layers = stack_layers(per_layer)
  if int4_group_size is not None:
    layers = quantize_sites(layers, ("qkv", "o", "up", "down"), int4_group_size, directory)
  dw = c.word_embed_dim
  projected = dw != d
  head = None
  if not c.tie_embeddings:
    if "lm_head.weight" not in t.tensors:
      _fail(directory, "missing tensor 'lm_head.weight' (tie_word_embeddings is false)")
    head = _Tensors(directory, t.tensors, ("",)).get("lm_head.weight", (c.vocab, dw)).T
  weights = dict(
      embed=t.get("embed_tokens.weight", (c.vocab, dw)),
      positions=t.get("embed_positions.weight", (c.max_positions + opt_lib.POSITION_OFFSET, d)),
      project_in=t.linear("project_in.weight", d, dw) if projected else None,
      project_out=t.linear("project_out.weight", dw, d) if projected else None,
      final_ln_w=t.get("final_layer_norm.weight", (d,)) if c.final_ln else None,
      final_ln_b=t.get("final_layer_norm.bias", (d,)) if c.final_ln else None,
      head=head, layers=layers)
  return config, weights


HF_BUILDERS = {"llama": llama_from_hf, "opt": opt_from_hf}
