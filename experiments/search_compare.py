"""Precision searches compared on their shared test windows: Anda's mantissa lengths against
mixed MX (and NVFP4), each chosen per entry by the same search, at each tolerance and at equal
bits, with paired intervals.

    python -m experiments.search_compare \
        --runs=results/search_smollm2,results/search_smollm2_nearest,results/search_smollm2_mx \
        --out=results/compare_smollm2

Reads finished search runs (experiments/search.py: setup.json, search.jsonl or search.jsonl.gz,
chosen.json) and evaluates nothing. Runs on other test windows (setup.json's checksum, corpus,
window length, stride) or of another model (its name, content, weights' grouping, fine-tuned
parameters, matmul precision, model shards) are refused: only rows on the same windows pair.
Every increase over FP is against the run's own FP row; a difference between two runs'
configurations is the paired-bootstrap interval of ppl_A / ppl_B - 1 over the test windows,
from the per-window NLL sums of their test rows (anda_jax.evaluation.intervals).

Writes into --out:
  compare.json  the numbers: each run (label, kind, rounding, FP test perplexity, which
                tolerances its calibration tokens resolve), every plotted point (the chosen
                configurations, uniform M of each Anda run, each format at every site, with
                storage bits and test increase [interval]), the paired comparisons per tolerance
                (each Anda run's choice against each format list's), at equal bits (for each
                format at every site and each mixed choice of a format list, the most accurate
                configuration of each Anda run within its bits: formats_report.comparison),
                Anda's roundings against each other, and the verdict paragraph
  compare.md    the tables and the paragraph (experiments/search_compare_report.py)
  pareto.png    test perplexity increase over FP (with intervals) against mean storage bits per
                activation element
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import pathlib
import time

from absl import app
from absl import flags
import numpy as np

from anda_jax import cost
from anda_jax.evaluation import intervals
from anda_jax.numerics import baselines
from anda_jax.numerics.anda import AndaFormat
from anda_jax.precision import config_key
from experiments import formats_report
from experiments import search_candidates
from experiments import search_compare_report
from experiments.harness import cli
from experiments.harness import errors
from experiments.harness import perplexity
from experiments.harness import reports
from experiments.search_log import ANDA, SearchLog, read_rows
from experiments.search_report import n_windows, rows_by_key

_RUNS = flags.DEFINE_list("runs", [], "finished search run folders (at least two), comma-separated")
_OUT = flags.DEFINE_string("out", None, "folder to write compare.json, compare.md, pareto.png to")

# setup.json entries that must agree: what makes a test row's loss (the model and how its
# products are computed), and what makes the test windows the same windows scored the same way.
MODEL_KEYS = ("model", "model_sha256", "int4_group_size", "finetune", "matmul_precision",
              "model_shards")
DATA_KEYS = ("corpus", "seq_len", "stride")
NAMED_LISTS = {"mx": "MX", "nvfp4_mx": "NVFP4+MX"}  # search_candidates.CANDIDATE_SETS' labels


@dataclasses.dataclass
class SearchRun:
  """A finished search run's files, read once, and its label in the comparison."""

  folder: pathlib.Path
  setup: dict
  chosen: dict
  rows: list
  label: str = ""

  @property
  def names(self) -> list | None:
    """The formats a search among formats chose from (value i: the i-th); None for Anda."""
    return self.setup.get("candidates")

  @property
  def is_anda(self) -> bool:
    return self.names is None

  @property
  def shape(self) -> cost.ModelShape:
    return cost.ModelShape(**self.setup["shape"])

  @property
  def fmt(self):
    """What the run's configurations' values mean to the cost model."""
    if self.is_anda:
      return AndaFormat(self.setup["format"]["group_size"], self.setup["format"]["exponent_bits"])
    return search_candidates.choice(self.names)

  def test_row(self, precision, fmt: str = ANDA) -> dict | None:
    """The row of a configuration (of another format: that format at the sites it marks) on
    all of the test windows; None where the run did not evaluate it there."""
    row = rows_by_key(self.rows, "test", fmt).get(config_key(np.asarray(precision)))
    return row if row is not None and n_windows(row) >= self.setup["windows"]["test"]["n"] else None


