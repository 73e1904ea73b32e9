"""Perplexity sweep over group sizes x mantissa lengths, per module type and uniform.

    python -m experiments.sweep --config=configs/sweep.py:quick
    python -m experiments.sweep --config=configs/sweep.py --config.format.rounding=nearest
    python -m experiments.sweep --config=configs/baselines.py   # Anda against other formats

Evaluates the FP-activation baseline, then for every group size G and mantissa length M:
each module type alone (the other types stay float) and all types uniformly. All
configurations of one G go through `evaluate.window_nll_sums` vmapped (and sharded over
devices), in fixed-size batches, so the run compiles once per (G, window shape). Every increase
over the baseline is reported with its paired-bootstrap confidence interval
(perplexity.increase_interval, from the rows' per-window NLL sums on the same windows).

With `other_formats` (names of anda_jax.numerics.baselines.FORMAT_NAMES, e.g. configs/baselines.py), each of
those formats is evaluated on the same windows at the sites of `other_format_types` (one
compilation per format), and the run adds baselines.md and pareto.png (experiments/
formats_report.py): every format against Anda at equal storage bits per activation element.

Writes results/<run_name>/ :
  setup.json     the settings the rows are valid for; a rerun with other settings is refused
  results.jsonl  one line per configuration with its per-window NLL sums, appended and
                 flushed as its batch completes; a rerun skips every configuration already
                 there (resume)
  results.csv    every row, with the perplexity increase over the baseline and its interval
                 (rel_increase_low, rel_increase_high)
  ppl_vs_m.png   perplexity vs M, one panel per group size, one line per type; error bars:
                 the intervals
  heatmap.png    G x M heatmap of the relative perplexity increase (all types uniform), each
                 cell with half its interval's width, hatched where the interval holds 0
  baselines.md, pareto.png   with other formats only (see above)
and prints a table. Multi-process (README: "Many devices, many hosts"): run the same command
with --config.distributed=True in every process (e.g. one per host under SLURM, or on every
host of a TPU pod); the configuration batch is then sharded over every process's devices
(--config.mesh also splits the weights) and only process 0 writes files.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time

from absl import logging
import numpy as np

from anda_jax import cost
from anda_jax.evaluation import evaluate
from anda_jax.evaluation import intervals
from anda_jax.matmul import ProductSpec
from anda_jax import precision as anda_precision
from anda_jax.precision import MAX_MANTISSA_BITS, MIN_MANTISSA_BITS
from configs import sweep as sweep_config
from experiments import formats_report
from experiments.harness import cli
from experiments.harness import config_checks
from experiments.harness import distributed
from experiments.harness import loading
from experiments.harness import perplexity
from experiments.harness import reports
from experiments.harness import run_folder


SWEEP_TYPES = anda_precision.MODULE_TYPES + ("all",)
BASELINE = "fp"
ANDA = formats_report.ANDA  # the `format` of the baseline's and Anda's rows
# The fields the report reads: a line of results.jsonl without them is a broken line.
ROW_FIELDS = ("id", "type", "group_size", "mantissa_bits", "ppl")


# ---------------------------------------------------------------------- validation

def validate(cfg) -> None:
  """Everything checkable before loading anything heavy; ValueError with a clear message."""
  config_checks.check_config(cfg, sweep_config.get_config())
  config_checks.check_ints("mantissa_bits", cfg.mantissa_bits, MIN_MANTISSA_BITS, MAX_MANTISSA_BITS)
  config_checks.check_types(cfg.types, SWEEP_TYPES)
  if config_checks.other_formats(cfg):
    config_checks.check_types(cfg.other_format_types, SWEEP_TYPES)


# ---------------------------------------------------------------------- the sweep

@dataclasses.dataclass(frozen=True)
class Config:
  id: str
  type: str
  group_size: int | None
  mantissa_bits: int | None
  precision: tuple[int, ...]
  format: str = ANDA


def _sites(t: str, m: int) -> tuple[int, ...]:
  p = anda_precision.uniform(m) if t == "all" else anda_precision.single_type(t, m)
  return tuple(int(v) for v in p)


def sweep_configs(group_sizes, mantissa_bits, types, other_formats=(), other_types=("all",)) -> list[Config]:
  """The baseline, then for each G: each type (in `types`) x each M; then each other format (by
  name) at the sites of each of `other_types` (M = 1 there switches the format on)."""
  out = [Config(BASELINE, BASELINE, None, 0, (0,) * len(anda_precision.MODULE_TYPES))]
  for g in group_sizes:
    for t in types:
      for m in mantissa_bits:
        out.append(Config(f"G{g}-{t}-M{m}", t, g, m, _sites(t, m)))
  for name in other_formats:
    out += [Config(f"{name}-{t}", t, None, None, _sites(t, 1), name) for t in other_types]
  return out


def _work(cfg, pending: list[Config], others: dict):
  """(product spec, its pending configurations) in evaluation order: one spec per G (the
  baseline, M = 0 everywhere, ignores G: it rides along with the first G's batch), then one per
  other format: each is one compilation."""
  first = cfg.format.group_sizes[0]
  for g in cfg.format.group_sizes:
    yield config_checks.product_spec(cfg, g), [c for c in pending if c.format == ANDA and (
        c.group_size == g or (c.group_size is None and g == first))]
  for name, fmt in others.items():
    yield ProductSpec(fmt, cfg.impl), [c for c in pending if c.format == name]


def _storage_bits(c: Config, spec: ProductSpec, shape: cost.ModelShape) -> float:
  """Bits per activation element of a configuration's quantized sites (FP16: 16)."""
  if c.format == ANDA:
    return 16.0 if c.group_size is None else spec.fmt.storage_bits(c.mantissa_bits)
  # NVFP4's and the per-token formats' float32 scale is shared by a token: its share depends on
  # each site's K, averaged over the sites by the elements each reads.
  return cost.format_storage_bits(shape, np.array(c.precision), spec.fmt, quantized_only=True)


def run(cfg) -> dict:
  """Runs (or resumes) a sweep; returns {id: row}."""
  validate(cfg)
  distributed.maybe_initialize_distributed(cfg)
  digest = loading.model_sha256(cfg.model.name)
  loading.check_finetune_file(cfg, digest)
  with run_folder.open_run(cfg, run_folder.setup_of(cfg, None, digest)) as folder:
    return _run(cfg, folder, digest)


def _run(cfg, folder: pathlib.Path, digest: str) -> dict:
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  t0 = time.time()
  mesh = distributed.mesh_of(cfg)  # before loading: a shape that does not fit the devices is refused
  model, windows, score_from, bos = loading.start(cfg, mesh=mesh)
  others = config_checks.other_formats(cfg)
  distributed.check_mesh_fits(model, mesh, [ProductSpec(f, cfg.impl) for f in others.values()])
  is_main = distributed.is_main()
  results = run_folder.Results(folder, run_folder.setup_of(cfg, windows, digest)
                               | run_folder.weights_setup(model) | run_folder.bos_setup(bos),
                               write=is_main,
                           required=ROW_FIELDS)
  shape = cost.as_shape(model)
  configs = sweep_configs(cfg.format.group_sizes, cfg.mantissa_bits, cfg.types, tuple(others),
                          cfg.other_format_types)
  pending = [c for c in configs if c.id not in results.rows]
  logging.info("%d configurations, %d already done, %d to go", len(configs),
               len(configs) - len(pending), len(pending))
  key = config_checks.rounding_key(cfg)
  weights = evaluate.target_weights(len(windows), windows.shape[1], score_from)
  window_tokens = weights.sum(axis=1, dtype=np.float64)
  n_tokens = float(window_tokens.sum())
  with evaluate.count_compilations() as compiled:
    bar = tqdm(total=len(pending), desc="sweep", unit="config", disable=not is_main or not pending)
    for spec, todo in _work(cfg, pending, others):
      if not todo:
        continue
      t_start = [time.time()]

      def on_batch(idx, sums, todo=todo, t_start=t_start, spec=spec):
        now = time.time()
        seconds = (now - t_start[0]) / len(idx)
        t_start[0] = now
        rows = []
        for i, per_window in zip(idx, sums):
          c = todo[i]
          rows.append(dict(id=c.id, format=c.format, type=c.type, group_size=c.group_size,
                           mantissa_bits=c.mantissa_bits, precision=list(c.precision),
                           **perplexity.perplexity_fields(per_window.sum() / n_tokens), tokens=n_tokens,
                           storage_bits=_storage_bits(c, spec, shape),
                           seconds=round(seconds, 3), **perplexity.window_fields(per_window, window_tokens)))
        results.append(rows)
        bar.update(len(rows))

      evaluate.window_nll_sums(model, windows, np.array([c.precision for c in todo]), spec,
                               weights=weights, batch_size=cfg.window_batch,
                               config_batch=cfg.config_batch, key=key, mesh=mesh, on_batch=on_batch)
  bar.close()
  n_compiles = len(compiled)
  logging.info("compilations: %d (at most one per group size and other format with work left: "
               "%d)", n_compiles, len({(c.format, c.group_size or cfg.format.group_sizes[0]) for c in pending}))
  print(f"compilations: {n_compiles}; wall time {time.time() - t0:.1f} s")
  if is_main:
    report(results.dir)
  return results.rows


# ---------------------------------------------------------------------- report

def _load_rows(run_dir: pathlib.Path) -> tuple[dict, list[dict]]:
  """(baseline row or None, the other rows) of results.jsonl, each with `ppl` None where the
  perplexity is not finite."""
  rows = run_folder.read_rows(run_dir / "results.jsonl", ROW_FIELDS)
  by_id = {r["id"]: perplexity.reported(r) for r in rows}
  return by_id.get(BASELINE), [r for r in by_id.values() if r["id"] != BASELINE]


def _csv_row(r: dict, base_ppl: float | None) -> dict:
  bounds = perplexity.interval_columns(r["interval"])
  if r["ppl"] is None:
    return dict(r, ppl=r["nonfinite"], rel_increase=r["nonfinite"], finite=False, **bounds)
  return dict(r, rel_increase="nan" if base_ppl is None else r["ppl"] / base_ppl - 1, finite=True, **bounds)


def report(run_dir) -> str:
  """Writes results.csv and the plots from results.jsonl; prints and returns the table. Every
  increase over the baseline carries its paired confidence interval where the rows hold
  per-window sums (rows of older runs do not: shown without). A perplexity that is not finite
  reads "inf" (overflow) or "nan" and is a gap in the plots."""
  run_dir = pathlib.Path(run_dir)
  base, rows = _load_rows(run_dir)
  base_ppl = base["ppl"] if base else None
  rows = [dict(r, format=formats_report.format_of(r),
                interval=None if r["ppl"] is None or base_ppl is None else perplexity.increase_interval(r, base))
          for r in rows]
  fields = ["id", "format", "type", "group_size", "mantissa_bits", "ppl", "rel_increase",
            *perplexity.INTERVAL_COLUMNS, "finite", "nll", "tokens", "storage_bits", "seconds"]
  # Anda's rows by G, type and M, then the other formats' by name and type.
  ordered = ([dict(base, format=ANDA, interval=None)] if base else []) + sorted(
      rows, key=lambda r: (r["format"] != ANDA, r["format"], r["group_size"] or 0, r["type"],
                           r["mantissa_bits"] or 0))
  reports.write_text(run_dir / "results.csv", reports.csv_text(fields, [_csv_row(r, base_ppl) for r in ordered]))
  anda = [r for r in rows if r["format"] == ANDA]
  table = _table(base, anda)
  if len(anda) < len(rows):  # other formats: their table against Anda, and the Pareto plot
    table += "\n\n" + formats_report.write(run_dir, base, rows)
  table = reports.with_weights(run_dir, table)
  print(table)
  _plots(run_dir, base_ppl, anda)
  return table


def _increase(ratio: float) -> str:
  """ppl / ppl_fp as a percentage increase, or a factor once it is large."""
  if ratio < 2:
    return f"{ratio - 1:>+6.1%}"
  return f"{'x' + format(ratio, '.1f' if ratio < 1000 else '.0f'):>6}"


def _half_width(ratio: float, iv) -> str:
  """Half the interval's width in the unit `_increase` shows: percentage points, or the factor."""
  if iv is None or not math.isfinite(iv.half_width):
    return ""
  if ratio < 2:
    return f"±{100 * iv.half_width:.1f}"
  return f"±{iv.half_width:.{1 if iv.half_width < 100 else 0}f}"


def _cell(row: dict | None, base_ppl: float | None, with_intervals: bool) -> str:
  width = 23 if with_intervals else 16
  if row is None:
    return f"{'-':>{width}}"
  ppl = row["ppl"]
  if ppl is None:
    return f"{row['nonfinite']:>8} {'':{width - 9}}"
  if base_ppl is None:
    return f"{ppl:>8.{2 if ppl < 1e5 else 0}f} {'':{width - 9}}"
  ratio = ppl / base_ppl
  spread = f" {_half_width(ratio, row['interval']):<5}" if with_intervals else ""
  return f"{ppl:>8.{2 if ppl < 1e5 else 0}f} ({_increase(ratio)}{spread})"


def _table(base: dict | None, rows: list[dict]) -> str:
  ms = sorted({r["mantissa_bits"] for r in rows})
  base_ppl = base["ppl"] if base else None
  with_intervals = any(r["interval"] is not None for r in rows)
  shown = "not measured" if base is None else (
      f"{base_ppl:.4f}" if base_ppl is not None else f"{base['nonfinite']} (not finite)")
  lines = [f"FP-activation baseline perplexity: {shown}",
           "perplexity (increase over the baseline" + (" ± half its interval)" if with_intervals else ")"),
           f"{'G':>5} {'type':>5} " + " ".join(f"{'M=' + str(m):>{23 if with_intervals else 16}}" for m in ms)]
  cells = {(r["group_size"], r["type"], r["mantissa_bits"]): r for r in rows}
  for g in sorted({r["group_size"] for r in rows}):
    for t in SWEEP_TYPES:
      if not any((g, t, m) in cells for m in ms):
        continue
      lines.append(f"{g:>5} {t:>5} " + " ".join(_cell(cells.get((g, t, m)), base_ppl, with_intervals)
                                                  for m in ms))
  if with_intervals:
    lines.append(f"±: half the width of the {perplexity.INTERVAL_METHOD}, in percentage points (in "
                 "the factor for xN cells)")
  return "\n".join(lines)


def _bounds(rows: list[dict], scale) -> np.ndarray:
  """matplotlib yerr [2, n] around scale(estimate) from each row's interval (NaN: none)."""
  nan = float("nan")
  out = []
  for r in rows:
    iv = r["interval"]
    if iv is None or r["ppl"] is None:
      out.append((nan, nan))
    else:
      mid = scale(iv.estimate)
      out.append((mid - scale(iv.low), scale(iv.high) - mid))
  # A percentile interval may (rarely) leave out its own estimate; matplotlib refuses negative
  # error bars, so such a side is drawn as zero.
  return np.maximum(np.array(out, float).T.reshape(2, len(rows)), 0)


def _plots(run_dir: pathlib.Path, base_ppl: float | None, rows: list[dict]) -> None:
  """ppl_vs_m.png and heatmap.png; a perplexity that is not finite is a gap (NaN)."""
  plt = reports.pyplot()

  gs = sorted({r["group_size"] for r in rows})
  ms = sorted({r["mantissa_bits"] for r in rows})
  if not gs:
    return
  nan = float("nan")
  base = nan if base_ppl is None else base_ppl
  value = lambda r: nan if r["ppl"] is None else r["ppl"]
  # Top: perplexity on a log scale (the collapse at small M). Bottom: the relative increase on a
  # symlog scale, linear within +-1%, where the choice of M is actually made. Error bars: the
  # paired interval of the increase (on the perplexity too: ppl_fp x (1 + its bounds)).
  fig, axes = plt.subplots(2, len(gs), figsize=(4.5 * len(gs), 7), squeeze=False, sharey="row")
  for col, g in enumerate(gs):
    for t in SWEEP_TYPES:
      line = sorted((r for r in rows if r["group_size"] == g and r["type"] == t), key=lambda r: r["mantissa_bits"])
      if line:
        m, ppl = [r["mantissa_bits"] for r in line], [value(r) for r in line]
        axes[0][col].errorbar(m, ppl, yerr=_bounds(line, lambda f: base * (1 + f)), marker="o",
                              capsize=2, label=t)
        axes[1][col].errorbar(m, [100 * (p / base - 1) for p in ppl], yerr=_bounds(line, lambda f: 100 * f),
                              marker="o", capsize=2, label=t)
    if base_ppl is not None:
      axes[0][col].axhline(base_ppl, color="k", ls="--", lw=1, label="FP activations")
    axes[0][col].set(title=f"G = {g}", xticks=ms)
    if any(value(r) > 0 for r in rows):  # a log axis needs a positive finite value
      axes[0][col].set_yscale("log")
    axes[1][col].axhline(0, color="k", ls="--", lw=1)
    axes[1][col].axhspan(-1, 1, color="k", alpha=0.08, label="within 1%")
    axes[1][col].set(xlabel="mantissa bits M", xticks=ms)
    axes[1][col].set_yscale("symlog", linthresh=1)
  axes[0][0].set_ylabel("perplexity")
  axes[1][0].set_ylabel("perplexity increase over FP (%)")
  axes[0][-1].legend(fontsize=8)
  axes[1][-1].legend(fontsize=8)
  title = reports.model_name(run_dir)
  if any(r["interval"] is not None for r in rows):
    title += f"; error bars: {perplexity.INTERVAL_METHOD} of the increase over FP"
  fig.suptitle(reports.fit_title(title, fig.get_figwidth()), fontsize=9)
  fig.tight_layout()
  reports.save_figure(fig, run_dir / "ppl_vs_m.png", dpi=120)
  plt.close(fig)
  _heatmap(run_dir, base, gs, ms, [r for r in rows if r["type"] == "all"])


def _heatmap(run_dir: pathlib.Path, base: float, gs, ms, uniform_rows: list[dict]) -> None:
  """heatmap.png: the increase of every type at once, G x M; a hatched cell's interval holds 0
  (not distinguishable from FP on these windows)."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib.patches import Rectangle  # pylint: disable=g-import-not-at-top

  if not uniform_rows:
    return
  cells = {(r["group_size"], r["mantissa_bits"]): r for r in uniform_rows}
  ratio = np.array([[np.nan if cells.get((g, m), {}).get("ppl") is None else cells[(g, m)]["ppl"] / base
                     for m in ms] for g in gs])
  fig, ax = plt.subplots(figsize=(2.5 + 0.9 * len(ms), 1.6 + 0.6 * len(gs)))
  # Increases span from 0.1 % to several-fold: color by log(ppl / ppl_fp), label in percent.
  im = ax.imshow(np.log10(np.maximum(ratio, 1.0)), cmap="YlOrRd", aspect="auto", vmin=0)
  hatched = False
  for (i, j), v in np.ndenumerate(ratio):
    if not np.isfinite(v):
      continue
    iv = cells[(gs[i], ms[j])]["interval"]
    ax.text(j, i, "\n".join(filter(None, [_increase(v).strip(), _half_width(v, iv)])), ha="center",
            va="center", fontsize=7)
    if iv is not None and iv.low <= 0 <= iv.high:
      ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.6", lw=0))
      hatched = True
  title = "ppl increase, all types"
  if any(r["interval"] is not None for r in uniform_rows):
    title += f" (±: half its {intervals.LEVEL:.0%} interval" + ("; hatched: it holds 0)" if hatched else ")")
  ax.set(xticks=range(len(ms)), xticklabels=ms, yticks=range(len(gs)), yticklabels=gs,
         xlabel="mantissa bits M", ylabel="group size G")
  ax.set_title(reports.fit_title(title, 0.8 * fig.get_figwidth()), fontsize=9)
  fig.colorbar(im, ax=ax, label="log10(ppl / ppl_fp)")
  fig.tight_layout()
  reports.save_figure(fig, run_dir / "heatmap.png", dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  cli.run_with_config(run, "Sweep configuration.")
