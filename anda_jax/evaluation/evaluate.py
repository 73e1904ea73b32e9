"""Perplexity over token windows for a batch of precision configurations at once.

    ppl = evaluate.perplexity(model, windows, precisions, spec)   # precisions [C, 4] or [C, L, 4]

Inside one `jax.jit` the model runs under `jax.vmap` over the configurations (the mantissa
lengths are traced, so one compiled program serves every configuration); windows go
through in batches of `batch_size` to bound memory (the logits alone take
C x batch_size x seq_len x vocab floats). Shapes are kept fixed (the last window and
configuration batches are padded) so that a run compiles once per (product spec, window shape):
`count_compilations()` counts it.

With several devices the work is laid out over a ("config", "model") mesh (anda_jax.sharding):
the configuration batch split over "config", the layer weights over "model" (column-parallel
qkv and gate/up, row-parallel o and down); windows are replicated. For several hosts call
`jax.distributed.initialize()` first (the experiments do with `--config.distributed=True`),
then every process runs the same code and `jax.devices()` spans all hosts.

Perplexity is token-weighted: exp(sum of the negative log-likelihoods of the scored targets
/ their number). The target at position t+1 is predicted from positions <= t; with
`score_from=s` only targets with at least s tokens of context count (for overlapping
windows, s = seq_len - stride).
"""

from __future__ import annotations

import contextlib
import functools
import zlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
import tqdm

from anda_jax.checks import check_int, check_token_ids
from anda_jax.evaluation import cross_entropy
from anda_jax.matmul import ProductSpec, lax_precision
from anda_jax import precision as anda_precision
from anda_jax import sharding

# Bound on the float32 logits alive at once (configs x windows x seq_len x one vocabulary chunk).
LOGITS_BUDGET_BYTES = 512 << 20
# JAX's monitoring event for one XLA compilation (jax._src.dispatch.BACKEND_COMPILE_EVENT).
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compilations(fun_name: str | None = "jit(_nll_sums)"):
  """Lists the XLA compilations of `fun_name` (None: of every function) made inside the block,
  from JAX's own monitoring events, so a count depends only on what the block ran:

      with evaluate.count_compilations() as compiled:
        evaluate.perplexity(...)
      len(compiled)   # 1: one program per (product spec, window shape, configuration batch)
  """
  compiled = []

  def listener(event, duration, **kwargs):
    del duration
    if event == _COMPILE_EVENT and fun_name in (None, kwargs.get("fun_name")):
      compiled.append(kwargs.get("fun_name"))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield compiled
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def check_precisions(precisions, n_layers: int) -> np.ndarray:
  """[C, 4] or [C, n_layers, 4] integers in 0..24 -> int32 [C, n_layers, 4]; ValueError otherwise."""
  p = np.asarray(precisions)
  n_types = len(anda_precision.MODULE_TYPES)
  if p.ndim not in (2, 3) or p.shape[-1] != n_types or (p.ndim == 3 and p.shape[1] != n_layers) or not len(p):
    raise ValueError(f"precisions has shape {list(p.shape)}: must be [C, {n_types}] or "
                     f"[C, {n_layers}, {n_types}] with C >= 1 configurations")
  anda_precision.check_values(p, "precisions")
  if p.ndim == 2:
    p = np.broadcast_to(p[:, None, :], (len(p), n_layers, n_types))
  return np.ascontiguousarray(p, np.int32)


def check_windows(windows, vocab: int) -> np.ndarray:
  w = np.asarray(windows)
  if w.ndim != 2 or w.shape[1] < 2 or not len(w) or not np.issubdtype(w.dtype, np.integer):
    raise ValueError(f"windows has shape {list(w.shape)} and dtype {w.dtype}: must be integer token "
                     "ids [n_windows >= 1, seq_len >= 2]")
  return check_token_ids(w, vocab, "windows").astype(np.int32)


def target_weights(n_windows: int, seq_len: int, score_from: int = 0) -> np.ndarray:
  """float32 [n, seq_len - 1]: 1 for the targets that are scored."""
  if not 0 <= score_from < seq_len - 1:
    raise ValueError(f"score_from={score_from} is invalid: must be in [0, seq_len - 1 = {seq_len - 1})")
  w = np.ones((n_windows, seq_len - 1), np.float32)
  w[:, :score_from] = 0.0
  return w


