"""Perplexity sweep over group sizes x mantissa lengths, per module type and uniform.

    python -m experiments.sweep --config=configs/quickstart.py
    python -m experiments.sweep --config=configs/sweep_smollm2.py --config.format.rounding=nearest

Evaluates the FP-activation baseline, then for every group size G and mantissa length M:
each module type alone (the other types stay float) and all types uniformly. All
configurations of one G go through `evaluate.nll_sums` vmapped (and sharded over devices),
in fixed-size batches, so the run compiles once per (G, window shape).

Writes results/<run_name>/ :
  setup.json     the settings the rows are valid for; a rerun with other settings is refused
  results.jsonl  one line per configuration, appended and flushed as its batch completes;
                 a rerun skips every configuration already there (resume)
  results.csv    every row, with the perplexity increase over the baseline
  ppl_vs_m.png   perplexity vs M, one panel per group size, one line per type
  heatmap.png    G x M heatmap of the relative perplexity increase (all types uniform)
and prints a table. Multi-host: --config.distributed=True calls jax.distributed.initialize()
(run the same command on every host, e.g. under SLURM or with the JAX_COORDINATOR_* env
variables); the configuration batch is then sharded over every host's devices and only
process 0 writes files.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
import pathlib
import time

from absl import logging
import numpy as np

from anda_jax import data
from anda_jax import evaluate
from anda_jax import format as anda_format
from anda_jax import precision as anda_precision
from experiments import run_files


SWEEP_TYPES = anda_precision.MODULE_TYPES + ("all",)
BASELINE = "fp"
_SPLITS = ("calibration", "test")


# ---------------------------------------------------------------------- validation

def _key_paths(cfg, prefix="") -> set[str]:
  out = set()
  for k, v in cfg.items():
    out.add(prefix + k)
    if hasattr(v, "items"):
      out |= _key_paths(v, prefix + k + ".")
  return out


def check_keys(cfg, reference) -> None:
  """Unknown or missing keys (compared with the reference config) -> ValueError."""
  got, want = _key_paths(cfg), _key_paths(reference)
  if got - want:
    raise ValueError(f"unknown config keys {sorted(got - want)}; known keys: {sorted(want)}")
  if want - got:
    raise ValueError(f"missing config keys {sorted(want - got)}")


def check_ints(name, values, lo, hi) -> tuple[int, ...]:
  values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
  if not values or any(isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi for v in values):
    raise ValueError(f"{name}={values!r} is invalid: must be a non-empty list of integers in [{lo}, {hi}]")
  return values


def check_data_config(d) -> None:
  """The `data` section shared by the experiments: corpus, split, seq_len, stride, windows."""
  if d.corpus not in data.CORPORA and not pathlib.Path(d.corpus).expanduser().exists():
    raise ValueError(f"data.corpus={d.corpus!r} is neither a known corpus {data.CORPORA} nor an "
                     "existing file or folder")
  if d.split not in _SPLITS:
    raise ValueError(f"data.split={d.split!r} is invalid: must be one of {_SPLITS}")
  check_ints("data.seq_len", d.seq_len, 2, 1 << 20)
  if d.stride is not None:
    check_ints("data.stride", d.stride, 1, d.seq_len)
  if d.windows is not None:
    check_ints("data.windows", d.windows, 1, 1 << 30)


def check_model_config(m) -> None:
  from anda_jax import models  # pylint: disable=g-import-not-at-top

  if m.name not in models.REGISTRY and not pathlib.Path(m.name).expanduser().exists():
    raise ValueError(f"model.name={m.name!r} is neither a registry name {models.REGISTRY} nor an "
                     "existing GGUF file or checkpoint folder")


def check_group_size_fits(model, group_sizes, impl: str) -> None:
  """A group must fit in every activation it groups: G <= the smallest contraction length."""
  c = model.config
  # Inputs of qkv and up have d_model elements, of down d_ff, of o n_heads x head_dim (LLaMA).
  k_min = min([c.d_model, c.d_ff] + ([c.n_heads * c.head_dim] if hasattr(c, "head_dim") else []))
  for g in group_sizes:
    if g > k_min:
      raise ValueError(f"format.group_sizes holds {g}: larger than the model's smallest "
                       f"contraction length {k_min} (d_model={c.d_model}, d_ff={c.d_ff})")
  if impl == "bitserial":
    from anda_jax import bitserial  # pylint: disable=g-import-not-at-top
    from anda_jax import int4  # pylint: disable=g-import-not-at-top
    weights = [w for w in model.layers.get_value().values() if isinstance(w, int4.Int4Weights)]
    for g in group_sizes:
      for w in weights:
        bitserial.block_size(g, w.group_size)  # ValueError naming both sizes


def check_types(types, allowed) -> None:
  if not types or any(t not in allowed for t in types):
    raise ValueError(f"types={tuple(types)!r} is invalid: must be a non-empty subset of {allowed}")


def check_common(cfg) -> None:
  """The sections the sweep and the sensitivity study share."""
  check_model_config(cfg.model)
  check_data_config(cfg.data)
  check_ints("mantissa_bits", cfg.mantissa_bits, 1, anda_precision.MAX_MANTISSA_BITS)
  # AndaFormat validates exponent_bits and rounding with its own messages.
  anda_format.AndaFormat(exponent_bits=cfg.format.exponent_bits, rounding=cfg.format.rounding)
  if cfg.impl not in ("fake", "bitserial"):
    raise ValueError(f"impl={cfg.impl!r} is invalid: must be 'fake' or 'bitserial'")
  if cfg.batch_size is not None:
    check_ints("batch_size", cfg.batch_size, 1, 1 << 20)


def validate(cfg, reference) -> None:
  """Everything checkable before loading anything heavy; ValueError with a clear message."""
  check_keys(cfg, reference)
  check_common(cfg)
  check_ints("format.group_sizes", cfg.format.group_sizes, 1, anda_format.MAX_GROUP_SIZE)
  check_types(cfg.types, SWEEP_TYPES)
  if cfg.config_batch is not None:
    check_ints("config_batch", cfg.config_batch, 1, 1 << 20)


# ---------------------------------------------------------------------- results

class Results:
  """results.jsonl of a run folder: rows by id, appended and flushed as they come."""

  def __init__(self, run_dir: pathlib.Path, setup: dict, write: bool = True):
    self.dir, self.write = pathlib.Path(run_dir), write
    self.path = self.dir / "results.jsonl"
    run_files.check_setup(self.dir, setup, write)
    self.rows = {row["id"]: row for row in run_files.read_jsonl(self.path, repair=write)}

  def append(self, rows: list[dict]) -> None:
    for row in rows:
      self.rows[row["id"]] = row
    if self.write:
      run_files.append_jsonl(self.path, rows)


# ---------------------------------------------------------------------- the sweep

@dataclasses.dataclass(frozen=True)
class Config:
  id: str
  type: str
  group_size: int | None
  mantissa_bits: int
  precision: tuple[int, ...]


def sweep_configs(group_sizes, mantissa_bits, types) -> list[Config]:
  """The baseline, then for each G: each type (in `types`) x each M."""
  out = [Config(BASELINE, BASELINE, None, 0, (0,) * len(anda_precision.MODULE_TYPES))]
  for g in group_sizes:
    for t in types:
      for m in mantissa_bits:
        p = anda_precision.uniform(m) if t == "all" else anda_precision.single_type(t, m)
        out.append(Config(f"G{g}-{t}-M{m}", t, g, m, tuple(int(v) for v in p)))
  return out


def load_model_and_windows(cfg):
  """(model, windows int32 [n, seq_len], score_from) as the `model` and `data` sections say."""
  from anda_jax import models  # pylint: disable=g-import-not-at-top

  model, tokenizer = models.load(cfg.model.name, int4_group_size=cfg.model.int4_group_size)
  if tokenizer is None:
    raise ValueError(f"model.name={cfg.model.name!r} comes without a tokenizer (tokenizer.json)")
  d = cfg.data
  corpus = data.load_corpus(d.corpus)
  windows = data.token_windows(corpus.split(d.split), tokenizer, d.seq_len,
                               max_windows=d.windows, stride=d.stride)
  return model, windows, d.seq_len - (d.stride or d.seq_len)


def setup_of(cfg, windows) -> dict:
  """What the rows of a run are valid for."""
  d = cfg.data.to_dict()
  return dict(model=cfg.model.to_dict(), exponent_bits=cfg.format.exponent_bits,
              rounding=cfg.format.rounding, impl=cfg.impl, seed=cfg.seed, data=d,
              windows_shape=list(windows.shape),
              windows_sha256=hashlib.sha256(windows.tobytes()).hexdigest())


def maybe_initialize_distributed(cfg) -> None:
  if cfg.distributed:
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize()


def run(cfg) -> dict:
  """Runs (or resumes) a sweep; returns {id: row}."""
  import jax  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  validate(cfg, reference_config())
  maybe_initialize_distributed(cfg)
  t0 = time.time()
  model, windows, score_from = load_model_and_windows(cfg)
  check_group_size_fits(model, cfg.format.group_sizes, cfg.impl)
  logging.info("model %s, %d windows x %d tokens (%s split of %s), loaded in %.1f s",
               cfg.model.name, *windows.shape, cfg.data.split, cfg.data.corpus, time.time() - t0)
  is_main = jax.process_index() == 0
  results = Results(pathlib.Path(cfg.results_dir) / cfg.run_name, setup_of(cfg, windows), write=is_main)
  configs = sweep_configs(cfg.format.group_sizes, cfg.mantissa_bits, cfg.types)
  pending = [c for c in configs if c.id not in results.rows]
  logging.info("%d configurations, %d already done, %d to go", len(configs),
               len(configs) - len(pending), len(pending))
  key = jax.random.key(cfg.seed) if cfg.format.rounding == "stochastic" else None
  weights = evaluate.target_weights(len(windows), windows.shape[1], score_from)
  n_tokens = float(weights.sum())
  compiles_before = evaluate.total_compiles()
  bar = tqdm(total=len(pending), desc="sweep", unit="config", disable=not is_main or not pending)
  for g in cfg.format.group_sizes:
    # The baseline (M = 0 everywhere) ignores G: it rides along with the first G's batch.
    todo = [c for c in pending if c.group_size == g or (c.group_size is None and g == cfg.format.group_sizes[0])]
    if not todo:
      continue
    fmt = anda_format.AndaFormat(group_size=g, exponent_bits=cfg.format.exponent_bits,
                                 rounding=cfg.format.rounding)
    t_start = [time.time()]

    def on_batch(idx, sums, todo=todo, t_start=t_start):
      now = time.time()
      seconds = (now - t_start[0]) / len(idx)
      t_start[0] = now
      rows = []
      for i, s in zip(idx, sums):
        c = todo[i]
        nll = float(s / n_tokens)
        rows.append(dict(id=c.id, type=c.type, group_size=c.group_size, mantissa_bits=c.mantissa_bits,
                         precision=list(c.precision), ppl=math.exp(nll), nll=nll, tokens=n_tokens,
                         storage_bits=16.0 if c.group_size is None else fmt.storage_bits(c.mantissa_bits),
                         seconds=round(seconds, 3)))
      results.append(rows)
      bar.update(len(rows))

    evaluate.nll_sums(model, windows, np.array([c.precision for c in todo]), fmt, weights=weights,
                      batch_size=cfg.batch_size, config_batch=cfg.config_batch, impl=cfg.impl,
                      key=key, on_batch=on_batch)
  bar.close()
  n_compiles = evaluate.total_compiles() - compiles_before
  logging.info("compilations: %d (at most one per group size with work left: %d)", n_compiles,
               len({c.group_size or cfg.format.group_sizes[0] for c in pending}))
  print(f"compilations: {n_compiles}; wall time {time.time() - t0:.1f} s")
  if is_main:
    report(results.dir)
  return results.rows


# ---------------------------------------------------------------------- report

def _load_rows(run_dir: pathlib.Path) -> tuple[dict, list[dict]]:
  rows = run_files.read_jsonl(run_dir / "results.jsonl")
  by_id = {r["id"]: r for r in rows}
  return by_id.get(BASELINE), [r for r in by_id.values() if r["id"] != BASELINE]


def report(run_dir) -> str:
  """Writes results.csv and the plots from results.jsonl; prints and returns the table."""
  run_dir = pathlib.Path(run_dir)
  base, rows = _load_rows(run_dir)
  base_ppl = base["ppl"] if base else float("nan")
  fields = ["id", "type", "group_size", "mantissa_bits", "ppl", "rel_increase", "nll", "tokens",
            "storage_bits", "seconds"]
  with (run_dir / "results.csv").open("w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in ([base] if base else []) + sorted(rows, key=lambda r: (r["group_size"], r["type"], r["mantissa_bits"])):
      w.writerow(dict(r, rel_increase=r["ppl"] / base_ppl - 1))
  table = _table(base_ppl, rows)
  print(table)
  _plots(run_dir, base_ppl, rows)
  return table


def _increase(ratio: float) -> str:
  """ppl / ppl_fp as a percentage increase, or a factor once it is large."""
  if ratio < 2:
    return f"{ratio - 1:>+6.1%}"
  return f"{'x' + format(ratio, '.1f' if ratio < 1000 else '.0f'):>6}"


def _cell(ppl: float, base_ppl: float) -> str:
  return f"{ppl:>8.{2 if ppl < 1e5 else 0}f} ({_increase(ppl / base_ppl)})"


def _table(base_ppl: float, rows: list[dict]) -> str:
  ms = sorted({r["mantissa_bits"] for r in rows})
  lines = [f"FP-activation baseline perplexity: {base_ppl:.4f}",
           "perplexity (relative increase over the baseline)",
           f"{'G':>5} {'type':>5} " + " ".join(f"{'M=' + str(m):>16}" for m in ms)]
  cells = {(r["group_size"], r["type"], r["mantissa_bits"]): r["ppl"] for r in rows}
  for g in sorted({r["group_size"] for r in rows}):
    for t in SWEEP_TYPES:
      if not any((g, t, m) in cells for m in ms):
        continue
      vals = [cells.get((g, t, m)) for m in ms]
      lines.append(f"{g:>5} {t:>5} " + " ".join(
          f"{'-':>16}" if v is None else _cell(v, base_ppl) for v in vals))
  return "\n".join(lines)


def _plots(run_dir: pathlib.Path, base_ppl: float, rows: list[dict]) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  gs = sorted({r["group_size"] for r in rows})
  ms = sorted({r["mantissa_bits"] for r in rows})
  if not gs:
    return
  # Top: perplexity on a log scale (the collapse at small M). Bottom: the relative increase on a
  # symlog scale, linear within +-1%, where the choice of M is actually made.
  fig, axes = plt.subplots(2, len(gs), figsize=(4.5 * len(gs), 7), squeeze=False, sharey="row")
  for col, g in enumerate(gs):
    for t in SWEEP_TYPES:
      pts = sorted((r["mantissa_bits"], r["ppl"]) for r in rows if r["group_size"] == g and r["type"] == t)
      if pts:
        m, ppl = zip(*pts)
        axes[0][col].plot(m, ppl, marker="o", label=t)
        axes[1][col].plot(m, [100 * (p / base_ppl - 1) for p in ppl], marker="o", label=t)
    axes[0][col].axhline(base_ppl, color="k", ls="--", lw=1, label="FP activations")
    axes[0][col].set(title=f"G = {g}", yscale="log", xticks=ms)
    axes[1][col].axhline(0, color="k", ls="--", lw=1)
    axes[1][col].axhspan(-1, 1, color="k", alpha=0.08, label="within 1%")
    axes[1][col].set(xlabel="mantissa bits M", xticks=ms)
    axes[1][col].set_yscale("symlog", linthresh=1)
  axes[0][0].set_ylabel("perplexity")
  axes[1][0].set_ylabel("perplexity increase over FP (%)")
  axes[0][-1].legend(fontsize=8)
  axes[1][-1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(run_dir / "ppl_vs_m.png", dpi=120)
  plt.close(fig)

  uniform = {(r["group_size"], r["mantissa_bits"]): r["ppl"] / base_ppl for r in rows if r["type"] == "all"}
  if not uniform:
    return
  ratio = np.array([[uniform.get((g, m), np.nan) for m in ms] for g in gs])
  fig, ax = plt.subplots(figsize=(2.5 + 0.9 * len(ms), 1.6 + 0.5 * len(gs)))
  # Increases span from 0.1 % to several-fold: color by log(ppl / ppl_fp), label in percent.
  im = ax.imshow(np.log10(np.maximum(ratio, 1.0)), cmap="YlOrRd", aspect="auto", vmin=0)
  for (i, j), v in np.ndenumerate(ratio):
    if np.isfinite(v):
      ax.text(j, i, _increase(v).strip(), ha="center", va="center", fontsize=8)
  ax.set(xticks=range(len(ms)), xticklabels=ms, yticks=range(len(gs)), yticklabels=gs,
         xlabel="mantissa bits M", ylabel="group size G", title="ppl increase, all types")
  fig.colorbar(im, ax=ax, label="log10(ppl / ppl_fp)")
  fig.tight_layout()
  fig.savefig(run_dir / "heatmap.png", dpi=120)
  plt.close(fig)


def reference_config():
  # Key checks compare against the full sweep config, so a config file that drops or
  # misspells a key is caught too.
  from configs import sweep_smollm2  # pylint: disable=g-import-not-at-top
  return sweep_smollm2.get_config()


if __name__ == "__main__":
  run_files.run_with_config(run, "Sweep configuration.")