def read_run(folder) -> SearchRun:
  """A run folder's files; ValueError naming the folder if it is not a finished search run."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise ValueError(f"--runs: {folder} is not a folder")
  if not (folder / "chosen.json").is_file() or not (folder / "setup.json").is_file():
    raise ValueError(f"--runs: {folder} is not a finished search run (no chosen.json and "
                     "setup.json; a search writes chosen.json when it ends)")
  setup = json.loads((folder / "setup.json").read_text())
  if "test" not in setup.get("windows", {}) or "shape" not in setup:
    raise ValueError(f"--runs: {folder} is not a search run (its setup.json records no test "
                     "windows or model shape)")
  run = SearchRun(folder, setup, json.loads((folder / "chosen.json").read_text()),
                  read_rows(folder / SearchLog.name))
  if run.test_row(np.zeros_like(run.chosen["chosen"][0]["precision"])) is None:
    raise ValueError(f"--runs: {folder} holds no FP row on all its test windows")
  return run


def check_comparable(runs: list[SearchRun], out: pathlib.Path) -> None:
  """ValueError unless there are two runs or more, each once, of the same model on the same test
  windows, and `out` is none of them."""
  if len(runs) < 2:
    raise ValueError(f"--runs={','.join(str(r.folder) for r in runs)} is invalid: a comparison "
                     "needs at least two finished search runs")
  folders = [r.folder.resolve() for r in runs]
  if len(set(folders)) < len(folders):
    raise ValueError("--runs is invalid: a run folder is named twice")
  if out.resolve() in folders:
    raise ValueError(f"--out={out} is invalid: it is one of the runs; choose a folder of its own")
  first = runs[0]
  for run in runs[1:]:
    for what, keys, get in (
        ("model", MODEL_KEYS, lambda s, k: s.get(k)),
        ("test windows", DATA_KEYS + ("windows.test",),
         lambda s, k: s["windows"]["test"] if k == "windows.test" else s.get(k))):
      differ = [k for k in keys if get(first.setup, k) != get(run.setup, k)]
      if differ:
        k = differ[0]
        raise ValueError(f"--runs: {run.folder} and {first.folder} differ in their {what} "
                         f"(setup.json {k}: {get(run.setup, k)!r} vs {get(first.setup, k)!r}): "
                         "only runs of one model on the same test windows pair")


def label_runs(runs: list[SearchRun]) -> None:
  """Each run's label: "Anda <rounding>" (with G where the Anda runs differ in it), "MX",
  "NVFP4+MX" or the formats joined by "+"; with the granularity where the runs differ in it and
  the folder's name where two labels would still be equal."""
  groups = {r.setup["format"]["group_size"] for r in runs if r.is_anda}
  granularities = {r.chosen["granularity"] for r in runs}
  for r in runs:
    if r.is_anda:
      text = f"Anda {r.setup['format']['rounding']}" + (
          f" G={r.setup['format']['group_size']}" if len(groups) > 1 else "")
    else:
      named = [n for n, names in search_candidates.CANDIDATE_SETS.items()
               if list(names) == r.names]
      text = NAMED_LISTS[named[0]] if named else "+".join(map(display_name, r.names))
    r.label = text + (f" per {r.chosen['granularity']}" if len(granularities) > 1 else "")
  for label, same in itertools.groupby(sorted(runs, key=lambda r: r.label), lambda r: r.label):
    same = list(same)
    if len(same) > 1:
      for r in same:
        r.label = f"{label} ({r.folder.name})"


def display_name(name: str) -> str:
  """"mxfp6_e2m3" -> "MXFP6 E2M3", "fp8_token" -> "FP8 per token"."""
  if name.endswith("_token"):
    return f"{name[:-len('_token')].upper()} per token"
  return name.upper().replace("_", " ")


