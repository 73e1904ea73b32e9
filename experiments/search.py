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
chosen.json, not in the rows.

Writes results/<run>/ :
  setup.json     what the rows below are valid for (model, format, windows' sha256, shapes)
  search.jsonl   one line per evaluated configuration (or other format) and split with its
                 per-window NLL sums, appended and flushed as soon as it is known; a rerun
                 skips what is in it
  chosen.json    the configuration chosen for each tolerance, its losses with their intervals,
                 the noise floor, and what racing, the bound and prefix reuse saved
  work.json      what each process of the run did (seconds, window evaluations, layer passes),
                 kept up to date as results come, so a resumed run reports its whole work
  report.md      tolerance, M per type, perplexity and loss [interval] on calibration and test,
                 mean M, storage bits, BOPs saving, modeled speedup / energy vs FP16, whether
                 each tolerance is below the calibration set's noise floor; the chosen
                 configurations next to the other formats (measured perplexities and modeled
                 costs), and how the modeled ratios move with each cost assumption
  pareto.png     calibration perplexity vs mean M with intervals: every evaluated configuration,
                 the Pareto front, the chosen configurations and the uniform-M curve
  path.png       (test.path) the loss of each accepted configuration on calibration and on
                 test, round by round, one panel per tolerance
The report and the plot are drawn only from these files (`write_report(run_dir)`).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import pathlib
import time

from absl import logging
import numpy as np
import tqdm

from anda_jax import cost
from anda_jax import formats
from anda_jax import precision_search
from anda_jax.checks import check_int
from anda_jax.matmul import ProductSpec
from anda_jax.precision import MAX_MANTISSA_BITS, MIN_MANTISSA_BITS, MODULE_TYPES
from configs import search as search_config
from experiments import common
from experiments import formats_report

SPLITS = common.SPLITS  # rows carry their split: the search runs on the first, is checked on the second
ANDA = formats_report.ANDA  # the `format` of Anda's rows (rows without one are Anda's)


# ------------------------------------------------------------------- results file


def check_row(row) -> None:
  """ValueError unless `row` is a row of search.jsonl: split, precision (M per type, or per
  layer and type), perplexity (null where it is not finite) and, in rows of runs since the
  intervals, window_nll (per-window NLL sums, null where not finite) with window_tokens."""
  common.check_fields(row, ("split", "precision", "perplexity"))
  if row["split"] not in SPLITS:
    raise ValueError(f"split={row['split']!r} is not one of {SPLITS}")
  config = np.asarray(row["precision"])
  if config.dtype.kind not in "iu" or config.ndim not in (1, 2) or config.shape[-1] != 4:
    raise ValueError(f"precision={row['precision']!r} is not M per type [4] or per layer [L, 4]")
  if not isinstance(row.get("format", ANDA), str):
    raise ValueError(f"format={row['format']!r} is not a format name")
  if row["perplexity"] is not None and not isinstance(row["perplexity"], (int, float)):
    raise ValueError(f"perplexity={row['perplexity']!r} is not a number or null")
  if "window_nll" in row:
    sums, tokens = row["window_nll"], row.get("window_tokens")
    if (not isinstance(sums, list) or not sums or not isinstance(tokens, list)
        or len(tokens) != len(sums)
        or any(s is not None and not isinstance(s, (int, float)) for s in sums)
        or any(not isinstance(t, (int, float)) for t in tokens)):
      raise ValueError("window_nll and window_tokens are not two lists of numbers of one length")


def read_rows(path: pathlib.Path, repair: bool = False) -> list[dict]:
  """The rows of a search.jsonl. A broken line is skipped with a warning (with `repair`: moved
  to search.jsonl.broken); `perplexity` is None where it is not finite."""
  return [dict(r, perplexity=common.finite_or_none(r["perplexity"]))
          for r in common.read_jsonl(path, repair, check_row)]


def window_sums(row: dict) -> np.ndarray | None:
  """A row's per-window NLL sums, float64 [k] (inf where not finite: over every tolerance);
  None for rows of runs before the intervals, which do not hold them."""
  if "window_nll" not in row:
    return None
  return np.array([math.inf if s is None else s for s in row["window_nll"]], np.float64)


class SearchLog(common.Results):
  """search.jsonl: one JSON line per (split, configuration), appended as soon as known, with the
  per-window NLL sums (window_nll, window_tokens) the intervals are computed from. A row covers
  the first `windows` windows of its split: all of them, or for a candidate that racing
  dropped, the first slice (a later row of the same configuration with more windows replaces
  it). With a model shape, rows also carry the configuration's mean M and BOPs saving. A
  perplexity that is not finite is recorded as null with "finite": false, and fails every
  tolerance."""

  name = "search.jsonl"

  @staticmethod
  def key(row: dict) -> tuple:
    return (row["split"], row.get("format", ANDA)) + precision_search.config_key(
        np.asarray(row["precision"]))

  def check_row(self, row) -> None:
    check_row(row)

  def __init__(self, run_folder: pathlib.Path, setup: dict | None = None, write: bool = True,
               shape: cost.ModelShape | None = None):
    super().__init__(run_folder, setup, write)
    self.shape = shape

  def cache(self, split: str) -> dict:
    """config_key -> per-window NLL sums [k] of the rows of one split (for CachedEvaluator).
    Rows of older runs, without per-window sums, are left out: their configurations are
    evaluated again when the search needs them."""
    return {key[2:]: window_sums(row) for key, row in self.rows.items()
            if key[:2] == (split, ANDA) and "window_nll" in row}

  def appender(self, split: str, window_tokens: np.ndarray, fmt: str = ANDA):
    """on_result(config, per-window sums [k]) for CachedEvaluator: appends the row of the first
    k windows of `split` (window_tokens: scored tokens of every window of the split). With
    another format (its name), the row is that format's at the sites where config is not 0."""
    def on_result(config: np.ndarray, sums: np.ndarray) -> None:
      tokens = np.asarray(window_tokens[:len(sums)], np.float64)
      nll = float(np.sum(sums)) / float(tokens.sum())
      ppl = common.perplexity_fields(nll)["ppl"]
      row = dict(split=split, precision=np.asarray(config).tolist(), perplexity=ppl,
                 finite=ppl is not None, windows=len(sums), time=time.time())
      if fmt != ANDA:
        row["format"] = fmt
      elif self.shape is not None:
        row.update(mean_m=cost.mean_mantissa_bits(self.shape, config),
                   bops_saving=cost.summarize(self.shape, config)["bops_saving"])
      self.append([row | common.window_fields(sums, tokens)])
    return on_result


class WorkLog:
  """work.json in a run folder: what each process of the run did, this process's entry
  rewritten after every result, so that a run resumed after an interruption (a kill included)
  reports the work of all its processes, less at most the last result's. The counters
  (numbers) are the caller's; the seconds count from the search's start.

  A run begun before work.json existed (`resumed`: its folder already has rows) starts it with
  the last process's record from chosen.json, if any, and notes that earlier ones are missing."""

  def __init__(self, run_dir: pathlib.Path, write: bool = True, resumed: bool = False):
    self.path, self.write = run_dir / "work.json", write
    self.processes, self.unrecorded = {}, False
    if self.path.exists():
      try:
        record = json.loads(self.path.read_text())
        self.processes, self.unrecorded = record["processes"], record["earlier_unrecorded"]
      except (json.JSONDecodeError, KeyError, TypeError) as e:  # only a hand edit does that
        logging.warning("%s is unreadable (%r): the work of earlier processes is not counted",
                        self.path, e)
        self.unrecorded = True
    elif resumed:
      self.unrecorded = True
      chosen = run_dir / "chosen.json"
      old = json.loads(chosen.read_text()).get("work") if chosen.exists() else None
      if old and "processes" not in old:
        self.processes["the last process before work.json (from chosen.json)"] = {
            k: v for k, v in old.items() if k != "saved_by_racing"}
    self.name = f"{datetime.datetime.now().isoformat(timespec='microseconds')} pid {os.getpid()}"
    self.t0, self.search_seconds = time.time(), None

  def record(self, **counts) -> None:
    seconds = round(time.time() - self.t0, 1)
    self.processes[self.name] = dict(
        seconds_search=seconds if self.search_seconds is None else self.search_seconds,
        seconds_total=seconds, **counts)
    if self.write:
      common.write_text(self.path, json.dumps(dict(
          processes=self.processes, earlier_unrecorded=self.unrecorded), indent=1) + "\n")

  def search_done(self) -> None:
    self.search_seconds = round(time.time() - self.t0, 1)

  def total(self) -> dict:
    """Every counter summed over the processes; `processes`: how many; `earlier_unrecorded`:
    whether processes before these are missing."""
    sums = {}
    for counts in self.processes.values():
      for k, v in counts.items():
        sums[k] = sums.get(k, 0) + v
    return dict(processes=len(self.processes), earlier_unrecorded=self.unrecorded,
                **{k: round(v, 1) if isinstance(v, float) else v for k, v in sums.items()})


class WindowEvaluator:
  """Per-window NLL sums of configurations on one split's windows: precision_search's evaluate.

  With reuse_prefix, a configuration that first differs from `base` at layer l > 0 runs from
  the hidden state entering layer l under `base` (anda_jax.prefix.Prefix; the states are kept
  while base stays the same): layers l..L-1 and the head only. Configurations are sorted by
  that layer and run `config_batch` at a time (a fixed shape: one compilation per input kind),
  each batch from its first configuration's layer. Not with stochastic rounding (see
  anda_jax.prefix): then every configuration runs from the embedding. Counts layer passes
  (configuration x window x layer, the prefix's own included) and what they would have been
  without the reuse."""

  def __init__(self, model, windows: np.ndarray, spec, *, score_from: int, batch_size: int,
               config_batch: int, key=None, mesh="auto", reuse_prefix: bool = True):
    from anda_jax import evaluate  # pylint: disable=g-import-not-at-top

    self.model, self.windows, self.spec = model, np.asarray(windows, np.int32), spec
    self.weights = evaluate.target_weights(len(windows), windows.shape[1], score_from)
    self.window_tokens = self.weights.sum(axis=1, dtype=np.float64)
    self.batch_size = batch_size
    self.kw = dict(batch_size=batch_size, config_batch=config_batch, key=key, mesh=mesh)
    self.reuse = reuse_prefix and not spec.stochastic
    self.layer_passes = self.layer_passes_without_reuse = 0
    self._prefixes = {}  # base key -> {(first window, stop): (Prefix, {layer: states})}

  def _hidden(self, base, windows: slice, layer: int) -> np.ndarray:
    from anda_jax import prefix  # pylint: disable=g-import-not-at-top

    key = precision_search.config_key(base)
    if key not in self._prefixes:  # a new round: the states of the last one are of no more use
      self._prefixes = {key: {}}
    # Per slice of windows (racing's two): the Prefix and the states it has passed through, kept
    # because a bounded round visits the layers once per module type (n_layers x windows x T x
    # d_model floats at most: 0.3 GB for SmolLM2 on 16 x 256 tokens).
    p, states = self._prefixes[key].get((windows.start, windows.stop), (None, {}))
    if layer not in states:
      if p is None or p.layer > layer:
        # As many copies as a configuration batch: bit-identical to a forward from the tokens.
        p = prefix.Prefix(self.model, self.windows[windows], self.batch_size, base, self.spec,
                          copies=self.kw["config_batch"])
      self.layer_passes += (layer - p.layer) * len(p.h) * p.copies
      states[layer] = p.advance_to(layer)
      self._prefixes[key][(windows.start, windows.stop)] = (p, states)
    return states[layer]

  def __call__(self, configs, windows: slice, base=None) -> np.ndarray:
    from anda_jax import evaluate  # pylint: disable=g-import-not-at-top
    from anda_jax import prefix  # pylint: disable=g-import-not-at-top

    n_layers = self.model.config.n_layers
    configs = evaluate.check_precisions(configs, n_layers)
    tokens, weights = self.windows[windows], self.weights[windows]
    first = (prefix.first_difference(configs, base) if self.reuse and base is not None
             else np.zeros(len(configs), int))
    out = np.empty((len(configs), len(tokens)))
    # By first different layer, a configuration batch at a time, each batch from its first
    # layer: one layer's candidates together, or (a bounded round) one type's of nearby layers.
    order, step = np.argsort(first, kind="stable"), self.kw["config_batch"]
    for idx in (order[i:i + step] for i in range(0, len(order), step)):
      layer = int(first[idx].min())
      if layer == 0:
        out[idx] = evaluate.window_nll_sums(self.model, tokens, configs[idx], self.spec,
                                            weights=weights, **self.kw)[0]
      else:
        out[idx] = evaluate.window_nll_sums(
            self.model, self._hidden(np.asarray(base), windows, layer), configs[idx], self.spec,
            targets=tokens[:, 1:], weights=weights, start=layer, **self.kw)[0]
      self.layer_passes += len(idx) * len(tokens) * (n_layers - layer)
    self.layer_passes_without_reuse += len(configs) * len(tokens) * n_layers
    return out


# ------------------------------------------------------------------------- main


def validate(cfg) -> None:
  """Everything checkable before loading anything heavy or writing a file; ValueError with a
  clear message."""
  common.check_config(cfg, search_config.get_config())
  common.one_group_size(cfg, "search")
  if cfg.data.split != SPLITS[0]:
    raise ValueError(f"data.split={cfg.data.split!r} is invalid: the search runs on "
                     f"{SPLITS[0]!r} and is checked on {SPLITS[1]!r}")
  common.check_optional_int("test.windows", cfg.test.windows, 1)
  for name in ("uniform", "path"):
    if not isinstance(cfg.test[name], bool):
      raise ValueError(f"test.{name}={cfg.test[name]!r} is invalid: must be True or False")
  for name in ("start_m", "min_m"):
    check_int(name, cfg[name], MIN_MANTISSA_BITS, MAX_MANTISSA_BITS)
  if cfg.start_types is not None:
    if len(cfg.start_types) != len(MODULE_TYPES):
      raise ValueError(f"start_types={cfg.start_types!r} is invalid: must be one M per type "
                       f"{MODULE_TYPES}, or None")
    common.check_ints("start_types", cfg.start_types, MIN_MANTISSA_BITS, MAX_MANTISSA_BITS)
  start = cfg.start_m if cfg.start_types is None else min(cfg.start_types)
  if cfg.min_m > start:
    name = "start_m" if cfg.start_types is None else "every start_types entry"
    raise ValueError(f"min_m={cfg.min_m} is invalid: must be at most {name}={start}")
  common.check_ints("uniform_m", cfg.uniform_m, MIN_MANTISSA_BITS, MAX_MANTISSA_BITS)
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
  common.check_optional_int("race_windows", cfg.race_windows, 1)
  common.check_optional_int("max_rounds", cfg.max_rounds, 0)
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
  common.other_formats(cfg)
  cost.accelerator(cfg.cost.to_dict())


def setup_of(cfg, windows: dict | None, shape: cost.ModelShape | None, model_digest: str) -> dict:
  """What the rows of a search are valid for: the settings that change a result, the model's
  content (sha256) and the windows' checksums. windows and shape None: the part known before
  anything is loaded (for common.check_setup(partial=True))."""
  f = cfg.format
  setup = dict(
      model=cfg.model.name, int4_group_size=cfg.model.int4_group_size,
      format=dict(group_size=f.group_sizes[0], exponent_bits=f.exponent_bits, rounding=f.rounding),
      corpus=cfg.data.corpus, seq_len=cfg.data.seq_len)
  if windows is not None:
    setup["windows"] = {s: dict(n=int(len(w)), sha256=common.windows_sha256(w)[:16])
                        for s, w in windows.items()}
  if shape is not None:
    setup["shape"] = dict(vars(shape))
  setup.update(model_sha256=model_digest, window_batch=cfg.window_batch,
               config_batch=cfg.config_batch)
  # Settings the first recorded runs did not have appear only where they differ from what those
  # runs used, so that their setup.json (docs/results/search_smollm2/) still reads the same.
  # matmul_precision: those runs had float32 products (a CPU's), which "highest" is everywhere.
  precision = cfg.model.matmul_precision
  extra = dict(stride=cfg.data.stride, impl=None if cfg.impl == "fake" else cfg.impl,
               matmul_precision=None if precision == "highest" else precision,
               seed=cfg.seed if f.rounding == "stochastic" else None)
  return setup | {k: v for k, v in extra.items() if v is not None} | common.finetune_setup(cfg)


def run(cfg) -> pathlib.Path:
  """Runs (or resumes) a search described by `cfg`; returns the run directory."""
  validate(cfg)
  common.maybe_initialize_distributed(cfg)
  digest = common.model_sha256(cfg.model.name)
  with common.open_run(cfg, setup_of(cfg, None, None, digest)) as folder:
    _run(cfg, folder, digest)
  return folder


def _run(cfg, run_dir: pathlib.Path, digest: str) -> None:
  # Heavy imports here, so the report code and its test need no model.
  from anda_jax import evaluate  # pylint: disable=g-import-not-at-top

  t0 = time.time()
  mesh = common.mesh_of(cfg)  # before loading: a shape that does not fit the devices is refused
  model, tokenizer = common.load_model(cfg.model, cfg.finetune)
  common.check_group_size_fits(model, cfg.format.group_sizes, cfg.impl)
  others = common.other_formats(cfg)
  common.check_mesh_fits(model, mesh, [common.product_spec(cfg, cfg.format.group_sizes[0])]
                         + [ProductSpec(f, cfg.impl) for f in others.values()])
  windows = common.load_windows(cfg.data, tokenizer,
                                dict(zip(SPLITS, (cfg.data.windows, cfg.test.windows))))
  spec = common.product_spec(cfg, cfg.format.group_sizes[0])
  shape = cost.as_shape(model)
  per_layer = cfg.granularity == "layer"
  start = np.broadcast_to(np.asarray(cfg.start_m if cfg.start_types is None else cfg.start_types,
                                     np.int32), (shape.n_layers, 4) if per_layer else (4,)).copy()
  macs = shape.macs() if per_layer else shape.macs().sum(0)
  is_main = common.is_main()
  log = SearchLog(run_dir, setup_of(cfg, windows, shape, digest), write=is_main, shape=shape)
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
        model, windows[split], spec, score_from=common.score_from(cfg.data), batch_size=batch,
        config_batch=config_batch, key=common.rounding_key(cfg), mesh=mesh,
        reuse_prefix=cfg.prefix_reuse)
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
                                    bound=cfg.bound)
  work.search_done()
  uniform = [np.full_like(start, m) for m in cfg.uniform_m]
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
    floor = noise_floor(_by_key(log.rows.values(), SPLITS[0]))
    loss = {split: {tol: precision_search.loss_interval(e([r.precision])[0], e([fp])[0],
                                                         e.window_tokens)
                    for tol, r in results.items()} for split, e in evaluators.items()}
    # Racing's saving: the windows of the candidates it dropped that were never needed later.
    saved = sum(n_cal - len(s) for s in cal.cache.values() if len(s) < n_cal)
    record_work()
    ev = window_evaluators[SPLITS[0]]
    common.write_text(run_dir / "chosen.json", json.dumps(dict(
        granularity=cfg.granularity, min_m=cfg.min_m,
        start_m=cfg.start_m if cfg.start_types is None else list(cfg.start_types),
        uniform_m=list(cfg.uniform_m), rule=cfg.rule, interval=common.INTERVAL_METHOD,
        race_windows=race, race_level=cfg.race_level, prefix_reuse=ev.reuse,
        max_rounds=cfg.max_rounds, max_accept=cfg.max_accept, bound=cfg.bound,
        test_path=cfg.test.path,
        other_formats=list(others), cost=cfg.cost.to_dict(),
        noise_floor=None if floor is None else floor[0],
        chosen=[dict(tolerance=tol, precision=r.precision.tolist(), rounds=r.rounds,
                     within_tolerance=r.within_tolerance,
                     below_noise_floor=None if floor is None else tol < floor[0],
                     loss={split: _interval_dict(loss[split][tol]) for split in SPLITS},
                     candidates=r.candidates, dropped_by_racing=r.dropped,
                     skipped_by_bound=r.skipped,
                     path=[p.tolist() for p in r.path]) for tol, r in results.items()],
        # What the run's processes evaluated, summed (work.json has each one's).
        work=work.total() | dict(saved_by_racing=saved),
    ), indent=1) + "\n")
    write_report(run_dir)


