"""Whether a search's calibration tokens can resolve its tolerances, known before it runs.

A tolerance is decided by the paired interval of a candidate's loss against FP on the
calibration windows. The decision means something only if the tolerance is at least
RESOLUTION (2) times that interval's half-width: otherwise noise alone can move a candidate
across it. The half-width is predicted before anything runs, from a noise-floor study of the
same model, corpus and format (experiments.noise_floor; `noise_floor` names its folder): for
each configuration it compared with FP (its pairs "M8 vs fp", ...), half-width x sqrt(scored
tokens) at the most tokens it measured (the smaller subsets' intervals come out narrower,
so this is the cautious end), and a half-width shrinks as 1 / sqrt(tokens). A tolerance takes
the pair whose loss is nearest to it: the configurations a search weighs at that tolerance
lose about that much. A pilot run on the first windows was the other way: it would measure the
model as configured, but only at configurations near the start, whose intervals are far
narrower than those of the candidates near a tolerance, and only after loading the model.

`check` refuses a configuration that cannot resolve a tolerance, naming the tokens it needs;
`allow_unresolved=True` runs it anyway, and the record (chosen.json's `resolution`, printed by
the report) says so.
"""

from __future__ import annotations

import csv
import json
import math
import pathlib
import re

from experiments.harness import loading

RESOLUTION = 2.0  # a tolerance must be at least this many half-widths
_PAIR = re.compile(r"^M\d+ vs fp$")  # a uniform configuration against FP activations


def read_noise_floor(folder) -> tuple[dict, dict[str, dict]]:
  """(setup.json, {pair: estimate, scale, tokens}) of a noise-floor study's folder: for each
  configuration-vs-FP pair its loss estimate and half-width x sqrt(tokens) at its most tokens.
  ValueError naming the folder and what is missing."""
  folder = pathlib.Path(folder)
  paths = [folder / "setup.json", folder / "noise_floor.csv"]
  if not all(p.is_file() for p in paths):
    raise ValueError(f"noise_floor={str(folder)!r} is invalid: it must be the folder of a "
                     "noise-floor study (python -m experiments.noise_floor) holding setup.json "
                     "and noise_floor.csv")
  setup = json.loads(paths[0].read_text())
  with paths[1].open() as f:
    entries = [e for e in csv.DictReader(f) if _PAIR.match(e["pair"])]
  pairs = {}
  for e in sorted(entries, key=lambda e: float(e["tokens"])):  # the most tokens wins
    tokens = float(e["tokens"])
    pairs[e["pair"]] = dict(estimate=float(e["estimate"]), tokens=tokens,
                            scale=float(e["half_width"]) * math.sqrt(tokens))
  if not pairs:
    raise ValueError(f"noise_floor={str(folder)!r} is invalid: {paths[1]} compares no "
                     "configuration with FP ('M<m> vs fp')")
  return setup, pairs


def differences(noise_setup: dict, cfg, model_sha256: str | None = None,
                bos_first: bool | None = None) -> list[str]:
  """The settings in which the study's noise does not stand for the search's: model (and its
  content, where known), weights, fine-tuned parameters, corpus, group size, exponent bits,
  rounding, and whether windows start with BOS (where known: bos_first). The window length may
  differ (the noise is per scored token)."""
  model, data = noise_setup.get("model", {}), noise_setup.get("data", {})
  pairs = [("model.name", model.get("name"), cfg.model.name),
           ("model.int4_group_size", model.get("int4_group_size"), cfg.model.int4_group_size),
           ("finetune", (noise_setup.get("finetune") or {}).get("file"), cfg.finetune),
           ("data.corpus", data.get("corpus"), cfg.data.corpus),
           ("format.group_size", noise_setup.get("group_size"), cfg.format.group_sizes[0]),
           ("format.exponent_bits", noise_setup.get("exponent_bits"), cfg.format.exponent_bits),
           ("format.rounding", noise_setup.get("rounding"), cfg.format.rounding)]
  if model_sha256 is not None:
    pairs.append(("model content (sha256)", model.get("sha256"), model_sha256))
  if bos_first is not None:
    pairs.append(("BOS first (data.bos)", noise_setup.get("bos_first", False), bos_first))
  return [f"{name}: study {a!r}, search {b!r}" for name, a, b in pairs if a != b]