@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "mesh"))
def _nll_sums(graphdef, state, inputs, targets, weights, precisions, start, key_data, batch, *,
              spec, mesh):
  """Sum over each window's tokens of weight x NLL, per configuration: float32 [C, B].

  inputs: token ids [B, T] (run from the embedding), or hidden states [B, T, D] entering layer
  `start` (the sensitivity study's float prefix). key_data: uint32 PRNG key data per
  configuration (stochastic rounding) or None; `batch` (the window batch's index) is folded in."""
  model = nnx.merge(graphdef, state)
  h = model.embed(inputs) if jnp.issubdtype(inputs.dtype, jnp.integer) else inputs

  def one_config(precision, key_data):
    key = None if key_data is None else jax.random.fold_in(jax.random.wrap_key_data(key_data), batch)
    out = model.run_layers(h, precision, spec, start=start, key=key)
    # The LM head streamed over vocabulary chunks: the [B, T, vocab] logits never exist.
    nll = cross_entropy.streamed_nll(model.head_input(out)[:, :-1], model.head_weight(), targets,
                                     precision=lax_precision(model.matmul_precision))
    return jnp.sum(nll * weights, axis=-1)

  sums = jax.vmap(one_config)(precisions, key_data)
  if mesh is not None:  # every process gets the whole result
    sums = jax.lax.with_sharding_constraint(sums, NamedSharding(mesh, P()))
  return sums


def _config_key_data(key, precisions: np.ndarray) -> np.ndarray:
  """uint32 key data [C, ...], one key per configuration derived from its contents, so that
  stochastic results do not depend on how configurations are batched, sharded or resumed."""
  if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)  # a raw jax.random.PRNGKey
  return np.stack([np.asarray(jax.random.key_data(jax.random.fold_in(key, zlib.crc32(p.tobytes()) & 0x7FFFFFFF)))
                   for p in precisions])


