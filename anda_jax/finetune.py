"""Anda-aware fine-tuning: a few parameters of a loaded model trained under one fixed precision
configuration (Anda at the chosen sites, straight-through gradients), the rest frozen.

    params = finetune.train(model, train_windows, val_windows, precision, spec,
                            finetune.TrainConfig(subset="lora")).params
    finetune.save_params("lora.safetensors", params, metadata)
    finetune.apply_params(model, finetune.load_params("lora.safetensors")[0])
    evaluate.perplexity(model, ...)                   # sweep, search, ... as usual

Subsets (`SUBSETS`):
  "norms"  the normalization gains (and LayerNorm biases): the attention and MLP norms of every
           layer and the final norm (SmolLM2-135M: 2 x 30 x 576 + 576 = 35,136 values). The qkv
           and up products' activations come straight out of them, so they set the scale every
           Anda group of those activations sees.
  "lora"   rank-r adapters on the four FP-INT products (qkv, o, up, down of every layer):
           y = Q(x) @ W + (Q(x) @ A) @ B with A [K, r] ~ N(0, 1/K) and B [r, N] = 0, so the
           untrained model is unchanged bit for bit; the INT4 weights W are never touched. The
           adapter sees the Anda-quantized activation Q(x), the one the product sees (float at
           M = 0): on Anda hardware activations are stored and moved in Anda format, so that is
           the activation a deployed adapter has, and the tuned model is what an Anda unit plus
           a small floating-point side product computes (anda_jax.models.layers.linear).

Trainable parameters are a flat dict, name -> float32 array, named by where they live in the
model: "layers.attn_norm" [L, D], "final_norm" [D], "final_ln.0" / "final_ln.1" (OPT),
"layers.qkv_lora.a" [L, K, r], "layers.qkv_lora.b" [L, r, N]. `apply_params` writes them into a
loaded model (adapters are added to its stacked layer weights, where the layer loop finds them);
`save_params` / `load_params` keep them in a small safetensors file with JSON metadata.

Training (`train`): mean next-token NLL of the training windows with the model at `precision`;
AdamW with linear warmup and cosine decay (optax), global-norm gradient clipping, weight decay
on the LoRA factors only (decay would pull a norm gain to 0, not to its trained value). Every
`eval_every` steps the validation perplexity is measured (also before the first step); training
stops early after `patience` evaluations without improvement, and the parameters with the best
validation perplexity are returned: the untrained ones if training never helped.

Determinism and resume: the data order is a function of (seed, epoch) and stochastic rounding
keys of (seed, step). A checkpoint (every `checkpoint_every` steps) holds the parameters, the
optimizer state, the step, the best parameters, the early-stopping state and the loss history,
so a resumed run does exactly the steps an uninterrupted one does: bit for bit on one machine.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
import optax

from anda_jax.checks import check_int
from anda_jax.evaluation import cross_entropy
from anda_jax import files
from anda_jax.matmul import ProductSpec, lax_precision
from anda_jax.models import layers as layers_lib
from anda_jax import precision as anda_precision

SUBSETS = ("norms", "lora")
# The normalization weights of a layer (LLaMA RMSNorm gains; OPT LayerNorm gains and biases;
# Gemma 3 also normalizes queries, keys and the two sublayer outputs) and
# the model attributes holding the final norm (an array, or a (gain, bias) tuple).
LAYER_NORMS = ("attn_norm", "mlp_norm", "attn_ln_w", "attn_ln_b", "mlp_ln_w", "mlp_ln_b",
               "q_norm", "k_norm", "post_attn_norm", "post_mlp_norm")  # the last four: Gemma 3's
FINAL_NORMS = ("final_norm", "final_ln")
LORA_SITES = anda_precision.MODULE_TYPES  # the four FP-INT products
LORA_SUFFIX = "_lora"  # layers["qkv_lora"] = {"a": [L, K, r], "b": [L, r, N]}
_FILE_KEY = "anda_jax.finetune"  # safetensors metadata key of a parameter file
_CHECKPOINT_KEY = "anda_jax.finetune.checkpoint"


# ------------------------------------------------------------------------- parameters


def norm_names(model) -> list[str]:
  """The names of a model's normalization parameters (the "norms" subset)."""
  layers = model.layers.get_value()
  names = [f"layers.{k}" for k in LAYER_NORMS if k in layers]
  for attr in FINAL_NORMS:
    value = getattr(model, attr).get_value() if hasattr(model, attr) else None
    if isinstance(value, (tuple, list)):
      names += [f"{attr}.{i}" for i in range(len(value))]
    elif value is not None:
      names.append(attr)
  return names


