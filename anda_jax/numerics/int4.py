"""Group-wise INT4 weights.

Defined in docs/formats.md, section 3.

A weight matrix W [K, N] for y = x @ W is quantized in groups of `group_size` (Gw)
consecutive rows, i.e. along the contraction axis K, so that one scale d (and one
offset z) is constant over each block of the bit-serial dot product:

  symmetric:  w = d * q,      q in [-8, 7]   (stored nibble = q + 8, as GGUF Q4_0)
  asymmetric: w = d * q + z,  q in [0, 15]   (as GGUF Q4_1, z = its "m")

Two codes share a byte: row 2j in the low nibble, row 2j+1 in the high nibble.
Leading batch dimensions (e.g. stacked layers [L, K//2, N]) are allowed everywhere.

The GGUF constructors take the raw block bytes of a tensor GGUF stores as
[n_out rows, k] (blocks along a row, i.e. along K) and return our [K, N] layout. They cover the
4-bit GGUF types with one affine scale (and minimum) per 32 weights: Q4_0, Q4_1 and Q4_K (whose
256-weight super-blocks hold eight 32-weight sub-blocks, each with its own scale and minimum).
Every other GGUF type is read as float by gguf's own dequantization (models.gguf_reader).
"""

from __future__ import annotations

import dataclasses
import functools

from gguf import quants as gguf_quants
import jax
import jax.numpy as jnp
import numpy as np

from anda_jax.checks import check_int

__all__ = [
    "Int4Weights",
    "quantize_rtn",
    "codes",
    "dequantize",
    "from_gguf_q4_0",
    "from_gguf_q4_1",
    "from_gguf_q4_k",
    "GGUF_INT4_TYPES",
]

# GGUF block geometry: Q4_0 and Q4_1 pack 32 elements per block, Q4_K 256 (8 sub-blocks of 32).
_GGUF_BLOCK = 32
_Q4_0_BYTES = 2 + 16  # f16 d, 16 bytes of nibbles
_Q4_1_BYTES = 2 + 2 + 16  # f16 d, f16 m, 16 bytes of nibbles
_Q4_K_BLOCK = 256
_Q4_K_BYTES = 2 + 2 + 12 + 128  # f16 d, f16 dmin, 6-bit scales and minimums, 128 bytes of nibbles


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["packed", "scale", "offset"],
    meta_fields=["group_size"],
)
@dataclasses.dataclass(frozen=True)
class Int4Weights:
  """INT4 weight matrix [..., K, N], grouped along K.

  packed: uint8   [..., K // 2, N]   row 2j low nibble, row 2j+1 high nibble
  scale:  float32 [..., K // Gw, N]  d
  offset: float32 [..., K // Gw, N]  z (asymmetric, codes 0..15), or None (symmetric)
  group_size: Gw (static)
  """

  packed: jax.Array
  scale: jax.Array
  offset: jax.Array | None
  group_size: int

  @property
  def symmetric(self) -> bool:
    return self.offset is None

  @property
  def shape(self) -> tuple[int, ...]:
    """(..., K, N): (K, N) for a single matrix."""
    *batch, half_k, n = self.packed.shape
    return (*batch, 2 * half_k, n)


def _check_group_size(name: str, group_size, k: int) -> int:
  if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
    raise ValueError(f"{name}: group_size must be a positive int, got {group_size!r}")
  if group_size < 1 or k % group_size != 0:
    raise ValueError(
        f"{name}: group_size={group_size} must be a positive divisor of the "
        f"contraction length K={k}"
    )
  return int(group_size)


