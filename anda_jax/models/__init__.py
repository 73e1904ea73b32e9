"""LLaMA and OPT models with Anda at every FP-INT product, and `load` for real checkpoints.

    model, tokenizer = anda_jax.models.load("smollm2-135m")    # registry name, GGUF path or HF dir
    logits = model(tokens, precision)                           # precision int32 [4] or [L, 4]
"""

from __future__ import annotations

import contextlib
import pathlib

from anda_jax import assets
from anda_jax.matmul import lax_precision
from anda_jax.models import safetensors_reader
from anda_jax.models import tokenizer as tokenizer_lib
from anda_jax.models import weight_maps
from anda_jax.models.llama import Llama, LlamaConfig
from anda_jax.models.opt import OPT, OPTConfig

__all__ = ["load", "Llama", "LlamaConfig", "OPT", "OPTConfig", "REGISTRY"]

# Registry names resolved through anda_jax.assets.
REGISTRY = ("smollm2-135m",)


def load(name_or_path, *, int4_group_size=None, matmul_precision: str = "highest"):
  """(model, tokenizer) from a registry name, a llama-architecture .gguf file, or a Hugging Face
  directory (config.json + *.safetensors; model_type llama or opt).

  int4_group_size: if given, float FP-INT matrices are RTN-quantized to INT4 (asymmetric) with
  this group size along K; 4-bit GGUF tensors always stay as stored. The tokenizer is None for
  a directory without tokenizer.json. matmul_precision: of every floating-point product of the
  model, "highest" (float32 on every backend) or "default" (see anda_jax.matmul.lax_precision)."""
  lax_precision(matmul_precision)  # ValueError before anything is read
  model, tokenizer = _load(name_or_path, int4_group_size)
  model.matmul_precision = matmul_precision
  return model, tokenizer


@contextlib.contextmanager
def _naming(path, checkpoint=None):
  """A ValueError raised inside the block that names neither `path` nor `checkpoint` (the file or
  folder it belongs to) gets `path` as a prefix: the readers name the file themselves, but the
  model configs (LlamaConfig, OPTConfig) check the settings the builders derived from it without
  knowing where they came from."""
  try:
    yield
  except ValueError as e:
    if str(checkpoint or path) in str(e):
      raise
    raise ValueError(f"{path}: {e}") from None


def _load(name_or_path, int4_group_size):
  if int4_group_size is not None and (isinstance(int4_group_size, bool) or not isinstance(int4_group_size, int)
                                      or int4_group_size < 2):
    raise ValueError(f"int4_group_size={int4_group_size!r} is invalid: must be None or an int >= 2")
  if str(name_or_path) in REGISTRY:
    path = assets.fetch(str(name_or_path))
  else:
    path = pathlib.Path(name_or_path).expanduser()
  if path.is_dir():
    cfg = safetensors_reader.read_config(path)
    model_type = cfg.get("model_type")
    if model_type not in weight_maps.HF_BUILDERS:
      raise ValueError(f"{path / 'config.json'}: unsupported model_type {model_type!r}: supported are "
                       f"{sorted(weight_maps.HF_BUILDERS)}")
    with _naming(path / "config.json", path):
      config, weights = weight_maps.HF_BUILDERS[model_type](path, cfg, int4_group_size)
    model = (Llama if model_type == "llama" else OPT)(config, weights)
    return model, tokenizer_lib.from_directory(path)
  if path.is_file():
    with _naming(path):
      config, weights, gguf_file = weight_maps.llama_from_gguf(path, int4_group_size)
    return Llama(config, weights), tokenizer_lib.from_gguf(gguf_file)
  raise ValueError(f"name_or_path={str(name_or_path)!r} is neither a registry name {REGISTRY}, "
                   "a GGUF file nor a Hugging Face checkpoint directory")
