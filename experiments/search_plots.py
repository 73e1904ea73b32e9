"""The plots of a search's report (experiments/search_report.py), drawn from a run's files as
its `_Run` reads them: pareto.png (calibration perplexity against the cost axis, mean M or for a
search among formats mean storage bits), path.png (the loss along each search's path on both
splits) and layers.png (a per-layer search's choice per layer and type)."""

from __future__ import annotations

import math

import numpy as np

from anda_jax import cost
from anda_jax.precision import MODULE_TYPES, config_key
from experiments.harness import perplexity
from experiments.harness import reports
from experiments.search_log import SPLITS


def paths(run_dir, paths) -> None:
  """path.png: loss with its interval on calibration and on test against the round, one panel
  per tolerance, the tolerance as a line."""
  plt = reports.pyplot()
  fig, axes = plt.subplots(1, len(paths), squeeze=False, figsize=(1 + 4.2 * len(paths), 3.6))
  for ax, (c, points) in zip(axes[0], paths):
    rounds = sorted(points)
    for j, (split, marker) in enumerate(zip(SPLITS, "os")):
      iv = [points[i][j] for i in rounds]
      y = np.array([100 * v.estimate for v in iv])
      err = np.array([[100 * (v.estimate - v.low), 100 * (v.high - v.estimate)] for v in iv]).T
      ax.errorbar(np.array(rounds) + (j - 0.5) * 0.15, y, yerr=np.maximum(err, 0), fmt=marker + "-",
                  ms=3, capsize=2, label=split)
    ax.axhline(100 * c["tolerance"], c="0.4", ls="--", lw=0.8, label="tolerance")
    ax.axhline(0, c="0.8", lw=0.6)
    ax.set(title=f"tolerance {100 * c['tolerance']:g}%", xlabel="round (accepted steps)",
           ylabel="loss vs FP (%)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
  fig.tight_layout()
  reports.save_figure(fig, run_dir / "path.png", dpi=110)
  plt.close(fig)


def layers(run) -> None:
  """A per-layer search's choice per (layer, type), one panel per tolerance, the start's value
  marked where the search lowered nothing: its M (Anda), or for a search among formats the
  index of the format, coloured by its storage bits."""
  plt = reports.pyplot()
  chosen = run.chosen["chosen"]
  start = np.asarray(chosen[0]["path"][0])
  fig, axes = plt.subplots(1, len(chosen), squeeze=False, sharey=True,
                           figsize=(1.2 + 2.6 * len(chosen), 1.5 + 0.22 * len(start)))
  values = [np.asarray(c["precision"]) for c in chosen]
  colour = ((lambda m: m) if run.choice is None else
            (lambda m: cost.activation_bits(run.shape, m, run.choice)))
  shades = [colour(m) for m in values] + [colour(start)]
  lo, hi = min(v.min() for v in shades), max(v.max() for v in shades)
  for ax, c, m in zip(axes[0], chosen, values):
    im = ax.imshow(colour(m), cmap="viridis", vmin=lo - 0.5, vmax=hi + 0.5, aspect="auto")
    for (i, j), v in np.ndenumerate(m):
      ax.text(j, i, str(v) + ("*" if v == start[i, j] else ""), ha="center", va="center",
              fontsize=7, color="w" if colour(m)[i, j] < (lo + hi) / 2 else "k")
    ax.set(title=f"tolerance {100 * c['tolerance']:g}%", xticks=range(len(MODULE_TYPES)),
           yticks=range(len(m)))
    ax.set_xticklabels(MODULE_TYPES, rotation=45)
  axes[0][0].set_ylabel("layer")
  if run.choice is None:
    fig.colorbar(im, ax=axes[0].tolist(), ticks=range(int(lo), int(hi) + 1),
                 label="mantissa bits M (*: the start's, not lowered)")
  else:
    fig.colorbar(im, ax=axes[0].tolist(), label="storage bits (*: the start's, not lowered)")
    legend = ", ".join(f"{v}: {n}" for v, n in enumerate(("FP16", *run.names)))
    fig.text(0.02, -0.6 / fig.get_figheight(), reports.fit_title(legend, fig.get_figwidth(), 7),
             fontsize=7, va="top")  # below the rotated type names
  reports.save_figure(fig, run.dir / "layers.png", dpi=110)
  plt.close(fig)


def pareto(run) -> None:
  """pareto.png. Left: every point, log scale; right: zoomed on the tolerances around FP. Error
  bars: the paired intervals against FP, where the rows hold per-window sums. x: the run's cost
  axis (run.x: mean M, or mean storage bits for a search among formats)."""
  plt = reports.pyplot()
  run_dir, cal_rows, chosen, fp_row = run.dir, run.cal_rows, run.chosen, run.fp["calibration"]
  fp_ppl = None if fp_row is None else fp_row["perplexity"]

  def point(row):  # (x, perplexity, [below, above] error) of a finite row
    interval = None if fp_ppl is None else perplexity.increase_interval(row, fp_row)
    err = ([0.0, 0.0] if interval is None or not math.isfinite(interval.high) else
           [max(row["perplexity"] - fp_ppl * (1 + interval.low), 0.0),
            max(fp_ppl * (1 + interval.high) - row["perplexity"], 0.0)])
    return run.x(row["precision"]), row["perplexity"], err

  # A perplexity that is not finite (None) is left out: a gap in the uniform curve. Anda's
  # configurations with a float site are left out; a search among formats starts from float.
  shown = ((lambda p: p.min() > 0) if run.choice is None else (lambda p: p.max() > 0))
  points = sorted(point(r) for r in cal_rows
                  if shown(np.asarray(r["precision"])) and r["perplexity"] is not None)
  front, best = [], np.inf
  for xi, yi, _ in points:  # the lowest perplexity at or below each mean M
    if yi < best:
      best = yi
      front.append((xi, yi))
  rows = {config_key(np.asarray(r["precision"])): r for r in cal_rows}
  # Anda's uniform curve at x = M; a list's formats each at every site, at their bits.
  xs = ([m for m in chosen["uniform_m"]] if run.choice is None else
        [run.x(c) for _, c in run.uniform])
  uni = [(x, rows.get(config_key(c))) for x, (_, c) in zip(xs, run.uniform)]
  uni = sorted((x, np.nan, [0.0, 0.0]) if r["perplexity"] is None else (x,) + point(r)[1:]
               for x, r in uni if r is not None)
  errorbar = lambda ax, pts, **kw: ax.errorbar(
      [p[0] for p in pts], [p[1] for p in pts], yerr=np.array([p[2] for p in pts]).T, capsize=2,
      **kw)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
  for ax in axes:
    if points:
      errorbar(ax, points, fmt="o", ms=3, c="0.7", elinewidth=0.6, label="evaluated (calibration)")
      ax.plot(*zip(*front), "-", c="C0", label="Pareto front")
    if uni:
      errorbar(ax, uni, fmt="s--", c="C1", label="uniform M (block FP)" if run.choice is None
               else "each format at every site")
    for i, c in enumerate(chosen["chosen"]):
      row = rows.get(config_key(np.asarray(c["precision"])))
      if row is not None and row["perplexity"] is not None:
        errorbar(ax, [point(row)], fmt="*", ms=14, c=f"C{2 + i}",
                 label=f"chosen, tolerance {100 * c['tolerance']:g}%")
    if fp_ppl is not None:
      ax.axhline(fp_ppl, c="k", lw=0.8, ls=":", label="FP16 activations")
      for i, c in enumerate(chosen["chosen"]):
        ax.axhline(fp_ppl * (1 + c["tolerance"]), c=f"C{2 + i}", lw=0.6, ls=":")
    ax.set_xlabel("mean mantissa bits M̄ (MAC-weighted)" if run.choice is None else
                  "mean storage bits per activation element")
    ax.set_ylabel("perplexity (calibration)")
  ys = [p[1] for p in points] + [p[1] for p in uni if np.isfinite(p[1])]
  if ys and min(ys) > 0 and max(ys) / min(ys) > 3:  # low M blows up: log keeps the rest visible
    axes[0].set_yscale("log")
  axes[0].set_title(f"{run_dir.name}: all evaluated configurations")
  axes[0].legend(fontsize=8)
  if fp_ppl is not None and ys:
    top = fp_ppl * (1 + 3 * max([c["tolerance"] for c in chosen["chosen"]] + [0.01]))
    near = [p for p in points + uni if p[1] <= top]
    # Room for the lower bars of the uniform curve and the chosen configurations.
    bars = [p[1] - p[2][0] for p in uni if np.isfinite(p[1]) and p[1] <= top] + [
        point(r)[1] - point(r)[2][0] for r in (rows.get(config_key(
            np.asarray(c["precision"]))) for c in chosen["chosen"]) if r and r["perplexity"]]
    axes[1].set_ylim(min(ys + [fp_ppl] + bars) - 0.002 * fp_ppl, top)
    if near:
      xs = [p[0] for p in near]
      axes[1].set_xlim(min(xs) - 0.25, max(xs) + 0.25)
  axes[1].set_title(reports.fit_title(
      "near FP16 (dotted: FP and FP x (1 + tolerance)); bars: "
      + perplexity.INTERVAL_METHOD.split(" over")[0] + " against FP", 0.45 * fig.get_figwidth()),
      fontsize=9)
  fig.tight_layout()
  reports.save_figure(fig, run_dir / "pareto.png", dpi=110)
  plt.close(fig)
