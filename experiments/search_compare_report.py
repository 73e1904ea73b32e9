"""compare.md, its verdict paragraph and pareto.png of a comparison of precision searches
(experiments/search_compare.py), drawn from compare.json's record alone: every sentence is
made from its numbers."""

from __future__ import annotations

import pathlib

from experiments.harness import perplexity
from experiments.harness import reports

BITS_EQUAL = 0.005  # storage bits closer than this count as equal (every table shows 2 decimals)
# How each verdict of experiments.search_compare reads before the places it holds at, in the
# order the text lists them: `standing` (bits and loss), `loss_verdict` (loss alone).
STANDING_WORDS = {"ahead": "ahead at", "level": "level at", "behind": "behind at",
                  "trade-off": "a trade-off at", "not measured": "not measured on test at"}
LOSS_WORDS = {"lower": "resolved lower at", "identical": "identical at",
              "not resolved": "not resolved at", "higher": "resolved higher at",
              "not measured": "not measured at"}
AGAINST_WORDS = {"lower": "resolved lower than", "identical": "identical to",
                 "not resolved": "not resolved against", "higher": "resolved higher than",
                 "not measured": "not measured against"}


def loss_text(iv: dict | None) -> str:
  """"+1.23% [+0.80, +1.70]" (as factors once the perplexity has doubled) from an interval
  record; "–" without one."""
  return "–" if iv is None else perplexity.increase_text(iv["estimate"], iv["low"], iv["high"])


def loss_words(iv: dict | None) -> str:
  """How a paired ratio reads: resolved lower or higher (the interval excludes 0), identical,
  or not resolved different."""
  if iv is None or iv["low"] is None:
    return "not measured on both runs' test windows"
  if iv["low"] == iv["high"] == 0:
    return "identical on every test window"
  if iv["high"] < 0:
    return f"resolved lower (better), {loss_text(iv)}"
  if iv["low"] > 0:
    return f"resolved higher (worse), {loss_text(iv)}"
  return f"not resolved different ({loss_text(iv)})"


def pair_sentence(pair: dict) -> str:
  """"Anda nearest, mixed, 1% needs 1.20 fewer bits than MX, mixed, 1% (7.71 vs 8.91) at a
  test perplexity not resolved different (-0.31% [-1.40, +0.80]): **ahead**."""
  saved = pair["bits_saved"]
  amount = ("as many bits as" if abs(saved) < BITS_EQUAL else
            f"{abs(saved):.2f} {'fewer' if saved > 0 else 'more'} bits than")
  return (f"{pair['anda']} needs {amount} {pair['other']} ({pair['anda_bits']:.2f} vs "
          f"{pair['other_bits']:.2f}) at a test perplexity {loss_words(pair['versus'])}: "
          f"**{pair['standing']}**.")


def _tolerance(t: float) -> str:
  return f"{100 * t:g}%"


def _where(item: dict) -> str:
  """Where a comparison sits: its uniform M, its tolerance, or the format it is against."""
  if item.get("m") is not None:
    return f"M={item['m']}"
  if item.get("tolerance") is not None:
    return _tolerance(item["tolerance"])
  return item["other"]


def _grouped(items: list[dict], key: str, words: dict, detail=lambda item: "") -> str:
  """"ahead at 1% (...), 0.5% (...); level at ..." over the verdicts (item[key]) present."""
  parts = []
  for value, phrase in words.items():
    hits = [f"{_where(i)}{detail(i)}" for i in items if i[key] == value]
    if hits:
      parts.append(f"{phrase} {', '.join(hits)}")
  return "; ".join(parts) or "not compared"


def _bits_and_loss(item: dict) -> str:
  return (f" ({item['anda_bits']:.2f} vs {item['other_bits']:.2f} bits, "
          f"{loss_text(item['versus'])})")


def _loss_only(item: dict) -> str:
  return f" ({loss_text(item['versus'])})"


def verdict(record: dict) -> str:
  """The paragraph: at which tolerances (and within whose bits) each Anda run is ahead of, level
  with or behind each format list's mixed choice and each format at every site, the rounding
  effect, and what limits it; made from the record's numbers only."""
  head = (f"On the {record['test_windows']['n']} shared test windows (Anda's standing: ahead = "
          "fewer bits at a test perplexity not resolved higher, or resolved lower at no more bits; "
          "behind = the converse; level = as many bits, not resolved).")
  return " ".join([head] + _against_lists(record) + _against_formats(record)
                  + _rounding(record) + _caveats(record))


