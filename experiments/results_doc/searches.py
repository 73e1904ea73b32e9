"""The sections of the precision searches (per type, per layer, on the fine-tuned model) and of
the fine-tuning."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from anda_jax import cost
from anda_jax import cost_assumptions
from anda_jax.numerics import baselines
from anda_jax.precision import MODULE_TYPES
from experiments import finetune_report
from experiments import search_resolution
from experiments.results_doc import studies
from experiments.results_doc.runs import RUNS, Run, config_of, read_json, search_rows, source
from experiments.results_doc.text import increase, loss, loss_of, table

# ---------------------------------------------------------------------- the precision search

PAPER = cost_assumptions.PAPER


@dataclasses.dataclass
class Search:
  """A recorded search: its files, read once."""

  run: Run
  setup: dict
  chosen: dict
  rows: dict

  @classmethod
  def read(cls, run: Run) -> "Search":
    return cls(run, read_json(run, "setup.json"), read_json(run, "chosen.json"), search_rows(run))

  @property
  def shape(self):
    return cost.ModelShape(**self.setup["shape"])

  @property
  def hw(self):
    return cost.accelerator(self.chosen.get("cost"))  # runs before the cost block: defaults

  def like(self, m) -> list:
    """Uniform M in the shape of this search's configurations ([4] or [layers, 4])."""
    return np.full(np.shape(self.chosen["chosen"][0]["precision"]), m).tolist()

  def row(self, split: str, precision, fmt: str = "anda") -> dict | None:
    """The row of a configuration on all of the split's windows (None: not evaluated)."""
    r = self.rows.get((split, fmt, json.dumps(precision)))
    return r if r is not None and r["windows"] == self.setup["windows"][split]["n"] else None

  def other(self, split: str, fmt: str) -> dict | None:
    return next((r for k, r in self.rows.items() if k[:2] == (split, fmt)
                 and r["windows"] == self.setup["windows"][split]["n"]), None)

  def loss(self, split: str, row: dict | None):
    return increase(row, self.row(split, self.like(0)), "perplexity")

  def summary(self, precision) -> dict:
    f = self.setup["format"]
    return cost.summarize(self.shape, precision, f["group_size"], f["exponent_bits"], self.hw)

  def fits(self, precision, tolerance: float) -> bool:
    iv = self.loss("calibration", self.row("calibration", precision))[1]
    return iv is not None and iv.high <= tolerance


def m_per_type(precision) -> str:
  p = np.asarray(precision, float)
  if p.ndim == 1:
    return ", ".join(f"{m:g}" for m in p)
  return ", ".join(f"{m:.1f}" for m in p.mean(0)) + " (layer means)"


def tolerance_text(t: float) -> str:
  return f"{100 * t:g}%"


def search_table(s: Search, configs: list[tuple[str, list]]) -> list[str]:
  """FP and `configs` (label, precision): M, mean M, both splits' perplexity and loss, storage
  bits, BOPs saving, and which tolerances the calibration interval's upper end meets."""
  tols = [c["tolerance"] for c in s.chosen["chosen"]]
  lines = []
  for label, p in [("FP activations", s.like(0))] + configs:
    cal, test = s.row("calibration", p), s.row("test", p)
    c = s.summary(p)
    is_fp = label.startswith("FP")
    fit = "" if is_fp else ", ".join(tolerance_text(t) for t in tols if s.fits(p, t))
    shown = lambda split, r: "baseline" if is_fp else loss(*s.loss(split, r)) if r else "–"
    lines.append([label, "–" if is_fp else m_per_type(p), f"{c['mean_m']:.2f}",
                  "–" if cal is None else f"{cal['perplexity']:.3f}", shown("calibration", cal),
                  "–" if test is None else f"{test['perplexity']:.3f}", shown("test", test),
                  f"{c['storage_bits']:.2f}", f"{100 * c['bops_saving']:.1f}%", fit or "–"])
  return table(["configuration", "M (qkv, o, up, down)", "mean M", "calibration ppl",
                "calibration loss", "test ppl", "test loss", "storage bits", "BOPs saving",
                "fits (calibration, upper end)"], lines, "---|---|" + "---:|" * 8)


def search_path(s: Search, c: dict) -> list[tuple]:
  """(round, mean M, calibration (estimate, interval), test (estimate, interval)) along the
  configurations a tolerance's search accepted."""
  return [(i, s.summary(p)["mean_m"], s.loss("calibration", s.row("calibration", p)),
           s.loss("test", s.row("test", p))) for i, p in enumerate(c.get("path", []))]


