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


def sweep_section() -> list[str]:
  run = RUNS["sweep"]
  setup = read_json(run, "setup.json")
  base, cells = anda_cells(run)
  gs, ms = sorted({k[0] for k in cells}), sorted({k[2] for k in cells})
  d = setup["data"]
  out = ["## Sweep", "",
         f"Each module type alone in Anda (the others FP) and all four together (`all`), G in "
         f"{{{', '.join(map(str, gs))}}} x M in {ms[0]}..{ms[-1]}, truncation, on {d['windows']} "
         f"{d['split']} windows of {d['seq_len']} tokens ({base['tokens']:.0f} scored tokens). "
         f"FP-activation perplexity: {base['ppl']:.4f}.", ""]
  out += source(run, ("results.jsonl", "results.csv", "setup.json", "ppl_vs_m.png", "heatmap.png"))
  out += ["![perplexity vs M](results/sweep_smollm2/ppl_vs_m.png)", "",
          "![G x M heatmap](results/sweep_smollm2/heatmap.png)", ""]
  out += table(["G", "type"] + [f"M = {m}" for m in ms],
               [[g, f"`{t}`"] + [loss_of(cells.get((g, t, m)), base) for m in ms]
                for g in gs for t in TYPES], "---:|---|" + "---|" * len(ms))
  out += sweep_findings(base, cells, gs, ms)
  return out