def lora_names() -> list[str]:
  return [f"layers.{site}{LORA_SUFFIX}.{f}" for site in LORA_SITES for f in ("a", "b")]


def _get(model, name: str):
  attr, *keys = name.split(".")
  value = getattr(model, attr).get_value()
  for k in keys:
    value = value[int(k)] if isinstance(value, (tuple, list)) else value.get(k)
    if value is None:
      return None
  return value


def _replace(container, keys: list[str], new):
  """A copy of nested dicts / tuples `container` with the leaf at `keys` replaced (dicts created
  where missing)."""
  if not keys:
    return new
  k, rest = keys[0], keys[1:]
  if isinstance(container, (tuple, list)):
    items = list(container)
    items[int(k)] = _replace(items[int(k)], rest, new)
    return type(container)(items)
  out = dict(container or {})
  out[k] = _replace(out.get(k), rest, new)
  return out


def _expected_shapes(model, names) -> dict[str, tuple[int, ...]]:
  """name -> the shape a trainable parameter must have in `model`; ValueError for a name that is
  not a trainable parameter of it."""
  layers = model.layers.get_value()
  norms = set(norm_names(model))
  ranks = {}
  out = {}
  for name in names:
    if name in norms:
      out[name] = tuple(np.shape(_get(model, name)))
      continue
    parts = name.split(".")
    site = parts[1][:-len(LORA_SUFFIX)] if len(parts) == 3 and parts[1].endswith(LORA_SUFFIX) else None
    if parts[0] != "layers" or site not in LORA_SITES or parts[2] not in ("a", "b"):
      raise ValueError(f"parameter {name!r} is invalid: not a trainable parameter of this model "
                       f"(norms: {sorted(norms)}; adapters: {lora_names()})")
    n_layers, k, n = layers_lib.weight_shape(layers[site])
    ranks.setdefault(site, None)
    out[name] = (n_layers, k, None) if parts[2] == "a" else (n_layers, None, n)
  return out


def check_params(model, params: dict, source: str = "params") -> None:
  """ValueError (naming `source`) unless `params` are trainable parameters of `model` with the
  right shapes: norms as the model holds them, adapters in pairs a [L, K, r], b [L, r, N]."""
  if not isinstance(params, dict) or not params:
    raise ValueError(f"{source}: no trained parameters (must be a non-empty dict name -> array)")
  try:
    expected = _expected_shapes(model, params)
  except ValueError as e:
    raise ValueError(f"{source}: {e}") from None
  for name, want in expected.items():
    got = tuple(np.shape(params[name]))
    if len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want)):
      shown = [("r" if w is None else w) for w in want]
      raise ValueError(f"{source}: parameter {name!r} has shape {list(got)}, which is invalid for "
                       f"this model: must be {shown}")
  for site in LORA_SITES:
    a, b = (f"layers.{site}{LORA_SUFFIX}.{f}" for f in ("a", "b"))
    if (a in params) != (b in params):
      raise ValueError(f"{source}: adapter {site!r} has only one of its factors {a!r}, {b!r}")
    if a in params and np.shape(params[a])[2] != np.shape(params[b])[1]:
      raise ValueError(f"{source}: adapter {site!r} has ranks {np.shape(params[a])[2]} (a) and "
                       f"{np.shape(params[b])[1]} (b): they must be equal")


