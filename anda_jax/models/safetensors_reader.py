"""Hugging Face checkpoint directories: config.json and the *.safetensors tensors, nothing
model-specific (weight_maps says what goes where). Tensors are read one at a time, when asked
for, and keep their stored dtype (float16 / bfloat16 / float32): the directory is never held
in memory whole. They are read like a GGUF file's (vector, rows, matrix), so one weight map
applies to either."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np

from anda_jax.models.checkpoints import check_config_types, check_finite, fail

# transformers keeps a causal LM's output layer outside the model's prefix, and stores it only
# when it is not tied to the embedding.
_HEAD = "lm_head.weight"
_FLOAT_DTYPES = tuple(np.dtype(t) for t in ("float16", jax.numpy.bfloat16, "float32", "float64"))


def read_config(directory) -> dict:
  """The settings of a directory's config.json, those the loaders read checked for type."""
  path = pathlib.Path(directory) / "config.json"
  if not path.is_file():
    fail(path, "no config.json in the checkpoint directory")
  try:
    cfg = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    fail(path, f"not valid JSON: {e}")
  return check_config_types(path, cfg)


def _safe_open(file, framework="numpy"):
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top

  return safe_open(str(file), framework=framework)


def _unreadable(file, e):
  # SafetensorError and friends on truncated / corrupted files
  fail(file, f"not a readable safetensors file (truncated or corrupted?): {type(e).__name__}: {e}")


def tensor_files(directory) -> dict[str, pathlib.Path]:
  """{tensor name: the *.safetensors file that holds it} of a directory (sharded or not), from
  the files' headers alone."""
  directory = pathlib.Path(directory)
  files = sorted(directory.glob("*.safetensors"))
  if not files:
    fail(directory, "no *.safetensors files in the checkpoint directory")
  where = {}
  for file in files:
    try:
      with _safe_open(file) as s:
        where.update((name, file) for name in s.keys())
    except Exception as e:  # pylint: disable=broad-except
      _unreadable(file, e)
  return where


def read_tensor(file, name) -> np.ndarray:
  """One tensor of a safetensors file as numpy, in its stored dtype (bfloat16 as ml_dtypes').

  The file is opened for this one tensor: safe_open maps the whole file, and every page a read
  touches counts towards the process's resident memory for as long as the mapping is open."""
  try:
    with _safe_open(file) as s:
      if s.get_slice(name).get_dtype() != "BF16":
        return s.get_tensor(name)
    # numpy has no bfloat16: "flax" reads it (on the CPU, then a zero-copy numpy view).
    with jax.default_device(jax.devices("cpu")[0]), _safe_open(file, "flax") as s:
      return np.asarray(s.get_tensor(name))
  except Exception as e:  # pylint: disable=broad-except
    _unreadable(file, e)


class Tensors:
  """A directory's tensors by name relative to the model's prefix (the first of `prefixes` that
  any tensor has: checkpoints of one family differ), with errors that name the directory. Each
  tensor is read from its file when asked for, in its stored dtype."""

  def __init__(self, directory, prefixes):
    self.path = pathlib.Path(directory)
    self.files = tensor_files(self.path)
    self.prefix = next((p for p in prefixes if any(k.startswith(p) for k in self.files)), prefixes[0])

  def _full_name(self, name) -> str:
    full = name if name == _HEAD else self.prefix + name
    if full not in self.files:
      where = "(tie_word_embeddings is false)" if name == _HEAD else "in the safetensors files"
      fail(self.path, f"missing tensor '{full}' {where}")
    return full

  def kind(self, name) -> str:
    """The stored dtype of a tensor, as safetensors names it (F32, F16, BF16, ...)."""
    full = self._full_name(name)
    try:
      with _safe_open(self.files[full]) as s:
        return s.get_slice(full).get_dtype()
    except Exception as e:  # pylint: disable=broad-except
      _unreadable(self.files[full], e)

  def get(self, name, shape) -> np.ndarray:
    full = self._full_name(name)
    t = read_tensor(self.files[full], full)
    if tuple(t.shape) != tuple(shape):
      fail(self.path, f"tensor '{full}' has shape {list(t.shape)}, expected {list(shape)}")
    if t.dtype not in _FLOAT_DTYPES:
      fail(self.path, f"tensor '{full}' has dtype {t.dtype}: expected one of float16, bfloat16, float32, float64")
    check_finite(self.path, full, t)
    # JAX computes in float32 at most (unless x64 is enabled): float64 is narrowed here, as before.
    return t.astype(np.float32) if t.dtype == np.float64 else t

  def vector(self, name, n) -> np.ndarray:
    return self.get(name, (n,))

  def rows(self, name, n_rows, n_cols) -> np.ndarray:
    """[n_rows, n_cols] as stored (e.g. an embedding table [vocab, d])."""
    return self.get(name, (n_rows, n_cols))

  def matrix(self, name, n_out, k) -> np.ndarray:
    """A torch Linear weight [n_out, k] -> W [k, n_out] for x @ W (a transposed view)."""
    return self.get(name, (n_out, k)).T
