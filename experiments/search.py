"""Adaptive precision search on a real model, with test-split results, report and plot.

    python -m experiments.search --config=configs/search.py:quick
    python -m experiments.search --config=configs/search.py --config.tolerances='(0.001,)'
    python -m experiments.search --config=configs/search.py --config.granularity=layer \
        --config.run_name=search_smollm2_layer

The search (anda_jax.precision_search) runs on the `data` windows (the calibration split): a
candidate fits a tolerance if the upper end of the paired-bootstrap interval of its loss
against FP is within it (rule="upper"; rule="point": its estimate, the paper's rule). Racing
(race_windows) drops candidates that are clearly over the tolerance on a first slice of the
windows; the bound skips the candidates that cannot be chosen (bound); with
granularity="layer" each candidate runs from the hidden state entering its lowered layer under
the current configuration (prefix_reuse). FP, the chosen configurations, (with test.uniform)
the uniform-M curve and (with test.path) every configuration each search accepted are then
evaluated on test.windows windows of the test split, from other articles, and so is each of
`other_formats` (OCP MX, NVFP4, per-token FP8 / INT8) at all four sites. `start_types` starts
from M per type instead of start_m (e.g. a per-layer search refining a per-type result); the
`cost` block sets the modeled accelerator of the report (anda_jax.cost.Accelerator), recorded in
chosen.json, not in the rows. `candidates` (experiments/search_candidates.py) makes each entry
choose among a list of formats (MX, NVFP4, per-token) instead of Anda's M, walking down their
storage bits from floating point (docs/formats.md, section 10): the same windows, rule, racing
and bound, and the report's figures for the mixed configuration (formats per entry, mean
storage bits, losses, modeled cost). Before anything is evaluated, each tolerance must be at
least twice the half-width its calibration tokens give, as the noise-floor study `noise_floor`
predicts it (experiments/search_resolution.py): a search that cannot resolve one is refused,
naming the tokens it needs, unless allow_unresolved=True.

Writes results/<run>/ :
  setup.json     what the rows below are valid for (model, format, windows' sha256, shapes)
  search.jsonl   one line per evaluated configuration (or other format) and split with its
                 per-window NLL sums, appended and flushed as soon as it is known; a rerun
                 skips what is in it
  chosen.json    the configuration chosen for each tolerance (searching among formats, also
                 the format of each entry), its mean storage bits per activation element and
                 its losses with their intervals, those of the uniform configurations,
                 the noise floor, whether the calibration tokens resolve each tolerance
                 (`resolution`, and `allow_unresolved`), and what racing, the bound and
                 prefix reuse saved
  work.json      what each process of the run did (seconds, window evaluations, layer passes),
                 kept up to date as results come, so a resumed run reports its whole work
  report.md      tolerance, M per type, perplexity and loss [interval] on calibration and test,
                 mean M, storage bits, BOPs saving, modeled speedup / energy vs FP16, whether
                 each tolerance is below the calibration set's noise floor; the chosen
                 configurations next to the other formats (measured perplexities and modeled
                 costs), and how the modeled ratios move with each cost assumption
  pareto.png     calibration perplexity vs mean M (searching among formats: mean storage
                 bits) with intervals: every evaluated configuration, the Pareto front, the
                 chosen configurations and the uniform curve (each format at every site)
  path.png       (test.path) the loss of each accepted configuration on calibration and on
                 test, round by round, one panel per tolerance
The report and the plot are drawn only from these files (`search_report.write_report(run_dir)`).
Finished runs on the same test windows (Anda with either rounding, mixed MX, NVFP4 and MX) are
compared with each other, paired, by experiments/search_compare.py.
"""

from __future__ import annotations

import json
import math
import pathlib
import time

from absl import logging
import numpy as np
import tqdm

