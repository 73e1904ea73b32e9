"""Benchmark of the search's racing, bound and prefix reuse: `python -m experiments.bench search`.

Runs the same searches twice in one process on the same calibration windows of SmolLM2: as
before (every candidate on every window, from the embedding: `plain`) and with racing, the
bound and, per layer, prefix reuse (`fast`). Prints both wall times, their ratio, the work each
did, and the configurations each chose, which must be equal. A warm-up first compiles every
program both use, so the times exclude compilation.

    python -m experiments.bench search [--windows=16] [--seq_len=64] [--race_windows=4]
        [--race_level=0.99] [--rule=upper] [--tolerances=0.001,0.01]
        [--type_start_m=10] [--type_min_m=2] [--config_batch=4]
        [--layer_start_m=8,6] [--layer_tolerances=0.01] [--layer_max_rounds=1]
        [--layer_rounds_from_type=4] [--skip=type|layer]

Per type: the whole search. Per layer, a search to the end takes hundreds of rounds of 120
candidates each, so the benchmark times `layer_max_rounds` rounds from each of
`layer_start_m`: from M = 8 every candidate fits the tolerance (an early round: racing drops
nothing, the bound skips the module types that cannot be chosen), from M = 6 (uniform M = 6
is several % over FP) none does (the last round of a search: racing drops what it can, the
bound nothing). The rounds of a real search lie between: the benchmark then times
`layer_rounds_from_type` rounds of one, from the per-type search's result at its loosest
tolerance (every layer at that M).
"""

from __future__ import annotations

import time

import numpy as np
from anda_jax import cost
from anda_jax.evaluation import evaluate
from anda_jax import precision_search
from configs import search as search_config
from experiments.harness import config_checks
from experiments.harness import loading
from experiments import bench
from experiments import search


def _parse(argv):
  p = bench.ArgumentParser("search")
  p.add_argument("--model", default="smollm2-135m", help="registry name, .gguf path or HF folder")
  p.add_argument("--corpus", default="enwiki-excerpt")
  p.add_argument("--windows", type=int, default=16, help="calibration windows")
  p.add_argument("--seq_len", type=int, default=64)
  p.add_argument("--group_size", type=int, default=64)
  p.add_argument("--race_windows", type=int, default=4)
  p.add_argument("--race_level", type=float, default=0.99)
  p.add_argument("--rule", default="upper", choices=("upper", "point"))
  p.add_argument("--tolerances", default="0.001,0.01", help="per-type search")
  p.add_argument("--type_start_m", type=int, default=10)
  p.add_argument("--type_min_m", type=int, default=2)
  p.add_argument("--layer_start_m", default="8,6", help="comma-separated: one search from each")
  p.add_argument("--layer_min_m", type=int, default=2)
  p.add_argument("--layer_tolerances", default="0.01")
  p.add_argument("--layer_max_rounds", type=int, default=1)
  p.add_argument("--layer_rounds_from_type", type=int, default=4,
                 help="rounds of a per-layer search from the per-type result (0: none)")
  p.add_argument("--config_batch", type=int, default=4,
                 help="configurations per forward, as the search's config_batch (4: one layer's "
                      "candidates)")
  p.add_argument("--skip", default="", help="'type' or 'layer': leave that part out")
  args = p.parse(argv)
  return args


