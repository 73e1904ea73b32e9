"""Weight maps: which checkpoint tensor goes where in our models' weights, as one table per
family (LLAMA_WEIGHTS and GEMMA3_WEIGHTS, read from GGUF or HF; OPT_FROM_HF), and the builders
that read a checkpoint, apply its table and build the config: llama_from_gguf, llama_from_hf,
gemma3_from_gguf, gemma3_from_hf, opt_from_hf (GGUF_BUILDERS by general.architecture,
HF_BUILDERS by config.json model_type). Every builder returns (config, weights); weights
["weight_types"] says what the tensors were stored as and what they became.

Our layout is y = x @ W with W [K, N]; per-layer matrices are stacked along a leading layer
axis, and matrices that share an activation are fused along N (q|k|v, gate|up), which gives the
same columns as separate products. 4-bit GGUF tensors stay `Int4Weights` (packed codes and
scales as stored); float tensors keep their checkpoint dtype (float16 / bfloat16 / float32; the
model upcasts them where it uses them).

Loading streams: the readers hand over one tensor at a time (GGUF from its memory map, safetensors
from `safe_open`), a layer's tensors are fused and, with `int4_group_size`, RTN-quantized as they
arrive, and each layer is copied into stacked arrays allocated once for all layers. So loading
holds the result plus one layer's tensors in their checkpoint dtype (one tensor, when quantizing:
upcast to float32 only inside the quantizer's compiled program), never the model in float32.

A table row, as apply_table reads it, is (checkpoint name, destination, shape as stored,
transform[, flag]). LLAMA_WEIGHTS rows are (destination, GGUF name, HF name, shape, transform[,
flag]); _one_source turns them into LLAMA_FROM_GGUF and LLAMA_FROM_HF (GEMMA3_WEIGHTS likewise).
  checkpoint name  as the reader names it (HF: after the "model." prefix); "{i}" is the layer index
  destination      "layers.x" is weights["layers"]["x"], stacked over layers; else weights[key].
                   Rows with one destination are fused along N, in table order.
  shape            torch order ([n_out, K] for a linear layer), in dims the builder derives from
                   the config (d, f, vocab, ...); the reader fails on any other shape
  transform        vector:       1-D as stored
                   table:        2-D as stored, float (embedding and position tables, and
                                 the LM head, which is no FP-INT product site: vocabulary rows)
                   linear:       [n_out, K] -> W [K, n_out]; 4-bit GGUF stays Int4Weights
                   rotary:       linear, then llama.cpp's Q/K row order undone (GGUF only;
                                 HF files keep the order, so read as linear)
                   norm:         (Gemma) a norm's factor 1 + w: GGUF stores it (read as vector),
                                 HF stores w (read as one_plus)
  flag             read only when dims[flag] is true; otherwise the destination is None
Tensors are read in table order, layer by layer, then the rest (for LLaMA in each source's own
order), so of several broken tensors the first one is reported.
"""

from __future__ import annotations

import collections
import logging
import pathlib

import jax
import numpy as np

from anda_jax.models.checkpoints import fail, positive_int
from anda_jax.models.gguf_reader import GGUFFile
from anda_jax.models import gemma3 as gemma3_lib
from anda_jax.models import llama as llama_lib
from anda_jax.models import opt as opt_lib
from anda_jax.models import weight_types
from anda_jax.models.safetensors_reader import Tensors
from anda_jax.numerics import int4
from anda_jax import precision

