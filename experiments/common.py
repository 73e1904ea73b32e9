"""What the experiments share: config checks, the Anda product a config describes, loading the
model and its token windows, the run folder (setup.json, a JSON-lines results file, a lock), the
multi-process start and device mesh, and the command line `python -m experiments.<name>
--config=configs/<name>.py`.

The config sections every experiment has are built in configs/common.py (its docstring lists
them). Every experiment appends one JSON line per result as soon as it is known; a rerun reads
them back and skips what is done. setup.json records what those rows are valid for (the
settings that change a result, the model's content and the token windows by sha256), so a
rerun against other settings or inputs is refused instead of mixing results.

What happens when things go wrong (README: "What happens when things go wrong"):
  - a bad setting is refused before anything is loaded or written: one line on stderr,
    `error: <what> is invalid: <why>`, exit status 2 (--traceback shows the stack);
  - a broken line of a results file (garbage, a row without its key, non-UTF-8 bytes, a torn
    last line) is moved to `<file>.broken` with a warning naming file and line, and the run
    recomputes what it held;
  - setup.json and the reports are written atomically (temp file + rename);
  - a run holds a lock on its folder: a second process on the same folder is refused;
  - a perplexity that is not finite (NaN, or too large for a float) is recorded as null with
    "finite": false, shown as such in tables and drawn as a gap;
  - in a multi-process run only process 0 touches the run folder (lock, reads, writes); what it
    read and its refusals reach every process (on_main), and when one process dies the others
    stop (JAX's coordination service) instead of waiting in a collective.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import math
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import numpy as np

from anda_jax import anda_format
from anda_jax import assets
from anda_jax import data
from anda_jax import files
from anda_jax import intervals
from anda_jax import sharding
from anda_jax.checks import check_int
from anda_jax.matmul import MATMUL_PRECISIONS, ProductSpec

SPLITS = ("calibration", "test")


# ---------------------------------------------------------------------- config checks

def key_paths(cfg, prefix="") -> set[str]:
  """Every key of a config, nested ones dotted: {"model", "model.name", ...}."""
  out = set()
  for k, v in cfg.items():
    out.add(prefix + k)
    if hasattr(v, "items"):
      out |= key_paths(v, prefix + k + ".")
  return out


def nearest_keys(key: str, valid) -> str:
  """The valid keys nearest to `key` (difflib), for an error message."""
  valid = sorted(valid)
  close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
  # A leaf name given without its section (seq_len for data.seq_len) is near its full path.
  close += [v for v in valid if v.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1] and v not in close]
  if close:
    return "the nearest valid keys: " + ", ".join(close[:4])
  return "valid keys: " + ", ".join(v for v in valid if "." not in v)


def check_keys(cfg, reference) -> None:
  """Unknown or missing keys (compared with the experiment's full config) -> ValueError."""
  got, want = key_paths(cfg), key_paths(reference)
  unknown = sorted(got - want)
  if unknown:
    raise ValueError(f"unknown config keys {unknown} are invalid: no such setting; "
                     f"{nearest_keys(unknown[0], want)}")
  if want - got:
    raise ValueError(f"missing config keys {sorted(want - got)}")


def check_ints(name: str, values, lo: int, hi: int) -> tuple[int, ...]:
  """A non-empty list of integers in [lo, hi] (e.g. mantissa_bits), as a tuple."""
  if not isinstance(values, (list, tuple)) or not values:
    raise ValueError(f"{name}={values!r} is invalid: must be a non-empty list of integers in [{lo}, {hi}]")
  return tuple(check_int(f"{name}[{i}]", v, lo, hi) for i, v in enumerate(values))


def check_optional_int(name: str, value, lo: int, hi: int | None = None) -> None:
  if value is not None:
    check_int(name, value, lo, hi, " or None")


def check_types(types, allowed) -> None:
  if not types or any(t not in allowed for t in types):
    raise ValueError(f"types={tuple(types)!r} is invalid: must be a non-empty subset of {allowed}")


def check_model_config(m) -> None:
  from anda_jax import models  # pylint: disable=g-import-not-at-top

  if m.name not in models.REGISTRY and not pathlib.Path(m.name).expanduser().exists():
    raise ValueError(f"model.name={m.name!r} is neither a registry name {models.REGISTRY} nor an "
                     "existing GGUF file or checkpoint folder")
  check_optional_int("model.int4_group_size", m.int4_group_size, 1)
  if m.matmul_precision not in MATMUL_PRECISIONS:
    raise ValueError(f"model.matmul_precision={m.matmul_precision!r} is invalid: must be one of "
                     f"{tuple(MATMUL_PRECISIONS)}")


def check_data_config(d) -> None:
  """The `data` section: corpus, split, seq_len, stride, windows."""
  if d.corpus not in data.CORPORA and not pathlib.Path(d.corpus).expanduser().exists():
    raise ValueError(f"data.corpus={d.corpus!r} is neither a known corpus {data.CORPORA} nor an "
                     "existing file or folder")
  if d.split not in SPLITS:
    raise ValueError(f"data.split={d.split!r} is invalid: must be one of {SPLITS}")
  check_int("data.seq_len", d.seq_len, 2)
  check_optional_int("data.stride", d.stride, 1, d.seq_len)
  check_optional_int("data.windows", d.windows, 1)


def _writable(folder: pathlib.Path) -> str | None:
  """Why nothing can be created in the existing `folder` (None: it can). Tried for real, with a
  temporary file removed at once: permission bits say nothing for root or a read-only mount."""
  try:
    fd, tmp = tempfile.mkstemp(prefix=".write-test-", dir=folder)
  except OSError as e:
    return e.strerror or str(e)
  os.close(fd)
  os.unlink(tmp)
  return None


def check_run_folder(cfg) -> None:
  """run_name names one folder inside results_dir; results_dir is (or can become) a writable
  folder. Checked without writing anything."""
  name = cfg.run_name
  if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name
      or "\0" in name or (os.altsep and os.altsep in name)):
    raise ValueError(f"run_name={name!r} is invalid: must be a folder name inside results_dir "
                     "(no path separators, not '.' or '..')")
  if not isinstance(cfg.results_dir, str) or not cfg.results_dir:
    raise ValueError(f"results_dir={cfg.results_dir!r} is invalid: must be a folder path")
  for folder, what in ((run_dir(cfg), "run folder"), (pathlib.Path(cfg.results_dir).expanduser(), "results_dir")):
    if folder.exists() and not folder.is_dir():
      raise ValueError(f"{what} {str(folder)!r} is invalid: it is a file, not a folder")
  existing = run_dir(cfg)
  while not existing.exists():
    existing = existing.parent
  if not existing.is_dir():
    raise ValueError(f"results_dir={cfg.results_dir!r} is invalid: {str(existing)!r} is a file, not a folder")
  why = _writable(existing)
  if why:
    raise ValueError(f"results_dir={cfg.results_dir!r} is invalid: cannot write in {str(existing)!r} ({why})")