def run(argv) -> dict:
  """Prints the table; returns {granularity: {"plain": Timed, "fast": Timed}}."""

  args = _parse(argv)
  cfg = search_config.get_config()
  cfg.model.name, cfg.data.corpus = args.model, args.corpus
  cfg.data.seq_len, cfg.data.windows = args.seq_len, args.windows
  cfg.format.group_sizes = (args.group_size,)
  model, tokenizer = loading.load_model(cfg.model)
  windows = loading.load_windows(cfg.data, tokenizer, {"calibration": args.windows})["calibration"]
  spec = config_checks.product_spec(cfg, args.group_size)
  shape = cost.as_shape(model)
  n_types = len(shape.macs()[0])
  auto = evaluate.auto_batch_size(args.config_batch, args.seq_len, model.config.vocab)
  race = args.race_windows if args.race_windows < len(windows) else None

  def evaluator(fast: bool):
    # One window batch for both (as experiments.search's window_batch): the batch size can move
    # float results by their last bits, and Anda's rounding can amplify that.
    ev = search.WindowEvaluator(model, windows, spec, score_from=0,
                                batch_size=min(auto, race) if race else auto,
                                config_batch=args.config_batch, reuse_prefix=fast)
    return ev, precision_search.CachedEvaluator(ev, ev.window_tokens, batch_size=args.config_batch)

  # Warm-up: every program either variant runs (from tokens and from hidden states, on the
  # racing slice and on all windows): candidates lowered at layer 0 and at layer 1.
  base = np.full((shape.n_layers, n_types), 8, np.int32)
  lowered = np.stack([base, base])
  lowered[0, 0, 0] = lowered[1, 1, 0] = 7
  for fast in (False, True):
    ev, _ = evaluator(fast)
    for part in ([slice(0, race), slice(race, len(windows))] if race else []) + [slice(None)]:
      for one in lowered:  # apart: together they would run from layer 0
        ev(one[None], part, base)
  precision_search.race_lower_bound(np.ones(2), 3, args.race_level)  # imports scipy

  plans = {} if "type" in args.skip else {
      "type": (np.full(n_types, args.type_start_m, np.int32), shape.macs().sum(0),
               args.tolerances, args.type_min_m, None)}
  for m in [] if "layer" in args.skip else [int(m) for m in args.layer_start_m.split(",")]:
    plans[f"layer from M={m}"] = (np.full((shape.n_layers, n_types), m, np.int32), shape.macs(),
                                  args.layer_tolerances, args.layer_min_m, args.layer_max_rounds)
  out = {}
  print(f"\nsearch benchmark: {args.model}, {args.windows} x {args.seq_len} calibration tokens, "
        f"rule {args.rule}; fast = racing on the first {args.race_windows} windows at level "
        f"{args.race_level} + the bound + prefix reuse (per layer); {args.config_batch} "
        "configurations per forward", flush=True)
  plans = list(plans.items())  # a list: the per-type search appends the per-layer one
  for granularity, (start, macs, tolerances, min_m, max_rounds) in plans:
    out[granularity] = {}
    for name, fast in (("plain", False), ("fast", True)):
      ev, cached = evaluator(fast)
      t0 = time.perf_counter()
      results = precision_search.search(
          cached, macs, start, tuple(float(t) for t in tolerances.split(",")), min_m=min_m,
          rule=args.rule, race_windows=race if fast else None, race_level=args.race_level,
          max_rounds=max_rounds, bound=fast, progress=False)
      out[granularity][name] = dict(seconds=time.perf_counter() - t0, results=results,
                                    window_evaluations=cached.window_evaluations,
                                    layer_passes=ev.layer_passes)
    _print(granularity, out[granularity])  # as soon as known: a long run may be cut short
    if granularity == "type" and args.layer_rounds_from_type and "layer" not in args.skip:
      # What a per-layer search runs: rounds from the per-type result, every layer at its M.
      loosest = out["type"]["plain"]["results"][max(out["type"]["plain"]["results"])].precision
      plans.append((f"layer from the per-type result {loosest.tolist()}", (
          np.tile(loosest, (shape.n_layers, 1)), shape.macs(), args.layer_tolerances,
          args.layer_min_m, args.layer_rounds_from_type)))
  return out


def _print(granularity, runs) -> None:
  plain, fast = runs["plain"], runs["fast"]
  same = all([c.tolist() for c in plain["results"][t].path]
             == [c.tolist() for c in fast["results"][t].path] for t in plain["results"])
  dropped = sum(r.dropped for r in fast["results"].values())
  skipped = sum(r.skipped for r in fast["results"].values())
  considered = sum(r.candidates for r in fast["results"].values())
  rounds = sum(r.rounds for r in fast["results"].values())
  print(f"  per {granularity} ({rounds} rounds over the tolerances):")
  for name, run in runs.items():
    print(f"    {name:5s} : {run['seconds']:8.1f} s  {run['window_evaluations']:6d} window "
          f"evaluations  {run['layer_passes']:8d} layer passes")
  print(f"    racing dropped {dropped} and the bound skipped {skipped} of {considered} candidates")
  print(f"    speedup {plain['seconds'] / fast['seconds']:.2f}x; same chosen configurations (and "
        f"paths): {'yes' if same else 'NO'}")
  for t in plain["results"]:
    for name in ("plain", "fast"):
      r = runs[name]["results"][t]
      config = r.precision.tolist() if r.precision.ndim == 1 else (
          f"layer means {np.round(r.precision.mean(0), 2).tolist()}")
      print(f"      tolerance {t:g} {name:5s}: {config}  loss {r.interval}")
