"""The noise floor of a perplexity difference: how its confidence interval narrows with the number
of evaluation tokens, and how far a last-bit change of the inputs moves a perplexity.

    python -m experiments.noise_floor --config=configs/noise_floor.py:quick
    python -m experiments.noise_floor --config=configs/noise_floor.py

Evaluates FP activations and uniform M (mantissa_bits) on the `data` windows, each also with
its embeddings perturbed by one unit in the last place (every element moved up or down, at
random with `seed`: the size of the difference another CPU's or framework's float summation
order makes). All run from the embeddings through one compiled program, so two rows differ only
by their configuration or the perturbation. Then, for each subset size n in `subsets`, the
windows are split into N / n disjoint interleaved subsets (each spread over the corpus) and
every pair (M vs FP; perturbed vs not) gets its paired-bootstrap interval on each subset.

Writes results/<run_name>/ : setup.json, results.jsonl (one line per configuration with its
per-window NLL sums; resumable), noise_floor.csv, noise_floor.png (interval half-width vs tokens,
log-log), and prints the table: per pair and n, the median half-width over the subsets, and
1.96 x the standard deviation of the subsets' estimates (an empirical check of the width, where
there are enough subsets).
"""

from __future__ import annotations

import pathlib
import time

import numpy as np

from anda_jax.evaluation import evaluate
from anda_jax.evaluation import intervals
from anda_jax.evaluation.prefix import Prefix
from anda_jax import precision as anda_precision
from anda_jax.precision import MAX_MANTISSA_BITS, MIN_MANTISSA_BITS
from configs import noise_floor as noise_floor_config
from experiments.harness import cli
from experiments.harness import config_checks
from experiments.harness import distributed
from experiments.harness import loading
from experiments.harness import perplexity
from experiments.harness import reports
from experiments.harness import run_folder

ROW_FIELDS = ("id", "mantissa_bits", "perturbed", "ppl", "window_nll", "window_tokens")
PERTURBED = "~"  # suffix of a perturbed configuration's id: "M8~"


def validate(cfg) -> None:
  """Everything checkable before loading anything heavy; ValueError with a clear message."""
  config_checks.check_config(cfg, noise_floor_config.get_config())
  config_checks.one_group_size(cfg, "noise-floor measurement")
  config_checks.check_ints("mantissa_bits", cfg.mantissa_bits, MIN_MANTISSA_BITS, MAX_MANTISSA_BITS)
  top = cfg.data.windows or 1 << 30
  config_checks.check_ints("subsets", cfg.subsets, 2, top)
  if cfg.data.windows is not None and any(top % n for n in cfg.subsets):
    raise ValueError(f"subsets={tuple(cfg.subsets)!r} is invalid: each must divide data.windows="
                     f"{cfg.data.windows} (the windows are split into disjoint subsets)")


def check_subsets(subsets, n_windows: int) -> None:
  """Each subset size fits in the windows there are and divides them (data.windows None: all
  of the split, known once loaded); else ValueError, before anything is written."""
  for n in subsets:
    if n > n_windows or n_windows % n:
      raise ValueError(f"subsets={tuple(subsets)!r} is invalid: each must divide the {n_windows} "
                       f"windows evaluated (the windows are split into disjoint subsets), and "
                       f"{n} does not")


def config_id(m: int, perturbed: bool) -> str:
  return ("fp" if m == 0 else f"M{m}") + (PERTURBED if perturbed else "")


def perturb_last_bit(h: np.ndarray, seed: int) -> np.ndarray:
  """Every float32 element moved one unit in the last place, up or down at random."""
  up = np.random.default_rng(seed).random(h.shape) < 0.5
  return np.where(up, np.nextafter(h, np.float32(np.inf)), np.nextafter(h, np.float32(-np.inf))).astype(np.float32)


def run(cfg) -> dict:
  """Runs (or resumes) the measurement; returns {id: row}."""
  validate(cfg)
  distributed.maybe_initialize_distributed(cfg)
  digest = loading.model_sha256(cfg.model.name)
  loading.check_finetune_file(cfg, digest)
  setup = lambda windows: dict(run_folder.setup_of(cfg, windows, digest), group_size=cfg.format.group_sizes[0],
                               perturb=cfg.perturb)
  with run_folder.open_run(cfg, setup(None)) as folder:
    t0 = time.time()
    mesh = distributed.mesh_of(cfg)
    model, windows, score_from, bos = loading.start(cfg, mesh=mesh)
    check_subsets(cfg.subsets, len(windows))
    results = run_folder.Results(folder, setup(windows) | run_folder.weights_setup(model)
                                 | run_folder.bos_setup(bos),
                                 write=distributed.is_main(), required=ROW_FIELDS)
    weights = evaluate.target_weights(len(windows), windows.shape[1], score_from)
    window_tokens = weights.sum(axis=1, dtype=np.float64)
    ms = [0] + sorted(set(cfg.mantissa_bits), reverse=True)
    spec = config_checks.product_spec(cfg, cfg.format.group_sizes[0])
    batch = cfg.window_batch or evaluate.auto_batch_size(cfg.config_batch or len(ms), windows.shape[1],
                                                         model.config.vocab)
    embedded = Prefix(model, windows, batch).h  # the hidden states entering layer 0
    for perturbed in (False, True) if cfg.perturb else (False,):
      todo = [m for m in ms if config_id(m, perturbed) not in results.rows]
      if not todo:
        continue
      h = perturb_last_bit(embedded, cfg.seed) if perturbed else embedded

      def on_batch(idx, sums, todo=todo, perturbed=perturbed):
        results.append([dict(id=config_id(todo[i], perturbed), mantissa_bits=todo[i], perturbed=perturbed,
                             **perplexity.perplexity_fields(s.sum() / window_tokens.sum()),
                             tokens=float(window_tokens.sum()), **perplexity.window_fields(s, window_tokens))
                        for i, s in zip(idx, sums)])

      precisions = np.stack([anda_precision.uniform(m) for m in todo])
      evaluate.window_nll_sums(model, h, precisions, spec, targets=windows[:, 1:], weights=weights,
                               batch_size=batch, config_batch=cfg.config_batch, key=config_checks.rounding_key(cfg),
                               mesh=mesh, on_batch=on_batch,
                               progress="noise floor" + (", perturbed" if perturbed else ""))
    print(f"noise floor: {len(windows)} windows x {windows.shape[1]} tokens, wall time {time.time() - t0:.1f} s")
    if distributed.is_main():
      report(folder, cfg.subsets)
    return results.rows