def search_section(key: str = "search", title: str = "Precision search",
                   noise_anchor: str = "noise-floor", sweep_anchor: str = "sweep") -> list[str]:
  """A per-type search's section; the anchors: its model's noise-floor and sweep sections."""
  s = Search.read(RUNS[key])
  w = s.setup["windows"]
  chosen = s.chosen["chosen"]
  configs = [(f"search, tolerance {tolerance_text(c['tolerance'])}", c["precision"])
             for c in chosen]
  configs += [(f"uniform M = {m}", s.like(m)) for m in s.chosen["uniform_m"]]
  out = [f"## {title}", "", *studies.model_note(s.run),
         f"The adaptive precision search (G = {s.setup['format']['group_size']}, "
         f"{studies.ROUNDING[s.setup['format']['rounding']]}, M per module type, from "
         f"M = {s.chosen['start_m']} down, one bit a round): it searches on "
         f"{w['calibration']['n']} calibration windows of {s.setup['seq_len']} tokens and is "
         f"checked on {w['test']['n']} test windows from other articles. A candidate fits a "
         f"tolerance when the upper end of its calibration interval is within it; racing drops "
         f"a candidate after the first {s.chosen['race_windows']} windows when it is over the "
         f"tolerance even at the low end of a {s.chosen['race_level']:.0%} prediction bound. Mean "
         "M is weighted by the MACs each type feeds; storage bits count the sign and the shared "
         "exponent; the BOPs saving is against FP16 activations x INT4 weights.", ""]
  out += search_table(s, configs)
  out += source(s.run, ("search.jsonl", "chosen.json", "setup.json", "report.md", "work.json",
                        "pareto.png") + (("path.png",) if (s.run.path / "path.png").exists()
                                         else ()))
  out += [f"![calibration perplexity vs mean M](results/{s.run.folder}/pareto.png)", ""]
  for c in chosen:
    t = c["tolerance"]
    uniform = min((m for m in s.chosen["uniform_m"] if s.fits(s.like(m), t)), default=None)
    path = search_path(s, c)  # its test rows: with --config.test.path=True
    gaps = ([abs(cal[0] - test[0]) for _, _, cal, test in path]
            if all(test[0] is not None for *_, test in path) else [])
    saved = ("" if uniform is None else f"; the smallest uniform M that fits is {uniform}, "
             f"{s.summary(s.like(uniform))['mean_m'] - s.summary(c['precision'])['mean_m']:.2f} "
             "mean bits more")
    out.append(f"- Tolerance {tolerance_text(t)}: {c.get('rounds')} rounds, {c.get('candidates')} "
               f"candidates, {c.get('dropped_by_racing')} dropped by racing; chose "
               f"{m_per_type(c['precision'])} (mean M {s.summary(c['precision'])['mean_m']:.2f})"
               f"{saved}." + (f" Along its path the calibration and test losses stay within "
                              f"{100 * max(gaps):.2f} points of each other." if gaps else ""))
  floor = s.chosen["noise_floor"]
  below = [tolerance_text(c["tolerance"]) for c in chosen if c.get("below_noise_floor")]
  out += ["", f"The noise floor of the calibration windows (the half-width of the interval of the "
          f"evaluated configuration closest to FP) is ±{100 * floor:.2f}%"
          + (f": {', '.join(below)} lies below it, so more calibration tokens would be needed "
             "to resolve it" if below else "") + f" ([noise floor](#{noise_anchor})). "
          + below_fp_text(s, sweep_anchor) + "The report tables the path on the test split round "
          f"by round: [`report.md`](results/{s.run.folder}/report.md#the-path-on-the-test-split).",
          ""]
  return (out + resolution_text(s, noise_anchor)
          + (search_formats(s) if s.chosen.get("other_formats") else [])
          + against_the_paper(s))


def below_fp_text(s: Search, sweep_anchor: str) -> str:
  """Where uniform truncation lies below FP on the calibration windows (its estimate), if it
  does: why a search's losses can be negative."""
  below = [m for m in s.chosen["uniform_m"]
           if (s.loss("calibration", s.row("calibration", s.like(m)))[0] or 0) < 0]
  if not below or s.setup["format"]["rounding"] != "truncate":
    return ""
  return (f"Negative losses come from truncation, which lowers this model's perplexity slightly "
          f"(uniform M = {', '.join(map(str, below))} on these windows; "
          f"[sweep](#{sweep_anchor})). ")