def apply_params(model, params: dict, source: str = "params"):
  """Writes trained parameters into `model` (in place) and returns it: norms replace the loaded
  ones, adapters are added to the stacked layer weights (where `linear` applies them). Values
  are float32. ValueError (naming `source`) for a parameter that does not fit the model."""
  check_params(model, params, source)
  for name, value in params.items():
    attr, *keys = name.split(".")
    var = getattr(model, attr)
    var.set_value(_replace(var.get_value(), keys, jnp.asarray(value, jnp.float32)))
  return model


def init_params(model, subset: str, rank: int = 8, key=None) -> dict:
  """The trainable parameters of `subset` at their starting point: the model's own norms, or
  adapters with A ~ N(0, 1/K) (from `key`) and B = 0 (so the model is unchanged)."""
  if subset not in SUBSETS:
    raise ValueError(f"subset={subset!r} is invalid: must be one of {SUBSETS}")
  if subset == "norms":
    return {name: jnp.asarray(_get(model, name), jnp.float32) for name in norm_names(model)}
  check_int("rank", rank, 1)
  if key is None:
    raise ValueError("subset='lora' needs a PRNG key for its A factors: pass key=jax.random.key(seed)")
  layers = model.layers.get_value()
  params = {}
  for i, site in enumerate(LORA_SITES):
    n_layers, k, n = layers_lib.weight_shape(layers[site])
    a = jax.random.normal(jax.random.fold_in(key, i), (n_layers, k, rank), jnp.float32) / math.sqrt(k)
    params[f"layers.{site}{LORA_SUFFIX}.a"] = a
    params[f"layers.{site}{LORA_SUFFIX}.b"] = jnp.zeros((n_layers, rank, n), jnp.float32)
  return params


def count(params: dict) -> int:
  return int(sum(np.size(v) for v in params.values()))


# ------------------------------------------------------------------------------ files


def save_params(path, params: dict, metadata: dict | None = None) -> None:
  """Trained parameters as a safetensors file (float32, atomically written) with `metadata`
  (JSON-serializable: what they were trained for) under the metadata key "anda_jax.finetune"."""
  from safetensors import numpy as st  # pylint: disable=g-import-not-at-top

  tensors = {name: np.asarray(v, np.float32, order="C") for name, v in params.items()}
  data = st.save(tensors, metadata={_FILE_KEY: json.dumps(metadata or {}, sort_keys=True)})
  files.atomic_write(path, lambda f: f.write(data))


def _read_safetensors(path, key: str, what: str) -> tuple[dict, dict]:
  """(tensors, the JSON metadata under `key`) of a safetensors file; ValueError naming the file."""
  import safetensors  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise ValueError(f"{what} {str(path)!r} is invalid: no such file")
  try:
    with safetensors.safe_open(str(path), framework="numpy") as f:
      meta = f.metadata() or {}
      tensors = {k: f.get_tensor(k) for k in f.keys()}
  except Exception as e:  # pylint: disable=broad-except  (the reader's errors are not typed)
    raise ValueError(f"{what} {str(path)!r} is invalid: not a readable safetensors file ({e})") from None
  if key not in meta:
    raise ValueError(f"{what} {str(path)!r} is invalid: a safetensors file without the "
                     f"{key!r} metadata, so not written by anda_jax.finetune")
  try:
    return tensors, json.loads(meta[key])
  except ValueError as e:
    raise ValueError(f"{what} {str(path)!r} is invalid: its {key!r} metadata is not JSON ({e})") from None


