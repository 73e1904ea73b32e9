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
from anda_jax import data
from anda_jax import files
from anda_jax import finetune as finetune_lib
from anda_jax import models
from experiments.harness import config_checks
from experiments.harness import distributed


def load_model(m, finetune: str | None = None):
  """(model, tokenizer) as the `model` section says, with the trained parameters of the file
  `finetune` (the config's `finetune` setting) applied if given."""

  model, tokenizer = models.load(m.name, int4_group_size=m.int4_group_size,
                                matmul_precision=m.matmul_precision)
  if tokenizer is None:
    raise ValueError(f"model.name={m.name!r} comes without a tokenizer (tokenizer.json)")
  if finetune is not None:
    finetune_lib.apply_file(model, pathlib.Path(finetune).expanduser())
  return model, tokenizer


def load_windows(d, tokenizer, windows: dict[str, int | None]) -> dict[str, np.ndarray]:
  """int32 [n, seq_len] token windows of each split in `windows` (split -> how many, None:
  all), from the `data` section's corpus, seq_len and stride."""
  corpus = data.load_corpus(d.corpus)
  return {split: data.token_windows(corpus.split(split), tokenizer, d.seq_len, max_windows=n,
                                    stride=d.stride)
          for split, n in windows.items()}


def score_from(d) -> int:
  """The first scored position of a window: overlapping windows score only their new tokens."""
  return d.seq_len - (d.stride or d.seq_len)


def load_model_and_windows(cfg):
  """(model, windows int32 [n, seq_len], score_from) as the `model` and `data` sections say."""
  model, tokenizer = load_model(cfg.model, cfg.get("finetune"))
  windows = load_windows(cfg.data, tokenizer, {cfg.data.split: cfg.data.windows})[cfg.data.split]
  return model, windows, score_from(cfg.data)


def start(cfg, loaded=None, mesh=None):
  """(model, windows, score_from) of a checked config (`loaded` if given, to share one load
  between runs), checked against format.group_sizes and the device `mesh` (mesh_of)."""
  t0 = time.time()
  model, windows, first = loaded or load_model_and_windows(cfg)
  config_checks.check_group_size_fits(model, cfg.format.group_sizes, cfg.impl)
  distributed.check_mesh_fits(model, mesh, [config_checks.product_spec(cfg, g) for g in cfg.format.group_sizes])
  logging.info("model %s, %d windows x %d tokens (%s split of %s), loaded in %.1f s",
               cfg.model.name, *windows.shape, cfg.data.split, cfg.data.corpus, time.time() - t0)
  return model, windows, first


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