def _against_lists(record: dict) -> list[str]:
  """Each Anda run against each format list's choices: at the same tolerance (bits and loss),
  and its most accurate configuration within their bits (loss)."""
  out = []
  for other in (r["label"] for r in record["runs"] if r["kind"] == "formats"):
    for a in (r["label"] for r in record["runs"] if r["kind"] == "anda"):
      pairs = [p for t in record["tolerances"] for p in t["pairs"]
               if (p["anda_run"], p["other_run"]) == (a, other)]
      within = [p for p in record["equal_bits"] if p["verdict"] and p["anda_run"] == a
                and p["other_run"] == other and p["other_what"] == "mixed"]
      text = (f"Against {other} mixed at the same tolerance, {a} mixed is "
              + _grouped(pairs, "standing", STANDING_WORDS, _bits_and_loss))
      if within:
        text += (f"; within the bits of {other}'s choice, {a}'s most accurate configuration is "
                 + _grouped(within, "verdict", LOSS_WORDS, _loss_only))
      out.append(text + ".")
  return out


def _against_formats(record: dict) -> list[str]:
  out = []
  for a in (r["label"] for r in record["runs"] if r["kind"] == "anda"):
    formats = [p for p in record["equal_bits"] if p["verdict"] and p["anda_run"] == a
               and p["other_what"] == "format"]
    if formats:
      out.append(f"Within the bits of each format at every site, {a}'s most accurate "
                 f"configuration is {_grouped(formats, 'verdict', AGAINST_WORDS)}.")
  return out


def _rounding(record: dict) -> list[str]:
  """Each pair of Anda runs of other roundings: uniform M (loss) and their choices."""
  out = []
  for a, b in dict.fromkeys((p["anda_run"], p["other_run"]) for p in record["rounding"]):
    pairs = [p for p in record["rounding"] if (p["anda_run"], p["other_run"]) == (a, b)]
    uniform = [p for p in pairs if p["what"] == "uniform M"]
    chosen = [p for p in pairs if p["what"] == "mixed"]
    parts = ([f"at uniform M its test perplexity is {_grouped(uniform, 'verdict', LOSS_WORDS)}"]
             if uniform else [])
    if chosen:
      parts.append("its mixed choice is "
                   + _grouped(chosen, "standing", STANDING_WORDS, _bits_and_loss))
    out.append(f"Rounding, {a} against {b} (paired, same G): {'; '.join(parts)}.")
  return out


def _caveats(record: dict) -> list[str]:
  """What limits the verdict: tolerances a run's calibration tokens do not resolve, choices
  whose start was already over the tolerance, and calibration windows that differ."""
  out = []
  unresolved = {}
  for r in record["runs"]:
    for t in r["unresolved"]:
      unresolved.setdefault(_tolerance(t), []).append(r["label"])
  unchecked = [f"{r['label']}: {r['unchecked']}" for r in record["runs"] if r["unchecked"]]
  if unchecked:
    out.append("Not checked against a noise-floor study, so whether its calibration tokens "
               f"resolve its tolerances is unknown: {'; '.join(unchecked)}.")
  if unresolved:
    out.append("Not resolved by the calibration tokens (each run's check against its noise-floor "
               "study), so the choice there follows calibration noise: " + "; ".join(
                   f"{t} ({', '.join(labels)})" for t, labels in unresolved.items()) + ".")
  over = [p["name"] for p in record["points"]
          if p["what"] == "mixed" and p["within_tolerance"] is False]
  if over:
    out.append("The start was already over the tolerance on calibration (the choice is the "
               f"start): {', '.join(over)}.")
  if not record["same_calibration_windows"]:
    out.append("The runs searched on different calibration windows.")
  return out


def _table(header: list[str], rows: list[list], align: str) -> list[str]:
  return (["| " + " | ".join(header) + " |", "|" + align]
          + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows] + [""])