def measure_formats(log: SearchLog, model, windows: dict, others: dict, cfg, batch: int, mesh,
                    sites: np.ndarray) -> None:
  """Each other format (name -> format object) at every site on both splits' windows, for the
  report's table of the chosen configurations in other formats: a row per (split, format) in
  search.jsonl, skipped where one on all the split's windows is there (resumable)."""
  for name, fmt in tqdm.tqdm(others.items(), desc="other formats", unit="format",
                             disable=not others):
    for split in SPLITS:
      row = _by_key(log.rows.values(), split, name).get(precision_search.config_key(sites))
      if row is not None and _n_windows(row) >= len(windows[split]):
        continue
      ev = WindowEvaluator(model, windows[split], ProductSpec(fmt, cfg.impl),
                           score_from=common.score_from(cfg.data), batch_size=batch,
                           config_batch=1, mesh=mesh, reuse_prefix=False)
      log.appender(split, ev.window_tokens, name)(sites, ev([sites], slice(None))[0])


def _search_work(chosen: dict) -> str:
  """What each tolerance's search did and what racing, the bound and prefix reuse saved
  (chosen.json)."""
  accept = chosen.get("max_accept", 1)
  lines = [f"Up to {accept} of a round's fitting candidates accepted together (`max_accept`)."
           if accept > 1 else "One bit removed per round (`max_accept` = 1, the paper's greedy)."]
  for c in chosen["chosen"]:
    if "path" not in c:  # a hand-written or early chosen.json
      continue
    steps = np.diff(np.asarray(c["path"]).reshape(len(c["path"]), -1).sum(1))
    lines.append(f"Tolerance {100 * c['tolerance']:g}%: {c.get('rounds', len(steps))} rounds, "
                 f"{-steps.sum()} bits removed in {len(steps)} steps; {c.get('candidates', '?')} "
                 f"candidates, {c.get('dropped_by_racing', '?')} dropped by racing"
                 + (f", {c['skipped_by_bound']} skipped by the bound" if "skipped_by_bound" in c
                    else "") + ".")
  work = chosen.get("work")
  if work:
    passes, without = work["layer_passes"], work["layer_passes_without_prefix_reuse"]
    n = work.get("processes")
    who = ("This process" if n is None  # a chosen.json from before work.json: the last one only
           else f"The last {n} processes of this run (earlier ones were not recorded)"
           if work.get("earlier_unrecorded")
           else "This run" if n == 1 else f"This run, over {n} processes (resumed)")
    lines.append(
        f"{who}: search {work['seconds_search']:.0f} s, total {work['seconds_total']:.0f} "
        f"s; {work['calibration_window_evaluations']} calibration window evaluations, "
        f"{work['saved_by_racing']} saved by racing; {passes} layer passes"
        + (f", {without} without prefix reuse ({1 - passes / without:.0%} saved)" if without
           else "") + ".")
  return " ".join(lines)