def sweep_findings(base, cells, gs, ms) -> list[str]:
  est = {k: increase(r, base) for k, r in cells.items()}
  point = lambda g, t: smallest_m({m: est[g, t, m][0] for m in ms if (g, t, m) in est}, 0.01)
  upper = lambda g, t: smallest_m({m: (est[g, t, m][1].high if est[g, t, m][1] else None)
                                   for m in ms if (g, t, m) in est}, 0.01)
  out = ["### Smallest M within 1%", "",
         "The smallest M from which the loss stays within 1% at every larger M of the grid: by "
         "the estimate, and in brackets by the upper end of its interval (the rule the "
         "[precision search](#precision-search) uses). Last row: the storage bits per activation "
         "of all four types at the first number (sign, M bits, and the 8-bit shared exponent "
         "over G elements).", ""]
  bits = {g: cells[g, "all", point(g, "all")]["storage_bits"] for g in gs if point(g, "all")}
  out += table(["type"] + [f"G = {g}" for g in gs],
               [[f"`{t}`"] + [f"{point(g, t)} ({upper(g, t)})" for g in gs] for t in TYPES]
               + [["bits, `all`"] + [f"{bits[g]:g}" if g in bits else "–" for g in gs]])
  g0, m0 = (64, 4) if (64, "up", 4) in est else (gs[0], ms[len(ms) // 2])
  ranked = sorted(MODULE_TYPES, key=lambda t: est[g0, t, m0][0])
  late = [(k, v) for k, v in est.items() if k[1] == "all" and k[2] >= 7 and v[0] is not None]
  (g1, _, m1), (e1, iv1) = min(late, key=lambda kv: kv[1][0])
  cheapest = min(bits, key=bits.get)
  out += [f"- The input of `{ranked[-1]}` is the most sensitive activation and that of "
          f"`{ranked[0]}` the least: at G = {g0}, M = {m0}, `{ranked[-1]}` alone costs "
          f"{loss(*est[g0, ranked[-1], m0])}, `{ranked[0]}` alone {loss(*est[g0, ranked[0], m0])}. "
          "A larger G shares one exponent among more values and needs more bits.",
          f"- All four types within 1% are cheapest in storage at G = {cheapest} "
          f"({bits[cheapest]:g} bits per activation).",
          f"- Truncation rounds toward zero, and from M = 7 on it lowers the perplexity slightly "
          f"(the lowest `all` cell: {loss(e1, iv1)} at G = {g1}, M = {m1}); rounding to nearest "
          "approaches FP from above instead ([rounding](#rounding)).", ""]
  return out


def rounding_section() -> list[str]:
  truncate, formats, nearest = RUNS["sweep"], RUNS["formats"], RUNS["nearest"]
  same_windows(truncate, formats, nearest)
  base_t, cells_t = anda_cells(truncate)
  base_f, cells_f = anda_cells(formats)
  base_n, cells_n = anda_cells(nearest)
  g = 64
  ms = sorted(m for (gg, t, m) in cells_n if gg == g and t == "all")
  rows = [["truncate (sweep)"] + [loss_of(cells_t.get((g, "all", m)), base_t) for m in ms],
          ["nearest (formats study)"] + [loss_of(cells_f.get((g, "all", m)), base_f) for m in ms],
          ["nearest (dedicated run)"] + [loss_of(cells_n.get((g, "all", m)), base_n) for m in ms],
          ["nearest / truncate - 1 (formats study over sweep, paired)"]
          + [loss_of(cells_f.get((g, "all", m)), cells_t.get((g, "all", m))) for m in ms]]
  gap = max(abs(increase(cells_f[g, "all", m], base_f)[0]
                - increase(cells_n[g, "all", m], base_n)[0]) for m in ms)
  out = ["## Rounding", "",
         f"All four types in Anda at G = {g}, truncation against round-to-nearest (ties to even), "
         f"on the sweep's windows. The dedicated nearest run's rows hold no per-window NLL sums, so "
         f"they have no interval; the [formats study](#formats) evaluated the same configurations "
         f"with round-to-nearest on the same windows with the sums, which gives the intervals and "
         f"the paired ratio of the two roundings. The two nearest rows differ by at most "
         f"{100 * gap:.2f} percentage points.", ""]
  out += table(["rounding"] + [f"M = {m}" for m in ms], rows, "---|" + "---|" * len(ms))
  out += source(nearest, ("results.jsonl", "results.csv", "setup.json"))
  out += ["Truncation: [sweep](#sweep); nearest with intervals: [formats study](#formats).", ""]
  lo = min(ms)
  out += [f"At M = {lo} rounding to nearest loses {loss_of(cells_f[g, 'all', lo], base_f)} where "
          f"truncation loses {loss_of(cells_t[g, 'all', lo], base_t)}; from M = 8 on, nearest "
          "stays close to FP while truncation stays below it.", ""]
  return out

# ---------------------------------------------------------------------- sensitivity


ROUNDING = dict(truncate="truncation", nearest="rounding to nearest",
                stochastic="stochastic rounding")


def model_note(run: Run) -> list[str]:
  """A paragraph on the model of a run on another model than SmolLM2 (the page's default)."""
  setup = read_json(run, "setup.json")
  if setup["model"]["name"] == "smollm2-135m":
    return []
  return [f"Model: {setup['model']['name']}"
          + (", every window starting with BOS" if setup.get("bos_first") else "")
          + f"; {reports.weights_line(run.path)}.", ""]


def sensitivity_section(key: str = "sensitivity", title: str = "Per-layer sensitivity") -> list[str]:
  run = RUNS[key]
  rows = result_rows(run)
  base = rows["fp"]
  cells = {(r["layer"], r["type"], r["mantissa_bits"]): increase(r, base)
           for r in rows.values() if r["layer"] is not None}
  layers, ms = sorted({k[0] for k in cells}), sorted({k[2] for k in cells})
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
  worst = sorted((k for k in cells if k[2] == m_top), key=lambda k: -cells[k][0])[:10]
  out += [f"The ten most sensitive (layer, type) pairs at M = {m_top}, and every pair over 1% at "
          f"M = {top}:", ""]
  out += table(["M", "pair", "loss"], [[k[2], name(k), loss(*cells[k])] for k in worst + over],
               "---:|---|---|")
  first, last = layers[0], layers[-1]
  edge = sum(1 for k in worst if k[0] in (first, last))
  by_type = {t: sum(1 for k in worst if k[1] == t) for t in MODULE_TYPES}
  common = max(by_type, key=by_type.get)
  out += [f"Of the ten most sensitive pairs at M = {m_top}, {edge} sit in the first or the last "
          f"layer ({first}, {last}) and {by_type[common]} are the input of `{common}`. A "
          "per-layer search can spend its bits where the sensitivity sits "
          "([per-layer search](#per-layer-search)).", ""]
  return out

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
  with (run.path / "noise_floor.csv").open() as f:
    entries = list(csv.DictReader(f))
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
  needed = float(f"{tokens * (hw / 0.001) ** 2:.3g}")
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


def half_width_finding(at: dict, n: int) -> str:
  """Whether the half-width on n windows grows with the loss: M = 6 against M = 8."""
  hw = {p: float(at[p, n]["half_width"]) for p in ("M6 vs fp", "M8 vs fp")}
  grows = hw["M6 vs fp"] > hw["M8 vs fp"]
  return (f"- The half-width {'grows' if grows else 'does not grow'} with the loss (M = 6: "
          f"±{100 * hw['M6 vs fp']:.2f}%, M = 8: ±{100 * hw['M8 vs fp']:.2f}%, on {n} windows): an "
          "interval belongs to its configuration, and the search's noise floor (the half-width of "
          "the evaluated configuration closest to FP) is the smallest tolerance it can resolve.")

# ---------------------------------------------------------------------- formats


def verdict(iv, name: str) -> str:
  if iv is None:
    return "not resolved"
  if iv.low == iv.high == 0:
    return "identical on these windows"
  return "Anda ahead" if iv.high < 0 else f"{name} ahead" if iv.low > 0 else "not resolved"


def formats_section() -> list[str]:
  run = RUNS["formats"]
  rows = result_rows(run)
  base = rows["fp"]
  at_all = [r for r in rows.values() if r["type"] == "all"]
  anda = [r for r in at_all if formats_report.format_of(r) == formats_report.ANDA]
  others = sorted((r for r in at_all if formats_report.format_of(r) != formats_report.ANDA),
                  key=lambda r: (r["storage_bits"], r["id"]))
  lines, verdicts = [], {}
  for o in others:
    c = formats_report.comparison(anda, o)
    best, cheapest, name = c["best"], c["cheapest"], formats_report.format_of(o)
    verdicts[name] = verdict(c["versus"], name)
    versus = "–" if best is None else f"{loss(*increase(best, o))}: {verdicts[name]}"
    saved = 0 if cheapest is None else o["storage_bits"] - cheapest["storage_bits"]
    than = ("as many" if abs(saved) < 1e-9
            else f"{abs(saved):.2f} {'fewer' if saved > 0 else 'more'}")
    fewest = ("none on this grid" if cheapest is None else
              f"{cheapest['storage_bits']:g} (G={cheapest['group_size']}, "
              f"M={cheapest['mantissa_bits']}): {than}")
    lines.append([name, f"{o['storage_bits']:.2f}", loss_of(o, base),
                  "none" if best is None else f"G={best['group_size']}, M={best['mantissa_bits']} "
                  f"({best['storage_bits']:g})", loss_of(best, base), versus, fewest])
  d = read_json(run, "setup.json")["data"]
  out = ["## Formats", "",
         f"Anda against the formats hardware ships (OCP MX, NVFP4, per-token FP8 and INT8; "
         f"defined in [formats.md](formats.md)), each through the models' product entry point at "
         f"all four sites and at each site alone, and Anda at all four sites over G x M, on the "
         f"sweep's {d['windows']} {d['split']} windows ({base['tokens']:.0f} scored tokens; FP "
         f"perplexity {base['ppl']:.3f}). Everything rounds to nearest (ties to even), Anda "
         "included. Storage bits per activation element count the scales (MX: 8 bits per block "
         "of 32; NVFP4: 8 per 16 plus a float32 per token; per-token formats: a float32 per "
         "token), averaged over the sites by the elements each reads. For each format: the most "
         "accurate Anda within its bits, their paired perplexity ratio (Anda ahead: the interval "
         "lies below 0), and the fewest bits at which an Anda is as good.", ""]
  out += table(["format (all four sites)", "bits / element", "increase over FP",
                "most accurate Anda within its bits", "its increase",
                "Anda / format perplexity - 1", "fewest bits for an Anda as good"],
               lines, "---|---:|---|---|---|---|---|")
  out += source(run, ("results.jsonl", "results.csv", "formats.md", "setup.json", "pareto.png"))
  out += ["![perplexity increase vs storage bits](results/formats_smollm2/pareto.png)", ""]
  return out + formats_findings(rows, base, others, anda, verdicts)


def formats_findings(rows, base, others, anda, verdicts) -> list[str]:
  single = {(formats_report.format_of(r), r["type"]): r for r in rows.values()
            if formats_report.format_of(r) != formats_report.ANDA and r["type"] in MODULE_TYPES}
  names = [formats_report.format_of(o) for o in others]
  out = ["### Each format at one site (the others FP)", ""]
  out += table(["format"] + [f"`{t}`" for t in MODULE_TYPES],
               [[n] + [loss_of(single.get((n, t)), base) for t in MODULE_TYPES] for n in names],
               "---|" + "---|" * len(MODULE_TYPES))
  worst = {n: max(MODULE_TYPES, key=lambda t: increase(single[n, t], base)[0]) for n in names
           if all((n, t) in single for t in MODULE_TYPES)}
  group = lambda pick: [n for n in names if pick(verdicts[n])]
  listed = lambda ns: ", ".join(ns) or "none"
  ahead = group(lambda v: v.endswith(" ahead") and not v.startswith("Anda"))
  within = [n for n in names if increase(rows[f"{n}-all"], base)[0] <= 0.01]
  cheapest = min((r for r in anda if increase(r, base)[0] <= 0.01), key=lambda r: r["storage_bits"])
  sites = {t: [n for n in names if worst.get(n) == t] for t in MODULE_TYPES}
  out += [f"- At equal bits Anda is ahead of {listed(group(lambda v: v == 'Anda ahead'))}; "
          f"ahead of every Anda within their bits: {listed(ahead)}; not resolved by these windows: "
          f"{listed(group(lambda v: v == 'not resolved'))}; identical on every window: "
          f"{listed(group(lambda v: v.startswith('identical')))}"
          + (" (MXINT8 is Anda at G = 32, M = 7 rounding to nearest, up to its clamp)"
             if "mxint8" in group(lambda v: v.startswith("identical")) else "") + ".",
          f"- Within 1% of FP at all four sites: {', '.join(within) or 'no other format'}, and "
          f"Anda from {cheapest['storage_bits']:g} bits (G={cheapest['group_size']}, "
          f"M={cheapest['mantissa_bits']}: {loss_of(cheapest, base)}).",
          "- The formats with small per-element exponents (FP6 E2M3, NVFP4) do better at 6 bits "
          "and below: a group's largest value sets Anda's shared exponent and so the precision of "
          "every other element in it, while an E2M3 or E2M1 element keeps exponent bits of its own "
          "(a likely reason, not measured here).",
          "- The most sensitive site alone: " + "; ".join(f"`{t}` for {', '.join(ns)}"
                                                          for t, ns in sites.items() if ns) + ".",
          "- Storage is half of Anda's case: on its bit-serial unit Anda's cost follows M, not the "
          "bits stored, while an FP element costs its aligned integer width "
          "([the search's cost table](#the-chosen-configurations-against-other-formats)).", ""]
  return out
