"""The section of precision searches compared on the same test windows (experiments.search_compare):
Anda truncating and rounding to nearest against mixed MX and NVFP4+MX, with the verdict."""

from __future__ import annotations

from experiments import search_compare_report
from experiments.results_doc.runs import RUNS, read_json, source
from experiments.results_doc.text import table


def comparison_section(key: str, title: str) -> list[str]:
  run = RUNS[key]
  record = read_json(run, "compare.json")
  w = record["test_windows"]
  runs = record["runs"]
  out = [f"## {title}", "",
         f"{len(runs)} adaptive precision searches of {record['model']}, each choosing per module "
         "type with the same rule, racing and cost (storage bits per activation element, scales "
         "included), on the same calibration windows"
         + ("" if record["same_calibration_windows"] else " (not all: see compare.md)")
         + f", each choice then checked on the same {w['n']} test windows of "
         f"{record['seq_len']} tokens; a difference between two runs is paired over those "
         f"windows ({record['interval']}). The runs:", ""]
  out += table(["run", "searches among", "calibration windows", "FP test perplexity",
                "tolerances its calibration does not resolve"],
               [[r["label"], "M (G = {group_size}, {rounding})".format(**r) if r["kind"] == "anda"
                 else ", ".join(r["candidates"]), r["calibration_windows"]["n"],
                 f"{r['fp_test_ppl']:.3f}",
                 "not checked" if r["unchecked"] else
                 ", ".join(f"{100 * t:g}%" for t in r["unresolved"]) or "none"] for r in runs],
               "---|---|---:|---:|---|")
  out += source(run, ("compare.json", "compare.md", "pareto.png"))
  out += [f"![test loss vs storage bits](results/{run.folder}/pareto.png)", ""]
  mixed = [p for p in record["points"] if p["what"] == "mixed"]
  for t in sorted({p["tolerance"] for p in mixed}):
    out += [f"### Tolerance {100 * t:g}%", ""]
    out += table(["run", "choice (qkv, o, up, down)", "bits", "test loss",
                  "within the tolerance on calibration"],
                 [[p["run"], p["choice"], f"{p['bits']:.2f}",
                   search_compare_report.loss_text(p["loss"]),
                   "yes" if p["within_tolerance"] else "no (the start)"]
                  for p in mixed if p["tolerance"] == t], "---|---|---:|---|---|")
  return out + ["### Verdict", "", record["verdict"], "",
                f"The tables at equal bits and of the two roundings: "
                f"[`compare.md`](results/{run.folder}/compare.md).", ""]
