"""The sections of the sweeps and the sensitivity study, the noise floor and the formats study."""

from __future__ import annotations

import csv

from anda_jax.precision import MODULE_TYPES
from experiments import formats_report
from experiments.harness import reports
from experiments.results_doc.runs import RUNS, Run, read_json, result_rows, source
from experiments.results_doc.text import increase, loss, loss_of, same_windows, table

# ---------------------------------------------------------------------- sweep and rounding

TYPES = (*MODULE_TYPES, "all")


def anda_cells(run: Run) -> tuple[dict, dict]:
  """(FP row, {(G, type, M): Anda row}) of a sweep run."""
  rows = result_rows(run)
  return rows["fp"], {(r["group_size"], r["type"], r["mantissa_bits"]): r for r in rows.values()
                      if r["type"] != "fp" and r.get("format", formats_report.ANDA) == "anda"}


def smallest_m(losses: dict, tolerance: float) -> int | None:
  """The smallest M from which every larger M of the grid stays within `tolerance`
  ({M: loss}; a missing or non-finite loss does not)."""
  best = None
  for m in sorted(losses, reverse=True):
    if losses[m] is None or not losses[m] <= tolerance:
      break
    best = m
  return best


def sweep_section(key: str = "sweep", title: str = "Sweep",
                  rounding_anchor: str | None = "rounding") -> list[str]:
  """A sweep's section; `rounding_anchor`: the section comparing its truncation with rounding to
  nearest on the same windows (None: there is none)."""
  run = RUNS[key]
  setup = read_json(run, "setup.json")
  f = sweep_facts(run)
  base, cells, gs, ms = f["base"], f["cells"], f["gs"], f["ms"]
  d = setup["data"]
  out = [f"## {title}", "", *model_note(run),
         f"Each module type alone in Anda (the others FP) and all four together (`all`), G in "
         f"{{{', '.join(map(str, gs))}}} x M in {ms[0]}..{ms[-1]}, "
         f"{ROUNDING[setup['rounding']]}, on {d['windows']} {d['split']} windows of "
         f"{d['seq_len']} tokens ({base['tokens']:.0f} scored tokens). "
         f"FP-activation perplexity: {base['ppl']:.4f}.", ""]
  out += source(run, ("results.jsonl", "results.csv", "setup.json", "ppl_vs_m.png", "heatmap.png"))
  out += [f"![perplexity vs M](results/{run.folder}/ppl_vs_m.png)", "",
          f"![G x M heatmap](results/{run.folder}/heatmap.png)", ""]
  out += table(["G", "type"] + [f"M = {m}" for m in ms],
               [[g, f"`{t}`"] + [loss_of(cells.get((g, t, m)), base) for m in ms]
                for g in gs for t in TYPES], "---:|---|" + "---|" * len(ms))
  return out + sweep_findings(f, rounding_anchor)