# ---------------------------------------------------------------------- report

def pairs(rows: dict) -> list[tuple[str, str]]:
  """(configuration, baseline) pairs present in `rows`: each M against FP, then each perturbed
  configuration against itself unperturbed."""
  ids = sorted((r for r in rows.values() if not r["perturbed"]), key=lambda r: (r["mantissa_bits"] != 0,
                                                                              -r["mantissa_bits"]))
  out = [(r["id"], "fp") for r in ids if r["mantissa_bits"] != 0 and "fp" in rows]
  return out + [(r["id"] + PERTURBED, r["id"]) for r in ids if r["id"] + PERTURBED in rows]


def subset_intervals(row: dict, base: dict, n: int) -> list[intervals.Interval]:
  """The intervals of `row` over `base` on each of the N / n disjoint interleaved subsets of n
  windows (subset j: windows j, j + N/n, j + 2N/n, ...: each spread over the whole corpus)."""
  a, b, tokens = (np.array([np.nan if v is None else v for v in r], np.float64)
                  for r in (row["window_nll"], base["window_nll"], row["window_tokens"]))
  k = len(a) // n
  return [intervals.relative_increase(a[j::k][:n], b[j::k][:n], tokens[j::k][:n]) for j in range(k)]


def summary(rows: dict, subsets) -> list[dict]:
  """One entry per (pair, subset size): windows, tokens, subsets, the median half-width, the mean
  estimate, and 1.96 x the standard deviation of the estimates (None with fewer than 4 subsets)."""
  out = []
  for name, base in pairs(rows):
    for n in sorted(subsets):
      if n > len(rows[name]["window_nll"]):
        continue
      ivs = subset_intervals(rows[name], rows[base], n)
      est = np.array([iv.estimate for iv in ivs])
      out.append(dict(pair=f"{name} vs {base}", windows=n, tokens=n * rows[name]["window_tokens"][0],
                      subsets=len(ivs), half_width=float(np.median([iv.half_width for iv in ivs])),
                      estimate=float(est.mean()),
                      spread=float(1.96 * est.std(ddof=1)) if len(ivs) >= 4 else None))
  return out


def report(run_dir, subsets) -> str:
  run_dir = pathlib.Path(run_dir)
  rows = {r["id"]: r for r in run_folder.read_rows(run_dir / "results.jsonl", ROW_FIELDS)}
  entries = summary(rows, subsets)
  reports.write_text(run_dir / "noise_floor.csv", reports.csv_text(
      ["pair", "windows", "tokens", "subsets", "half_width", "spread", "estimate"], entries))
  pct = lambda v: "-" if v is None else f"{100 * v:.3g}"  # 3 significant digits: FP's noise is ~1e-5 %
  lines = [f"half-width of the {perplexity.INTERVAL_METHOD} of the relative perplexity increase, in %",
           "(median over the disjoint subsets of that size; spread: 1.96 x the standard deviation of "
           "their estimates; estimate: their mean, in %)",
           f"{'pair':<12}{'windows':>8}{'tokens':>8}{'subsets':>8} {'half-width':>10} {'spread':>9} {'estimate':>10}"]
  lines += [f"{e['pair']:<12}{e['windows']:>8}{e['tokens']:>8.0f}{e['subsets']:>8} {pct(e['half_width']):>10} "
            f"{pct(e['spread']):>9} {100 * e['estimate']:>+10.3g}" for e in entries]
  table = reports.with_weights(run_dir, "\n".join(lines))
  print(table)
  _plot(run_dir, entries)
  return table


def _plot(run_dir: pathlib.Path, entries: list[dict]) -> None:
  plt = reports.pyplot()

  if not entries:
    return
  fig, ax = plt.subplots(figsize=(6, 4))
  for pair in dict.fromkeys(e["pair"] for e in entries):
    pts = [(e["tokens"], 100 * e["half_width"]) for e in entries if e["pair"] == pair]
    ax.plot(*zip(*pts), marker="o", label=pair, ls="--" if PERTURBED in pair else "-")
  ref = [e for e in entries if e["pair"] == entries[0]["pair"]]
  x = np.array([e["tokens"] for e in ref])
  ax.plot(x, 100 * ref[0]["half_width"] * np.sqrt(x[0] / x), color="0.6", lw=1, label="1 / sqrt(tokens)")
  ax.axhline(0.1, color="k", lw=0.8, ls=":", label="0.1%")
  ax.set(xscale="log", yscale="log", xlabel="scored tokens", ylabel="interval half-width (%)",
         title=f"{reports.model_name(run_dir)}: {intervals.LEVEL:.0%} paired-bootstrap half-width "
               "of the perplexity increase")
  ax.title.set_fontsize(9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  reports.save_figure(fig, run_dir / "noise_floor.png", dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  cli.run_with_config(run, "Noise-floor configuration.")
