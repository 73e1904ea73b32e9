"""The report of a search's run folder, drawn from its files alone (setup.json, search.jsonl,
chosen.json): report.md, pareto.png, and with their data path.png and layers.png.

    python -c "from experiments import search_report; search_report.write_report('results/search')"
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import numpy as np

from anda_jax import cost
from anda_jax import cost_assumptions
from anda_jax.numerics import baselines
from anda_jax.numerics.anda import AndaFormat
from anda_jax.precision import MODULE_TYPES, config_key
from experiments.harness import perplexity
from experiments.harness import reports
from experiments import search_candidates
from experiments import search_plots
from experiments import search_resolution
from experiments.search_log import ANDA, SPLITS, SearchLog, read_rows


def _search_work(run) -> str:
  """What each tolerance's search did and what racing, the bound and prefix reuse saved
  (chosen.json)."""
  chosen, accept = run.chosen, run.chosen.get("max_accept", 1)
  one = "one bit removed" if run.choice is None else "one entry moved one level down"
  lines = [f"Up to {accept} of a round's fitting candidates accepted together (`max_accept`)."
           if accept > 1 else
           f"{one.capitalize()} per round (`max_accept` = 1, the paper's greedy)."]
  for c in chosen["chosen"]:
    if "path" not in c:  # a hand-written or early chosen.json
      continue
    steps = np.diff(np.asarray(c["path"]).reshape(len(c["path"]), -1).sum(1))
    done = (f"{-steps.sum()} bits removed" if run.choice is None else
            f"mean storage bits {run.x(c['path'][0]):.2f} -> {run.x(c['path'][-1]):.2f}")
    lines.append(f"Tolerance {100 * c['tolerance']:g}%: {c.get('rounds', len(steps))} rounds, "
                 f"{done} in {len(steps)} steps; {c.get('candidates', '?')} "
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


def _fmt_config(config: np.ndarray) -> str:
  config = np.asarray(config)
  if config.ndim == 1:
    return ", ".join(str(int(m)) for m in config)
  # Per layer: mean M of each type over layers (the full config is in chosen.json).
  return ", ".join(f"{m:.1f}" for m in config.mean(0)) + " (layer mean)"


def rows_by_key(rows, split: str, fmt: str = ANDA) -> dict:
  """config_key -> the row of `split` in format `fmt` covering the most windows (a racing
  slice's row is replaced by the same configuration's row on all windows)."""
  out = {}
  for r in rows:
    if r["split"] == split and r.get("format", ANDA) == fmt:
      key = config_key(np.asarray(r["precision"]))
      if key not in out or n_windows(r) >= n_windows(out[key]):
        out[key] = r
  return out


def n_windows(row: dict) -> float:
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
    interval = None if row is fp_row else perplexity.increase_interval(row, fp_row)
    if interval is not None and math.isfinite(interval.high):
      if best is None or abs(interval.estimate) < abs(best[1].estimate):
        best = (row, interval)
  return None if best is None else (best[1].half_width, best[0])


class _Run:
  """A search run's files, read once, and the table cells every section of the report shares."""

  def __init__(self, run_dir: pathlib.Path):
    self.dir = run_dir
    self.setup = json.loads((run_dir / "setup.json").read_text())
    self.chosen = json.loads((run_dir / "chosen.json").read_text())
    self.shape = cost.ModelShape(**self.setup["shape"])
    self.group = self.setup["format"]["group_size"]
    self.ebits = self.setup["format"]["exponent_bits"]
    self.rows = read_rows(run_dir / SearchLog.name)
    self.by_key = {s: rows_by_key(self.rows, s) for s in SPLITS}
    self.n_cal = self.setup["windows"]["calibration"]["n"]
    self.cal_rows = [r for r in self.by_key["calibration"].values() if n_windows(r) >= self.n_cal]
    if not self.cal_rows:
      raise ValueError(f"{run_dir / 'search.jsonl'} holds no calibration rows")
    self.like = np.asarray(self.cal_rows[0]["precision"])
    self.fp = {s: _fp_row(self.by_key[s]) for s in SPLITS}
    self.rule = self.chosen.get("rule", "point")  # runs before the intervals chose by the estimate
    # A search among formats (setup.json's candidates; none: Anda's M): values index formats.
    self.names = self.setup.get("candidates")
    self.choice = None if self.names is None else search_candidates.choice(self.names)
    self.fmt = self.choice or AndaFormat(self.group, self.ebits)
    self.uniform = (
        [(f"uniform M={m}", np.full_like(self.like, m)) for m in self.chosen["uniform_m"]]
        if self.choice is None else
        [(f"uniform {n}", np.full_like(self.like, v)) for v, n in enumerate(self.names, 1)])
    self.x_label = "mean M" if self.choice is None else "storage bits"
    self.hw = cost.accelerator(self.chosen.get("cost"))  # runs before the cost block: the defaults
    # A setup.json without the vocabulary (a shape recorded before the head was costed): the
    # head cannot be counted, and the report says so.
    self.head_unknown = self.hw.lm_head and self.shape.vocab is None
    if self.head_unknown:
      self.hw = dataclasses.replace(self.hw, lm_head=False)

  def x(self, config) -> float:
    """Where a configuration sits on the cost axis: Anda's mean M, or for a search among
    formats its mean storage bits per activation element."""
    if self.choice is None:
      return cost.mean_mantissa_bits(self.shape, config)
    return cost.format_storage_bits(self.shape, config, self.choice)

  def fmt_config(self, config) -> str:
    """A configuration as the tables show it: M per type, or the format of each type (per
    layer: each type's mean over layers, of M or of storage bits)."""
    config = np.asarray(config)
    if self.choice is None:
      return _fmt_config(config)
    if config.ndim == 1:
      return ", ".join(search_candidates.entry_names(config, self.names))
    bits = cost.activation_bits(self.shape, config, self.choice).mean(0)
    return ", ".join(f"{b:.2f}" for b in bits) + " bits (layer mean)"

  def ppl_cells(self, split, config):
    return self.cells(split, self.by_key[split].get(config_key(np.asarray(config))))

  def cells(self, split, row):
    """(perplexity, loss [interval] against FP) of a row on all the split's windows."""
    fp = self.fp[split]
    if row is None or n_windows(row) < self.setup["windows"][split]["n"]:
      return "–", "–"
    if row["perplexity"] is None:  # evaluated, not finite
      return "not finite", "–"
    if fp is None or fp["perplexity"] is None:
      return f"{row['perplexity']:.3f}", "–"
    interval = perplexity.increase_interval(row, fp)
    loss = f"{100 * (row['perplexity'] / fp['perplexity'] - 1):+.2f}%"
    if interval is not None and row is not fp:
      loss += f" [{100 * interval.low:+.2f}, {100 * interval.high:+.2f}]"
    return f"{row['perplexity']:.3f}", loss

  def line(self, label, config):
    s = cost.summarize(self.shape, config, self.group, self.ebits, self.hw)
    (pc, lc), (pt, lt) = self.ppl_cells("calibration", config), self.ppl_cells("test", config)
    return (f"| {label} | {_fmt_config(config)} | {pc} | {lc} | {pt} | {lt} | "
            f"{s['mean_m']:.2f} | {s['storage_bits']:.2f} | {100 * s['bops_saving']:.1f}% | "
            f"{s['speedup_vs_fp16']:.2f}x | {s['energy_saving_vs_fp16']:.2f}x |")

  def fits(self, config, tolerance):
    """Whether `config` fits `tolerance` by the run's rule (None: not evaluated on all windows)."""
    row = self.by_key["calibration"].get(config_key(np.asarray(config)))
    fp = self.fp["calibration"]
    if row is None or fp is None or n_windows(row) < self.n_cal:
      return None
    if self.rule == "upper" and "window_nll" in row:
      interval = perplexity.increase_interval(row, fp)
      return interval is not None and interval.high <= tolerance
    return (row["perplexity"] is not None and fp["perplexity"] is not None
            and row["perplexity"] / fp["perplexity"] - 1 <= tolerance)