def sweep_facts(run: Run) -> dict:
  """What a sweep finds, as numbers: the smallest M within 1% per (G, type) by the estimate and
  by the interval's upper end, the storage bits of `all` there, the most and least sensitive type
  alone at one (G, M), the cheapest G within 1% and truncation's lowest `all` cell from M = 7."""
  base, cells = anda_cells(run)
  gs, ms = sorted({k[0] for k in cells}), sorted({k[2] for k in cells})
  est = {k: increase(r, base) for k, r in cells.items()}
  point = lambda g, t: smallest_m({m: est[g, t, m][0] for m in ms if (g, t, m) in est}, 0.01)
  upper = lambda g, t: smallest_m({m: (est[g, t, m][1].high if est[g, t, m][1] else None)
                                   for m in ms if (g, t, m) in est}, 0.01)
  bits = {g: cells[g, "all", point(g, "all")]["storage_bits"] for g in gs if point(g, "all")}
  g0, m0 = (64, 4) if (64, "up", 4) in est else (gs[0], ms[len(ms) // 2])
  ranked = sorted(MODULE_TYPES, key=lambda t: est[g0, t, m0][0])
  late = [(k, v) for k, v in est.items() if k[1] == "all" and k[2] >= 7 and v[0] is not None]
  return dict(base=base, cells=cells, gs=gs, ms=ms, est=est, g0=g0, m0=m0, ranked=ranked,
              bits=bits,
              rounding=read_json(run, "setup.json")["rounding"],
              point={(g, t): point(g, t) for g in gs for t in TYPES},
              upper={(g, t): upper(g, t) for g in gs for t in TYPES},
              cheapest=min(bits, key=bits.get) if bits else None,
              lowest_late=min(late, key=lambda kv: kv[1][0]) if late else None)


def sweep_findings(f: dict, rounding_anchor: str | None) -> list[str]:
  gs, est, g0, m0, ranked, bits = f["gs"], f["est"], f["g0"], f["m0"], f["ranked"], f["bits"]
  out = ["### Smallest M within 1%", "",
         "The smallest M from which the loss stays within 1% at every larger M of the grid: by "
         "the estimate, and in brackets by the upper end of its interval (the rule the "
         "[precision search](#precision-search) uses). Last row: the storage bits per activation "
         "of all four types at the first number (sign, M bits, and the 8-bit shared exponent "
         "over G elements).", ""]
  out += table(["type"] + [f"G = {g}" for g in gs],
               [[f"`{t}`"] + [f"{f['point'][g, t]} ({f['upper'][g, t]})" for g in gs]
                for t in TYPES]
               + [["bits, `all`"] + [f"{bits[g]:g}" if g in bits else "–" for g in gs]])
  out += [f"- The input of `{ranked[-1]}` is the most sensitive activation and that of "
          f"`{ranked[0]}` the least: at G = {g0}, M = {m0}, `{ranked[-1]}` alone costs "
          f"{loss(*est[g0, ranked[-1], m0])}, `{ranked[0]}` alone {loss(*est[g0, ranked[0], m0])}. "
          "A larger G shares one exponent among more values and needs more bits."]
  if f["cheapest"] is not None:
    out.append(f"- All four types within 1% are cheapest in storage at G = {f['cheapest']} "
               f"({bits[f['cheapest']]:g} bits per activation).")
  if f["lowest_late"] is not None:
    (g1, _, m1), (e1, iv1) = f["lowest_late"]
    lowers = e1 < 0
    out.append(f"- From M = 7 on, the lowest `all` cell is {loss(e1, iv1)} (G = {g1}, M = {m1})"
               + (": truncation rounds toward zero and lowers this model's perplexity slightly"
                  if lowers and f["rounding"] == "truncate" else "")
               + ("." if rounding_anchor is None else "; rounding to nearest approaches FP from "
                  f"above instead ([rounding](#{rounding_anchor}))."))
  return out + [""]


def rounding_section(title: str = "Rounding", truncate: str = "sweep", formats: str = "formats",
                     nearest: str | None = "nearest", formats_anchor: str = "formats",
                     sweep_anchor: str = "sweep") -> list[str]:
  """Anda at every site, truncation (a sweep) against rounding to nearest (a formats study, with
  intervals; and a dedicated nearest sweep where one exists) on the same windows."""
  runs = [RUNS[truncate], RUNS[formats]] + ([RUNS[nearest]] if nearest else [])
  same_windows(*runs)
  base_t, cells_t = anda_cells(runs[0])
  base_f, cells_f = anda_cells(runs[1])
  g = 64
  ms = sorted(m for (gg, t, m) in cells_f if gg == g and t == "all" and (gg, t, m) in cells_t)
  rows = [["truncate (sweep)"] + [loss_of(cells_t.get((g, "all", m)), base_t) for m in ms],
          ["nearest (formats study)"] + [loss_of(cells_f.get((g, "all", m)), base_f) for m in ms]]
  text = (f"All four types in Anda at G = {g}, truncation against round-to-nearest (ties to even), "
          f"on the sweep's windows: the [formats study](#{formats_anchor}) evaluated Anda rounding "
          "to nearest on the same windows with the per-window sums, which gives the intervals and "
          "the paired ratio of the two roundings.")
  if nearest:
    base_n, cells_n = anda_cells(runs[2])
    rows.append(["nearest (dedicated run)"]
                + [loss_of(cells_n.get((g, "all", m)), base_n) for m in ms])
    gap = max(abs(increase(cells_f[g, "all", m], base_f)[0]
                  - increase(cells_n[g, "all", m], base_n)[0])
              for m in ms if (g, "all", m) in cells_n)
    text += (" The dedicated nearest run's rows hold no per-window NLL sums, so they have no "
             f"interval; the two nearest rows differ by at most {100 * gap:.2f} percentage points.")
  paired = {m: increase(cells_f[g, "all", m], cells_t[g, "all", m]) for m in ms}
  rows.append(["nearest / truncate - 1 (formats study over sweep, paired)"]
              + [loss(*paired[m]) for m in ms])
  out = [f"## {title}", "", *model_note(runs[0]), text, ""]
  out += table(["rounding"] + [f"M = {m}" for m in ms], rows, "---|" + "---|" * len(ms))
  if nearest:
    out += source(runs[2], ("results.jsonl", "results.csv", "setup.json"))
  out += [f"Truncation: [sweep](#{sweep_anchor}); nearest with intervals: "
          f"[formats study](#{formats_anchor}).", ""]
  side = lambda pick: ", ".join(str(m) for m in ms
                                if paired[m][1] is not None and pick(paired[m][1]))
  t8 = increase(cells_t.get((g, "all", 8)), base_t)
  n8 = increase(cells_f.get((g, "all", 8)), base_f)
  out += [f"Rounding to nearest is ahead (paired interval below 0) at M = "
          f"{side(lambda iv: iv.high < 0) or 'none'}, truncation at M = "
          f"{side(lambda iv: iv.low > 0) or 'none'}"
          + ("" if t8[0] is None else f"; at M = 8 truncation gives {loss(*t8)} against FP and "
             f"nearest {loss(*n8)}") + ".", ""]
  return out


# ---------------------------------------------------------------------- sensitivity


ROUNDING = dict(truncate="truncation", nearest="rounding to nearest",
                stochastic="stochastic rounding")


def model_note(run: Run) -> list[str]:
  """A paragraph on the model of a run on another model than SmolLM2 (the page's default)."""
  setup = read_json(run, "setup.json")
  model = setup["model"]  # the search records its name only
  name = model if isinstance(model, str) else model["name"]
  if name == "smollm2-135m":
    return []
  return [f"Model: {name}"
          + (", every window starting with BOS" if setup.get("bos_first") else "")
          + f"; {reports.weights_line(run.path)}.", ""]


def sensitivity_section(key: str = "sensitivity", title: str = "Per-layer sensitivity") -> list[str]:
  run = RUNS[key]
  f = sensitivity_facts(run)
  base, cells, layers, ms = f["base"], f["cells"], f["layers"], f["ms"]
  setup = read_json(run, "setup.json")
  d = setup["data"]
  pairs = len(layers) * len(MODULE_TYPES)
  name = lambda k: f"layer {k[0]} `{k[1]}`"
  out = [f"## {title}", "", *model_note(run),
         f"Each of the {len(layers)} layers x 4 types alone in Anda (G = {setup['group_size']}, "
         f"{ROUNDING[setup['rounding']]}; the rest "
         f"FP), M in {{{', '.join(map(str, ms))}}}, on {d['windows']} {d['split']} windows of "
         f"{d['seq_len']} tokens ({base['tokens']:.0f} scored tokens), each from a cached float "
         f"prefix. FP-activation perplexity on these windows: {base['ppl']:.4f}. In the heatmap a "
         "dot marks a cell whose interval holds 0.", ""]
  out += source(run, ("results.jsonl", "results.csv", "setup.json", "heatmap.png"))
  out += [f"![per-layer sensitivity heatmap](results/{run.folder}/heatmap.png)", ""]
  summary = []
  for m in ms:
    at = {k: v for k, v in cells.items() if k[2] == m}
    worst = max(at, key=lambda k: at[k][0])
    summary.append([m, sum(v[0] <= 0.01 for v in at.values()),
                    sum(v[1] is not None and v[1].low <= 0 <= v[1].high for v in at.values()),
                    f"{name(worst)}: {loss(*at[worst])}"])
  out += table(["M", f"pairs within 1% (of {pairs})", "pairs whose interval holds 0",
                "the most sensitive pair"], summary, "---:|---:|---:|---|")
  top, m_top = ms[-1], ms[0]
  over = sorted((k for k in cells if k[2] == top and cells[k][0] > 0.01),
                key=lambda k: -cells[k][0])
  out += [f"The ten most sensitive (layer, type) pairs at M = {m_top}, and every pair over 1% at "
          f"M = {top}:", ""]
  out += table(["M", "pair", "loss"],
               [[k[2], name(k), loss(*cells[k])] for k in f["worst"] + over], "---:|---|---|")
  out += [f"Of the ten most sensitive pairs at M = {m_top}, {f['edge']} sit in the first or the "
          f"last layer ({layers[0]}, {layers[-1]}) and {f['by_type'][f['common']]} are the input "
          f"of `{f['common']}`. A per-layer search can spend its bits where the sensitivity sits "
          "([per-layer search](#per-layer-search)).", ""]
  return out


def sensitivity_facts(run: Run) -> dict:
  """A sensitivity study's cells {(layer, type, M): (estimate, interval)} and what they show: the
  ten most sensitive pairs at the smallest M, how many sit in the first or last layer, how many
  feed each type, and the type most of them feed."""
  rows = result_rows(run)
  base = rows["fp"]
  cells = {(r["layer"], r["type"], r["mantissa_bits"]): increase(r, base)
           for r in rows.values() if r["layer"] is not None}
  layers, ms = sorted({k[0] for k in cells}), sorted({k[2] for k in cells})
  worst = sorted((k for k in cells if k[2] == ms[0]), key=lambda k: -cells[k][0])[:10]
  by_type = {t: sum(1 for k in worst if k[1] == t) for t in MODULE_TYPES}
  return dict(base=base, cells=cells, layers=layers, ms=ms, worst=worst, by_type=by_type,
              edge=sum(1 for k in worst if k[0] in (layers[0], layers[-1])),
              common=max(by_type, key=by_type.get))

# ---------------------------------------------------------------------- noise floor


def pair_label(pair: str) -> str:
  """"M8~ vs M8" -> "M = 8 moved 1 ulp vs M = 8" (`~`: embeddings moved by one unit in the last
  place)."""
  name = lambda c: ("FP" if c.rstrip("~") == "fp" else f"M = {c.rstrip('~')[1:]}") + (
      " moved" if c.endswith("~") else "")
  a, b = pair.split(" vs ")
  return f"{name(a)} vs {name(b)}"


def noise_floor_section(key: str = "noise", title: str = "Noise floor") -> list[str]:
  run = RUNS[key]
  entries = noise_entries(run)
  rows = result_rows(run)
  pairs = list(dict.fromkeys(e["pair"] for e in entries))
  sizes = sorted({int(e["windows"]) for e in entries})
  at = {(e["pair"], int(e["windows"])): e for e in entries}
  full = {p: increase(rows[p.split(" vs ")[0]], rows[p.split(" vs ")[1]]) for p in pairs}
  cell = lambda v: f"±{100 * float(v):.2g}" if float(v) >= 1e-4 else f"±{100 * float(v):.1g}"
  table_rows = [[f"{float(at[pairs[0], n]['tokens']):,.0f} ({n})"]
                + [cell(at[p, n]["half_width"]) for p in pairs] for n in sizes]
  table_rows.append([f"the difference itself, all {sizes[-1]} windows"]
                    + [loss(*full[p], digits=3) if abs(full[p][0]) >= 1e-4
                       else f"{100 * full[p][0]:+.1g}%" for p in pairs])
  d = read_json(run, "setup.json")["data"]
  m8 = next(p for p in pairs if p.startswith("M8 "))
  moved = next(p for p in pairs if p.startswith("M8~"))
  fp_moved = next(p for p in pairs if p.startswith("fp~"))
  hw = float(at[m8, sizes[-1]]["half_width"])
  tokens = float(at[m8, sizes[-1]]["tokens"])
  spread = at[moved, 16]["spread"] if (moved, 16) in at else None
  setup = read_json(run, "setup.json")
  out = [f"## {title}", "", *model_note(run),
         f"How the interval of a perplexity difference narrows with the tokens, and how far a "
         f"last-bit change of the inputs moves a perplexity. FP activations and uniform M (G = "
         f"{setup['group_size']}, {ROUNDING[setup['rounding']]}), each also with its "
         "embeddings moved by one unit in the last place at random (`moved`: the size of what "
         "another CPU's or framework's summation order changes), on "
         f"{d['windows']} {d['split']} windows of {d['seq_len']} tokens, split into disjoint "
         "interleaved subsets; each difference gets its interval on each subset. Half-width of "
         "the 95% interval in % of perplexity (median over the subsets of that size):", ""]
  out += table(["scored tokens (windows)"] + [pair_label(p) for p in pairs], table_rows)
  out += source(run, ("results.jsonl", "noise_floor.csv", "setup.json", "noise_floor.png"))
  needed = tokens_to_resolve(entries)
  out += [f"![interval half-width vs scored tokens](results/{run.folder}/noise_floor.png)",
          "",
          f"- The interval narrows about as 1 / sqrt(tokens). To resolve a 0.1% tolerance near "
          f"M = 8 the half-width must fall below 0.1%: about {tokens:,.0f} x "
          f"({100 * hw:.3f} / 0.1)^2 = {needed:,.0f} calibration tokens.",
          f"- A last-bit change of the inputs moves the FP perplexity by "
          f"{100 * full[fp_moved][0]:+.1g}% but Anda's by {loss(*full[moved], digits=3)} (M = 8): "
          "quantization turns last-bit float noise "
          "into value changes wherever a value sits on a rounding boundary."
          + ("" if spread is None else f" On {float(at[moved, 16]['tokens']):,.0f} tokens that "
             f"noise alone spreads M = 8's loss by ±{100 * float(spread):.2f}% (1.96 standard "
             "deviations of the disjoint subsets' estimates)."),
          half_width_finding(at, sizes[-1]), ""]
  return out


def noise_entries(run: Run) -> list[dict]:
  """noise_floor.csv's rows: per pair and subset size, the median half-width and its tokens."""
  with (run.path / "noise_floor.csv").open() as f:
    return list(csv.DictReader(f))


def tokens_to_resolve(entries: list[dict], tolerance: float = 0.001) -> float:
  """The calibration tokens at which the interval of M = 8 against FP narrows to `tolerance`
  (its half-width on all windows, shrinking as 1 / sqrt(tokens)), to three digits."""
  full = max((e for e in entries if e["pair"].startswith("M8 ")), key=lambda e: int(e["windows"]))
  return float(f"{float(full['tokens']) * (float(full['half_width']) / tolerance) ** 2:.3g}")


def half_width_finding(at: dict, n: int) -> str:
  """Whether the half-width on n windows grows with the loss: M = 6 against M = 8."""
  hw = {p: float(at[p, n]["half_width"]) for p in ("M6 vs fp", "M8 vs fp")}
  grows = hw["M6 vs fp"] > hw["M8 vs fp"]
  return (f"- The half-width {'grows' if grows else 'does not grow'} with the loss (M = 6: "
          f"±{100 * hw['M6 vs fp']:.2f}%, M = 8: ±{100 * hw['M8 vs fp']:.2f}%, on {n} windows): an "
          "interval belongs to its configuration, and the search's noise floor (the half-width of "
          "the evaluated configuration closest to FP) is the smallest tolerance it can resolve.")
