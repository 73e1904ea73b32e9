"""Adaptive precision search on a real model, with test-split results, report and plot.

    python -m experiments.search --config=configs/search_quick.py
    python -m experiments.search --config=configs/search_smollm2.py --config.tolerances='(0.001,)'

Writes results/<run>/ :
  setup.json     what the rows below are valid for (model, format, windows' sha256, shapes)
  search.jsonl   one line per evaluated configuration and split, appended and flushed as
                 soon as it is known; a rerun skips every configuration already in it
  chosen.json    the configuration chosen for each tolerance
  report.md      tolerance, M per type, perplexity on calibration and test, mean M, storage
                 bits, BOPs saving, modeled speedup / energy vs FP16, format comparison
  pareto.png     calibration perplexity vs mean M: every evaluated configuration, the
                 Pareto front, the chosen configurations and the uniform-M curve
The report and the plot are drawn only from these files (`write_report(run_dir)`).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import time

from absl import logging
import numpy as np

from anda_jax import cost
from anda_jax import search as search_lib
from anda_jax.precision import MODULE_TYPES
from experiments import run_files

SPLITS = ("calibration", "test")


# ------------------------------------------------------------------- results file


def _row_key(split: str, config) -> tuple:
  return (split,) + search_lib.config_key(np.asarray(config))


class ResultsLog:
  """search.jsonl: one JSON line per (split, configuration), appended as soon as known."""

  def __init__(self, path: pathlib.Path, shape: cost.ModelShape | None = None):
    self.path, self.shape = pathlib.Path(path), shape
    self.rows = read_rows(self.path, repair=True)

  def cache(self, split: str) -> dict:
    """config_key -> perplexity of the rows of one split (for CachedEvaluator)."""
    return {search_lib.config_key(np.asarray(r["precision"])): r["perplexity"]
            for r in self.rows if r["split"] == split}

  def appender(self, split: str):
    def on_result(config: np.ndarray, perplexity: float) -> None:
      row = dict(split=split, precision=np.asarray(config).tolist(),
                 perplexity=float(perplexity), time=time.time())
      if self.shape is not None:
        row.update(mean_m=cost.mean_mantissa_bits(self.shape, config),
                   bops_saving=cost.summarize(self.shape, config)["bops_saving"])
      run_files.append_jsonl(self.path, [row])
      self.rows.append(row)
    return on_result


def read_rows(path: pathlib.Path, repair: bool = False) -> list[dict]:
  """The rows of a search.jsonl; a torn last line (interrupted write) is ignored."""
  rows = run_files.read_jsonl(path, repair)
  for i, row in enumerate(rows):
    if row.get("split") not in SPLITS or "precision" not in row or "perplexity" not in row:
      raise ValueError(f"{path}: row {i + 1} needs split in {SPLITS}, precision, perplexity")
  return rows


def _sha(windows: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(windows, np.int32).tobytes()).hexdigest()[:16]


# ------------------------------------------------------------------------- main


def run(cfg) -> pathlib.Path:
  """Runs (or resumes) a search described by `cfg`; returns the run directory."""
  # Heavy imports here, so the report code and its test need no model.
  from anda_jax import data, evaluate, models  # pylint: disable=g-import-not-at-top
  from anda_jax.format import AndaFormat  # pylint: disable=g-import-not-at-top

  for name in ("start_m", "min_m"):
    if not 1 <= cfg[name] <= 24:
      raise ValueError(f"{name}={cfg[name]}: must be in 1..24")
  if cfg.granularity not in ("type", "layer"):
    raise ValueError(f"granularity={cfg.granularity!r}: must be 'type' or 'layer'")
  run_dir = pathlib.Path(cfg.results_dir) / cfg.run_name
  run_dir.mkdir(parents=True, exist_ok=True)

  t0 = time.time()
  model, tokenizer = models.load(cfg.model.name, int4_group_size=cfg.model.int4_group_size)
  fmt = AndaFormat(group_size=cfg.format.group_size, exponent_bits=cfg.format.exponent_bits,
                   rounding=cfg.format.rounding)
  corpus = data.load_corpus(cfg.data.corpus)
  windows = {split: data.token_windows(corpus.split(split), tokenizer, cfg.data.seq_len,
                                       cfg.data[f"{split}_windows"]) for split in SPLITS}
  shape = cost.as_shape(model)
  per_layer = cfg.granularity == "layer"
  start = np.full((shape.n_layers, 4) if per_layer else (4,), cfg.start_m, np.int32)
  macs = shape.macs() if per_layer else shape.macs().sum(0)
  run_files.check_setup(run_dir, dict(
      model=cfg.model.name, int4_group_size=cfg.model.int4_group_size,
      format=dict(group_size=fmt.group_size, exponent_bits=fmt.exponent_bits,
                  rounding=fmt.rounding),
      corpus=cfg.data.corpus, seq_len=cfg.data.seq_len,
      windows={s: dict(n=int(len(w)), sha256=_sha(w)) for s, w in windows.items()},
      shape=dict(vars(shape))))
  logging.info("loaded model and data in %.1f s; windows %s", time.time() - t0,
               {s: w.shape for s, w in windows.items()})

  log = ResultsLog(run_dir / "search.jsonl", shape)
  evaluators = {
      split: search_lib.CachedEvaluator(
          lambda p, w=windows[split]: evaluate.perplexity(
              model, w, p, fmt, batch_size=cfg.eval_batch_size, config_batch=cfg.config_batch),
          batch_size=start.size, cache=log.cache(split), on_result=log.appender(split))
      for split in SPLITS}

  t0 = time.time()
  results = search_lib.search(evaluators["calibration"], macs, start, tuple(cfg.tolerances),
                              min_m=cfg.min_m)
  uniform = [np.full_like(start, m) for m in cfg.uniform_m]
  evaluators["calibration"](uniform)
  chosen = [r.precision for r in results.values()]
  evaluators["test"]([np.zeros_like(start)] + chosen + (uniform if cfg.test_uniform else []))
  elapsed = time.time() - t0
  logging.info("search and test evaluation: %.1f s, %d new configurations in %d calls", elapsed,
               sum(e.evaluated for e in evaluators.values()),
               sum(e.calls for e in evaluators.values()))

  (run_dir / "chosen.json").write_text(json.dumps(dict(
      granularity=cfg.granularity, start_m=cfg.start_m, min_m=cfg.min_m,
      uniform_m=list(cfg.uniform_m),
      chosen=[dict(tolerance=tol, precision=r.precision.tolist(), rounds=r.rounds,
                   path=[p.tolist() for p in r.path]) for tol, r in results.items()],
  ), indent=1) + "\n")
  write_report(run_dir)
  return run_dir


# ----------------------------------------------------------------------- report


def _fmt_config(config: np.ndarray) -> str:
  config = np.asarray(config)
  if config.ndim == 1:
    return ", ".join(str(int(m)) for m in config)
  # Per layer: mean M of each type over layers (the full config is in chosen.json).
  return ", ".join(f"{m:.1f}" for m in config.mean(0)) + " (layer mean)"


def write_report(run_dir) -> str:
  """report.md and pareto.png of a run, from its setup.json, search.jsonl, chosen.json."""
  run_dir = pathlib.Path(run_dir)
  setup = json.loads((run_dir / "setup.json").read_text())
  chosen = json.loads((run_dir / "chosen.json").read_text())
  shape = cost.ModelShape(**setup["shape"])
  group, ebits = setup["format"]["group_size"], setup["format"]["exponent_bits"]
  rows = read_rows(run_dir / "search.jsonl")
  ppl = {s: {search_lib.config_key(np.asarray(r["precision"])): r["perplexity"]
             for r in rows if r["split"] == s} for s in SPLITS}
  cal_rows = [r for r in rows if r["split"] == "calibration"]
  if not cal_rows:
    raise ValueError(f"{run_dir / 'search.jsonl'} holds no calibration rows")
  like = np.asarray(cal_rows[0]["precision"])
  fp = {s: ppl[s].get(search_lib.config_key(np.zeros_like(like))) for s in SPLITS}

  def perplexity(split, config):
    value = ppl[split].get(search_lib.config_key(np.asarray(config)))
    if value is None:
      return "–", "–"
    loss = "–" if fp[split] is None else f"{100 * (value / fp[split] - 1):+.2f}%"
    return f"{value:.3f}", loss

  def line(label, config):
    s = cost.summarize(shape, config, group, ebits)
    (pc, lc), (pt, lt) = perplexity("calibration", config), perplexity("test", config)
    return (f"| {label} | {_fmt_config(config)} | {pc} | {lc} | {pt} | {lt} | "
            f"{s['mean_m']:.2f} | {s['storage_bits']:.2f} | {100 * s['bops_saving']:.1f}% | "
            f"{s['speedup_vs_fp16']:.2f}x | {s['energy_saving_vs_fp16']:.2f}x |")

  w = setup["windows"]
  out = [
      f"# Adaptive precision search: {run_dir.name}", "",
      f"Model `{setup['model']}` (int4_group_size={setup['int4_group_size']}), Anda format "
      f"G={group}, exponent bits={ebits}, rounding={setup['format']['rounding']}; corpus "
      f"`{setup['corpus']}`, windows of {setup['seq_len']} tokens: "
      f"{w['calibration']['n']} calibration, {w['test']['n']} test. Granularity "
      f"{chosen['granularity']}, start M={chosen['start_m']}, min M={chosen['min_m']}; "
      f"{len(cal_rows)} configurations evaluated on calibration.", "",
      "M per type is (" + ", ".join(MODULE_TYPES) + "); 0 = FP16. Loss is ppl / ppl_FP - 1 "
      "on the same windows. Storage bits per activation element (FP16: 16); BOPs saving vs "
      "FP16 activations x INT4 weights; speedup and energy are modeled "
      "(`anda_jax.cost.Accelerator`, assumptions in its docstring) against the GPU-like "
      "FP16xFP16 baseline; the FP16-activations row runs its FP16 inputs on the Anda unit "
      "pre-aligned (FIGNA-like).", "",
      "| tolerance | M per type | ppl calib | loss calib | ppl test | loss test | mean M "
      "| storage bits | BOPs saving | speedup vs FP16 | energy saving vs FP16 |",
      "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
      line("FP16 activations", np.zeros_like(like)),
  ]
  for c in chosen["chosen"]:
    config = np.asarray(c["precision"])
    over = ppl["calibration"].get(search_lib.config_key(config))
    flag = "" if over is None or fp["calibration"] is None or (
        over / fp["calibration"] - 1 <= c["tolerance"]) else " (start over tolerance)"
    out.append(line(f"{100 * c['tolerance']:g}%{flag}", config))
  for m in chosen["uniform_m"]:
    out.append(line(f"uniform M={m}", np.full_like(like, m)))
  out += ["", "## The chosen configurations in other activation formats", ""]
  for c in chosen["chosen"]:
    out += [f"Tolerance {100 * c['tolerance']:g}%: M = {_fmt_config(np.asarray(c['precision']))}",
            "", cost.format_table(cost.compare_formats(shape, np.asarray(c["precision"]),
                                                        group, ebits)), ""]
  out += ["![Pareto plot](pareto.png)", ""]
  text = "\n".join(out)
  (run_dir / "report.md").write_text(text)
  _plot(run_dir, shape, cal_rows, chosen, fp["calibration"], like)
  return text


def _plot(run_dir, shape, cal_rows, chosen, fp_ppl, like) -> None:
  """Left: every point, log scale; right: zoomed on the tolerances around FP."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  points = sorted((cost.mean_mantissa_bits(shape, r["precision"]), r["perplexity"])
                  for r in cal_rows if np.asarray(r["precision"]).min() > 0)
  front, best = [], np.inf
  for xi, yi in points:  # the lowest perplexity at or below each mean M
    if yi < best:
      best = yi
      front.append((xi, yi))
  ppl = {search_lib.config_key(np.asarray(r["precision"])): r["perplexity"] for r in cal_rows}
  uni = [(m, ppl[search_lib.config_key(np.full_like(like, m))]) for m in chosen["uniform_m"]
         if search_lib.config_key(np.full_like(like, m)) in ppl]
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
  for ax in axes:
    if points:
      ax.scatter(*zip(*points), s=10, c="0.7", label="evaluated (calibration)")
      ax.plot(*zip(*front), "-", c="C0", label="Pareto front")
    if uni:
      ax.plot(*zip(*uni), "s--", c="C1", label="uniform M (block FP)")
    for i, c in enumerate(chosen["chosen"]):
      key = search_lib.config_key(np.asarray(c["precision"]))
      if key in ppl:
        ax.plot(cost.mean_mantissa_bits(shape, c["precision"]), ppl[key], "*", ms=14,
                c=f"C{2 + i}", label=f"chosen, tolerance {100 * c['tolerance']:g}%")
    if fp_ppl is not None:
      ax.axhline(fp_ppl, c="k", lw=0.8, ls=":", label="FP16 activations")
      for i, c in enumerate(chosen["chosen"]):
        ax.axhline(fp_ppl * (1 + c["tolerance"]), c=f"C{2 + i}", lw=0.6, ls=":")
    ax.set_xlabel("mean mantissa bits M̄ (MAC-weighted)")
    ax.set_ylabel("perplexity (calibration)")
  ys = [y for _, y in points] + [y for _, y in uni]
  if ys and min(ys) > 0 and max(ys) / min(ys) > 3:  # low M blows up: log keeps the rest visible
    axes[0].set_yscale("log")
  axes[0].set_title(f"{run_dir.name}: all evaluated configurations")
  axes[0].legend(fontsize=8)
  if fp_ppl is not None and ys:
    top = fp_ppl * (1 + 3 * max([c["tolerance"] for c in chosen["chosen"]] + [0.01]))
    near = [(x, y) for x, y in points + uni if y <= top]
    axes[1].set_ylim(min(ys + [fp_ppl]) - 0.002 * fp_ppl, top)
    if near:
      xs = [x for x, _ in near]
      axes[1].set_xlim(min(xs) - 0.25, max(xs) + 0.25)
  axes[1].set_title("near FP16 (dotted: FP and FP x (1 + tolerance))")
  fig.tight_layout()
  fig.savefig(run_dir / "pareto.png", dpi=110)
  plt.close(fig)


def run_and_report(cfg) -> None:
  t0 = time.time()
  run_dir = run(cfg)
  print((run_dir / "report.md").read_text())
  print(f"\nwrote {run_dir} in {time.time() - t0:.1f} s")


if __name__ == "__main__":
  run_files.run_with_config(run_and_report, "Search configuration.")