def markdown(record: dict) -> str:
  w = record["test_windows"]
  out = [f"# Precision searches compared: {record['model']}", "",
         f"{len(record['runs'])} searches, each checked on the same {w['n']} test windows of "
         f"{record['seq_len']} tokens of `{record['corpus']}` (sha256 {w['sha256']}); their "
         "calibration windows are " + ("the same" if record["same_calibration_windows"] else
                                       "not the same") + ". Test loss: ppl / ppl_FP - 1 against "
         f"the run's own FP row, in brackets its {record['interval']}. A against B: ppl_A / "
         "ppl_B - 1 on the same test windows, paired over them. Bits: mean storage bits per "
         "activation element over the four searched sites (scales included). Standing (Anda's): "
         "ahead = fewer bits at a loss not resolved higher, or a loss resolved lower at no more "
         "bits; behind = the converse; level = as many bits, loss not resolved different; "
         "trade-off = fewer bits at a loss resolved higher, or the converse.", "",
         "## Runs", ""]
  out += _table(["run", "folder", "searches among", "granularity", "rule", "calibration windows",
                 "FP test ppl", "tolerances its calibration does not resolve"],
                [[r["label"], f"`{r['folder']}`",
                  f"M (G={r['group_size']}, {r['rounding']})" if r["kind"] == "anda"
                  else ", ".join(r["candidates"]), r["granularity"], r["rule"],
                  r["calibration_windows"]["n"], f"{r['fp_test_ppl']:.3f}",
                  "not checked" if r["unchecked"] else
                  ", ".join(map(_tolerance, r["unresolved"])) or "none"]
                 for r in record["runs"]], "---|---|---|---|---|---:|---:|---|")
  out += ["## Verdict", "", record["verdict"], "", "![test loss vs storage bits](pareto.png)", ""]
  out += _tolerance_sections(record) + _equal_bits_section(record) + _rounding_section(record)
  out += ["## Every point of the plot", ""]
  out += _table(["point", "configuration (qkv, o, up, down)", "bits", "test ppl", "test loss"],
                [[p["name"], p["choice"], f"{p['bits']:.2f}",
                  "–" if p["ppl"] is None else f"{p['ppl']:.3f}", loss_text(p["loss"])]
                 for p in record["points"]], "---|---|---:|---:|---|")
  return "\n".join(out)


def _tolerance_sections(record: dict) -> list[str]:
  out = []
  for t in record["tolerances"]:
    tol = t["tolerance"]
    chosen = [p for p in record["points"] if p["what"] == "mixed" and p["tolerance"] == tol]
    out += [f"## Tolerance {_tolerance(tol)}", ""]
    out += _table(["run", "choice (qkv, o, up, down)", "bits", "test loss"],
                  [[p["run"] + (" (start over tolerance)" if p["within_tolerance"] is False
                                else ""), p["choice"], f"{p['bits']:.2f}", loss_text(p["loss"])]
                   for p in chosen], "---|---|---:|---|")
    out += [f"- {pair_sentence(p)}" for p in t["pairs"]] + [""]
  return out


def _equal_bits_section(record: dict) -> list[str]:
  rows = []
  for p in record["equal_bits"]:
    best, cheapest = p["best"], p["cheapest"]
    rows.append([p["other"], f"{p['other_bits']:.2f}", loss_text(p["other_loss"]), p["anda_run"],
                 "none" if best is None else f"{best['choice']} ({best['bits']:.2f})",
                 "–" if best is None else loss_text(best["loss"]), loss_text(p["versus"]),
                 p["verdict"] or "–",
                 "none" if cheapest is None else f"{cheapest['choice']} ({cheapest['bits']:.2f})"])
  return ["## At equal bits", "",
          "For each format at every site and each format list's choice: each Anda run's most "
          "accurate configuration on test (uniform M or a chosen one) storing at most as many "
          "bits, its paired test perplexity over the other's (verdict: resolved lower or higher "
          "where the interval excludes 0), and its cheapest configuration at least as accurate "
          "(point estimates).", "",
          *_table(["against", "bits", "its test loss", "Anda run", "most accurate within its bits",
                   "its test loss", "Anda / other ppl - 1", "verdict",
                   "cheapest as accurate (bits)"], rows, "---|---:|---|---|---|---|---|---|---|")]


def _rounding_section(record: dict) -> list[str]:
  if not record["rounding"]:
    return []
  return ["## Rounding", "", "Anda runs of other roundings on the same G, the same "
          "configuration (uniform M) or the same tolerance's choice, paired on the test windows.",
          "", *_table(["runs", "configuration", "bits", "A / B ppl - 1", "verdict (loss)",
                       "standing (bits and loss)"],
                      [[f"{p['anda_run']} / {p['other_run']}",
                        ("uniform " if p["m"] is not None else "tolerance ") + _where(p),
                        f"{p['anda_bits']:.2f} / {p['other_bits']:.2f}", loss_text(p["versus"]),
                        p["verdict"], p["standing"]] for p in record["rounding"]],
                      "---|---|---:|---|---|---|")]


