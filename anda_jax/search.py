"""Adaptive precision search: the cheapest precision configuration within a tolerance.

The search is greedy and written against an evaluation callable

    evaluate(precisions: np.ndarray int32 [C, *config_shape]) -> np.ndarray [C] perplexities

so it can be tested with synthetic functions; the real one is
`anda_jax.evaluate.perplexity(model, windows, precisions, fmt, batch_size)` on the
calibration windows. `evaluate` is always called with the same C (`batch_size`; short
batches are padded with copies of their first row), so a jitted evaluator compiles once.

Algorithm (per tolerance τ):
  1. start from every entry at a high M (`start`);
  2. each round, build every candidate that lowers one entry (a module type, or a
     (layer, type) pair with per-layer granularity) by one bit, down to `min_m`, and
     evaluate the ones not yet known in one call;
  3. among candidates with loss = ppl / ppl_fp - 1 <= τ, keep the one with the best cost
     saving per unit of added loss (saving = MACs of the lowered entry, the BOPs saved
     / w_bits; a candidate that adds no loss beats every one that does); ties go to the
     lower loss, then to the first entry in (layer, type) order, so the search is
     deterministic;
  4. stop when no candidate fits.
Several tolerances share one cache of evaluated configurations (the tightest runs first,
the looser ones then replay its early rounds from the cache). ppl_fp is evaluated with
the all-float configuration (M = 0 everywhere) in the same calls.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable, Sequence

from absl import logging
import numpy as np
import tqdm

Evaluate = Callable[[np.ndarray], np.ndarray]
Key = tuple  # (shape, values) of a configuration; hashable


def config_key(config: np.ndarray) -> Key:
  config = np.asarray(config)
  return (config.shape, tuple(int(v) for v in config.ravel()))


def key_config(key: Key) -> np.ndarray:
  shape, values = key
  return np.asarray(values, np.int32).reshape(shape)


class CachedEvaluator:
  """`evaluate` behind a cache, called only on fixed-size, padded batches.

  cache: dict config_key -> perplexity, shared between searches (and prefilled from a
  results file to resume). on_result(config, perplexity) is called once for each newly
  evaluated configuration, in order, as soon as its batch returns.
  """

  def __init__(self, evaluate: Evaluate, batch_size: int, cache: dict | None = None,
               on_result: Callable[[np.ndarray, float], None] | None = None):
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size}: must be >= 1")
    self.evaluate, self.batch_size = evaluate, batch_size
    self.cache = {} if cache is None else cache
    self.on_result = on_result
    self.calls = 0  # calls of `evaluate`
    self.evaluated = 0  # configurations evaluated (padding excluded)

  def __call__(self, configs: Iterable[np.ndarray]) -> np.ndarray:
    configs = [np.asarray(c, np.int32) for c in configs]
    todo = list(dict.fromkeys(config_key(c) for c in configs if config_key(c) not in self.cache))
    for i in range(0, len(todo), self.batch_size):
      chunk = [key_config(k) for k in todo[i:i + self.batch_size]]
      n = len(chunk)
      batch = np.stack(chunk + [chunk[0]] * (self.batch_size - n))
      ppl = np.asarray(self.evaluate(batch), np.float64)
      if ppl.shape != (self.batch_size,):
        raise ValueError(f"evaluate returned shape {ppl.shape}: must be ({self.batch_size},)")
      self.calls += 1
      self.evaluated += n
      for config, value in zip(chunk, ppl[:n]):
        self.cache[config_key(config)] = float(value)
        if self.on_result is not None:
          self.on_result(config, float(value))
    return np.array([self.cache[config_key(c)] for c in configs])


@dataclasses.dataclass(frozen=True)
class SearchResult:
  """The configuration a search chose for one tolerance, and how it got there."""
  tolerance: float
  precision: np.ndarray        # int32, shape of `start`
  perplexity: float            # on the evaluation (calibration) windows
  fp_perplexity: float         # all-float configuration, same windows
  cost: float                  # Σ MACs · (M + 1): BOPs / w_bits
  path: tuple[np.ndarray, ...]  # accepted configurations, start first
  rounds: int

  @property
  def loss(self) -> float:
    return self.perplexity / self.fp_perplexity - 1.0

  @property
  def within_tolerance(self) -> bool:
    return self.loss <= self.tolerance


def candidates(config: np.ndarray, min_m: int = 1) -> list[np.ndarray]:
  """Every configuration that lowers one entry by one bit, in (layer, type) order.

  Entries at min_m, and float entries (M = 0), are left alone.
  """
  out = []
  for i in np.ndindex(config.shape):
    if config[i] > min_m:
      c = config.copy()
      c[i] -= 1
      out.append(c)
  return out


def config_cost(config: np.ndarray, macs: np.ndarray) -> float:
  """Σ MACs · (M + 1): BOPs / w_bits (spec §6) for a config of macs' shape."""
  return float((np.asarray(macs, np.float64) * (np.asarray(config) + 1)).sum())