def check_config(cfg, reference) -> None:
  """The sections every experiment has, checked before anything heavy is loaded or any file is
  written: the keys (against `reference`, the experiment's full config), the run folder, model,
  data, format and product, and the batch sizes. ValueError with a clear message."""
  check_keys(cfg, reference)
  check_run_folder(cfg)
  check_model_config(cfg.model)
  check_data_config(cfg.data)
  check_ints("format.group_sizes", cfg.format.group_sizes, 1, anda_format.MAX_GROUP_SIZE)
  product_spec(cfg, cfg.format.group_sizes[0])  # checks exponent_bits, rounding and impl
  check_optional_int("window_batch", cfg.window_batch, 1)
  check_optional_int("config_batch", cfg.config_batch, 1)
  check_mesh(cfg.mesh)
  check_processes(cfg)
  check_finetune(cfg)
  if not isinstance(cfg.get("compilation_cache", True), bool):
    raise ValueError(f"compilation_cache={cfg.compilation_cache!r} is invalid: must be True or False")


def check_mesh(mesh) -> None:
  """`mesh`: None or (config_shards, model_shards). Whether it matches the number of devices is
  known once the processes have joined (mesh_of), whether the model splits so once it is
  loaded (check_mesh_fits)."""
  if mesh is not None and (not isinstance(mesh, (list, tuple)) or len(mesh) != 2 or any(
      isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in mesh)):
    raise ValueError(f"mesh={mesh!r} is invalid: must be None or (config_shards, model_shards), "
                     "two integers >= 1, e.g. '(2,4)'")


def check_processes(cfg) -> None:
  """`distributed` and the process settings it takes (None: from the environment)."""
  if not isinstance(cfg.distributed, bool):
    raise ValueError(f"distributed={cfg.distributed!r} is invalid: must be True or False")
  for key in PROCESS_VARIABLES:
    if cfg[key] is not None and not cfg.distributed:
      raise ValueError(f"{key}={cfg[key]!r} is invalid without distributed=True: it is a setting "
                       "of a multi-process run (add --config.distributed=True)")
  address = cfg.coordinator_address
  if address is not None and not (isinstance(address, str) and re.fullmatch(r"\S+:\d+", address)):
    raise ValueError(f"coordinator_address={address!r} is invalid: must be None or 'host:port' "
                     "of process 0, e.g. '10.0.0.1:1234'")
  check_optional_int("num_processes", cfg.num_processes, 1)
  check_optional_int("process_id", cfg.process_id, 0,
                     None if cfg.num_processes is None else cfg.num_processes - 1)


def check_finetune(cfg) -> None:
  """`finetune`: None or an existing file (its content is checked when it is applied)."""
  path = cfg.get("finetune")
  if path is not None and (not isinstance(path, str) or not pathlib.Path(path).expanduser().is_file()):
    raise ValueError(f"finetune={path!r} is invalid: must be None or a trained-parameter file "
                     "(experiments.finetune writes them to results/<run>/params/)")


