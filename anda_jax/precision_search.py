"""Adaptive precision search: the cheapest precision configuration within a tolerance.

The search is written against an evaluation callable that returns per-window NLL sums,

    evaluate(configs: int32 [C, *config_shape], windows: slice, base) -> float64 [C, n]

(n: the windows of the slice), so it can be tested with synthetic functions; the real one
(experiments/search.py) runs the model on the calibration windows. `base` is a hint: each
configuration differs from it in one entry (it is the current configuration of the round), so
an evaluator may run each from the hidden state `base` has entering that entry's layer
(anda_jax.evaluation.prefix) instead of from the embedding. CachedEvaluator keeps every configuration's
sums, so no window of a configuration is evaluated twice.

A loss is the relative perplexity increase over the all-float configuration (M = 0 everywhere)
on the same windows, with its paired-bootstrap interval (anda_jax.evaluation.intervals).

Algorithm (per tolerance τ):
  1. start from every entry at a high M (`start`);
  2. each round, build every candidate that lowers one entry (a module type, or a
     (layer, type) pair with per-layer granularity) by one bit, down to `min_m`. With a
     `FormatLadder` the entries' values name formats instead (a baselines.FormatChoice's, 0 =
     float) and a candidate moves one entry to the next lower level of storage bits: every
     format of that level is a candidate (MXINT8 and both MXFP8s share 8.25 bits);
  3. racing (`race_windows=k`): evaluate the candidates on the first k windows and drop those
     whose loss on all windows is over τ even at the low end of a one-sided prediction bound
     (`race_level`) from their per-window differences against the current configuration on
     those k windows (paired: the windows' own variation cancels); evaluate the survivors on
     the other windows. The decision uses only the first k windows, also when more are known,
     so a resumed run decides as an uninterrupted one;
  4. a candidate fits if its loss is within τ: with rule "upper" the upper end of its interval,
     with rule "point" its estimate (the paper's rule);
  5. among the fitting candidates keep the one with the best cost saving per unit of added loss
     (estimates; saving = MACs of the lowered entry, the BOPs saved / w_bits; with a ladder of
     formats, MACs x the storage bits saved; one that adds no loss beats every one that does);
     ties go to the lower loss, then to the first entry in (layer, type) order, then to the
     first value (format) in the ladder's order, so the search is deterministic;
  6. with `max_accept` = k > 1, the top k fitting candidates in that order, the best of each
     entry only, are accepted together (so their configuration lowers k entries) if that
     configuration
     fits too, else the top k // 2, and so on down to the best alone: a round removes up to k
     bits, for a per-layer search whose one-bit rounds would be hundreds. k = 1 (the default)
     is the one-bit greedy; k > 1 approximates it (bits taken together interact);
  7. stop when no candidate fits (or after `max_rounds`).
With `bound` (branch and bound; on by default), a round evaluates its candidates by decreasing
saving and skips those that cannot make the top `max_accept` of step 5: a candidate's order key
is at most (adds no loss, its saving), so once `max_accept` evaluated fitting candidates add no
loss and save more than it does, it is not evaluated. The choice is the same as without the
bound (nothing the choice depends on is skipped), for less work when a high-saving step fits
for free: early in a per-layer search, a round evaluates one module type's 30 candidates, not
all 120.
Several tolerances share one cache (the tightest runs first, the looser ones replay its early
rounds from the cache).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Callable, Iterable, Sequence

from absl import logging
import numpy as np
import tqdm

from anda_jax.checks import check_int
from anda_jax.evaluation import intervals
from anda_jax.precision import config_key, key_config

Evaluate = Callable[[np.ndarray, slice, "np.ndarray | None"], np.ndarray]
RULES = ("upper", "point")


class CachedEvaluator:
  """`evaluate` behind a cache of per-window NLL sums.

  window_tokens: scored tokens per window [N] (the windows `evaluate` slices).
  batch_size: configurations per `evaluate` call, short batches padded with copies of their
    first row, so that a jitted evaluator compiles once; None: as many as asked for at once
    (the evaluator batches itself).
  cache: dict config_key -> float64 [k], the sums of windows 0..k-1 known so far; shared between
    searches (and prefilled from a results file to resume).
  on_result(config, sums [k]) is called whenever a configuration's known windows grow, with all
  of them, as soon as its batch returns.
  """

  def __init__(self, evaluate: Evaluate, window_tokens, batch_size: int | None = None,
               cache: dict | None = None,
               on_result: Callable[[np.ndarray, np.ndarray], None] | None = None):
    tokens = np.asarray(window_tokens, np.float64)
    if tokens.ndim != 1 or not len(tokens) or not np.all(tokens > 0):
      raise ValueError(f"window_tokens has shape {list(tokens.shape)}: must be scored tokens per "
                       "window, one-dimensional, non-empty and positive")
    if batch_size is not None and batch_size < 1:
      raise ValueError(f"batch_size={batch_size}: must be >= 1 or None")
    self.evaluate, self.window_tokens, self.batch_size = evaluate, tokens, batch_size
    self.n_windows = len(tokens)
    self.cache = {} if cache is None else cache
    self.on_result = on_result
    self.calls = 0  # calls of `evaluate`
    self.evaluated = 0  # configurations sent to `evaluate` (padding excluded)
    self.window_evaluations = 0  # (configuration, window) pairs evaluated (padding excluded)

  def known(self, config) -> int:
    """How many windows (0..k-1) of `config` are known."""
    return len(self.cache.get(config_key(config), ()))

  def __call__(self, configs: Iterable[np.ndarray], stop: int | None = None,
               base: np.ndarray | None = None) -> np.ndarray:
    """Per-window NLL sums float64 [C, stop] of windows 0..stop-1 (default: all)."""
    stop = self.n_windows if stop is None else stop
    if not 1 <= stop <= self.n_windows:
      raise ValueError(f"stop={stop}: must be in 1..{self.n_windows}")
    configs = [np.asarray(c, np.int32) for c in configs]
    todo = {}  # first unknown window -> keys, so each call evaluates one slice
    for c in configs:
      key = config_key(c)
      if len(self.cache.get(key, ())) < stop:
        todo.setdefault(len(self.cache.get(key, ())), {})[key] = None
    for first, keys in sorted(todo.items()):
      keys = list(keys)
      step = self.batch_size or len(keys)
      for i in range(0, len(keys), step):
        self._evaluate([key_config(k) for k in keys[i:i + step]], first, stop, base)
    return np.stack([self.cache[config_key(c)][:stop] for c in configs])

  def _evaluate(self, chunk, first, stop, base) -> None:
    n = len(chunk)
    batch = np.stack(chunk + [chunk[0]] * ((self.batch_size or n) - n))
    sums = np.asarray(self.evaluate(batch, slice(first, stop), base), np.float64)
    if sums.shape != (len(batch), stop - first):
      raise ValueError(f"evaluate returned shape {sums.shape}: must be "
                       f"({len(batch)}, {stop - first})")
    self.calls += 1
    self.evaluated += n
    self.window_evaluations += n * (stop - first)
    for config, row in zip(chunk, sums[:n]):
      key = config_key(config)
      self.cache[key] = np.concatenate([self.cache.get(key, np.zeros(0))[:first], row])
      if self.on_result is not None:
        self.on_result(config, self.cache[key])


def relative_loss(sums, fp_sums, window_tokens) -> float:
  """ppl / ppl_fp - 1 from per-window NLL sums on the same windows (inf or nan if not finite)."""
  with np.errstate(invalid="ignore", over="ignore"):
    return float(np.expm1((np.asarray(sums) - np.asarray(fp_sums)).sum() / np.sum(window_tokens)))


def loss_interval(sums, fp_sums, window_tokens) -> intervals.Interval:
  """The loss against FP with its paired-bootstrap interval (anda_jax.evaluation.intervals)."""
  return intervals.relative_increase(sums, fp_sums, window_tokens)


def fits(sums, fp_sums, window_tokens, tolerance: float, rule: str) -> bool:
  """Whether a configuration's loss is within `tolerance` under `rule` ("upper": the upper end
  of its interval, "point": its estimate). Not finite: never."""
  if rule == "point":
    return relative_loss(sums, fp_sums, window_tokens) <= tolerance  # False for NaN
  return loss_interval(sums, fp_sums, window_tokens).high <= tolerance


@functools.lru_cache(maxsize=None)
def _t_quantile(level: float, dof: int) -> float:
  from scipy import special  # pylint: disable=g-import-not-at-top  (jax depends on scipy)
  return float(special.stdtrit(dof, level))


def race_lower_bound(diff, n_windows: int, level: float) -> float:
  """A one-sided lower prediction bound at `level` for the sum over n_windows windows of
  per-window values whose first k are `diff`, the other n - k taken as drawn like them: the
  sum seen plus (n - k) times the low end for the mean of the unseen, mean - t s sqrt(1/k +
  1/(n - k)) (Student's t, k - 1 degrees of freedom). -inf when k < 2 (no spread to go by)."""
  diff = np.asarray(diff, np.float64)
  k, rest = len(diff), n_windows - len(diff)
  if rest <= 0:
    return float(diff.sum())
  if k < 2:
    return -math.inf
  spread = _t_quantile(level, k - 1) * diff.std(ddof=1) * math.sqrt(1 / k + 1 / rest)
  return float(diff.sum() + rest * (diff.mean() - spread))


def raced_out(first_sums, current_sums, fp_sums, window_tokens, tolerance: float,
              level: float) -> bool:
  """Whether a candidate known on its first k windows is over `tolerance` on all of them even at
  the low end of race_lower_bound, from its differences against the current configuration
  (all windows known) on those k windows. Not finite on them: over every tolerance."""
  first_sums = np.asarray(first_sums, np.float64)
  if not np.all(np.isfinite(first_sums)):
    return True
  k = len(first_sums)
  low = race_lower_bound(first_sums - current_sums[:k], len(current_sums), level)
  with np.errstate(invalid="ignore", over="ignore"):
    low_loss = np.expm1((np.sum(current_sums) - np.sum(fp_sums) + low) / np.sum(window_tokens))
  return bool(low_loss > tolerance)


@dataclasses.dataclass(frozen=True)
class SearchResult:
  """The configuration a search chose for one tolerance, and how it got there."""
  tolerance: float
  rule: str
  precision: np.ndarray        # int32, shape of `start`
  interval: intervals.Interval  # its loss against FP on the evaluation (calibration) windows
  perplexity: float            # on the evaluation windows
  fp_perplexity: float         # all-float configuration, same windows
  cost: float                  # Σ MACs · (M + 1): BOPs / w_bits (a FormatLadder: Σ MACs · bits)
  path: tuple[np.ndarray, ...]  # accepted configurations, start first
  rounds: int
  candidates: int              # candidates considered over all rounds
  dropped: int                 # of which racing dropped after the first slice
  skipped: int                 # of which the bound skipped (never evaluated)
  within_tolerance: bool       # under `rule` (False only when `start` is over it)

  @property
  def loss(self) -> float:
    return self.interval.estimate


def _groups(savings: Sequence[float], bound: bool, batch: int) -> list[list[int]]:
  """The candidates' indices in the groups a round evaluates them in: all at once without the
  bound; with it, by decreasing saving, a group per saving (one module type, per layer), merged
  with the next until it fills at least one evaluator batch (a smaller group would be padded)."""
  if not bound:
    return [list(range(len(savings)))]
  groups = []
  for _, group in itertools.groupby(sorted(range(len(savings)), key=lambda i: -savings[i]),
                                    key=lambda i: savings[i]):
    if groups and len(groups[-1]) < batch:
      groups[-1].extend(group)
    else:
      groups.append(list(group))
  return groups


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


class FormatLadder:
  """The values of entries that name formats, not mantissa lengths (a baselines.FormatChoice's:
  0 = float, i = its i-th format; docs/formats.md, section 10), ordered by storage bits.

  bits: float [*config_shape, n_values], the storage bits per activation element of each value
  at each entry (value 0: float's 16); they may differ between entries (a per-token scale's
  share depends on the type's K). From an entry's value, the candidates are every value at the
  next lower level of bits, in value order, and a step saves the entry's MACs times the bits it
  drops. Levels are bits rounded to 1e-9, so formulas that agree up to rounding share one."""

  def __init__(self, bits):
    bits = np.asarray(bits, np.float64)
    if (bits.ndim not in (2, 3) or bits.shape[-2] != 4 or bits.shape[-1] < 2
        or not np.all(np.isfinite(bits) & (bits > 0))):
      raise ValueError(f"bits has shape {list(bits.shape)}: must be positive storage bits "
                       "[4, n_values] or [n_layers, 4, n_values], n_values >= 2")
    self.bits = np.round(bits, 9)

  def steps(self, config: np.ndarray) -> list[tuple[np.ndarray, int, float]]:
    """(candidate, flat index of its entry, storage bits saved) of every step down one level,
    in (layer, type) order, then value order."""
    out = []
    for i in np.ndindex(config.shape):
      bits = self.bits[i]
      lower = bits[bits < bits[config[i]]]
      if lower.size:
        for value in np.flatnonzero(bits == lower.max()):
          c = config.copy()
          c[i] = value
          out.append((c, int(np.ravel_multi_index(i, config.shape)), bits[config[i]] - lower.max()))
    return out

  def entry_bits(self, config: np.ndarray) -> np.ndarray:
    """The storage bits of each entry's value, config's shape."""
    return np.take_along_axis(self.bits, np.asarray(config)[..., None], -1)[..., 0]

  def cost(self, config: np.ndarray, macs: np.ndarray) -> float:
    """Σ MACs · storage bits: what the steps' savings are taken from."""
    return float((np.asarray(macs, np.float64) * self.entry_bits(config)).sum())


def _steps(config: np.ndarray, min_m: int, ladder: FormatLadder | None) -> list[tuple]:
  """(candidate, flat index of its entry, bits saved) of a round: Anda's one-bit steps down to
  min_m, or the ladder's."""
  if ladder is not None:
    return ladder.steps(config)
  return [(c, int(np.flatnonzero(c != config)[0]), 1) for c in candidates(config, min_m)]


def config_cost(config: np.ndarray, macs: np.ndarray) -> float:
  """Σ MACs · (M + 1): BOPs / w_bits (docs/formats.md, section 9) for a config of macs' shape."""
  return float((np.asarray(macs, np.float64) * (np.asarray(config) + 1)).sum())


def _validate(start, macs, tolerances, min_m, rule, race_windows, race_level, max_rounds,
              max_accept, ladder):
  start = np.asarray(start)
  if start.dtype.kind not in "iu" or start.ndim not in (1, 2) or start.shape[-1] != 4:
    raise ValueError(f"start={start.tolist()}: must be an integer array [4] or [n_layers, 4]")
  if ladder is not None:
    if ladder.bits.shape[:-1] != start.shape:
      raise ValueError(f"ladder bits shape {ladder.bits.shape}: must be the start shape "
                       f"{start.shape} and the number of values")
    if start.min() < 0 or start.max() >= ladder.bits.shape[-1]:
      raise ValueError(f"start={start.tolist()}: every entry must be a value of the ladder, "
                       f"0..{ladder.bits.shape[-1] - 1}")
  elif start.min() < min_m or start.max() > 24:
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
  if rule not in RULES:
    raise ValueError(f"rule={rule!r}: must be one of {RULES}")
  if race_windows is not None and not (isinstance(race_windows, int) and race_windows >= 1):
    raise ValueError(f"race_windows={race_windows!r}: must be an integer >= 1 or None (no racing)")
  if not 0 < race_level < 1:
    raise ValueError(f"race_level={race_level}: must be in (0, 1)")
  if max_rounds is not None and not (isinstance(max_rounds, int) and max_rounds >= 0):
    raise ValueError(f"max_rounds={max_rounds!r}: must be an integer >= 0 or None")
  check_int("max_accept", max_accept, 1)
  return start.astype(np.int32)


def _fitting(evaluate: CachedEvaluator, cands, entries, savings, current, current_sums, base_loss,
             fp, tol, rule, race, race_level, bound, max_accept):
  """One round's fitting candidates (steps 3 to 5 of the module docstring): ({index in cands:
  (step 5's order key, the best first; per-window sums)}, how many racing dropped, how many the
  bound skipped). entries: the entry each candidate changes (several may share one)."""
  tokens = evaluate.window_tokens
  fitting, dropped, skipped = {}, 0, 0
  for g, group in enumerate(groups := _groups(savings, bound, evaluate.batch_size or 1)):
    # The best key of each entry that fits for free: only one candidate per entry is accepted.
    best = {}
    for i, (k, _) in fitting.items():
      if k[0] and k > best.get(entries[i], ()):
        best[entries[i]] = k
    free = sorted(best.values(), reverse=True)
    if len(free) >= max_accept and free[max_accept - 1][1] > savings[group[0]]:
      skipped += sum(map(len, groups[g:]))  # none of them can be among the accepted
      break
    if race:
      first = evaluate([cands[i] for i in group], race, base=current)
      survivors = [i for i, s in zip(group, first)
                   if not raced_out(s, current_sums, fp, tokens, tol, race_level)]
      dropped += len(group) - len(survivors)
      group = survivors
    for i, s in zip(group, evaluate([cands[i] for i in group], base=current) if group else []):
      if fits(s, fp, tokens, tol, rule):
        loss = relative_loss(s, fp, tokens)
        added = loss - base_loss
        fitting[i] = ((added <= 0, savings[i] / added if added > 0 else savings[i], -loss, -i), s)
  return fitting, dropped, skipped


def _accept(evaluate: CachedEvaluator, ranked, current, fp, tol, rule, max_accept):
  """(configuration, per-window sums) a round accepts (step 6): the top k fitting candidates
  together, each lowering its own entry, for k = max_accept, k // 2, ..., else the best one."""
  sizes, k = [], min(max_accept, len(ranked))
  while k > 1:
    sizes.append(k)
    k //= 2
  # As many joints per call as the evaluator batches, which would otherwise pad a lone joint
  # with copies.
  joints = [current - sum(current - c for _, c, _ in ranked[:k]) for k in sizes]  # one entry each
  step = evaluate.batch_size or len(joints) or 1
  for i in range(0, len(joints), step):
    chunk = joints[i:i + step]
    joint_fits = [(j, s) for j, s in zip(chunk, evaluate(chunk, base=current))
                  if fits(s, fp, evaluate.window_tokens, tol, rule)]
    if joint_fits:
      return joint_fits[0]
  return ranked[0][1:]


def search(evaluate: CachedEvaluator, macs: np.ndarray, start: np.ndarray,
           tolerances: Sequence[float] = (0.001, 0.01), *, min_m: int = 1, rule: str = "upper",
           race_windows: int | None = None, race_level: float = 0.99,
           max_rounds: int | None = None, max_accept: int = 1, bound: bool = True,
           ladder: FormatLadder | None = None, progress: bool = True) -> dict[float, SearchResult]:
  """Greedy precision search for each tolerance (see the module docstring).

  evaluate: a CachedEvaluator (its cache and results callback are shared across calls and runs).
  macs: MACs per token for each entry, start's shape ([4]: summed over layers).
  start: int [4] (per type) or [n_layers, 4] (per layer and type), every entry >= min_m (with a
    ladder: values of the ladder, e.g. 0, floating point, everywhere).
  rule: "upper" or "point" (step 4 of the module docstring).
  race_windows: the first slice of windows of racing (step 3); None, or as many as there are
    windows: no racing. race_level: the one-sided level of its prediction bound.
  max_rounds: stop each tolerance after this many rounds (None: when no candidate fits).
  max_accept: at most this many fitting candidates accepted together per round (step 6).
  bound: skip the candidates that cannot be among the accepted (see the module docstring).
  ladder: entries' values name formats, stepped down by storage bits (FormatLadder); None:
    they are Anda's mantissa lengths, stepped down by one bit to min_m (min_m is then unused).
  progress: show a tqdm bar of the rounds of each tolerance.
  Returns {tolerance: SearchResult}. The result is within tolerance on the evaluated windows,
  except when `start` is over it and no one-bit step fits: then it is `start`, with
  within_tolerance False (start higher).
  """
  start = _validate(start, macs, tolerances, min_m, rule, race_windows, race_level, max_rounds,
                    max_accept, ladder)
  tokens, n = evaluate.window_tokens, evaluate.n_windows
  race = race_windows if race_windows is not None and race_windows < n else None
  fp, start_sums = evaluate([np.zeros_like(start), start])
  perplexity = lambda sums: float(np.exp(np.sum(sums) / tokens.sum()))
  results = {}
  for tol in sorted(set(float(t) for t in tolerances)):
    current, current_sums, path, rounds, considered, dropped, skipped = (
        start, start_sums, [start], 0, 0, 0, 0)
    bar = tqdm.tqdm(desc=f"search, tolerance {tol:g}", unit="round", disable=not progress)
    if not fits(start_sums, fp, tokens, tol, rule):
      logging.warning("start %s is over tolerance %g (loss %s)", start.tolist(), tol,
                      loss_interval(start_sums, fp, tokens))
    while max_rounds is None or rounds < max_rounds:
      steps = _steps(current, min_m, ladder)
      if not steps:
        break
      cands, entries, _ = zip(*steps)
      rounds += 1
      considered += len(cands)
      base_loss = relative_loss(current_sums, fp, tokens)
      # MACs of the lowered entry times the bits saved: its cost saving (step 5), exact for
      # integer MACs and Anda's one bit.
      savings = [float(np.ravel(macs)[e]) * saved for _, e, saved in steps]
      fitting, n_dropped, n_skipped = _fitting(
          evaluate, cands, entries, savings, current, current_sums, base_loss, fp, tol, rule,
          race, race_level, bound, max_accept)
      dropped, skipped = dropped + n_dropped, skipped + n_skipped
      ranked, taken = [], set()  # the best candidate of each entry, best first
      for i in sorted(fitting, key=lambda i: fitting[i][0], reverse=True):
        if entries[i] not in taken:
          taken.add(entries[i])
          ranked.append((fitting[i][0], cands[i], fitting[i][1]))
      if not ranked:
        break
      current, current_sums = _accept(evaluate, ranked, current, fp, tol, rule, max_accept)
      path.append(current)
      bar.update()
      loss = relative_loss(current_sums, fp, tokens)
      bar.set_postfix(M=current.tolist() if current.ndim == 1 else float(current.mean()),
                      loss=f"{loss:.2%}")
      logging.info("tolerance %g round %d: %s loss %.3g", tol, rounds, current.tolist(), loss)
    bar.close()
    cost = config_cost(current, macs) if ladder is None else ladder.cost(current, macs)
    results[tol] = SearchResult(
        tol, rule, current, loss_interval(current_sums, fp, tokens), perplexity(current_sums),
        perplexity(fp), cost, tuple(path), rounds, considered, dropped, skipped,
        fits(current_sums, fp, tokens, tol, rule))
  return results
