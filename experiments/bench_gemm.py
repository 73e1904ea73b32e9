"""Benchmark of the backend's matrix product on the model's own shapes: `python -m experiments.bench gemm`.

For each product of a SmolLM2-135M block (q/k/v fused, o, gate/up fused, down) and one LM-head
vocabulary chunk, and for each number of token rows (window batch x 256 tokens), times the
float32 product at precision "highest" two ways, interleaved:

  [K, N]  x [rows, K] @ w [K, N]: how the models store every weight (ProductSpec.__call__);
  [N, K]  the same with w stored transposed, contracting both operands' last axis (the layout
          PyTorch's nn.Linear keeps, and some GEMM libraries prefer).

Prints GFLOP/s of each and the ratio [N, K] / [K, N] per shape, and GFLOP/s against the rows:
whether a layout or a larger window batch would be worth changing the models for.

    python -m experiments.bench gemm [--rows=256,512,1024,2048,4096] [--shapes=576x960,...]
        [--repeats=5]
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from experiments import bench
from experiments.bench import time_call

# SmolLM2-135M: d_model 576, 9 query and 3 key/value heads of 64, FFN 1536, one 8192-column
# chunk of the 49152-token LM head (anda_jax.evaluation.cross_entropy.DEFAULT_CHUNK).
SHAPES = dict(qkv=(576, 960), o=(576, 576), gate_up=(576, 3072), down=(1536, 576),
              head_chunk=(576, 8192))


def _parse(argv):
  p = bench.ArgumentParser("gemm")
  p.add_argument("--rows", default="256,512,1024,2048,4096",
                 help="token rows per product (window batch x tokens per window)")
  p.add_argument("--shapes", default=None,
                 help="KxN[,KxN...] instead of SmolLM2's products, e.g. 4096x11008")
  p.add_argument("--repeats", type=int, default=5, help="timed calls per variant (median)")
  args = p.parse(argv)
  try:
    args.rows = [int(r) for r in args.rows.split(",")]
    shapes = (SHAPES if args.shapes is None else
              {s: tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")})
  except ValueError:
    shapes = {}
  if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes.values()) or min(args.rows) < 1:
    raise ValueError(f"--rows={args.rows!r} / --shapes={args.shapes!r} are invalid: positive "
                     "integers, shapes as KxN[,KxN...]")
  args.shapes = shapes
  return args


@jax.jit
def _kn(x, w):
  return jnp.matmul(x, w, precision=jax.lax.Precision.HIGHEST)


@jax.jit
def _nk(x, w_t):
  return jax.lax.dot_general(x, w_t, (((1,), (1,)), ((), ())), precision=jax.lax.Precision.HIGHEST)


def run(argv) -> dict:
  """Prints the tables; returns {(shape name, rows): {"kn": GFLOP/s, "nk": GFLOP/s}}."""
  args = _parse(argv)
  rng = np.random.default_rng(0)
  out = {}
  print(f"float32 products at precision highest, jax {jax.__version__} on "
        f"{jax.devices()[0].platform}, median of {args.repeats} calls")
  print(f"{'product':<12}{'K x N':>12}{'rows':>7}{'[K,N] GFLOP/s':>15}{'[N,K] GFLOP/s':>15}"
        f"{'[N,K]/[K,N]':>13}")
  for name, (k, n) in args.shapes.items():
    w = jnp.asarray(rng.standard_normal((k, n)), jnp.float32)
    w_t = jnp.asarray(np.asarray(w).T)  # stored transposed: its own contiguous buffer
    for rows in args.rows:
      x = jnp.asarray(rng.standard_normal((rows, k)), jnp.float32)
      np.testing.assert_allclose(_kn(x, w), _nk(x, w_t), rtol=1e-4, atol=1e-3)
      flop = 2.0 * rows * k * n
      rate = {v: flop / time_call(f, x, a, repeats=args.repeats) / 1e9
              for v, f, a in (("kn", _kn, w), ("nk", _nk, w_t))}
      out[(name, rows)] = rate
      print(f"{name:<12}{f'{k} x {n}':>12}{rows:>7}{rate['kn']:>15.1f}{rate['nk']:>15.1f}"
            f"{rate['nk'] / rate['kn']:>13.3f}")
  return out
