"""Hardware cost of a precision configuration (docs/formats.md, section 9) and format comparisons.

Everything here is plain numpy on plain numbers: a model enters only through its shapes
(`ModelShape`, built from numbers, a config or a model's `.config`), so the cost model
needs no weights and runs no JAX (configurations are validated by anda_jax.precision).

Three layers of cost, from exact to modelled:

1. Counts that follow from the shapes alone: MACs per token by module type, activation
   elements per token, mean mantissa bits M̄, activation storage bits, BOPs.
2. `Accelerator`: an analytic bit-serial FP-INT accelerator in the spirit of the Anda
   paper, the LM head included by default (`lm_head`). Its assumptions are its fields and
   the rules in its docstring; `anda_jax.cost_assumptions` tables each with its source (or
   "assumed") and shows how the modeled ratios move with them.
3. `compare_formats`: the same workload on the same silicon area with other activation
   formats (GPU-like FP16xFP16, FIGNA-like pre-aligned FP-INT, uniform block FP, and any of
   `anda_jax.numerics.baselines`: OCP MX, NVFP4, per-token FP8 / INT8), each with its storage bits and
   memory traffic.

Conventions: a precision configuration is an int array [4] or [n_layers, 4] over
("qkv", "o", "up", "down"); M = 0 means the activation stays FP16 (docs/formats.md, section 8).
The measures of a configuration (M̄, storage bits, BOPs) are over these four searched sites, as
docs/formats.md, section 9 defines them; the modeled cycles and energy (and their ratios) also
count the LM head, a fifth site that no configuration quantizes (see `Accelerator`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from anda_jax.checks import check_int
from anda_jax.numerics.anda import AndaFormat
from anda_jax.numerics import baselines
from anda_jax import precision as precision_lib
from anda_jax.precision import MODULE_TYPES

FAMILIES = ("llama", "opt")

# An activation left in floating point (M = 0) is FP16: 16 bits stored and streamed.
FP16_BITS = 16
# A FP16 activation pre-aligned to its group's maximum exponent needs at most 16
# magnitude bits (11-bit significand plus the alignment shifts that matter, docs/formats.md, section 4).
# This is the mantissa length we charge a float (M = 0) module on the bit-serial unit,
# and the default mantissa length of the FIGNA-like baseline.
FP16_ALIGNED_MANTISSA_BITS = 16
# One lane multiplies an activation bit by this many weight bits: wider weights take
# ceil(bits / 4) slices, each a lane-cycle per plane (docs/formats.md, section 4).
LANE_WEIGHT_BITS = 4
# The scale and offset of one weight group, 16 bits each (GGUF Q4_1, docs/formats.md, section 3).
WEIGHT_GROUP_SCALE_BITS = 32


# --------------------------------------------------------------------------- shapes


@dataclasses.dataclass(frozen=True)
class ModelShape:
  """The shapes of a decoder-only transformer that the FP-INT GeMMs depend on.

  LLaMA family: q/k/v/o projections with grouped-query attention and a gated MLP
  (gate_proj and up_proj both read the `up` activation). OPT family: the same four
  projections (n_kv_heads == n_heads, n_heads * head_dim == d_model) and a plain MLP
  (fc1 reads `up`, fc2 reads `down`). Attention's activation-activation products and
  the LM head are not among the searched FP-INT sites (docs/formats.md, section 8); the head's
  d_model x vocab MACs per token are known from `vocab` (None: unknown) and counted by the
  `Accelerator` as its own site.
  """

  n_layers: int
  d_model: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  d_ff: int
  family: str = "llama"
  vocab: int | None = None

  def __post_init__(self):
    for name in ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff"):
      check_int(name, getattr(self, name), 1)
    if self.vocab is not None:
      check_int("vocab", self.vocab, 1, hint=" or None (unknown)")
    if self.family not in FAMILIES:
      raise ValueError(f"family={self.family!r}: must be one of {FAMILIES}")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(
          f"n_kv_heads={self.n_kv_heads}: must divide n_heads={self.n_heads}")

  @classmethod
  def from_config(cls, config: Any) -> "ModelShape":
    """From a model config object (attributes) or a mapping with the same names.

    `family` is read from a `family` field if present, else guessed from the config's
    class name ("OPT..." -> "opt"), else "llama". Missing n_kv_heads defaults to
    n_heads, missing head_dim to d_model // n_heads, missing vocab to None.
    """
    get = (config.get if isinstance(config, Mapping)
           else lambda k, d=None: getattr(config, k, d))
    n_heads = int(get("n_heads"))
    family = get("family", None)
    if family is None:
      family = "opt" if type(config).__name__.lower().startswith("opt") else "llama"
    return cls(
        n_layers=int(get("n_layers")), d_model=int(get("d_model")), n_heads=n_heads,
        n_kv_heads=int(get("n_kv_heads", None) or n_heads),
        head_dim=int(get("head_dim", None) or int(get("d_model")) // n_heads),
        d_ff=int(get("d_ff")), family=str(family).lower(),
        vocab=None if get("vocab", None) is None else int(get("vocab")))

  def layer_macs(self) -> np.ndarray:
    """MACs per token of one layer, int64 [4] over MODULE_TYPES."""
    d, q_dim, kv_dim = self.d_model, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
    n_up = 2 if self.family == "llama" else 1  # gate_proj + up_proj vs fc1
    return np.array([d * (q_dim + 2 * kv_dim), q_dim * d, n_up * d * self.d_ff,
                     self.d_ff * d], np.int64)

  def macs(self) -> np.ndarray:
    """MACs per token, int64 [n_layers, 4] (every layer has the same shapes)."""
    return np.tile(self.layer_macs(), (self.n_layers, 1))

  def macs_per_token(self) -> dict[str, int]:
    """MACs per token by module type, summed over layers."""
    return dict(zip(MODULE_TYPES, (int(v) * self.n_layers for v in self.layer_macs())))

  def head_macs(self) -> int:
    """MACs per token of the LM head, d_model x vocab; ValueError if the vocabulary is unknown."""
    if self.vocab is None:
      raise ValueError("the LM head's MACs need the vocabulary size: ModelShape(vocab=...), or "
                       "leave the head out (cost.lm_head=False)")
    return self.d_model * self.vocab

  def layer_activation_elements(self) -> np.ndarray:
    """Activation elements per token that each type's GeMMs read, int64 [4].

    One activation feeds q, k and v (and gate and up): it is stored once.
    """
    return np.array([self.d_model, self.n_heads * self.head_dim, self.d_model, self.d_ff],
                    np.int64)

  def activation_elements(self) -> np.ndarray:
    """int64 [n_layers, 4]."""
    return np.tile(self.layer_activation_elements(), (self.n_layers, 1))


def macs_per_token(n_layers: int, d_model: int, n_heads: int, n_kv_heads: int,
                   head_dim: int, d_ff: int, family: str = "llama") -> dict[str, int]:
  """MACs per token by module type for a model of these shapes, summed over layers."""
  return ModelShape(n_layers, d_model, n_heads, n_kv_heads, head_dim, d_ff,
                    family).macs_per_token()


def as_shape(model_or_shape: Any) -> ModelShape:
  """A ModelShape from a ModelShape, a model with `.config`, or a config."""
  if isinstance(model_or_shape, ModelShape):
    return model_or_shape
  return ModelShape.from_config(getattr(model_or_shape, "config", model_or_shape))


# ------------------------------------------- the measures of docs/formats.md, section 9


def layer_precision(config: Any, n_layers: int) -> np.ndarray:
  """int32 numpy [n_layers, 4] from [4] or [n_layers, 4] (validated by anda_jax.precision)."""
  return np.asarray(precision_lib.layer_precision(np.asarray(config), n_layers))


def _float_as(p: np.ndarray, value: float) -> np.ndarray:
  return np.where(p == 0, value, p).astype(np.float64)


def mean_mantissa_bits(shape: ModelShape, precision: Any) -> float:
  """M̄ = Σ MAC_t·M_t / Σ MAC_t (docs/formats.md, section 9); a float module counts as 16 aligned bits."""
  p = layer_precision(precision, shape.n_layers)
  macs = shape.macs()
  return float((macs * _float_as(p, FP16_ALIGNED_MANTISSA_BITS)).sum() / macs.sum())


def storage_bits(shape: ModelShape, precision: Any, group_size: int = 64,
                 exponent_bits: int = 8) -> float:
  """Mean stored bits per activation element: 1 + M + exponent_bits / G (docs/formats.md, section 9).

  Averaged over the activation elements each GeMM type reads per token (not over
  MACs: this is what sits in memory). A float module stores FP16: 16 bits.
  """
  return format_storage_bits(shape, precision, AndaFormat(group_size, exponent_bits))


def activation_bits(shape: ModelShape, precision: Any, fmt: Any = AndaFormat()) -> np.ndarray:
  """Stored bits per activation element of each (layer, type), float64 [n_layers, 4], with the
  activations in `fmt` (one format, or one per type as in ProductSpec) where `precision` > 0
  and FP16 (16 bits) where it is 0. For Anda the precision's value is M; for the other formats
  it only switches them on. NVFP4's and the per-token formats' float32 scale is shared by the
  K elements of a token, K the type's contraction length."""
  p = layer_precision(precision, shape.n_layers)
  fmts = _per_type(fmt)
  k = shape.layer_activation_elements()
  out = np.full(p.shape, float(FP16_BITS))
  for (layer, t), m in np.ndenumerate(p):
    if m:
      out[layer, t] = baselines.storage_bits(fmts[t], *_m_or_row(fmts[t], int(m), int(k[t])))
  return out


