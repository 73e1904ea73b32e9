"""The LLaMA family (SmolLM2, LLaMA 2/3 shapes): RMSNorm, rotary, grouped-query attention,
SwiGLU, tied or separate head. Anda sits at the four FP-INT sites of spec section 5."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from anda_jax.models import layers as L

QKV, O, UP, DOWN = range(4)  # anda_jax.precision.MODULE_TYPES order


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  n_layers: int
  d_model: int
  n_heads: int
  n_kv_heads: int
  d_ff: int
  vocab: int
  head_dim: int = 0  # 0: d_model // n_heads
  rope_theta: float = 10000.0
  norm_eps: float = 1e-5
  tie_embeddings: bool = True

  def __post_init__(self):
    if self.head_dim == 0:
      object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
    for name in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "vocab", "head_dim"):
      if getattr(self, name) < 1:
        raise ValueError(f"LlamaConfig.{name}={getattr(self, name)} must be positive")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"LlamaConfig: n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"LlamaConfig: head_dim={self.head_dim} must be even (rotary pairs)")


PRESETS = {
    "smollm2-135m": LlamaConfig(n_layers=30, d_model=576, n_heads=9, n_kv_heads=3, d_ff=1536,
                                vocab=49152, rope_theta=100000.0, norm_eps=1e-5),
}


class Llama(L.DecoderLM):
  """weights: embed [V, D]; final_norm [D]; head [D, V] or None (tied to embed);
  layers (stacked over L): attn_norm [L, D], qkv [L, D, (H + 2 Hkv) Dh] (q, k, v fused: they
  share one activation), o [L, H Dh, D], mlp_norm [L, D], up [L, D, 2 F] (gate, up fused),
  down [L, F, D]. Matrices are float32 or Int4Weights."""

  def __init__(self, config: LlamaConfig, weights: dict):
    self.config = config
    self.embedding = nnx.Param(jnp.asarray(weights["embed"], jnp.float32))
    self.final_norm = nnx.Param(jnp.asarray(weights["final_norm"], jnp.float32))
    head = weights.get("head")
    self.lm_head = nnx.Param(None if head is None else jnp.asarray(head, jnp.float32))
    self._set_layers(weights["layers"])

  def embed(self, tokens):
    return jnp.take(self.embedding[...], tokens, axis=0)

  def head(self, h):
    h = L.rms_norm(h, self.final_norm[...], self.config.norm_eps)
    head = self.lm_head.get_value()
    if head is None:  # tied: logits = h @ embed^T
      return jnp.einsum("btd,vd->btv", h, self.embedding[...])
    return h @ head

  def _context(self, seq_len):
    return L.rotary_tables(seq_len, self.config.head_dim, self.config.rope_theta)

  def _block(self, w, h, prec, fmt, impl, key, rotary):
    c = self.config
    b, t, _ = h.shape
    m = (lambda site: None) if prec is None else (lambda site: prec[site])
    k_ = lambda site: L.site_key(key, site)
    cos, sin = rotary

    x = L.rms_norm(h, w["attn_norm"], c.norm_eps)
    qkv = L.linear(x, w["qkv"], m(QKV), fmt, impl, k_(QKV))
    nq, nkv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    q = qkv[..., :nq].reshape(b, t, c.n_heads, c.head_dim)
    k = qkv[..., nq:nq + nkv].reshape(b, t, c.n_kv_heads, c.head_dim)
    v = qkv[..., nq + nkv:].reshape(b, t, c.n_kv_heads, c.head_dim)
    q, k = L.apply_rotary(q, cos, sin), L.apply_rotary(k, cos, sin)
    attn = L.causal_attention(q, k, v, c.head_dim ** -0.5)
    h = h + L.linear(attn, w["o"], m(O), fmt, impl, k_(O))

    x = L.rms_norm(h, w["mlp_norm"], c.norm_eps)
    gate_up = L.linear(x, w["up"], m(UP), fmt, impl, k_(UP))
    gate, up = gate_up[..., :c.d_ff], gate_up[..., c.d_ff:]
    return h + L.linear(jax.nn.silu(gate) * up, w["down"], m(DOWN), fmt, impl, k_(DOWN))