LLAMA_WEIGHTS = (  # destination, llama.cpp name (GGUF), transformers name (HF), shape, transform[, flag]
    ("layers.attn_norm", "blk.{i}.attn_norm.weight", "layers.{i}.input_layernorm.weight", ("d",), "vector"),
    ("layers.qkv", "blk.{i}.attn_q.weight", "layers.{i}.self_attn.q_proj.weight", ("q", "d"), "rotary"),
    ("layers.qkv", "blk.{i}.attn_k.weight", "layers.{i}.self_attn.k_proj.weight", ("kv", "d"), "rotary"),
    ("layers.qkv", "blk.{i}.attn_v.weight", "layers.{i}.self_attn.v_proj.weight", ("kv", "d"), "linear"),
    ("layers.o", "blk.{i}.attn_output.weight", "layers.{i}.self_attn.o_proj.weight", ("d", "q"), "linear"),
    ("layers.mlp_norm", "blk.{i}.ffn_norm.weight", "layers.{i}.post_attention_layernorm.weight", ("d",), "vector"),
    ("layers.up", "blk.{i}.ffn_gate.weight", "layers.{i}.mlp.gate_proj.weight", ("f", "d"), "linear"),
    ("layers.up", "blk.{i}.ffn_up.weight", "layers.{i}.mlp.up_proj.weight", ("f", "d"), "linear"),
    ("layers.down", "blk.{i}.ffn_down.weight", "layers.{i}.mlp.down_proj.weight", ("d", "f"), "linear"),
    ("embed", "token_embd.weight", "embed_tokens.weight", ("vocab", "d"), "table"),
    ("final_norm", "output_norm.weight", "norm.weight", ("d",), "vector"),
    ("head", "output.weight", "lm_head.weight", ("vocab", "d"), "table", "untied"),
)


def _one_source(shared, column: int, rest_order, renames: dict):
  """One source's table (checkpoint name, destination, shape, transform[, flag]) from a shared
  table: names from `column`, transforms renamed as `renames` says (e.g. "rotary" rows read as
  "linear"), the per-layer rows in table order, then the others in `rest_order` (by
  destination)."""
  rows = [(row[column], row[0], row[3], renames.get(row[4], row[4]), *row[5:]) for row in shared]
  in_layer = [row for row in rows if row[1].startswith("layers.")]
  rest = [row for row in rows if not row[1].startswith("layers.")]
  return tuple(in_layer + sorted(rest, key=lambda row: rest_order.index(row[1])))


LLAMA_FROM_GGUF = _one_source(LLAMA_WEIGHTS, 1, ("embed", "final_norm", "head"), {})
# transformers keeps the Q/K row order; its LLaMA files were always read head first.
LLAMA_FROM_HF = _one_source(LLAMA_WEIGHTS, 2, ("head", "embed", "final_norm"), {"rotary": "linear"})

# Gemma 3: llama.cpp keeps the Q/K row order (its Gemma rotary is "rotate half") and stores every
# norm weight as the factor 1 + w, transformers w itself ("norm" rows: read 1 + w from HF).
GEMMA3_WEIGHTS = (  # destination, llama.cpp name (GGUF), transformers name (HF), shape, transform[, flag]
    ("layers.attn_norm", "blk.{i}.attn_norm.weight", "layers.{i}.input_layernorm.weight", ("d",), "norm"),
    ("layers.qkv", "blk.{i}.attn_q.weight", "layers.{i}.self_attn.q_proj.weight", ("q", "d"), "linear"),
    ("layers.qkv", "blk.{i}.attn_k.weight", "layers.{i}.self_attn.k_proj.weight", ("kv", "d"), "linear"),
    ("layers.qkv", "blk.{i}.attn_v.weight", "layers.{i}.self_attn.v_proj.weight", ("kv", "d"), "linear"),
    ("layers.q_norm", "blk.{i}.attn_q_norm.weight", "layers.{i}.self_attn.q_norm.weight", ("head_dim",), "norm"),
    ("layers.k_norm", "blk.{i}.attn_k_norm.weight", "layers.{i}.self_attn.k_norm.weight", ("head_dim",), "norm"),
    ("layers.o", "blk.{i}.attn_output.weight", "layers.{i}.self_attn.o_proj.weight", ("d", "q"), "linear"),
    ("layers.post_attn_norm", "blk.{i}.post_attention_norm.weight",
     "layers.{i}.post_attention_layernorm.weight", ("d",), "norm"),
    ("layers.mlp_norm", "blk.{i}.ffn_norm.weight", "layers.{i}.pre_feedforward_layernorm.weight", ("d",), "norm"),
    ("layers.up", "blk.{i}.ffn_gate.weight", "layers.{i}.mlp.gate_proj.weight", ("f", "d"), "linear"),
    ("layers.up", "blk.{i}.ffn_up.weight", "layers.{i}.mlp.up_proj.weight", ("f", "d"), "linear"),
    ("layers.down", "blk.{i}.ffn_down.weight", "layers.{i}.mlp.down_proj.weight", ("d", "f"), "linear"),
    ("layers.post_mlp_norm", "blk.{i}.post_ffw_norm.weight", "layers.{i}.post_feedforward_layernorm.weight",
     ("d",), "norm"),
    ("embed", "token_embd.weight", "embed_tokens.weight", ("vocab", "d"), "table"),
    ("final_norm", "output_norm.weight", "norm.weight", ("d",), "norm"),
    ("head", "output.weight", "lm_head.weight", ("vocab", "d"), "table", "untied"),
)
GEMMA3_FROM_GGUF = _one_source(GEMMA3_WEIGHTS, 1, ("embed", "final_norm", "head"), {"norm": "vector"})
GEMMA3_FROM_HF = _one_source(GEMMA3_WEIGHTS, 2, ("head", "embed", "final_norm"), {"norm": "one_plus"})