def load_params(path) -> tuple[dict, dict]:
  """(params name -> float32 numpy array, metadata) of a file written by `save_params`: float
  values, all finite (a NaN would turn every perplexity of the tuned model into NaN), and a JSON
  object of metadata; else a ValueError naming the file."""
  tensors, metadata = _read_safetensors(path, _FILE_KEY, "trained-parameter file")
  what = f"trained-parameter file {str(path)!r} is invalid"
  for name, v in tensors.items():
    if v.dtype.kind != "f":
      raise ValueError(f"{what}: parameter {name!r} has dtype {v.dtype}, must be float")
    if not np.isfinite(v).all():
      raise ValueError(f"{what}: parameter {name!r} holds NaN or Inf values")
  if not isinstance(metadata, dict):
    raise ValueError(f"{what}: its {_FILE_KEY!r} metadata is not a JSON object")
  return {k: v.astype(np.float32) for k, v in tensors.items()}, metadata


def apply_file(model, path) -> dict:
  """Applies the trained parameters of `path` to `model` (in place); returns their metadata."""
  params, metadata = load_params(path)
  apply_params(model, params, source=f"trained-parameter file {str(path)!r}")
  return metadata


# --------------------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The settings of one training run. steps: the most optimizer steps (early stopping may end
  sooner); patience: evaluations without improvement before stopping (0: never stop early)."""

  subset: str = "norms"
  rank: int = 8  # LoRA rank
  steps: int = 100
  batch_size: int = 4  # windows per step
  learning_rate: float = 1e-3  # peak, after warmup
  warmup_steps: int = 10
  final_lr_fraction: float = 0.1  # the cosine ends at learning_rate x this
  weight_decay: float = 0.0  # AdamW decay, LoRA factors only
  clip_norm: float | None = 1.0  # global gradient norm; None: no clipping
  eval_every: int = 10
  patience: int = 3
  checkpoint_every: int = 10
  seed: int = 0

  def __post_init__(self):
    if self.subset not in SUBSETS:
      raise ValueError(f"subset={self.subset!r} is invalid: must be one of {SUBSETS}")
    check_int("rank", self.rank, 1)
    check_int("steps", self.steps, 1)
    check_int("batch_size", self.batch_size, 1)
    check_int("warmup_steps", self.warmup_steps, 0)
    check_int("eval_every", self.eval_every, 1)
    check_int("patience", self.patience, 0)
    check_int("checkpoint_every", self.checkpoint_every, 1)
    check_int("seed", self.seed, 0)
    for name, lo, hi in (("learning_rate", 0.0, None), ("final_lr_fraction", 0.0, 1.0),
                         ("weight_decay", 0.0, None), ("clip_norm", 0.0, None)):
      v = getattr(self, name)
      if name == "clip_norm" and v is None:
        continue
      if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo
          or (hi is not None and v > hi) or (name in ("learning_rate", "clip_norm") and v == 0)):
        bound = f"in [{lo}, {hi}]" if hi is not None else (f"> {lo}" if name in ("learning_rate", "clip_norm") else f">= {lo}")
        raise ValueError(f"{name}={v!r} is invalid: must be a finite number {bound}"
                         + (" or None" if name == "clip_norm" else ""))


def make_optimizer(cfg: TrainConfig, params: dict):
  """AdamW on a linear-warmup + cosine schedule, after global-norm clipping (optax)."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
      decay_steps=max(cfg.steps, cfg.warmup_steps + 1), end_value=cfg.learning_rate * cfg.final_lr_fraction)
  decay = {name: LORA_SUFFIX + "." in name for name in params}
  adamw = optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=decay)
  return adamw if cfg.clip_norm is None else optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)