@dataclasses.dataclass
class Point:
  """A configuration on the test windows: `what` is "mixed" (a run's chosen configuration at
  `tolerance`), "uniform M" (an Anda run's M at every site) or "format" (one format at every
  site); `row` its test row (None: not evaluated on all test windows), `loss` its increase over
  the run's FP with the paired interval."""

  run: str
  what: str
  name: str
  precision: list
  choice: str
  bits: float
  row: dict | None
  loss: intervals.Interval | None
  tolerance: float | None = None
  within_tolerance: bool | None = None
  m: int | None = None  # uniform M's

  def record(self) -> dict:
    out = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("row", "loss")}
    return out | dict(ppl=None if self.row is None else self.row["perplexity"],
                      loss=perplexity.interval_record(self.loss))


def _point(run: SearchRun, what: str, name: str, precision, fmt: str = ANDA, **extra) -> Point:
  precision = np.asarray(precision)
  row = run.test_row(precision, fmt)
  fp = run.test_row(np.zeros_like(precision))
  bits_of = run.fmt if fmt == ANDA else baselines.parse_format(fmt)
  loss = None if row is None or row["perplexity"] is None else perplexity.increase_interval(row, fp)
  return Point(run.label, what, name, precision.tolist(), choice_text(run, precision, fmt),
               cost.format_storage_bits(run.shape, precision, bits_of), row, loss, **extra)


def choice_text(run: SearchRun, precision: np.ndarray, fmt: str = ANDA) -> str:
  """What a configuration holds per type (qkv, o, up, down): M, or format names (per layer:
  each type's mean over layers of M or of storage bits)."""
  if fmt != ANDA:
    return f"{fmt} at every site"
  if precision.ndim == 2:
    per_type = (precision.mean(0) if run.is_anda else
                cost.activation_bits(run.shape, precision, run.fmt).mean(0))
    return ", ".join(f"{v:.2f}" for v in per_type) + (" (layer mean M)" if run.is_anda
                                                      else " bits (layer mean)")
  if run.is_anda:
    return "M " + ", ".join(str(int(m)) for m in precision)
  return ", ".join(search_candidates.entry_names(precision, run.names))


def points(runs: list[SearchRun]) -> list[Point]:
  """Every run's chosen configurations, each Anda run's uniform M, and each format at every
  site (measured as a format list's uniform configuration or as `other_formats`; a format
  measured in several runs once, from the first)."""
  out = []
  for run in runs:
    for c in run.chosen["chosen"]:
      out.append(_point(run, "mixed", f"{run.label}, mixed, {100 * c['tolerance']:g}%",
                        c["precision"], tolerance=c["tolerance"],
                        within_tolerance=c.get("within_tolerance")))
    if run.is_anda:
      like = np.zeros_like(run.chosen["chosen"][0]["precision"])
      out += [_point(run, "uniform M", f"{run.label}, uniform M={m}", like + m, m=m)
              for m in run.chosen["uniform_m"]]
  seen = set()
  for run in runs:
    like = np.zeros_like(run.chosen["chosen"][0]["precision"])
    measured = [] if run.is_anda else [(n, like + v, ANDA) for v, n in enumerate(run.names, 1)]
    measured += [(n, like + 1, n) for n in run.chosen.get("other_formats", [])]
    for name, precision, fmt in measured:
      if name not in seen and run.test_row(precision, fmt) is not None:
        seen.add(name)
        out.append(_point(run, "format", display_name(name), precision, fmt))
  return out


def paired(a: Point, b: Point) -> intervals.Interval | None:
  """ppl_a / ppl_b - 1 on the test windows with its paired interval (None without both rows)."""
  if a.row is None or b.row is None or None in (a.row["perplexity"], b.row["perplexity"]):
    return None
  return perplexity.increase_interval(a.row, b.row)


def loss_verdict(iv: intervals.Interval | None) -> str:
  """What a paired interval of ppl_A / ppl_B - 1 resolves: "lower", "higher" (it excludes 0),
  "identical" (every window's sum equal), "not resolved", or "not measured"."""
  if iv is None or not math.isfinite(iv.low):
    return "not measured"
  if iv.low == iv.high == 0:
    return "identical"
  return "lower" if iv.high < 0 else "higher" if iv.low > 0 else "not resolved"


