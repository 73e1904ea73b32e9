"""Hardware cost of a precision configuration (spec section 6) and format comparisons.

Everything here is plain numpy on plain numbers: a model enters only through its shapes
(`ModelShape`, built from numbers, a config or a model's `.config`), so the cost model
needs no weights and runs no JAX (configurations are validated by anda_jax.precision).

Three layers of cost, from exact to modelled:

1. Counts that follow from the shapes alone: MACs per token by module type, activation
   elements per token, mean mantissa bits M̄, activation storage bits, BOPs.
2. `Accelerator`: an analytic bit-serial FP-INT accelerator in the spirit of the Anda
   paper. Its assumptions are written down in its docstring; change the numbers there,
   not in the code, when you have better ones.
3. `compare_formats`: the same workload on the same silicon area with other activation
   formats (GPU-like FP16xFP16, FIGNA-like pre-aligned FP-INT, MXINT8, uniform block FP).

Conventions: a precision configuration is an int array [4] or [n_layers, 4] over
("qkv", "o", "up", "down"); M = 0 means the activation stays FP16 (spec section 5).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from anda_jax import precision as precision_lib
from anda_jax.format import check_int
from anda_jax.precision import MODULE_TYPES

FAMILIES = ("llama", "opt")

# An activation left in floating point (M = 0) is FP16: 16 bits stored and streamed.
FP16_BITS = 16
# A FP16 activation pre-aligned to its group's maximum exponent needs at most 16
# magnitude bits (11-bit significand plus the alignment shifts that matter, spec §4).
# This is the mantissa length we charge a float (M = 0) module on the bit-serial unit,
# and the default mantissa length of the FIGNA-like baseline.
FP16_ALIGNED_MANTISSA_BITS = 16


# --------------------------------------------------------------------------- shapes


@dataclasses.dataclass(frozen=True)
class ModelShape:
  """The shapes of a decoder-only transformer that the FP-INT GeMMs depend on.

  LLaMA family: q/k/v/o projections with grouped-query attention and a gated MLP
  (gate_proj and up_proj both read the `up` activation). OPT family: the same four
  projections (n_kv_heads == n_heads, n_heads * head_dim == d_model) and a plain MLP
  (fc1 reads `up`, fc2 reads `down`). Attention's activation-activation products and
  the LM head are not FP-INT GeMMs and are not counted (spec §5).
  """

  n_layers: int
  d_model: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  d_ff: int
  family: str = "llama"

  def __post_init__(self):
    for name in ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff"):
      check_int(name, getattr(self, name), 1)
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
    n_heads, missing head_dim to d_model // n_heads.
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
        d_ff=int(get("d_ff")), family=str(family).lower())

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


# ------------------------------------------------------------------ spec §6 measures


def layer_precision(config: Any, n_layers: int) -> np.ndarray:
  """int32 numpy [n_layers, 4] from [4] or [n_layers, 4] (validated by anda_jax.precision)."""
  return np.asarray(precision_lib.layer_precision(np.asarray(config), n_layers))


def _float_as(p: np.ndarray, value: float) -> np.ndarray:
  return np.where(p == 0, value, p).astype(np.float64)


def mean_mantissa_bits(shape: ModelShape, precision: Any) -> float:
  """M̄ = Σ MAC_t·M_t / Σ MAC_t (spec §6); a float module counts as 16 aligned bits."""
  p = layer_precision(precision, shape.n_layers)
  macs = shape.macs()
  return float((macs * _float_as(p, FP16_ALIGNED_MANTISSA_BITS)).sum() / macs.sum())


def storage_bits(shape: ModelShape, precision: Any, group_size: int = 64,
                 exponent_bits: int = 8) -> float:
  """Mean stored bits per activation element: 1 + M + exponent_bits / G (spec §6).

  Averaged over the activation elements each GeMM type reads per token (not over
  MACs: this is what sits in memory). A float module stores FP16: 16 bits.
  """
  p = layer_precision(precision, shape.n_layers)
  bits = np.where(p == 0, FP16_BITS, 1 + p + exponent_bits / group_size)
  elems = shape.activation_elements()
  return float((elems * bits).sum() / elems.sum())


def bops(shape: ModelShape, precision: Any, weight_bits: int = 4) -> float:
  """Bit operations per token: Σ MAC_t · (M_t + 1) · w_bits (spec §6).

  A float module is charged FP16's 16 activation bits.
  """
  p = layer_precision(precision, shape.n_layers)
  act_bits = np.where(p == 0, FP16_BITS, p + 1)
  return float((shape.macs() * act_bits).sum() * weight_bits)


def fp16_bops(shape: ModelShape, weight_bits: int = 4) -> float:
  """BOPs per token with every activation FP16 (16 x w_bits per MAC)."""
  return float(shape.macs().sum() * FP16_BITS * weight_bits)


# ------------------------------------------------------------ accelerator model


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """An analytic iso-area model of FP-INT GeMM hardware, per token.

  Area unit: one *lane*, a 1-bit x 4-bit AND-and-accumulate slice of a bit-serial
  dot-product unit. Every format gets the same number of lanes (`lanes`, iso-area) and
  spends this many lane-cycles on one multiply-accumulate:

  - Anda / block FP with M mantissa bits: M lane-cycles. The unit streams one bit-plane
    per cycle, MSB first (spec §4); the sign is applied in the same cycle (P_p uses
    (1 - 2 sgn) b q), and the per-block shift-and-add by 2^(E-M+1), d and z is amortised
    over a block of >= 32 elements, so it is not counted. Cycles are proportional to the
    planes processed.
  - FIGNA-like FP-INT: FP16 activations pre-aligned to their group's maximum exponent
    into a `figna_mantissa_bits`-bit integer, multiplied bit-parallel by INT4 codes: an
    M x 4 integer multiplier has the area of M lanes and does one MAC per cycle, so it
    also costs `figna_mantissa_bits` lane-cycles per MAC.
  - MXINT8: 8-bit two's complement elements x INT4: 8 lane-cycles per MAC.
  - GPU-like FP16 x FP16: weights dequantized to FP16 and an FP16 FMA. We charge its
    11 x 11-bit significand multiplier only: 121 bit-products = 121 / 4 = 30.25 lanes
    of area per MAC/cycle (`fp16_fma_lanes`). Exponent add, alignment shifter and
    normaliser are left out, which favours the baseline; this is the least certain
    number of the model, an assumption and not a measurement.

  Memory: per token, each GeMM's input activation is written once by its producer and
  read once by the GeMM (2 x elements x stored bits), and the INT4 weights (plus one
  16-bit scale and one 16-bit offset per `weight_group_size` weights) are read once per
  `tokens_per_weight_read` tokens (the batch or prefill length that shares one weight
  fetch from the on-chip buffer). Memory is an on-chip buffer of
  `memory_bits_per_cycle` bandwidth; a bit moved costs `energy_per_memory_bit` lane-ops
  (SRAM access energy per bit is one to two orders above a 1 x 4-bit add; 20 is an
  assumption). Stored bits: FP16 16; Anda/BFP 1 + M + e/G;
  MXINT8 8 + 8/32; FIGNA-like stores FP16 and aligns inside the unit.

  Compressor (Anda, BFP, MXINT8 only): the unit that turns FP16 producer outputs into the
  grouped format (max-exponent reduction, shift, bit-plane transpose) does, per element,
  one exponent compare plus one op per output bit (sign and M); it processes
  `compressor_elements_per_cycle` elements per cycle.

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

  def cost(self, shape: ModelShape, lanes_per_mac: np.ndarray,
           stored_bits: np.ndarray, compressed_bits: np.ndarray | None) -> dict[str, float]:
    """Cycles and energy per token for per-[layer, type] lane-cycles and stored bits.

    `compressed_bits` [n_layers, 4] are the bits the compressor writes per element
    (None: no compressor). Returns compute/memory/compressor cycles, cycles, energy.
    """
    macs, elems = shape.macs().astype(np.float64), shape.activation_elements()
    lane_cycles = float((macs * lanes_per_mac).sum())
    weight_bits = macs.sum() * (self.weight_bits + 32 / self.weight_group_size)
    memory_bits = float(2 * (elems * stored_bits).sum()
                        + weight_bits / self.tokens_per_weight_read)
    comp_ops = 0.0 if compressed_bits is None else float((elems * (2 + compressed_bits)).sum())
    comp_cycles = 0.0 if compressed_bits is None else float(
        elems.sum() / self.compressor_elements_per_cycle)
    compute_cycles = lane_cycles / self.lanes
    memory_cycles = memory_bits / self.memory_bits_per_cycle
    return dict(
        compute_cycles=compute_cycles, memory_cycles=memory_cycles,
        compressor_cycles=comp_cycles,
        cycles=max(compute_cycles, memory_cycles, comp_cycles),
        memory_bits=memory_bits,
        energy=lane_cycles + memory_bits * self.energy_per_memory_bit
        + comp_ops * self.energy_per_compressor_op)

  def anda(self, shape: ModelShape, precision: Any, group_size: int = 64,
           exponent_bits: int = 8) -> dict[str, float]:
    """Anda with a per-type (or per-layer) M; float modules run FIGNA-like."""
    p = layer_precision(precision, shape.n_layers)
    is_float = p == 0
    lanes = np.where(is_float, self.figna_mantissa_bits, p)
    stored = np.where(is_float, FP16_BITS, 1 + p + exponent_bits / group_size)
    return self.cost(shape, lanes, stored, np.where(is_float, 0, p))

  def fp16_gpu(self, shape: ModelShape) -> dict[str, float]:
    """GPU-like: INT4 weights dequantized to FP16, FP16 x FP16 FMAs."""
    full = np.ones((shape.n_layers, 4))
    return self.cost(shape, full * self.fp16_fma_lanes, full * FP16_BITS, None)

  def figna(self, shape: ModelShape) -> dict[str, float]:
    """FIGNA-like: FP16 stored, pre-aligned to a long integer mantissa in the unit."""
    full = np.ones((shape.n_layers, 4))
    return self.cost(shape, full * self.figna_mantissa_bits, full * FP16_BITS, None)

  def mxint8(self, shape: ModelShape) -> dict[str, float]:
    """OCP MXINT8: groups of 32, 8-bit elements, one 8-bit shared scale."""
    full = np.ones((shape.n_layers, 4))
    return self.cost(shape, full * 8, full * (8 + 8 / 32), full * 7)

  def bfp(self, shape: ModelShape, mantissa_bits: int, group_size: int = 64,
          exponent_bits: int = 8) -> dict[str, float]:
    """Block floating point with one uniform M (= Anda with every type at M)."""
    return self.anda(shape, np.full(4, mantissa_bits, np.int32), group_size, exponent_bits)


