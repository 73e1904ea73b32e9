"""Numbers as the page shows them: a loss with its paired-bootstrap interval, Markdown tables."""

from __future__ import annotations

from experiments.harness import perplexity
from experiments.results_doc.runs import Run, read_json


def loss(estimate, iv=None, digits: int = 2) -> str:
  """"+1.23% [+0.80, +1.70]", "x7.42 [x6.90, x8.01]" once the perplexity has doubled
  (perplexity.increase_text), from an estimate and its interval."""
  return perplexity.increase_text(estimate, *((iv.low, iv.high) if iv is not None else ()),
                                  digits=digits)


def increase(row: dict | None, base: dict | None, key: str = "ppl"):
  """(estimate, interval or None) of row's perplexity over base's; (None, None) without one."""
  if row is None or base is None or row.get(key) is None or base.get(key) is None:
    return None, None
  iv = perplexity.increase_interval(row, base)
  return (row[key] / base[key] - 1 if iv is None else iv.estimate), iv


def loss_of(row, base, key="ppl") -> str:
  return "–" if row is None else loss(*increase(row, base, key))


def table(header: list[str], rows: list[list], align: str | None = None) -> list[str]:
  align = align or "---|" + "---:|" * (len(header) - 1)
  return (["| " + " | ".join(header) + " |", "|" + align]
          + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows] + [""])


def same_windows(*runs: Run) -> None:
  """ValueError unless the runs' setup.json name the same token windows (before pairing rows)."""
  shas = {read_json(r, "setup.json").get("windows_sha256") for r in runs}
  if len(shas) != 1 or None in shas:
    raise ValueError(f"{[r.folder for r in runs]} are not on the same recorded windows: {shas}")