def batch_indices(n_windows: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """The windows of optimizer step `step`: each epoch a new permutation from (seed, epoch),
  cut into n_windows // batch_size batches (the remainder sits the epoch out)."""
  per_epoch = n_windows // batch_size
  epoch, i = divmod(step, per_epoch)
  order = np.random.default_rng([seed, epoch]).permutation(n_windows)
  return order[i * batch_size:(i + 1) * batch_size]


def window_nll(model, tokens, precision, spec: ProductSpec, key=None) -> jax.Array:
  """float32 [B, T - 1]: the next-token NLL of every target of `tokens` [B, T] with the model at
  `precision`; the LM head is streamed over vocabulary chunks (the logits never exist)."""
  h = model.run_layers(model.embed(tokens), precision, spec, start=0, key=key)
  return cross_entropy.streamed_nll(model.head_input(h)[:, :-1], model.head_weight(), tokens[:, 1:],
                                    precision=lax_precision(model.matmul_precision))


def loss(params, graphdef, state, tokens, precision, spec: ProductSpec, key=None) -> jax.Array:
  """Mean next-token NLL of `tokens` [B, T] with `params` applied to the model (graphdef, state)
  at `precision`: differentiable in params (straight-through through every Anda quantizer)."""
  model = apply_params(nnx.merge(graphdef, state, copy=True), params)
  return jnp.mean(window_nll(model, tokens, precision, spec, key))


_VAL_STEP = 2**31 - 1  # the rounding key of the validation passes (training steps use their own)


def _rounding_key(spec: ProductSpec, seed: int, step: int):
  if not spec.stochastic:
    return None
  return jax.random.fold_in(jax.random.key(seed), step)


@dataclasses.dataclass
class TrainState:
  """Where a run is: what a checkpoint holds. history: (step, training loss) of every step;
  val_history: (step, validation perplexity) of every evaluation (step 0: untrained)."""

  step: int
  params: dict
  opt_state: object
  best_params: dict
  best_val: float
  best_step: int
  bad_evals: int
  stopped_early: bool
  history: list
  val_history: list
  seconds: float  # training time (steps and evaluations) so far, summed over resumed parts


def _fingerprint(cfg: TrainConfig, precision, spec: ProductSpec, train_windows, val_windows,
                 extra: dict | None) -> dict:
  """What a checkpoint is valid for: a resume with anything else is refused."""
  import hashlib  # pylint: disable=g-import-not-at-top

  digest = lambda w: hashlib.sha256(np.ascontiguousarray(w, np.int32).tobytes()).hexdigest()[:16]
  settings = dataclasses.asdict(cfg)
  del settings["checkpoint_every"]  # where the checkpoints fall does not change the result
  return dict(settings, precision=np.asarray(precision).tolist(), format=repr(spec),
              train_windows=digest(train_windows), val_windows=digest(val_windows), **(extra or {}))


def save_checkpoint(path, state: TrainState, fingerprint: dict) -> None:
  """A resumable checkpoint (safetensors, written atomically)."""
  from safetensors import numpy as st  # pylint: disable=g-import-not-at-top

  tensors = {f"params/{k}": np.asarray(v) for k, v in state.params.items()}
  tensors.update({f"best/{k}": np.asarray(v) for k, v in state.best_params.items()})
  tensors.update({f"opt/{i:05d}": np.asarray(v) for i, v in enumerate(jax.tree.leaves(state.opt_state))})
  meta = dict(step=state.step, best_val=state.best_val, best_step=state.best_step,
              bad_evals=state.bad_evals, stopped_early=state.stopped_early, history=state.history,
              val_history=state.val_history, seconds=state.seconds, fingerprint=fingerprint)
  data = st.save({k: np.asarray(v, order="C") for k, v in tensors.items()},
                 metadata={_CHECKPOINT_KEY: json.dumps(meta)})
  files.atomic_write(path, lambda f: f.write(data))


def load_checkpoint(path, template: TrainState, fingerprint: dict) -> TrainState:
  """The state a checkpoint holds, with the optimizer state's structure of `template`.
  ValueError naming the file if it was written for other settings or is damaged."""
  tensors, meta = _read_safetensors(path, _CHECKPOINT_KEY, "checkpoint")
  old = meta.get("fingerprint", {})
  changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
  if changed:
    raise ValueError(f"checkpoint {str(path)!r} is invalid for this run: it was written with other "
                     f"settings ({', '.join(f'{k}: {old.get(k)!r} -> {fingerprint.get(k)!r}' for k in changed)}); "
                     "remove it to start over")
  leaves, treedef = jax.tree.flatten(template.opt_state)
  try:
    params = {k: jnp.asarray(tensors[f"params/{k}"]) for k in template.params}
    best = {k: jnp.asarray(tensors[f"best/{k}"]) for k in template.params}
    opt = [jnp.asarray(tensors[f"opt/{i:05d}"]) for i in range(len(leaves))]
  except KeyError as e:
    raise ValueError(f"checkpoint {str(path)!r} is invalid: it lacks the tensor {e}") from None
  for got, want in zip(list(params.values()) + opt, list(template.params.values()) + leaves):
    if got.shape != jnp.shape(want) or got.dtype != jnp.asarray(want).dtype:
      raise ValueError(f"checkpoint {str(path)!r} is invalid: a tensor of shape {list(got.shape)} "
                       f"{got.dtype} where {list(jnp.shape(want))} {jnp.asarray(want).dtype} belongs")
  return TrainState(step=meta["step"], params=params, opt_state=jax.tree.unflatten(treedef, opt),
                    best_params=best, best_val=meta["best_val"], best_step=meta["best_step"],
                    bad_evals=meta["bad_evals"], stopped_early=meta["stopped_early"],
                    history=[tuple(h) for h in meta["history"]],
                    val_history=[tuple(v) for v in meta["val_history"]], seconds=meta["seconds"])


def _check_windows(windows, name: str, vocab: int, at_least: int = 1) -> np.ndarray:
  w = np.asarray(windows)
  if (w.ndim != 2 or w.shape[1] < 2 or len(w) < at_least or not np.issubdtype(w.dtype, np.integer)
      or w.min() < 0 or w.max() >= vocab):
    raise ValueError(f"{name} has shape {list(w.shape)} and dtype {w.dtype}: must be token ids in "
                     f"[0, {vocab}) of shape [n >= {at_least}, seq_len >= 2]")
  return w.astype(np.int32)


def perplexity(model, params: dict | None, windows, precision, spec: ProductSpec = ProductSpec(), *,
               batch_size: int = 4, key=None) -> float:
  """Token-weighted perplexity of `windows` [N, T] (every target) with `params` applied (None:
  the model as it is) at one precision configuration; used for validation during training."""
  windows = _check_windows(windows, "windows", model.config.vocab)
  n = len(windows)
  batch_size = min(check_int("batch_size", batch_size, 1), n)
  n_pad = -(-n // batch_size) * batch_size
  tokens = np.concatenate([windows, np.zeros((n_pad - n, windows.shape[1]), np.int32)])
  weights = (np.arange(n_pad) < n).astype(np.float32)
  graphdef, state = nnx.split(model)
  precision = jnp.asarray(precision, jnp.int32)
  total = 0.0
  for i in range(0, n_pad, batch_size):
    total += float(_nll_sum(params or {}, state, tokens[i:i + batch_size], weights[i:i + batch_size],
                            precision, key, graphdef=graphdef, spec=spec))
  return math.exp(total / (n * (windows.shape[1] - 1)))


@functools.partial(jax.jit, static_argnames=("graphdef", "spec"))
def _nll_sum(params, state, tokens, weights, precision, key, *, graphdef, spec):
  model = nnx.merge(graphdef, state, copy=True)
  if params:
    model = apply_params(model, params)
  return jnp.sum(window_nll(model, tokens, precision, spec, key).sum(axis=-1) * weights)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "cfg"))
