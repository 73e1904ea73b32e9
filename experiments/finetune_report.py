"""The fine-tuning experiment's report (experiments/finetune.py): results.csv, loss_curves.png and
the printed table, from results.jsonl alone.

The measure is the test perplexity against the untuned model's FP-activation perplexity (the
model one would deploy without Anda), not against the tuned model's own FP perplexity (which
tuning moves too). Each tuned model is compared, on the same test windows, with
  - the untuned model at FP: at its M and at FP activations;
  - the control of its subset and seed (trained with float activations), both at M: what
    tuning under Anda buys beyond tuning itself.
Each comparison carries its paired-bootstrap interval (experiments.harness.perplexity) where both
rows hold per-window NLL sums; rows written before those were recorded have none, and the
report says so. Over seeds: the mean and min..max of each estimate.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import pathlib

import numpy as np

from experiments.harness import perplexity
from experiments.harness import reports
from experiments.harness import run_folder

ROW_FIELDS = ("id",)
BEFORE = "before"
ANDA, CONTROL = "anda", "control"  # the arms: trained under Anda at M, or with float activations
ARMS = (ANDA, CONTROL)
SUBSET_ORDER = ("norms", "lora")
SMOOTH = 5  # steps in the running mean of the plotted training loss


def _evaluation(ppl, window_nll, window_tokens) -> dict:
  """One test evaluation as perplexity.increase_interval pairs it (without sums: no interval)."""
  out = dict(ppl=perplexity.finite_or_none(ppl))
  if window_nll is not None and window_tokens is not None:
    out.update(window_nll=window_nll, window_tokens=window_tokens)
  return out


def _by_m(row: dict) -> dict:
  """{M: evaluation} of a row evaluated at several M (the untuned model, a control)."""
  sums = row.get("test_window_nll") or [None] * len(row["mantissa_bits"])
  return {m: _evaluation(p, s, row.get("window_tokens"))
          for m, p, s in zip(row["mantissa_bits"], row["test_ppl"], sums)}


@dataclasses.dataclass
class Arm:
  """A tuned model at one M: the row it comes from, its evaluations at M and at FP, and its
  increases (estimate, interval or None) over the untuned FP model and over its control."""

  m: int
  subset: str
  arm: str
  seed: int | None
  row: dict
  at_m: dict
  at_fp: dict
  vs_untuned_fp: tuple = (None, None)
  fp_vs_untuned_fp: tuple = (None, None)
  vs_control: tuple = (None, None)


def increase(ev: dict | None, base: dict | None) -> tuple:
  """(ppl / base ppl - 1, paired interval or None); (None, None) without both perplexities."""
  if ev is None or base is None or ev.get("ppl") is None or base.get("ppl") is None:
    return None, None
  iv = perplexity.increase_interval(ev, base)
  return (ev["ppl"] / base["ppl"] - 1 if iv is None else iv.estimate), iv


def read(run_dir) -> tuple[dict, list[Arm]]:
  """({M: untuned evaluation}, every tuned model at every M it was evaluated at, with its
  increases) of a run folder. Rows of runs before seeds and controls count as seed
  setup.json's `seed`, arm "anda"."""
  run_dir = pathlib.Path(run_dir)
  rows = {r["id"]: r for r in run_folder.read_rows(run_dir / "results.jsonl", ROW_FIELDS)}
  setup_path = run_dir / "setup.json"
  setup_seed = json.loads(setup_path.read_text()).get("seed") if setup_path.exists() else None
  before = _by_m(rows[BEFORE]) if BEFORE in rows else {}
  arms = []
  for r in (r for k, r in rows.items() if k != BEFORE):
    seed = r.get("seed", setup_seed)
    if r.get("arm", ANDA) == CONTROL:
      evs = _by_m(r)
      arms += [Arm(m, r["subset"], CONTROL, seed, r, ev, evs.get(0)) for m, ev in evs.items() if m]
    else:
      tokens = r.get("window_tokens")
      arms.append(Arm(r["mantissa_bits"], r["subset"], ANDA, seed, r,
                      _evaluation(r["test_ppl"], r.get("test_window_nll"), tokens),
                      _evaluation(r["test_ppl_fp"], r.get("test_window_nll_fp"), tokens)))
  controls = {(a.m, a.subset, a.seed): a for a in arms if a.arm == CONTROL}
  for a in arms:
    a.vs_untuned_fp = increase(a.at_m, before.get(0))
    a.fp_vs_untuned_fp = increase(a.at_fp, before.get(0))
    control = controls.get((a.m, a.subset, a.seed))
    if a.arm == ANDA and control is not None:
      a.vs_control = increase(a.at_m, control.at_m)
  arms.sort(key=lambda a: (a.m, _subset_rank(a.subset), ARMS.index(a.arm), a.seed or 0))
  return before, arms


