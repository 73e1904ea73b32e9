"""The numbers of a result row: a perplexity (null where it is not finite), the per-window NLL
sums its intervals are computed from, and the paired-bootstrap interval of its increase over the
FP-activation baseline.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from anda_jax.evaluation import intervals


def perplexity_fields(nll: float) -> dict:
  """A row's ppl, nll and finite from a mean NLL: a perplexity that is NaN or too large for a
  float (exp overflows) is recorded as null with finite False, never as NaN or Infinity (which
  JSON does not have) and never as an OverflowError that loses the batch."""
  nll = float(nll)
  if not math.isfinite(nll):
    return dict(ppl=None, nll=None, finite=False)
  try:
    return dict(ppl=math.exp(nll), nll=nll, finite=True)
  except OverflowError:
    return dict(ppl=None, nll=nll, finite=False)


def finite_or_none(value) -> float | None:
  """A recorded perplexity as a float, None when it is not finite (null, NaN, Infinity)."""
  if value is None or not math.isfinite(float(value)):
    return None
  return float(value)


def nonfinite_text(row: dict) -> str:
  """How a row's non-finite perplexity reads in tables and CSV: "inf" (too large for a float)
  or "nan". Rows of older runs hold NaN or Infinity themselves."""
  value, nll = row.get("ppl"), row.get("nll")
  if isinstance(value, float) and not math.isfinite(value):
    return "nan" if math.isnan(value) else "inf"
  return "inf" if isinstance(nll, (int, float)) and math.isfinite(nll) else "nan"


def reported(row: dict) -> dict:
  """A results row as a report reads it: ppl a float, or None with `nonfinite` saying how it
  reads ("inf" or "nan")."""
  ppl = finite_or_none(row["ppl"])
  return dict(row, ppl=ppl, nonfinite=None if ppl is not None else nonfinite_text(row))


# How a report states its intervals, once (README: "Confidence intervals").
INTERVAL_METHOD = (f"{intervals.LEVEL:.0%} paired-bootstrap interval over the windows "
                   f"({intervals.N_BOOTSTRAP} resamples, seed {intervals.SEED})")


def window_fields(window_sums, window_tokens) -> dict:
  """A row's per-window NLL sums and scored tokens, kept so that the paired interval against any
  row on the same windows can be computed later without evaluating again (a sum that is not
  finite is null: JSON has no NaN)."""
  return dict(window_nll=[float(s) if math.isfinite(s) else None for s in np.asarray(window_sums, float)],
              window_tokens=[float(t) for t in window_tokens])


def increase_interval(row: dict, base: dict | None):
  """The interval of `row`'s perplexity increase over `base` (anda_jax.evaluation.intervals.Interval,
  fractions), paired over their windows; None when it cannot be had: either row lacks the
  per-window sums (rows of older runs), they are not on the same windows, or there is only one
  window (a bootstrap over one window has no spread to show)."""
  if base is None:
    return None
  a, b = row.get("window_nll"), base.get("window_nll")
  tokens = row.get("window_tokens")
  if (not a or not b or tokens is None or tokens != base.get("window_tokens")
      or not len(a) == len(b) == len(tokens) or len(a) < 2):
    return None
  as_array = lambda sums: np.array([math.nan if v is None else v for v in sums], np.float64)
  return intervals.relative_increase(as_array(a), as_array(b), tokens)


INTERVAL_COLUMNS = ["rel_increase_low", "rel_increase_high"]


def interval_columns(interval) -> dict:
  """A report's CSV columns of an increase's interval (empty without one)."""
  return dict(zip(INTERVAL_COLUMNS, ("", "") if interval is None else (interval.low, interval.high)))


def interval_record(iv: intervals.Interval | None) -> dict | None:
  """An interval as JSON (a bound that is not finite as None: JSON has no NaN); None stays None."""
  if iv is None:
    return None
  return {k: v if math.isfinite(v) else None for k, v in dataclasses.asdict(iv).items()}


def _amount(x: float, factor: bool, digits: int) -> str:
  if factor:
    f = 1 + x
    return f"x{f:.{2 if f < 10 else 1 if f < 100 else 0}f}"
  return f"{100 * x:+.{digits}f}"


def increase_text(estimate: float | None, low: float | None = None, high: float | None = None,
                  digits: int = 2) -> str:
  """A relative increase as every report shows it: "+1.23% [+0.80, +1.70]" (the interval in
  percentage points, `digits` decimals), "x7.42 [x6.90, x8.01]" once the perplexity has doubled;
  the estimate alone without finite bounds; "not finite"."""
  if estimate is None or not math.isfinite(estimate):
    return "not finite"
  factor = estimate >= 1
  text = _amount(estimate, factor, digits) + ("" if factor else "%")
  if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
    text += f" [{_amount(low, factor, digits)}, {_amount(high, factor, digits)}]"
  return text