OPT_FROM_HF = (  # transformers' OPTForCausalLM, names after the "model.decoder." prefix
    ("layers.{i}.self_attn_layer_norm.weight", "layers.attn_ln_w", ("d",), "vector"),
    ("layers.{i}.self_attn_layer_norm.bias", "layers.attn_ln_b", ("d",), "vector"),
    ("layers.{i}.self_attn.q_proj.weight", "layers.qkv", ("d", "d"), "linear"),
    ("layers.{i}.self_attn.k_proj.weight", "layers.qkv", ("d", "d"), "linear"),
    ("layers.{i}.self_attn.v_proj.weight", "layers.qkv", ("d", "d"), "linear"),
    ("layers.{i}.self_attn.q_proj.bias", "layers.qkv_b", ("d",), "vector"),
    ("layers.{i}.self_attn.k_proj.bias", "layers.qkv_b", ("d",), "vector"),
    ("layers.{i}.self_attn.v_proj.bias", "layers.qkv_b", ("d",), "vector"),
    ("layers.{i}.self_attn.out_proj.weight", "layers.o", ("d", "d"), "linear"),
    ("layers.{i}.self_attn.out_proj.bias", "layers.o_b", ("d",), "vector"),
    ("layers.{i}.final_layer_norm.weight", "layers.mlp_ln_w", ("d",), "vector"),
    ("layers.{i}.final_layer_norm.bias", "layers.mlp_ln_b", ("d",), "vector"),
    ("layers.{i}.fc1.weight", "layers.up", ("f", "d"), "linear"),
    ("layers.{i}.fc1.bias", "layers.up_b", ("f",), "vector"),
    ("layers.{i}.fc2.weight", "layers.down", ("d", "f"), "linear"),
    ("layers.{i}.fc2.bias", "layers.down_b", ("d",), "vector"),
    ("lm_head.weight", "head", ("vocab", "dw"), "table", "untied"),
    ("embed_tokens.weight", "embed", ("vocab", "dw"), "table"),
    ("embed_positions.weight", "positions", ("positions", "d"), "table"),
    ("project_in.weight", "project_in", ("d", "dw"), "linear", "projected"),
    ("project_out.weight", "project_out", ("dw", "d"), "linear", "projected"),
    ("final_layer_norm.weight", "final_ln_w", ("d",), "vector", "final_ln"),
    ("final_layer_norm.bias", "final_ln_b", ("d",), "vector", "final_ln"),
)

# ----------------------------------------------------------------------------- applying a table


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


def _aligned_empty(shape, dtype, alignment: int = 64) -> np.ndarray:
  """np.empty(shape, dtype) at an address aligned for XLA's CPU client, which then uses the
  buffer itself as a device array (jax.device_put) instead of copying it."""
  dtype = np.dtype(dtype)
  n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  raw = np.empty(n_bytes + alignment, np.uint8)
  start = -raw.ctypes.data % alignment
  return raw[start:start + n_bytes].view(dtype).reshape(shape)