from anda_jax.checks import check_int
from anda_jax import cost
from anda_jax.evaluation import evaluate
from anda_jax.evaluation.window_evaluator import WindowEvaluator
from anda_jax.matmul import ProductSpec
from anda_jax import precision as anda_precision
from anda_jax.precision import MAX_MANTISSA_BITS, MIN_MANTISSA_BITS, MODULE_TYPES
from anda_jax import precision_search
from configs import search as search_config
from experiments.harness import cli
from experiments.harness import config_checks
from experiments.harness import distributed
from experiments.harness import loading
from experiments.harness import perplexity
from experiments.harness import reports
from experiments.harness import run_folder
from experiments.search_log import SPLITS, SearchLog, WorkLog
from experiments import search_report
from experiments import search_candidates
from experiments import search_resolution

def validate(cfg) -> None:
  """Everything checkable before loading anything heavy or writing a file; ValueError with a
  clear message."""
  config_checks.check_config(cfg, search_config.get_config())
  config_checks.one_group_size(cfg, "search")
  if cfg.data.split != SPLITS[0]:
    raise ValueError(f"data.split={cfg.data.split!r} is invalid: the search runs on "
                     f"{SPLITS[0]!r} and is checked on {SPLITS[1]!r}")
  config_checks.check_optional_int("test.windows", cfg.test.windows, 1)
  for name in ("uniform", "path"):
    if not isinstance(cfg.test[name], bool):
      raise ValueError(f"test.{name}={cfg.test[name]!r} is invalid: must be True or False")
  for name in ("start_m", "min_m"):
    check_int(name, cfg[name], MIN_MANTISSA_BITS, MAX_MANTISSA_BITS)
  if cfg.start_types is not None:
    if len(cfg.start_types) != len(MODULE_TYPES):
      raise ValueError(f"start_types={cfg.start_types!r} is invalid: must be one M per type "
                       f"{MODULE_TYPES}, or None")
    config_checks.check_ints("start_types", cfg.start_types, MIN_MANTISSA_BITS, MAX_MANTISSA_BITS)
  start = cfg.start_m if cfg.start_types is None else min(cfg.start_types)
  if cfg.min_m > start:
    name = "start_m" if cfg.start_types is None else "every start_types entry"
    raise ValueError(f"min_m={cfg.min_m} is invalid: must be at most {name}={start}")
  config_checks.check_ints("uniform_m", cfg.uniform_m, MIN_MANTISSA_BITS, MAX_MANTISSA_BITS)
  tolerances = cfg.tolerances
  if (not isinstance(tolerances, (list, tuple)) or not tolerances
      or any(isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0
             for t in tolerances)):
    raise ValueError(f"tolerances={tolerances!r} is invalid: must be a non-empty list of finite "
                     "numbers >= 0 (relative perplexity increases, 0.01 = 1%)")
  if cfg.granularity not in ("type", "layer"):
    raise ValueError(f"granularity={cfg.granularity!r} is invalid: must be 'type' or 'layer'")
  if cfg.rule not in precision_search.RULES:
    raise ValueError(f"rule={cfg.rule!r} is invalid: must be one of {precision_search.RULES}")
  config_checks.check_optional_int("race_windows", cfg.race_windows, 1)
  config_checks.check_optional_int("max_rounds", cfg.max_rounds, 0)
  check_int("max_accept", cfg.max_accept, 1, None)
  if (isinstance(cfg.race_level, bool) or not isinstance(cfg.race_level, float)
      or not 0 < cfg.race_level < 1):
    raise ValueError(f"race_level={cfg.race_level!r} is invalid: must be a number in (0, 1)")
  for name in ("prefix_reuse", "bound"):
    if not isinstance(cfg[name], bool):
      raise ValueError(f"{name}={cfg[name]!r} is invalid: must be True or False")
  if cfg.race_windows is not None and (cfg.window_batch is None
                                       or cfg.race_windows % cfg.window_batch):
    raise ValueError(f"race_windows={cfg.race_windows} is invalid with window_batch="
                     f"{cfg.window_batch}: racing needs window_batch set to a divisor of "
                     "race_windows, so that the slice and the rest are whole batches of one size "
                     "(the batch size can change float results in the last bits)")
  if cfg.race_windows is not None and cfg.format.rounding == "stochastic":
    raise ValueError("race_windows=%r is invalid with format.rounding='stochastic': its draws "
                     "depend on the window batch, so a slice would draw other numbers than the "
                     "whole; set race_windows=None" % cfg.race_windows)
  config_checks.other_formats(cfg)
  search_candidates.check(cfg)
  cost.accelerator(cfg.cost.to_dict())
  if cfg.data.windows is not None:  # else checked once the windows are loaded
    search_resolution.check(cfg, cfg.data.windows)


