"""Throughput of jitted `quantize` next to a memory-bound baseline on the same array."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from anda_jax.numerics import anda
from experiments import bench
from experiments.bench import time_call


def run(argv) -> None:
  bench.ArgumentParser("format").parse(argv)  # it takes no flags
  shape, group_size, mantissa_bits = (4096, 4096), 64, 8
  x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
  gbytes = 2 * x.size * x.dtype.itemsize / 1e9  # read x, write the result
  baseline = time_call(jax.jit(lambda x: x * 2 + 1), x, repeats=10)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; float32 {shape[0]}x{shape[1]}, "
        f"G={group_size}, M={mantissa_bits}")
  print(f"{'baseline x * 2 + 1':<28} {baseline * 1e3:8.2f} ms  {gbytes / baseline:6.2f} GB/s")
  for rounding in ("truncate", "nearest"):
    fmt = anda.AndaFormat(group_size=group_size, rounding=rounding)
    quantize = jax.jit(lambda x, m: anda.quantize(x, fmt, m))
    seconds = time_call(quantize, x, jnp.int32(mantissa_bits), repeats=10)
    print(f"{'quantize ' + rounding:<28} {seconds * 1e3:8.2f} ms  {gbytes / seconds:6.2f} GB/s  "
          f"throughput ratio vs baseline {baseline / seconds:.2f} (target >= 0.5)")