def _on_device(a) -> jax.Array:
  """A host array as a device array. It is copied into an aligned buffer first, which on the CPU
  becomes the device array itself: the reader's buffer is freed as soon as the caller drops it,
  while one handed to jax.device_put is released only at JAX's next call (one more tensor alive)."""
  out = _aligned_empty(np.shape(a), a.dtype)
  out[...] = a
  return jax.device_put(out)


def _layout(w):
  """What must agree for a weight to fill a slot of a stacked array."""
  leaves, treedef = jax.tree.flatten(w)
  return treedef, tuple((np.shape(a), np.dtype(a.dtype)) for a in leaves)


class LayerStack:
  """Per-layer weights (float arrays or Int4Weights), added in layer order, -> one array
  [n_layers, ...] per leaf. The stacked arrays are allocated when the first layer arrives and
  filled layer by layer, so stacking costs the result plus one layer, not twice the result; on
  the CPU the filled buffers become the device arrays without a copy. Should a layer not match the
  first one's layout (a file mixing tensor types across layers), the layers are joined by `stack`
  instead, after `unify` (if given) made their INT4 schemes agree."""

  def __init__(self, n_layers: int, unify=None):
    self.n_layers = n_layers
    self.unify = unify
    self.count = 0
    self.layout = None
    self.buffers = None  # pytree of [n_layers, ...] numpy arrays, or
    self.layers = None  # a list of per-layer weights after a layout mismatch

  def add(self, w):
    i, self.count = self.count, self.count + 1
    if self.layers is not None:
      self.layers.append(w)
      return
    if self.buffers is None:
      self.layout = _layout(w)
      self.buffers = jax.tree.map(lambda a: _aligned_empty((self.n_layers, *np.shape(a)), a.dtype), w)
    elif _layout(w) != self.layout:
      logging.warning("layer %d's weights do not match layer 0's (%s vs %s): stacking them as a list",
                      i, _layout(w), self.layout)
      self.layers = [jax.tree.map(lambda a, j=j: a[j], self.buffers) for j in range(i)] + [w]
      self.buffers = None
      return
    for buffer, a in zip(jax.tree.leaves(self.buffers), jax.tree.leaves(w)):
      buffer[i] = np.asarray(a)

  def result(self):
    """The stacked weights as device arrays."""
    if self.count != self.n_layers:
      raise AssertionError(f"{self.count} layers added, {self.n_layers} expected")
    if self.layers is None:
      return jax.tree.map(jax.device_put, self.buffers)
    layers = self.layers if self.unify is None else self.unify(self.layers)
    return jax.tree.map(jax.device_put, stack(layers))


def _rtn(w, group_size: int, site: str, path) -> int4.Int4Weights:
  """RTN INT4 (asymmetric, as GGUF Q4_1) of an FP-INT matrix [K, N] (float in any dtype, or INT4
  of another scheme: from its values), group size along K, computed in float32."""
  k = w.shape[-2]
  if k % group_size or k % 2:
    fail(path, f"int4_group_size={group_size} must divide the contraction length {k} of '{site}' (and it must be even)")
  w = int4.dequantize(w) if isinstance(w, int4.Int4Weights) else w
  return int4.quantize_rtn(w, group_size, symmetric=False)


def _one_scheme(ws, group_size: int, site: str, path) -> list:
  """INT4 weights of one site (parts to fuse, or layers to stack) whose schemes differ, all in
  the RTN scheme (asymmetric, group_size): the others re-quantized from their values, which is
  what quantizing their float join does (groups run along K, within one part and one layer)."""
  if len({(w.symmetric, w.group_size) for w in ws}) == 1:
    return ws
  return [w if (w.symmetric, w.group_size) == (False, group_size) else _rtn(w, group_size, site, path)
          for w in ws]


