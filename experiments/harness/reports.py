"""Report files: tables, CSV and plots, each written atomically (temp file + rename)."""

from __future__ import annotations

import csv
import io
import json
import pathlib
import textwrap

from anda_jax import files


def write_text(path: pathlib.Path, text: str) -> None:
  """A report file (csv, md, json), written atomically."""
  files.atomic_write_text(path, text)


def pyplot():
  """matplotlib.pyplot on the Agg backend (figures go to files; no display needed). Imported
  here, when a report draws, so that experiments start without matplotlib."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def fit_title(text: str, width_inches: float, fontsize: float = 9) -> str:
  """`text` broken into lines that fit `width_inches` at `fontsize` points (an average glyph is
  about 0.55 em wide), so a title never runs past the edges of a narrow figure."""
  chars = max(20, int(width_inches * 72 / (0.55 * fontsize)))
  return "\n".join(textwrap.wrap(text, chars))


def save_figure(fig, path: pathlib.Path, **kwargs) -> None:
  """A matplotlib figure as PNG, written atomically (temp file + rename). The saved area is
  the bounding box of everything drawn (bbox_inches="tight"), so a title, label or legend that
  reaches past the figure's edge is kept whole instead of cut."""
  kwargs.setdefault("bbox_inches", "tight")
  files.atomic_write(path, lambda f: fig.savefig(f, format="png", **kwargs))


def csv_text(fields: list[str], rows: list[dict]) -> str:
  out = io.StringIO()
  w = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
  w.writeheader()
  w.writerows(rows)
  return out.getvalue()


def model_name(run_dir: pathlib.Path) -> str:
  """The run's model as its setup.json names it (a registry name or a path), for plot titles;
  "model" where the setup does not record it."""
  path = pathlib.Path(run_dir) / "setup.json"
  setup = json.loads(path.read_text()) if path.exists() else {}
  return str(setup.get("model", {}).get("name", "model"))


def weights_line(run_dir: pathlib.Path) -> str | None:
  """One line saying what the run's model weights were (from its setup.json): each stored
  tensor type, what it became and how many tensors; None where the setup does not record it."""
  path = pathlib.Path(run_dir) / "setup.json"
  weights = json.loads(path.read_text()).get("weights") if path.exists() else None
  if not weights:
    return None
  return "weights (stored type -> what it became: tensors): " + "; ".join(
      f"{kind}: {n}" for kind, n in weights.items())


def with_weights(run_dir: pathlib.Path, table: str) -> str:
  """A printed report `table` headed by the run's weights line (weights_line), where recorded."""
  line = weights_line(run_dir)
  return table if line is None else f"{line}\n{table}"
