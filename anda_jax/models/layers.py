"""Building blocks shared by the model families: the FP-INT linear, norms, rotary, attention,
and `DecoderLM`, the layer loop every model runs.

Weights are stored for y = x @ W ([K, N], `Int4Weights` or float in the checkpoint dtype, upcast
where used), stacked along a leading layer axis, so that one compiled `lax.fori_loop` serves
every starting layer (the sensitivity study starts from a cached float prefix with a traced
`start`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from anda_jax import precision as anda_precision
from anda_jax.matmul import ProductSpec, lax_precision


def linear(x, w, mantissa_bits, spec: ProductSpec, key=None, bias=None, precision="highest",
           lora=None, site=None):
  """An FP-INT product x @ w (+ bias); mantissa_bits = FLOAT (0) keeps x in floating point.

  Every FP-INT product of a model goes through here and so through `ProductSpec`. lora: None,
  or a low-rank adapter {"a": [K, r], "b": [r, N]} (anda_jax.finetune) whose float product
  (x_q @ a) @ b is added, x_q being the activation the product sees (Anda at mantissa_bits).
  site: None, or the model's `Site` of this product type, inside which the product runs."""
  args = (x, w, mantissa_bits, key, precision)
  y = spec(*args) if site is None else site(spec, *args)
  if lora is not None:
    p = lax_precision(precision)
    x_q = spec.activation(x, mantissa_bits, key)
    y = y + jnp.matmul(jnp.matmul(x_q, lora["a"], precision=p), lora["b"], precision=p)
  return y if bias is None else y + bias


def rms_norm(x, weight, eps):
  # As HF LlamaRMSNorm: normalize in float32, then scale.
  var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(var + eps) * weight


def layer_norm(x, weight, bias, eps):
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * weight + bias


def rotary_tables(seq_len: int, head_dim: int, theta: float, scaling: float = 1.0):
  """cos, sin [T, head_dim] of the "rotate half" rotary (HF LLaMA). GGUF's interleaved rows are
  permuted back on load, so this one rotary serves both sources. scaling: linear position
  scaling (positions divided by it, as HF's "linear" rope type)."""
  inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
  if scaling != 1.0:
    inv_freq = inv_freq / np.float32(scaling)
  freqs = np.arange(seq_len, dtype=np.float32)[:, None] * inv_freq[None, :]
  emb = np.concatenate([freqs, freqs], axis=-1)
  return jnp.asarray(np.cos(emb)), jnp.asarray(np.sin(emb))


