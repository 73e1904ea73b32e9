"""Per-layer sensitivity: one (layer, type) at a time in Anda, vmapped over M, on calibration windows.

    python -m experiments.sensitivity --config=configs/sensitivity_quick.py
    python -m experiments.sensitivity --config=configs/sensitivity_smollm2.py

A configuration that changes only layer l has the float model's hidden state entering layer
l. So the windows are embedded once, the hidden state is advanced one float layer at a time,
and every (l, type) evaluates only layers l..L-1 and the head from it
(model.run_layers(h, precision, fmt, start=l)): about half the cost of running every
configuration from the embedding (`python -m experiments.bench sensitivity` measures both).

Writes results/<run_name>/ : setup.json, results.jsonl (one line per (layer, type, M),
resumable), results.csv, heatmap.png (perplexity increase over the float model, layers x
types, one panel per M), and prints the most sensitive (layer, type) pairs.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import pathlib
import time

from absl import logging
import jax
from flax import nnx
import numpy as np

from anda_jax import evaluate
from anda_jax import format as anda_format
from anda_jax import precision as anda_precision
from experiments import run_files
from experiments import sweep

BASELINE = "fp"


def validate(cfg) -> None:
  """Everything checkable before loading anything heavy; ValueError with a clear message."""
  from configs import sensitivity_smollm2  # pylint: disable=g-import-not-at-top
  sweep.check_keys(cfg, sensitivity_smollm2.get_config())
  sweep.check_common(cfg)
  sweep.check_ints("format.group_size", cfg.format.group_size, 1, anda_format.MAX_GROUP_SIZE)
  sweep.check_types(cfg.types, anda_precision.MODULE_TYPES)
  if cfg.layers is not None:
    sweep.check_ints("layers", cfg.layers, 0, 1 << 20)


# ------------------------------------------------------------------- the float prefix

@functools.partial(jax.jit, static_argnames="graphdef")
def _embed(graphdef, state, tokens):
  return nnx.merge(graphdef, state).embed(tokens)


@functools.partial(jax.jit, static_argnames="graphdef")
def _float_layers(graphdef, state, h, start, stop):
  return nnx.merge(graphdef, state).run_layers(h, None, None, start=start, stop=stop)


class FloatPrefix:
  """Hidden states of the float model entering layer l, for l = 0, 1, ... in turn."""

  def __init__(self, model, windows: np.ndarray, batch_size: int):
    self.layer, self.bs = 0, batch_size
    self.graphdef, self.state = nnx.split(model)
    self.h = np.concatenate([np.asarray(_embed(self.graphdef, self.state, windows[i:i + batch_size]))
                             for i in range(0, len(windows), batch_size)])

  def advance_to(self, layer: int) -> np.ndarray:
    if layer < self.layer:
      raise ValueError(f"layers must be visited in increasing order: {layer} after {self.layer}")
    if layer > self.layer:
      # start and stop are traced: one compilation serves every step.
      self.h = np.concatenate([
          np.asarray(_float_layers(self.graphdef, self.state, self.h[i:i + self.bs], self.layer, layer))
          for i in range(0, len(self.h), self.bs)])
      self.layer = layer
    return self.h


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
  embedding (the benchmark's baseline; same rows). loaded: (model, windows, score_from) from
  sweep.load_model_and_windows(cfg), to share one load between runs."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  validate(cfg)
  sweep.maybe_initialize_distributed(cfg)
  t0 = time.time()
  model, windows, score_from = loaded or sweep.load_model_and_windows(cfg)
  sweep.check_group_size_fits(model, (cfg.format.group_size,), cfg.impl)
  n_layers = model.config.n_layers
  layers = sorted(set(range(n_layers) if cfg.layers is None else cfg.layers))
  if layers[-1] >= n_layers:
    raise ValueError(f"layers holds {layers[-1]}: the model has layers 0..{n_layers - 1}")
  is_main = jax.process_index() == 0
  results = sweep.Results(pathlib.Path(cfg.results_dir) / cfg.run_name,
                          dict(sweep.setup_of(cfg, windows), group_size=cfg.format.group_size),
                          write=is_main)
  fmt = anda_format.AndaFormat(group_size=cfg.format.group_size, exponent_bits=cfg.format.exponent_bits,
                               rounding=cfg.format.rounding)
  ms = tuple(cfg.mantissa_bits)
  key = jax.random.key(cfg.seed) if cfg.format.rounding == "stochastic" else None
  weights = evaluate.target_weights(len(windows), windows.shape[1], score_from)
  targets = windows[:, 1:]
  n_tokens = float(weights.sum())
  batch_size = cfg.batch_size or evaluate.auto_batch_size(len(ms), windows.shape[1], model.config.vocab)
  # Every call has len(M) configurations and the same window batch: one compilation in all.
  kw = dict(weights=weights, batch_size=batch_size, config_batch=len(ms), impl=cfg.impl, key=key)

  def evaluate_at(layer, precisions):
    if reuse_prefix:
      return evaluate.nll_sums(model, prefix.advance_to(layer), precisions, fmt, targets=targets,
                               start=layer, **kw)[0]
    return evaluate.nll_sums(model, windows, precisions, fmt, **kw)[0]

  todo = [(l, t) for l in layers for t in cfg.types
          if any(row_id(l, t, m) not in results.rows for m in ms)]
  logging.info("%d (layer, type) pairs x %d mantissa lengths, %d pairs to go", len(layers) * len(cfg.types),
               len(ms), len(todo))
  prefix = FloatPrefix(model, windows, batch_size) if reuse_prefix else None
  compiles_before = evaluate.total_compiles()
  t_study = time.time()
  if BASELINE not in results.rows:
    sums = evaluate_at(0, np.zeros((1, n_layers, 4), np.int32))
    results.append([dict(id=BASELINE, layer=None, type=BASELINE, mantissa_bits=0,
                         ppl=math.exp(sums[0] / n_tokens), nll=sums[0] / n_tokens, tokens=n_tokens)])
  for l, t in tqdm(todo, desc="sensitivity", unit="layer x type", disable=not is_main or not todo):
    sums = evaluate_at(l, layer_type_configs(n_layers, l, t, ms))
    results.append([dict(id=row_id(l, t, m), layer=l, type=t, mantissa_bits=m, ppl=math.exp(s / n_tokens),
                         nll=s / n_tokens, tokens=n_tokens) for m, s in zip(ms, sums)])
  seconds = time.time() - t_study
  n_compiles = evaluate.total_compiles() - compiles_before
  print(f"study: {len(todo)} (layer, type) pairs x {len(ms)} M in {seconds:.1f} s "
        f"({'prefix reuse' if reuse_prefix else 'from the embedding'}); compilations: {n_compiles}; "
        f"wall time {time.time() - t0:.1f} s")
  if is_main:
    report(results.dir)
  return Outcome(results.rows, seconds, n_compiles)


def report(run_dir, top: int = 10) -> str:
  """results.csv and heatmap.png from results.jsonl; prints and returns the top-k table."""
  run_dir = pathlib.Path(run_dir)
  rows = {r["id"]: r for r in run_files.read_jsonl(run_dir / "results.jsonl")}
  base = rows.pop(BASELINE)["ppl"]
  rows = sorted(rows.values(), key=lambda r: (r["layer"], r["type"], r["mantissa_bits"]))
  for r in rows:
    r["rel_increase"] = r["ppl"] / base - 1
  with (run_dir / "results.csv").open("w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=["id", "layer", "type", "mantissa_bits", "ppl", "rel_increase",
                                      "nll", "tokens"], extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
  worst = sorted(rows, key=lambda r: -r["rel_increase"])[:top]
  table = "\n".join([f"float model perplexity {base:.4f}; most sensitive (layer, type, M):"] +
                    [f"  layer {r['layer']:>3} {r['type']:>5} M={r['mantissa_bits']:<2} ppl {r['ppl']:.4f} "
                     f"({r['rel_increase']:+.2%})" for r in worst])
  print(table)
  _heatmap(run_dir, rows)
  return table


def _heatmap(run_dir: pathlib.Path, rows: list[dict]) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  layers = sorted({r["layer"] for r in rows})
  ms = sorted({r["mantissa_bits"] for r in rows})
  types = [t for t in anda_precision.MODULE_TYPES if any(r["type"] == t for r in rows)]
  cell = {(r["layer"], r["type"], r["mantissa_bits"]): r["rel_increase"] for r in rows}
  # A symmetric log scale: a few cells reach +100s of percent while the decision is made around
  # +-1%; red is worse than FP, blue better (truncation can lower perplexity a little).
  vmax = max(max(abs(v) for v in cell.values()) * 100, 1.0)
  norm = matplotlib.colors.SymLogNorm(linthresh=0.1, linscale=0.5, vmin=-vmax, vmax=vmax, base=10)
  fig, axes = plt.subplots(1, len(ms), figsize=(1.8 + 2.2 * len(ms), 1.5 + 0.2 * len(layers)),
                           squeeze=False, sharey=True)
  for ax, m in zip(axes[0], ms):
    grid = np.array([[cell.get((l, t, m), np.nan) for t in types] for l in layers])
    im = ax.imshow(grid * 100, cmap="RdBu_r", norm=norm, aspect="auto")
    ax.set(title=f"M = {m}", xticks=range(len(types)), yticks=range(len(layers)), yticklabels=layers)
    ax.set_xticklabels(types, rotation=45)
  axes[0][0].set_ylabel("layer")
  fig.colorbar(im, ax=axes[0].tolist(), label="perplexity increase over FP (%), symlog")
  fig.savefig(run_dir / "heatmap.png", dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  run_files.run_with_config(run, "Sensitivity configuration.")
