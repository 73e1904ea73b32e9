"""WindowEvaluator: the per-window NLL sums of precision configurations on one split's windows,
in the form the precision search calls (anda_jax.precision_search.CachedEvaluator), with the
hidden states of a shared prefix computed once (prefix.Prefix)."""

from __future__ import annotations

import numpy as np

from anda_jax.evaluation import evaluate
from anda_jax.evaluation import prefix
from anda_jax.precision import config_key


class WindowEvaluator:
  """Per-window NLL sums of configurations on one split's windows: precision_search's evaluate.

  With reuse_prefix, a configuration that first differs from `base` at layer l > 0 runs from
  the hidden state entering layer l under `base` (prefix.Prefix; the states are kept while base
  stays the same): layers l..L-1 and the head only. Configurations are sorted by that layer and
  run `config_batch` at a time (a fixed shape: one compilation per input kind), each batch from
  its first configuration's layer. Not with stochastic rounding (see prefix.py): then every
  configuration runs from the embedding. Counts layer passes
  (configuration x window x layer, the prefix's own included) and what they would have been
  without the reuse."""

  def __init__(self, model, windows: np.ndarray, spec, *, score_from: int, batch_size: int,
               config_batch: int, key=None, mesh="auto", reuse_prefix: bool = True):
    self.model, self.windows, self.spec = model, np.asarray(windows, np.int32), spec
    self.weights = evaluate.target_weights(len(windows), windows.shape[1], score_from)
    self.window_tokens = self.weights.sum(axis=1, dtype=np.float64)
    self.batch_size = batch_size
    self.kw = dict(batch_size=batch_size, config_batch=config_batch, key=key, mesh=mesh)
    self.reuse = reuse_prefix and not spec.stochastic
    self.layer_passes = self.layer_passes_without_reuse = 0
    self._prefixes = {}  # base key -> {(first window, stop): (Prefix, {layer: states})}

  def _hidden(self, base, windows: slice, layer: int) -> np.ndarray:
    key = config_key(base)
    if key not in self._prefixes:  # a new round: the states of the last one are of no more use
      self._prefixes = {key: {}}
    # Per slice of windows (racing's two): the Prefix and the states it has passed through, kept
    # because a bounded round visits the layers once per module type (n_layers x windows x T x
    # d_model floats at most: 0.3 GB for SmolLM2 on 16 x 256 tokens).
    p, states = self._prefixes[key].get((windows.start, windows.stop), (None, {}))
    if layer not in states:
      if p is None or p.layer > layer:
        # As many copies as a configuration batch: bit-identical to a forward from the tokens.
        p = prefix.Prefix(self.model, self.windows[windows], self.batch_size, base, self.spec,
                          copies=self.kw["config_batch"])
      self.layer_passes += (layer - p.layer) * len(p.h) * p.copies
      states[layer] = p.advance_to(layer)
      self._prefixes[key][(windows.start, windows.stop)] = (p, states)
    return states[layer]

  def __call__(self, configs, windows: slice, base=None) -> np.ndarray:
    n_layers = self.model.config.n_layers
    configs = evaluate.check_precisions(configs, n_layers)
    tokens, weights = self.windows[windows], self.weights[windows]
    first = (prefix.first_difference(configs, base) if self.reuse and base is not None
             else np.zeros(len(configs), int))
    out = np.empty((len(configs), len(tokens)))
    # By first different layer, a configuration batch at a time, each batch from its first
    # layer: one layer's candidates together, or (a bounded round) one type's of nearby layers.
    order, step = np.argsort(first, kind="stable"), self.kw["config_batch"]
    for idx in (order[i:i + step] for i in range(0, len(order), step)):
      layer = int(first[idx].min())
      if layer == 0:
        out[idx] = evaluate.window_nll_sums(self.model, tokens, configs[idx], self.spec,
                                            weights=weights, **self.kw)[0]
      else:
        out[idx] = evaluate.window_nll_sums(
            self.model, self._hidden(np.asarray(base), windows, layer), configs[idx], self.spec,
            targets=tokens[:, 1:], weights=weights, start=layer, **self.kw)[0]
      self.layer_passes += len(idx) * len(tokens) * (n_layers - layer)
    self.layer_passes_without_reuse += len(configs) * len(tokens) * n_layers
    return out
