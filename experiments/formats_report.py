"""The report of a sweep with other formats (configs/formats.py): Anda against OCP MX, NVFP4 and
the per-token formats at equal storage bits, drawn from the sweep's rows (experiments/sweep.py
calls `write` from its report).

Writes into the run folder:
  formats.md   every format at all four sites by storage bits per activation element, with
               perplexity and its increase over FP [paired interval]; each other format at one
               site at a time; and, for each other format, the most accurate Anda within its
               bits (with the paired interval of their perplexity ratio) and the cheapest Anda
               at least as accurate
  pareto.png   perplexity increase over FP (symlog) vs storage bits: one Anda curve per G, the
               other formats as labelled points, error bars from the paired intervals
"""

from __future__ import annotations

import math
import pathlib

import numpy as np

from anda_jax.precision import MODULE_TYPES
from experiments.harness import perplexity
from experiments.harness import reports

ANDA = "anda"  # the `format` of Anda rows (rows of runs before the formats have none)


def format_of(row: dict) -> str:
  return row.get("format", ANDA)


def label(row: dict) -> str:
  """"anda G=64 M=7" or the other format's name."""
  if format_of(row) == ANDA:
    return f"anda G={row['group_size']} M={row['mantissa_bits']}"
  return format_of(row)


def _loss(row: dict | None, base_ppl: float | None) -> str:
  """The row's increase over base_ppl as perplexity.increase_text shows it; "not finite" or "–"."""
  if row is None:
    return "–"
  if row["ppl"] is None:
    return f"not finite ({row['nonfinite']})"
  if base_ppl is None:
    return "–"
  iv = row.get("interval")
  return perplexity.increase_text(row["ppl"] / base_ppl - 1,
                                  *((iv.low, iv.high) if iv is not None else ()))


def _ppl(row: dict) -> str:
  return "not finite" if row["ppl"] is None else f"{row['ppl']:.3f}"


def _finite(rows):
  return [r for r in rows if r["ppl"] is not None]


def comparison(anda: list[dict], other: dict) -> dict:
  """For one other format's row at all sites: the Anda row (all sites) with the lowest
  perplexity within its storage bits (`best`), the paired interval of best's perplexity over
  the format's (`versus`, None without per-window sums), and the Anda row with the fewest bits
  whose perplexity is at most the format's (`cheapest`); None where there is none."""
  anda = _finite(anda)
  within = [r for r in anda if r["storage_bits"] <= other["storage_bits"] + 1e-9]
  best = min(within, key=lambda r: r["ppl"], default=None)
  versus = None if best is None or other["ppl"] is None else perplexity.increase_interval(best, other)
  as_good = [r for r in anda if other["ppl"] is None or r["ppl"] <= other["ppl"]]
  cheapest = min(as_good, key=lambda r: (r["storage_bits"], r["ppl"]), default=None)
  return dict(best=best, versus=versus, cheapest=cheapest)


def _versus(c: dict, other: dict) -> str:
  """Anda's perplexity over the format's, with its interval, and who is ahead."""
  best, iv = c["best"], c["versus"]
  if best is None or other["ppl"] is None:
    return "–"
  text = f"{100 * (best['ppl'] / other['ppl'] - 1):+.2f}%"
  if iv is None:
    return text
  verdict = ("identical on these windows" if iv.low == iv.high == 0 else "Anda ahead"
             if iv.high < 0 else f"{format_of(other)} ahead" if iv.low > 0 else "not resolved")
  return f"{text} [{100 * iv.low:+.2f}, {100 * iv.high:+.2f}]: {verdict}"