def one_group_size(cfg, experiment: str) -> int:
  """The group size of an experiment that takes one (format.group_sizes holds exactly one)."""
  if len(cfg.format.group_sizes) != 1:
    raise ValueError(f"format.group_sizes={tuple(cfg.format.group_sizes)!r} is invalid: the "
                     f"{experiment} takes one group size")
  return cfg.format.group_sizes[0]


def check_group_size_fits(model, group_sizes, impl: str, name: str = "format.group_sizes") -> None:
  """A group must fit in every activation it groups: G <= the smallest contraction length.
  `name`: the setting the group sizes come from, for the message."""
  c = model.config
  # Inputs of qkv and up have d_model elements, of down d_ff, of o n_heads x head_dim (LLaMA).
  k_min = min([c.d_model, c.d_ff] + ([c.n_heads * c.head_dim] if hasattr(c, "head_dim") else []))
  for g in group_sizes:
    if g > k_min:
      raise ValueError(f"{name} holds {g}, which is invalid: larger than the model's smallest "
                       f"contraction length {k_min} (d_model={c.d_model}, d_ff={c.d_ff})")
  if impl == "bitserial":
    from anda_jax import bitserial  # pylint: disable=g-import-not-at-top
    from anda_jax import int4  # pylint: disable=g-import-not-at-top
    weights = [w for w in model.layers.get_value().values() if isinstance(w, int4.Int4Weights)]
    for g in group_sizes:
      for w in weights:
        bitserial.block_size(g, w.group_size)  # ValueError naming both sizes


# ---------------------------------------------------------------------- the product

def product_spec(cfg, group_size: int) -> ProductSpec:
  """The Anda product the `format` and `impl` settings describe, at group size G."""
  fmt = anda_format.AndaFormat(group_size=group_size, exponent_bits=cfg.format.exponent_bits,
                               rounding=cfg.format.rounding)
  return ProductSpec(fmt, cfg.impl)


def other_formats(cfg) -> dict:
  """{canonical name: format object} of the `other_formats` setting (the formats the sweep and
  the search evaluate next to Anda); ValueError naming a bad or repeated name and the valid
  ones. Non-Anda formats have no bit-serial kernel: they need impl='fake'."""
  from anda_jax import formats  # pylint: disable=g-import-not-at-top

  names = cfg.other_formats
  if not isinstance(names, (list, tuple)):
    raise ValueError(f"other_formats={names!r} is invalid: must be a list of format names, each "
                     f"one of {formats.FORMAT_NAMES} (options after a colon: 'mxfp4:block_size=16')")
  out = {}
  for i, name in enumerate(names):
    try:
      fmt = formats.parse_format(name)
    except ValueError as e:
      raise ValueError(f"other_formats[{i}]: {e}") from None
    canonical = formats.format_name(fmt)
    if canonical in out:
      raise ValueError(f"other_formats[{i}]={name!r} is invalid: it repeats {canonical!r}")
    out[canonical] = fmt
  if out and cfg.impl != "fake":
    raise ValueError(f"impl={cfg.impl!r} is invalid with other_formats: the bit-serial kernel "
                     "streams Anda bit planes only (use impl='fake')")
  return out


def rounding_key(cfg):
  """The PRNG key stochastic rounding needs (from `seed`); None for the other roundings."""
  return jax.random.key(cfg.seed) if cfg.format.rounding == "stochastic" else None


# ---------------------------------------------------------------------- perplexities

def perplexity_fields(nll: float) -> dict:
  """A row's ppl, nll and finite from a mean NLL: a perplexity that is NaN or too large for a
  float (exp overflows) is recorded as null with finite False, never as NaN or Infinity (which
  JSON does not have) and never as an OverflowError that loses the batch."""
  nll = float(nll)
  if not math.isfinite(nll):
    return dict(ppl=None, nll=None, finite=False)
  try:
    return dict(ppl=math.exp(nll), nll=nll, finite=True)
  except OverflowError:
    return dict(ppl=None, nll=nll, finite=False)


def finite_or_none(value) -> float | None:
  """A recorded perplexity as a float, None when it is not finite (null, NaN, Infinity)."""
  if value is None or not math.isfinite(float(value)):
    return None
  return float(value)


def nonfinite_text(row: dict) -> str:
  """How a row's non-finite perplexity reads in tables and CSV: "inf" (too large for a float)
  or "nan". Rows of older runs hold NaN or Infinity themselves."""
  value, nll = row.get("ppl"), row.get("nll")
  if isinstance(value, float) and not math.isfinite(value):
    return "nan" if math.isnan(value) else "inf"
  return "inf" if isinstance(nll, (int, float)) and math.isfinite(nll) else "nan"


