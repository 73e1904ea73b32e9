"""Greedy generation, to show a loaded model speaks (optionally with Anda activations).

    python -m experiments.generate --model=smollm2-135m --prompt="What is the capital of France?"
    python -m experiments.generate --model=smollm2-135m --prompt="..." --precision=8,8,8,8

The prompt runs once through the model and fills a KV cache (the keys and values of every
layer); each new token then runs one position through the layers against that cache, so it
costs O(T), not a rerun of the whole prefix (--nokv_cache reruns it, for comparison). The
cache has a fixed length (prompt + max_new_tokens), so one compiled step serves every token.
Anda applies at the same four FP-INT products either way; each token's activations are grouped
along the contraction axis, so quantizing them alone or within the prompt is the same.

Settings are checked before the model is loaded: a bad one prints one line, `error: <what> is
invalid: <why>`, and exits with status 2 (--traceback shows the stack). A prompt as long as the
model's context (its config's max_positions) is refused; one that leaves less room than
--max_new_tokens generates fewer tokens, with a note.
"""

from __future__ import annotations

import functools
import pathlib
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from anda_jax.checks import check_int, check_token_ids
from anda_jax.matmul import ProductSpec
from anda_jax import models
from anda_jax.numerics import anda
from anda_jax.precision import FLOAT, MAX_MANTISSA_BITS
from experiments.harness import cli
from experiments.harness import config_checks
from experiments.harness import errors

_MODEL = flags.DEFINE_string("model", "smollm2-135m", "registry name, .gguf path or HF directory")
_PROMPT = flags.DEFINE_string("prompt", "What is the capital of France?", "the prompt")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 32, "tokens to generate")
_PRECISION = flags.DEFINE_string(
    "precision", "", "mantissa bits M for (qkv, o, up, down) as 'a,b,c,d' or one number for all, "
    f"each in [0, {MAX_MANTISSA_BITS}] (0: float); empty = float model")
_GROUP_SIZE = flags.DEFINE_integer("group_size", 64, "Anda group size G")
_CHAT = flags.DEFINE_bool("chat", True, "wrap the prompt in the model's ChatML turn markers when it has them")
_KV_CACHE = flags.DEFINE_bool("kv_cache", True, "keep the keys and values of earlier positions "
                              "(O(T) per token); --nokv_cache reruns the whole prefix per token")


def parse_precision(text: str):
  """--precision: None (float model), or int32 [4], every M in [0, 24]; else ValueError."""
  if not text.strip():
    return None
  example = "one integer or four, comma-separated (qkv, o, up, down), e.g. 8 or 8,6,8,8"
  try:
    values = [int(v) for v in text.split(",")]
  except ValueError:
    raise ValueError(f"--precision={text!r} is invalid: must be {example}") from None
  if len(values) == 1:
    values *= 4
  if len(values) != 4:
    raise ValueError(f"--precision={text!r} is invalid: must be {example}")
  for v in values:
    if not FLOAT <= v <= MAX_MANTISSA_BITS:
      raise ValueError(f"--precision={text!r} is invalid: every M must be in [{FLOAT}, "
                       f"{MAX_MANTISSA_BITS}] (0: float activations)")
  return np.asarray(values, np.int32)


def check_flags():
  """(precision, spec) of the flags, every flag checked before anything is loaded."""

  precision = parse_precision(_PRECISION.value)
  spec = ProductSpec(anda.AndaFormat(group_size=_GROUP_SIZE.value))
  check_int("--max_new_tokens", _MAX_NEW.value, 1)
  if _MODEL.value not in models.REGISTRY and not pathlib.Path(_MODEL.value).expanduser().exists():
    raise ValueError(f"--model={_MODEL.value!r} is invalid: neither a registry name "
                     f"{models.REGISTRY} nor an existing GGUF file or checkpoint folder")
  return precision, spec


# ---------------------------------------------------------------------- generation

@functools.partial(jax.jit, static_argnames=("spec",))
def _next_token(model, buffer, position, precision, spec):
  """Greedy next token after buffer[:, :position], from the whole prefix (no cache)."""
  h = model.run_layers(model.embed(buffer), precision, spec)
  last = jax.lax.dynamic_slice_in_dim(h, position - 1, 1, axis=1)
  return jnp.argmax(model.head(last)[:, 0], axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("spec",))
def _prefill(model, tokens, cache, precision, spec):
  """Runs the prompt tokens [B, T] (positions 0..T-1) into the cache: (greedy next token, cache)."""
  h, cache = model.run_layers_cached(model.embed(tokens), cache, 0, precision, spec)
  return jnp.argmax(model.head(h[:, -1:])[:, 0], axis=-1).astype(jnp.int32), cache