def plot(record: dict, path: pathlib.Path) -> None:
  """pareto.png: test perplexity increase over FP (%, symlog) against storage bits: each run's
  chosen configurations (stars through a run's tolerances, each run's smaller than the one
  before, so that runs choosing alike stay visible), each Anda run's uniform M (a dashed
  curve), each format at every site (open black markers); bars from the paired intervals
  against the run's FP."""
  plt = reports.pyplot()
  fig, ax = plt.subplots(figsize=(11, 6.5))
  shown = [p for p in record["points"]
           if p["loss"] is not None and p["loss"]["estimate"] is not None]
  for i, run in enumerate(record["runs"]):
    colour, mine = f"C{i}", [p for p in shown if p["run"] == run["label"]]
    curve = sorted((p for p in mine if p["what"] == "uniform M"), key=lambda p: p["bits"])
    if curve:
      _errorbar(ax, curve, fmt="o--", c=colour, ms=4, lw=1, alpha=0.8,
                label=f"{run['label']}, uniform M")
      for p in curve:
        ax.annotate(f"M={p['m']}", (p["bits"], _y(p)), xytext=(-3, 5), ha="right",
                    textcoords="offset points", fontsize=7, color=colour)
    chosen = sorted((p for p in mine if p["what"] == "mixed"), key=lambda p: p["bits"])
    if chosen:
      _errorbar(ax, chosen, fmt="*-", c=colour, ms=max(18 - 3.5 * i, 6), lw=0.8, mec="k",
                mew=0.5, label=f"{run['label']}, mixed")
      # One label per place (tolerances whose choices coincide share it), each run's in its own
      # corner of the star, so that runs choosing alike do not write over each other.
      places = {}
      for p in chosen:
        places.setdefault((p["bits"], _y(p)), []).append(_tolerance(p["tolerance"]))
      dx, dy = _CORNERS[i % len(_CORNERS)]
      for xy, tols in places.items():
        ax.annotate(", ".join(tols), xy, xytext=(dx, dy), textcoords="offset points",
                    ha="left" if dx > 0 else "right", va="center", fontsize=8, color=colour,
                    weight="bold")
  formats = sorted((p for p in shown if p["what"] == "format"), key=lambda p: (p["bits"], _y(p)))
  for j, p in enumerate(formats):
    _errorbar(ax, [p], fmt="sD^v<>pPXh"[j % 10], c="k", ms=7, mfc="none", lw=1)
    # Formats of equal bits (MX's 8.25, the per-token 8.04) sit on one vertical: their labels
    # alternate sides, so that two of close perplexity stay legible.
    right = sum(abs(o["bits"] - p["bits"]) < 0.005 for o in formats[:j]) % 2
    ax.annotate(p["name"], (p["bits"], _y(p)), xytext=(8 if right else -8, 0),
                textcoords="offset points", ha="left" if right else "right", va="center",
                fontsize=8)
  ax.axhline(0, c="k", lw=0.8, ls=":")
  ax.set_yscale("symlog", linthresh=1)
  ax.margins(y=0.06)  # room above the highest label
  ax.set_xlabel("mean storage bits per activation element (scales included)")
  ax.set_ylabel("test perplexity increase over FP (%; symlog, linear within ±1%)")
  w = record["test_windows"]
  ax.set_title(reports.fit_title(
      f"{record['model']}: test perplexity increase vs storage bits ({w['n']} test windows of "
      f"{record['seq_len']} tokens). Stars: each search's choice per tolerance; dashed: uniform "
      f"M; open black markers: one format at every site. Bars: "
      f"{record['interval'].split(' over')[0]}s against the run's FP", 11, 10), fontsize=10)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8, loc="upper right")
  fig.tight_layout()
  reports.save_figure(fig, path, dpi=120)
  plt.close(fig)


_CORNERS = ((9, 8), (9, -9), (-9, 8), (-9, -9))  # label offsets (points) of the runs' stars


def _y(p: dict) -> float:
  return 100 * p["loss"]["estimate"]


def _errorbar(ax, pts: list[dict], **kwargs) -> None:
  """Points with their intervals as bars (none where an interval has no finite ends)."""
  err = [[0.0, 0.0] if p["loss"]["low"] is None else
         [max(_y(p) - 100 * p["loss"]["low"], 0.0), max(100 * p["loss"]["high"] - _y(p), 0.0)]
         for p in pts]
  ax.errorbar([p["bits"] for p in pts], [_y(p) for p in pts], yerr=list(zip(*err)), capsize=2,
              **kwargs)
