"""The files of a search's run folder that results are written to as they come: search.jsonl
(one row per evaluated configuration or other format and split, with its per-window NLL sums)
and work.json (what each process of the run did)."""

from __future__ import annotations

import datetime
import gzip
import json
import math
import os
import pathlib
import time

from absl import logging
import numpy as np

from anda_jax import cost
from anda_jax.numerics import baselines
from anda_jax.precision import config_key
from experiments import formats_report
from experiments.harness import config_checks
from experiments.harness import perplexity
from experiments.harness import reports
from experiments.harness import run_folder

SPLITS = config_checks.SPLITS  # rows carry their split: the search runs on the first, is checked on the second
ANDA = formats_report.ANDA  # the `format` of Anda's rows (rows without one are Anda's)


def check_row(row) -> None:
  """ValueError unless `row` is a row of search.jsonl: split, precision (M per type, or per
  layer and type), perplexity (null where it is not finite) and, in rows of runs since the
  intervals, window_nll (per-window NLL sums, null where not finite) with window_tokens."""
  run_folder.check_fields(row, ("split", "precision", "perplexity"))
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
  to search.jsonl.broken); `perplexity` is None where it is not finite. Where only
  `search.jsonl.gz` is there (a recorded run, stored compressed), its rows, each checked: a
  stored file is never repaired, so a bad row there is an error."""
  path = pathlib.Path(path)
  packed = path.with_name(path.name + ".gz")
  if not path.exists() and packed.exists():
    with gzip.open(packed, "rt") as f:
      rows = [json.loads(line) for line in f if line.strip()]
    for i, row in enumerate(rows, 1):
      try:
        check_row(row)
      except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{packed}: row {i} is not a search row: {e}") from None
  else:
    rows = run_folder.read_jsonl(path, repair, check_row)
  return [dict(r, perplexity=perplexity.finite_or_none(r["perplexity"])) for r in rows]


def window_sums(row: dict) -> np.ndarray | None:
  """A row's per-window NLL sums, float64 [k] (inf where not finite: over every tolerance);
  None for rows of runs before the intervals, which do not hold them."""
  if "window_nll" not in row:
    return None
  return np.array([math.inf if s is None else s for s in row["window_nll"]], np.float64)


class SearchLog(run_folder.Results):
  """search.jsonl: one JSON line per (split, configuration), appended as soon as known, with the
  per-window NLL sums (window_nll, window_tokens) the intervals are computed from. A row covers
  the first `windows` windows of its split: all of them, or for a candidate that racing
  dropped, the first slice (a later row of the same configuration with more windows replaces
  it). With a model shape, rows also carry the configuration's mean M and BOPs saving, or with
  `fmt` a baselines.FormatChoice (a search among formats, whose values are no M) its mean
  storage bits per activation element. A perplexity that is not finite is recorded as null
  with "finite": false, and fails every tolerance."""

  name = "search.jsonl"

  @staticmethod
  def key(row: dict) -> tuple:
    return (row["split"], row.get("format", ANDA)) + config_key(
        np.asarray(row["precision"]))

  def check_row(self, row) -> None:
    check_row(row)

  def __init__(self, run_folder: pathlib.Path, setup: dict | None = None, write: bool = True,
               shape: cost.ModelShape | None = None, fmt=None):
    super().__init__(run_folder, setup, write)
    self.shape = shape
    self.choice = fmt if isinstance(fmt, baselines.FormatChoice) else None

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
      ppl = perplexity.perplexity_fields(nll)["ppl"]
      row = dict(split=split, precision=np.asarray(config).tolist(), perplexity=ppl,
                 finite=ppl is not None, windows=len(sums), time=time.time())
      if fmt != ANDA:
        row["format"] = fmt
      elif self.shape is not None and self.choice is not None:
        row.update(storage_bits=cost.format_storage_bits(self.shape, config, self.choice))
      elif self.shape is not None:
        row.update(mean_m=cost.mean_mantissa_bits(self.shape, config),
                   bops_saving=cost.summarize(self.shape, config)["bops_saving"])
      self.append([row | perplexity.window_fields(sums, tokens)])
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
      reports.write_text(self.path, json.dumps(dict(
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
