"""Greedy generation, to show a loaded model speaks (optionally with Anda activations).

    python -m experiments.generate --model=smollm2-135m --prompt="What is the capital of France?"
    python -m experiments.generate --model=smollm2-135m --prompt="..." --precision=8,8,8,8

The token buffer has a fixed length (prompt + max_new_tokens), so one compiled forward serves
every step; causal attention makes the padding after the current position irrelevant.
"""

from __future__ import annotations

import functools
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

_MODEL = flags.DEFINE_string("model", "smollm2-135m", "registry name, .gguf path or HF directory")
_PROMPT = flags.DEFINE_string("prompt", "What is the capital of France?", "the prompt")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 32, "tokens to generate")
_PRECISION = flags.DEFINE_string(
    "precision", "", "mantissa bits for (qkv, o, up, down) as 'a,b,c,d' or one number for all; "
    "empty = float model")
_GROUP_SIZE = flags.DEFINE_integer("group_size", 64, "Anda group size G")
_CHAT = flags.DEFINE_bool("chat", True, "wrap the prompt in the model's ChatML turn markers when it has them")


def parse_precision(text: str):
  if not text:
    return None
  values = [int(v) for v in text.split(",")]
  if len(values) == 1:
    values *= 4
  if len(values) != 4:
    raise ValueError(f"--precision={text!r} is invalid: give one number or four (qkv, o, up, down)")
  return np.asarray(values, np.int32)


@functools.partial(jax.jit, static_argnames=("fmt",))
def _next_token(model, buffer, position, precision, fmt):
  """Greedy next token after buffer[:, :position]."""
  h = model.run_layers(model.embed(buffer), precision, fmt)
  last = jax.lax.dynamic_slice_in_dim(h, position - 1, 1, axis=1)
  return jnp.argmax(model.head(last)[:, 0], axis=-1).astype(jnp.int32)


def generate(model, tokenizer, prompt: str, max_new_tokens: int, precision=None, fmt=None,
             chat: bool = True) -> str:
  if chat and tokenizer.backend.token_to_id("<|im_start|>") is not None:
    prompt = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
  ids = tokenizer.encode(prompt)
  stop_ids = {tokenizer.eos_id, tokenizer.backend.token_to_id("<|im_end|>")} - {None}
  buffer = np.zeros((1, len(ids) + max_new_tokens), np.int32)
  buffer[0, :len(ids)] = ids
  position, out = len(ids), []
  while position < buffer.shape[1]:
    token = int(_next_token(model, jnp.asarray(buffer), position, precision, fmt)[0])
    if token in stop_ids:
      break
    buffer[0, position] = token
    out.append(token)
    position += 1
  return tokenizer.decode(out)


def main(argv):
  del argv
  from anda_jax import models  # pylint: disable=g-import-not-at-top
  from anda_jax.format import AndaFormat  # pylint: disable=g-import-not-at-top

  model, tokenizer = models.load(_MODEL.value)
  if tokenizer is None:
    raise ValueError(f"--model={_MODEL.value!r} has no tokenizer (no tokenizer.json)")
  precision = parse_precision(_PRECISION.value)
  fmt = AndaFormat(group_size=_GROUP_SIZE.value) if precision is not None else None
  t0 = time.perf_counter()
  text = generate(model, tokenizer, _PROMPT.value, _MAX_NEW.value, precision, fmt, _CHAT.value)
  label = "float" if precision is None else f"Anda G={_GROUP_SIZE.value} M={precision.tolist()}"
  print(f"[{label}] {_PROMPT.value}\n{text}\n({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
  app.run(main)