def _read_rows(reader, rows, dims, i=None, int4_group_size=None, to_device=False,
               sources=None) -> dict:
  """{destination key: array} from the rows (of layer i), parts of one destination fused. With
  int4_group_size, each part of an FP-INT site (precision.MODULE_TYPES) of the layers that is
  not INT4 with this group size already is RTN-quantized as soon as it is read, so one float
  tensor is alive at a time. to_device: each tensor becomes a device array as soon as it is read
  (one host copy alive at a time). sources: {destination: Counter of stored types}, counted."""
  parts = {}
  for name, dest, shape, transform, *flag in rows:
    if flag and not dims[flag[0]]:
      parts[dest] = None
      continue
    w = _TRANSFORMS[transform](reader, name.format(i=i), tuple(dims[s] for s in shape), dims)
    if sources is not None:
      sources.setdefault(dest, collections.Counter())[reader.kind(name.format(i=i))] += 1
    if _quantized(dest, int4_group_size) and not (isinstance(w, int4.Int4Weights)
                                                  and w.group_size == int4_group_size):
      w = _rtn(w, int4_group_size, dest.removeprefix("layers."), reader.path)
    if to_device:
      w = jax.tree.map(_on_device, w)
    parts.setdefault(dest, []).append(w)
  out = {}
  for dest, ws in parts.items():
    site = dest.removeprefix("layers.")
    if ws is not None and _quantized(dest, int4_group_size):
      ws = _one_scheme(ws, int4_group_size, site, reader.path)
    out[site] = None if ws is None else ws[0] if len(ws) == 1 else fuse(ws)
  return out


def _quantized(dest: str, int4_group_size) -> bool:
  return (int4_group_size is not None and dest.startswith("layers.")
          and dest.removeprefix("layers.") in precision.MODULE_TYPES)


def apply_table(table, reader, dims: dict, n_layers: int, int4_group_size=None) -> dict:
  """Our weights from reader's tensors as `table` says; int4_group_size: RTN-quantize the
  FP-INT matrices (precision.MODULE_TYPES) to INT4 with this group size along K from the file's
  numbers, each as it is read (4-bit GGUF tensors of this group size stay as stored, unless they
  must join another scheme). Layer weights come back stacked, the others one by one, as device
  arrays; "weight_types" holds what they were stored as and became (weight_types.WeightTypes)."""
  in_layer = [row for row in table if row[1].startswith("layers.")]
  stacks = {}
  sources = {}
  for i in range(n_layers):
    for site, w in _read_rows(reader, in_layer, dims, i, int4_group_size, sources=sources).items():
      if site not in stacks:
        unify = None
        if _quantized("layers." + site, int4_group_size):
          unify = lambda ws, site=site: _one_scheme(ws, int4_group_size, site, reader.path)
        stacks[site] = None if w is None else LayerStack(n_layers, unify)
      if w is not None:
        stacks[site].add(w)
  layers = {site: None if s is None else s.result() for site, s in stacks.items()}
  rest = [row for row in table if not row[1].startswith("layers.")]
  weights = dict(_read_rows(reader, rest, dims, to_device=True, sources=sources), layers=layers)
  return dict(weights, weight_types=weight_types.describe(sources, weights))


