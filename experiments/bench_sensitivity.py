"""Benchmark of the sensitivity study's float-prefix reuse: `python -m experiments.bench sensitivity`.

Runs the same study (every layer x type, vmapped over M) twice in one process: each
configuration from a cached float prefix (layers l..L-1 and the head only), and each from the
embedding (the whole model). Prints both times and their ratio (expected about 0.5-0.6: on
average half the layers, plus the head and the one float pass that builds the prefixes).
A warm-up on one layer first compiles both paths, so the times exclude compilation.

    python -m experiments.bench sensitivity [--model=smollm2-135m] [--seq_len=64] [--windows=1]
        [--mantissa_bits=4] [--types=qkv,o,up,down]
"""

from __future__ import annotations

import tempfile
from configs import sensitivity as sensitivity_config
from experiments.harness import loading
from experiments import bench
from experiments import sensitivity


def _parse(argv):
  p = bench.ArgumentParser("sensitivity")
  p.add_argument("--model", default="smollm2-135m", help="registry name, .gguf path or HF folder")
  p.add_argument("--corpus", default="enwiki-excerpt")
  p.add_argument("--seq_len", type=int, default=64)
  p.add_argument("--windows", type=int, default=1)
  p.add_argument("--mantissa_bits", default="4", help="comma-separated, vmapped")
  p.add_argument("--types", default="qkv,o,up,down")
  p.add_argument("--group_size", type=int, default=64)
  args = p.parse(argv)
  return args


def run(argv) -> dict:
  """Prints the two times and their ratio; returns {"prefix": Outcome, "embedding": Outcome}
  of the timed runs (sensitivity.Outcome: rows, seconds, compilations)."""

  args = _parse(argv)
  with tempfile.TemporaryDirectory() as tmp:
    def config(name, layers=None):
      c = sensitivity_config.get_config()
      c.run_name, c.results_dir = name, tmp
      c.model.name, c.data.corpus = args.model, args.corpus
      c.data.seq_len, c.data.windows = args.seq_len, args.windows
      c.format.group_sizes = (args.group_size,)
      c.mantissa_bits = tuple(int(m) for m in args.mantissa_bits.split(","))
      c.types = tuple(args.types.split(","))
      c.layers = layers
      return c

    loaded = loading.load_model_and_windows(config("load"))
    for reuse in (True, False):  # warm-up on layer 1: compiles both paths and the prefix step
      sensitivity.run(config(f"warmup_{reuse}", layers=(1,)), reuse_prefix=reuse, loaded=loaded)
    reused = sensitivity.run(config("prefix"), reuse_prefix=True, loaded=loaded)
    full = sensitivity.run(config("embedding"), reuse_prefix=False, loaded=loaded)

  same = max(abs(reused.rows[k]["ppl"] / full.rows[k]["ppl"] - 1) for k in reused.rows)
  n = len(reused.rows) - 1
  print(f"\nsensitivity study, {n} configurations ({args.windows} x {args.seq_len} tokens, "
        f"model {args.model}):")
  print(f"  float-prefix reuse : {reused.seconds:8.1f} s  ({reused.compiles} compilations)")
  print(f"  from the embedding : {full.seconds:8.1f} s  ({full.compiles} compilations)")
  print(f"  ratio              : {reused.seconds / full.seconds:8.2f}  (max relative perplexity "
        f"difference {same:.1e})")
  return dict(prefix=reused, embedding=full)
