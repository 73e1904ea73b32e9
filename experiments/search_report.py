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
from anda_jax.precision import MODULE_TYPES, config_key
from experiments.harness import perplexity
from experiments.harness import reports
from experiments import search_resolution
from experiments.search_log import ANDA, SPLITS, SearchLog, read_rows


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
    self.hw = cost.accelerator(self.chosen.get("cost"))  # runs before the cost block: the defaults
    # A setup.json without the vocabulary (a shape recorded before the head was costed): the
    # head cannot be counted, and the report says so.
    self.head_unknown = self.hw.lm_head and self.shape.vocab is None
    if self.head_unknown:
      self.hw = dataclasses.replace(self.hw, lm_head=False)

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
  out = (_chosen_section(run) + _search_section(run) + _noise_floor_section(run)
         + _formats_section(run) + _path_section(run) + _cost_model_section(run)
         + ["", "![Pareto plot](pareto.png)", ""])
  if run.like.ndim == 2:
    out += ["![chosen M per layer and type](layers.png)", ""]
    _plot_layers(run.dir, run.chosen)
  text = "\n".join(out)
  reports.write_text(run.dir / "report.md", text)
  _plot(run.dir, run.shape, run.cal_rows, run.chosen, run.fp["calibration"], run.like)
  return text


def _chosen_section(run: _Run) -> list[str]:
  setup, chosen, w = run.setup, run.chosen, run.setup["windows"]
  n_partial = sum(1 for r in run.by_key["calibration"].values() if n_windows(r) < run.n_cal)
  out = [
      f"# Adaptive precision search: {run.dir.name}", "",
      f"Model `{setup['model']}` (int4_group_size={setup['int4_group_size']}), Anda format "
      f"G={run.group}, exponent bits={run.ebits}, rounding={setup['format']['rounding']}; corpus "
      f"`{setup['corpus']}`, windows of {setup['seq_len']} tokens: "
      f"{w['calibration']['n']} calibration, {w['test']['n']} test. Granularity "
      f"{chosen['granularity']}, start M={chosen['start_m']}, min M={chosen['min_m']}; "
      f"{len(run.cal_rows)} configurations evaluated on calibration"
      + (f", {n_partial} more only on the first {chosen['race_windows']} windows (dropped by "
         f"racing at level {chosen['race_level']})" if n_partial else "") + ".", "",
      *([line, ""] if (line := reports.weights_line(run.dir)) else []),
      "M per type is (" + ", ".join(MODULE_TYPES) + "); 0 = FP16. Loss is ppl / ppl_FP - 1 "
      f"on the same windows, in brackets its {perplexity.INTERVAL_METHOD}. "
      + ("A candidate fits a tolerance if the upper end of its interval is within it."
         if run.rule == "upper" else "A candidate fits a tolerance if its loss estimate is "
         "within it (the paper's rule).") + " Mean M, storage bits per activation element (FP16: "
      "16) and the BOPs saving vs FP16 activations x INT4 weights are over the four searched "
      "sites; speedup and energy are modeled (`anda_jax.cost.Accelerator`) against the "
      "GPU-like FP16xFP16 baseline, " + _head_text(run) + "; the FP16-activations row runs its "
      "FP16 inputs on the Anda unit pre-aligned (FIGNA-like). Every assumption of the model, "
      "with its source, and how the ratios move with them: [the last section](#the-cost-model"
      "-its-assumptions-and-how-the-ratios-move-with-them).", "",
      "| tolerance | M per type | ppl calib | loss calib | ppl test | loss test | mean M "
      "| storage bits | BOPs saving | speedup vs FP16 | energy saving vs FP16 |",
      "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
      run.line("FP16 activations", np.zeros_like(run.like)),
  ]
  for c in chosen["chosen"]:
    config = np.asarray(c["precision"])
    flag = " (start over tolerance)" if run.fits(config, c["tolerance"]) is False else ""
    if chosen.get("max_rounds") is not None and c.get("rounds", 0) >= chosen["max_rounds"]:
      flag += f" (stopped after max_rounds={chosen['max_rounds']})"
    out.append(run.line(f"{100 * c['tolerance']:g}%{flag}", config))
  out += [run.line(f"uniform M={m}", np.full_like(run.like, m)) for m in chosen["uniform_m"]]
  return out


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
  return ["", "## The search", "", _search_work(run.chosen)]