@functools.partial(jax.jit, static_argnames=("spec",))
def _decode_step(model, token, cache, position, precision, spec):
  """One token [B] at `position` (traced) against the cache: (greedy next token, cache)."""
  h, cache = model.run_layers_cached(model.embed(token[:, None], position), cache, position,
                                     precision, spec)
  return jnp.argmax(model.head(h)[:, 0], axis=-1).astype(jnp.int32), cache


def context_length(model) -> int:
  """The most positions the model takes (its config's max_positions)."""
  return int(model.config.max_positions)


def generate_ids(model, ids, max_new_tokens: int, precision=None, spec: ProductSpec = ProductSpec(),
                 stop_ids=(), kv_cache: bool = True) -> list[int]:
  """Greedy continuation of the token ids `ids` (up to max_new_tokens, ending before a stop
  id). kv_cache False reruns the whole prefix for every token (the reference)."""
  ids = [int(i) for i in ids]
  if not ids:
    raise ValueError("ids=[] is invalid: generation needs at least one prompt token")
  total = len(ids) + max_new_tokens
  if total > context_length(model):
    raise ValueError(f"prompt + max_new_tokens = {total} tokens is invalid: the model's context "
                     f"is {context_length(model)} tokens")
  out = []
  if not kv_cache:
    buffer = np.zeros((1, total), np.int32)
    buffer[0, :len(ids)] = ids
    for position in range(len(ids), total):
      token = int(_next_token(model, jnp.asarray(buffer), position, precision, spec)[0])
      if token in stop_ids:
        break
      buffer[0, position] = token
      out.append(token)
    return out
  cache = model.init_cache(1, total)
  token, cache = _prefill(model, jnp.asarray([ids], jnp.int32), cache, precision, spec)
  for position in range(len(ids), total):
    t = int(token[0])
    if t in stop_ids:
      break
    out.append(t)
    if position + 1 < total:
      token, cache = _decode_step(model, token, cache, jnp.int32(position), precision, spec)
  return out


def generate(model, tokenizer, prompt: str, max_new_tokens: int, precision=None,
             spec: ProductSpec = ProductSpec(), chat: bool = True, kv_cache: bool = True) -> str:
  """The greedy continuation of `prompt` as text. A prompt that fills the model's context, or
  whose token ids are beyond the model's vocabulary, is refused (ValueError); one that leaves
  less room than max_new_tokens generates fewer tokens, with a note on stderr."""
  if chat and tokenizer.backend.token_to_id("<|im_start|>") is not None:
    prompt = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
  ids = tokenizer.encode(prompt)
  if not ids:
    raise ValueError("--prompt='' is invalid: it has no tokens")
  check_token_ids(ids, model.config.vocab, "--prompt is invalid for this model: its tokens",
                  ": the tokenizer gives ids beyond the model's vocabulary (a tokenizer of another model?)")
  limit = context_length(model)
  if len(ids) >= limit:
    raise ValueError(f"--prompt is invalid: it has {len(ids)} tokens, and the model's context is "
                     f"{limit} tokens (prompt and generated tokens together): shorten it")
  if len(ids) + max_new_tokens > limit:
    print(f"note: the prompt has {len(ids)} tokens and the model's context is {limit}: generating "
          f"at most {limit - len(ids)} tokens instead of {max_new_tokens}", file=sys.stderr)
    max_new_tokens = limit - len(ids)
  stop_ids = {tokenizer.eos_id, tokenizer.backend.token_to_id("<|im_end|>")} - {None}
  return tokenizer.decode(generate_ids(model, ids, max_new_tokens, precision, spec, stop_ids, kv_cache))


def run(argv) -> None:
  del argv
  precision, spec = check_flags()

  model, tokenizer = models.load(_MODEL.value)
  if tokenizer is None:
    raise ValueError(f"--model={_MODEL.value!r} is invalid: it has no tokenizer (no tokenizer.json)")
  if precision is not None and precision.any():
    config_checks.check_group_size_fits(model, [_GROUP_SIZE.value], spec.impl, "--group_size")
  t0 = time.perf_counter()
  text = generate(model, tokenizer, _PROMPT.value, _MAX_NEW.value, precision, spec, _CHAT.value,
                  _KV_CACHE.value)
  label = "float" if precision is None else f"Anda G={_GROUP_SIZE.value} M={precision.tolist()}"
  print(f"[{label}] {_PROMPT.value}\n{text}\n({time.perf_counter() - t0:.1f} s)")


def main(argv):
  try:
    errors.call_cleanly(run, argv)
  except KeyboardInterrupt:
    errors.interrupted_exit("generation keeps nothing: run the command again")


if __name__ == "__main__":
  cli.define_traceback_flag()
  try:
    app.run(main, flags_parser=cli.parse_flags)
  except KeyboardInterrupt:  # while the flags were read
    errors.interrupted_exit("generation keeps nothing: run the command again")
