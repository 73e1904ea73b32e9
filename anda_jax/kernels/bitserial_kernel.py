"""Bit-serial FP-INT matmul as a Pallas kernel: bit-plane activations [rows, K] x packed INT4
weights [K, N] -> float32 [rows, N].

Defined in docs/formats.md, section 4.

What a program computes. The grid is (row tiles, N tiles, K tiles), K innermost; the
float32 output tile stays resident across K and is accumulated in place. A K tile holds
whole activation groups and whole weight groups (block_k is a multiple of max(G, Gw)), so
it splits into blocks of B = min(G, Gw) indices over which E, d and z are constant. The
program unpacks the INT4 codes of its weight tile once, then streams the activation's
bit planes MSB first and, for every block, runs one small integer dot product per plane,
exactly what a bit-serial unit does per cycle:

    P_p = (+-b_p)[rows, B] @ q[B, N]          A = 2 A + P_p       (Horner, MSB first)
    S   = sum +-m'                             (for the offset z)
    y  += 2^(E-M'+1) (d A + z S)               the only floating-point step

Stopping after num_planes = M' <= P planes is progressive precision (the truncated M'-bit
result). M' is a runtime operand (a [1, 1, 1] int32 block, like the compressor's M), so one
compiled kernel serves every M' and the plane loop runs M' times; the planes block still
holds all P planes (on hardware, the DMA of unused planes is the price of that).

The plane dot products run in float32 on 0/+-1 bits and codes |q| <= 15: every input is exact
in bf16/tf32 and every sum (<= 15 * 1024) exact in float32, so converting to int32 is exact
whatever the backend's matmul precision; A and S are int32 from there.

Padding. Rows and N are zero padded to whole tiles and sliced off; K is zero padded to a
whole number of K tiles (zero planes and zero weights contribute exactly 0).

Blocks (defaults; tune on hardware): block_rows=128, block_n=128, block_k=None (= max(G, Gw),
one group per K step). A larger block_k is lowered to the largest power-of-two multiple of
max(G, Gw) (at most block_k) that divides the K padded to max(G, Gw), so a K like 576 is
not padded to 768. Per plane the kernel runs two dots, even and odd K rows (the low and
high nibbles of the packed weights, so they need no interleaving), each against
block-diagonal codes [block_k / 2, n_blocks * block_n] (n_blocks = block_k / min(G, Gw)):
n_blocks x the MACs of a plain dot, in exchange for MXU/tensor-core-shaped products, no
per-block slicing (Triton cannot slice values) and a short compile. The activation group
size must be a multiple of 8 (whole bytes per group).

Backends. Only run in interpret mode on CPU (no GPU/TPU was available). Lowered, not
compiled, for TPU (Mosaic) and GPU (Triton) in tests/kernels_lowering_test.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from anda_jax.checks import check_int
from anda_jax.kernels import _common
from anda_jax.numerics import anda
from anda_jax.numerics import bitplane
from anda_jax.numerics import bitserial
from anda_jax.numerics import int4
from anda_jax.precision import MAX_PLANES

BLOCK_ROWS = 128
BLOCK_N = 128
BLOCK_K = None  # None = max(G, Gw): one activation or weight group per K step


def matmul_reference(planes, weights, num_planes=None) -> jax.Array:
  """The pure-jnp reference (anda_jax.numerics.bitserial.matmul)."""
  return bitserial.matmul(planes, weights, num_planes)


def partial_sums_reference(planes, weights, num_planes=None):
  """The pure-jnp integer reference (anda_jax.numerics.bitserial.partial_sums)."""
  return bitserial.partial_sums(planes, weights, num_planes)


def _pow2(e):
  """2.0**e as float32 for integer e in [-126, 127], built from bits (exact, no FTZ)."""
  return jax.lax.bitcast_convert_type(jax.lax.shift_left(e + 127, 23), jnp.float32)


def _half_bits(byte, parity: int):
  """int32 bytes [tr, g, C] -> int32 0/1 [tr, g * C * 4]: the bits of the even (parity 0) or
  odd (parity 1) elements of the tile, in order. Element j is bit j % 8 of byte j // 8, so
  entry i of the result is element 2 i + parity: the K row whose INT4 code sits in the low
  (parity 0) or high (parity 1) nibble of packed weight row i. Splitting K by parity this
  way pairs activations with weights without interleaving the nibbles (Triton has no
  interleave), at the same MAC count."""
  tr, g, c = byte.shape
  shifts = 2 * jax.lax.broadcasted_iota(jnp.int32, (tr, g, c, 4), 3) + parity
  return (jax.lax.shift_right_logical(byte[..., None], shifts) & 1).reshape(tr, g * c * 4)


def _per_block(values, n_blocks: int):
  """[r, n_units, X] -> [r, n_blocks, X]: repeats each group's value over its blocks."""
  r, n_units, x = values.shape
  reps = n_blocks // n_units
  return jnp.broadcast_to(values[:, :, None, :], (r, n_units, reps, x)).reshape(r, n_blocks, x)


