"""Confidence intervals for perplexity differences, from per-window NLL sums.

Two configurations evaluated on the same windows are paired: window i's loss under A and
under B share the text, so most of the text-to-text variation cancels in their difference.
The interval of the relative perplexity increase ppl_A / ppl_B - 1 = exp((S_A - S_B) / n) - 1
(S: NLL summed over the scored tokens, n their number) comes from a paired bootstrap over
windows: resample the windows with replacement, recompute the ratio, take percentiles. The
seed is fixed, so an interval is reproducible from the rows that hold the per-window sums.
"""

from __future__ import annotations

import dataclasses

import numpy as np

LEVEL = 0.95
N_BOOTSTRAP = 2000
SEED = 0


@dataclasses.dataclass(frozen=True)
class Interval:
  """A relative perplexity increase and its confidence interval (fractions: 0.01 = +1%)."""

  estimate: float
  low: float
  high: float

  @property
  def half_width(self) -> float:
    return (self.high - self.low) / 2

  def __str__(self) -> str:
    return f"{self.estimate:+.2%} [{self.low:+.2%}, {self.high:+.2%}]"


def _bootstrap_indices(n_windows: int, n_bootstrap: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, n_windows, (n_bootstrap, n_windows))


def relative_increase(window_nll, baseline_window_nll, window_tokens, *, level: float = LEVEL,
                      n_bootstrap: int = N_BOOTSTRAP, seed: int = SEED) -> Interval:
  """ppl / ppl_baseline - 1 with its paired-bootstrap interval at `level`, from per-window NLL
  sums [N] of a configuration and of its baseline on the same N windows, and the scored tokens
  per window [N]. Non-finite sums give a non-finite estimate and interval."""
  a, b, tokens = (np.asarray(v, np.float64) for v in (window_nll, baseline_window_nll, window_tokens))
  if not a.shape == b.shape == tokens.shape or a.ndim != 1 or not len(a):
    raise ValueError(f"per-window sums have shapes {a.shape}, {b.shape} and tokens {tokens.shape}: "
                     "must be equal, one-dimensional and non-empty (the same windows)")
  if not 0 < level < 1:
    raise ValueError(f"level={level} is invalid: must be in (0, 1)")
  diff = a - b
  estimate = float(np.expm1(diff.sum() / tokens.sum()))
  if not np.all(np.isfinite(diff)):
    return Interval(estimate, float("nan"), float("nan"))
  idx = _bootstrap_indices(len(a), n_bootstrap, seed)
  resampled = np.expm1(diff[idx].sum(axis=1) / tokens[idx].sum(axis=1))
  low, high = np.quantile(resampled, [(1 - level) / 2, (1 + level) / 2])
  return Interval(estimate, float(low), float(high))