def setup_of(cfg, windows: dict | None, shape: cost.ModelShape | None, model_digest: str) -> dict:
  """What the rows of a search are valid for: the settings that change a result, the model's
  content (sha256) and the windows' checksums. windows and shape None: the part known before
  anything is loaded (for run_folder.check_setup(partial=True))."""
  f = cfg.format
  setup = dict(
      model=cfg.model.name, int4_group_size=cfg.model.int4_group_size,
      format=dict(group_size=f.group_sizes[0], exponent_bits=f.exponent_bits, rounding=f.rounding),
      corpus=cfg.data.corpus, seq_len=cfg.data.seq_len)
  if windows is not None:
    setup["windows"] = {s: dict(n=int(len(w)), sha256=run_folder.windows_sha256(w)[:16])
                        for s, w in windows.items()}
  if shape is not None:
    setup["shape"] = dict(vars(shape))
  setup.update(model_sha256=model_digest, window_batch=cfg.window_batch,
               config_batch=cfg.config_batch)
  # Settings the first recorded runs did not have appear only where they differ from what those
  # runs used, so that their setup.json (docs/results/search_smollm2/) still reads the same.
  # matmul_precision: those runs had float32 products (a CPU's), which "highest" is everywhere.
  precision = cfg.model.matmul_precision
  candidates = search_candidates.formats(cfg)
  extra = dict(stride=cfg.data.stride, impl=None if cfg.impl == "fake" else cfg.impl,
               matmul_precision=None if precision == "highest" else precision,
               seed=cfg.seed if f.rounding == "stochastic" else None,
               candidates=None if candidates is None else list(candidates))
  return (setup | {k: v for k, v in extra.items() if v is not None} | run_folder.finetune_setup(cfg)
          | run_folder.mesh_setup(cfg))


def run(cfg) -> pathlib.Path:
  """Runs (or resumes) a search described by `cfg`; returns the run directory."""
  validate(cfg)
  distributed.maybe_initialize_distributed(cfg)
  digest = loading.model_sha256(cfg.model.name)
  loading.check_finetune_file(cfg, digest)
  with run_folder.open_run(cfg, setup_of(cfg, None, None, digest)) as folder:
    _run(cfg, folder, digest)
  return folder


def _load(cfg):
  """(model, windows {split: int32 [n, seq_len]}, other formats {name: format}, mesh, whether
  the windows start with BOS), each checked against the others before anything is evaluated."""
  mesh = distributed.mesh_of(cfg)  # before loading: a shape that does not fit the devices is refused
  model, tokenizer = loading.load_model(cfg.model, cfg.finetune)
  config_checks.check_group_size_fits(model, cfg.format.group_sizes, cfg.impl)
  others = config_checks.other_formats(cfg)
  distributed.check_mesh_fits(
      model, mesh, [search_candidates.product_spec(cfg)]
      + [ProductSpec(f, cfg.impl) for f in others.values()])
  windows = loading.load_windows(cfg.data, tokenizer,
                                 dict(zip(SPLITS, (cfg.data.windows, cfg.test.windows))),
                                 dict(zip(SPLITS, ("data.windows", "test.windows"))))
  loading.check_model_fits(cfg, model, windows)
  return model, windows, others, mesh, loading.bos_first(cfg.data, tokenizer)