def standing(bits_saved: float, iv: intervals.Interval | None) -> str:
  """Where Anda stands against another choice that stores `bits_saved` more bits than it, with
  `iv` Anda's test perplexity over the other's: "ahead" (fewer bits at a loss not resolved
  higher, or a loss resolved lower at no more bits), "behind" (the converse), "level" (as many
  bits, loss not resolved different), "trade-off" (fewer bits at a loss resolved higher, or
  the converse), "not measured" (no paired interval)."""
  loss = loss_verdict(iv)
  if loss == "not measured":
    return loss
  equal = search_compare_report.BITS_EQUAL
  fewer, more = bits_saved >= equal, bits_saved <= -equal
  lower, higher = loss == "lower", loss == "higher"
  if (fewer and not higher) or (lower and not more):
    return "ahead"
  if (more and not lower) or (higher and not fewer):
    return "behind"
  return "level" if not (fewer or more or lower or higher) else "trade-off"


def _pair(anda: Point, other: Point) -> dict:
  iv = paired(anda, other)
  saved = other.bits - anda.bits
  return dict(anda=anda.name, other=other.name, anda_bits=anda.bits, other_bits=other.bits,
              bits_saved=saved, versus=perplexity.interval_record(iv), verdict=loss_verdict(iv),
              standing=standing(saved, iv))


def tolerance_pairs(runs: list[SearchRun], pts: list[Point]) -> list[dict]:
  """Per tolerance (any run's): each Anda run's chosen configuration against each format
  list's, paired on the test windows."""
  mixed = {(p.run, p.tolerance): p for p in pts if p.what == "mixed"}
  out = []
  for t in sorted({p.tolerance for p in mixed.values()}):
    pairs = [dict(_pair(mixed[a.label, t], mixed[f.label, t]), anda_run=a.label,
                  other_run=f.label, tolerance=t)
             for a in runs if a.is_anda for f in runs if not f.is_anda
             if (a.label, t) in mixed and (f.label, t) in mixed]
    out.append(dict(tolerance=t, pairs=pairs))
  return out


def equal_bits(runs: list[SearchRun], pts: list[Point]) -> list[dict]:
  """For each format at every site and each format list's chosen configuration, and each Anda
  run: that run's most accurate configuration (uniform or mixed) within its bits, paired
  against it, and its cheapest configuration at least as accurate (formats_report.comparison,
  on point estimates)."""
  targets = [p for p in pts if p.what == "format" or (p.what == "mixed" and p.row is not None
                                                       and p.run not in _anda_labels(runs))]
  out = []
  for anda in (r.label for r in runs if r.is_anda):
    pool = [_as_formats_row(p) for p in pts if p.run == anda and p.what != "format"
            and p.row is not None and any(np.ravel(p.precision))]
    for other in targets:
      c = formats_report.comparison(pool, _as_formats_row(other))
      best, cheapest = (None if c[k] is None else c[k]["point"] for k in ("best", "cheapest"))
      out.append(dict(
          other=other.name, other_what=other.what, other_run=other.run,
          tolerance=other.tolerance, other_bits=other.bits,
          other_loss=perplexity.interval_record(other.loss), anda_run=anda,
          best=None if best is None else _short(best), versus=perplexity.interval_record(c["versus"]),
          verdict=None if best is None else loss_verdict(c["versus"]),
          cheapest=None if cheapest is None else _short(cheapest)))
  return out


def _anda_labels(runs) -> set:
  return {r.label for r in runs if r.is_anda}


def _as_formats_row(p: Point) -> dict:
  """A point as formats_report.comparison reads a row (ppl, storage_bits, per-window sums)."""
  return dict(p.row or {}, ppl=None if p.row is None else p.row["perplexity"],
              storage_bits=p.bits, point=p)


def _short(p: Point) -> dict:
  return dict(name=p.name, choice=p.choice, bits=p.bits, loss=perplexity.interval_record(p.loss))