def resolution_text(s: Search, noise_anchor: str = "noise-floor") -> list[str]:
  """What the search's check of its tolerances against the noise-floor study says of this run
  and of the default configuration (experiments.search_resolution)."""
  cfg = config_of(s.run.command)
  res = search_resolution.resolution(cfg, s.setup["windows"]["calibration"]["n"])
  default = config_of(s.run.command.split(" --config.")[0])
  sized = search_resolution.resolution(default, default.data.windows)
  if res["unchecked"] or sized["unchecked"]:
    raise ValueError("the noise-floor study does not apply: "
                     + (res["unchecked"] or sized["unchecked"]))
  needs = ", ".join(f"{tolerance_text(t['tolerance'])} {t['tokens_needed']:,}"
                    for t in res["tolerances"])
  unresolved = [tolerance_text(t["tolerance"]) for t in res["tolerances"] if not t["resolved"]]
  return [f"The search checks each tolerance before it runs: it must be at least "
          f"{res['factor']:g} times the half-width the [noise floor](#{noise_anchor}) study "
          f"predicts on the calibration tokens (its pair `{res['tolerances'][0]['pair']}`: "
          f"±{100 * res['tolerances'][0]['half_width']:.2f}% on this run's "
          f"{res['calibration_tokens']:,} scored tokens). The scored tokens needed: {needs}. "
          + (f"This run resolves {'neither' if len(unresolved) == 2 else 'not'} "
             f"{' nor '.join(unresolved)}: its command carries `--config.allow_unresolved=True`, "
             "without which it is refused. " if unresolved else "")
          + f"The default configuration decides "
          f"{' and '.join(tolerance_text(t) for t in default.tolerances)} on "
          f"{default.data.windows} windows ({sized['calibration_tokens']:,} scored tokens).", ""]


def search_formats(s: Search) -> list[str]:
  """Each chosen configuration and each other format (all four sites) on the same windows, with
  the modeled accelerator's cost, FP elements in both models (`fp_elements`)."""
  f = s.setup["format"]
  others = [baselines.parse_format(n) for n in s.chosen.get("other_formats", [])]
  lines = []
  for c in s.chosen["chosen"]:
    modes = cost.compare_formats_by_mode(s.shape, c["precision"], f["group_size"],
                                         f["exponent_bits"], hw=s.hw, other_formats=others)
    by_name = [{m["format"]: m for m in rows} for rows in modes.values()]
    names = [("Anda (this config)", f"Anda, searched at {tolerance_text(c['tolerance'])}",
              c["precision"])]
    if c is s.chosen["chosen"][-1]:
      names += [(baselines.format_name(o), baselines.format_name(o), None) for o in others]
    for key, name, precision in names:
      rows = [b[key] for b in by_name]
      cal = s.row("calibration", precision) if precision else s.other("calibration", key)
      test = s.row("test", precision) if precision else s.other("test", key)
      lines.append((s.loss("test", test)[0], [
          name, f"{rows[0]['storage_bits']:.2f}", loss(*s.loss("calibration", cal)),
          loss(*s.loss("test", test))] + [f"{r['lane_cycles_per_mac']:.2f}" for r in rows]
          + [f"{r['speedup_vs_fp16']:.2f}x" for r in rows]
          + [f"{r['energy_saving_vs_fp16']:.2f}x" for r in rows]))
  lines.sort(key=lambda e: e[0])
  out = ["### The chosen configurations against other formats", "",
         "The same windows in the formats hardware ships, each at all four sites (they round to "
         "nearest; the searched Anda truncates), with the modeled accelerator's figures "
         "(`anda_jax.cost.Accelerator` with the run's `cost` settings, the LM head included as "
         "a site of its own with FP16 input and 8-bit weights): lane-cycles per MAC averaged "
         "over every site, and the modeled speedup and energy saving against a GPU-like "
         "FP16 x FP16 unit. FP elements in both models: *aligned*, the element aligned to its "
         "block's scale on the bit-serial unit, and *parallel*, a bit-parallel significand "
         "multiplier with a shifter; Anda and the integer formats are the same in both. By "
         "test loss:", ""]
  mode_names = list(cost.FP_ELEMENT_MODELS)
  out += table(["format", "bits / element", "calibration loss", "test loss"]
               + [f"{what}, {m}" for what in ("lane-cycles / MAC", "modeled speedup",
                                             "modeled energy saving") for m in mode_names],
               [e[1] for e in lines])
  return out