def format_storage_bits(shape: ModelShape, precision: Any, fmt: Any = AndaFormat(),
                        quantized_only: bool = False) -> float:
  """Mean stored bits per activation element (`activation_bits` weighted by the elements each
  type's GeMMs read per token); quantized_only: over the sites where `precision` > 0 only (the
  format's own bits, FP16 sites left out; NaN if there is none)."""
  p = layer_precision(precision, shape.n_layers)
  elems = shape.activation_elements() * ((p != 0) if quantized_only else 1)
  if not elems.sum():
    return float("nan")
  return float((elems * activation_bits(shape, p, fmt)).sum() / elems.sum())


def _per_type(fmt: Any) -> tuple:
  """One format per type from one format or a tuple of four (as ProductSpec takes them)."""
  fmts = fmt if isinstance(fmt, tuple) else (fmt,) * len(MODULE_TYPES)
  if len(fmts) != len(MODULE_TYPES) or not all(isinstance(f, baselines.FORMATS) for f in fmts):
    raise ValueError(f"fmt={fmt!r} is invalid: must be one format of "
                     f"{[f.__name__ for f in baselines.FORMATS]} or a tuple of one per type {MODULE_TYPES}")
  return fmts


def _m_or_row(fmt: Any, m: int, row_length: int) -> tuple:
  """The arguments baselines.storage_bits takes after the format: (M,) for Anda, (value, K) else
  (a FormatChoice's value picks its format; the other formats only read K)."""
  return (m,) if isinstance(fmt, AndaFormat) else (m, row_length)