def _kernel(planes_to_stream_ref, exp_ref, sign_ref, planes_ref, w_ref, scale_ref, *rest,
            group_size, weight_group_size, symmetric, emit_sums):
  offset_ref = None if symmetric else rest[0]
  out_refs = rest if symmetric else rest[1:]
  half_k, tn = w_ref.shape
  block = min(group_size, weight_group_size)
  n_blocks = 2 * half_k // block

  # Block-diagonal INT4 codes [tk / 2, n_blocks * tn] for each nibble: column block b holds
  # the codes of K block b and zeros elsewhere, so one dot per plane yields every block's
  # plane sum side by side. That costs n_blocks x the MACs of a plain dot, which is why
  # block_k defaults to max(G, Gw) (n_blocks = max / min, usually 1 or 2).
  packed = w_ref[...].astype(jnp.int32)  # int32: no narrow shifts
  shape3 = (half_k, n_blocks, tn)
  # lax.div, not //: floor division of ints lowers through sign(), which Mosaic cannot
  # lower without a TPU attached (and the operands are non-negative anyway).
  in_block = (jax.lax.div(jax.lax.broadcasted_iota(jnp.int32, shape3, 0), block // 2)
              == jax.lax.broadcasted_iota(jnp.int32, shape3, 1))
  def block_diagonal(nibble):
    q = (nibble - 8 if symmetric else nibble).astype(jnp.float32)
    q = jnp.where(in_block, jnp.broadcast_to(q[:, None, :], shape3), 0.0)
    return q.reshape(half_k, n_blocks * tn)
  q_even = block_diagonal(packed & 0xF)  # K rows 2i: low nibbles
  q_odd = block_diagonal(jax.lax.shift_right_logical(packed, 4))  # K rows 2i + 1

  sign_bytes = sign_ref[...].astype(jnp.int32)
  sign_even = 1 - 2 * _half_bits(sign_bytes, 0)  # +1 / -1, [tr, tk / 2]
  sign_odd = 1 - 2 * _half_bits(sign_bytes, 1)
  tr = sign_even.shape[0]
  # M' is a runtime value: one compiled kernel serves every M, and the loop runs M' times.
  num_planes = planes_to_stream_ref[0, 0, 0]

  def plane_step(p, carry):  # MSB first; stopping after num_planes = fewer mantissa bits
    a, m_even, m_odd = carry
    plane = planes_ref[:, :, p, :].astype(jnp.int32)
    b_even, b_odd = _half_bits(plane, 0), _half_bits(plane, 1)
    # Exact at any precision (see the module docstring), so the fastest pass, named explicitly.
    dot = functools.partial(jnp.dot, precision=jax.lax.Precision.DEFAULT, preferred_element_type=jnp.float32)
    plane_sums = (dot((sign_even * b_even).astype(jnp.float32), q_even)
                  + dot((sign_odd * b_odd).astype(jnp.float32), q_odd))
    return 2 * a + plane_sums.astype(jnp.int32), 2 * m_even + b_even, 2 * m_odd + b_odd

  zeros_half = jnp.zeros((tr, half_k), jnp.int32)
  a, m_even, m_odd = jax.lax.fori_loop(
      0, num_planes, plane_step, (jnp.zeros((tr, n_blocks * tn), jnp.int32), zeros_half, zeros_half))
  a = a.reshape(tr, n_blocks, tn)
  # S per block: the signed truncated magnitudes m' summed over the block's elements.
  s = (jnp.sum((sign_even * m_even).reshape(tr, n_blocks, block // 2), axis=2)
       + jnp.sum((sign_odd * m_odd).reshape(tr, n_blocks, block // 2), axis=2))[:, :, None]

  if emit_sums:
    a_ref, s_ref = out_refs
    a_ref[...] = a
    s_ref[...] = jnp.broadcast_to(s, a.shape)
    return

  (out_ref,) = out_refs

  @pl.when(pl.program_id(2) == 0)
  def _():
    out_ref[...] = jnp.zeros_like(out_ref)

  e = _per_block(exp_ref[...].astype(jnp.int32)[:, :, None], n_blocks)  # [tr, n_blocks, 1]
  d = _per_block(scale_ref[...][None], n_blocks)  # [1, n_blocks, tn]
  t = d * a.astype(jnp.float32)
  if not symmetric:
    t = t + _per_block(offset_ref[...][None], n_blocks) * s.astype(jnp.float32)
  # 2^(E-M'+1) can be as small as 2^-141: two normal powers of two keep it exact
  # (as anda_jax.numerics.bitserial does; XLA on CPU flushes subnormals).
  lsb = e - num_planes + 1
  hi = jnp.maximum(lsb, -126)
  y = t * _pow2(hi) * _pow2(lsb - hi)
  y = jnp.where(e == anda.NONFINITE_EXPONENT, jnp.nan, y)
  out_ref[...] += jnp.sum(y, axis=1)


def _k_tile(k_unit_padded: int, unit: int, block_k) -> int:
  """Largest unit * 2^j <= max(block_k, unit) dividing the (unit-padded) K."""
  tk = unit
  block_k = unit if block_k is None else block_k
  while tk * 2 <= block_k and k_unit_padded % (tk * 2) == 0:
    tk *= 2
  return tk


@functools.partial(jax.jit, static_argnames=("block_rows", "block_n", "block_k", "interpret", "emit_sums"))
def _bitserial(bp, w, num_planes, *, block_rows, block_n, block_k, interpret, emit_sums):
  g, gw = bp.fmt.group_size, w.group_size
  *lead, n_groups, p_count, c = bp.planes.shape
  rows = int(np.prod(lead, dtype=np.int64))
  k, n = w.shape
  unit = max(g, gw)
  k_unit = _common.round_up(n_groups * g, unit)
  tk = _k_tile(k_unit, unit, block_k)
  tr, tn = _common.tile(rows, block_rows), _common.tile(n, block_n)
  rows_p, n_p, k_p = _common.round_up(rows, tr), _common.round_up(n, tn), _common.round_up(k_unit, tk)
  groups_p, gpt, n_kt = k_p // g, tk // g, k_p // tk

  def act(a, *trailing):  # [rows, n_groups, ...] -> zero padded [rows_p, n_kt, tk / G, ...]
    a = _common.pad_axis(_common.pad_axis(a.reshape(rows, n_groups, *trailing), 0, rows_p), 1, groups_p)
    return a.reshape(rows_p, n_kt, gpt, *trailing)

  def wts(a, per):  # [K / per, N] -> zero padded [n_kt, tk / per, n_p]
    a = _common.pad_axis(_common.pad_axis(a, 0, k_p // per), 1, n_p)
    return a.reshape(n_kt, tk // per, n_p)

  # Activations and weight scales are split per K tile (reshapes) so that each block's last
  # two dimensions are whole array dimensions, which TPU accepts at any size. The exponent
  # goes in as [n_kt, rows, tk / G] (a small copy: one byte per group) so that its block's
  # last two dimensions are (rows tile, whole axis) rather than a squeezed K-tile axis.
  operands = [jnp.asarray(num_planes, jnp.int32).reshape(1, 1, 1), jnp.moveaxis(act(bp.exponent), 1, 0),
              act(bp.sign, c), act(bp.planes, p_count, c), wts(w.packed, 2), wts(w.scale, gw)]
  in_specs = [
      pl.BlockSpec((1, 1, 1), lambda i, j, kk: (0, 0, 0)),
      pl.BlockSpec((None, tr, gpt), lambda i, j, kk: (kk, i, 0)),
      pl.BlockSpec((tr, None, gpt, c), lambda i, j, kk: (i, kk, 0, 0)),
      pl.BlockSpec((tr, None, gpt, p_count, c), lambda i, j, kk: (i, kk, 0, 0, 0)),
      pl.BlockSpec((None, tk // 2, tn), lambda i, j, kk: (kk, 0, j)),
      pl.BlockSpec((None, tk // gw, tn), lambda i, j, kk: (kk, 0, j)),
  ]
  if not w.symmetric:
    operands.append(wts(w.offset, gw))
    in_specs.append(in_specs[-1])
  block = min(g, gw)
  nbt = tk // block  # blocks per K tile
  if emit_sums:
    # [rows, n_kt, blocks per tile, N]: one program writes all blocks of its K tile.
    sums_shape = jax.ShapeDtypeStruct((rows_p, n_kt, nbt, n_p), jnp.int32)
    sums_spec = pl.BlockSpec((tr, None, nbt, tn), lambda i, j, kk: (i, kk, 0, j))
    out_shape, out_specs = (sums_shape, sums_shape), (sums_spec, sums_spec)
  else:
    out_shape = jax.ShapeDtypeStruct((rows_p, n_p), jnp.float32)
    out_specs = pl.BlockSpec((tr, tn), lambda i, j, kk: (i, j))
  out = pl.pallas_call(
      functools.partial(_kernel, group_size=g, weight_group_size=gw, symmetric=w.symmetric,
                        emit_sums=emit_sums),
      out_shape=out_shape,
      grid=(rows_p // tr, n_p // tn, n_kt),
      in_specs=in_specs,
      out_specs=out_specs,
      interpret=interpret,
      compiler_params=_common.compiler_params(),
      name="anda_bitserial_sums" if emit_sums else "anda_bitserial_matmul",
  )(*operands)
  if emit_sums:
    n_blocks = k // block  # blocks past K are padding
    def unfold(x):
      x = x.reshape(rows_p, n_kt * nbt, n_p)[:rows, :n_blocks, :n]
      return x.reshape(*lead, n_blocks, n)
    return tuple(unfold(x) for x in out)
  return out[:rows, :n].reshape(*lead, n)


def _check(planes, weights, num_planes, blocks):
  """Validates everything before tracing; returns the number of planes to stream M' (an int,
  or a traced int32 clipped to [1, P]: a traced value cannot raise)."""
  if not isinstance(planes, bitplane.BitPlanes):
    raise ValueError(f"planes={type(planes).__name__} is invalid: must be an anda_jax.numerics.bitplane.BitPlanes")
  if not isinstance(weights, int4.Int4Weights):
    raise ValueError(f"weights={type(weights).__name__} is invalid: must be an anda_jax.numerics.int4.Int4Weights")
  for name, arr, dtype in (("planes.exponent", planes.exponent, jnp.int8),
                           ("planes.sign", planes.sign, jnp.uint8),
                           ("planes.planes", planes.planes, jnp.uint8),
                           ("weights.packed", weights.packed, jnp.uint8)):
    if arr.dtype != dtype:
      raise ValueError(f"{name} has dtype {arr.dtype}, which is invalid: must be {jnp.dtype(dtype).name}")
  rank = planes.exponent.ndim
  if rank < 2 or planes.sign.ndim != rank + 1 or planes.planes.ndim != rank + 2:
    raise ValueError(f"planes has exponent rank {rank}, which is invalid: activations must be "
                     "[..., rows, K] (exponent [..., rows, n_groups], at least rank 2)")
  if planes.fmt.axis % (rank) != rank - 1:
    raise ValueError(f"planes.fmt.axis={planes.fmt.axis} is invalid: the activations must be "
                     "grouped along their last (contraction) axis")
  if len(weights.shape) != 2:
    raise ValueError(f"weights has shape {weights.shape}, which is invalid: must be one [K, N] matrix")
  k = weights.shape[0]
  if planes.length != k:
    raise ValueError(f"K={planes.length} (activation length) does not fit the weights' K={k}: "
                     "they must be equal")
  bitserial.block_size(planes.fmt.group_size, weights.group_size)  # ValueError if they do not nest
  p_count = planes.num_planes
  if p_count > MAX_PLANES:
    raise ValueError(f"planes holds {p_count} planes, which is invalid: at most {MAX_PLANES}")
  if isinstance(num_planes, jax.core.Tracer):
    num_planes = jnp.clip(num_planes, 1, p_count).astype(jnp.int32)
  else:
    num_planes = check_int("num_planes", p_count if num_planes is None else num_planes,
                                       1, p_count, " (the number of planes the activations hold)")
  if planes.fmt.group_size % 8:
    raise ValueError(f"planes.fmt.group_size={planes.fmt.group_size} is invalid here: the kernel "
                     "needs whole bytes per group (a multiple of 8)")
  for name, value in blocks.items():
    if not (name == "block_k" and value is None):
      _common.check_block(name, value)
  return num_planes


def bitserial_matmul(planes, weights, num_planes: int | None = None, *,
                     block_rows: int = BLOCK_ROWS, block_n: int = BLOCK_N, block_k: int = BLOCK_K,
                     interpret: bool | None = None) -> jax.Array:
  """Bit-serial product: BitPlanes [..., rows, K] x Int4Weights [K, N] -> float32 [..., rows, N].

  Equals `anda_jax.numerics.bitserial.matmul(planes, weights, num_planes)` to float32 rounding
  (only the accumulation order of the per-block float terms differs). num_planes: M' <= P,
  the planes streamed (default all); an int or a traced int32 (clipped to [1, P]), a runtime
  value of the kernel either way, so changing it does not recompile. Symmetric and
  asymmetric weights.
  interpret: None = interpret on CPU, compile elsewhere.
  """
  blocks = dict(block_rows=block_rows, block_n=block_n, block_k=block_k)
  m_prime = _check(planes, weights, num_planes, blocks)
  return _bitserial(planes, weights, m_prime, interpret=_common.resolve_interpret(interpret),
                    emit_sums=False, **blocks)


def bitserial_partial_sums(planes, weights, num_planes: int | None = None, *,
                           block_rows: int = BLOCK_ROWS, block_n: int = BLOCK_N, block_k: int = BLOCK_K,
                           interpret: bool | None = None):
  """The kernel's exact integer partial sums (A, S), each int32 [..., n_blocks, N], as
  `anda_jax.numerics.bitserial.partial_sums` returns them (S broadcast over N). Same kernel body
  as `bitserial_matmul`, stopping before the floating-point step: for tests and debugging."""
  blocks = dict(block_rows=block_rows, block_n=block_n, block_k=block_k)
  m_prime = _check(planes, weights, num_planes, blocks)
  return _bitserial(planes, weights, m_prime, interpret=_common.resolve_interpret(interpret),
                    emit_sums=True, **blocks)