def against_the_paper(s: Search) -> list[str]:
  """The largest tolerance's choice next to the paper's figures, how the modeled ratios move
  with the FP16 FMA's area and with one other assumption at a time."""
  f = s.setup["format"]
  c = s.chosen["chosen"][-1]
  args = (s.shape, c["precision"], f["group_size"], f["exponent_bits"], s.hw)
  base = s.summary(c["precision"])
  configs = [(tolerance_text(x["tolerance"]), x["precision"]) for x in s.chosen["chosen"]]
  report = f"results/{s.run.folder}/report.md"
  out = ["### Against the paper's figures", "",
         f"The paper reports a {PAPER['speedup']}x speedup, {PAPER['area_efficiency']}x area "
         f"efficiency and {PAPER['energy_efficiency']}x energy efficiency over a GPU-like "
         f"FP-FP baseline ({cost_assumptions.PAPER_SOURCE}). The cost model gives "
         f"{base['speedup_vs_fp16']:.2f}x and {base['energy_saving_vs_fp16']:.2f}x for the "
         f"{tolerance_text(c['tolerance'])} configuration above, with the LM head "
         f"({100 * base['head_share']:.0f}% of the MACs, its input FP16 and its weights "
         f"{s.hw.head_weight_bits} bits, as the checkpoint stores them). The model gives "
         "every design the same area, so its speedup is a throughput per area (the counterpart "
         "of the paper's area efficiency, not of its speedup); it is analytic, and every number "
         "it rests on is tabled with its source in "
         f"[the report]({report}#the-cost-model-its-assumptions-and-how-the-ratios-move-with-"
         "them).", ""]
  out += cost_assumptions.paper_table(*args, model=s.setup["model"]) + [""]
  out += ["Every ratio scales with the area charged for one FP16 x FP16 FMA (`fp16_fma_lanes`, "
          f"{s.hw.fp16_fma_lanes:g} lanes: the significand multiplier only, an assumption):", ""]
  out += cost_assumptions.lanes_table(s.shape, configs, f["group_size"], f["exponent_bits"],
                                      s.hw) + [""]
  out += ["One other assumption changed at a time (each a field of `anda_jax.cost.Accelerator`, "
          "`--config.cost.<field>=`; they change the report, never an evaluated row):", ""]
  return out + cost_assumptions.what_if_table(*args) + [""]


def work_text(s: Search) -> str:
  """What the search's work record (chosen.json's `work`) says racing and prefix reuse saved."""
  w = s.chosen.get("work")
  if not w:
    return ""
  passes, without = w["layer_passes"], w["layer_passes_without_prefix_reuse"]
  scope = ("the processes it recorded" if w.get("earlier_unrecorded") else "the whole run")
  return (f"Over {scope}: {w['calibration_window_evaluations']} calibration window evaluations, "
          f"{w['saved_by_racing']} more saved by racing; {passes} layer passes where "
          f"{without} without prefix reuse ({1 - passes / without:.0%} saved).")