def scored_per_window(d) -> int:
  """Scored tokens of one window of the `data` section (every target after score_from)."""
  return d.seq_len - 1 - loading.score_from(d)


def resolution(cfg, n_windows: int, model_sha256: str | None = None,
               bos_first: bool | None = None) -> dict:
  """The record of whether `n_windows` calibration windows resolve each tolerance: the study,
  the calibration tokens, and per tolerance the pair it takes, the predicted half-width, the
  tokens needed and whether it is resolved; `unchecked` says why nothing could be predicted
  (a missing or unmatched study), else None."""
  per_window = scored_per_window(cfg.data)
  record = dict(noise_floor=cfg.noise_floor, factor=RESOLUTION,
                calibration_tokens=n_windows * per_window, allow_unresolved=cfg.allow_unresolved,
                unchecked=None, tolerances=[])
  try:
    setup, pairs = read_noise_floor(cfg.noise_floor)
  except (ValueError, OSError) as e:
    return record | dict(unchecked=str(e))
  unmatched = differences(setup, cfg, model_sha256, bos_first)
  if unmatched:
    return record | dict(unchecked="the study's noise is of another setup (" + "; ".join(unmatched)
                         + ")")
  for tolerance in cfg.tolerances:
    name = min(pairs, key=lambda k: abs(pairs[k]["estimate"] - tolerance))
    scale = pairs[name]["scale"]
    # A tolerance of 0 is resolved by no number of tokens: None.
    needed = math.ceil((RESOLUTION * scale / tolerance) ** 2) if tolerance > 0 else None
    record["tolerances"].append(dict(
        tolerance=tolerance, pair=name, half_width=scale / math.sqrt(record["calibration_tokens"]),
        tokens_needed=needed, windows_needed=needed and math.ceil(needed / per_window),
        resolved=needed is not None and record["calibration_tokens"] >= needed))
  return record


def check(cfg, n_windows: int, model_sha256: str | None = None,
          bos_first: bool | None = None) -> dict:
  """`resolution`, or ValueError (one line: the tolerance, the predicted half-width and the
  tokens and windows it needs) where a tolerance is unresolved or the study does not apply,
  unless cfg.allow_unresolved."""
  record = resolution(cfg, n_windows, model_sha256, bos_first)
  if cfg.allow_unresolved:
    return record
  override = "or set allow_unresolved=True to run it anyway (recorded in chosen.json)"
  if record["unchecked"] is not None:
    raise ValueError(f"noise_floor={cfg.noise_floor!r} cannot tell whether the tolerances are "
                     f"resolved: {record['unchecked']}; run experiments.noise_floor for this "
                     f"setup and name its folder, {override}")
  unresolved = [t for t in record["tolerances"] if not t["resolved"]]
  if unresolved:
    t = max(unresolved, key=lambda t: t["tokens_needed"] or math.inf)
    needs = ("no number of tokens resolves it" if t["tokens_needed"] is None else
             f"it needs {t['tokens_needed']:,} tokens, data.windows >= {t['windows_needed']:,} of "
             f"seq_len={cfg.data.seq_len} (the corpus's calibration split must hold them)")
    raise ValueError(
        f"tolerances={tuple(cfg.tolerances)!r} is invalid with data.windows={n_windows}: "
        f"{100 * t['tolerance']:g}% is below {RESOLUTION:g} x the half-width predicted on "
        f"{record['calibration_tokens']:,} scored calibration tokens (±"
        f"{100 * t['half_width']:.2f}%, from {t['pair']!r} of {cfg.noise_floor}); {needs}, "
        f"{override}")
  return record
