"""LLaMA, Gemma 3 and OPT models with Anda at every FP-INT product, and `load` for real
checkpoints.

    model, tokenizer = anda_jax.models.load("smollm2-135m")    # registry name, GGUF path or HF dir
    logits = model(tokens, precision)                           # precision int32 [4] or [L, 4]
    print(model.weight_types)                                   # stored tensor types -> loaded as
"""

from __future__ import annotations

import contextlib
import pathlib

from anda_jax import assets
from anda_jax.matmul import lax_precision
from anda_jax.models import safetensors_reader
from anda_jax.models import tokenizer as tokenizer_lib
from anda_jax.models import weight_maps
from anda_jax.models.gemma3 import Gemma3, Gemma3Config
from anda_jax.models.gguf_reader import GGUFFile
from anda_jax.models.llama import Llama, LlamaConfig
from anda_jax.models.opt import OPT, OPTConfig
from anda_jax.models.weight_types import WeightTypes

__all__ = ["load", "Gemma3", "Gemma3Config", "Llama", "LlamaConfig", "OPT", "OPTConfig", "REGISTRY",
           "WeightTypes"]

# Registry names resolved through anda_jax.assets. gemma3-270m: Google's Gemma 3 270M base model,
# provided under and subject to the Gemma Terms of Use (https://ai.google.dev/gemma/terms).
REGISTRY = ("smollm2-135m", "gemma3-270m")
# The model class of each builder's family (weight_maps.HF_BUILDERS, GGUF_BUILDERS keys).
_FAMILIES = {"llama": Llama, "opt": OPT, "gemma3_text": Gemma3, "gemma3": Gemma3}


def load(name_or_path, *, int4_group_size=None, matmul_precision: str = "highest"):
  """(model, tokenizer) from a registry name, a .gguf file (architecture llama or gemma3, any
  tensor type the gguf package dequantizes), or a Hugging Face directory (config.json +
  *.safetensors; model_type llama, gemma3_text or opt).

  Weights are what the file holds: 4-bit GGUF types with one scale (and minimum) per 32 weights
  (Q4_0, Q4_1, Q4_K) stay INT4 as stored, every other type becomes float (float16 / bfloat16
  stay so). int4_group_size: if given, every FP-INT matrix (q/k/v, o, gate/up, down) that is not
  INT4 with this group size already is RTN-quantized to INT4 (asymmetric) with this group size
  along K from the file's numbers; embeddings, norms and the LM head stay as stored.
  model.weight_types says what every tensor was stored as and what it became. The tokenizer is
  None for a directory without tokenizer.json. matmul_precision: of every floating-point product
  of the model, "highest" (float32 on every backend) or "default" (see
  anda_jax.matmul.lax_precision)."""
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


def _build(family: str, config, weights: dict):
  weights = dict(weights)
  types = weights.pop("weight_types")
  model = _FAMILIES[family](config, weights)
  model.weight_types = types  # hashable: a static attribute of the model
  return model


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
    return _build(model_type, config, weights), tokenizer_lib.from_directory(path)
  if path.is_file():
    with _naming(path):
      gguf_file = GGUFFile(path)
      arch = gguf_file.meta("general.architecture")
      if arch not in weight_maps.GGUF_BUILDERS:
        raise ValueError(f"{gguf_file.path}: unsupported architecture '{arch}': supported are "
                         f"{sorted(weight_maps.GGUF_BUILDERS)}")
      config, weights = weight_maps.GGUF_BUILDERS[arch](gguf_file, int4_group_size)
    return _build(arch, config, weights), tokenizer_lib.from_gguf(gguf_file)
  raise ValueError(f"name_or_path={str(name_or_path)!r} is neither a registry name {REGISTRY}, "
                   "a GGUF file nor a Hugging Face checkpoint directory")