def quantize_rtn(w, group_size: int, symmetric: bool) -> Int4Weights:
  """Round-to-nearest (ties to even) group quantization of w [..., K, N] along K.

  symmetric:  d = max|w| / 7, q = clip(round(w / d), -8, 7). Using 7 (not 8) means
              no element is ever clipped; -8 is unused by RTN (GGUF data may use it).
  asymmetric: z = min w, d = (max w - min w) / 15, q = clip(round((w - z) / d), 0, 15),
              so both group extremes are representable up to rounding.
  A constant (or all-zero) group gets d = 0 and q = 0, so w = z (or 0) exactly.
  Computed in float32; a float16 / bfloat16 w is upcast (exactly) inside the compiled program,
  so no float32 copy of it is ever held.
  """
  w = jnp.asarray(w)
  if w.ndim < 2:
    raise ValueError(f"quantize_rtn: w must have shape [..., K, N], got shape {w.shape}")
  k = w.shape[-2]
  if k % 2:
    raise ValueError(f"quantize_rtn: K={k} must be even (two 4-bit codes per byte)")
  gw = _check_group_size("quantize_rtn", group_size, k)
  if not isinstance(symmetric, (bool, np.bool_)):
    raise ValueError(f"quantize_rtn: symmetric must be a bool, got {symmetric!r}")

  return _quantize_rtn(w, gw, bool(symmetric))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _quantize_rtn(w, gw: int, symmetric: bool) -> Int4Weights:
  # Jitted: one compiled program per (shape, Gw, kind) instead of a dozen eager ops
  # per weight matrix when a model loader quantizes layer after layer.
  w = w.astype(jnp.float32)
  *batch, k, n = w.shape
  g = w.reshape(*batch, k // gw, gw, n)  # group axis next to K-within-group
  if symmetric:
    d = jnp.max(jnp.abs(g), axis=-2) / 7.0
    z = None
    base = g
    lo, hi = -8, 7
  else:
    z = jnp.min(g, axis=-2)
    d = (jnp.max(g, axis=-2) - z) / 15.0
    base = g - z[..., None, :]
    lo, hi = 0, 15
  safe_d = jnp.where(d == 0, 1.0, d)[..., None, :]  # d = 0 => base = 0 => q = 0
  q = jnp.clip(jnp.round(base / safe_d), lo, hi).astype(jnp.int32)
  nib = (q + 8 if symmetric else q).reshape(*batch, k, n)
  return Int4Weights(packed=_pack_nibbles(nib), scale=d, offset=z, group_size=gw)


def _pack_nibbles(nib):
  """int [..., K, N] in 0..15 -> uint8 [..., K//2, N], even rows in the low nibble."""
  *batch, k, n = nib.shape
  pairs = nib.reshape(*batch, k // 2, 2, n).astype(jnp.int32)  # shift in int32, not uint8
  return (pairs[..., 0, :] | (pairs[..., 1, :] << 4)).astype(jnp.uint8)


def _nibbles(qw: Int4Weights):
  """uint8 [..., K//2, N] -> int32 [..., K, N] raw nibbles 0..15."""
  p = jnp.asarray(qw.packed).astype(jnp.int32)
  both = jnp.stack([p & 0xF, p >> 4], axis=-2)  # [..., K//2, 2, N]
  *batch, half_k, _, n = both.shape
  return both.reshape(*batch, 2 * half_k, n)


@jax.jit
def codes(qw: Int4Weights):
  """int32 [..., K, N]: q in -8..7 (symmetric) or 0..15 (asymmetric)."""
  nib = _nibbles(qw)
  return nib - 8 if qw.symmetric else nib


@jax.jit
def dequantize(qw: Int4Weights):
  """float32 [..., K, N]: d * q (+ z), with d, z broadcast over each group of Gw rows.

  XLA may fuse d * q + z into one FMA (one rounding instead of two), so the result can
  differ from numpy's two-step d * q + z by 1 ulp; for GGUF data (f16 d, |q| <= 15)
  d * q is exact and both agree bit for bit.
  """
  q = codes(qw).astype(jnp.float32)
  *batch, k, n = q.shape
  gw = qw.group_size
  q = q.reshape(*batch, k // gw, gw, n)
  w = q * qw.scale[..., None, :]
  if not qw.symmetric:
    w = w + qw.offset[..., None, :]
  return w.reshape(*batch, k, n)


def as_float(w):
  """Weights as float32 [..., K, N]: Int4Weights dequantized, float arrays as they are."""
  return dequantize(w) if isinstance(w, Int4Weights) else jnp.asarray(w, jnp.float32)


# --------------------------------------------------------------------------- GGUF


def _gguf_blocks(name: str, raw, n_out, k, block_bytes: int,
                 block: int = _GGUF_BLOCK) -> np.ndarray:
  """Validate raw GGUF bytes and view them as uint8 [n_out, k // block, block_bytes]."""
  for pname, v in (("n_out", n_out), ("k", k)):
    check_int(f"{name}: {pname}", v, 1)
  if k % block:
    raise ValueError(
        f"{name}: k={k} must be a multiple of {block} (the GGUF block size)"
    )
  if isinstance(raw, (bytes, bytearray, memoryview)):
    raw = np.frombuffer(raw, np.uint8)
  raw = np.asarray(raw)
  if raw.dtype != np.uint8:
    raise ValueError(f"{name}: raw must be a uint8 array of block bytes, got dtype {raw.dtype}")
  nb = k // block
  want = n_out * nb * block_bytes
  if raw.size != want:
    raise ValueError(
        f"{name}: raw has {raw.size} bytes, expected n_out * (k / {block}) * "
        f"{block_bytes} = {n_out} * {nb} * {block_bytes} = {want} for n_out={n_out}, k={k}"
    )
  return np.ascontiguousarray(raw).reshape(n_out, nb, block_bytes)


def _f16(b: np.ndarray) -> np.ndarray:
  """uint8 [..., 2] little-endian half -> float32 [...] (exact)."""
  return np.ascontiguousarray(b).view("<f2")[..., 0].astype(np.float32)


def _gguf_nibbles(qs: np.ndarray) -> np.ndarray:
  """uint8 [n_out, nb, 16] -> uint8 [n_out, nb * 32]: element j < 16 is the low nibble of
  byte j, element j + 16 the high nibble of byte j (GGUF order, not ours)."""
  n_out, nb, _ = qs.shape
  return np.concatenate([qs & 0xF, qs >> 4], axis=-1).reshape(n_out, nb * _GGUF_BLOCK)


def _to_ours(nib_rows: np.ndarray, d, z) -> Int4Weights:
  """GGUF-ordered nibbles [n_out, k] and per-32 d, z [n_out, k / 32] -> Int4Weights [k, n_out]."""
  nib = nib_rows.T  # [k, n_out]
  packed = nib[0::2] | (nib[1::2] << 4)
  return Int4Weights(
      packed=jnp.asarray(packed, jnp.uint8),
      scale=jnp.asarray(d.T, jnp.float32),
      offset=None if z is None else jnp.asarray(z.T, jnp.float32),
      group_size=_GGUF_BLOCK,
  )


def from_gguf_q4_0(raw, n_out: int, k: int) -> Int4Weights:
  """GGUF Q4_0 tensor [n_out, k] (w = d * (nibble - 8)) -> symmetric Int4Weights [k, n_out].

  Our symmetric code is also nibble - 8, so nibbles are copied unchanged.
  """
  blocks = _gguf_blocks("from_gguf_q4_0", raw, n_out, k, _Q4_0_BYTES)
  return _to_ours(_gguf_nibbles(blocks[..., 2:]), _f16(blocks[..., 0:2]), None)


def from_gguf_q4_1(raw, n_out: int, k: int) -> Int4Weights:
  """GGUF Q4_1 tensor [n_out, k] (w = d * nibble + m) -> asymmetric Int4Weights [k, n_out]."""
  blocks = _gguf_blocks("from_gguf_q4_1", raw, n_out, k, _Q4_1_BYTES)
  return _to_ours(
      _gguf_nibbles(blocks[..., 4:]), _f16(blocks[..., 0:2]), _f16(blocks[..., 2:4])
  )


def from_gguf_q4_k(raw, n_out: int, k: int) -> Int4Weights:
  """GGUF Q4_K tensor [n_out, k] -> asymmetric Int4Weights [k, n_out], group size 32.

  A 256-weight block holds f16 d and dmin, eight 6-bit scales sc_j and minimums m_j (unpacked
  by gguf's own Q4_K.get_scale_min) and 256 nibbles; sub-block j (weights 32j .. 32j + 31)
  is w = (d sc_j) q - dmin m_j, so our scale is d sc_j and our offset -(dmin m_j). Both
  products are exact in float32 (11 x 6 significant bits), and so is (d sc_j) q, so
  dequantize's q * scale + offset rounds once, where gguf's d * q - dm does: bit-identical.
  Sub-blocks 2i and 2i + 1 share 32 bytes of qs, the low nibbles and the high ones."""
  blocks = _gguf_blocks("from_gguf_q4_k", raw, n_out, k, _Q4_K_BYTES, _Q4_K_BLOCK)
  nb = blocks.shape[1]
  d, dmin = _f16(blocks[..., 0:2]), _f16(blocks[..., 2:4])  # [n_out, nb]
  sc, m = gguf_quants.Q4_K.get_scale_min(blocks[..., 4:16].reshape(n_out * nb, 12))
  scale = d[..., None] * sc.reshape(n_out, nb, 8).astype(np.float32)
  offset = -(dmin[..., None] * m.reshape(n_out, nb, 8).astype(np.float32))
  qs = blocks[..., 16:].reshape(n_out, nb, 4, 1, 32)
  nib = (qs >> np.array([0, 4], np.uint8).reshape(2, 1)) & 0xF  # [n_out, nb, 4, 2, 32]
  return _to_ours(nib.reshape(n_out, k), scale.reshape(n_out, nb * 8),
                  offset.reshape(n_out, nb * 8))


# GGUF tensor types that stay INT4 (packed codes and scales as stored), with their constructors.
GGUF_INT4_TYPES = {"Q4_0": from_gguf_q4_0, "Q4_1": from_gguf_q4_1, "Q4_K": from_gguf_q4_k}