def reported(row: dict) -> dict:
  """A results row as a report reads it: ppl a float, or None with `nonfinite` saying how it
  reads ("inf" or "nan")."""
  ppl = finite_or_none(row["ppl"])
  return dict(row, ppl=ppl, nonfinite=None if ppl is not None else nonfinite_text(row))


# ---------------------------------------------------------------------- confidence intervals

# How a report states its intervals, once (README: "Confidence intervals").
INTERVAL_METHOD = (f"{intervals.LEVEL:.0%} paired-bootstrap interval over the windows "
                   f"({intervals.N_BOOTSTRAP} resamples, seed {intervals.SEED})")


def window_fields(window_sums, window_tokens) -> dict:
  """A row's per-window NLL sums and scored tokens, kept so that the paired interval against any
  row on the same windows can be computed later without evaluating again (a sum that is not
  finite is null: JSON has no NaN)."""
  return dict(window_nll=[float(s) if math.isfinite(s) else None for s in np.asarray(window_sums, float)],
              window_tokens=[float(t) for t in window_tokens])


def increase_interval(row: dict, base: dict | None):
  """The interval of `row`'s perplexity increase over `base` (anda_jax.intervals.Interval,
  fractions), paired over their windows; None when it cannot be had: either row lacks the
  per-window sums (rows of older runs), they are not on the same windows, or there is only one
  window (a bootstrap over one window has no spread to show)."""
  if base is None:
    return None
  a, b = row.get("window_nll"), base.get("window_nll")
  tokens = row.get("window_tokens")
  if (not a or not b or tokens is None or tokens != base.get("window_tokens")
      or not len(a) == len(b) == len(tokens) or len(a) < 2):
    return None
  as_array = lambda sums: np.array([math.nan if v is None else v for v in sums], np.float64)
  return intervals.relative_increase(as_array(a), as_array(b), tokens)


INTERVAL_COLUMNS = ["rel_increase_low", "rel_increase_high"]


def interval_columns(interval) -> dict:
  """A report's CSV columns of an increase's interval (empty without one)."""
  return dict(zip(INTERVAL_COLUMNS, ("", "") if interval is None else (interval.low, interval.high)))


# ---------------------------------------------------------------------- model and windows

def load_model(m, finetune: str | None = None):
  """(model, tokenizer) as the `model` section says, with the trained parameters of the file
  `finetune` (the config's `finetune` setting) applied if given."""
  from anda_jax import models  # pylint: disable=g-import-not-at-top

  model, tokenizer = models.load(m.name, int4_group_size=m.int4_group_size,
                                matmul_precision=m.matmul_precision)
  if tokenizer is None:
    raise ValueError(f"model.name={m.name!r} comes without a tokenizer (tokenizer.json)")
  if finetune is not None:
    from anda_jax import finetune as finetune_lib  # pylint: disable=g-import-not-at-top
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
  check_group_size_fits(model, cfg.format.group_sizes, cfg.impl)
  check_mesh_fits(model, mesh, [product_spec(cfg, g) for g in cfg.format.group_sizes])
  logging.info("model %s, %d windows x %d tokens (%s split of %s), loaded in %.1f s",
               cfg.model.name, *windows.shape, cfg.data.split, cfg.data.corpus, time.time() - t0)
  return model, windows, first


# ---------------------------------------------------------------------- model content

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


# ---------------------------------------------------------------------- run folder

def run_dir(cfg) -> pathlib.Path:
  return pathlib.Path(cfg.results_dir).expanduser() / cfg.run_name


def windows_sha256(windows: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(windows, np.int32).tobytes()).hexdigest()


def setup_of(cfg, windows, model_digest: str) -> dict:
  """What the rows of a sweep or sensitivity run are valid for: every setting that changes a
  result, the model's content and the windows' checksum. windows None: the part known before
  anything is loaded (for check_setup(partial=True))."""
  setup = dict(model=dict(cfg.model.to_dict(), sha256=model_digest),
               exponent_bits=cfg.format.exponent_bits, rounding=cfg.format.rounding, impl=cfg.impl,
               seed=cfg.seed, data=cfg.data.to_dict(), window_batch=cfg.window_batch,
               config_batch=cfg.config_batch)
  if windows is not None:
    setup.update(windows_shape=list(windows.shape), windows_sha256=windows_sha256(windows))
  return setup | finetune_setup(cfg)


def finetune_setup(cfg) -> dict:
  """The setup.json entry of the `finetune` setting: {} without one (so the setup of a run
  without it reads as before), else the file and its sha256."""
  path = cfg.get("finetune")
  if path is None:
    return {}
  return dict(finetune=dict(file=str(path), sha256=file_sha256(pathlib.Path(path).expanduser())))


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
  return out


def _shown(value) -> str:
  if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
    return value[:12] + "…"  # a sha256
  return "(not recorded)" if value is _MISSING else repr(value)


_MISSING = object()