def _noise_floor_section(run: _Run) -> list[str]:
  out = ["", "## Tolerances and the noise floor", ""] + _resolution_lines(run)
  floor = noise_floor(run.by_key["calibration"])
  if floor is None:
    return out + ["The rows hold no per-window sums (a run before the intervals): no noise floor."]
  factor = search_resolution.RESOLUTION
  out += [f"Noise floor of the calibration windows: **±{100 * floor[0]:.2f}%**, the half-width "
          f"of the interval of the evaluated configuration whose loss is closest to 0 "
          f"({_fmt_config(floor[1]['precision'])}): a loss difference smaller than that is not "
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
         "| tolerance | round | mean M | loss calib | loss test |", "|---|---:|---:|---:|---:|"]
  for c, points in paths:
    out += [f"| {100 * c['tolerance']:g}% | {i} | "
            f"{cost.mean_mantissa_bits(run.shape, config):.2f} "
            f"| {run.ppl_cells('calibration', config)[1]} | {run.ppl_cells('test', config)[1]} |"
            for i, config in enumerate(c["path"]) if i in points]
  _plot_paths(run.dir, paths)
  return out + ["", "![loss along the path](path.png)", ""]


def _cost_model_section(run: _Run) -> list[str]:
  """Every assumption of the cost model with its source, the headline ratios over the FP16
  FMA's area, one other assumption changed at a time, and the paper's figures."""
  last = run.chosen["chosen"][-1]
  config = np.asarray(last["precision"])
  configs = [(f"{100 * c['tolerance']:g}%", np.asarray(c["precision"]))
             for c in run.chosen["chosen"]]
  args = (run.shape, config, run.group, run.ebits, run.hw)
  lanes = cost_assumptions.lanes_table(run.shape, configs, run.group, run.ebits, run.hw)
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
      "assumption changed at a time:", "", *cost_assumptions.what_if_table(*args), "",
      "### Against the paper's figures", "",
      f"The paper's reported averages ({cost_assumptions.PAPER_SOURCE}, over a GPU-like FP-FP "
      "baseline) next to the model's figures for the configuration of tolerance "
      f"{100 * last['tolerance']:g}%:", "",
      *cost_assumptions.paper_table(*args, model=run.setup["model"])]


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


def _plot_paths(run_dir, paths) -> None:
  """path.png: loss with its interval on calibration and on test against the round, one panel
  per tolerance, the tolerance as a line."""
  plt = reports.pyplot()
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
  reports.save_figure(fig, run_dir / "path.png", dpi=110)
  plt.close(fig)


def _plot_layers(run_dir, chosen) -> None:
  """A per-layer search's chosen M per (layer, type), one panel per tolerance, the start's M
  marked where the search lowered nothing."""
  plt = reports.pyplot()
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
  reports.save_figure(fig, run_dir / "layers.png", dpi=110)
  plt.close(fig)


def _plot(run_dir, shape, cal_rows, chosen, fp_row, like) -> None:
  """Left: every point, log scale; right: zoomed on the tolerances around FP. Error bars: the
  paired intervals against FP, where the rows hold per-window sums."""
  plt = reports.pyplot()

  fp_ppl = None if fp_row is None else fp_row["perplexity"]

  def point(row):  # (mean M, perplexity, [below, above] error) of a finite row
    interval = None if fp_ppl is None else perplexity.increase_interval(row, fp_row)
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
  rows = {config_key(np.asarray(r["precision"])): r for r in cal_rows}
  uni = [rows.get(config_key(np.full_like(like, m))) for m in chosen["uniform_m"]]
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
      row = rows.get(config_key(np.asarray(c["precision"])))
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
        point(r)[1] - point(r)[2][0] for r in (rows.get(config_key(
            np.asarray(c["precision"]))) for c in chosen["chosen"]) if r and r["perplexity"]]
    axes[1].set_ylim(min(ys + [fp_ppl] + bars) - 0.002 * fp_ppl, top)
    if near:
      xs = [p[0] for p in near]
      axes[1].set_xlim(min(xs) - 0.25, max(xs) + 0.25)
  axes[1].set_title(reports.fit_title(
      "near FP16 (dotted: FP and FP x (1 + tolerance)); bars: "
      + perplexity.INTERVAL_METHOD.split(" over")[0] + " against FP", 0.45 * fig.get_figwidth()),
      fontsize=9)
  fig.tight_layout()
  reports.save_figure(fig, run_dir / "pareto.png", dpi=110)
  plt.close(fig)