def _chosen_record(cfg, walk, shape, results, loss, floor, race, prefix_reuse, others, work,
                   resolution, uniform) -> dict:
  """chosen.json: the search's settings, the configuration chosen for each tolerance with its
  mean storage bits per activation element, its losses on both splits (and for a search among
  formats the format of each entry), the uniform configurations' (`uniform`: what a plot of
  loss against bits across runs reads), whether the calibration tokens resolve each tolerance
  (search_resolution), and what the run's processes evaluated, summed (work.json has each
  one's)."""
  bits = lambda config: cost.format_storage_bits(shape, config, walk.spec.fmt)
  names = (lambda config: {}) if walk.names is None else (
      lambda config: dict(formats=search_candidates.entry_names(config, walk.names)))
  return dict(
      candidates=search_candidates.ANDA if walk.names is None else list(walk.names),
      granularity=cfg.granularity, min_m=cfg.min_m,
      start_m=cfg.start_m if cfg.start_types is None else list(cfg.start_types),
      uniform_m=list(cfg.uniform_m), rule=cfg.rule, interval=perplexity.INTERVAL_METHOD,
      race_windows=race, race_level=cfg.race_level, prefix_reuse=prefix_reuse,
      max_rounds=cfg.max_rounds, max_accept=cfg.max_accept, bound=cfg.bound,
      test_path=cfg.test.path,
      other_formats=list(others), cost=cfg.cost.to_dict(),
      allow_unresolved=cfg.allow_unresolved, resolution=resolution,
      noise_floor=None if floor is None else floor[0],
      chosen=[dict(tolerance=tol, precision=r.precision.tolist(), **names(r.precision),
                   storage_bits=bits(r.precision), rounds=r.rounds,
                   within_tolerance=r.within_tolerance,
                   below_noise_floor=None if floor is None else tol < floor[0],
                   loss={split: perplexity.interval_record(loss[split][tol]) for split in SPLITS},
                   candidates=r.candidates, dropped_by_racing=r.dropped,
                   skipped_by_bound=r.skipped,
                   path=[p.tolist() for p in r.path]) for tol, r in results.items()],
      uniform=[dict(label=label, precision=c.tolist(), storage_bits=bits(c),
                    loss={split: perplexity.interval_record(i)
                          for split, i in uniform[label].items()})
               for label, c in walk.uniform],
      work=work)