def layer_search_section() -> list[str]:
  one, s = Search.read(RUNS["layer"]), Search.read(RUNS["layer_from_type"])
  start, c = one.chosen["chosen"][0], s.chosen["chosen"][-1]
  out = ["## Per-layer search", "",
         "The same search with M per layer and module type (`--config.granularity=layer`): each "
         "candidate lowers one (layer, type) entry by a bit and runs from the hidden state "
         "entering its layer (prefix reuse).", "",
         "### One round from M = 10", ""]
  out += search_table(one, [(f"after 1 round, tolerance {tolerance_text(x['tolerance'])}",
                             x["precision"]) for x in one.chosen["chosen"]])
  out += source(one.run, ("search.jsonl", "chosen.json", "setup.json", "report.md", "layers.png"))
  out += [f"A round evaluates {start.get('candidates')} candidates (one per layer and type); one "
          "bit a round, a search from M = 10 everywhere needs a round per bit it removes. "
          + work_text(one), "",
          "### From the per-type result, to the end", "",
          f"Every layer starts from the per-type 1% result ({m_per_type(c['path'][0])}); up to "
          f"{s.chosen.get('max_accept')} of a round's fitting candidates are taken together if "
          f"together they fit (else half as many, ...). The search ran {c.get('rounds')} rounds"
          + (" to the end (the last found no step that fits)" if s.chosen.get("max_rounds") is None
             and c.get("rounds", 0) >= len(c["path"]) else "")
          + f": {c.get('candidates')} candidates, "
          f"{c.get('dropped_by_racing')} dropped by racing. " + work_text(s), ""]
  out += search_table(s, [("per-type start", c["path"][0]),
                          (f"per layer, tolerance {tolerance_text(c['tolerance'])}",
                           c["precision"])]
                      + [(f"uniform M = {m}", s.like(m)) for m in s.chosen["uniform_m"]])
  out += source(s.run, ("search.jsonl", "chosen.json", "setup.json", "report.md", "work.json",
                        "path.png", "layers.png"))
  path = search_path(s, c)
  fits = [t[1] is not None and t[1].high <= c["tolerance"] for _, _, _, t in path]
  holds = None if not fits[0] else (fits + [False]).index(False) - 1
  test_iv = path[-1][3]
  out += ["![loss along the per-layer path on calibration and test]"
          "(results/search_smollm2_layer_from_type/path.png)", "",
          f"**The result does not hold on the test articles**: {loss(*path[-1][2])} on "
          f"calibration, {loss(*test_iv)} on test. With {np.size(c['precision'])} entries and "
          f"{s.setup['windows']['calibration']['n']} calibration windows (noise floor "
          f"±{100 * s.chosen['noise_floor']:.2f}% at this configuration) the greedy keeps taking "
          "steps whose loss on those windows is negative by chance: it fits the windows. "
          + ("" if holds is None else "By the search's own rule the path holds on test up to "
             f"round {holds} (mean M {path[holds][1]:.2f}) and no further, but a round picked by "
             "looking at the test split is no longer checked by it. ")
          + "A per-layer search needs many more calibration tokens (or "
          "a tighter tolerance) than a per-type one; the per-type result is the one to use here. "
          "The path, round by round:", ""]
  out += table(["round", "mean M", "calibration loss", "test loss"],
               [[i, f"{m:.2f}", loss(*cal), loss(*test)] for i, m, cal, test in path])
  p = np.asarray(c["precision"])
  out += ["<details><summary>The chosen M per layer</summary>", ""]
  out += table(["layer"] + [f"`{t}`" for t in MODULE_TYPES],
               [[i] + list(map(int, p[i])) for i in range(len(p))])
  out += ["</details>", "", "To replay the run from its rows (nothing is evaluated again): copy "
          "the folder to `results/`, `gunzip search.jsonl.gz`, and run its command.", ""]
  return out

# ---------------------------------------------------------------------- fine-tuning


