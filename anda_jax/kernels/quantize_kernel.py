"""Fused Anda fake quantization as a Pallas kernel: x -> decode(encode(x)) in one pass.

Defined in docs/formats.md, section 1.

Layout. The wrapper moves the grouping axis last and views x as [rows, n_groups, G] (a
free reshape when L is a multiple of G). The grid tiles rows and groups; each program
encodes and decodes a [block_rows, block_groups, G] tile entirely on chip, so HBM
traffic is one read and one write of x.

Numerics. The kernel body calls `anda_jax.numerics.anda.encode_groups` / `decode_groups`, the
project's single implementation of the encoding (integer arithmetic on the float32
bits, so it is exact and immune to flush-to-zero). The kernel therefore agrees with
`anda.quantize` bit for bit by construction; what the kernel adds is the tiling and the
fusion. M is a traced int32 operand (a (1, 1, 1) block read by every program), so one
compiled kernel serves every mantissa length.

Blocks (defaults; tune on hardware): block_rows=32, block_groups=32, each lowered to the
next power of two of a shorter axis (Triton needs powers of two). A ragged last tile is
read past the end of the array and its out-of-range rows/groups are never written back
(groups are independent, so nothing leaks). Only a groups tile that is neither the whole
axis nor a multiple of 8 (TPU's rule), e.g. 4 for 3 groups, makes the wrapper pad the
groups axis, a copy of x.

Backends. Only run in interpret mode on CPU (no GPU/TPU was available). The kernel is
lowered, not compiled, for TPU (Mosaic) and GPU (Triton) in tests/kernels_lowering_test.py;
nothing was compiled or timed on an accelerator.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from anda_jax.kernels import _common
from anda_jax.numerics import anda

BLOCK_ROWS = 32
BLOCK_GROUPS = 32


def quantize_reference(x, fmt: anda.AndaFormat, mantissa_bits, key=None) -> jax.Array:
  """The pure-jnp reference the kernel is tested against."""
  return anda.quantize(x, fmt, mantissa_bits, key)


def stochastic_uniforms(x, fmt: anda.AndaFormat, key):
  """The uniforms of stochastic rounding, drawn outside the kernel as the reference draws them
  (None for the deterministic roundings)."""
  if fmt.rounding != "stochastic":
    return None
  if key is None:
    raise ValueError("key=None is invalid for rounding='stochastic': pass key=jax.random.key(...)")
  return anda.grouped_uniforms(x.shape, fmt, key)


def as_rows(x: jax.Array, fmt: anda.AndaFormat) -> jax.Array:
  """x grouped as the kernels tile it: [rows, n_groups, G] (anda.to_groups, rows flattened)."""
  groups = anda.to_groups(x, fmt)
  return groups.reshape(-1, *groups.shape[-2:])


def from_rows(groups: jax.Array, shape, fmt: anda.AndaFormat) -> jax.Array:
  """The inverse of `as_rows` for an input of `shape`."""
  moved = list(shape)
  moved.pop(fmt.axis % len(shape))
  return anda.from_groups(groups.reshape(*moved, *groups.shape[-2:]), tuple(shape), fmt)


def _quantize_kernel(m_ref, x_ref, *rest, fmt):
  uniforms_ref, o_ref = rest if len(rest) == 2 else (None, rest[0])
  # The format code works on float32 bits; narrower floats widen exactly.
  x = x_ref[...].astype(jnp.float32)
  m = m_ref[...]  # (1, 1, 1): broadcasts against the tile
  uniforms = None if uniforms_ref is None else uniforms_ref[...]
  sign, magnitude, exponent = anda.encode_groups(x, fmt, m, uniforms)
  o_ref[...] = anda.decode_groups(sign, magnitude, exponent, m).astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("fmt", "block_rows", "block_groups", "interpret"))
def _quantize(x, m_bits, uniforms, *, fmt, block_rows, block_groups, interpret):
  groups = as_rows(x, fmt)
  rows, n_groups, g = groups.shape
  tr, tg = _common.tile(rows, block_rows), _common.tile(n_groups, block_groups)
  if tg != n_groups and tg % 8:
    # E.g. a short, non-power-of-two groups axis (3): TPU wants the block to be the whole
    # axis or a multiple of 8, Triton wants a power of two, so pad it to whole blocks.
    groups = _common.pad_axis(groups, 1, _common.round_up(n_groups, tg))
  tile_spec = pl.BlockSpec((tr, tg, g), lambda i, j: (i, j, 0))
  operands = [m_bits.reshape(1, 1, 1), groups]
  in_specs = [pl.BlockSpec((1, 1, 1), lambda i, j: (0, 0, 0)), tile_spec]
  if uniforms is not None:
    operands.append(_common.pad_axis(uniforms.reshape(rows, n_groups, g), 1, groups.shape[1]))
    in_specs.append(tile_spec)
  out = pl.pallas_call(
      functools.partial(_quantize_kernel, fmt=fmt),
      out_shape=jax.ShapeDtypeStruct(groups.shape, x.dtype),
      grid=(pl.cdiv(rows, tr), pl.cdiv(groups.shape[1], tg)),
      in_specs=in_specs,
      out_specs=tile_spec,
      interpret=interpret,
      compiler_params=_common.compiler_params(),
      name="anda_quantize",
  )(*operands)
  return from_rows(out[:, :n_groups], x.shape, fmt)


def anda_quantize(x, fmt: anda.AndaFormat, mantissa_bits, key=None, *,
                  block_rows: int = BLOCK_ROWS, block_groups: int = BLOCK_GROUPS,
                  interpret: bool | None = None) -> jax.Array:
  """Fused fake quantization, equal bit for bit to `anda_jax.quantize(x, fmt, mantissa_bits, key)`.

  x: floating array of any rank, grouped along fmt.axis. mantissa_bits: Python int 1..24
  or a traced int32 scalar (clipped to 1..24). key: PRNG key, needed for
  rounding="stochastic" (the same uniforms as the reference, drawn outside the kernel).
  interpret: None = interpret on CPU, compile elsewhere.
  Unlike `anda_jax.quantize` this has no straight-through gradient (inference only).
  """
  x = anda.check_input(x, fmt)
  m_bits = anda.check_mantissa_bits(mantissa_bits)
  block_rows = _common.check_block("block_rows", block_rows)
  block_groups = _common.check_block("block_groups", block_groups)
  uniforms = stochastic_uniforms(x, fmt, key)
  if x.size == 0:  # nothing to tile: a grid needs at least one block
    return quantize_reference(x, fmt, m_bits, key)
  return _quantize(x, m_bits, uniforms, fmt=fmt, block_rows=block_rows,
                   block_groups=block_groups, interpret=_common.resolve_interpret(interpret))