def check_setup(run_folder: pathlib.Path, setup: dict, write: bool = True,
                partial: bool = False) -> None:
  """Writes run_folder/setup.json (atomically), or checks that an existing one describes the
  same run: else ValueError saying what changed and how to start a new run. partial: compare
  only the keys of `setup` (the settings known before loading), write nothing."""
  folder = pathlib.Path(run_folder)
  path = folder / "setup.json"
  fix = (f"to start a new run choose another --config.run_name, or remove {folder} to redo "
         "this one")
  if path.exists():
    try:
      old = json.loads(path.read_text())
      if not isinstance(old, dict):
        raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
      raise ValueError(f"run folder {str(folder)!r} is invalid: its setup.json is damaged "
                       f"({e}), so what its results are valid for is unknown; {fix}") from None
    old, new = _flat(old), _flat(setup)
    keys = sorted(new) if partial else sorted(set(old) | set(new))
    changed = [f"{k}: {_shown(old.get(k, _MISSING))} -> {_shown(new.get(k, _MISSING))}"
               for k in keys if old.get(k, _MISSING) != new.get(k, _MISSING)]
    if changed:
      what = "the model's content changed, " if any(c.startswith("model.sha256") for c in changed) else ""
      raise ValueError(f"run folder {str(folder)!r} is invalid for these settings: {what}its "
                       f"results were computed with others (setup.json, old -> new: "
                       f"{'; '.join(changed)}); {fix}")
  elif write and not partial:
    files.atomic_write_text(path, json.dumps(setup, indent=1) + "\n")


@contextlib.contextmanager
def open_run(cfg, setup: dict):
  """The run folder of a checked config, locked for this run: a second process on the same
  folder is refused (files.LockedError naming the holder's pid). `setup` (the settings known
  before loading, see setup_of) is checked against an existing setup.json first, so a rerun
  with other settings is refused before the model is loaded. In a multi-process run process 0
  alone takes the lock and checks; a refusal stops every process with its message (on_main).
  A folder this call created is removed again if the run fails before writing anything."""
  folder = run_dir(cfg)
  created = not folder.exists()
  holder = ("; it is in use by another run of an experiment: wait for that one to end, or choose "
            "another --config.run_name")
  with contextlib.ExitStack() as lock:

    def take():  # process 0; a refusal stops every process (on_main)
      lock.enter_context(files.locked(folder / ".lock", wait=False, holder=holder))
      check_setup(folder, setup, write=False, partial=True)

    try:
      on_main(take)
      yield folder
    except BaseException:
      if is_main() and created and folder.is_dir() and [p.name for p in folder.iterdir()] == [".lock"]:
        shutil.rmtree(folder, ignore_errors=True)
      raise


def check_fields(row, required) -> None:
  """ValueError unless `row` is a JSON object with every field in `required`."""
  if not isinstance(row, dict):
    raise ValueError(f"not a JSON object but {type(row).__name__}")
  missing = [k for k in required if k not in row]
  if missing:
    raise ValueError(f"a row without {', '.join(map(repr, missing))}")