def _run(cfg, run_dir: pathlib.Path, digest: str) -> None:
  t0 = time.time()
  model, windows, others, mesh, bos = _load(cfg)
  # Before anything is evaluated: the split may hold fewer windows than asked for.
  resolution = search_resolution.check(cfg, len(windows[SPLITS[0]]), digest, bos)
  shape = cost.as_shape(model)
  walk = search_candidates.walk(cfg, shape)
  spec, start = walk.spec, walk.start
  macs = shape.macs() if start.ndim == 2 else shape.macs().sum(0)
  is_main = distributed.is_main()
  log = SearchLog(run_dir, setup_of(cfg, windows, shape, digest) | run_folder.weights_setup(model)
                  | run_folder.bos_setup(bos),
                  write=is_main, shape=shape, fmt=spec.fmt)
  logging.info("loaded model and data in %.1f s; windows %s", time.time() - t0,
               {s: w.shape for s, w in windows.items()})

  n_cal = len(windows[SPLITS[0]])
  race = cfg.race_windows if cfg.race_windows is not None and cfg.race_windows < n_cal else None
  config_batch = cfg.config_batch or len(MODULE_TYPES)  # one layer's candidates per pass
  batch = cfg.window_batch or evaluate.auto_batch_size(config_batch, cfg.data.seq_len,
                                                        model.config.vocab)
  window_evaluators, evaluators = {}, {}

  def record_work():
    ev = window_evaluators[SPLITS[0]]
    work.record(calibration_window_evaluations=evaluators[SPLITS[0]].window_evaluations,
                layer_passes=ev.layer_passes,
                layer_passes_without_prefix_reuse=ev.layer_passes_without_reuse)

  def on_result(split):  # the row, then this process's work so far
    append = log.appender(split, window_evaluators[split].window_tokens)
    return lambda config, sums: (append(config, sums), record_work())

  for split in SPLITS:
    window_evaluators[split] = ev = WindowEvaluator(
        model, windows[split], spec, score_from=loading.score_from(cfg.data), batch_size=batch,
        config_batch=config_batch, mesh=mesh, reuse_prefix=cfg.prefix_reuse,
        key=config_checks.rounding_key(cfg) if spec.stochastic else None)
    # config_batch per call: each call's rows are appended as it returns (one layer's
    # candidates in a per-layer round), so an interrupted round loses little.
    evaluators[split] = precision_search.CachedEvaluator(
        ev, ev.window_tokens, batch_size=config_batch, cache=log.cache(split),
        on_result=on_result(split))

  work = WorkLog(run_dir, write=is_main, resumed=bool(log.rows))  # seconds count from here
  cal = evaluators[SPLITS[0]]
  results = precision_search.search(cal, macs, start, tuple(cfg.tolerances), min_m=cfg.min_m,
                                    rule=cfg.rule, race_windows=race, race_level=cfg.race_level,
                                    max_rounds=cfg.max_rounds, max_accept=cfg.max_accept,
                                    bound=cfg.bound, ladder=walk.ladder)
  work.search_done()
  uniform = [c for _, c in walk.uniform]
  cal(uniform)
  fp = np.zeros_like(start)
  chosen = [r.precision for r in results.values()]
  evaluators["test"]([fp] + chosen + (uniform if cfg.test.uniform else [])
                     + ([c for r in results.values() for c in r.path] if cfg.test.path else []))
  measure_formats(log, model, windows, others, cfg, batch, mesh, np.ones_like(start))
  logging.info("search %.1f s; with the uniform curve and the test split %.1f s; %d new "
               "configurations in %d calls", work.search_seconds, time.time() - work.t0,
               sum(e.evaluated for e in evaluators.values()),
               sum(e.calls for e in evaluators.values()))

  if is_main:
    floor = search_report.noise_floor(search_report.rows_by_key(log.rows.values(), SPLITS[0]))
    interval = lambda e, config: precision_search.loss_interval(e([config])[0], e([fp])[0],
                                                               e.window_tokens)
    loss = {split: {tol: interval(e, r.precision) for tol, r in results.items()}
            for split, e in evaluators.items()}
    uniform_loss = {label: {split: interval(e, c) if e.known(c) == e.n_windows else None
                            for split, e in evaluators.items()} for label, c in walk.uniform}
    # Racing's saving: the windows of the candidates it dropped that were never needed later.
    saved = sum(n_cal - len(s) for s in cal.cache.values() if len(s) < n_cal)
    record_work()
    ev = window_evaluators[SPLITS[0]]
    reports.write_text(run_dir / "chosen.json", json.dumps(_chosen_record(
        cfg, walk, shape, results, loss, floor, race, ev.reuse, others,
        work.total() | dict(saved_by_racing=saved), resolution, uniform_loss), indent=1) + "\n")
    search_report.write_report(run_dir)


def measure_formats(log: SearchLog, model, windows: dict, others: dict, cfg, batch: int, mesh,
                    sites: np.ndarray) -> None:
  """Each other format (name -> format object) at every site on both splits' windows, for the
  report's table of the chosen configurations in other formats: a row per (split, format) in
  search.jsonl, skipped where one on all the split's windows is there (resumable)."""
  for name, fmt in tqdm.tqdm(others.items(), desc="other formats", unit="format",
                             disable=not others):
    for split in SPLITS:
      row = search_report.rows_by_key(log.rows.values(), split, name).get(anda_precision.config_key(sites))
      if row is not None and search_report.n_windows(row) >= len(windows[split]):
        continue
      ev = WindowEvaluator(model, windows[split], ProductSpec(fmt, cfg.impl),
                           score_from=loading.score_from(cfg.data), batch_size=batch,
                           config_batch=1, mesh=mesh, reuse_prefix=False)
      log.appender(split, ev.window_tokens, name)(sites, ev([sites], slice(None))[0])


def run_and_report(cfg) -> None:
  t0 = time.time()
  run_dir = run(cfg)
  print((run_dir / "report.md").read_text())
  print(f"\nwrote {run_dir} in {time.time() - t0:.1f} s")


if __name__ == "__main__":
  cli.run_with_config(run_and_report, "Search configuration.")
