"""What the checkpoint readers (gguf_reader, safetensors_reader) and the weight maps share: every
problem with a checkpoint file raises ValueError naming the file and what is wrong with it, never
a traceback from deep inside numpy."""

from __future__ import annotations

import numpy as np


def fail(path, problem: str):
  raise ValueError(f"{path}: {problem}")


def check_finite(path, name, a):
  """Fails unless every value of the float array `a` is finite. A float64 sum is exact for this
  (a NaN or an Inf makes it non-finite; float32 values cannot overflow it) and, unlike
  np.isfinite, allocates no array of a's size while the loader streams large tensors."""
  with np.errstate(invalid="ignore", over="ignore"):
    finite = np.isfinite(np.sum(np.asarray(a), dtype=np.float64))
  if not finite:
    fail(path, f"tensor '{name}' holds NaN or Inf values (corrupted?)")


_MISSING = object()


def positive_int(path, name: str, value=_MISSING) -> int:
  """A checkpoint's size setting (layers, width, heads, vocabulary, ...) as an int >= 1, or a
  ValueError naming the file and the setting: a missing key or a 0 would otherwise surface as a
  KeyError or a ZeroDivisionError far from the file."""
  if value is _MISSING or value is None:
    fail(path, f"missing setting '{name}'")
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    fail(path, f"setting '{name}' = {value!r} is invalid: must be an integer >= 1")
  return int(value)


# The types of the Hugging Face config.json settings the loaders read. A value of the wrong type
# would otherwise fail far from the file (a TypeError, "could not convert string to float") or,
# worse, be taken silently: bool("false") is True. null is taken as absent, as transformers does.
_INT = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings", "ffn_dim",
        "word_embed_proj_dim", "sliding_window", "sliding_window_pattern")
_NUMBER = ("rope_theta", "rms_norm_eps", "layer_norm_eps", "rope_local_base_freq",
           "query_pre_attn_scalar", "final_logit_softcapping", "attn_logit_softcapping")
_BOOL = ("tie_word_embeddings", "attention_bias", "mlp_bias", "do_layer_norm_before",
         "_remove_final_layer_norm", "layer_norm_elementwise_affine", "enable_bias",
         "use_bidirectional_attention")
_STR = ("model_type", "hidden_act", "activation_function", "hidden_activation")
_DICT = ("rope_scaling", "rope_parameters")


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def check_config_types(path, cfg) -> dict:
  """`cfg` (a parsed config.json) if it is a JSON object whose settings the loaders read have
  the types they need, else a ValueError naming the file, the key and what is expected. Those
  settings set to null are left out of the result, so the loaders take their defaults."""
  if not isinstance(cfg, dict):
    fail(path, f"must be a JSON object of settings, not a {type(cfg).__name__}")
  expected = dict([(k, ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))) for k in _INT]
                  + [(k, ("a finite number", _is_number)) for k in _NUMBER]
                  + [(k, ("true or false", lambda v: isinstance(v, bool))) for k in _BOOL]
                  + [(k, ("a string", lambda v: isinstance(v, str))) for k in _STR]
                  + [(k, ("an object of settings", lambda v: isinstance(v, dict))) for k in _DICT])

  def checked(settings: dict, where: str) -> dict:
    for key, value in settings.items():
      what, ok = expected.get(key, (None, None))
      if what is not None and value is not None and not ok(value):
        fail(path, f"setting '{where}{key}' = {value!r} is invalid: must be {what}")
    return {key: checked(value, f"{where}{key}.") if key in _DICT and value is not None else value
            for key, value in settings.items() if not (value is None and key in expected)}

  return checked(cfg, "")