def _interval_dict(interval) -> dict:
  return {k: None if not math.isfinite(v) else v for k, v in dataclasses.asdict(interval).items()}


# ----------------------------------------------------------------------- report


def _fmt_config(config: np.ndarray) -> str:
  config = np.asarray(config)
  if config.ndim == 1:
    return ", ".join(str(int(m)) for m in config)
  # Per layer: mean M of each type over layers (the full config is in chosen.json).
  return ", ".join(f"{m:.1f}" for m in config.mean(0)) + " (layer mean)"


def _by_key(rows, split: str, fmt: str = ANDA) -> dict:
  """config_key -> the row of `split` in format `fmt` covering the most windows (a racing
  slice's row is replaced by the same configuration's row on all windows)."""
  out = {}
  for r in rows:
    if r["split"] == split and r.get("format", ANDA) == fmt:
      key = precision_search.config_key(np.asarray(r["precision"]))
      if key not in out or _n_windows(r) >= _n_windows(out[key]):
        out[key] = r
  return out


def _n_windows(row: dict) -> float:
  return len(row["window_nll"]) if "window_nll" in row else math.inf  # older rows: all windows


def _fp_row(by_key: dict) -> dict | None:
  keys = [k for k in by_key if not any(k[1])]
  return by_key[keys[0]] if keys else None