def bops(shape: ModelShape, precision: Any, weight_bits: int = 4) -> float:
  """Bit operations per token: Σ MAC_t · (M_t + 1) · w_bits (docs/formats.md, section 9).

  A float module is charged FP16's 16 activation bits.
  """
  p = layer_precision(precision, shape.n_layers)
  act_bits = np.where(p == 0, FP16_BITS, p + 1)
  return float((shape.macs() * act_bits).sum() * weight_bits)


def fp16_bops(shape: ModelShape, weight_bits: int = 4) -> float:
  """BOPs per token with every activation FP16 (16 x w_bits per MAC)."""
  return float(shape.macs().sum() * FP16_BITS * weight_bits)


# ------------------------------------------------------------ accelerator model


FP_ELEMENT_MODELS = ("aligned", "parallel")


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """An analytic iso-area model of FP-INT GeMM hardware, per token.

  Every number is a field below (configs/search.py's `cost` block sets them), every rule is
  here; `anda_jax.cost_assumptions` tables each with its source or "assumed" for the reports.

  Area unit: one *lane*, a 1-bit x 4-bit AND-and-accumulate slice of a bit-serial
  dot-product unit. Every format gets the same number of lanes (`lanes`, iso-area) and
  spends this many lane-cycles on one multiply-accumulate, so a speedup here is a ratio of
  throughput per area (the paper's "area efficiency", not its speedup, which compares
  designs of different area). A weight of w bits is ceil(w / 4) slices, each its own
  lane-cycles (`weight_bits` for the layers' GeMMs, `head_weight_bits` for the LM head):

  - Anda / block FP with M mantissa bits: M lane-cycles. The unit streams one bit-plane
    per cycle, MSB first (docs/formats.md, section 4); the sign is applied in the same cycle (P_p uses
    (1 - 2 sgn) b q), and the per-block shift-and-add by 2^(E-M+1), d and z is amortised
    over a block of >= 32 elements, so it is not counted. Cycles are proportional to the
    planes processed.
  - Integer elements (MXINT8, per-token INT8): sign and magnitude, the sign applied in the
    plane's cycle as for Anda: |k| <= 127 is 7 planes. (A two's complement unit would stream
    8; the compressor turns the code into sign and magnitude.)
  - FP elements (MXFP8/6/4, NVFP4, per-token FP8), `fp_elements` (reports show both):
    "aligned" (default): the same bit-serial unit. An element with m stored mantissa bits and
    binades emin..emax, aligned to its block's (token's) scale, is an integer of
    m + 1 + emax - emin bits (E2M1 4, E2M3 6, E3M2 9, E4M3 18, E5M2 32): that many planes.
    This is how the unit runs FP16 too (FIGNA-like pre-alignment, below).
    "parallel": a bit-parallel FP-element x INT4 multiplier: the (m + 1)-bit significand
    times 4 bits is m + 1 lanes of area, plus a shifter that aligns the product to the
    block, `fp_shift_lanes_per_exponent_bit` lanes per exponent bit (one barrel-shifter
    stage per exponent bit; 1 lane per stage is a guess that favours the FP formats); one
    MAC per cycle.
  - Block and token scales (MX's E8M0, NVFP4's E4M3 block scale times its float32 token
    scale, the per-token formats' float32 scale) are applied once per partial sum of a
    block or token, like Anda's shared exponent: amortised, not counted. NVFP4's blocks of
    16 with a 4-bit-significand scale multiply are where this favours a format most.
  - FIGNA-like FP-INT: FP16 activations pre-aligned to their group's maximum exponent
    into a `figna_mantissa_bits`-bit integer, multiplied bit-parallel by INT4 codes: an
    M x 4 integer multiplier has the area of M lanes and does one MAC per cycle, so it
    also costs `figna_mantissa_bits` lane-cycles per MAC. A site left in FP16 (M = 0) on
    the Anda unit runs this way.
  - GPU-like FP16 x FP16: weights dequantized to FP16 and an FP16 FMA, whatever their
    stored bits. We charge its 11 x 11-bit significand multiplier only: 121 bit-products =
    121 / 4 = 30.25 lanes of area per MAC/cycle (`fp16_fma_lanes`). Exponent add, alignment
    shifter and normaliser are left out, which favours the baseline; this is the least
    certain number of the model, an assumption and not a measurement, and every speedup
    over FP16 is proportional to it while the unit is compute-bound.

  The LM head (`lm_head`, on by default): d_model x vocab MACs per token, a site of its own.
  No precision configuration quantizes its input (the evaluated models keep it in floating
  point), so it is FP16 unless `head_mantissa_bits` > 0 says otherwise: FP16 runs FIGNA-like
  on the FP-INT designs and FP16 x FP16 on the GPU-like one. With `head_mantissa_bits` = M > 0
  the head's input takes the format of the `qkv` site (both are a norm's d_model-wide output),
  Anda at that M; a modeled figure only, no evaluated row quantizes the head. Its weights
  have `head_weight_bits` bits (SmolLM2's GGUF stores its tied head as Q8_0: two slices per
  MAC on the FP-INT designs, one FMA on the GPU-like one).

  Memory: per token, each GeMM's input activation is written once by its producer and
  read once by the GeMM (2 x elements x stored bits), and the weights (plus one 16-bit scale
  and one 16-bit offset per `weight_group_size` weights) are read once per
  `tokens_per_weight_read` tokens (the batch or prefill length that shares one weight
  fetch from the on-chip buffer; 1 is batch-1 decoding, where weights dominate). Memory is
  an on-chip buffer of `memory_bits_per_cycle` bandwidth; a bit moved costs
  `energy_per_memory_bit` lane-ops (SRAM access energy per bit is one to two orders above a
  1 x 4-bit add; 20 is an assumption). Stored bits: FP16 16; Anda/BFP 1 + M + e/G; the
  other formats `anda_jax.numerics.baselines.storage_bits` (element + block scale share, + a float32
  per-token scale over K for NVFP4 and the per-token formats); FIGNA-like stores FP16 and
  aligns inside the unit.

  Compressor (every grouped or scaled format; not FP16): the unit that turns FP16 producer
  outputs into the format (max-exponent or amax reduction, scale, round, pack) does, per
  element, one compare plus one op per output bit (sign and the M, or element bits - 1,
  magnitude bits); NVFP4's and the per-token formats' per-token scale is one division per
  token, amortised. It processes `compressor_elements_per_cycle` elements per cycle.

  Time: compute, memory and compressor are pipelined, so cycles per token are the max of
  the three. Energy per token, in units of one lane-op: lane-cycles x 1 + memory bits x
  `energy_per_memory_bit` + compressor ops x `energy_per_compressor_op`. FP16 FMA
  energy scales with its area like the others (lane-cycles).
  """

  lanes: int = 16384
  memory_bits_per_cycle: float = 2048.0
  tokens_per_weight_read: int = 256
  fp16_fma_lanes: float = 11 * 11 / 4
  figna_mantissa_bits: int = FP16_ALIGNED_MANTISSA_BITS
  weight_bits: int = 4
  weight_group_size: int = 32
  compressor_elements_per_cycle: float = 64.0
  energy_per_memory_bit: float = 20.0
  energy_per_compressor_op: float = 1.0
  fp_elements: str = "aligned"
  fp_shift_lanes_per_exponent_bit: float = 1.0
  lm_head: bool = True
  head_mantissa_bits: int = 0
  head_weight_bits: int = 8

  def __post_init__(self):
    for name in ("lanes", "tokens_per_weight_read", "figna_mantissa_bits", "weight_bits",
                 "weight_group_size", "head_weight_bits"):
      check_int(name, getattr(self, name), 1)
    check_int("head_mantissa_bits", self.head_mantissa_bits, 0, precision_lib.MAX_MANTISSA_BITS,
              " (0: FP16)")
    if not isinstance(self.lm_head, bool):
      raise ValueError(f"lm_head={self.lm_head!r} is invalid: must be True or False")
    for name, lo in (("memory_bits_per_cycle", 0), ("fp16_fma_lanes", 0),
                     ("compressor_elements_per_cycle", 0), ("energy_per_memory_bit", None),
                     ("energy_per_compressor_op", None), ("fp_shift_lanes_per_exponent_bit", None)):
      value = getattr(self, name)
      if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
          or not np.isfinite(value) or value < 0 or (lo == 0 and value == 0)):
        raise ValueError(f"{name}={value!r} is invalid: must be a finite number "
                         + ("> 0" if lo == 0 else ">= 0"))
    if self.fp_elements not in FP_ELEMENT_MODELS:
      raise ValueError(f"fp_elements={self.fp_elements!r} is invalid: must be one of "
                       f"{FP_ELEMENT_MODELS}")

  def element_lanes(self, element: str) -> float:
    """Lane-cycles per MAC of an element format of `anda_jax.numerics.baselines` (see the docstring)."""
    e = baselines.element_spec(element)
    aligned = e.mantissa + 1 + e.emax - e.emin  # the magnitude as an integer on the block's grid
    if element.startswith("int") or self.fp_elements == "aligned":
      return float(aligned)
    return e.mantissa + 1 + self.fp_shift_lanes_per_exponent_bit * (e.bits - 1 - e.mantissa)

  def site(self, fmt: Any, mantissa_bits: int, row_length: int) -> tuple[float, float, float]:
    """(lane-cycles per MAC, stored bits per element, compressor output bits per element
    besides the sign) of one GeMM's activation in `fmt`: Anda at `mantissa_bits`, or any format
    of `anda_jax.numerics.baselines`, on tokens of `row_length` (the contraction length K), with
    4-bit weights; a FormatChoice as the format its value (`mantissa_bits`) chooses."""
    fmt = fmt.chosen(mantissa_bits) if isinstance(fmt, baselines.FormatChoice) else fmt
    stored = baselines.storage_bits(fmt, *_m_or_row(fmt, mantissa_bits, row_length))
    if isinstance(fmt, AndaFormat):
      return float(mantissa_bits), stored, float(mantissa_bits)
    element = "fp4_e2m1" if isinstance(fmt, baselines.NVFP4Format) else fmt.element
    return self.element_lanes(element), stored, float(baselines.element_spec(element).bits - 1)

  def sites(self, shape: ModelShape) -> dict[str, np.ndarray]:
    """Per-token work of each site, float64 [S] (the searched sites, then the head if
    `lm_head`): macs, elements (of its input activation), weight_bits (read per MAC: the
    weight and its group's share of scale and offset), weight_slices (ceil(bits / 4))."""
    macs, elems = shape.macs().ravel(), shape.activation_elements().ravel()
    bits = np.full(macs.shape, self.weight_bits)
    if self.lm_head:
      macs = np.append(macs, shape.head_macs())
      elems, bits = np.append(elems, shape.d_model), np.append(bits, self.head_weight_bits)
    return dict(macs=macs.astype(np.float64), elements=elems.astype(np.float64),
                weight_bits=bits + WEIGHT_GROUP_SCALE_BITS / self.weight_group_size,
                weight_slices=np.ceil(bits / LANE_WEIGHT_BITS))

  def cost(self, shape: ModelShape, lanes_per_mac: np.ndarray,
           stored_bits: np.ndarray, compressed_bits: np.ndarray | None) -> dict[str, float]:
    """Cycles and energy per token for per-site lane-cycles per MAC and stored bits, each [S]
    as `sites` orders them: the n_layers x 4 searched sites row-major, then the head if
    `lm_head` (lane-cycles per MAC with the weight slices already counted).

    `compressed_bits` [S] are the magnitude bits the compressor writes per element, NaN where
    an activation does not pass the compressor (stays FP16); None: no compressor.
    Returns compute/memory/compressor cycles, cycles, lane-cycles, memory bits, energy."""
    s = self.sites(shape)
    macs, elems = s["macs"], s["elements"]
    lane_cycles = float((macs * np.asarray(lanes_per_mac, np.float64)).sum())
    memory_bits = float(2 * (elems * np.asarray(stored_bits, np.float64)).sum()
                        + (macs * s["weight_bits"]).sum() / self.tokens_per_weight_read)
    compressed = (np.zeros(elems.shape, bool) if compressed_bits is None
                  else ~np.isnan(np.asarray(compressed_bits, np.float64)))
    comp_ops = float((elems * (2 + np.where(compressed, compressed_bits, 0)))[compressed].sum())
    comp_cycles = float(elems[compressed].sum() / self.compressor_elements_per_cycle)
    compute_cycles = lane_cycles / self.lanes
    memory_cycles = memory_bits / self.memory_bits_per_cycle
    return dict(
        compute_cycles=compute_cycles, memory_cycles=memory_cycles,
        compressor_cycles=comp_cycles,
        cycles=max(compute_cycles, memory_cycles, comp_cycles),
        lane_cycles=lane_cycles, memory_bits=memory_bits,
        energy=lane_cycles + memory_bits * self.energy_per_memory_bit
        + comp_ops * self.energy_per_compressor_op)

  def run(self, shape: ModelShape, precision: Any, fmt: Any = AndaFormat()) -> dict[str, float]:
    """The activations in `fmt` (one format, or one per type as in ProductSpec) where
    `precision` > 0 (for Anda: M), FP16 run FIGNA-like where it is 0; the head as the
    docstring says (FP16 unless `head_mantissa_bits`, then `qkv`'s format)."""
    p = layer_precision(precision, shape.n_layers)
    fmts, k = _per_type(fmt), shape.layer_activation_elements()
    sites = [(fmts[t], int(m), int(k[t])) for (_, t), m in np.ndenumerate(p)]
    if self.lm_head:
      sites.append((fmts[0], self.head_mantissa_bits, shape.d_model))
    lanes = np.full(len(sites), float(self.figna_mantissa_bits))
    stored = np.full(len(sites), float(FP16_BITS))
    compressed = np.full(len(sites), np.nan)
    for i, (f, m, row_length) in enumerate(sites):
      if m:
        lanes[i], stored[i], compressed[i] = self.site(f, m, row_length)
    return self.cost(shape, lanes * self.sites(shape)["weight_slices"], stored, compressed)

  def anda(self, shape: ModelShape, precision: Any, group_size: int = 64,
           exponent_bits: int = 8) -> dict[str, float]:
    """Anda with a per-type (or per-layer) M; float modules run FIGNA-like."""
    return self.run(shape, precision, AndaFormat(group_size, exponent_bits))

  def fp16_gpu(self, shape: ModelShape) -> dict[str, float]:
    """GPU-like: weights dequantized to FP16, FP16 x FP16 FMAs (the head's too)."""
    full = np.ones(len(self.sites(shape)["macs"]))
    return self.cost(shape, full * self.fp16_fma_lanes, full * FP16_BITS, None)

  def figna(self, shape: ModelShape) -> dict[str, float]:
    """FIGNA-like: FP16 stored, pre-aligned to a long integer mantissa in the unit."""
    s = self.sites(shape)
    full = np.ones(len(s["macs"]))
    return self.cost(shape, self.figna_mantissa_bits * s["weight_slices"], full * FP16_BITS,
                     None)

  def mxint8(self, shape: ModelShape) -> dict[str, float]:
    """OCP MXINT8 at every site: groups of 32, 8-bit elements, one 8-bit shared scale."""
    return self.run(shape, np.ones(4, np.int32), baselines.MXFormat("int8"))

  def bfp(self, shape: ModelShape, mantissa_bits: int, group_size: int = 64,
          exponent_bits: int = 8) -> dict[str, float]:
    """Block floating point with one uniform M (= Anda with every type at M)."""
    return self.anda(shape, np.full(4, mantissa_bits, np.int32), group_size, exponent_bits)