def _train_step(params, opt_state, frozen, tokens, precision, key, *, graphdef, spec, cfg):
  """One optimizer step: (params, opt_state, the loss before it). Compiled once per (model
  structure, spec, training settings), so a resumed run runs the same program."""
  value, grads = jax.value_and_grad(loss)(params, graphdef, frozen, tokens, precision, spec, key)
  updates, opt_state = make_optimizer(cfg, params).update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, value


def train(model, train_windows, val_windows, precision, spec: ProductSpec = ProductSpec(),
          cfg: TrainConfig = TrainConfig(), *, checkpoint: str | pathlib.Path | None = None,
          fingerprint: dict | None = None,
          on_step: Callable[[TrainState, float | None], None] | None = None) -> TrainState:
  """Trains `cfg.subset` of `model` (not modified) at `precision` (int [4] or [n_layers, 4]) on
  `train_windows` int [N, T]; validation perplexity on `val_windows` every cfg.eval_every steps.
  Returns the final TrainState: `best_params` are the result (apply them with apply_params).

  checkpoint: a file to save the state to every cfg.checkpoint_every steps and at the end; if it
  exists, the run continues from it (refused if it was written for other settings: `fingerprint`
  adds the caller's, e.g. the model's sha256). on_step(state, val_ppl or None) after every step."""
  vocab = model.config.vocab
  anda_precision.check_values(np.asarray(precision), "precision")
  precision = jnp.asarray(anda_precision.layer_precision(np.asarray(precision), model.config.n_layers))
  train_windows = _check_windows(train_windows, "train_windows", vocab, cfg.batch_size)
  val_windows = _check_windows(val_windows, "val_windows", vocab)
  if spec.impl != "fake":
    raise ValueError(f"impl={spec.impl!r} is invalid for training: use impl='fake' (the bit-serial "
                     "kernel has no gradient; it computes the same values)")

  graphdef, frozen = nnx.split(model)
  # The seed acts outside the compiled step (batches, keys): one program serves every seed.
  step_cfg = dataclasses.replace(cfg, seed=0)
  params = init_params(model, cfg.subset, cfg.rank, jax.random.key(cfg.seed))
  optimizer = make_optimizer(cfg, params)
  fingerprint = _fingerprint(cfg, precision, spec, train_windows, val_windows, fingerprint)
  val_key = _rounding_key(spec, cfg.seed, _VAL_STEP)
  validate = lambda p: perplexity(model, p, val_windows, precision, spec, batch_size=cfg.batch_size,
                                  key=val_key)

  state = TrainState(step=0, params=params, opt_state=optimizer.init(params), best_params=params,
                     best_val=math.inf, best_step=0, bad_evals=0, stopped_early=False, history=[],
                     val_history=[], seconds=0.0)
  checkpoint = None if checkpoint is None else pathlib.Path(checkpoint)
  if checkpoint is not None and checkpoint.exists():
    state = load_checkpoint(checkpoint, state, fingerprint)
  t0 = time.time() - state.seconds
  if not state.val_history:  # the untrained model's validation perplexity
    state.best_val = validate(params)
    state.val_history.append((0, state.best_val))
  while state.step < cfg.steps and not state.stopped_early:
    idx = batch_indices(len(train_windows), cfg.batch_size, cfg.seed, state.step)
    state.params, state.opt_state, value = _train_step(
        state.params, state.opt_state, frozen, train_windows[idx], precision,
        _rounding_key(spec, cfg.seed, state.step), graphdef=graphdef, spec=spec, cfg=step_cfg)
    state.step += 1
    state.history.append((state.step, float(value)))
    val = None
    if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
      val = validate(state.params)
      state.val_history.append((state.step, val))
      if val < state.best_val:
        state.best_val, state.best_step, state.best_params, state.bad_evals = val, state.step, state.params, 0
      else:
        state.bad_evals += 1
        state.stopped_early = 0 < cfg.patience <= state.bad_evals and state.step < cfg.steps
    state.seconds = time.time() - t0
    if checkpoint is not None and (state.step % cfg.checkpoint_every == 0 or state.stopped_early
                                   or state.step == cfg.steps):
      save_checkpoint(checkpoint, state, fingerprint)
    if on_step is not None:
      on_step(state, val)
  return state