def read_jsonl(path: pathlib.Path, repair: bool = False, check=None) -> list[dict]:
  """The rows of a JSON-lines results file. A line that is not a row (garbage, not UTF-8, a torn
  last line of an interrupted write, or a row `check(row)` refuses with ValueError / KeyError /
  TypeError; default: a JSON object) is left out with a warning naming file and line; with
  `repair`, it is moved to `<file>.broken` and the file rewritten (atomically) without it, so
  the next append starts on a clean line and a resumed run recomputes what it held."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  raw = path.read_bytes()
  check = check or (lambda row: check_fields(row, ()))
  rows, good, bad = [], [], []
  for i, line in enumerate(raw.split(b"\n"), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line.decode("utf-8"))
      check(row)
    except UnicodeDecodeError:
      bad.append((i, line, "not UTF-8 text"))
    except json.JSONDecodeError as e:
      bad.append((i, line, f"not a JSON line ({e.msg})"))
    except (ValueError, KeyError, TypeError) as e:
      bad.append((i, line, str(e)))
    else:
      rows.append(row)
      good.append(line)
  side = path.with_name(path.name + ".broken")
  for i, line, why in bad:
    logging.warning("%s:%d: %s: %s", path, i, why,
                    f"moved to {side}; the run computes it again" if repair else "skipped")
  if repair and (bad or (raw and not raw.endswith(b"\n"))):
    if bad:
      with side.open("ab") as f:
        f.write(b"".join(line + b"\n" for _, line, _ in bad))
        f.flush()
        os.fsync(f.fileno())
    files.atomic_write(path, lambda f: f.write(b"".join(line + b"\n" for line in good)))
  return rows


def read_rows(path: pathlib.Path, required: tuple[str, ...]) -> list[dict]:
  """The rows of a results file as a report reads them: lines without `required` are skipped
  with a warning (the run that writes the file moves them aside)."""
  return read_jsonl(path, check=lambda row: check_fields(row, required))


def append_jsonl(path: pathlib.Path, rows: list[dict]) -> None:
  """Appends rows and flushes, so that what is known survives an interruption."""
  with pathlib.Path(path).open("a") as f:
    f.write("".join(json.dumps(row, allow_nan=False) + "\n" for row in rows))
    f.flush()


class Results:
  """The results file of a run folder (results.jsonl): rows by key, appended and flushed as they
  come. The setup is checked (or written) first; setup None reads a run folder as it is.
  `required`: the fields every row must have (a row without them is a broken line).
  Subclasses name another file, key or row check (experiments/search.py)."""

  name = "results.jsonl"

  @staticmethod
  def key(row: dict):
    return row["id"]

  def check_row(self, row) -> None:
    """ValueError (or KeyError, TypeError) for a line that is not a row of this file."""
    check_fields(row, self.required)
    hash(self.key(row))

  def __init__(self, run_folder: pathlib.Path, setup: dict | None = None, write: bool = True,
               required: tuple[str, ...] = ("id",)):
    self.dir, self.write, self.required = pathlib.Path(run_folder), write, required
    self.path = self.dir / self.name

    def load():  # process 0's check and rows, on every process (on_main)
      if setup is not None:
        check_setup(self.dir, setup, write)
      return self.read()

    self.rows = {self.key(row): row for row in on_main(load)}

  def read(self, repair: bool | None = None) -> list[dict]:
    return read_jsonl(self.path, self.write if repair is None else repair, self.check_row)

  def append(self, rows: list[dict]) -> None:
    for row in rows:
      self.rows[self.key(row)] = row
    if self.write:
      append_jsonl(self.path, rows)


# ---------------------------------------------------------------------- atomic reports

def write_text(path: pathlib.Path, text: str) -> None:
  """A report file (csv, md, json), written atomically."""
  files.atomic_write_text(path, text)


def pyplot():
  """matplotlib.pyplot on the Agg backend (figures go to files; no display needed). Imported
  here, when a report draws, so that experiments start without matplotlib."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def save_figure(fig, path: pathlib.Path, **kwargs) -> None:
  """A matplotlib figure as PNG, written atomically (temp file + rename)."""
  files.atomic_write(path, lambda f: fig.savefig(f, format="png", **kwargs))


def csv_text(fields: list[str], rows: list[dict]) -> str:
  import csv  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top

  out = io.StringIO()
  w = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
  w.writeheader()
  w.writerows(rows)
  return out.getvalue()


# ---------------------------------------------------------------------- compilation cache

_CACHE_EVENTS = {"/jax/compilation_cache/cache_hits": "loaded",
                 "/jax/compilation_cache/cache_misses": "stored"}


def _cpu_key() -> str:
  """A short name for this machine's CPU: its architecture and a digest of its model and
  instruction-set flags (/proc/cpuinfo where there is one)."""
  import platform  # pylint: disable=g-import-not-at-top

  try:
    info = pathlib.Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
  except OSError:
    info = []
  lines = sorted({l for l in info if l.startswith(("model name", "flags", "Features", "CPU part"))})
  text = "\n".join([platform.machine(), platform.processor()] + lines)
  return f"{platform.machine() or 'cpu'}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def compilation_cache_dir() -> pathlib.Path:
  """Where the commands keep JAX's persistent compilation cache: one folder per CPU under
  <asset cache>/jax_compilation_cache/. Per CPU because JAX's cache key names the platform
  ("cpu") but not the instruction set, and a program compiled for one CPU (AVX-512, say) must
  not be loaded on another that shares the home folder."""
  return assets.cache_dir() / "jax_compilation_cache" / _cpu_key()


def use_compilation_cache(cfg) -> pathlib.Path | None:
  """Turns JAX's persistent compilation cache on (the `compilation_cache` setting, default True)
  or off for this process; returns its folder (None: off). $JAX_COMPILATION_CACHE_DIR, if set,
  is used instead of compilation_cache_dir(). Every program is stored, however fast it
  compiled, so that a rerun or a resumed run compiles nothing. Process-wide JAX state: called
  by the command line (run_with_config) before anything compiles, not by the experiments'
  run functions, which tests and benchmarks call in-process."""
  on = cfg.get("compilation_cache", True)
  if not isinstance(on, bool):
    raise ValueError(f"compilation_cache={on!r} is invalid: must be True or False")
  if not on:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  folder = pathlib.Path(jax.config.jax_compilation_cache_dir or compilation_cache_dir())
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", str(folder))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return folder


@contextlib.contextmanager
def count_cache_use():
  """{"loaded": programs read from the persistent compilation cache, "stored": programs compiled
  and written to it} inside the block, from JAX's monitoring events."""
  counts = dict.fromkeys(_CACHE_EVENTS.values(), 0)

  def listener(event, **kwargs):
    del kwargs
    if event in _CACHE_EVENTS:
      counts[_CACHE_EVENTS[event]] += 1

  jax.monitoring.register_event_listener(listener)
  try:
    yield counts
  finally:
    jax.monitoring.unregister_event_listener(listener)