ACCELERATOR_FIELDS = tuple(f.name for f in dataclasses.fields(Accelerator))


def accelerator(settings: Mapping[str, Any] | None = None) -> Accelerator:
  """An Accelerator from a mapping of its fields (a config's `cost` block); a field that is
  None keeps its default. ValueError naming an unknown field or a bad value."""
  settings = {k: v for k, v in dict(settings or {}).items() if v is not None}
  unknown = sorted(set(settings) - set(ACCELERATOR_FIELDS))
  if unknown:
    raise ValueError(f"cost settings {unknown} are invalid: the fields of Accelerator are "
                     f"{ACCELERATOR_FIELDS}")
  try:
    return Accelerator(**settings)
  except ValueError as e:
    raise ValueError(f"cost.{e}") from None


def summarize(shape: ModelShape, precision: Any, group_size: int = 64,
              exponent_bits: int = 8, hw: Accelerator | None = None) -> dict[str, float]:
  """Every cost figure of one precision configuration, with ratios vs GPU-like FP16.

  mean_m, storage_bits, bops and bops_saving are over the four searched sites (docs/formats.md,
  section 9); cycles, energy and the ratios are `hw`'s, with the LM head if `hw.lm_head`
  (head_share: its share of the MACs). speedup_vs_fp16 and energy_saving_vs_fp16 are ratios
  baseline / Anda (> 1 is better).
  """
  hw = hw or Accelerator()
  anda, fp16 = hw.anda(shape, precision, group_size, exponent_bits), hw.fp16_gpu(shape)
  figna = hw.figna(shape)
  b = bops(shape, precision, hw.weight_bits)
  return dict(
      mean_m=mean_mantissa_bits(shape, precision),
      storage_bits=storage_bits(shape, precision, group_size, exponent_bits),
      bops=b, bops_saving=1.0 - b / fp16_bops(shape, hw.weight_bits),
      head_share=shape.head_macs() / hw.sites(shape)["macs"].sum() if hw.lm_head else 0.0,
      cycles=anda["cycles"], energy=anda["energy"],
      speedup_vs_fp16=fp16["cycles"] / anda["cycles"],
      energy_saving_vs_fp16=fp16["energy"] / anda["energy"],
      speedup_vs_figna=figna["cycles"] / anda["cycles"],
      energy_saving_vs_figna=figna["energy"] / anda["energy"])