def summarize(shape: ModelShape, precision: Any, group_size: int = 64,
              exponent_bits: int = 8, hw: Accelerator | None = None) -> dict[str, float]:
  """Every cost figure of one precision configuration, with ratios vs GPU-like FP16.

  speedup_vs_fp16 and energy_saving_vs_fp16 are ratios baseline / Anda (> 1 is better).
  """
  hw = hw or Accelerator()
  anda, fp16 = hw.anda(shape, precision, group_size, exponent_bits), hw.fp16_gpu(shape)
  figna = hw.figna(shape)
  b = bops(shape, precision, hw.weight_bits)
  return dict(
      mean_m=mean_mantissa_bits(shape, precision),
      storage_bits=storage_bits(shape, precision, group_size, exponent_bits),
      bops=b, bops_saving=1.0 - b / fp16_bops(shape, hw.weight_bits),
      cycles=anda["cycles"], energy=anda["energy"],
      speedup_vs_fp16=fp16["cycles"] / anda["cycles"],
      energy_saving_vs_fp16=fp16["energy"] / anda["energy"],
      speedup_vs_figna=figna["cycles"] / anda["cycles"],
      energy_saving_vs_figna=figna["energy"] / anda["energy"])


def compare_formats(shape: ModelShape, precision: Any, group_size: int = 64,
                    exponent_bits: int = 8, hw: Accelerator | None = None,
                    uniform_m: int | None = None) -> list[dict[str, Any]]:
  """Rows for a side-by-side table: the same model in each activation format.

  lane_cycles_per_mac is the MAC-weighted mean of the per-MAC compute cost (for Anda: M̄,
  the planes streamed; for FP16xFP16: the FMA's area in lanes).
  The block-FP row uses one uniform M, by default ceil of Anda's M̄ (the smallest uniform
  length that is no cheaper than the Anda configuration in planes).
  """
  hw = hw or Accelerator()
  if uniform_m is None:
    uniform_m = int(np.ceil(mean_mantissa_bits(shape, precision)))
  n = shape.n_layers
  rows = [
      ("FP16xFP16 (GPU-like)", hw.fp16_gpu(shape), FP16_BITS, hw.fp16_fma_lanes),
      (f"FP-INT, {hw.figna_mantissa_bits}-bit aligned (FIGNA-like)", hw.figna(shape),
       FP16_BITS, float(hw.figna_mantissa_bits)),
      ("MXINT8", hw.mxint8(shape), 8 + 8 / 32, 8.0),
      (f"BFP, uniform M={uniform_m}", hw.bfp(shape, uniform_m, group_size, exponent_bits),
       storage_bits(shape, np.full(4, uniform_m), group_size, exponent_bits),
       float(uniform_m)),
      ("Anda (this config)", hw.anda(shape, precision, group_size, exponent_bits),
       storage_bits(shape, layer_precision(precision, n), group_size, exponent_bits),
       mean_mantissa_bits(shape, precision)),
  ]
  base = rows[0][1]
  return [dict(format=name, lane_cycles_per_mac=planes, storage_bits=float(sb), cycles=c["cycles"],
               energy=c["energy"], speedup_vs_fp16=base["cycles"] / c["cycles"],
               energy_saving_vs_fp16=base["energy"] / c["energy"])
          for name, c, sb, planes in rows]


def format_table(rows: list[dict[str, Any]]) -> str:
  """A markdown table of `compare_formats` rows."""
  lines = ["| format | lane-cycles / MAC | storage bits | cycles / token | speedup vs FP16 "
           "| energy saving vs FP16 |", "|---|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['format']} | {r['lane_cycles_per_mac']:.2f} | {r['storage_bits']:.2f} | "
                 f"{r['cycles']:.4g} | {r['speedup_vs_fp16']:.2f}x | "
                 f"{r['energy_saving_vs_fp16']:.2f}x |")
  return "\n".join(lines)