def write_report(run_dir) -> str:
  """report.md and pareto.png of a run, from its setup.json, search.jsonl, chosen.json."""
  run = _Run(pathlib.Path(run_dir))
  mixed = run.choice is not None
  out = ((_mixed_chosen_section(run) if mixed else _chosen_section(run))
         + _search_section(run) + _noise_floor_section(run)
         + ([""] if mixed else _formats_section(run)) + _path_section(run)
         + _cost_model_section(run) + ["", "![Pareto plot](pareto.png)", ""])
  if run.like.ndim == 2:
    out += [f"![chosen {'format' if mixed else 'M'} per layer and type](layers.png)", ""]
    search_plots.layers(run)
  text = "\n".join(out)
  reports.write_text(run.dir / "report.md", text)
  search_plots.pareto(run)
  return text


def _intro(run: _Run, activations: str, walk: str) -> list[str]:
  """The report's title and first paragraph: model, `activations` (what the search quantizes
  them to), corpus and windows, granularity and `walk` (where it starts), what was evaluated."""
  setup, chosen, w = run.setup, run.chosen, run.setup["windows"]
  n_partial = sum(1 for r in run.by_key["calibration"].values() if n_windows(r) < run.n_cal)
  return [
      f"# Adaptive precision search: {run.dir.name}", "",
      f"Model `{setup['model']}` (int4_group_size={setup['int4_group_size']}), {activations}; "
      f"corpus `{setup['corpus']}`, windows of {setup['seq_len']} tokens: "
      f"{w['calibration']['n']} calibration, {w['test']['n']} test. Granularity "
      f"{chosen['granularity']}, {walk}; {len(run.cal_rows)} configurations evaluated on "
      "calibration"
      + (f", {n_partial} more only on the first {chosen['race_windows']} windows (dropped by "
         f"racing at level {chosen['race_level']})" if n_partial else "") + ".", "",
      *([line, ""] if (line := reports.weights_line(run.dir)) else [])]