def bound(c: dict[str, float]) -> str:
  """Which of compute, memory and compressor sets the cycles of an `Accelerator.cost` result."""
  return max(("compute", "memory", "compressor"), key=lambda k: c[f"{k}_cycles"])


def compare_formats(shape: ModelShape, precision: Any, group_size: int = 64,
                    exponent_bits: int = 8, hw: Accelerator | None = None,
                    uniform_m: int | None = None,
                    other_formats: Sequence[Any] | None = None) -> list[dict[str, Any]]:
  """Rows for a side-by-side table: the same model in each activation format.

  Rows: GPU-like FP16xFP16 (the baseline of the ratios), FIGNA-like FP16, each format of
  `other_formats` (formats of `anda_jax.numerics.baselines`, at the sites where `precision` > 0, FP16 at
  the others; default MXINT8), block FP at one uniform M (by default ceil of Anda's M̄: the
  smallest uniform length that is no cheaper than the Anda configuration in planes), and Anda
  (this configuration). Each row: its `format` (label; for `other_formats`, the format's name
  in anda_jax.numerics.baselines.FORMAT_NAMES), lane_cycles_per_mac (the MAC-weighted mean of the per-MAC
  compute cost over every site `hw` counts, the head included: for FP16xFP16 the FMA's area in
  lanes), storage_bits (mean per activation element of the four searched sites), memory_bits
  (moved per token: activations written and read, weights), cycles, energy, what bounds the
  cycles, and the ratios vs FP16xFP16.
  """
  hw = hw or Accelerator()
  if uniform_m is None:
    uniform_m = int(np.ceil(mean_mantissa_bits(shape, precision)))
  p = layer_precision(precision, shape.n_layers)
  on = (p != 0).astype(np.int32)
  uniform = np.full(4, uniform_m, np.int32)
  others = (baselines.MXFormat("int8"),) if other_formats is None else tuple(other_formats)
  rows = [
      ("FP16xFP16 (GPU-like)", hw.fp16_gpu(shape), FP16_BITS),
      (f"FP-INT, {hw.figna_mantissa_bits}-bit aligned (FIGNA-like)", hw.figna(shape), FP16_BITS),
      *((baselines.format_name(f), hw.run(shape, on, f), format_storage_bits(shape, on, f))
        for f in others),
      (f"BFP, uniform M={uniform_m}", hw.bfp(shape, uniform_m, group_size, exponent_bits),
       storage_bits(shape, uniform, group_size, exponent_bits)),
      ("Anda (this config)", hw.anda(shape, p, group_size, exponent_bits),
       storage_bits(shape, p, group_size, exponent_bits)),
  ]
  base, macs = rows[0][1], float(hw.sites(shape)["macs"].sum())
  return [dict(format=name, lane_cycles_per_mac=c["lane_cycles"] / macs, storage_bits=float(sb),
               memory_bits=c["memory_bits"], cycles=c["cycles"], energy=c["energy"],
               bound=bound(c), speedup_vs_fp16=base["cycles"] / c["cycles"],
               energy_saving_vs_fp16=base["energy"] / c["energy"])
          for name, c, sb in rows]