def _unpermute_rotary(w, n_out, head_dim):
  """llama.cpp's converter reorders Q/K output rows per head from "rotate half" pairs (i, i + Dh/2)
  to interleaved pairs (2i, 2i + 1). Undo it on the N axis of W [K, n_out = heads * Dh]: HF row
  h*Dh + j*Dh/2 + i is GGUF row h*Dh + 2i + j."""
  perm = np.arange(n_out).reshape(n_out // head_dim, head_dim // 2, 2).transpose(0, 2, 1).reshape(-1)
  return jax.tree.map(lambda a: a[..., perm], _numpy(w))


# reader (a GGUFFile or safetensors_reader.Tensors), name, shape, dims -> our array
_TRANSFORMS = {
    "vector": lambda r, name, shape, dims: r.vector(name, *shape),
    "table": lambda r, name, shape, dims: r.rows(name, *shape),
    "linear": lambda r, name, shape, dims: r.matrix(name, *shape),
    "rotary": lambda r, name, shape, dims: _unpermute_rotary(r.matrix(name, *shape), shape[0],
                                                             dims["head_dim"]),
    # HF Gemma's norm: x * (1 + w), 1 + w computed in float32 as transformers does.
    "one_plus": lambda r, name, shape, dims: 1.0 + r.vector(name, *shape).astype(np.float32),
}


def _llama_dims(c: llama_lib.LlamaConfig) -> dict:
  return dict(d=c.d_model, f=c.d_ff, vocab=c.vocab, head_dim=c.head_dim, q=c.n_heads * c.head_dim,
              kv=c.n_kv_heads * c.head_dim, untied=not c.tie_embeddings)


# ----------------------------------------------------------------------------- builders


def _gguf_rotary_scaling(f: GGUFFile, a, head_dim: int, linear: bool) -> float:
  """The rotary's linear scaling factor (1.0: none) from the architecture's metadata `a`; a
  partial rotary, or a scaling other than none (and linear, if `linear`), is refused."""
  rope_dim = int(a("rope.dimension_count", head_dim))
  if rope_dim != head_dim:
    fail(f.path, f"partial rotary (rope.dimension_count={rope_dim} < head_dim={head_dim}) is not "
         "supported")
  scaling = a("rope.scaling.type", "none")
  if linear and scaling == "linear":
    return float(a("rope.scaling.factor"))
  if scaling not in ("none", None):
    fail(f.path, f"unsupported rope scaling '{scaling}': supported "
         + ("are none and linear" if linear else "is none"))
  return 1.0


def _gguf_vocab(f: GGUFFile) -> int:
  """The vocabulary size: the rows of the token embedding."""
  embd = f.tensors.get("token_embd.weight")
  if embd is None:
    fail(f.path, "missing tensor 'token_embd.weight'")
  return int(embd.shape[1])


def llama_from_gguf(f: GGUFFile, int4_group_size=None):
  """A llama-architecture GGUFFile -> (LlamaConfig, weights)."""
  a = lambda key, *default: f.meta(f"llama.{key}", *default)
  size = lambda key, *default: positive_int(f.path, f"llama.{key}", a(key, *default))
  n_heads = size("attention.head_count")
  d_model = size("embedding_length")
  head_dim = size("attention.key_length", d_model // n_heads)
  _gguf_rotary_scaling(f, a, head_dim, linear=False)
  config = llama_lib.LlamaConfig(
      n_layers=size("block_count"), d_model=d_model, n_heads=n_heads,
      n_kv_heads=size("attention.head_count_kv", n_heads), d_ff=size("feed_forward_length"),
      vocab=_gguf_vocab(f), head_dim=head_dim, rope_theta=float(a("rope.freq_base", 10000.0)),
      norm_eps=float(a("attention.layer_norm_rms_epsilon", 1e-5)),
      tie_embeddings="output.weight" not in f.tensors,
      max_positions=int(a("context_length", 2048)))
  return config, apply_table(LLAMA_FROM_GGUF, f, _llama_dims(config), config.n_layers,
                             int4_group_size)


def llama_from_hf(directory, cfg: dict, int4_group_size=None):
  directory = pathlib.Path(directory)
  for flag in ("attention_bias", "mlp_bias"):
    if cfg.get(flag):
      fail(directory / "config.json", f"{flag}=true is not supported")
  if cfg.get("hidden_act", "silu") != "silu":
    fail(directory / "config.json", f"hidden_act={cfg['hidden_act']!r} is not supported: must be silu")
  rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type != "default":
    fail(directory / "config.json", f"rope_type={rope_type!r} is not supported: must be 'default'")
  size = lambda key, *default: positive_int(directory / "config.json", key, cfg.get(key, *default))
  d = size("hidden_size")
  n_heads = size("num_attention_heads")
  config = llama_lib.LlamaConfig(
      n_layers=size("num_hidden_layers"), d_model=d, n_heads=n_heads,
      n_kv_heads=size("num_key_value_heads", n_heads), d_ff=size("intermediate_size"),
      vocab=size("vocab_size"), head_dim=cfg.get("head_dim") or d // n_heads,
      rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
      norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
      max_positions=int(cfg.get("max_position_embeddings") or 2048))
  tensors = Tensors(directory, ("model.", ""))
  return config, apply_table(LLAMA_FROM_HF, tensors, _llama_dims(config), config.n_layers, int4_group_size)


def opt_from_hf(directory, cfg: dict, int4_group_size=None):
  directory = pathlib.Path(directory)
  if not cfg.get("layer_norm_elementwise_affine", True):
    fail(directory / "config.json", "layer_norm_elementwise_affine=false is not supported")
  if not cfg.get("enable_bias", True):
    fail(directory / "config.json", "enable_bias=false is not supported")
  size = lambda key, *default: positive_int(directory / "config.json", key, cfg.get(key, *default))
  d = size("hidden_size")
  pre_ln = bool(cfg.get("do_layer_norm_before", True))
  config = opt_lib.OPTConfig(
      n_layers=size("num_hidden_layers"), d_model=d, n_heads=size("num_attention_heads"),
      d_ff=size("ffn_dim"), vocab=size("vocab_size"),
      max_positions=cfg.get("max_position_embeddings", 2048),
      word_embed_dim=cfg.get("word_embed_proj_dim") or d, pre_ln=pre_ln,
      final_ln=pre_ln and not cfg.get("_remove_final_layer_norm", False),
      activation=cfg.get("activation_function", "relu"),
      tie_embeddings=bool(cfg.get("tie_word_embeddings", True)))
  c = config
  dims = dict(d=d, f=c.d_ff, vocab=c.vocab, dw=c.word_embed_dim,
              positions=c.max_positions + opt_lib.POSITION_OFFSET, untied=not c.tie_embeddings,
              projected=c.word_embed_dim != d, final_ln=c.final_ln)
  tensors = Tensors(directory, ("model.decoder.", "decoder."))
  return config, apply_table(OPT_FROM_HF, tensors, dims, c.n_layers, int4_group_size)


def _gemma3_dims(c: gemma3_lib.Gemma3Config) -> dict:
  return dict(d=c.d_model, f=c.d_ff, vocab=c.vocab, head_dim=c.head_dim, q=c.n_heads * c.head_dim,
              kv=c.n_kv_heads * c.head_dim, untied=not c.tie_embeddings)


def gemma3_from_gguf(f: GGUFFile, int4_group_size=None):
  """A gemma3-architecture GGUFFile (llama.cpp's converter) -> (Gemma3Config, weights). What the
  file does not say is llama.cpp's: rotary base 10,000 on local layers, five local layers per
  global one, and queries scaled by head_dim^-1/2 (d_model / heads for the 62-layer 27B)."""
  a = lambda key, *default: f.meta(f"gemma3.{key}", *default)
  size = lambda key, *default: positive_int(f.path, f"gemma3.{key}", a(key, *default))
  n_layers, d_model = size("block_count"), size("embedding_length")
  n_heads = size("attention.head_count")
  head_dim = size("attention.key_length", 256)
  if size("attention.value_length", head_dim) != head_dim:
    fail(f.path, "gemma3.attention.value_length differs from key_length: not supported")
  factor = _gguf_rotary_scaling(f, a, head_dim, linear=True)
  config = gemma3_lib.Gemma3Config(
      n_layers=n_layers, d_model=d_model, n_heads=n_heads,
      n_kv_heads=size("attention.head_count_kv", n_heads), d_ff=size("feed_forward_length"),
      vocab=_gguf_vocab(f), head_dim=head_dim, rope_theta=float(a("rope.freq_base", 1e6)),
      rope_scaling=factor, sliding_window=size("attention.sliding_window", 512),
      query_pre_attn_scalar=d_model / n_heads if n_layers == 62 else head_dim,
      norm_eps=float(a("attention.layer_norm_rms_epsilon", 1e-6)),
      tie_embeddings="output.weight" not in f.tensors, max_positions=size("context_length", 32768))
  return config, apply_table(GEMMA3_FROM_GGUF, f, _gemma3_dims(config), n_layers, int4_group_size)


def _gemma3_rope(path, cfg: dict) -> tuple[float, float, float]:
  """(global base, local base, global linear scaling factor) of a Gemma 3 config.json: the
  rope_parameters of transformers >= 5 (per layer type), or the older rope_theta,
  rope_local_base_freq and rope_scaling."""
  params = cfg.get("rope_parameters") or {}
  full = params.get("full_attention") or dict(cfg.get("rope_scaling") or {},
                                              rope_theta=cfg.get("rope_theta", 1e6))
  local = params.get("sliding_attention") or dict(rope_theta=cfg.get("rope_local_base_freq", 1e4))
  kinds = {kind: p.get("rope_type", p.get("type", "default")) for kind, p in
           (("full_attention", full), ("sliding_attention", local))}
  if kinds["full_attention"] not in ("default", "linear") or kinds["sliding_attention"] != "default":
    fail(path, f"rope types {kinds} are not supported: must be 'default' (or 'linear' on "
         "full_attention)")
  factor = float(full.get("factor", 1.0)) if kinds["full_attention"] == "linear" else 1.0
  return float(full.get("rope_theta", 1e6)), float(local.get("rope_theta", 1e4)), factor


def gemma3_from_hf(directory, cfg: dict, int4_group_size=None):
  """A transformers Gemma3ForCausalLM directory (model_type gemma3_text) -> (Gemma3Config,
  weights)."""
  directory = pathlib.Path(directory)
  path = directory / "config.json"
  for flag in ("attention_bias", "use_bidirectional_attention", "final_logit_softcapping",
               "attn_logit_softcapping"):
    if cfg.get(flag):
      fail(path, f"{flag}={cfg[flag]!r} is not supported")
  if cfg.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
    fail(path, f"hidden_activation={cfg['hidden_activation']!r} is not supported: must be "
         "gelu_pytorch_tanh")
  size = lambda key, *default: positive_int(path, key, cfg.get(key, *default))
  n_layers = size("num_hidden_layers")
  pattern = size("sliding_window_pattern", gemma3_lib.SLIDING_WINDOW_PATTERN)
  types = cfg.get("layer_types") or ["sliding_attention" if s else "full_attention"
                                     for s in gemma3_lib.default_sliding_layers(n_layers, pattern)]
  if len(types) != n_layers or not set(types) <= {"sliding_attention", "full_attention"}:
    fail(path, f"layer_types={types!r} is invalid: must be {n_layers} of sliding_attention / "
         "full_attention")
  theta, local_theta, factor = _gemma3_rope(path, cfg)
  n_heads = size("num_attention_heads")
  config = gemma3_lib.Gemma3Config(
      n_layers=n_layers, d_model=size("hidden_size"), n_heads=n_heads,
      n_kv_heads=size("num_key_value_heads", n_heads), d_ff=size("intermediate_size"),
      vocab=size("vocab_size"), head_dim=size("head_dim", 256), rope_theta=theta,
      rope_local_theta=local_theta, rope_scaling=factor,
      sliding_window=size("sliding_window", 4096),
      sliding_layers=tuple(t == "sliding_attention" for t in types),
      query_pre_attn_scalar=float(cfg.get("query_pre_attn_scalar", 256)),
      norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
      max_positions=size("max_position_embeddings", 131072))
  tensors = Tensors(directory, ("model.", ""))
  return config, apply_table(GEMMA3_FROM_HF, tensors, _gemma3_dims(config), n_layers,
                             int4_group_size)


HF_BUILDERS = {"llama": llama_from_hf, "opt": opt_from_hf, "gemma3_text": gemma3_from_hf}
GGUF_BUILDERS = {"llama": llama_from_gguf, "gemma3": gemma3_from_gguf}
