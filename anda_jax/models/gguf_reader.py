"""GGUF files: metadata and tensors, nothing model-specific (weight_maps says what goes where).

Tensors are read in torch order ([n_out, k] for a linear layer) and checked for shape, type and
finite values. The file is memory-mapped (gguf.GGUFReader) and each tensor is converted only
when asked for. 4-bit tensors (Q4_0, Q4_1) of linear layers stay `Int4Weights` (packed codes and
scales as stored); F16 / BF16 / F32 tensors keep their dtype (bfloat16 as ml_dtypes'), Q8_0
ones become float32 (d * q, exact in float32 but not in float16).
"""

from __future__ import annotations

import pathlib

import jax.numpy as jnp
import numpy as np

from anda_jax.models.checkpoints import check_finite, fail
from anda_jax.numerics import int4

_REQUIRED = object()
_FLOAT_TYPES = ("F32", "F16", "BF16", "Q8_0")
_INT4_TYPES = ("Q4_0", "Q4_1")


def _reader_class():
  import gguf  # pylint: disable=g-import-not-at-top

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

  def _float_rows(self, name, t, n_rows, n_cols) -> np.ndarray:
    """A float-convertible tensor [n_rows, n_cols] in GGUF row order, in memory (not a view of
    the mapped file): F32 / F16 / BF16 in their own dtype, Q8_0 as float32."""
    kind = t.tensor_type.name
    if kind not in _FLOAT_TYPES:
      fail(self.path, f"tensor '{name}' has unsupported type {kind}: supported are "
           f"{_FLOAT_TYPES + _INT4_TYPES}")
    try:
      if kind == "Q8_0":
        out = int4.gguf_q8_0_to_float(np.asarray(t.data).reshape(-1), n_rows, n_cols)
      elif kind == "BF16":  # stored as bytes: the bfloat16 bit patterns, little-endian
        out = np.array(np.asarray(t.data).reshape(-1).view("<u2").view(jnp.bfloat16))
      else:
        out = np.array(np.asarray(t.data).reshape(-1), {"F32": np.float32, "F16": np.float16}[kind])
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
    (4-bit tensors dequantized to float32)."""
    t = self._get(name, (n_cols, n_rows))
    if t.tensor_type.name in _INT4_TYPES:  # not an FP-INT product site: use float
      return np.asarray(int4.dequantize(self.matrix(name, n_rows, n_cols))).T
    return self._float_rows(name, t, n_rows, n_cols)

  def matrix(self, name, n_out, k):
    """A linear layer stored [n_out, k] -> W [k, n_out] for x @ W: Int4Weights for 4-bit
    tensors (codes and scales as stored), float (as `rows`) otherwise."""
    t = self._get(name, (k, n_out))
    kind = t.tensor_type.name
    if kind in _INT4_TYPES:
      convert = int4.from_gguf_q4_0 if kind == "Q4_0" else int4.from_gguf_q4_1
      try:
        w = convert(np.asarray(t.data).reshape(-1), n_out, k)
      except ValueError as e:
        fail(self.path, f"tensor '{name}' ({kind}) has bad data: {e}")
      check_finite(self.path, name, w.scale)
      if w.offset is not None:
        check_finite(self.path, name, w.offset)
      return w
    return self._float_rows(name, t, n_out, k).T