def compare_formats_by_mode(*args, hw: Accelerator | None = None,
                            **kwargs) -> dict[str, list[dict[str, Any]]]:
  """`compare_formats` under each of FP_ELEMENT_MODELS ({fp_elements: rows}), the rest of `hw`
  as given: only the rows of FP elements differ."""
  hw = hw or Accelerator()
  return {mode: compare_formats(*args, hw=dataclasses.replace(hw, fp_elements=mode), **kwargs)
          for mode in FP_ELEMENT_MODELS}


def format_table(rows_by_mode: Mapping[str, list[dict[str, Any]]],
                 measured: dict[str, Sequence[str]] | None = None) -> str:
  """A markdown table of `compare_formats_by_mode` rows: storage and memory bits, then the
  lane-cycles per MAC, speedup and energy saving vs FP16 in each FP-element model; with
  `measured` (column name -> one cell per row, e.g. measured perplexities), those columns come
  first after the format."""
  measured, modes = measured or {}, tuple(rows_by_mode)
  per_mode = [f"{what}, {mode}" for what in ("lane-cycles / MAC", "speedup vs FP16",
                                              "energy saving vs FP16") for mode in modes]
  lines = ["| format | " + "".join(f"{name} | " for name in measured) + "storage bits | "
           "memory bits / token | " + " | ".join(per_mode) + " |",
           "|---|" + "---:|" * (len(measured) + 2 + len(per_mode))]
  rows = list(zip(*rows_by_mode.values()))
  lines += [f"| {r[0]['format']} | " + "".join(f"{cells[i]} | " for cells in measured.values())
            + f"{cost_cells(r)} |" for i, r in enumerate(rows)]
  return "\n".join(lines)


def cost_cells(rows: Sequence[dict[str, Any]]) -> str:
  """The cost columns of one format's `compare_formats` rows, one per FP-element model, as
  markdown cells (without the outer bars)."""
  cells = [f"{rows[0]['storage_bits']:.2f}", f"{rows[0]['memory_bits']:.4g}"]
  cells += [f"{r['lane_cycles_per_mac']:.2f}" for r in rows]
  cells += [f"{r['speedup_vs_fp16']:.2f}x" for r in rows]
  cells += [f"{r['energy_saving_vs_fp16']:.2f}x" for r in rows]
  return " | ".join(cells)
