"""Per-layer sensitivity: one (layer, type) at a time in Anda, vmapped over M, on calibration windows.

    python -m experiments.sensitivity --config=configs/sensitivity.py:quick
    python -m experiments.sensitivity --config=configs/sensitivity.py

A configuration that changes only layer l has the float model's hidden state entering layer
l. So the windows are embedded once, the hidden state is advanced one float layer at a time,
and every (l, type) evaluates only layers l..L-1 and the head from it
(model.run_layers(h, precision, spec, start=l)): about half the cost of running every
configuration from the embedding (`python -m experiments.bench sensitivity` measures both).

Writes results/<run_name>/ : setup.json, results.jsonl (one line per (layer, type, M) with its
per-window NLL sums, resumable), results.csv (with the increase's paired-bootstrap interval:
rel_increase_low, rel_increase_high), heatmap.png (perplexity increase over the float model,
layers x types, one panel per M; a dot marks a cell whose interval holds 0), and prints the
most sensitive (layer, type) pairs, each with its interval.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time

from absl import logging
import numpy as np

from anda_jax.evaluation import evaluate
from anda_jax.evaluation import intervals
from anda_jax.evaluation.prefix import Prefix as FloatPrefix  # float: no configuration given
from anda_jax import precision as anda_precision
from anda_jax.precision import MAX_MANTISSA_BITS, MIN_MANTISSA_BITS
from configs import sensitivity as sensitivity_config
from experiments.harness import cli
from experiments.harness import config_checks
from experiments.harness import distributed
from experiments.harness import loading
from experiments.harness import perplexity
from experiments.harness import reports
from experiments.harness import run_folder

BASELINE = "fp"
# The fields the report reads: a line of results.jsonl without them is a broken line.
ROW_FIELDS = ("id", "layer", "type", "mantissa_bits", "ppl")


def validate(cfg) -> None:
  """Everything checkable before loading anything heavy; ValueError with a clear message."""
  config_checks.check_config(cfg, sensitivity_config.get_config())
  config_checks.one_group_size(cfg, "sensitivity study")
  config_checks.check_ints("mantissa_bits", cfg.mantissa_bits, MIN_MANTISSA_BITS, MAX_MANTISSA_BITS)
  config_checks.check_types(cfg.types, anda_precision.MODULE_TYPES)
  if cfg.layers is not None:
    config_checks.check_ints("layers", cfg.layers, 0, 1 << 20)


# ------------------------------------------------------------------- the study

def layer_type_configs(n_layers: int, layer: int, type_name: str, mantissa_bits) -> np.ndarray:
  """int32 [len(M), n_layers, 4]: M at (layer, type), float everywhere else."""
  p = np.zeros((len(mantissa_bits), n_layers, len(anda_precision.MODULE_TYPES)), np.int32)
  p[:, layer, anda_precision.TYPE_INDEX[type_name]] = mantissa_bits
  return p


def row_id(layer: int, type_name: str, m: int) -> str:
  return f"L{layer}-{type_name}-M{m}"


@dataclasses.dataclass
class Outcome:
  rows: dict  # id -> row of results.jsonl
  seconds: float  # the study itself (after loading model and data)
  compiles: int


def run(cfg, reuse_prefix: bool = True, loaded=None) -> Outcome:
  """Runs (or resumes) the study. reuse_prefix=False evaluates every configuration from the
  embedding (the benchmark's baseline; same rows). loaded: (model, windows, score_from, bos) from
  loading.load_model_and_windows(cfg), to share one load between runs."""
  validate(cfg)
  distributed.maybe_initialize_distributed(cfg)
  digest = loading.model_sha256(cfg.model.name)
  loading.check_finetune_file(cfg, digest)
  setup = lambda windows: dict(run_folder.setup_of(cfg, windows, digest), group_size=cfg.format.group_sizes[0])
  with run_folder.open_run(cfg, setup(None)) as folder:
    return _run(cfg, folder, setup, reuse_prefix, loaded)


def _run(cfg, folder, setup, reuse_prefix, loaded) -> Outcome:
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  t0 = time.time()
  mesh = distributed.mesh_of(cfg)  # before loading: a shape that does not fit the devices is refused
  model, windows, score_from, bos = loading.start(cfg, loaded, mesh)
  n_layers = model.config.n_layers
  layers = sorted(set(range(n_layers) if cfg.layers is None else cfg.layers))
  if layers[-1] >= n_layers:
    raise ValueError(f"layers holds {layers[-1]}, which is invalid: the model has layers 0..{n_layers - 1}")
  is_main = distributed.is_main()
  group_size = cfg.format.group_sizes[0]
  results = run_folder.Results(folder, setup(windows) | run_folder.weights_setup(model)
                               | run_folder.bos_setup(bos), write=is_main,
                               required=ROW_FIELDS)
  spec = config_checks.product_spec(cfg, group_size)
  ms = tuple(cfg.mantissa_bits)
  key = config_checks.rounding_key(cfg)
  weights = evaluate.target_weights(len(windows), windows.shape[1], score_from)
  targets = windows[:, 1:]
  window_tokens = weights.sum(axis=1, dtype=np.float64)
  n_tokens = float(window_tokens.sum())
  config_batch = cfg.config_batch or len(ms)
  batch_size = cfg.window_batch or evaluate.auto_batch_size(config_batch, windows.shape[1], model.config.vocab)
  # Every call has config_batch configurations and the same window batch: one compilation in all.
  kw = dict(weights=weights, batch_size=batch_size, config_batch=config_batch, key=key, mesh=mesh)

  def evaluate_at(layer, precisions):
    """Per-window NLL sums [C, N] (kept in the rows for the paired intervals)."""
    if reuse_prefix:
      return evaluate.window_nll_sums(model, prefix.advance_to(layer), precisions, spec,
                                      targets=targets, start=layer, **kw)[0]
    return evaluate.window_nll_sums(model, windows, precisions, spec, **kw)[0]

  def fields(per_window):
    return dict(**perplexity.perplexity_fields(per_window.sum() / n_tokens), tokens=n_tokens,
                **perplexity.window_fields(per_window, window_tokens))

  todo = [(l, t) for l in layers for t in cfg.types
          if any(row_id(l, t, m) not in results.rows for m in ms)]
  logging.info("%d (layer, type) pairs x %d mantissa lengths, %d pairs to go", len(layers) * len(cfg.types),
               len(ms), len(todo))
  prefix = FloatPrefix(model, windows, batch_size) if reuse_prefix else None
  with evaluate.count_compilations() as compiled:
    t_study = time.time()
    if BASELINE not in results.rows:
      sums = evaluate_at(0, np.zeros((1, n_layers, 4), np.int32))
      results.append([dict(id=BASELINE, layer=None, type=BASELINE, mantissa_bits=0, **fields(sums[0]))])
    for l, t in tqdm(todo, desc="sensitivity", unit="layer x type", disable=not is_main or not todo):
      sums = evaluate_at(l, layer_type_configs(n_layers, l, t, ms))
      results.append([dict(id=row_id(l, t, m), layer=l, type=t, mantissa_bits=m, **fields(s))
                      for m, s in zip(ms, sums)])
  seconds = time.time() - t_study
  n_compiles = len(compiled)
  print(f"study: {len(todo)} (layer, type) pairs x {len(ms)} M in {seconds:.1f} s "
        f"({'prefix reuse' if reuse_prefix else 'from the embedding'}); compilations: {n_compiles}; "
        f"wall time {time.time() - t0:.1f} s")
  if is_main:
    report(results.dir)
  return Outcome(results.rows, seconds, n_compiles)


def report(run_dir, top: int = 10) -> str:
  """results.csv and heatmap.png from results.jsonl; prints and returns the top-k table. Every
  increase carries its paired confidence interval against the float model where the rows hold
  per-window sums (rows of older runs do not: shown without). A perplexity that is not finite
  reads "inf" (overflow) or "nan", ranks as the most sensitive and is a gap in the heatmap."""
  run_dir = pathlib.Path(run_dir)
  rows = {r["id"]: perplexity.reported(r) for r in run_folder.read_rows(run_dir / "results.jsonl", ROW_FIELDS)}
  base_row = rows.pop(BASELINE, None)
  base = None if base_row is None else base_row["ppl"]
  rows = sorted(rows.values(), key=lambda r: (r["layer"], r["type"], r["mantissa_bits"]))
  for r in rows:
    finite = r["ppl"] is not None and base is not None
    r["rel_increase"] = r["ppl"] / base - 1 if finite else None
    r["interval"] = perplexity.increase_interval(r, base_row) if finite else None

  def shown(r, key):  # "inf" / "nan" where the perplexity or the baseline is not finite
    if r[key] is not None:
      return r[key]
    return r["nonfinite"] or "nan"

  reports.write_text(run_dir / "results.csv", reports.csv_text(
      ["id", "layer", "type", "mantissa_bits", "ppl", "rel_increase", *perplexity.INTERVAL_COLUMNS,
       "finite", "nll", "tokens"],
      [dict(r, ppl=shown(r, "ppl"), rel_increase=shown(r, "rel_increase"), finite=r["ppl"] is not None,
            **perplexity.interval_columns(r["interval"])) for r in rows]))
  worst = sorted(rows, key=lambda r: -math.inf if r["rel_increase"] is None else -r["rel_increase"])[:top]
  head = ("float model perplexity " + (f"{base:.4f}" if base is not None else
                                       "not finite" if base_row else "not measured"))

  def increase(r):
    iv = r["interval"]
    return f"{r['rel_increase']:+.2%}" + ("" if iv is None else f" [{iv.low:+.2%}, {iv.high:+.2%}]")

  lines = [f"{head}; most sensitive (layer, type, M):"] + [
      f"  layer {r['layer']:>3} {r['type']:>5} M={r['mantissa_bits']:<2} " + (
          f"ppl {r['ppl']:.4f} ({increase(r)})" if r["rel_increase"] is not None else
          f"ppl {shown(r, 'ppl')}") for r in worst]
  if any(r["interval"] is not None for r in worst):
    lines.append(f"[low, high]: the {perplexity.INTERVAL_METHOD} of the increase")
  table = reports.with_weights(run_dir, "\n".join(lines))
  print(table)
  _heatmap(run_dir, rows)
  return table


def _heatmap(run_dir: pathlib.Path, rows: list[dict]) -> None:
  plt = reports.pyplot()

  layers = sorted({r["layer"] for r in rows})
  ms = sorted({r["mantissa_bits"] for r in rows})
  types = [t for t in anda_precision.MODULE_TYPES if any(r["type"] == t for r in rows)]
  cell = {(r["layer"], r["type"], r["mantissa_bits"]): r["rel_increase"] for r in rows
          if r["rel_increase"] is not None}  # not finite: a gap
  # Cells whose interval holds 0: not distinguishable from the float model on these windows.
  within_noise = {(r["layer"], r["type"], r["mantissa_bits"]) for r in rows
                  if r["interval"] is not None and r["interval"].low <= 0 <= r["interval"].high}
  # A symmetric log scale: a few cells reach +100s of percent while the decision is made around
  # +-1%; red is worse than FP, blue better (truncation can lower perplexity a little).
  vmax = max(max([abs(v) for v in cell.values()], default=0.0) * 100, 1.0)
  norm = plt.matplotlib.colors.SymLogNorm(linthresh=0.1, linscale=0.5, vmin=-vmax, vmax=vmax, base=10)
  fig, axes = plt.subplots(1, len(ms), figsize=(1.8 + 2.2 * len(ms), 1.5 + 0.2 * len(layers)),
                           squeeze=False, sharey=True)
  for ax, m in zip(axes[0], ms):
    grid = np.array([[cell.get((l, t, m), np.nan) for t in types] for l in layers])
    im = ax.imshow(grid * 100, cmap="RdBu_r", norm=norm, aspect="auto")
    dots = [(j, i) for i, l in enumerate(layers) for j, t in enumerate(types) if (l, t, m) in within_noise]
    if dots:
      ax.scatter(*zip(*dots), s=6, c="0.3", marker="o", linewidths=0)
    ax.set(title=f"M = {m}", xticks=range(len(types)), yticks=range(len(layers)), yticklabels=layers)
    ax.set_xticklabels(types, rotation=45)
  axes[0][0].set_ylabel("layer")
  label = "perplexity increase over FP (%), symlog"
  if any(r["interval"] is not None for r in rows):
    label += f"\ndot: its {intervals.LEVEL:.0%} paired interval holds 0"
  fig.colorbar(im, ax=axes[0].tolist(), label=label)
  fig.suptitle(reports.model_name(run_dir), fontsize=9)
  reports.save_figure(fig, run_dir / "heatmap.png", dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  cli.run_with_config(run, "Sensitivity configuration.")