def _subset_rank(subset: str) -> int:
  return SUBSET_ORDER.index(subset) if subset in SUBSET_ORDER else len(SUBSET_ORDER)


# ---------------------------------------------------------------------- numbers as shown


def shown(estimate, iv=None) -> str:
  """"+1.23% [+0.80%, +1.70%]"; "x7.59 [x6.90, x8.01]" once the perplexity has doubled."""
  if estimate is None or not math.isfinite(estimate):
    return "-"
  amount = (lambda x: f"x{1 + x:.2f}") if estimate >= 1 else (lambda x: f"{x:+.2%}")
  text = amount(estimate)
  if iv is not None and math.isfinite(iv.low):
    text += f" [{amount(iv.low)}, {amount(iv.high)}]"
  return text


@dataclasses.dataclass(frozen=True)
class Spread:
  """An estimate over seeds: mean, min, max and how many seeds."""

  mean: float
  low: float
  high: float
  n: int

  @classmethod
  def of(cls, values) -> Spread | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return cls(float(np.mean(v)), min(v), max(v), len(v)) if v else None

  def __str__(self) -> str:
    if self.n == 1:
      return shown(self.mean)
    return f"{shown(self.mean)} ({shown(self.low)}..{shown(self.high)})"


def spreads(arms: list[Arm]) -> dict:
  """{(M, subset, arm): {measure: Spread over seeds}} of the three increases."""
  groups = collections.defaultdict(list)
  for a in arms:
    groups[(a.m, a.subset, a.arm)].append(a)
  return {k: {name: Spread.of(getattr(a, name)[0] for a in group)
              for name in ("vs_untuned_fp", "fp_vs_untuned_fp", "vs_control")}
          for k, group in groups.items()}


def what_tuning_buys(before: dict, arms: list[Arm]) -> list[str]:
  """Per (M, subset) with both arms: the gain of tuning under Anda over the control at M (mean
  and min..max over seeds; resolved where every seed's interval excludes 0 on the same side),
  and the test NLL per token each arm recovers from the untuned model at M."""
  lines = []
  by_key = collections.defaultdict(list)
  for a in arms:
    by_key[(a.m, a.subset)].append(a)
  for (m, subset), group in sorted(by_key.items(),
                                   key=lambda kv: (kv[0][0], _subset_rank(kv[0][1]))):
    anda = [a for a in group if a.arm == ANDA and a.vs_control[0] is not None]
    control = [a for a in group if a.arm == CONTROL]
    if not anda:
      continue
    spread = Spread.of(a.vs_control[0] for a in anda)
    ivs = [a.vs_control[1] for a in anda if a.vs_control[1] is not None]
    below = sum(iv.high < 0 for iv in ivs)
    above = sum(iv.low > 0 for iv in ivs)
    if not ivs:
      verdict = "no intervals (rows without per-window sums)"
    elif below == len(ivs):
      verdict = (f"tuning under Anda beats the control at every seed ({below} of {len(ivs)} "
                 "intervals below 0)")
    elif above == len(ivs):
      verdict = (f"the control beats tuning under Anda at every seed ({above} of {len(ivs)} "
                 "intervals above 0)")
    else:
      verdict = (f"not resolved: {below} of {len(ivs)} seeds' intervals below 0, {above} above, "
                 "the others include 0")
    line = f"M = {m}, {subset}: tuned under Anda over the control, both at M: {spread}; {verdict}"
    untuned = before.get(m, {}).get("ppl")
    log_mean = lambda arms: float(np.mean([math.log(a.at_m["ppl"]) for a in arms
                                           if a.at_m.get("ppl")]))
    if untuned and control:  # in test NLL per token at M, mean over seeds
      line += (f". Of the untuned model's test NLL at M, tuning under Anda recovers "
               f"{math.log(untuned) - log_mean(anda):+.4f} nats/token, the control "
               f"{math.log(untuned) - log_mean(control):+.4f}")
    lines.append(line)
  return lines