def noise_floor(by_key: dict) -> tuple[float, dict] | None:
  """The noise floor of a split's windows: the half-width of the paired interval against FP of
  the evaluated configuration (not FP) whose loss is closest to 0, and that row. A difference
  smaller than it is not resolved by these windows. None without per-window sums."""
  fp_row = _fp_row(by_key)
  best = None
  for key, row in by_key.items():
    interval = None if row is fp_row else common.increase_interval(row, fp_row)
    if interval is not None and math.isfinite(interval.high):
      if best is None or abs(interval.estimate) < abs(best[1].estimate):
        best = (row, interval)
  return None if best is None else (best[1].half_width, best[0])


def write_report(run_dir) -> str:
  """report.md and pareto.png of a run, from its setup.json, search.jsonl, chosen.json."""
  run_dir = pathlib.Path(run_dir)
  setup = json.loads((run_dir / "setup.json").read_text())
  chosen = json.loads((run_dir / "chosen.json").read_text())
  shape = cost.ModelShape(**setup["shape"])
  group, ebits = setup["format"]["group_size"], setup["format"]["exponent_bits"]
  rows = read_rows(run_dir / SearchLog.name)
  by_key = {s: _by_key(rows, s) for s in SPLITS}
  n_cal = setup["windows"]["calibration"]["n"]
  cal_rows = [r for r in by_key["calibration"].values() if _n_windows(r) >= n_cal]
  if not cal_rows:
    raise ValueError(f"{run_dir / 'search.jsonl'} holds no calibration rows")
  like = np.asarray(cal_rows[0]["precision"])
  fp = {s: _fp_row(by_key[s]) for s in SPLITS}
  rule = chosen.get("rule", "point")  # runs before the intervals chose by the estimate
  floor = noise_floor(by_key["calibration"])
  hw = cost.accelerator(chosen.get("cost"))  # runs before the cost block: the defaults

  def perplexity(split, config):
    return cells(split, by_key[split].get(precision_search.config_key(np.asarray(config))))

  def cells(split, row):  # (perplexity, loss [interval] against FP) of a row on all windows
    if row is None or _n_windows(row) < setup["windows"][split]["n"]:
      return "–", "–"
    if row["perplexity"] is None:  # evaluated, not finite
      return "not finite", "–"
    if fp[split] is None or fp[split]["perplexity"] is None:
      return f"{row['perplexity']:.3f}", "–"
    interval = common.increase_interval(row, fp[split])
    loss = f"{100 * (row['perplexity'] / fp[split]['perplexity'] - 1):+.2f}%"
    if interval is not None and row is not fp[split]:
      loss += f" [{100 * interval.low:+.2f}, {100 * interval.high:+.2f}]"
    return f"{row['perplexity']:.3f}", loss

  def line(label, config):
    s = cost.summarize(shape, config, group, ebits, hw)
    (pc, lc), (pt, lt) = perplexity("calibration", config), perplexity("test", config)
    return (f"| {label} | {_fmt_config(config)} | {pc} | {lc} | {pt} | {lt} | "
            f"{s['mean_m']:.2f} | {s['storage_bits']:.2f} | {100 * s['bops_saving']:.1f}% | "
            f"{s['speedup_vs_fp16']:.2f}x | {s['energy_saving_vs_fp16']:.2f}x |")

  def fits(config, tolerance):
    row = by_key["calibration"].get(precision_search.config_key(np.asarray(config)))
    if row is None or fp["calibration"] is None or _n_windows(row) < n_cal:
      return None
    if rule == "upper" and "window_nll" in row:
      interval = common.increase_interval(row, fp["calibration"])
      return interval is not None and interval.high <= tolerance
    return (row["perplexity"] is not None and fp["calibration"]["perplexity"] is not None
            and row["perplexity"] / fp["calibration"]["perplexity"] - 1 <= tolerance)

  w = setup["windows"]
  n_partial = sum(1 for r in by_key["calibration"].values() if _n_windows(r) < n_cal)
  out = [
      f"# Adaptive precision search: {run_dir.name}", "",
      f"Model `{setup['model']}` (int4_group_size={setup['int4_group_size']}), Anda format "
      f"G={group}, exponent bits={ebits}, rounding={setup['format']['rounding']}; corpus "
      f"`{setup['corpus']}`, windows of {setup['seq_len']} tokens: "
      f"{w['calibration']['n']} calibration, {w['test']['n']} test. Granularity "
      f"{chosen['granularity']}, start M={chosen['start_m']}, min M={chosen['min_m']}; "
      f"{len(cal_rows)} configurations evaluated on calibration"
      + (f", {n_partial} more only on the first {chosen['race_windows']} windows (dropped by "
         f"racing at level {chosen['race_level']})" if n_partial else "") + ".", "",
      "M per type is (" + ", ".join(MODULE_TYPES) + "); 0 = FP16. Loss is ppl / ppl_FP - 1 "
      f"on the same windows, in brackets its {common.INTERVAL_METHOD}. "
      + ("A candidate fits a tolerance if the upper end of its interval is within it."
         if rule == "upper" else "A candidate fits a tolerance if its loss estimate is within it "
         "(the paper's rule).") + " Storage bits per activation element (FP16: 16); BOPs saving "
      "vs FP16 activations x INT4 weights; speedup and energy are modeled "
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
    flag = " (start over tolerance)" if fits(config, c["tolerance"]) is False else ""
    if chosen.get("max_rounds") is not None and c.get("rounds", 0) >= chosen["max_rounds"]:
      flag += f" (stopped after max_rounds={chosen['max_rounds']})"
    out.append(line(f"{100 * c['tolerance']:g}%{flag}", config))
  for m in chosen["uniform_m"]:
    out.append(line(f"uniform M={m}", np.full_like(like, m)))
  out += ["", "## The search", "", _search_work(chosen), "",
          "## Tolerances and the noise floor", ""]
  if floor is None:
    out.append("The rows hold no per-window sums (a run before the intervals): no noise floor.")
  else:
    out += [f"Noise floor of the calibration windows: **±{100 * floor[0]:.2f}%**, the half-width "
            f"of the interval of the evaluated configuration whose loss is closest to 0 "
            f"({_fmt_config(floor[1]['precision'])}): a loss difference smaller than that is not "
            "resolved by these windows.", "",
            "Intervals widen as a configuration departs from FP: the last column is the "
            "half-width of the chosen configuration's own interval.", "",
            "| tolerance | rule | below the noise floor | half-width at the chosen configuration |",
            "|---|---|---|---:|"]
    for c in chosen["chosen"]:
      row = by_key["calibration"].get(precision_search.config_key(np.asarray(c["precision"])))
      interval = None if row is None else common.increase_interval(row, fp["calibration"])
      out.append(f"| {100 * c['tolerance']:g}% | {rule} | "
                 + ("yes: more calibration tokens needed to resolve it" if c["tolerance"] < floor[0]
                    else "no")
                 + f" | {'–' if interval is None else f'±{100 * interval.half_width:.2f}%'} |")
  out += ["", "## The chosen configurations in other activation formats", "",
          "Each other format at the sites the configuration quantizes (FP16 elsewhere), on the "
          "same modeled unit; perplexities measured on the same windows where the run evaluated "
          "the format (`other_formats`: at all four sites), else –. Lane-cycles per MAC: the "
          "compute cost of one multiply-accumulate on the bit-serial unit (Anda: M; an FP element: "
          "its significand aligned to the block's scale, see `anda_jax.cost.Accelerator`).", ""]
  others = chosen.get("other_formats", [])
  for c in chosen["chosen"]:
    config = np.asarray(c["precision"])
    uniform_m = int(np.ceil(cost.mean_mantissa_bits(shape, config)))
    table = cost.compare_formats(shape, config, group, ebits, hw, uniform_m,
                                 [formats.parse_format(n) for n in others] or None)
    columns = {}
    for split in SPLITS:
      # The rows of compare_formats: FP16 twice, the other formats, uniform M, this config.
      measured = [cells(split, fp[split])] * 2 + [
          cells(split, _by_key(rows, split, name).get(
              precision_search.config_key(np.ones_like(config))))
          if config.min() > 0 else ("–", "–") for name in others]
      measured += [("–", "–")] * (len(table) - 2 - len(measured))  # no other_formats: MXINT8
      measured += [perplexity(split, np.full_like(config, uniform_m)), perplexity(split, config)]
      short = "calib" if split == SPLITS[0] else split
      columns[f"ppl {short}"] = [m[0] for m in measured]
      columns[f"loss {short}"] = [m[1] for m in measured]
    out += [f"Tolerance {100 * c['tolerance']:g}%: M = {_fmt_config(config)}", "",
            cost.format_table(table, columns), ""]
  paths = _paths_on_test(chosen, by_key, fp) if chosen.get("test_path") else []
  if paths:
    out += ["## The path on the test split", "",
            "Every configuration each search accepted, round by round (0: the start), with its "
            "loss on the calibration windows it was chosen on and on the held-out test windows "
            "(the search never sees them): where the two part, the search follows the noise of "
            "its calibration windows.", "",
            "| tolerance | round | mean M | loss calib | loss test |", "|---|---:|---:|---:|---:|"]
    for c, points in paths:
      out += [f"| {100 * c['tolerance']:g}% | {i} | {cost.mean_mantissa_bits(shape, config):.2f} "
              f"| {perplexity('calibration', config)[1]} | {perplexity('test', config)[1]} |"
              for i, config in enumerate(c["path"]) if i in points]
    out += ["", "![loss along the path](path.png)", ""]
    _plot_paths(run_dir, paths)
  last = np.asarray(chosen["chosen"][-1]["precision"])
  out += ["## How the modeled ratios depend on the assumptions", "",
          f"The chosen configuration of tolerance {100 * chosen['chosen'][-1]['tolerance']:g}% "
          "under the run's `cost` settings, then with one assumption changed at a time:", "",
          "| assumption | speedup vs FP16 | energy saving vs FP16 | Anda bound by | FP16 bound by |",
          "|---|---:|---:|---|---|"]
  out += [f"| {r['assumption']} | {r['speedup_vs_fp16']:.2f}x | "
          f"{r['energy_saving_vs_fp16']:.2f}x | {r['anda_bound']} | {r['fp16_bound']} |"
          for r in cost.what_if(shape, last, group, ebits, hw)]
  out += ["", "![Pareto plot](pareto.png)", ""]
  if like.ndim == 2:
    out += ["![chosen M per layer and type](layers.png)", ""]
    _plot_layers(run_dir, chosen)
  text = "\n".join(out)
  common.write_text(run_dir / "report.md", text)
  _plot(run_dir, shape, cal_rows, chosen, fp["calibration"], like)
  return text


def _paths_on_test(chosen, by_key, fp) -> list:
  """[(chosen entry, {round: (calibration, test) intervals})] for the tolerances whose path
  (evaluated on the test split with test.path) has more than its start, the rounds whose
  configuration has an interval against FP on both splits (per-window sums on FP's windows)."""
  out = []
  for c in chosen["chosen"]:
    points = {}
    for i, config in enumerate(c.get("path", [])):
      key = precision_search.config_key(np.asarray(config))
      pair = tuple(common.increase_interval(by_key[split][key], fp[split])
                   if key in by_key[split] else None for split in SPLITS)
      if None not in pair:
        points[i] = pair
    if len(points) > 1:
      out.append((c, points))
  return out


def _plot_paths(run_dir, paths) -> None:
  """path.png: loss with its interval on calibration and on test against the round, one panel
  per tolerance, the tolerance as a line."""
  plt = common.pyplot()
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
  common.save_figure(fig, run_dir / "path.png", dpi=110)
  plt.close(fig)


def _plot_layers(run_dir, chosen) -> None:
  """A per-layer search's chosen M per (layer, type), one panel per tolerance, the start's M
  marked where the search lowered nothing."""
  plt = common.pyplot()
  start = np.asarray(chosen["chosen"][0]["path"][0])
  fig, axes = plt.subplots(1, len(chosen["chosen"]), squeeze=False, sharey=True,
                           figsize=(1.2 + 2.6 * len(chosen["chosen"]), 1.5 + 0.22 * len(start)))
  values = [np.asarray(c["precision"]) for c in chosen["chosen"]]
  lo, hi = min(v.min() for v in values), max(int(start.max()), *(v.max() for v in values))
  for ax, c, m in zip(axes[0], chosen["chosen"], values):
    im = ax.imshow(m, cmap="viridis", vmin=lo - 0.5, vmax=hi + 0.5, aspect="auto")
    for (i, j), v in np.ndenumerate(m):
      ax.text(j, i, str(v) + ("" if v < start[i, j] else "*"), ha="center", va="center",
              fontsize=7, color="w" if v < (lo + hi) / 2 else "k")
    ax.set(title=f"tolerance {100 * c['tolerance']:g}%", xticks=range(len(MODULE_TYPES)),
           yticks=range(len(m)))
    ax.set_xticklabels(MODULE_TYPES, rotation=45)
  axes[0][0].set_ylabel("layer")
  fig.colorbar(im, ax=axes[0].tolist(), ticks=range(lo, hi + 1),
               label="mantissa bits M (*: the start's, not lowered)")
  common.save_figure(fig, run_dir / "layers.png", dpi=110)
  plt.close(fig)


def _plot(run_dir, shape, cal_rows, chosen, fp_row, like) -> None:
  """Left: every point, log scale; right: zoomed on the tolerances around FP. Error bars: the
  paired intervals against FP, where the rows hold per-window sums."""
  plt = common.pyplot()

  fp_ppl = None if fp_row is None else fp_row["perplexity"]

  def point(row):  # (mean M, perplexity, [below, above] error) of a finite row
    interval = None if fp_ppl is None else common.increase_interval(row, fp_row)
    err = ([0.0, 0.0] if interval is None or not math.isfinite(interval.high) else
           [max(row["perplexity"] - fp_ppl * (1 + interval.low), 0.0),
            max(fp_ppl * (1 + interval.high) - row["perplexity"], 0.0)])
    return cost.mean_mantissa_bits(shape, row["precision"]), row["perplexity"], err

  # A perplexity that is not finite (None) is left out: a gap in the uniform curve.
  points = sorted(point(r) for r in cal_rows
                  if np.asarray(r["precision"]).min() > 0 and r["perplexity"] is not None)
  front, best = [], np.inf
  for xi, yi, _ in points:  # the lowest perplexity at or below each mean M
    if yi < best:
      best = yi
      front.append((xi, yi))
  rows = {precision_search.config_key(np.asarray(r["precision"])): r for r in cal_rows}
  uni = [rows.get(precision_search.config_key(np.full_like(like, m))) for m in chosen["uniform_m"]]
  uni = [(m, np.nan, [0.0, 0.0]) if r["perplexity"] is None else (m,) + point(r)[1:]
         for m, r in zip(chosen["uniform_m"], uni) if r is not None]
  errorbar = lambda ax, pts, **kw: ax.errorbar(
      [p[0] for p in pts], [p[1] for p in pts], yerr=np.array([p[2] for p in pts]).T, capsize=2,
      **kw)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
  for ax in axes:
    if points:
      errorbar(ax, points, fmt="o", ms=3, c="0.7", elinewidth=0.6, label="evaluated (calibration)")
      ax.plot(*zip(*front), "-", c="C0", label="Pareto front")
    if uni:
      errorbar(ax, uni, fmt="s--", c="C1", label="uniform M (block FP)")
    for i, c in enumerate(chosen["chosen"]):
      row = rows.get(precision_search.config_key(np.asarray(c["precision"])))
      if row is not None and row["perplexity"] is not None:
        errorbar(ax, [point(row)], fmt="*", ms=14, c=f"C{2 + i}",
                 label=f"chosen, tolerance {100 * c['tolerance']:g}%")
    if fp_ppl is not None:
      ax.axhline(fp_ppl, c="k", lw=0.8, ls=":", label="FP16 activations")
      for i, c in enumerate(chosen["chosen"]):
        ax.axhline(fp_ppl * (1 + c["tolerance"]), c=f"C{2 + i}", lw=0.6, ls=":")
    ax.set_xlabel("mean mantissa bits M̄ (MAC-weighted)")
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
        point(r)[1] - point(r)[2][0] for r in (rows.get(precision_search.config_key(
            np.asarray(c["precision"]))) for c in chosen["chosen"]) if r and r["perplexity"]]
    axes[1].set_ylim(min(ys + [fp_ppl] + bars) - 0.002 * fp_ppl, top)
    if near:
      xs = [p[0] for p in near]
      axes[1].set_xlim(min(xs) - 0.25, max(xs) + 0.25)
  axes[1].set_title("near FP16 (dotted: FP and FP x (1 + tolerance));\nbars: "
                    + common.INTERVAL_METHOD.split(" over")[0] + " against FP", fontsize=9)
  fig.tight_layout()
  common.save_figure(fig, run_dir / "pareto.png", dpi=110)
  plt.close(fig)


def run_and_report(cfg) -> None:
  t0 = time.time()
  run_dir = run(cfg)
  print((run_dir / "report.md").read_text())
  print(f"\nwrote {run_dir} in {time.time() - t0:.1f} s")


if __name__ == "__main__":
  common.run_with_config(run_and_report, "Search configuration.")
