"""The OPT family: learned positions (offset 2), LayerNorm, ReLU, biases, pre- or post-LN
blocks (do_layer_norm_before), and project_in/project_out where the embedding width differs
from the model width (opt-350m). Anda sits at the four FP-INT sites of docs/formats.md, section 8."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from anda_jax.models import layers as L
from anda_jax.precision import DOWN, O, QKV, UP
POSITION_OFFSET = 2  # OPT's learned position table starts at index 2
ACTIVATIONS = {"relu": jax.nn.relu, "gelu": lambda x: jax.nn.gelu(x, approximate=False),
               "gelu_new": lambda x: jax.nn.gelu(x, approximate=True)}


@dataclasses.dataclass(frozen=True)
class OPTConfig:
  n_layers: int
  d_model: int
  n_heads: int
  d_ff: int
  vocab: int
  max_positions: int = 2048
  word_embed_dim: int = 0  # 0: d_model; otherwise project_in / project_out
  pre_ln: bool = True  # do_layer_norm_before
  final_ln: bool = True  # pre-LN models end with a LayerNorm (unless _remove_final_layer_norm)
  activation: str = "relu"
  norm_eps: float = 1e-5
  tie_embeddings: bool = True

  def __post_init__(self):
    if self.word_embed_dim == 0:
      object.__setattr__(self, "word_embed_dim", self.d_model)
    for name in ("n_layers", "d_model", "n_heads", "d_ff", "vocab", "max_positions"):
      if getattr(self, name) < 1:
        raise ValueError(f"OPTConfig.{name}={getattr(self, name)} must be positive")
    if self.d_model % self.n_heads:
      raise ValueError(f"OPTConfig: d_model={self.d_model} must be a multiple of n_heads={self.n_heads}")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"OPTConfig.activation={self.activation!r} must be one of {sorted(ACTIVATIONS)}")

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads


PRESETS = {
    "opt-125m": OPTConfig(n_layers=12, d_model=768, n_heads=12, d_ff=3072, vocab=50272),
    "opt-350m": OPTConfig(n_layers=24, d_model=1024, n_heads=16, d_ff=4096, vocab=50272,
                          word_embed_dim=512, pre_ln=False, final_ln=False),
}


class OPT(L.DecoderLM):
  """weights: embed [V, Dw]; positions [max_positions + 2, D]; project_in [Dw, D] / project_out
  [D, Dw] or None; final_ln_w, final_ln_b [D] or None; head [Dw, V] or None (tied);
  layers (stacked): attn_ln_w/b [L, D], qkv [L, D, 3D] (+ qkv_b), o [L, D, D] (+ o_b),
  mlp_ln_w/b [L, D], up [L, D, F] (+ up_b), down [L, F, D] (+ down_b). Float weights stay in their
  checkpoint dtype (float16 / bfloat16 / float32) and are upcast to float32 where they are used."""

  def __init__(self, config: OPTConfig, weights: dict):
    self.config = config
    self.embedding = nnx.Param(L.stored(weights["embed"]))
    self.positions = nnx.Param(L.stored(weights["positions"]))
    self.project_in = nnx.Param(L.stored(weights.get("project_in")))
    self.project_out = nnx.Param(L.stored(weights.get("project_out")))
    self.final_ln = nnx.Param(None if weights.get("final_ln_w") is None else
                              (L.stored(weights["final_ln_w"]), L.stored(weights["final_ln_b"])))
    self.lm_head = nnx.Param(L.stored(weights.get("head")))
    self._set_layers(weights["layers"])

  def embed(self, tokens, position=0):
    """Token and learned position embeddings of positions position..position+T-1 (position may
    be traced: generation with a KV cache)."""
    t = tokens.shape[1]
    if isinstance(position, int) and position + t > self.config.max_positions:
      raise ValueError(f"sequence length {position + t} exceeds OPT's max_positions={self.config.max_positions}")
    f32 = lambda a: a.astype(jnp.float32)  # float weights are upcast where used
    h = f32(jnp.take(self.embedding[...], tokens, axis=0))
    project_in = self.project_in.get_value()
    if project_in is not None:  # a float projection, not one of the four Anda sites
      h = self.matmul(h, f32(project_in))
    first = POSITION_OFFSET + position
    rows = (self.positions[...][first:first + t] if isinstance(position, int)
            else jax.lax.dynamic_slice_in_dim(self.positions[...], first, t))
    return h + f32(rows)

  def head_input(self, h):
    final_ln = self.final_ln.get_value()
    if final_ln is not None:
      h = L.layer_norm(h, *(w.astype(jnp.float32) for w in final_ln), self.config.norm_eps)
    project_out = self.project_out.get_value()
    return h if project_out is None else self.matmul(h, project_out.astype(jnp.float32))

  def _block(self, w, h, prec, spec, key, context, cache=None):
    """One block; with a KV cache (see run_layers_cached), (h, the cache's new keys and values)."""
    c = self.config
    b, t, d = h.shape
    fp_int = lambda x, site, name: L.linear(x, w[name], prec[site], spec.at(site), L.site_key(key, site),
                                            w[name + "_b"], self.matmul_precision, w.get(name + "_lora"),
                                            site=self.site(site))
    ln = lambda x, name: L.layer_norm(x, w[name + "_w"], w[name + "_b"], c.norm_eps)

    x = ln(h, "attn_ln") if c.pre_ln else h
    qkv = fp_int(x, QKV, "qkv")
    # HF scales q after its bias; keep that order.
    q = (qkv[..., :d] * c.head_dim ** -0.5).reshape(b, t, c.n_heads, c.head_dim)
    k = qkv[..., d:2 * d].reshape(b, t, c.n_heads, c.head_dim)
    v = qkv[..., 2 * d:].reshape(b, t, c.n_heads, c.head_dim)
    if cache is None:
      attn = L.causal_attention(q, k, v, 1.0, self.matmul_precision)
    else:
      attn, cache = L.cached_attention(q, k, v, cache, 1.0, self.matmul_precision)
    h = h + fp_int(attn, O, "o")
    if not c.pre_ln:
      h = ln(h, "attn_ln")

    x = ln(h, "mlp_ln") if c.pre_ln else h
    x = ACTIVATIONS[c.activation](fp_int(x, UP, "up"))
    h = h + fp_int(x, DOWN, "down")
    if not c.pre_ln:
      h = ln(h, "mlp_ln")
    return h if cache is None else (h, cache)