def _validate(start, macs, tolerances, min_m):
  start = np.asarray(start)
  if start.dtype.kind not in "iu" or start.ndim not in (1, 2) or start.shape[-1] != 4:
    raise ValueError(f"start={start.tolist()}: must be an integer array [4] or [n_layers, 4]")
  if start.min() < min_m or start.max() > 24:
    raise ValueError(f"start={start.tolist()}: every entry must be in min_m={min_m}..24")
  if np.shape(macs) != start.shape:
    raise ValueError(f"macs shape {np.shape(macs)}: must equal the start shape {start.shape}")
  if not 1 <= min_m <= 24:
    raise ValueError(f"min_m={min_m}: must be in 1..24")
  if not tolerances:
    raise ValueError("tolerances=(): give at least one tolerance")
  for t in tolerances:
    if not (t >= 0 and math.isfinite(t)):
      raise ValueError(f"tolerance={t}: must be a finite number >= 0")
  return start.astype(np.int32)


def search(evaluate: Evaluate | CachedEvaluator, macs: np.ndarray, start: np.ndarray,
           tolerances: Sequence[float] = (0.001, 0.01), *, min_m: int = 1,
           batch_size: int | None = None, progress: bool = True) -> dict[float, SearchResult]:
  """Greedy precision search for each tolerance (see the module docstring).

  evaluate: a callable [C, *start.shape] -> [C] perplexities, or a CachedEvaluator
    (to share its cache and results callback across calls and runs).
  macs: MACs per token for each entry, start's shape ([4]: summed over layers).
  start: int [4] (per type) or [n_layers, 4] (per layer and type), every entry >= min_m.
  batch_size: configurations per `evaluate` call; default the number of entries, so a
    round is exactly one call. Ignored when a CachedEvaluator is given.
  progress: show a tqdm bar of the rounds of each tolerance.
  Returns {tolerance: SearchResult}. The result is within tolerance on the evaluated
  windows, except when `start` is over it and no one-bit step fits: then it is `start`,
  with within_tolerance False (start higher).
  """
  start = _validate(start, macs, tolerances, min_m)
  if not isinstance(evaluate, CachedEvaluator):
    evaluate = CachedEvaluator(evaluate, batch_size or start.size)
  fp, start_ppl = evaluate([np.zeros_like(start), start])
  results = {}
  for tol in sorted(set(float(t) for t in tolerances)):
    current, ppl, path, rounds = start, float(start_ppl), [start], 0
    bar = tqdm.tqdm(desc=f"search, tolerance {tol:g}", unit="round", disable=not progress)
    if ppl / fp - 1 > tol:
      logging.warning("start %s is over tolerance %g (loss %.3g)", start.tolist(), tol,
                      ppl / fp - 1)
    while True:
      cands = candidates(current, min_m)
      if not cands:
        break
      rounds += 1
      ppls = evaluate(cands)
      base_loss, best, best_key = ppl / fp - 1, None, None
      for i, (c, p) in enumerate(zip(cands, ppls)):
        loss = p / fp - 1
        if not loss <= tol:  # also rejects NaN
          continue
        saving = config_cost(current, macs) - config_cost(c, macs)
        added = loss - base_loss
        key = (added <= 0, saving / added if added > 0 else saving, -loss, -i)
        if best_key is None or key > best_key:
          best, best_key = (c, float(p)), key
      if best is None:
        break
      current, ppl = best
      path.append(current)
      bar.update()
      bar.set_postfix(M=current.tolist() if current.ndim == 1 else float(current.mean()),
                      loss=f"{ppl / fp - 1:.2%}")
      logging.info("tolerance %g round %d: %s ppl %.4f (loss %.3g)", tol, rounds,
                   current.tolist(), ppl, ppl / fp - 1)
    bar.close()
    results[tol] = SearchResult(tol, current, ppl, float(fp), config_cost(current, macs),
                                tuple(path), rounds)
  return results
