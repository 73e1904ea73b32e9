"""SmolLM2 and Gemma 3 side by side: each study's findings on both models, and which transfer."""

from __future__ import annotations

from anda_jax.precision import MODULE_TYPES
from experiments.results_doc import formats
from experiments.results_doc import searches
from experiments.results_doc import studies
from experiments.results_doc.runs import RUNS
from experiments.results_doc.text import increase, loss, table

# Each model's runs by study (keys of RUNS); a study not recorded for a model shows "not run".
MODELS = {"SmolLM2-135M": dict(sweep="sweep", formats="formats", sensitivity="sensitivity",
                               noise="noise", search="search"),
          "Gemma 3 270M": dict(sweep="gemma3_sweep", formats="gemma3_formats",
                               sensitivity="gemma3_sensitivity", noise="gemma3_noise",
                               search="gemma3_search")}
NOT_RUN = "not run"
TOLERANCE = 0.01


def facts(runs: dict) -> dict:
  """What each recorded study of one model finds ({study: facts}; a study not run is absent)."""
  have = {study: RUNS[key] for study, key in runs.items() if key in RUNS}
  out = {}
  if "sweep" in have:
    out["sweep"] = studies.sweep_facts(have["sweep"])
    # Uniform M = 8 at G = 64 against FP: truncation (the sweep), rounding to nearest (the formats
    # study, on the same windows).
    nearest = None
    if "formats" in have:
      base, cells = studies.anda_cells(have["formats"])
      nearest = increase(cells.get((64, "all", 8)), base)
    out["bias"] = (out["sweep"]["est"].get((64, "all", 8)), nearest)
    # Where truncation lowers the perplexity, interval and all: all four types, G = 64.
    out["below_fp"] = [m for (g, t, m), (_, iv) in sorted(out["sweep"]["est"].items())
                       if (g, t) == (64, "all") and iv is not None and iv.high < 0]
  if "formats" in have:
    out["formats"] = formats.equal_bits(have["formats"])
  if "sensitivity" in have:
    out["sensitivity"] = studies.sensitivity_facts(have["sensitivity"])
  if "noise" in have:
    out["noise"] = studies.tokens_to_resolve(studies.noise_entries(have["noise"]))
  if "search" in have:
    s = searches.Search.read(have["search"])
    chosen = next((c for c in s.chosen["chosen"] if c["tolerance"] == TOLERANCE), None)
    out["search"] = chosen and (chosen["precision"], s.summary(chosen["precision"])["mean_m"],
                                s.loss("test", s.row("test", chosen["precision"])),
                                s.setup["windows"]["calibration"]["n"])
  return out


def cells(f: dict, format_names: list[str]) -> list[str]:
  """One model's column of the table (rows as in `ROWS`)."""
  sw, se = f.get("sweep"), f.get("sensitivity")
  col = []
  if sw:
    g, m, ranked, est = sw["g0"], sw["m0"], sw["ranked"], sw["est"]
    col += [f"`{ranked[-1]}` {loss(*est[g, ranked[-1], m])}",
            f"`{ranked[0]}` {loss(*est[g, ranked[0], m])}",
            ", ".join(f"{sw['point'][g, t]}" for t in MODULE_TYPES),
            "none" if sw["cheapest"] is None else
            f"G = {sw['cheapest']} ({sw['bits'][sw['cheapest']]:g} bits)"]
  else:
    col += [NOT_RUN] * 4
  bias = f.get("bias")
  col.append(NOT_RUN if bias is None or bias[0] is None else
             f"{loss(*bias[0])} / {NOT_RUN if bias[1] is None else loss(*bias[1])}")
  if se:
    col += [f"{se['edge']} in the first or last layer, {se['by_type'][se['common']]} feed "
            f"`{se['common']}`",
            f"{sum(v[0] <= TOLERANCE for k, v in se['cells'].items() if k[2] == 6)} of "
            f"{len(se['layers']) * len(MODULE_TYPES)}"]
  else:
    col += [NOT_RUN] * 2
  col.append(NOT_RUN if "noise" not in f else f"{f['noise']:,.0f}")
  search = f.get("search")
  col.append(NOT_RUN if search is None else
             f"M = ({', '.join(map(str, search[0]))}), mean M {search[1]:.2f}, test "
             f"{loss(*search[2])} ({search[3]} calibration windows)")
  fm = f.get("formats", {})
  col += [NOT_RUN if n not in fm else
          f"{fm[n][0]}" + ("" if fm[n][1] is None else f", {loss(*fm[n][1])}")
          for n in format_names]
  return col


