"""The LLaMA family (SmolLM2, LLaMA 2/3 shapes): RMSNorm, rotary, grouped-query attention,
SwiGLU, tied or separate head. Anda sits at the four FP-INT sites of docs/formats.md, section 8."""

from __future__ import annotations

import dataclasses

import jax

from anda_jax.models import layers as L
from anda_jax.precision import DOWN, O, QKV, UP


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
  # The context: the most positions the model was trained for (GGUF llama.context_length, HF
  # max_position_embeddings); 2048, LLaMA 1's, where the checkpoint does not say.
  max_positions: int = 2048

  def __post_init__(self):
    if self.head_dim == 0:
      object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
    for name in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "vocab", "head_dim",
                 "max_positions"):
      if getattr(self, name) < 1:
        raise ValueError(f"LlamaConfig.{name}={getattr(self, name)} must be positive")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"LlamaConfig: n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"LlamaConfig: head_dim={self.head_dim} must be even (rotary pairs)")


PRESETS = {
    "smollm2-135m": LlamaConfig(n_layers=30, d_model=576, n_heads=9, n_kv_heads=3, d_ff=1536,
                                vocab=49152, rope_theta=100000.0, norm_eps=1e-5,
                                max_positions=8192),
}


class Llama(L.RMSNormDecoderLM):
  """weights: embed [V, D]; final_norm [D]; head [D, V] or None (tied to embed);
  layers (stacked over L): attn_norm [L, D], qkv [L, D, (H + 2 Hkv) Dh] (q, k, v fused: they
  share one activation), o [L, H Dh, D], mlp_norm [L, D], up [L, D, 2 F] (gate, up fused),
  down [L, F, D]. Matrices are Int4Weights or float; float weights stay in their checkpoint dtype
  (float16 / bfloat16 / float32) and are upcast to float32 where they are used."""

  def _context(self, seq_len):
    return L.rotary_tables(seq_len, self.config.head_dim, self.config.rope_theta)

  def _context_at(self, position, seq_len, length):
    cos, sin = L.rotary_tables(length, self.config.head_dim, self.config.rope_theta)
    return (jax.lax.dynamic_slice_in_dim(cos, position, seq_len),
            jax.lax.dynamic_slice_in_dim(sin, position, seq_len))

  def _block(self, w, h, prec, spec, key, rotary, cache=None):
    """One block; with a KV cache (see run_layers_cached), (h, the cache's new keys and values)."""
    c = self.config
    b, t, _ = h.shape
    fp_int = lambda x, site, name: L.linear(x, w[name], prec[site], spec.at(site), L.site_key(key, site),
                                            precision=self.matmul_precision, lora=w.get(name + "_lora"),
                                            site=self.site(site))
    cos, sin = rotary

    x = L.rms_norm(h, w["attn_norm"], c.norm_eps)
    qkv = fp_int(x, QKV, "qkv")
    nq, nkv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    q = qkv[..., :nq].reshape(b, t, c.n_heads, c.head_dim)
    k = qkv[..., nq:nq + nkv].reshape(b, t, c.n_kv_heads, c.head_dim)
    v = qkv[..., nq + nkv:].reshape(b, t, c.n_kv_heads, c.head_dim)
    q, k = L.apply_rotary(q, cos, sin), L.apply_rotary(k, cos, sin)
    if cache is None:
      attn = L.causal_attention(q, k, v, c.head_dim ** -0.5, self.matmul_precision)
    else:
      attn, cache = L.cached_attention(q, k, v, cache, c.head_dim ** -0.5, self.matmul_precision)
    h = h + fp_int(attn, O, "o")

    x = L.rms_norm(h, w["mlp_norm"], c.norm_eps)
    gate_up = fp_int(x, UP, "up")
    gate, up = gate_up[..., :c.d_ff], gate_up[..., c.d_ff:]
    h = h + fp_int(jax.nn.silu(gate) * up, DOWN, "down")
    return h if cache is None else (h, cache)
