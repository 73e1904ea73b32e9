"""What a search chooses among (the `candidates` setting of configs/search.py): Anda's mantissa
lengths, or a list of formats, and what follows from a list: the product that evaluates it
(a baselines.FormatChoice, one compiled program for every mix), the storage-bit ladder the
search walks, and the names of what each entry chose (docs/formats.md, section 10).

A configuration of a search among formats holds at each entry the index of its format: 0 is
floating point (FP16), i the i-th format of the list. Such a search starts from floating point
everywhere.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from anda_jax import cost
from anda_jax.matmul import ProductSpec
from anda_jax.numerics import baselines
from anda_jax.precision import MODULE_TYPES
from anda_jax import precision_search
from experiments.harness import config_checks

ANDA = "anda"  # Anda's mantissa lengths: the search as the paper has it
# The named lists, in the order of their values 1..n: by storage bits, high to low (equal bits
# in OCP MX's order).
CANDIDATE_SETS = {
    "mx": ("mxint8", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4"),
    "nvfp4_mx": ("mxint8", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "nvfp4",
                 "mxfp4"),
}
FLOAT_NAME = "fp16"  # what an entry at value 0 holds


def formats(cfg) -> dict | None:
  """{canonical name: format} of the `candidates` setting in the order of their values (value
  i: the i-th), None for Anda's mantissa lengths; ValueError naming the setting."""
  names = cfg.candidates
  if names == ANDA:
    return None
  named = isinstance(names, str) and names in CANDIDATE_SETS
  if not named and not isinstance(names, (list, tuple)):
    raise ValueError(f"candidates={names!r} is invalid: must be {ANDA!r}, one of "
                     f"{tuple(CANDIDATE_SETS)} or a tuple of format names, each one of "
                     f"{baselines.FORMAT_NAMES}, e.g. --config.candidates='(\"mxint8\",\"mxfp4\")'")
  names = CANDIDATE_SETS[names] if named else names
  out = config_checks.format_names(cfg, names, "candidates")
  if not out:
    raise ValueError("candidates=() is invalid: must name at least one format, or be 'anda'")
  try:
    baselines.FormatChoice(tuple(out.values()))
  except ValueError as e:  # more formats than a configuration's values reach
    raise ValueError(f"candidates: {e}") from None
  return out


def check(cfg) -> None:
  """`candidates`, and the settings a search among formats leaves to Anda refused where they
  would be read as something they are not."""
  if formats(cfg) is None:
    return
  if cfg.start_types is not None:
    raise ValueError(f"start_types={cfg.start_types!r} is invalid with candidates="
                     f"{cfg.candidates!r}: it is Anda's M per type; a search among formats "
                     "starts from floating point (set start_types=None)")
  if cfg.cost.head_mantissa_bits:
    raise ValueError(f"cost.head_mantissa_bits={cfg.cost.head_mantissa_bits} is invalid with "
                     f"candidates={cfg.candidates!r}: it is an Anda M for the LM head; set 0 "
                     "(FP16)")


def choice(names) -> baselines.FormatChoice:
  """The FormatChoice of a list of format names (setup.json's `candidates`)."""
  return baselines.FormatChoice(tuple(baselines.parse_format(n) for n in names))


def product_spec(cfg) -> ProductSpec:
  """The product a search evaluates: Anda as the `format` block says, or the choice among the
  candidates."""
  names = formats(cfg)
  if names is None:
    return config_checks.product_spec(cfg, cfg.format.group_sizes[0])
  return ProductSpec(baselines.FormatChoice(tuple(names.values())), cfg.impl)


def ladder(shape: cost.ModelShape, fmt: baselines.FormatChoice, per_layer: bool) -> np.ndarray:
  """Storage bits per activation element of every value (0: FP16) at each entry, float64
  [n_layers, 4, n + 1] (per layer) or [4, n + 1] (per type: every layer's are the same), as
  cost.activation_bits counts them (a per-token scale's share depends on the type's K)."""
  bits = np.stack([cost.activation_bits(shape, np.full(len(MODULE_TYPES), v), fmt)
                   for v in range(len(fmt.formats) + 1)], -1)
  return bits if per_layer else bits[0]


def entry_names(config, names) -> list:
  """The format name of each entry of a configuration (FLOAT_NAME at 0), as nested lists of its
  shape."""
  table = np.asarray([FLOAT_NAME, *names], object)
  return table[np.asarray(config)].tolist()


@dataclasses.dataclass(frozen=True)
class Walk:
  """What a search walks: the product evaluating its configurations (spec.fmt is the format
  the cost measures read: Anda, or the FormatChoice), the start, the ladder (None: Anda's one
  bit a round), the uniform configurations evaluated beside it (label, configuration), and the
  candidates' names (None for Anda)."""

  spec: ProductSpec
  start: np.ndarray
  ladder: precision_search.FormatLadder | None
  uniform: tuple
  names: tuple | None


def walk(cfg, shape: cost.ModelShape) -> Walk:
  """The Walk of a checked config on a model of `shape`: per type [4] or per layer [n_layers, 4]
  (granularity). Anda starts at start_m (or start_types) with the uniform-M curve uniform_m; a
  list of formats at floating point, with each of its formats at every site."""
  spec, names = product_spec(cfg), formats(cfg)
  like = np.zeros((shape.n_layers, 4) if cfg.granularity == "layer" else (4,), np.int32)
  if names is None:
    start = like + np.asarray(cfg.start_m if cfg.start_types is None else cfg.start_types, np.int32)
    return Walk(spec, start, None, tuple((f"uniform M={m}", like + m) for m in cfg.uniform_m), None)
  bits = ladder(shape, spec.fmt, cfg.granularity == "layer")
  return Walk(spec, like, precision_search.FormatLadder(bits),
              tuple((f"uniform {n}", like + v) for v, n in enumerate(names, 1)), tuple(names))