# ---------------------------------------------------------------------- hosts and command line

_distributed = []  # [True] once jax.distributed is initialized

# Where a process setting left None in the config comes from. JAX reads the first itself; the
# other two are this project's, for launchers that export variables (JAX detects all three
# under SLURM, Open MPI, on a Cloud TPU pod and on Kubernetes).
PROCESS_VARIABLES = dict(coordinator_address="JAX_COORDINATOR_ADDRESS",
                         num_processes="JAX_NUM_PROCESSES", process_id="JAX_PROCESS_ID")


def process_settings(cfg, environ=None) -> dict:
  """jax.distributed.initialize's coordinator_address, num_processes and process_id: each from
  the config, else from its environment variable (PROCESS_VARIABLES), else None (detected)."""
  environ = os.environ if environ is None else environ
  out = {}
  for key, var in PROCESS_VARIABLES.items():
    value = cfg[key]
    if value is None and environ.get(var):
      value = environ[var]
      if key != "coordinator_address":
        try:
          value = int(value)
        except ValueError:
          raise ValueError(f"environment variable {var}={value!r} is invalid: must be an integer "
                           f"(the run's {key})") from None
    out[key] = value
  return out


def maybe_initialize_distributed(cfg) -> None:
  """distributed=True: joins the processes of the run (jax.distributed.initialize), before any
  JAX computation. JAX's timeouts apply: the processes must all start within 5 minutes; when one
  dies the others stop (at once when it is process 0, which hosts the coordinator; within the
  100 s heartbeat timeout otherwise) instead of waiting in a collective forever."""
  if not cfg.distributed or _distributed:
    return
  settings = process_settings(cfg)
  # Cross-process computations on the CPU need a collectives implementation (gloo over TCP; the
  # default of this jax, set in case an environment unset it). GPUs and TPUs have their own.
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(**settings)
  except ValueError as e:  # a setting missing and no cluster detected, or process_id out of range
    raise ValueError(f"distributed=True is invalid here: {e} (set --config.coordinator_address, "
                     "num_processes and process_id, or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES "
                     "and JAX_PROCESS_ID, or run under SLURM, Open MPI or on a Cloud TPU pod)") from None
  _distributed.append(True)
  logging.info("process %d of %d; %d devices in all, %d here", jax.process_index(),
               jax.process_count(), jax.device_count(), jax.local_device_count())


def is_main() -> bool:
  """Only process 0 writes files. (A single-process run asks no backend: the refusals before
  loading stay one line, without the backends' start-up log.)"""
  return not _distributed or jax.process_index() == 0


def _broadcast_json(value):
  """Process 0's `value` (JSON) on every process; a collective, so every process calls it."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  data = np.frombuffer(json.dumps(value).encode(), np.uint8) if is_main() else np.zeros(0, np.uint8)
  size = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
  buffer = np.zeros(size, np.uint8)
  buffer[:data.size] = data
  return json.loads(np.asarray(multihost_utils.broadcast_one_to_all(buffer)).tobytes())


def on_main(fn):
  """fn() run by process 0 alone, its value (JSON) or its error shared with every process. The
  run folder is process 0's (the others may not even see it: a TPU pod's hosts have disks of
  their own), and every process must take the same path through the collective computations
  (the same configurations, in the same order), or stop with the same error instead of waiting
  for the others. A single process just calls fn()."""
  if not _distributed or jax.process_count() == 1:
    return fn()
  if not is_main():
    shared = _broadcast_json(None)
    if "error" in shared:
      error = ValueError if shared["clean"] else RuntimeError
      raise error(f"{shared['error']} (process 0)")
    return shared["value"]
  try:
    value = fn()
  except Exception as e:
    clean = isinstance(e, CLEAN_ERRORS)
    _broadcast_json(dict(error=str(e) if clean else f"{type(e).__name__}: {e}", clean=clean))
    raise
  _broadcast_json(dict(value=value))
  return value


def mesh_of(cfg):
  """The device mesh of the `mesh` setting over the devices of every process (after
  maybe_initialize_distributed), None for a single device; ValueError when its shape does not
  multiply to the number of devices."""
  return sharding.make_mesh(None if cfg.mesh is None else tuple(cfg.mesh))


def check_mesh_fits(model, mesh, specs) -> None:
  """Every layer weight splits whole over the model shards of `mesh`, for each ProductSpec of
  `specs`: N of the column-parallel products, K of the row-parallel ones into whole Anda groups
  and INT4 scale groups. Checked after loading, before any result is written (evaluate would
  find it only then); ValueError naming the mesh."""
  if sharding.model_shards(mesh) == 1:
    return
  from flax import nnx  # pylint: disable=g-import-not-at-top

  state = nnx.split(model)[1]
  shape = tuple(mesh.shape.values())
  for spec in specs:
    try:
      jax.tree_util.tree_map_with_path(
          lambda path, leaf, spec=spec: sharding.weight_spec(path, leaf, mesh, spec.formats), state)
    except ValueError as e:
      raise ValueError(f"mesh={shape} is invalid for this model: {e}") from None


# What a clean error is: a bad setting or input (ValueError with a message naming it), a run
# folder in use, an asset that cannot be fetched. Anything else is a bug: its stack is shown.
CLEAN_ERRORS = (ValueError, files.LockedError, assets.AssetError)


def _show_stack() -> bool:
  f = flags.FLAGS
  return (("traceback" in f and f["traceback"].present and f.traceback)
          or ("verbosity" in f and f.verbosity >= 1))


def error_exit(message) -> None:
  """Prints `error: <message>` as one line on stderr and exits with status 2."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(2)


