"""Benchmarks, each run side by side with its baseline in one process, printing ratios.

  python -m experiments.bench format        # jitted quantize vs a memory-bound x * 2 + 1
  python -m experiments.bench kernels       # Pallas kernels (interpret mode on CPU) vs pure JAX
  python -m experiments.bench model         # our forward vs transformers', GFLOP/s, Anda overhead
  python -m experiments.bench sensitivity   # sensitivity study with and without prefix reuse
  python -m experiments.bench memory        # peak RSS of a 7B-shaped INT4 model, 2 vs 4 layers
  python -m experiments.bench sweep         # the quickstart sweep vs transformers with hooks; LM head
  python -m experiments.bench search        # precision search with and without racing / prefix reuse
  python -m experiments.bench gemm          # the model's product shapes: weight layouts, window batches

Tests assert behaviour; only this file (and the bench_* modules it dispatches to) times.
"""

from __future__ import annotations

import importlib
import statistics
import sys
import time

import jax

BENCHMARKS = ("format", "kernels", "model", "sensitivity", "search", "sweep", "memory", "gemm")


def time_call(fn, *args, repeats: int = 5, warmup: int = 1) -> float:
  """Median wall seconds of fn(*args) (outputs blocked on), after `warmup` calls that
  absorb compilation."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv: list[str]) -> None:
  if len(argv) < 2 or argv[1] not in BENCHMARKS:
    sys.exit(f"usage: python -m experiments.bench {{{'|'.join(BENCHMARKS)}}} [flags]")
  importlib.import_module(f"experiments.bench_{argv[1]}").run(argv[1:])


if __name__ == "__main__":
  main(sys.argv)
