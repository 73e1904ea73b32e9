"""Loading what an experiment measures: the model (with trained parameters applied, if asked) and
its token windows, and the sha256 that identifies a model's content in setup.json.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import time

from absl import logging
import numpy as np

from anda_jax import assets
from anda_jax.checks import check_token_ids
from anda_jax import data
from anda_jax import files
from anda_jax import finetune as finetune_lib
from anda_jax import models
from experiments.harness import config_checks
from experiments.harness import distributed


def load_model(m, finetune: str | None = None):
  """(model, tokenizer) as the `model` section says, with the trained parameters of the file
  `finetune` (the config's `finetune` setting, checked by check_finetune_file) applied if given."""

  model, tokenizer = models.load(m.name, int4_group_size=m.int4_group_size,
                                matmul_precision=m.matmul_precision)
  if tokenizer is None:
    raise ValueError(f"model.name={m.name!r} comes without a tokenizer (tokenizer.json)")
  if finetune is not None:
    finetune_lib.apply_file(model, pathlib.Path(finetune).expanduser())
  return model, tokenizer


def check_finetune_file(cfg, model_digest: str) -> None:
  """The `finetune` file's parameters were trained on this model (the content's sha256, and the
  INT4 group size where the file records it) in this run's Anda format (group size, exponent
  bits, rounding): else ValueError naming both. Trained parameters fit the weights and the
  quantizer they were trained with; another model of the same shapes takes them without a word.
  (The sites and M may differ: the sweep, the sensitivity study and the search evaluate a tuned
  model at other configurations by design.) Reads the file's metadata, before the model loads."""
  path = cfg.get("finetune")
  if path is None:
    return
  metadata = finetune_lib.load_params(pathlib.Path(path).expanduser())[1]
  if not isinstance(metadata, dict):
    raise ValueError(f"finetune={path!r} is invalid: its metadata is not a JSON object, so what "
                     "its parameters were trained for is unknown")
  trained = metadata.get("model_sha256")
  if trained is not None and trained != model_digest:
    raise ValueError(f"finetune={path!r} is invalid for model.name={cfg.model.name!r}: its "
                     f"parameters were trained on model {metadata.get('model')!r} (sha256 "
                     f"{str(trained)[:12]}…), another model than this one (sha256 "
                     f"{model_digest[:12]}…); apply a file trained on this model")
  if "int4_group_size" in metadata and metadata["int4_group_size"] != cfg.model.int4_group_size:
    raise ValueError(f"finetune={path!r} is invalid with model.int4_group_size="
                     f"{cfg.model.int4_group_size!r}: its parameters were trained on the weights "
                     f"quantized with int4_group_size={metadata['int4_group_size']!r}")
  fmt = metadata.get("format")
  if isinstance(fmt, dict):
    f = cfg.format
    run = dict(group_size=tuple(f.group_sizes), exponent_bits=f.exponent_bits, rounding=f.rounding)
    file = dict(group_size=(fmt.get("group_size"),), exponent_bits=fmt.get("exponent_bits"),
                rounding=fmt.get("rounding"))
    if run != file:
      raise ValueError(
          f"finetune={path!r} is invalid with format.group_sizes={run['group_size']!r}, "
          f"exponent_bits={run['exponent_bits']!r}, rounding={run['rounding']!r}: its parameters "
          f"were trained in Anda with G = {file['group_size'][0]}, exponent_bits="
          f"{file['exponent_bits']!r}, rounding={file['rounding']!r} (tuned parameters fit the "
          "quantizer they were trained with: run in that format, or train for this one)")


def check_window_count(name: str, asked: int | None, windows: np.ndarray, where: str) -> None:
  """The `name` setting asked for `asked` windows (None: all) and `windows` are what `where`
  holds: fewer than asked -> ValueError (token_windows keeps at most as many as there are)."""
  if asked is not None and len(windows) < asked:
    raise ValueError(f"{name}={asked} is invalid: {where} holds {len(windows)} windows of "
                     f"{windows.shape[1]} tokens; ask for at most {len(windows)} (or None: all)")


def bos_first(d, tokenizer) -> bool:
  """Whether the `data` section's windows start with BOS (its `bos` setting, for this tokenizer)."""
  return data.bos_first(d.get("bos", "auto"), tokenizer)


def load_windows(d, tokenizer, windows: dict[str, int | None],
                 settings: dict[str, str] | None = None) -> dict[str, np.ndarray]:
  """int32 [n, seq_len] token windows of each split in `windows` (split -> how many, None:
  all), from the `data` section's corpus, seq_len, stride and bos. More than a split holds is
  refused, naming the setting (`settings`: split -> its name; default data.windows)."""
  corpus = data.load_corpus(d.corpus)
  bos = bos_first(d, tokenizer)
  out = {}
  for split, n in windows.items():
    out[split] = data.token_windows(corpus.split(split), tokenizer, d.seq_len, max_windows=n,
                                    stride=d.stride, bos=bos)
    check_window_count((settings or {}).get(split, "data.windows"), n, out[split],
                       f"the {split} split of data.corpus={d.corpus!r}"
                       + (f" (stride {d.stride})" if d.stride else ""))
  return out


def check_model_fits(cfg, model, windows: dict[str, np.ndarray]) -> None:
  """What only the loaded model says, checked before anything is written: the windows fit in
  its context (max_position_embeddings, a GGUF's context_length) and their token ids in its
  vocabulary (a tokenizer of other weights gives larger ones). ValueError naming the setting."""
  limit = int(model.config.max_positions)
  if cfg.data.seq_len > limit:
    raise ValueError(f"data.seq_len={cfg.data.seq_len} is invalid for model.name="
                     f"{cfg.model.name!r}: longer than the model's context of {limit} positions")
  for split, w in windows.items():
    check_token_ids(w, int(model.config.vocab),
                    f"model.name={cfg.model.name!r} is invalid: its tokenizer's {split} windows of "
                    f"data.corpus={cfg.data.corpus!r}", " (the tokenizer belongs to other weights)")


def score_from(d) -> int:
  """The first scored position of a window: overlapping windows score only their new tokens.
  The same with BOS first: windows at the default stride (seq_len - 1 stream tokens) score every
  target, so each stream token once; with a stride s, the last s - 1 targets, as without BOS."""
  return d.seq_len - (d.stride or d.seq_len)


def load_model_and_windows(cfg):
  """(model, windows int32 [n, seq_len], score_from, bos_first) as the `model` and `data`
  sections say; bos_first: whether the windows start with BOS (bos_first)."""
  model, tokenizer = load_model(cfg.model, cfg.get("finetune"))
  windows = load_windows(cfg.data, tokenizer, {cfg.data.split: cfg.data.windows})[cfg.data.split]
  return model, windows, score_from(cfg.data), bos_first(cfg.data, tokenizer)


def start(cfg, loaded=None, mesh=None):
  """(model, windows, score_from, bos_first) of a checked config (`loaded` if given, to share
  one load between runs), checked against format.group_sizes and impl, the device `mesh` (mesh_of), the
  model's context and vocabulary: before the run folder gets its setup.json."""
  t0 = time.time()
  model, windows, first, bos = loaded or load_model_and_windows(cfg)
  config_checks.check_group_size_fits(model, cfg.format.group_sizes, cfg.impl)
  distributed.check_mesh_fits(model, mesh, [config_checks.product_spec(cfg, g) for g in cfg.format.group_sizes])
  check_model_fits(cfg, model, {cfg.data.split: windows})
  logging.info("model %s, %d windows x %d tokens (%s split of %s%s), loaded in %.1f s",
               cfg.model.name, *windows.shape, cfg.data.split, cfg.data.corpus,
               ", BOS first" if bos else "", time.time() - t0)
  return model, windows, first, bos


# The checkpoint folder's files the loader reads (models.load): their content is the model's.
_MODEL_FILES = ("config.json", "tokenizer.json", "*.safetensors")


def file_sha256(path: pathlib.Path) -> str:
  """sha256 of a file, cached in the anda_jax cache folder under the file's (path, size,
  mtime_ns, ctime_ns, inode): a multi-GB model is hashed once, and again whenever it changes."""
  path = pathlib.Path(path).resolve()
  st = path.stat()
  stamp = [str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
  entry = assets.cache_dir() / "sha256" / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")
  try:
    cached = json.loads(entry.read_text())
    if cached["stamp"] == stamp:
      return cached["sha256"]
  except (OSError, ValueError, KeyError, TypeError):
    pass  # absent or damaged: hash again
  digest = assets.sha256_file(path)
  try:
    files.atomic_write_text(entry, json.dumps(dict(stamp=stamp, sha256=digest)))
  except OSError as e:  # a read-only cache costs time, not correctness
    logging.warning("cannot cache the sha256 of %s in %s: %s", path, entry, e)
  return digest


def model_sha256(name: str) -> str:
  """The content of model.name: a registry model's pinned sha256 (assets checks it on every
  fetch), a GGUF file's sha256, or a digest of a checkpoint folder's files (names and sha256)."""
  if name in assets.REGISTRY:
    return assets.REGISTRY[name].sha256
  path = pathlib.Path(name).expanduser()
  if path.is_file():
    return file_sha256(path)
  h = hashlib.sha256()
  for f in sorted({f for pattern in _MODEL_FILES for f in path.glob(pattern) if f.is_file()}):
    h.update(f"{f.name}\0{file_sha256(f)}\n".encode())
  return h.hexdigest()
