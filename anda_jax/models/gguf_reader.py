"""GGUF files: metadata and tensors, nothing model-specific (weight_maps says what goes where).

Tensors are read in torch order ([n_out, k] for a linear layer) and checked for shape, type and
finite values. The file is memory-mapped (gguf.GGUFReader) and each tensor is converted only
when asked for. Of linear layers, the 4-bit types with one affine scale (and minimum) per 32
weights (Q4_0, Q4_1, Q4_K: int4.GGUF_INT4_TYPES) stay `Int4Weights` (codes and scales as
stored); F16 / BF16 / F32 tensors keep their dtype (bfloat16 as ml_dtypes'); every other type
the `gguf` package can dequantize (Q5_0, Q6_K, Q8_0, IQ4_XS, ...) becomes float32 through
gguf.quants.dequantize, a block of rows at a time, so a large table is never expanded whole in
gguf's temporaries.
"""

from __future__ import annotations

import functools
import pathlib

import gguf
import jax.numpy as jnp
import numpy as np

from anda_jax.models.checkpoints import check_finite, fail
from anda_jax.numerics import int4

_REQUIRED = object()
_KEPT_FLOAT = ("F32", "F16", "BF16")  # read in their own dtype
# gguf.quants.dequantize expands a block of rows at a time: about this many weights.
_DEQUANTIZE_ELEMENTS = 1 << 22


@functools.lru_cache(maxsize=None)
def _dequantizable(qtype: gguf.GGMLQuantizationType) -> bool:
  """Whether gguf.quants.dequantize decodes this type (it raises NotImplementedError if not)."""
  block, type_size = gguf.GGML_QUANT_SIZES[qtype]
  try:
    gguf.quants.dequantize(np.zeros((1, type_size), np.uint8), qtype)
  except NotImplementedError:
    return False
  return True


def supported_types() -> list[str]:
  """The GGUF tensor types this reader loads: every one gguf.quants.dequantize decodes."""
  return [q.name for q in gguf.GGMLQuantizationType if _dequantizable(q)]


def _reader_class():

  class Reader(gguf.GGUFReader):
    """gguf.GGUFReader, faster: it parses ~100k vocabulary strings through numpy.memmap slicing,
    whose per-slice bookkeeping dominates; slicing a plain ndarray view of the same mapping
    gives the same bytes several times faster."""

    def _get(self, offset, dtype, count=1, override_order=None):
      plain = self.__dict__.get("_plain")
      if plain is None:
        plain = self._plain = self.data.view(np.ndarray)
      count, dtype = int(count), np.dtype(dtype)
      arr = plain[offset:offset + dtype.itemsize * count].view(dtype)[:count]
      return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

  return Reader