def table(run_name: str, base: dict | None, rows: list[dict]) -> str:
  """formats.md from the baseline row and the other rows (each `reported`, with its `interval`
  against the baseline)."""
  base_ppl = None if base is None else base["ppl"]
  at_all = [r for r in rows if r["type"] == "all"]
  anda = [r for r in at_all if format_of(r) == ANDA]
  others = [r for r in at_all if format_of(r) != ANDA]
  n = None if base is None else len(base.get("window_nll") or [])
  out = [f"# Anda and other activation formats: {run_name}", "",
         "FP-activation baseline perplexity: " + ("not measured" if base is None else _ppl(base))
         + (f" on {n} windows ({base['tokens']:.0f} scored tokens)" if n else "") + ". "
         f"Increase: ppl / ppl_FP - 1 on the same windows, in brackets its {perplexity.INTERVAL_METHOD} "
         "(in percentage points; as factors once the perplexity has doubled). Storage bits per "
         "activation element: elements plus the shares of their scales (MX: 8 bits per block; "
         "NVFP4: 8 per 16 and a float32 per token; per-token: a float32 per token; Anda: "
         "1 + M + 8/G), averaged over the four sites by the elements each reads.", "",
         "## Every format at all four sites, by storage bits", "",
         "| format | storage bits | perplexity | increase over FP |", "|---|---:|---:|---|"]
  for r in sorted(at_all, key=lambda r: (r["storage_bits"], label(r))):
    out.append(f"| {label(r)} | {r['storage_bits']:.3f} | {_ppl(r)} | {_loss(r, base_ppl)} |")
  singles = {(format_of(r), r["type"]): r for r in rows if format_of(r) != ANDA and r["type"] != "all"}
  if singles:
    names = list(dict.fromkeys(name for name, _ in singles))
    out += ["", "## The other formats at one site at a time (the other sites in FP)", "",
            "| format | " + " | ".join(MODULE_TYPES) + " |", "|---|" + "---|" * len(MODULE_TYPES)]
    out += [f"| {name} | " + " | ".join(_loss(singles.get((name, t)), base_ppl) for t in MODULE_TYPES)
            + " |" for name in names]
  if others and anda:
    out += ["", "## Anda against each format at equal bits (all four sites)", "",
            "Best Anda within its bits: the Anda configuration (G, M over the grid) with the lowest "
            "perplexity among those storing at most as many bits. Anda vs format: that "
            "perplexity over the format's, with the paired interval of the ratio (Anda ahead: "
            "the interval lies below 0). Cheapest Anda as good: the fewest bits at which an Anda "
            "configuration's perplexity is at most the format's (point estimates).", "",
            "| format | bits | increase over FP | best Anda within its bits | its increase | "
            "Anda vs format | cheapest Anda as good | bits saved |",
            "|---|---:|---|---|---|---|---|---:|"]
    for other in sorted(others, key=lambda r: (r["storage_bits"], label(r))):
      c = comparison(anda, other)
      best = "none" if c["best"] is None else f"{label(c['best'])} ({c['best']['storage_bits']:.3f})"
      cheapest = ("none on this grid" if c["cheapest"] is None else
                  f"{label(c['cheapest'])} ({c['cheapest']['storage_bits']:.3f})")
      saved = "–" if c["cheapest"] is None else f"{other['storage_bits'] - c['cheapest']['storage_bits']:+.3f}"
      out.append(f"| {label(other)} | {other['storage_bits']:.3f} | {_loss(other, base_ppl)} | "
                 f"{best} | {_loss(c['best'], base_ppl)} | {_versus(c, other)} | {cheapest} | "
                 f"{saved} |")
  out += ["", "![perplexity increase vs storage bits](pareto.png)", ""]
  return "\n".join(out)


def _bars(rows: list[dict]) -> np.ndarray:
  """matplotlib yerr [2, n] in percent around each row's increase (0 without an interval)."""
  out = []
  for r in rows:
    iv = r.get("interval")
    if iv is None or not (math.isfinite(iv.low) and math.isfinite(iv.high)):
      out.append((0.0, 0.0))
    else:
      out.append((100 * (iv.estimate - iv.low), 100 * (iv.high - iv.estimate)))
  return np.maximum(np.array(out, float).reshape(len(rows), 2).T, 0)


def plot(path: pathlib.Path, run_name: str, base: dict | None, rows: list[dict]) -> None:
  """pareto.png: increase over FP (%, symlog) vs storage bits per activation element."""
  plt = reports.pyplot()

  if base is None or base["ppl"] is None:
    return
  base_ppl = base["ppl"]
  rise = lambda r: 100 * (r["ppl"] / base_ppl - 1)
  at_all = _finite(r for r in rows if r["type"] == "all")
  fig, ax = plt.subplots(figsize=(10, 6))
  anda = [r for r in at_all if format_of(r) == ANDA]
  for g in sorted({r["group_size"] for r in anda}):
    line = sorted((r for r in anda if r["group_size"] == g), key=lambda r: r["storage_bits"])
    ax.errorbar([r["storage_bits"] for r in line], [rise(r) for r in line], yerr=_bars(line),
                marker="o", ms=4, capsize=2, label=f"Anda G={g} (M = {line[0]['mantissa_bits']}.."
                f"{line[-1]['mantissa_bits']})")
  markers = "sD^v<>pPX*h"
  others = sorted((r for r in at_all if format_of(r) != ANDA), key=label)
  for i, r in enumerate(others):
    x = r["storage_bits"]
    ax.errorbar([x], [rise(r)], yerr=_bars([r]), fmt=markers[i % len(markers)], c="k", ms=7,
                capsize=2, mfc="none")
    # Labelled on the left where another format sits just to the right (e.g. 8.04 and 8.25).
    left = any(0 < o["storage_bits"] - x < 0.6 for o in others)
    ax.annotate(label(r), (x, rise(r)), xytext=(-6 if left else 6, 3), textcoords="offset points",
                ha="right" if left else "left", fontsize=8)
  ax.axhline(0, c="k", lw=0.8, ls="--")
  ax.axhspan(-1, 1, color="k", alpha=0.08, label="within 1% of FP")
  ax.set_yscale("symlog", linthresh=1)
  ax.set(xlabel="storage bits per activation element", ylabel="perplexity increase over FP (%)",
         title=f"{run_name}: every format at all four sites (FP ppl {base_ppl:.3f});\n"
         f"bars: {perplexity.INTERVAL_METHOD}")
  ax.title.set_fontsize(9)
  ax.legend(fontsize=8, loc="upper right")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  reports.save_figure(fig, path, dpi=120)
  plt.close(fig)


def write(run_dir: pathlib.Path, base: dict | None, rows: list[dict]) -> str:
  """formats.md and pareto.png of a run whose rows include other formats; returns the table."""
  run_dir = pathlib.Path(run_dir)
  text = table(run_dir.name, base, rows)
  reports.write_text(run_dir / "formats.md", reports.with_weights(run_dir, text))
  plot(run_dir / "pareto.png", run_dir.name, base, rows)
  return text