def auto_batch_size(n_configs: int, seq_len: int, vocab: int) -> int:
  """Windows per forward pass that keep one vocabulary chunk of logits (the LM head is streamed)
  within LOGITS_BUDGET_BYTES."""
  chunk = min(vocab, cross_entropy.DEFAULT_CHUNK)
  return max(1, LOGITS_BUDGET_BYTES // (4 * n_configs * seq_len * chunk))


def nll_sums(model, inputs, precisions, spec: ProductSpec = ProductSpec(), *,
             on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None, **kwargs):
  """Token-weighted NLL sums: (float64 [C], number of scored tokens); `window_nll_sums` summed
  over the windows. on_batch(config_indices, their NLL sums) after each configuration batch."""
  per_batch = None if on_batch is None else (lambda idx, sums: on_batch(idx, sums.sum(axis=1)))
  sums, tokens = window_nll_sums(model, inputs, precisions, spec, on_batch=per_batch, **kwargs)
  return sums.sum(axis=1), float(tokens.sum())


def window_nll_sums(model, inputs, precisions, spec: ProductSpec = ProductSpec(), *,
                    targets=None, weights=None, start: int = 0, batch_size: int | None = None,
                    config_batch: int | None = None, key=None, mesh="auto",
                    on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None,
                    progress: str | None = None):
  """Token-weighted NLL sums per window: (float64 [C, N], scored tokens per window [N]). Kept
  per window so that differences between configurations get paired confidence intervals.

  inputs: token windows int [N, T] (targets are inputs[:, 1:]), or hidden states [N, T, D]
  entering layer `start` together with `targets` int [N, T - 1]. Configurations go through
  `config_batch` at a time (default: all, rounded up to a multiple of the device count);
  after each, on_batch(config_indices, their per-window NLL sums) is called. `progress`: the
  label of a progress bar over the window batches of every configuration batch (None: none)."""
  n_layers, vocab = model.config.n_layers, model.config.vocab
  for name, value in (("batch_size", batch_size), ("config_batch", config_batch)):
    if value is not None:
      check_int(name, value, 1, hint=" or None (automatic)")
  precisions = check_precisions(precisions, n_layers)
  if targets is None:
    inputs = check_windows(inputs, vocab)
    targets = inputs[:, 1:]
  else:
    targets = np.asarray(targets, np.int32)
    if targets.size and (targets.min() < 0 or targets.max() >= vocab):
      raise ValueError(f"targets hold token ids {targets.min()}..{targets.max()}: must be in [0, vocab={vocab})")
  n, t = inputs.shape[:2]
  if targets.shape != (n, t - 1):
    raise ValueError(f"targets has shape {list(targets.shape)}: must be [{n}, {t - 1}]")
  weights = np.ones((n, t - 1), np.float32) if weights is None else np.asarray(weights, np.float32)
  if spec.stochastic and key is None:
    raise ValueError("fmt.rounding='stochastic' needs a PRNG key: pass key=jax.random.key(seed)")
  mesh = sharding.make_mesh() if mesh == "auto" else mesh
  n_dev = sharding.config_shards(mesh)
  n_configs = len(precisions)
  asked = config_batch or n_configs
  config_batch = -(-asked // n_dev) * n_dev
  # Sized for the configurations asked for, not for their rounding to the devices: the windows
  # are then batched alike on any number of devices, and so are stochastic rounding's draws
  # (one key per window batch).
  batch_size = batch_size or auto_batch_size(asked, t, vocab)
  batch_size = min(batch_size, n)

  graphdef, state = nnx.split(model)
  state = sharding.place(state, mesh, lambda path, leaf: sharding.weight_spec(
      path, leaf, mesh, spec.formats))
  # Pad the windows to whole batches (padding carries weight 0), so every call has one shape.
  n_pad = -(-n // batch_size) * batch_size
  pad = lambda a: np.concatenate([a, np.zeros((n_pad - n,) + a.shape[1:], a.dtype)])
  inputs, targets, weights = pad(np.asarray(inputs)), pad(targets), pad(weights)
  replicated = lambda tree: sharding.place(tree, mesh, lambda path, leaf: P())
  batches = [replicated(tuple(a[i:i + batch_size] for a in (inputs, targets, weights)))
             for i in range(0, n_pad, batch_size)]

  key_data = None if key is None else _config_key_data(key, precisions)
  totals = np.zeros((n_configs, n_pad), np.float64)
  bar = tqdm.tqdm(total=-(-n_configs // config_batch) * len(batches), desc=progress,
                  unit="batch", disable=progress is None)
  for c0 in range(0, n_configs, config_batch):
    idx = np.arange(c0, min(c0 + config_batch, n_configs))
    # Pad with copies of the last configuration (dropped below).
    padded = np.concatenate([idx, np.full(config_batch - len(idx), idx[-1])])
    by_config = lambda a: sharding.place(a, mesh, lambda path, leaf: P("config"))
    chunk = by_config(precisions[padded])
    keys = None if key_data is None else by_config(key_data[padded])
    sums = []
    for b, (x, y, w) in enumerate(batches):
      sums.append(np.asarray(_nll_sums(graphdef, state, x, y, w, chunk, start, keys, b, spec=spec,
                                       mesh=mesh), np.float64))
      bar.update()
    sums = np.concatenate(sums, axis=1)
    totals[idx] = sums[:len(idx)]
    if on_batch is not None:
      on_batch(idx, totals[idx, :n])
  bar.close()
  return totals[:, :n], weights[:n].sum(axis=1, dtype=np.float64)


def perplexity(model, windows, precisions, spec: ProductSpec = ProductSpec(), *,
               score_from: int = 0, batch_size: int | None = None, config_batch: int | None = None,
               key=None, mesh="auto") -> np.ndarray:
  """Token-weighted perplexity of `model` on `windows` int [N, T] for every configuration of
  `precisions` ([C, 4] or [C, n_layers, 4]): float64 [C]."""
  windows = np.asarray(windows)
  weights = target_weights(len(windows), windows.shape[-1], score_from) if windows.ndim == 2 else None
  sums, n_tokens = nll_sums(model, windows, precisions, spec, weights=weights, batch_size=batch_size,
                            config_batch=config_batch, key=key, mesh=mesh)
  return np.exp(sums / n_tokens)