def _rule_text(run: _Run) -> str:
  return (f"Loss is ppl / ppl_FP - 1 on the same windows, in brackets its "
          f"{perplexity.INTERVAL_METHOD}. "
          + ("A candidate fits a tolerance if the upper end of its interval is within it."
             if run.rule == "upper" else "A candidate fits a tolerance if its loss estimate is "
             "within it (the paper's rule)."))


def _table_configs(run: _Run) -> list[tuple[str, np.ndarray]]:
  """(label, configuration) of the main table: FP16, the chosen one of each tolerance (flagged
  where the start is over it or max_rounds stopped it), the uniform ones."""
  chosen = run.chosen
  out = [("FP16 activations", np.zeros_like(run.like))]
  for c in chosen["chosen"]:
    config = np.asarray(c["precision"])
    flag = " (start over tolerance)" if run.fits(config, c["tolerance"]) is False else ""
    if chosen.get("max_rounds") is not None and c.get("rounds", 0) >= chosen["max_rounds"]:
      flag += f" (stopped after max_rounds={chosen['max_rounds']})"
    out.append((f"{100 * c['tolerance']:g}%{flag}", config))
  return out + run.uniform


def _chosen_section(run: _Run) -> list[str]:
  chosen, rounding = run.chosen, run.setup["format"]["rounding"]
  return _intro(run, f"Anda format G={run.group}, exponent bits={run.ebits}, rounding={rounding}",
                f"start M={chosen['start_m']}, min M={chosen['min_m']}") + [
      "M per type is (" + ", ".join(MODULE_TYPES) + "); 0 = FP16. " + _rule_text(run)
      + " Mean M, storage bits per activation element (FP16: "
      "16) and the BOPs saving vs FP16 activations x INT4 weights are over the four searched "
      "sites; speedup and energy are modeled (`anda_jax.cost.Accelerator`) against the "
      "GPU-like FP16xFP16 baseline, " + _head_text(run) + "; the FP16-activations row runs its "
      "FP16 inputs on the Anda unit pre-aligned (FIGNA-like). Every assumption of the model, "
      "with its source, and how the ratios move with them: [the last section](#the-cost-model"
      "-its-assumptions-and-how-the-ratios-move-with-them).", "",
      "| tolerance | M per type | ppl calib | loss calib | ppl test | loss test | mean M "
      "| storage bits | BOPs saving | speedup vs FP16 | energy saving vs FP16 |",
      "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
      *(run.line(label, config) for label, config in _table_configs(run))]


