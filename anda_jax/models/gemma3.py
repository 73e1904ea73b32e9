"""The Gemma 3 family (text): RMSNorm scaled by (1 + w), norms after attention and after the
feed-forward too, RMSNorm on queries and keys, GeGLU (tanh GELU), local sliding-window layers
between global ones (each with its own rotary base), embeddings scaled by sqrt(d_model), a tied
head. Anda sits at the same four FP-INT sites as in LLaMA (spec section 5): q/k/v, o, gate/up,
down."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from anda_jax.models import layers as L
from anda_jax.precision import DOWN, O, QKV, UP

# Gemma 3's layer pattern: five sliding-window (local) layers, then one global layer.
SLIDING_WINDOW_PATTERN = 6


def default_sliding_layers(n_layers: int,
                           pattern: int = SLIDING_WINDOW_PATTERN) -> tuple[bool, ...]:
  """Which layers use the sliding window: all but every `pattern`-th (HF's and llama.cpp's)."""
  return tuple(bool((i + 1) % pattern) for i in range(n_layers))


@dataclasses.dataclass(frozen=True)
class Gemma3Config:
  n_layers: int
  d_model: int
  n_heads: int
  n_kv_heads: int
  d_ff: int
  vocab: int
  head_dim: int = 256
  rope_theta: float = 1_000_000.0  # global layers
  rope_local_theta: float = 10_000.0  # sliding-window layers
  rope_scaling: float = 1.0  # linear position scaling of the global layers (1: none)
  sliding_window: int = 512
  sliding_layers: tuple[bool, ...] = ()  # per layer; (): the 5 local : 1 global pattern
  query_pre_attn_scalar: float = 256.0  # attention scores are scaled by its -1/2 power
  norm_eps: float = 1e-6
  tie_embeddings: bool = True
  max_positions: int = 32768

  def __post_init__(self):
    if not self.sliding_layers:
      object.__setattr__(self, "sliding_layers", default_sliding_layers(self.n_layers))
    object.__setattr__(self, "sliding_layers", tuple(bool(s) for s in self.sliding_layers))
    for name in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "vocab", "head_dim",
                 "sliding_window", "max_positions"):
      if getattr(self, name) < 1:
        raise ValueError(f"Gemma3Config.{name}={getattr(self, name)} must be positive")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"Gemma3Config: n_heads={self.n_heads} must be a multiple of "
                       f"n_kv_heads={self.n_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"Gemma3Config: head_dim={self.head_dim} must be even (rotary pairs)")
    if len(self.sliding_layers) != self.n_layers:
      raise ValueError(f"Gemma3Config: sliding_layers has {len(self.sliding_layers)} entries, "
                       f"expected n_layers={self.n_layers}")
    if not self.query_pre_attn_scalar > 0 or not self.rope_scaling > 0:
      raise ValueError(f"Gemma3Config: query_pre_attn_scalar={self.query_pre_attn_scalar} and "
                       f"rope_scaling={self.rope_scaling} must be positive")


PRESETS = {
    "gemma3-270m": Gemma3Config(n_layers=18, d_model=640, n_heads=4, n_kv_heads=1, d_ff=2048,
                                vocab=262144, head_dim=256, sliding_window=512),
}


class Gemma3(L.RMSNormDecoderLM):
  """weights: embed [V, D] (the head too, when tied); final_norm [D]; head [V, D] or None;
  layers (stacked over L): attn_norm [L, D], qkv [L, D, (H + 2 Hkv) Dh] (q, k, v fused),
  q_norm, k_norm [L, Dh], o [L, H Dh, D], post_attn_norm [L, D], mlp_norm [L, D], up [L, D, 2 F]
  (gate, up fused), down [L, F, D], post_mlp_norm [L, D]. Every norm weight is the factor the
  normalized activation is multiplied by, 1 + w in HF's terms (as GGUF files store it).
  Matrices are Int4Weights or float, as in Llama."""

  def embed(self, tokens, position=0):
    # HF multiplies by sqrt(d_model) rounded to the embedding's dtype (float32 here).
    return super().embed(tokens, position) * np.float32(self.config.d_model ** 0.5)

  def _tables(self, length):
    """(local cos, local sin, global cos, global sin), each [length, Dh]."""
    c = self.config
    return (*L.rotary_tables(length, c.head_dim, c.rope_local_theta),
            *L.rotary_tables(length, c.head_dim, c.rope_theta, c.rope_scaling))

  def _context(self, seq_len):
    return self._tables(seq_len)

  def _context_at(self, position, seq_len, length):
    return tuple(jax.lax.dynamic_slice_in_dim(t, position, seq_len) for t in self._tables(length))

  def _layer_context(self, context, i):
    """Layer i's (cos, sin, window): local layers the local rotary and the sliding window,
    global ones the global rotary and no window (a window longer than any sequence)."""
    cos_local, sin_local, cos_global, sin_global = context
    sliding = jnp.asarray(self.config.sliding_layers)[i]
    window = jnp.where(sliding, self.config.sliding_window, jnp.iinfo(jnp.int32).max)
    return (jnp.where(sliding, cos_local, cos_global), jnp.where(sliding, sin_local, sin_global),
            window)

  def _block(self, w, h, prec, spec, key, context, cache=None):
    """One block; with a KV cache (see run_layers_cached), (h, the cache's new keys and values)."""
    c = self.config
    b, t, _ = h.shape
    fp_int = lambda x, site, name: L.linear(
        x, w[name], prec[site], spec.at(site), L.site_key(key, site),
        precision=self.matmul_precision, lora=w.get(name + "_lora"), site=self.site(site))
    norm = lambda x, name: L.rms_norm(x, w[name].astype(jnp.float32), c.norm_eps)
    cos, sin, window = context
    scale = float(c.query_pre_attn_scalar) ** -0.5

    qkv = fp_int(norm(h, "attn_norm"), QKV, "qkv")
    nq, nkv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    q = norm(qkv[..., :nq].reshape(b, t, c.n_heads, c.head_dim), "q_norm")
    k = norm(qkv[..., nq:nq + nkv].reshape(b, t, c.n_kv_heads, c.head_dim), "k_norm")
    v = qkv[..., nq + nkv:].reshape(b, t, c.n_kv_heads, c.head_dim)
    q, k = L.apply_rotary(q, cos, sin), L.apply_rotary(k, cos, sin)
    if cache is None:
      attn = L.causal_attention(q, k, v, scale, self.matmul_precision, window)
    else:
      attn, cache = L.cached_attention(q, k, v, cache, scale, self.matmul_precision, window)
    h = h + norm(fp_int(attn, O, "o"), "post_attn_norm")

    gate_up = fp_int(norm(h, "mlp_norm"), UP, "up")
    gate, up = gate_up[..., :c.d_ff], gate_up[..., c.d_ff:]
    h = h + norm(fp_int(jax.nn.gelu(gate, approximate=True) * up, DOWN, "down"), "post_mlp_norm")
    return h if cache is None else (h, cache)