# ---------------------------------------------------------------------- the report


CSV_FIELDS = ["id", "subset", "arm", "seed", "mantissa_bits", "test_ppl", "test_ppl_fp",
              "vs_untuned_fp", "vs_untuned_fp_low", "vs_untuned_fp_high",
              "fp_vs_untuned_fp", "fp_vs_untuned_fp_low", "fp_vs_untuned_fp_high",
              "vs_control", "vs_control_low", "vs_control_high", "test_ppl_before",
              "test_ppl_fp_before", "val_ppl_before", "val_ppl", "best_step", "steps",
              "stopped_early", "train_seconds", "n_params", "params_file"]


def _csv_row(a: Arm, before: dict) -> dict:
  out = {k: a.row.get(k) for k in ("id", "subset", "val_ppl_before", "val_ppl", "best_step",
                                   "steps", "stopped_early", "train_seconds", "n_params",
                                   "params_file")}
  out.update(arm=a.arm, seed=a.seed, mantissa_bits=a.m, test_ppl=a.at_m["ppl"],
             test_ppl_fp=a.at_fp["ppl"] if a.at_fp else None,
             test_ppl_before=before.get(a.m, {}).get("ppl"),
             test_ppl_fp_before=before.get(0, {}).get("ppl"))
  for name in ("vs_untuned_fp", "fp_vs_untuned_fp", "vs_control"):
    estimate, iv = getattr(a, name)
    out.update({name: estimate, f"{name}_low": None if iv is None else iv.low,
                f"{name}_high": None if iv is None else iv.high})
  return out


def _table(before: dict, arms: list[Arm]) -> list[str]:
  """One line per tuned model and M, then per (M, subset, arm) over several seeds the mean and
  min..max; the untuned model at M heads each M."""
  fp = before.get(0)
  head = (f"{'M':>3} {'subset':<6} {'arm':<7} {'seed':>4}  {'at M':<32} {'at FP':<32} "
          "vs control at M")
  lines = [head]
  groups = spreads(arms)
  for m in sorted({a.m for a in arms} | {m for m in before if m}):
    if m in before:
      lines.append(f"{m:>3} {'-':<6} {'untuned':<7} {'':>4}  {shown(*increase(before[m], fp)):<32}")
    for key in sorted({(a.subset, a.arm) for a in arms if a.m == m},
                      key=lambda k: (_subset_rank(k[0]), ARMS.index(k[1]))):
      group = [a for a in arms if (a.m, a.subset, a.arm) == (m, *key)]
      for a in group:
        lines.append(f"{m:>3} {a.subset:<6} {a.arm:<7} {'-' if a.seed is None else a.seed:>4}  "
                     f"{shown(*a.vs_untuned_fp):<32} {shown(*a.fp_vs_untuned_fp):<32} "
                     f"{shown(*a.vs_control) if a.arm == ANDA else ''}")
      if len(group) > 1:
        s = groups[(m, *key)]
        lines.append(f"{m:>3} {key[0]:<6} {key[1]:<7} {'mean':>4}  {str(s['vs_untuned_fp']):<32} "
                     f"{str(s['fp_vs_untuned_fp']):<32} {s['vs_control'] or ''}")
  return lines


