"""The OPT family: learned positions (offset 2), LayerNorm, ReLU, biases, pre- or post-LN
blocks (do_layer_norm_before), and project_in/project_out where the embedding width differs
from the model width (opt-350m). Anda sits at the four FP-INT sites of spec section 5."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from anda_jax.models import layers as L

QKV, O, UP, DOWN = range(4)  # anda_jax.precision.MODULE_TYPES order
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
  mlp_ln_w/b [L, D], up [L, D, F] (+ up_b), down [L, F, D] (+ down_b)."""

  def __init__(self, config: OPTConfig, weights: dict):
    self.config = config
    f32 = lambda a: None if a is None else jnp.asarray(a, jnp.float32)
    self.embedding = nnx.Param(f32(weights["embed"]))
    self.positions = nnx.Param(f32(weights["positions"]))
    self.project_in = nnx.Param(f32(weights.get("project_in")))
    self.project_out = nnx.Param(f32(weights.get("project_out")))
    self.final_ln = nnx.Param(None if weights.get("final_ln_w") is None else
                              (f32(weights["final_ln_w"]), f32(weights["final_ln_b"])))
    self.lm_head = nnx.Param(f32(weights.get("head")))
    self._set_layers(weights["layers"])

  def embed(self, tokens):
    t = tokens.shape[1]
    if t > self.config.max_positions:
      raise ValueError(f"sequence length {t} exceeds OPT's max_positions={self.config.max_positions}")
    h = jnp.take(self.embedding[...], tokens, axis=0)
    project_in = self.project_in.get_value()
    if project_in is not None:  # a float projection, not one of the four Anda sites
      h = h @ project_in
    return h + self.positions[...][POSITION_OFFSET:POSITION_OFFSET + t]

  def head(self, h):
    final_ln = self.final_ln.get_value()
    if final_ln is not None:
      h = L.layer_norm(h, *final_ln, self.config.norm_eps)
    project_out = self.project_out.get_value()
    if project_out is not None:
      h = h @ project_out
    head = self.lm_head.get_value()
    if head is None:
      return jnp.einsum("btd,vd->btv", h, self.embedding[...])
    return h @ head

  def _block(self, w, h, prec, fmt, impl, key, context):
    c = self.config
    b, t, d = h.shape
    m = (lambda site: None) if prec is None else (lambda site: prec[site])
    k_ = lambda site: L.site_key(key, site)
    ln = lambda x, name: L.layer_norm(x, w[name + "_w"], w[name + "_b"], c.norm_eps)

    x = ln(h, "attn_ln") if c.pre_ln else h
    qkv = L.linear(x, w["qkv"], m(QKV), fmt, impl, k_(QKV), w["qkv_b"])
    # HF scales q after its bias; keep that order.
    q = (qkv[..., :d] * c.head_dim ** -0.5).reshape(b, t, c.n_heads, c.head_dim)
    k = qkv[..., d:2 * d].reshape(b, t, c.n_heads, c.head_dim)
    v = qkv[..., 2 * d:].reshape(b, t, c.n_heads, c.head_dim)
    attn = L.causal_attention(q, k, v, 1.0)
    h = h + L.linear(attn, w["o"], m(O), fmt, impl, k_(O), w["o_b"])
    if not c.pre_ln:
      h = ln(h, "attn_ln")

    x = ln(h, "mlp_ln") if c.pre_ln else h
    x = ACTIVATIONS[c.activation](L.linear(x, w["up"], m(UP), fmt, impl, k_(UP), w["up_b"]))
    h = h + L.linear(x, w["down"], m(DOWN), fmt, impl, k_(DOWN), w["down_b"])
    if not c.pre_ln:
      h = ln(h, "mlp_ln")
    return h
