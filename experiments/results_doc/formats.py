"""The formats study's section: Anda against the formats hardware ships, at equal bits."""

from __future__ import annotations

from anda_jax.precision import MODULE_TYPES
from experiments import formats_report
from experiments.results_doc.runs import RUNS, Run, read_json, result_rows, source
from experiments.results_doc.studies import model_note
from experiments.results_doc.text import increase, loss, loss_of, table



def verdict(iv, name: str) -> str:
  if iv is None:
    return "not resolved"
  if iv.low == iv.high == 0:
    return "identical on these windows"
  return "Anda ahead" if iv.high < 0 else f"{name} ahead" if iv.low > 0 else "not resolved"


def at_every_site(run: Run) -> tuple[dict, list, list]:
  """(FP row, Anda rows, other formats' rows by storage bits), each format at all four sites."""
  rows = result_rows(run)
  at_all = [r for r in rows.values() if r["type"] == "all"]
  anda = [r for r in at_all if formats_report.format_of(r) == formats_report.ANDA]
  others = sorted((r for r in at_all if formats_report.format_of(r) != formats_report.ANDA),
                  key=lambda r: (r["storage_bits"], r["id"]))
  return rows["fp"], anda, others


def equal_bits(run: Run) -> dict:
  """{format: (verdict, the most accurate Anda within its bits / the format - 1 with its
  interval)} at all four sites."""
  _, anda, others = at_every_site(run)
  out = {}
  for o in others:
    c = formats_report.comparison(anda, o)
    name = formats_report.format_of(o)
    out[name] = (verdict(c["versus"], name),
                 None if c["best"] is None else increase(c["best"], o))
  return out


def formats_section(key: str = "formats", title: str = "Formats") -> list[str]:
  run = RUNS[key]
  rows = result_rows(run)
  base, anda, others = at_every_site(run)
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
  out = [f"## {title}", "", *model_note(run),
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
  out += [f"![perplexity increase vs storage bits](results/{run.folder}/pareto.png)", ""]
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
          "bits stored, while an FP element costs its aligned integer width ([the SmolLM2 "
          "search's cost table](#the-chosen-configurations-against-other-formats)).", ""]
  return out