def rounding_pairs(runs: list[SearchRun], pts: list[Point]) -> list[dict]:
  """Anda runs of other roundings (and the same G) against each other, paired: their chosen
  configurations at each tolerance both have, and each uniform M both evaluated on test."""
  by_run = {}
  for p in pts:
    if p.what != "format":
      by_run.setdefault(p.run, {})[p.what, p.tolerance, p.m] = p
  out = []
  anda = [r for r in runs if r.is_anda]
  for a, b in itertools.combinations(anda, 2):
    fa, fb = a.setup["format"], b.setup["format"]
    if fa["rounding"] == fb["rounding"] or fa["group_size"] != fb["group_size"]:
      continue
    for key in [k for k in by_run[a.label] if k in by_run[b.label]]:
      pa, pb = by_run[a.label][key], by_run[b.label][key]
      if pa.row is not None and pb.row is not None:
        out.append(dict(_pair(pa, pb), anda_run=a.label, other_run=b.label, what=key[0],
                        tolerance=key[1], m=key[2]))
  return out


def _run_record(run: SearchRun) -> dict:
  """A run in compare.json: what it searched, its FP test perplexity, and which tolerances its
  calibration tokens resolve (chosen.json's `resolution`; `unchecked`: why that was not
  predicted, e.g. a noise-floor study of another rounding)."""
  resolution = run.chosen.get("resolution") or dict(
      unchecked="not recorded (a run before the resolution check)")
  fp = run.test_row(np.zeros_like(run.chosen["chosen"][0]["precision"]))
  return dict(
      folder=str(run.folder), label=run.label, kind="anda" if run.is_anda else "formats",
      rounding=run.setup["format"]["rounding"] if run.is_anda else None,
      group_size=run.setup["format"]["group_size"] if run.is_anda else None,
      candidates=run.names, granularity=run.chosen["granularity"], rule=run.chosen.get("rule"),
      calibration_windows=run.setup["windows"]["calibration"],
      fp_test_ppl=fp["perplexity"], unchecked=resolution.get("unchecked"),
      unresolved=[t["tolerance"] for t in resolution.get("tolerances", []) if not t["resolved"]])


def compare(runs: list[SearchRun]) -> dict:
  """compare.json's record of labelled, comparable runs."""
  pts = points(runs)
  first = runs[0].setup
  record = dict(
      model=first["model"], corpus=first["corpus"], seq_len=first["seq_len"],
      test_windows=first["windows"]["test"], interval=perplexity.INTERVAL_METHOD,
      same_calibration_windows=len({json.dumps(r.setup["windows"]["calibration"])
                                    for r in runs}) == 1,
      runs=[_run_record(r) for r in runs], points=[p.record() for p in pts],
      tolerances=tolerance_pairs(runs, pts), equal_bits=equal_bits(runs, pts),
      rounding=rounding_pairs(runs, pts))
  return record | dict(verdict=search_compare_report.verdict(record))


def record_of(run_folders, out: pathlib.Path) -> dict:
  """compare.json's record of the runs in `run_folders` (ValueError unless they pair)."""
  runs = [read_run(f) for f in run_folders]
  check_comparable(runs, out)
  label_runs(runs)
  return compare(runs)


def write(run_folders, out) -> str:
  """Reads the runs, checks that they pair, writes compare.json, compare.md and pareto.png into
  `out`; returns compare.md's text."""
  out = pathlib.Path(out)
  record = record_of(run_folders, out)
  out.mkdir(parents=True, exist_ok=True)
  reports.write_text(out / "compare.json", json.dumps(record, indent=1) + "\n")
  text = search_compare_report.markdown(record)
  reports.write_text(out / "compare.md", text)
  search_compare_report.plot(record, out / "pareto.png")
  return text


def main(argv) -> None:
  if len(argv) > 1:
    errors.error_exit(f"arguments {argv[1:]} are invalid: this command takes only flags")
  if not _OUT.value:
    errors.error_exit("--out is invalid: name the folder to write the comparison to")
  t0 = time.time()
  print(errors.call_cleanly(write, _RUNS.value, _OUT.value))
  print(f"\nwrote {_OUT.value} in {time.time() - t0:.1f} s")


if __name__ == "__main__":
  cli.define_traceback_flag()
  app.run(main, flags_parser=cli.parse_flags)