def apply_rotary(x, cos, sin):
  """x [B, T, H, Dh]; cos, sin [T, Dh]."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos[:, None, :] + rotated * sin[:, None, :]


def _visible(keys, queries, window):
  """[queries, keys] mask: causal, and with a sliding `window` (None: unlimited; may be traced)
  only the last `window` positions, the query's own included (HF's and llama.cpp's sliding
  window: key j is seen from query i iff i - window < j <= i)."""
  mask = keys[None, :] <= queries[:, None]
  if window is not None:
    mask &= keys[None, :] > queries[:, None] - window
  return mask


def causal_attention(q, k, v, scale, precision="highest", window=None):
  """Float softmax attention (an activation-activation product: no Anda).

  q [B, T, H, Dh], k, v [B, T, Hkv, Dh] with H a multiple of Hkv (grouped-query attention).
  Queries go in blocks of `chunk` that see only the keys up to their block's end, so the masked
  upper triangle is mostly skipped (about 3x faster than the full T x T on CPU); the query heads
  sharing a key head are folded into the rows of one matmul. window: None, or a sliding window
  (see _visible)."""
  precision = lax_precision(precision)
  b, t, h, dh = q.shape
  g = k.shape[2]
  rep = h // g
  chunk = max(64, -(-t // 16))  # at most 16 unrolled blocks
  qg = (q * scale).reshape(b, t, g, rep, dh).transpose(0, 2, 1, 3, 4)  # [B, G, T, R, Dh]
  kg, vg = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, G, T, Dh]
  outs = []
  for lo in range(0, t, chunk):
    hi = min(lo + chunk, t)
    rows = qg[:, :, lo:hi].reshape(b, g, (hi - lo) * rep, dh)
    scores = jnp.einsum("bgqd,bgkd->bgqk", rows, kg[:, :, :hi], precision=precision).reshape(b, g, hi - lo, rep, hi)
    mask = _visible(jnp.arange(hi), jnp.arange(lo, hi), window)  # [queries, keys]
    scores = jnp.where(mask[:, None, :], scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1).reshape(b, g, (hi - lo) * rep, hi)
    outs.append(jnp.einsum("bgqk,bgkd->bgqd", probs, vg[:, :, :hi], precision=precision).reshape(b, g, hi - lo, rep, dh))
  out = jnp.concatenate(outs, axis=2)  # [B, G, T, R, Dh]
  return out.transpose(0, 2, 1, 3, 4).reshape(b, t, h * dh)


def cached_attention(q, k, v, cache, scale, precision="highest", window=None):
  """causal_attention for the queries of positions p..p+T-1 against a KV cache, for generation:
  the prompt once, then one position at a time, each step O(cache length) instead of a rerun of
  the whole prefix.

  q [B, T, H, Dh]; k, v [B, T, Hkv, Dh] of the same positions; cache = (keys, values, p), keys
  and values [B, S, Hkv, Dh] holding positions 0..p-1 (the rest is ignored), p an int or traced.
  k and v are written at p, and each query sees the positions up to its own. Returns (output
  [B, T, H Dh], (keys, values) with positions p..p+T-1 written). window: as causal_attention's."""
  keys, values, position = cache
  keys = jax.lax.dynamic_update_slice_in_dim(keys, k.astype(keys.dtype), position, axis=1)
  values = jax.lax.dynamic_update_slice_in_dim(values, v.astype(values.dtype), position, axis=1)
  precision = lax_precision(precision)
  b, t, h, dh = q.shape
  s, g = keys.shape[1], keys.shape[2]
  rep = h // g
  rows = (q * scale).reshape(b, t, g, rep, dh).transpose(0, 2, 1, 3, 4).reshape(b, g, t * rep, dh)
  kg, vg = keys.transpose(0, 2, 1, 3), values.transpose(0, 2, 1, 3)  # [B, G, S, Dh]
  scores = jnp.einsum("bgqd,bgkd->bgqk", rows, kg, precision=precision).reshape(b, g, t, rep, s)
  mask = _visible(jnp.arange(s), position + jnp.arange(t), window)  # [queries, keys]
  scores = jnp.where(mask[:, None, :], scores, -jnp.inf)
  probs = jax.nn.softmax(scores, axis=-1).reshape(b, g, t * rep, s)
  out = jnp.einsum("bgqk,bgkd->bgqd", probs, vg, precision=precision).reshape(b, g, t, rep, dh)
  return out.transpose(0, 2, 1, 3, 4).reshape(b, t, h * dh), (keys, values)


def layer_slice(tree, i):
  """Layer i of stacked weights (i may be traced)."""
  return jax.tree.map(lambda a: a[i], tree)


def weight_shape(w) -> tuple[int, ...]:
  return tuple(w.shape)


def site_key(layer_key, site: int):
  """A distinct PRNG key per site of a layer for stochastic rounding; None otherwise."""
  return None if layer_key is None else jax.random.fold_in(layer_key, site)


def stored(a):
  """A float weight as a model holds it: in its checkpoint dtype (float16, bfloat16 or float32;
  anything else becomes float32), upcast to float32 where it is used. None stays None."""
  if a is None:
    return None
  a = jnp.asarray(a)
  return a if a.dtype in (jnp.float16, jnp.bfloat16, jnp.float32) else a.astype(jnp.float32)


