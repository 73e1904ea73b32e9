"""The settings every experiment shares, checked before anything heavy is loaded or any file is
written (one ValueError naming the setting, its value and what is allowed), and what they
describe: the run folder, the Anda product, the other formats, the PRNG key.

The config sections are built in configs/common.py (its docstring lists them).
"""

from __future__ import annotations

import difflib
import os
import pathlib
import re
import tempfile

import jax

from anda_jax.checks import check_int
from anda_jax import data
from anda_jax.matmul import MATMUL_PRECISIONS, ProductSpec
from anda_jax.precision import MODULE_TYPES
from anda_jax import models
from anda_jax.numerics import anda
from anda_jax.numerics import baselines
from anda_jax.numerics import bitserial
from anda_jax.numerics import int4
from experiments.harness import distributed


SPLITS = ("calibration", "test")


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
  if m.name not in models.REGISTRY and not pathlib.Path(m.name).expanduser().exists():
    raise ValueError(f"model.name={m.name!r} is neither a registry name {models.REGISTRY} nor an "
                     "existing GGUF file or checkpoint folder")
  check_optional_int("model.int4_group_size", m.int4_group_size, 1)
  if m.matmul_precision not in MATMUL_PRECISIONS:
    raise ValueError(f"model.matmul_precision={m.matmul_precision!r} is invalid: must be one of "
                     f"{tuple(MATMUL_PRECISIONS)}")


def check_data_config(d) -> None:
  """The `data` section: corpus, split, seq_len, stride, windows, bos."""
  if d.corpus not in data.CORPORA and not pathlib.Path(d.corpus).expanduser().exists():
    raise ValueError(f"data.corpus={d.corpus!r} is neither a known corpus {data.CORPORA} nor an "
                     "existing file or folder")
  if d.split not in SPLITS:
    raise ValueError(f"data.split={d.split!r} is invalid: must be one of {SPLITS}")
  check_int("data.seq_len", d.seq_len, 2)
  check_optional_int("data.stride", d.stride, 1, d.seq_len)
  check_optional_int("data.windows", d.windows, 1)
  data.check_bos_setting(d.get("bos", "auto"))


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
  check_ints("format.group_sizes", cfg.format.group_sizes, 1, anda.MAX_GROUP_SIZE)
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
  for key in distributed.PROCESS_VARIABLES:
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
    layers = model.layers.get_value()
    float_sites = [site for site in MODULE_TYPES if not isinstance(layers[site], int4.Int4Weights)]
    if float_sites:
      raise ValueError(f"impl='bitserial' is invalid for this model: its {', '.join(float_sites)} "
                       "weights are float, and the bit-serial kernel takes INT4 weights; set "
                       "--config.model.int4_group_size (e.g. 32) to quantize them, or use "
                       "impl='fake'")
    weights = [layers[site] for site in MODULE_TYPES]
    for g in group_sizes:
      for w in weights:
        bitserial.block_size(g, w.group_size)  # ValueError naming both sizes


def product_spec(cfg, group_size: int) -> ProductSpec:
  """The Anda product the `format` and `impl` settings describe, at group size G."""
  fmt = anda.AndaFormat(group_size=group_size, exponent_bits=cfg.format.exponent_bits,
                               rounding=cfg.format.rounding)
  return ProductSpec(fmt, cfg.impl)


def other_formats(cfg) -> dict:
  """{canonical name: format object} of the `other_formats` setting (the formats the sweep and
  the search evaluate next to Anda); ValueError naming a bad or repeated name and the valid
  ones. Non-Anda formats have no bit-serial kernel: they need impl='fake'."""
  return format_names(cfg, cfg.other_formats, "other_formats")


def format_names(cfg, names, setting: str) -> dict:
  """{canonical name: format object} of a list of names of baselines.FORMAT_NAMES given by the
  setting `setting`, in their order; ValueError naming a bad or repeated name and the valid
  ones, or an impl other than 'fake' (non-Anda formats have no bit-serial kernel)."""
  if not isinstance(names, (list, tuple)):
    raise ValueError(f"{setting}={names!r} is invalid: must be a list of format names, each "
                     f"one of {baselines.FORMAT_NAMES} (options after a colon: 'mxfp4:block_size=16')")
  out = {}
  for i, name in enumerate(names):
    try:
      fmt = baselines.parse_format(name)
    except ValueError as e:
      raise ValueError(f"{setting}[{i}]: {e}") from None
    canonical = baselines.format_name(fmt)
    if canonical in out:
      raise ValueError(f"{setting}[{i}]={name!r} is invalid: it repeats {canonical!r}")
    out[canonical] = fmt
  if out and cfg.impl != "fake":
    raise ValueError(f"impl={cfg.impl!r} is invalid with {setting}: the bit-serial kernel "
                     "streams Anda bit planes only (use impl='fake')")
  return out


def rounding_key(cfg):
  """The PRNG key stochastic rounding needs (from `seed`); None for the other roundings."""
  return jax.random.key(cfg.seed) if cfg.format.rounding == "stochastic" else None


def run_dir(cfg) -> pathlib.Path:
  return pathlib.Path(cfg.results_dir).expanduser() / cfg.run_name