def _mixed_chosen_section(run: _Run) -> list[str]:
  """The first section of a search among formats (docs/formats.md, section 10): which format
  each entry chose, its mean storage bits, losses and modeled cost, beside each candidate and
  each other format at every site."""
  levels = [f"{v} {n} ({b:.2f})" for v, (n, b) in enumerate(zip(
      run.names, search_candidates.ladder(run.shape, run.choice, False)[0, 1:]), 1)]
  own = [(label if label.startswith(("FP16", "uniform")) else f"mixed, tolerance {label}", c,
          run.choice) for label, c in _table_configs(run)]
  ones = np.ones_like(run.like)  # where the other formats are measured: every site
  others = [(name, ones, baselines.parse_format(name))
            for name in run.chosen.get("other_formats", [])]
  measured = {"format per type": [run.fmt_config(c) for _, c, _ in own]
              + ["all four"] * len(others)}
  for split in SPLITS:
    cells = [run.ppl_cells(split, c) for _, c, _ in own] + [
        run.cells(split, rows_by_key(run.rows, split, name).get(config_key(ones)))
        for name, _, _ in others]
    short = "calib" if split == SPLITS[0] else split
    measured[f"ppl {short}"] = [c[0] for c in cells]
    measured[f"loss {short}"] = [c[1] for c in cells]
  rows = cost_assumptions.configuration_rows(run.shape, own + others, run.hw)
  return _intro(run, "activations in a format chosen per entry among "
                f"{len(run.names)} (value: name (storage bits per element at qkv)): "
                + ", ".join(levels), "start FP16 everywhere, each round one entry moved to its "
                "next lower level of storage bits (every format of that level a candidate)") + [
      "Format per type is (" + ", ".join(MODULE_TYPES) + "); fp16 = floating point. "
      + _rule_text(run) + " Storage bits per activation element are over the four searched "
      "sites; lane-cycles per MAC, speedup and energy are modeled (`anda_jax.cost.Accelerator`) "
      "against the GPU-like FP16xFP16 baseline, " + _head_text(run) + ", each FP element in "
      "both models of `fp_elements` (aligned to its block's scale on the bit-serial unit, or a "
      "bit-parallel significand multiplier with a shifter); FP16 sites run pre-aligned "
      "(FIGNA-like). The other formats (`other_formats`) are measured at all four sites. Every "
      "assumption of the model, with its source: [the last section](#the-cost-model-its-"
      "assumptions-and-how-the-ratios-move-with-them).", "",
      cost.format_table(rows, measured)]


def _head_text(run: _Run) -> str:
  """How the run's cost settings treat the LM head, for the report's first paragraph."""
  hw = run.hw
  if run.head_unknown:
    return ("without the LM head, although `cost.lm_head` asks for it: setup.json records no "
            "vocabulary (`shape.vocab`), so the four searched sites only")
  if not hw.lm_head:
    return "without the LM head (`cost.lm_head=False`: the four searched sites only)"
  share = run.shape.head_macs() / hw.sites(run.shape)["macs"].sum()
  head_input = ("FP16 (no configuration quantizes it; FIGNA-like on the FP-INT designs)"
                if hw.head_mantissa_bits == 0 else
                f"in the qkv site's format at M = {hw.head_mantissa_bits} (`cost."
                "head_mantissa_bits`, a modeled figure: no evaluated row quantizes the head)")
  return (f"with the LM head as a site of its own (`cost.lm_head=True`, {100 * share:.1f}% of "
          f"the MACs): its input {head_input}, its weights {hw.head_weight_bits} bits")


def _search_section(run: _Run) -> list[str]:
  return ["", "## The search", "", _search_work(run)]


def _noise_floor_section(run: _Run) -> list[str]:
  out = ["", "## Tolerances and the noise floor", ""] + _resolution_lines(run)
  floor = noise_floor(run.by_key["calibration"])
  if floor is None:
    return out + ["The rows hold no per-window sums (a run before the intervals): no noise floor."]
  factor = search_resolution.RESOLUTION
  out += [f"Noise floor of the calibration windows: **±{100 * floor[0]:.2f}%**, the half-width "
          f"of the interval of the evaluated configuration whose loss is closest to 0 "
          f"({run.fmt_config(floor[1]['precision'])}): a loss difference smaller than that is not "
          "resolved by these windows.", "",
          "Intervals widen as a configuration departs from FP: the last columns are the "
          "half-width of the chosen configuration's own interval, measured, and whether the "
          f"tolerance is at least {factor:g} times it.", "",
          "| tolerance | rule | below the noise floor | half-width at the chosen configuration "
          f"| tolerance >= {factor:g} x that |", "|---|---|---|---:|---|"]
  for c in run.chosen["chosen"]:
    row = run.by_key["calibration"].get(config_key(np.asarray(c["precision"])))
    interval = None if row is None else perplexity.increase_interval(row, run.fp["calibration"])
    out.append(f"| {100 * c['tolerance']:g}% | {run.rule} | "
               + ("yes: more calibration tokens needed to resolve it" if c["tolerance"] < floor[0]
                  else "no")
               + f" | {'–' if interval is None else f'±{100 * interval.half_width:.2f}%'} | "
               + ("–" if interval is None else
                  "yes" if c["tolerance"] >= factor * interval.half_width else "no") + " |")
  return out