def call_cleanly(fn, *args):
  """fn(*args); a clean error becomes one line on stderr and exit status 2 (the stack with
  --traceback or --verbosity=1)."""
  try:
    return fn(*args)
  except CLEAN_ERRORS as e:
    if _show_stack():
      raise
    error_exit(e)


def _argv_value(argv, name: str) -> str | None:
  for i, a in enumerate(argv):
    if a == "--":
      break
    if a.startswith(f"--{name}="):
      return a.split("=", 1)[1]
    if a == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _load_config_file(spec: str):
  """get_config(arg) of `--config=path[:arg]`, as config_flags loads it, with the error (a
  missing file, a bad variant) as a clean ValueError."""
  import runpy  # pylint: disable=g-import-not-at-top

  path, _, arg = spec.partition(":")
  if not pathlib.Path(path).is_file():
    raise ValueError(f"--config={spec} is invalid: no such file {path!r}")
  try:
    module = runpy.run_path(path)
    return module["get_config"](*([arg] if arg else []))
  except ValueError as e:
    raise ValueError(f"--config={spec} is invalid: {e}") from None


def check_override_keys(argv) -> None:
  """`--config.<key>=...` of a key the config file does not have -> ValueError naming the
  valid keys nearest to it (ml_collections' own error is a bare AttributeError)."""
  spec = _argv_value(argv, "config")
  if spec is None:
    return
  valid = key_paths(_load_config_file(spec))
  for a in argv:
    if a == "--":
      break
    for prefix in ("--config.", "--noconfig.", "-config.", "-noconfig."):
      if a.startswith(prefix):
        key = a[len(prefix):].split("=", 1)[0]
        if key not in valid:
          raise ValueError(f"config key {key!r} (in {a}) is invalid: {spec.partition(':')[0]} has "
                           f"no such setting; {nearest_keys(key, valid)}")


def parse_flags(argv):
  """absl's flag parsing with one-line errors (exit status 2): unknown config keys with the
  nearest valid ones, bad flag values, a config file that cannot be loaded."""
  show = "--traceback" in argv or any(a.startswith(("--verbosity=", "-v=")) and a.split("=")[1] not in ("0", "-1")
                                      for a in argv)
  try:
    check_override_keys(argv)
    return flags.FLAGS(argv)
  except (flags.Error, ValueError, AttributeError, KeyError, TypeError, OSError) as e:
    if show:
      raise
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, flags.UnrecognizedFlagError):
      message = f"--{e.flagname} is invalid: no such flag (--helpfull lists them)"
    elif match := re.match(r"flag (-\S+): (.*)", message):  # absl's IllegalFlagValueError
      message = f"{match[1]} is invalid: {match[2]}"
    error_exit(message)


def define_traceback_flag() -> None:
  if "traceback" not in flags.FLAGS:
    flags.DEFINE_bool("traceback", False, "on an error, show the whole stack instead of one line")


def run_with_config(run, description: str) -> None:
  """`python -m experiments.<name> --config=configs/<name>.py[:quick] [--config.<key>=...]`:
  calls run(config). The --config flag is defined here, when a module runs as a program, so that
  the experiment modules can be imported without defining it. A bad setting prints one line,
  `error: <what> is invalid: <why>`, and exits with status 2 (--traceback: the stack). With the
  `compilation_cache` setting (default True) JAX's persistent compilation cache is on
  (use_compilation_cache), and the command prints how many programs it loaded and stored."""
  config = config_flags.DEFINE_config_file("config", None, description, lock_config=True)
  flags.mark_flag_as_required("config")
  define_traceback_flag()

  def run_cached(cfg):
    folder = use_compilation_cache(cfg)
    with count_cache_use() as used:
      out = run(cfg)
    if folder is not None and is_main():
      print(f"compilation cache {folder}: {used['loaded']} programs loaded, {used['stored']} "
            "compiled and stored")
    return out

  def main(argv):
    if len(argv) > 1:
      error_exit(f"arguments {argv[1:]} are invalid: this command takes only flags")
    call_cleanly(run_cached, config.value)

  app.run(main, flags_parser=parse_flags)
