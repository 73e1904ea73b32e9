"""Benchmark of the Pallas kernels against their pure-JAX references, in one process.

    python -m experiments.bench kernels [--rows=256] [--repeats=3] [--layer_rows=2048]

Per kernel: the kernel's time next to its pure-JAX reference on the same inputs, and the
ratio. On a CPU-only machine the kernels run in Pallas interpret mode, so the ratio is the
honest cost of interpretation here, not a statement about GPU/TPU speed. Then the two
implementations of anda_matmul on a 2048x576 @ 576x1536 layer (SmolLM2-135M's up
projection shape): impl="fake" (quantize + float matmul) vs impl="bitserial" (runtime
compressor + bit-serial kernel). Times are medians over --repeats runs after one warm-up
(compile) run, which is reported separately.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import anda_jax
from anda_jax.kernels import bitplane_kernel
from anda_jax.kernels import bitserial_kernel
from anda_jax.kernels import quantize_kernel
from anda_jax.numerics import anda
from anda_jax.numerics import bitplane
from anda_jax.numerics import bitserial
from anda_jax.numerics import int4
from experiments import bench


M_PLANES = 8  # static planes the traced M is packed into


def _time(fn, *args, repeats: int):
  """(compile + first run seconds, median steady-state seconds)."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return first, statistics.median(times)


def _activations(rows, k, seed=0):
  """Heavy-tailed stand-in for a layer input: Student-t(2) with 5% outlier channels."""
  rng = np.random.default_rng(seed)
  x = rng.standard_t(2.0, (rows, k)) * np.where(rng.random(k) < 0.05, 30.0, 1.0)
  return jnp.asarray(x, jnp.float32)


def _report(name, shape, kernel_fn, reference_fn, args, repeats):
  k_first, k_med = _time(kernel_fn, *args, repeats=repeats)
  r_first, r_med = _time(reference_fn, *args, repeats=repeats)
  print(f"{name:<18} {shape:<24} kernel {k_med * 1e3:9.2f} ms   reference {r_med * 1e3:9.2f} ms"
        f"   kernel/reference {k_med / r_med:7.2f}x   (first calls {k_first:.1f} s / {r_first:.1f} s)",
        flush=True)


def run(argv) -> None:
  parser = bench.ArgumentParser("kernels", description=__doc__.split("\n")[0])
  parser.add_argument("--rows", type=int, default=256, help="activation rows for the per-kernel rows")
  parser.add_argument("--layer_rows", type=int, default=2048, help="rows of the anda_matmul layer")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse(argv)

  backend = jax.default_backend()
  mode = "interpret mode" if backend == "cpu" else "compiled"
  print(f"jax {jax.__version__}, backend {backend}: kernels run in {mode}", flush=True)
  k, n, m = 576, 1536, 8
  fmt = anda.AndaFormat(group_size=64, rounding="nearest")
  x = _activations(args.rows, k)
  m_bits = jnp.int32(m)
  shape = f"[{args.rows}, {k}] G=64 M={m}"

  _report("anda_quantize", shape,
          jax.jit(lambda x, m: quantize_kernel.anda_quantize(x, fmt, m)),
          jax.jit(lambda x, m: anda.quantize(x, fmt, m)), (x, m_bits), args.repeats)
  _report("bitplane_pack", shape,
          jax.jit(lambda x, m: bitplane_kernel.bitplane_pack(x, fmt, m, M_PLANES)),
          jax.jit(lambda x, m: bitplane.pack(anda.encode(x, fmt, m), M_PLANES)), (x, m_bits), args.repeats)
  bp = bitplane.pack(anda.encode(x, fmt, m))
  _report("bitplane_unpack", shape,
          jax.jit(bitplane_kernel.bitplane_unpack),
          jax.jit(lambda bp: anda.decode(bitplane.unpack(bp))), (bp,), args.repeats)
  for symmetric in (True, False):
    qw = int4.quantize_rtn(jnp.asarray(np.random.default_rng(1).normal(size=(k, n)) * 0.05, jnp.float32),
                           32, symmetric)
    _report("bitserial_matmul", f"{shape} @ [{k}, {n}] {'sym' if symmetric else 'asym'}",
            jax.jit(bitserial_kernel.bitserial_matmul), jax.jit(bitserial.matmul), (bp, qw), args.repeats)

  # The layer: fake vs bitserial through the public entry point.
  x = _activations(args.layer_rows, k, seed=2)
  qw = int4.quantize_rtn(jnp.asarray(np.random.default_rng(3).normal(size=(k, n)) * 0.05, jnp.float32),
                         32, True)
  fake = jax.jit(lambda x: anda_jax.anda_matmul(x, qw, fmt, m, impl="fake"))
  serial = jax.jit(lambda x: anda_jax.anda_matmul(x, qw, fmt, m, impl="bitserial"))
  f_first, f_med = _time(fake, x, repeats=args.repeats)
  s_first, s_med = _time(serial, x, repeats=args.repeats)
  diff = float(jnp.max(jnp.abs(fake(x) - serial(x))))
  scale = float(jnp.max(jnp.abs(fake(x))))
  print(f"anda_matmul [{args.layer_rows}, {k}] @ [{k}, {n}] G=64 Gw=32 M={m}: fake {f_med * 1e3:.1f} ms, "
        f"bitserial {s_med * 1e3:.1f} ms, bitserial/fake {s_med / f_med:.1f}x "
        f"(first calls {f_first:.1f} s / {s_first:.1f} s); max |fake - bitserial| = {diff:.3g} "
        f"(max |y| = {scale:.3g})", flush=True)