def _resolution_lines(run: _Run) -> list[str]:
  """What the search predicted before it ran about resolving its tolerances (chosen.json's
  `resolution`, experiments.search_resolution), and whether allow_unresolved overrode it."""
  res = run.chosen.get("resolution")
  if res is None:
    return ["Resolution before the run: not recorded (chosen.json has no `resolution`: the run "
            "predates the check of its tolerances against a noise-floor study).", ""]
  allowed = ("**`allow_unresolved=True`**: the search ran although " if res["allow_unresolved"]
             else "")
  if res["unchecked"] is not None:
    return [f"Resolution before the run: not predicted ({res['unchecked']}). " + (
        allowed + "nothing said whether its tolerances are resolved." if allowed else ""), ""]
  out = [f"Resolution before the run: from the noise-floor study `{res['noise_floor']}`, the "
         "half-width each tolerance is decided with on the run's "
         f"{res['calibration_tokens']:,} scored calibration tokens (its pair nearest the "
         "tolerance, half-width x sqrt(tokens) at its most tokens, over sqrt(these tokens)); a "
         f"tolerance is resolved when it is at least {res['factor']:g} times that.", "",
         "| tolerance | study's pair | predicted half-width | tokens needed | resolved |",
         "|---|---|---:|---:|---|"]
  out += [f"| {100 * t['tolerance']:g}% | {t['pair']} | ±{100 * t['half_width']:.2f}% | "
          + ("–" if t["tokens_needed"] is None else f"{t['tokens_needed']:,}")
          + f" | {'yes' if t['resolved'] else 'no'} |" for t in res["tolerances"]]
  unresolved = [f"{100 * t['tolerance']:g}%" for t in res["tolerances"] if not t["resolved"]]
  if unresolved:
    out += ["", (allowed or "The search ran although ") + "its calibration tokens do not "
            f"resolve {', '.join(unresolved)}: those decisions are not supported by the data."]
  return out + [""]


def _formats_section(run: _Run) -> list[str]:
  out = ["", "## The chosen configurations in other activation formats", "",
         "Each other format at the sites the configuration quantizes (FP16 elsewhere), on the "
         "same modeled unit; perplexities measured on the same windows where the run evaluated "
         "the format (`other_formats`: at all four sites), else –. Lane-cycles per MAC: the "
         "compute cost of one multiply-accumulate, averaged over every modeled site, the LM head "
         "included where it is counted (Anda: M at its sites; FP16xFP16: the FMA's area). Each "
         "FP element (MXFP, NVFP4, FP8) in both models of `fp_elements`: *aligned*, its "
         "significand aligned to the block's scale on the bit-serial unit, and *parallel*, a "
         "bit-parallel significand multiplier with a shifter (see `anda_jax.cost.Accelerator`); "
         "the other rows are the same in both.", ""]
  others = run.chosen.get("other_formats", [])
  for c in run.chosen["chosen"]:
    config = np.asarray(c["precision"])
    uniform_m = int(np.ceil(cost.mean_mantissa_bits(run.shape, config)))
    table = cost.compare_formats_by_mode(
        run.shape, config, run.group, run.ebits, hw=run.hw, uniform_m=uniform_m,
        other_formats=[baselines.parse_format(n) for n in others] or None)
    columns = {}
    for split in SPLITS:
      # The rows of compare_formats: FP16 twice, the other formats, uniform M, this config.
      measured = [run.cells(split, run.fp[split])] * 2 + [
          run.cells(split, rows_by_key(run.rows, split, name).get(
              config_key(np.ones_like(config))))
          if config.min() > 0 else ("–", "–") for name in others]
      n_rows = len(next(iter(table.values())))
      measured += [("–", "–")] * (n_rows - 2 - len(measured))  # no other_formats: MXINT8
      measured += [run.ppl_cells(split, np.full_like(config, uniform_m)),
                   run.ppl_cells(split, config)]
      short = "calib" if split == SPLITS[0] else split
      columns[f"ppl {short}"] = [m[0] for m in measured]
      columns[f"loss {short}"] = [m[1] for m in measured]
    out += [f"Tolerance {100 * c['tolerance']:g}%: M = {_fmt_config(config)}", "",
            cost.format_table(table, columns), ""]
  return out