def finetune_section() -> list[str]:
  run = RUNS["finetune"]
  before, arms = finetune_report.read(run.path)
  fp = before[0]["ppl"]
  setup = read_json(run, "setup.json")
  train, n = setup["train"], setup["windows"]
  controls = any(a.arm == finetune_report.CONTROL for a in arms)
  lines = [[a.m, loss(*increase(before.get(a.m), before[0])), a.subset, a.arm, a.seed,
            f"{a.row['n_params']:,}", loss(*a.vs_untuned_fp), loss(*a.fp_vs_untuned_fp)]
           + ([loss(*a.vs_control) if a.arm == finetune_report.ANDA else "–"] if controls else [])
           + [f"{a.row['best_step']} of {a.row['steps']}", f"{a.row['train_seconds']:.0f}"]
           for a in arms]
  with_sums = all("window_nll" in ev for a in arms for ev in (a.at_m, a.at_fp))
  out = ["## Fine-tuning", "",
         "Anda-aware fine-tuning: all four types in Anda at M (G = "
         f"{setup['format']['group_size']}, truncation); for each M and each trainable subset, "
         f"{train['steps']} AdamW steps of "
         f"{train['batch_size']} x {n['train']['shape'][1]} tokens from {n['train']['shape'][0]} "
         f"calibration windows, validated every {train['eval_every']} steps on "
         f"{n['val']['shape'][0]} windows of other calibration articles (the best step is kept), "
         f"then the test perplexity on {n['test']['shape'][0]} x {n['test']['shape'][1]} test "
         f"tokens. `norms`: the RMSNorm gains; `lora`: rank-{train['rank']} adapters on the four "
         f"products of every layer. Every perplexity is shown against the untuned model's "
         f"FP-activation test perplexity ({fp:.3f}), on the same windows: the tuned model at M "
         "and with FP activations"
         + (", and tuned under Anda against the control (the same tuning with float "
            "activations), both at M" if controls else "") + ". "
         + ("Intervals: the paired bootstrap over the test windows." if with_sums else
            "The rows hold no per-window NLL sums, so these perplexities have no intervals."), ""]
  out += table(["M", "untuned at M", "subset", "arm", "seed", "trained values", "tuned at M",
                "tuned, FP activations"] + (["vs control at M"] if controls else [])
               + ["best step", "train s"], lines,
               "---:|---|---|---|---:|---:|---|---|" + ("---|" if controls else "") + "---:|---:|")
  out += source(run, ("results.jsonl", "results.csv", "setup.json", "loss_curves.png"))
  out += ["![training and validation loss](results/finetune_smollm2/loss_curves.png)", ""]
  out += [f"- {line}." for line in finetune_report.what_tuning_buys(before, arms)]
  if not controls:
    out += ["- This run has no control arm, one seed and no per-window sums (it was recorded "
            "before the experiment had them; `python -m experiments.finetune "
            "--config=configs/finetune.py` now trains the control and three seeds): how much of "
            "the gain is tuning itself, fitting text like the test articles, rather than recovery "
            "from Anda is not measured here. The tuned models' FP-activation perplexity moves "
            "too: " + ", ".join(f"{loss(*a.fp_vs_untuned_fp)} (M = {a.m}, {a.subset})"
                                   for a in arms) + "."]
  out += ["- Tuned parameters are specialized: apply a file only at (or near) the configuration "
          "it was trained for (`--config.finetune`, recorded in setup.json with its sha256).", ""]
  return out + tuned_search()


def tuned_search() -> list[str]:
  base, tuned = Search.read(RUNS["search_base"]), Search.read(RUNS["search_norms6"])
  if base.setup["windows"] != tuned.setup["windows"]:
    raise ValueError("the searches on the untuned and the tuned model are not on the same windows")
  untuned_fp = base.row("test", base.like(0))
  lines = []
  for name, s in (("untuned", base), ("norms tuned at M = 6", tuned)):
    for c in [dict(tolerance=None, precision=s.like(0))] + s.chosen["chosen"]:
      p, fp = c["precision"], c["tolerance"] is None
      cal, test = s.row("calibration", p), s.row("test", p)
      own = "baseline" if fp else loss(*s.loss("test", test))
      lines.append([name, "FP activations" if fp else tolerance_text(c["tolerance"]),
                    "–" if fp else m_per_type(p), f"{s.summary(p)['mean_m']:.2f}",
                    f"{cal['perplexity']:.3f}",
                    "baseline" if fp else loss(*s.loss("calibration", cal)),
                    f"{test['perplexity']:.3f}", own,
                    loss_of(test, untuned_fp, "perplexity") if s is tuned else own])
  out = ["### The search on the tuned model", "",
         "The [precision search](#precision-search) on the model with the norms tuned at M = 6, "
         "against the same search on the untuned model. Its tolerance is measured against the "
         "tuned model's own FP perplexity, and its calibration windows include articles the "
         "tuning trained on: the test rows are the honest check.", ""]
  out += table(["model", "tolerance", "M (qkv, o, up, down)", "mean M", "calibration ppl",
                "calibration loss (own FP)", "test ppl", "test loss (own FP)",
                "test, vs untuned FP"], lines, "---|---|---|---:|---:|---|---:|---|---|")
  out += source(base.run, ("search.jsonl", "chosen.json", "setup.json", "report.md"))
  out += source(tuned.run, ("search.jsonl", "chosen.json", "setup.json", "report.md"))
  for c0, c1 in zip(base.chosen["chosen"], tuned.chosen["chosen"]):
    m0, m1 = base.summary(c0["precision"])["mean_m"], tuned.summary(c1["precision"])["mean_m"]
    out.append(f"- Tolerance {tolerance_text(c0['tolerance'])}: the tuned norms buy "
               f"{m0 - m1:.2f} mean bits ({m0:.2f} -> {m1:.2f}).")
  return out + [""]
