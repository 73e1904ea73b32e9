"""Building blocks shared by the model families: the FP-INT linear, norms, rotary, attention,
and `DecoderLM`, the layer loop every model runs.

Weights are stored for y = x @ W ([K, N], float32 or `Int4Weights`), stacked along a leading
layer axis, so that one compiled `lax.fori_loop` serves every starting layer (the sensitivity
study starts from a cached float prefix with a traced `start`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from anda_jax import format as anda_format
from anda_jax import int4
from anda_jax import precision as anda_precision
from anda_jax.matmul import anda_matmul


def linear(x, w, mantissa_bits, fmt, impl="fake", key=None, bias=None):
  """An FP-INT product x @ w (+ bias). mantissa_bits=None is the float model: no Anda at all.

  Every FP-INT product of a model goes through here and so through `anda_matmul`."""
  if mantissa_bits is None:
    y = x @ int4.as_float(w)
  else:
    y = anda_matmul(x, w, fmt, mantissa_bits, impl=impl, key=key)
  return y if bias is None else y + bias


def rms_norm(x, weight, eps):
  # As HF LlamaRMSNorm: normalize in float32, then scale.
  var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(var + eps) * weight


def layer_norm(x, weight, bias, eps):
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * weight + bias


def rotary_tables(seq_len: int, head_dim: int, theta: float):
  """cos, sin [T, head_dim] of the "rotate half" rotary (HF LLaMA). GGUF's interleaved rows are
  permuted back on load, so this one rotary serves both sources."""
  inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
  freqs = np.arange(seq_len, dtype=np.float32)[:, None] * inv_freq[None, :]
  emb = np.concatenate([freqs, freqs], axis=-1)
  return jnp.asarray(np.cos(emb)), jnp.asarray(np.sin(emb))


def apply_rotary(x, cos, sin):
  """x [B, T, H, Dh]; cos, sin [T, Dh]."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos[:, None, :] + rotated * sin[:, None, :]


def causal_attention(q, k, v, scale):
  """Float softmax attention (an activation-activation product: no Anda).

  q [B, T, H, Dh], k, v [B, T, Hkv, Dh] with H a multiple of Hkv (grouped-query attention).
  Queries go in blocks of `chunk` that see only the keys up to their block's end, so the masked
  upper triangle is mostly skipped (about 3x faster than the full T x T on CPU); the query heads
  sharing a key head are folded into the rows of one matmul."""
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
    scores = jnp.einsum("bgqd,bgkd->bgqk", rows, kg[:, :, :hi]).reshape(b, g, hi - lo, rep, hi)
    mask = jnp.arange(hi)[None, :] <= jnp.arange(lo, hi)[:, None]  # [queries, keys]
    scores = jnp.where(mask[:, None, :], scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1).reshape(b, g, (hi - lo) * rep, hi)
    outs.append(jnp.einsum("bgqk,bgkd->bgqd", probs, vg[:, :, :hi]).reshape(b, g, hi - lo, rep, dh))
  out = jnp.concatenate(outs, axis=2)  # [B, G, T, R, Dh]
  return out.transpose(0, 2, 1, 3, 4).reshape(b, t, h * dh)


def layer_slice(tree, i):
  """Layer i of stacked weights (i may be traced)."""
  return jax.tree.map(lambda a: a[i], tree)


def weight_shape(w) -> tuple[int, ...]:
  return tuple(w.shape)


def site_key(layer_key, site: int):
  """A distinct PRNG key per site of a layer for stochastic rounding; None otherwise."""
  return None if layer_key is None else jax.random.fold_in(layer_key, site)


class FloatCache(nnx.Variable):
  """Derived state (not a trainable parameter): float copies of INT4 weights."""


def _is_int4(x):
  return isinstance(x, int4.Int4Weights)


class DecoderLM(nnx.Module):
  """A decoder-only LM: embed -> n_layers blocks -> head. Subclasses define `embed`, `_block`
  and `head`; weights live in nnx.Params holding pytrees (dicts of arrays / Int4Weights)."""

  config: object

  def _set_layers(self, layers: dict):
    """Stacked layer weights as loaded (INT4 stays INT4: the bit-serial path and the cost model
    read it), plus their dequantized float copy, made once here instead of in every forward:
    impl="fake" multiplies by exactly these values either way (anda_matmul dequantizes the same)."""
    layers = jax.tree.map(jnp.asarray, layers)
    self.layers = nnx.Param(layers)
    has_int4 = any(_is_int4(w) for w in layers.values())
    self.float_layers = FloatCache(
        {k: int4.as_float(w) if _is_int4(w) else w for k, w in layers.items()} if has_int4 else None)

  def _layer_weights(self, impl):
    cached = self.float_layers.get_value()
    return cached if cached is not None and impl == "fake" else self.layers.get_value()

  def __call__(self, tokens, precision=None, fmt=None, impl="fake", key=None):
    """tokens int32 [B, T] -> logits float32 [B, T, vocab].

    precision: int32 [4] or [n_layers, 4] mantissa bits per (layer,) type (qkv, o, up, down);
    0 = float activation (exact). None runs the plain float model without `anda_matmul`."""
    h = self.embed(tokens)
    h = self.run_layers(h, precision, fmt, start=0, impl=impl, key=key)
    return self.head(h)

  def run_layers(self, h, precision=None, fmt=None, start=0, impl="fake", key=None, stop=None):
    """Runs layers start..stop-1 (stop defaults to n_layers) on h [B, T, D]. `start` and `stop`
    may be traced: one compilation serves every range."""
    n_layers = self.config.n_layers
    stop = n_layers if stop is None else stop
    if precision is not None:
      precision = anda_precision.layer_precision(precision, n_layers)
      fmt = anda_format.AndaFormat() if fmt is None else fmt
    layers = self._layer_weights(impl)
    t = h.shape[1]
    context = self._context(t)

    def body(i, h):
      prec = None if precision is None else precision[i]
      return self._block(layer_slice(layers, i), h, prec, fmt, impl,
                         None if key is None else jax.random.fold_in(key, i), context)

    for name, value in (("start", start), ("stop", stop)):
      if isinstance(value, (int, np.integer)) and not 0 <= value <= n_layers:
        raise ValueError(f"{name}={value} is invalid: must be in [0, {n_layers}]")
    return jax.lax.fori_loop(start, stop, body, h)

  def _context(self, seq_len):
    """Per-call constants shared by every layer (e.g. rotary tables)."""
    return None

  def macs_per_token(self) -> dict[str, int]:
    """Multiply-accumulates per token of each FP-INT product type (spec section 5), summed over
    all layers (shapes only; every layer has the same shapes, so per layer divide by n_layers)."""
    layers = self.layers.get_value()
    return {site: int(np.prod(weight_shape(layers[site]), dtype=np.int64))
            for site in anda_precision.MODULE_TYPES}