def _path_section(run: _Run) -> list[str]:
  paths = _paths_on_test(run.chosen, run.by_key, run.fp) if run.chosen.get("test_path") else []
  if not paths:
    return []
  out = ["## The path on the test split", "",
         "Every configuration each search accepted, round by round (0: the start), with its "
         "loss on the calibration windows it was chosen on and on the held-out test windows "
         "(the search never sees them): where the two part, the search follows the noise of "
         "its calibration windows.", "",
         f"| tolerance | round | {run.x_label} | loss calib | loss test |",
         "|---|---:|---:|---:|---:|"]
  for c, points in paths:
    out += [f"| {100 * c['tolerance']:g}% | {i} | {run.x(config):.2f} "
            f"| {run.ppl_cells('calibration', config)[1]} | {run.ppl_cells('test', config)[1]} |"
            for i, config in enumerate(c["path"]) if i in points]
  search_plots.paths(run.dir, paths)
  return out + ["", "![loss along the path](path.png)", ""]


def _cost_model_section(run: _Run) -> list[str]:
  """Every assumption of the cost model with its source, the headline ratios over the FP16
  FMA's area, one other assumption changed at a time, and the paper's figures."""
  last = run.chosen["chosen"][-1]
  config = np.asarray(last["precision"])
  configs = [(f"{100 * c['tolerance']:g}%", np.asarray(c["precision"]))
             for c in run.chosen["chosen"]]
  args = (run.shape, config, run.group, run.ebits, run.hw)
  mixed = {} if run.choice is None else dict(fmt=run.choice)
  lanes = cost_assumptions.lanes_table(run.shape, configs, run.group, run.ebits, run.hw, **mixed)
  paper = [
      "### Against the paper's figures", "",
      f"The paper's reported averages ({cost_assumptions.PAPER_SOURCE}, over a GPU-like FP-FP "
      "baseline) next to the model's figures for the configuration of tolerance "
      f"{100 * last['tolerance']:g}%:", "",
      *cost_assumptions.paper_table(*args, model=run.setup["model"])]
  return [
      "## The cost model, its assumptions and how the ratios move with them", "",
      "The modeled figures rest on these numbers and rules (the run's `cost` settings, "
      "`--config.cost.<field>=`; they change the report, never an evaluated row). The model is "
      "analytic and not calibrated against hardware.", "",
      *cost_assumptions.assumptions_table(run.hw), "",
      "Speedup and energy saving of the chosen configurations against the area charged for "
      "one FP16 x FP16 FMA, the least certain number (every other assumption as configured):",
      "", *lanes, "",
      f"The chosen configuration of tolerance {100 * last['tolerance']:g}% with one other "
      "assumption changed at a time:", "", *cost_assumptions.what_if_table(*args, **mixed), "",
      *([] if mixed else paper)]  # the paper's figures are Anda's


def _paths_on_test(chosen, by_key, fp) -> list:
  """[(chosen entry, {round: (calibration, test) intervals})] for the tolerances whose path
  (evaluated on the test split with test.path) has more than its start, the rounds whose
  configuration has an interval against FP on both splits (per-window sums on FP's windows)."""
  out = []
  for c in chosen["chosen"]:
    points = {}
    for i, config in enumerate(c.get("path", [])):
      key = config_key(np.asarray(config))
      pair = tuple(perplexity.increase_interval(by_key[split][key], fp[split])
                   if key in by_key[split] else None for split in SPLITS)
      if None not in pair:
        points[i] = pair
    if len(points) > 1:
      out.append((c, points))
  return out