def transfer_section() -> list[str]:
  found = {model: facts(runs) for model, runs in MODELS.items()}
  names = list(dict.fromkeys(n for f in found.values() for n in f.get("formats", {})))
  sw = next(f["sweep"] for f in found.values() if "sweep" in f)
  g, m = sw["g0"], sw["m0"]
  labels = [f"most sensitive type alone (G = {g}, M = {m})",
            f"least sensitive type alone (G = {g}, M = {m})",
            f"smallest M within 1% at G = {g} ({', '.join(MODULE_TYPES)})",
            "cheapest G with all four types within 1%",
            f"uniform M = 8 at G = {g} against FP: truncation / rounding to nearest",
            "the ten most sensitive (layer, type) pairs at the smallest M",
            "(layer, type) pairs within 1% at M = 6",
            "calibration tokens to resolve 0.1% near M = 8",
            f"the per-type search at {100 * TOLERANCE:g}%: its choice and its test loss"]
  labels += [f"Anda against {n} at equal bits" for n in names]
  columns = {model: cells(f, names) for model, f in found.items()}
  out = ["## SmolLM2 and Gemma 3 side by side", "",
         "Each study's finding on both models, read from the sections above (same corpus, windows "
         "of the same length, the same grids; Gemma's windows start with BOS and its FP-INT "
         "matrices are INT4 with groups of 32). Losses against FP activations on the model's own "
         "windows, with their intervals. Against another format at equal bits: the verdict and "
         "the paired ratio of the most accurate Anda within the format's bits (both rounding to "
         f"nearest) to the format, minus 1. `{NOT_RUN}`: the study has not been recorded for that "
         "model.", ""]
  out += table(["finding"] + list(columns),
               [[label] + [columns[model][i] for model in columns]
                for i, label in enumerate(labels)], "---|" + "---|" * len(columns))
  return out + transfer_findings(found, names)


def transfer_findings(found: dict, names: list[str]) -> list[str]:
  """Which findings hold on both models: a sentence each, from the facts."""
  (a, fa), (b, fb) = found.items()
  both = lambda study: study in fa and study in fb
  out = ["What transfers:", ""]
  if both("sweep"):
    for end, label in ((-1, "most"), (0, "least")):
      ta, tb = fa["sweep"]["ranked"][end], fb["sweep"]["ranked"][end]
      out.append(f"- The {label} sensitive type: `{ta}` on {a}, `{tb}` on {b}"
                 + (" (transfers)." if ta == tb else " (does not transfer)."))
    ga, gb = fa["sweep"].get("cheapest"), fb["sweep"].get("cheapest")
    out.append(f"- The cheapest G with all four types within 1%: {ga} on {a}, {gb} on {b}"
               + (" (transfers)." if ga == gb else " (does not transfer)."))
  if both("below_fp"):
    below = {model: f["below_fp"] for model, f in ((a, fa), (b, fb))}
    out.append("- Truncation's interval lies below FP (all four types, G = 64) "
               + " and ".join(f"at M = {', '.join(map(str, ms))} on {model}" if ms
                              else f"nowhere on {model}" for model, ms in below.items())
               + (" (holds on both)." if all(below.values()) else
                  " (on neither)." if not any(below.values()) else
                  f" (on {next(m for m, v in below.items() if v)} only)."))
  if both("sensitivity"):
    ea, eb = fa["sensitivity"]["edge"], fb["sensitivity"]["edge"]
    out.append(f"- The first and last layers hold {ea} of {a}'s ten most sensitive pairs and "
               f"{eb} of {b}'s; the type most of them feed: `{fa['sensitivity']['common']}` and "
               f"`{fb['sensitivity']['common']}`.")
  if both("formats"):
    same = [n for n in names if n in fa["formats"] and n in fb["formats"]
            and fa["formats"][n][0] == fb["formats"][n][0]]
    differ = [n for n in names if n in fa["formats"] and n in fb["formats"] and n not in same]
    out.append(f"- Anda against the other formats at equal bits, the same verdict on both: "
               f"{', '.join(same) or 'none'}; a different one: {', '.join(differ) or 'none'}.")
  if both("search") and fa["search"] and fb["search"]:
    fewest = {model: [t for t, m in zip(MODULE_TYPES, f["search"][0]) if m == min(f["search"][0])]
              for model, f in ((a, fa), (b, fb))}
    out.append(f"- The per-type search at {100 * TOLERANCE:g}% gives the fewest bits to "
               + " and ".join(f"{', '.join(f'`{t}`' for t in ts)} on {model}"
                              for model, ts in fewest.items())
               + (" (transfers)." if fewest[a] == fewest[b] else " (does not transfer)."))
  missing = sorted({s for f in (fa, fb) for s in ("sweep", "formats", "sensitivity", "noise",
                                                  "search") if s not in f})
  if missing:
    out.append(f"- Not recorded on both models yet: {', '.join(missing)}.")
  return out + [""]