def _notes(before: dict, arms: list[Arm]) -> list[str]:
  fp = before.get(0, {}).get("ppl")
  n = len(before.get(0, {}).get("window_nll") or [])
  notes = [f"Test perplexity against the untuned model with FP activations "
           f"({'not measured' if fp is None else f'{fp:.3f}'}): its increase (x: factor)"
           + (f" with the {perplexity.INTERVAL_METHOD} ({n} test windows)" if n else "") + ". "
           + "'at M' / 'at FP': the tuned model with the types at M / with FP activations; "
           "'vs control at M': tuned under Anda over the control of its subset and seed (trained "
           "with float activations), both at M. 'mean': over seeds, with min..max."]
  if any("window_nll" not in ev for a in arms for ev in (a.at_m, a.at_fp) if ev) or (
      before and any("window_nll" not in ev for ev in before.values())):
    notes.append("Rows without per-window NLL sums (written before they were recorded) are "
                 "shown without intervals.")
  if arms and not any(a.arm == CONTROL for a in arms):
    notes.append("No control arm in this run: what tuning under Anda buys beyond tuning itself "
                 "is not measured.")
  if arms and len({a.seed for a in arms}) == 1:
    notes.append("One seed: no spread over seeds.")
  return notes


def report(run_dir) -> str:
  """Writes results.csv and loss_curves.png from results.jsonl; prints and returns the report."""
  run_dir = pathlib.Path(run_dir)
  before, arms = read(run_dir)
  reports.write_text(run_dir / "results.csv",
                     reports.csv_text(CSV_FIELDS, [_csv_row(a, before) for a in arms]))
  buys = what_tuning_buys(before, arms)
  text = "\n".join(_notes(before, arms) + _table(before, arms)
                   + (["What tuning under Anda buys once the control is subtracted:"] + buys
                      if buys else []))
  text = reports.with_weights(run_dir, text)
  print(text)
  _plot(run_dir, [a.row for a in arms])
  return text


def _plot(run_dir: pathlib.Path, rows: list[dict]) -> None:
  """Training loss and validation NLL: one panel per M trained under Anda, one for the controls."""
  plt = reports.pyplot()
  unique = {r["id"]: r for r in rows}.values()
  panels = collections.defaultdict(list)
  for r in unique:
    panels["control (M = 0)" if r.get("arm") == CONTROL else f"M = {r['mantissa_bits']}"].append(r)
  if not panels:
    return
  names = sorted(panels, key=lambda p: (p.startswith("control"), len(p), p))
  fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False, sharey=True)
  for ax, name in zip(axes[0], names):
    labelled = set()
    for r in panels[name]:
      c = f"C{_subset_rank(r['subset'])}"
      first = r["subset"] not in labelled
      labelled.add(r["subset"])
      steps, loss = ((np.array(v) for v in zip(*r["history"])) if r["history"]
                     else (np.zeros(0),) * 2)
      ax.plot(steps, loss, c=c, alpha=0.2, lw=0.7)
      k = min(SMOOTH, len(loss))
      if k:  # the running mean over the last k steps (a batch is a few windows: noisy)
        mean = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], mean, c=c, lw=1.2,
                label=f"{r['subset']}: training loss ({k}-step mean)" if first else None)
      vs, vp = zip(*r["val_history"])
      ax.plot(vs, np.log(vp), "o-", c=c, ms=3,
              label=f"{r['subset']}: validation NLL" if first else None)
    ax.set(title=name, xlabel="step")
  axes[0][0].set_ylabel("NLL per token (nats)")
  axes[0][-1].legend(fontsize=7)
  fig.tight_layout()
  reports.save_figure(fig, run_dir / "loss_curves.png", dpi=110)
  plt.close(fig)
