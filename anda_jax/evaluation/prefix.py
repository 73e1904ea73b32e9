"""Hidden states entering a layer under one precision configuration, advanced layer by layer.

Two configurations that agree on layers 0..l-1 share the hidden state entering layer l. The
sensitivity study (every configuration float before its one quantized layer) and the per-layer
search (every candidate equal to the current configuration before its one lowered layer) run a
configuration from that state, `evaluate.window_nll_sums(model, h, ..., start=l)`: layers
l..L-1 and the head only. Over l = 0..L-1 that is about half the layers' work; the LM head runs
for every configuration (on SmolLM2 it costs as much as 7 layers), so a whole round costs about
60% of forwards from the embedding.

    prefix = Prefix(model, windows, batch_size)                # the float model
    prefix = Prefix(model, windows, batch_size, config, spec)  # under a configuration
    h = prefix.advance_to(l)                                   # [N, T, D] entering layer l

With `copies=C` the layers run under vmap over C copies of the configuration, as
`evaluate.window_nll_sums(..., config_batch=C)` runs its configurations, with the same window
batches: the states are then bit-identical to those inside that evaluation (on one device; a
configuration batch sharded over several devices has other shapes per device), so a
configuration evaluated from them gets the very NLL sums it gets from the embedding. With
copies=1 (1/C of the work) they can differ in the last bits: XLA may sum an unbatched product
in another order (seen on a tiny model; on SmolLM2's shapes they were identical). Stochastic
rounding is not supported: its random numbers are drawn per configuration
(evaluate._config_key_data), so a prefix computed under one configuration does not hold the
draws another would make.
"""

from __future__ import annotations

import functools

import jax
from flax import nnx
import numpy as np

from anda_jax.matmul import ProductSpec
from anda_jax import precision as anda_precision


@functools.partial(jax.jit, static_argnames="graphdef")
def _embed(graphdef, state, tokens):
  return nnx.merge(graphdef, state).embed(tokens)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "copies"))
def _layers(graphdef, state, h, precision, start, stop, *, spec, copies):
  # start, stop and the precision are traced: one compilation serves every step and configuration.
  # precision: [n_layers, 4], or [copies, n_layers, 4] given as an argument (copies made inside
  # the program could be simplified back into one).
  run = lambda p: nnx.merge(graphdef, state).run_layers(h, p, spec, start=start, stop=stop)
  return run(precision) if copies == 1 else jax.vmap(run)(precision)[0]


class Prefix:
  """Hidden states of `model` on `windows` int [N, T] entering layer l, for l = 0, 1, ... in
  turn, under `precision` ([4] or [n_layers, 4]; None: every activation float) with `spec`.
  Windows go through `batch_size` at a time; copies: see the module docstring."""

  def __init__(self, model, windows: np.ndarray, batch_size: int, precision=None,
               spec: ProductSpec = ProductSpec(), copies: int = 1):
    n_layers = model.config.n_layers
    if precision is None:
      precision = np.full(len(anda_precision.MODULE_TYPES), anda_precision.FLOAT, np.int32)
    if spec.stochastic:
      raise ValueError("spec.fmt.rounding='stochastic' is invalid for a Prefix: its draws are made "
                       "per configuration, so a prefix cannot be shared between configurations")
    self.precision = np.asarray(anda_precision.layer_precision(precision, n_layers))
    if copies > 1:
      self.precision = np.stack([self.precision] * copies)
    self.spec, self.copies, self.layer, self.bs = spec, copies, 0, batch_size
    self.graphdef, self.state = nnx.split(model)
    self.h = np.concatenate([np.asarray(_embed(self.graphdef, self.state, windows[i:i + batch_size]))
                             for i in range(0, len(windows), batch_size)])

  def advance_to(self, layer: int) -> np.ndarray:
    """The hidden states [N, T, D] entering `layer`; layers are visited in increasing order."""
    if layer < self.layer:
      raise ValueError(f"layers must be visited in increasing order: {layer} after {self.layer}")
    if layer > self.layer:
      self.h = np.concatenate([
          np.asarray(_layers(self.graphdef, self.state, self.h[i:i + self.bs], self.precision,
                             self.layer, layer, spec=self.spec, copies=self.copies))
          for i in range(0, len(self.h), self.bs)])
      self.layer = layer
    return self.h


def first_difference(configs, base) -> np.ndarray:
  """int [C]: the first layer at which each of `configs` ([C, n_layers, 4]) differs from `base`
  ([4] or [n_layers, 4]); n_layers where it does not differ. Layers before it can be shared."""
  configs = np.asarray(configs)
  differs = np.any(configs != np.broadcast_to(base, configs.shape[1:]), axis=-1)  # [C, n_layers]
  return np.where(differs.any(axis=1), differs.argmax(axis=1), configs.shape[1])