class Site(nnx.Module):
  """Where one FP-INT product type (qkv, o, up, down) runs: a stateless sub-module of the model,
  named after the type, that computes exactly spec(x, w, ...). It gives each type a module path
  ("qkv", "o", "up", "down") that path-matching tools see (qwix rules: anda_jax.qwix_provider)."""

  def __call__(self, spec: ProductSpec, *args):
    return spec(*args)


class DecoderLM(nnx.Module):
  """A decoder-only LM: embed -> n_layers blocks -> head. Subclasses define `embed`, `_block`,
  `head_input` (what precedes the LM head's product), `embedding` and `lm_head` (None: tied);
  weights live in nnx.Params holding pytrees (dicts of arrays / Int4Weights)."""

  config: object
  # Every floating-point product of the model (the FP-INT products, attention, embedding
  # projections, the LM head) runs at this precision: see anda_jax.matmul.lax_precision.
  matmul_precision: str = "highest"

  def matmul(self, x, w):
    """x @ w for the model's float-only products, at `matmul_precision`."""
    return jnp.matmul(x, w, precision=lax_precision(self.matmul_precision))

  def head(self, h):
    """Logits float32 [..., vocab] of the hidden states leaving the last layer."""
    return self.matmul(self.head_input(h), self.head_weight().astype(jnp.float32).T)

  def head_weight(self):
    """The LM head as vocabulary rows [vocab, D], as checkpoints store it: its own matrix, or
    the embedding when tied. In the checkpoint dtype: callers upcast at use (the streamed
    cross-entropy one vocabulary chunk at a time, so no float32 copy of it exists)."""
    head = self.lm_head.get_value()
    return self.embedding[...] if head is None else head

  def _set_layers(self, layers: dict):
    """Stacked layer weights as loaded: INT4 stays packed, float weights keep their checkpoint
    dtype. There is no whole-model float copy: each product dequantizes (or upcasts) its own
    layer's weights inside the layer loop, so a 7B model costs its packed bytes, not 8x them.
    Under vmap over configurations the weights are not batched, so neither is that work."""
    self.layers = nnx.Param(jax.tree.map(jnp.asarray, layers))
    for name in anda_precision.MODULE_TYPES:  # the product types' sub-modules (see Site)
      setattr(self, name, Site())

  def site(self, site: int) -> Site:
    """The sub-module in which the products of type `site` (precision.QKV, ...) run."""
    return getattr(self, anda_precision.MODULE_TYPES[site])

  def __call__(self, tokens, precision=None, spec: ProductSpec = ProductSpec(), key=None):
    """tokens int32 [B, T] -> logits float32 [B, T, vocab].

    precision: int32 [4] or [n_layers, 4] mantissa bits per (layer,) type (qkv, o, up, down);
    FLOAT (0) = float activation (exact); None = every activation in float."""
    h = self.embed(tokens)
    h = self.run_layers(h, precision, spec, start=0, key=key)
    return self.head(h)

  def run_layers(self, h, precision=None, spec: ProductSpec = ProductSpec(), start=0, key=None,
                 stop=None):
    """Runs layers start..stop-1 (stop defaults to n_layers) on h [B, T, D]. `start` and `stop`
    may be traced: one compilation serves every range."""
    n_layers = self.config.n_layers
    stop = n_layers if stop is None else stop
    if precision is None:
      precision = np.full(len(anda_precision.MODULE_TYPES), anda_precision.FLOAT, np.int32)
    precision = anda_precision.layer_precision(precision, n_layers)
    layers = self.layers.get_value()
    t = h.shape[1]
    context = self._context(t)

    def body(i, h):
      return self._block(layer_slice(layers, i), h, precision[i], spec,
                         None if key is None else jax.random.fold_in(key, i),
                         self._layer_context(context, i))

    for name, value in (("start", start), ("stop", stop)):
      if isinstance(value, (int, np.integer)) and not 0 <= value <= n_layers:
        raise ValueError(f"{name}={value} is invalid: must be in [0, {n_layers}]")
    return jax.lax.fori_loop(start, stop, body, h)

  def _context(self, seq_len):
    """Per-call constants shared by every layer (e.g. rotary tables)."""
    return None

  def _layer_context(self, context, i):
    """What layer i (maybe traced) of a model whose layers differ (e.g. local and global
    attention) takes from the per-call context; the context itself by default."""
    del i
    return context

  # -------------------------------------------------------------- generation with a KV cache

  def init_cache(self, batch: int, length: int) -> dict:
    """An empty KV cache for `length` positions: keys and values, float32 [n_layers, batch,
    length, kv heads, head_dim] (run_layers_cached fills it)."""
    c = self.config
    shape = (c.n_layers, batch, length, getattr(c, "n_kv_heads", c.n_heads), c.head_dim)
    return dict(k=jnp.zeros(shape, jnp.float32), v=jnp.zeros(shape, jnp.float32))

  def run_layers_cached(self, h, cache: dict, position, precision=None,
                        spec: ProductSpec = ProductSpec(), key=None):
    """Every layer on h [B, T, D] = embed(tokens, position), the positions position..position+T-1,
    attending to the keys and values `cache` (init_cache) holds for the earlier positions:
    (h after the last layer, the cache with these positions' keys and values added). The prompt
    goes in once (position 0), then one token at a time (position traced: one compilation).
    Anda applies at the same four FP-INT products as in run_layers, whose numerics are untouched."""
    n_layers = self.config.n_layers
    if precision is None:
      precision = np.full(len(anda_precision.MODULE_TYPES), anda_precision.FLOAT, np.int32)
    precision = anda_precision.layer_precision(precision, n_layers)
    layers = self.layers.get_value()
    context = self._context_at(position, h.shape[1], cache["k"].shape[2])

    def body(i, carry):
      h, keys, values = carry
      h, (k_i, v_i) = self._block(layer_slice(layers, i), h, precision[i], spec,
                                  None if key is None else jax.random.fold_in(key, i),
                                  self._layer_context(context, i),
                                  cache=(keys[i], values[i], position))
      return h, keys.at[i].set(k_i), values.at[i].set(v_i)

    h, keys, values = jax.lax.fori_loop(0, n_layers, body, (h, cache["k"], cache["v"]))
    return h, dict(k=keys, v=values)

  def _context_at(self, position, seq_len, length):
    """_context for positions position..position+seq_len-1 of a cache of `length` positions."""
    return None

  def macs_per_token(self) -> dict[str, int]:
    """Multiply-accumulates per token of each FP-INT product type (docs/formats.md, section 8), summed over
    all layers (shapes only; every layer has the same shapes, so per layer divide by n_layers)."""
    layers = self.layers.get_value()
    return {site: int(np.prod(weight_shape(layers[site]), dtype=np.int64))
            for site in anda_precision.MODULE_TYPES}


class RMSNormDecoderLM(DecoderLM):
  """A decoder whose weights are an embedding, stacked layers, a final RMSNorm and an LM head
  (None: tied to the embedding), and whose positions enter through the rotary, in attention
  (LLaMA, Gemma 3). Subclasses define `_block` and the rotary context."""

  def __init__(self, config, weights: dict):
    self.config = config
    self.embedding = nnx.Param(stored(weights["embed"]))
    self.final_norm = nnx.Param(stored(weights["final_norm"]))
    self.lm_head = nnx.Param(stored(weights.get("head")))
    self._set_layers(weights["layers"])

  def embed(self, tokens, position=0):
    del position  # positions enter through the rotary, in attention
    return jnp.take(self.embedding[...], tokens, axis=0).astype(jnp.float32)

  def head_input(self, h):
    return rms_norm(h, self.final_norm[...].astype(jnp.float32), self.config.norm_eps)
