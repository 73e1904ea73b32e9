"""The runtime compressor as a Pallas kernel: float activations -> bit planes in one pass,
and its inverse, bit planes -> float activations.

Defined in docs/formats.md, sections 1 (the encoding) and 2 (the bit-plane layout).

Layout. As in quantize_kernel.py the wrapper views x as [rows, n_groups, G] (grouping
axis last) and the grid tiles rows and groups. A program encodes its tile with
`anda_jax.numerics.anda.encode_groups` (the project's one implementation of the encoding) and
then transposes magnitudes into planes on chip: the tile's magnitudes [.., G] are viewed
as [.., G/8, 8] and each byte is the sum of bit_j << j over its 8 elements (element j of a
group is bit j mod 8 of byte j div 8). Outputs are written directly in the layout of section 2:

  exponent int8  [rows, n_groups]        E (or NONFINITE_EXPONENT)
  sign     uint8 [rows, n_groups, G/8]
  planes   uint8 [rows, n_groups, P, G/8]  plane 0 = most significant bit

so HBM traffic is one float read and (1 + P + 8/G) bits per element written.

Number of planes. P (static) is `num_planes`, or M when M is a Python int. A traced M is
packed into the static P >= M planes: plane p holds bit M-1-p, and planes p >= M are zero.
That is the P-bit encoding of the same values (m << (P - M) with the same E), which is
what every reader of the planes assumes. A traced M above P keeps the top P bits (the
truncate-rounded P-bit encoding), as anda_jax.numerics.bitplane.pack does.

Group sizes that are not a multiple of 8 are zero padded inside the wrapper to the next
multiple of 8 (zero padding never changes E), so the byte layout is that of section 2.

Blocks (defaults; tune on hardware): block_rows=32, block_groups=128. Both are powers of
two; an axis shorter than its block is padded up to one whole power-of-two block. On TPU
block_groups must be a multiple of 128 unless it covers the groups axis, because it is
the lane axis of the exponent array.

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
from anda_jax.kernels import quantize_kernel
from anda_jax.numerics import anda
from anda_jax.numerics import bitplane
from anda_jax.precision import MAX_MANTISSA_BITS, MAX_PLANES

BLOCK_ROWS = 32
BLOCK_GROUPS = 128  # the exponent's lane axis: TPU wants a multiple of 128 (or the whole axis)


def pack_reference(x, fmt: anda.AndaFormat, mantissa_bits, num_planes=None, key=None):
  """The pure-jnp reference: encode, then pack (anda_jax.numerics.anda + anda_jax.numerics.bitplane)."""
  return bitplane.pack(anda.encode(x, fmt, mantissa_bits, key), num_planes)


def unpack_reference(bp, dtype=jnp.float32) -> jax.Array:
  """The pure-jnp reference of the inverse: unpack, then decode."""
  enc = bitplane.unpack(bp)
  return anda.decode(enc).astype(dtype)


def _bytes_of(bits: jax.Array) -> jax.Array:
  """int32 0/1 [..., 8C] -> int32 [..., C]: element j is bit j mod 8 of byte j div 8."""
  *lead, n = bits.shape
  bits = bits.reshape(*lead, n // 8, 8)
  weights = jax.lax.broadcasted_iota(jnp.int32, bits.shape, bits.ndim - 1)
  return jnp.sum(jax.lax.shift_left(bits, weights), axis=-1)


def _bits_of(byte: jax.Array) -> jax.Array:
  """int32 [..., C] -> int32 0/1 [..., 8C], the inverse of `_bytes_of`."""
  *lead, c = byte.shape
  shifts = jax.lax.broadcasted_iota(jnp.int32, (*lead, c, 8), len(lead) + 1)
  bits = jax.lax.shift_right_logical(byte[..., None], shifts) & 1
  return bits.reshape(*lead, c * 8)


def _pack_kernel(m_ref, x_ref, *rest, fmt, num_planes):
  if len(rest) == 4:
    uniforms_ref, exp_ref, sign_ref, planes_ref = rest
  else:
    uniforms_ref, (exp_ref, sign_ref, planes_ref) = None, rest
  x = x_ref[...].astype(jnp.float32)  # [tr, tg, G8]
  m = jnp.clip(m_ref[...], 1, MAX_MANTISSA_BITS)  # (1, 1, 1), as encode clips it
  uniforms = None if uniforms_ref is None else uniforms_ref[...]
  sign, magnitude, exponent = anda.encode_groups(x, fmt, m, uniforms)
  exp_ref[...] = exponent.astype(exp_ref.dtype)
  sign_ref[...] = _bytes_of(sign.astype(jnp.int32)).astype(sign_ref.dtype)

  def write_plane(p, carry):  # a loop, not unrolled: keeps the compile short
    # Plane p holds bit M-1-p; for p >= M (traced M < P) the plane is zero.
    shift = m - 1 - p
    bit = jax.lax.shift_right_logical(magnitude, jnp.maximum(shift, 0)) & 1
    bit = jnp.where(shift >= 0, bit, 0)
    planes_ref[:, :, p, :] = _bytes_of(bit).astype(planes_ref.dtype)
    return carry

  jax.lax.fori_loop(0, num_planes, write_plane, 0)


def _unpack_kernel(exp_ref, sign_ref, planes_ref, o_ref, *, num_planes):
  exponent = exp_ref[...].astype(jnp.int32)
  sign = _bits_of(sign_ref[...].astype(jnp.int32))
  magnitude = jax.lax.fori_loop(  # MSB first: m = 2m + bit
      0, num_planes, lambda p, m: 2 * m + _bits_of(planes_ref[:, :, p, :].astype(jnp.int32)),
      jnp.zeros_like(sign))
  values = anda.decode_groups(sign, magnitude, exponent, jnp.int32(num_planes))
  o_ref[...] = values.astype(o_ref.dtype)


def _padded_group(g: int) -> int:
  return 8 * -(-g // 8)


@functools.partial(jax.jit, static_argnames=("fmt", "num_planes", "block_rows", "block_groups", "interpret"))
def _pack(x, m_bits, uniforms, *, fmt, num_planes, block_rows, block_groups, interpret):
  groups = quantize_kernel.as_rows(x, fmt)
  rows, n_groups, g = groups.shape
  g8 = _padded_group(g)
  groups = _common.pad_axis(groups, -1, g8)
  tr, tg = _common.tile(rows, block_rows), _common.tile(n_groups, block_groups)
  # Outputs are allocated on whole tiles (sliced below): TPU wants the exponent's
  # [block_rows, block_groups] blocks to be whole-array or (8, 128)-aligned, Triton wants
  # powers of two. The input is not padded: its ragged last tiles are read past the end,
  # and those rows/groups land only in the padding of the outputs.
  rows_p, groups_p = _common.round_up(rows, tr), _common.round_up(n_groups, tg)
  tile_spec = pl.BlockSpec((tr, tg, g8), lambda i, j: (i, j, 0))
  operands = [m_bits.reshape(1, 1, 1), groups]
  in_specs = [pl.BlockSpec((1, 1, 1), lambda i, j: (0, 0, 0)), tile_spec]
  if uniforms is not None:
    operands.append(_common.pad_axis(uniforms.reshape(rows, n_groups, g), -1, g8))
    in_specs.append(tile_spec)
  c = g8 // 8
  exponent, sign, planes = pl.pallas_call(
      functools.partial(_pack_kernel, fmt=fmt, num_planes=num_planes),
      out_shape=(jax.ShapeDtypeStruct((rows_p, groups_p), jnp.int8),
                 jax.ShapeDtypeStruct((rows_p, groups_p, c), jnp.uint8),
                 jax.ShapeDtypeStruct((rows_p, groups_p, num_planes, c), jnp.uint8)),
      grid=(rows_p // tr, groups_p // tg),
      in_specs=in_specs,
      out_specs=(pl.BlockSpec((tr, tg), lambda i, j: (i, j)),
                 pl.BlockSpec((tr, tg, c), lambda i, j: (i, j, 0)),
                 pl.BlockSpec((tr, tg, num_planes, c), lambda i, j: (i, j, 0, 0))),
      interpret=interpret,
      compiler_params=_common.compiler_params(),
      name="anda_bitplane_pack",
  )(*operands)
  exponent, sign, planes = exponent[:rows, :n_groups], sign[:rows, :n_groups], planes[:rows, :n_groups]
  lead = [n for i, n in enumerate(x.shape) if i != fmt.axis % x.ndim]
  return bitplane.BitPlanes(
      exponent=exponent.reshape(*lead, n_groups),
      sign=sign.reshape(*lead, n_groups, c),
      planes=planes.reshape(*lead, n_groups, num_planes, c),
      fmt=fmt, length=x.shape[fmt.axis], shape=tuple(x.shape), dtype=x.dtype)


def bitplane_pack(x, fmt: anda.AndaFormat, mantissa_bits, num_planes: int | None = None,
                  key=None, *, block_rows: int = BLOCK_ROWS, block_groups: int = BLOCK_GROUPS,
                  interpret: bool | None = None):
  """Float activations -> `anda_jax.numerics.bitplane.BitPlanes`, equal bit for bit to
  `bitplane.pack(format.encode(x, fmt, mantissa_bits, key), num_planes)`.

  mantissa_bits: Python int 1..16 or a traced int32 scalar (then num_planes is required).
  num_planes: static P >= M (default M); extra planes are zero. key: for stochastic rounding.
  interpret: None = interpret on CPU, compile elsewhere.
  """
  x = anda.check_input(x, fmt)
  traced = isinstance(mantissa_bits, jax.core.Tracer)
  m_bits = anda.check_mantissa_bits(mantissa_bits, hi=MAX_PLANES)
  if num_planes is None:
    if traced:
      raise ValueError("num_planes=None is invalid with a traced mantissa_bits: pass a static num_planes >= M")
    num_planes = int(m_bits)
  num_planes = check_int("num_planes", num_planes, 1, MAX_PLANES)
  if not traced and int(m_bits) > num_planes:
    raise ValueError(f"num_planes={num_planes} is invalid for mantissa_bits={int(m_bits)}: must be >= mantissa_bits")
  uniforms = quantize_kernel.stochastic_uniforms(x, fmt, key)
  if x.size == 0:  # nothing to tile: a grid needs at least one block
    return pack_reference(x, fmt, m_bits, int(num_planes), key)
  return _pack(x, m_bits, uniforms, fmt=fmt, num_planes=int(num_planes),
               block_rows=_common.check_block("block_rows", block_rows),
               block_groups=_common.check_block("block_groups", block_groups),
               interpret=_common.resolve_interpret(interpret))


@functools.partial(jax.jit, static_argnames=("dtype", "block_rows", "block_groups", "interpret"))
def _unpack(bp, *, dtype, block_rows, block_groups, interpret):
  fmt = bp.fmt
  *lead, n_groups, num_planes, c = bp.planes.shape
  rows = int(np.prod(lead, dtype=np.int64))
  tr, tg = _common.tile(rows, block_rows), _common.tile(n_groups, block_groups)
  # Inputs are padded to whole tiles (see _pack on why); the padding decodes to zeros.
  rows_p, groups_p = _common.round_up(rows, tr), _common.round_up(n_groups, tg)
  def padded(a):
    return _common.pad_axis(_common.pad_axis(a, 0, rows_p), 1, groups_p)
  values = pl.pallas_call(
      functools.partial(_unpack_kernel, num_planes=num_planes),
      out_shape=jax.ShapeDtypeStruct((rows_p, groups_p, 8 * c), dtype),
      grid=(rows_p // tr, groups_p // tg),
      in_specs=[pl.BlockSpec((tr, tg), lambda i, j: (i, j)),
                pl.BlockSpec((tr, tg, c), lambda i, j: (i, j, 0)),
                pl.BlockSpec((tr, tg, num_planes, c), lambda i, j: (i, j, 0, 0))],
      out_specs=pl.BlockSpec((tr, tg, 8 * c), lambda i, j: (i, j, 0)),
      interpret=interpret,
      compiler_params=_common.compiler_params(),
      name="anda_bitplane_unpack",
  )(padded(bp.exponent.reshape(rows, n_groups)), padded(bp.sign.reshape(rows, n_groups, c)),
    padded(bp.planes.reshape(rows, n_groups, num_planes, c)))
  values = values[:rows, :n_groups]
  values = values[..., : fmt.group_size]
  return quantize_kernel.from_rows(values, bp.shape, fmt)


def bitplane_unpack(bp, dtype=jnp.float32, *, block_rows: int = BLOCK_ROWS,
                    block_groups: int = BLOCK_GROUPS, interpret: bool | None = None) -> jax.Array:
  """`BitPlanes` -> the float values they encode (decode(unpack(bp))), in one pass.

  The result has the packed tensor's shape with the grouping axis back at fmt.axis."""
  if not isinstance(bp, bitplane.BitPlanes):
    raise ValueError(f"bp={type(bp).__name__} is invalid: must be an anda_jax.numerics.bitplane.BitPlanes")
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"dtype={dtype!r} is invalid: must be a floating-point dtype")
  if bp.planes.size == 0 or bp.exponent.size == 0:
    return unpack_reference(bp, dtype)
  return _unpack(bp, dtype=jnp.dtype(dtype),
                 block_rows=_common.check_block("block_rows", block_rows),
                 block_groups=_common.check_block("block_groups", block_groups),
                 interpret=_common.resolve_interpret(interpret))