class GGUFFile:
  """A GGUF file's metadata and tensors (data memory-mapped by gguf.GGUFReader)."""

  def __init__(self, path):
    self.path = pathlib.Path(path)
    if not self.path.is_file():
      fail(self.path, "no such GGUF file")
    try:
      reader = _reader_class()(str(self.path))
      self.tensors = {t.name: t for t in reader.tensors}
    except Exception as e:  # the reader fails in many ways on a broken file
      fail(self.path, f"not a readable GGUF file (truncated or corrupted?): {type(e).__name__}: {e}")
    self.fields = reader.fields

  def meta(self, key: str, default=_REQUIRED):
    field = self.fields.get(key)
    if field is None:
      if default is _REQUIRED:
        fail(self.path, f"missing GGUF metadata key '{key}'")
      return default
    try:
      return field.contents()
    except Exception as e:
      fail(self.path, f"unreadable GGUF metadata key '{key}': {e}")

  def _get(self, name, shape):
    t = self.tensors.get(name)
    if t is None:
      fail(self.path, f"missing tensor '{name}'")
    got = tuple(int(s) for s in t.shape)  # GGUF order: ne0 (contiguous) first
    if got != tuple(shape):
      fail(self.path, f"tensor '{name}' has shape {list(got)}, expected {list(shape)}")
    return t

  def kind(self, name) -> str:
    """A tensor's GGUF type (Q4_K, F32, ...)."""
    t = self.tensors.get(name)
    if t is None:
      fail(self.path, f"missing tensor '{name}'")
    return t.tensor_type.name

  def _float_rows(self, name, t, n_rows, n_cols) -> np.ndarray:
    """A tensor [n_rows, n_cols] in GGUF row order as float, in memory (not a view of the mapped
    file): F32 / F16 / BF16 in their own dtype, every other type float32 (gguf's dequantization)."""
    kind = t.tensor_type.name
    if kind not in _KEPT_FLOAT and not _dequantizable(t.tensor_type):
      fail(self.path, f"tensor '{name}' has unsupported type {kind}: supported are the types the "
           f"gguf package dequantizes, {supported_types()}")
    try:
      if kind == "BF16":  # stored as bytes: the bfloat16 bit patterns, little-endian
        out = np.array(np.asarray(t.data).reshape(-1).view("<u2").view(jnp.bfloat16))
      elif kind in _KEPT_FLOAT:
        out = np.array(np.asarray(t.data).reshape(-1), {"F32": np.float32, "F16": np.float16}[kind])
      else:
        out = _dequantize_rows(np.asarray(t.data), t.tensor_type, n_rows, n_cols)
      out = out.reshape(n_rows, n_cols)
    except ValueError as e:
      fail(self.path, f"tensor '{name}' ({kind}) has bad data: {e}")
    check_finite(self.path, name, out)
    return out

  def vector(self, name, n) -> np.ndarray:
    t = self._get(name, (n,))
    return self._float_rows(name, t, 1, n)[0]

  def rows(self, name, n_rows, n_cols) -> np.ndarray:
    """[n_rows, n_cols] as stored (e.g. an embedding table [vocab, d]), float in the stored dtype
    (float32 for quantized types, 4-bit ones included: a table is no FP-INT product site)."""
    t = self._get(name, (n_cols, n_rows))
    return self._float_rows(name, t, n_rows, n_cols)

  def matrix(self, name, n_out, k):
    """A linear layer stored [n_out, k] -> W [k, n_out] for x @ W: Int4Weights for the 4-bit
    types of int4.GGUF_INT4_TYPES (codes and scales as stored), float (as `rows`) otherwise."""
    t = self._get(name, (k, n_out))
    kind = t.tensor_type.name
    if kind in int4.GGUF_INT4_TYPES:
      try:
        w = int4.GGUF_INT4_TYPES[kind](np.asarray(t.data).reshape(-1), n_out, k)
      except ValueError as e:
        fail(self.path, f"tensor '{name}' ({kind}) has bad data: {e}")
      check_finite(self.path, name, w.scale)
      if w.offset is not None:
        check_finite(self.path, name, w.offset)
      return w
    return self._float_rows(name, t, n_out, k).T


def _dequantize_rows(data: np.ndarray, qtype, n_rows: int, n_cols: int) -> np.ndarray:
  """float32 [n_rows, n_cols] of a quantized tensor's bytes, by gguf.quants.dequantize, a block
  of rows at a time (its temporaries are several times their output)."""
  block, type_size = gguf.GGML_QUANT_SIZES[qtype]
  if n_cols % block:
    raise ValueError(f"its rows of {n_cols} weights are no whole number of {block}-weight blocks")
  data = data.reshape(-1)
  if data.size != n_rows * n_cols // block * type_size:
    raise ValueError(f"it holds {data.size} bytes, expected {n_rows * n_cols // block * type_size}")
  data = data.reshape(n_rows, n_cols // block * type_size)
  out = np.empty((n_rows, n_cols), np.float32)
  step = max(1, _DEQUANTIZE_ELEMENTS // n_cols)
  for start in range(0, n_rows, step):
    out[start:start + step] = gguf.quants.dequantize(data[start:start + step], qtype)
  return out
