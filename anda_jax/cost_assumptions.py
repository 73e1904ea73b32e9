"""What the modeled costs of `anda_jax.cost.Accelerator` rest on, and how they move with it.

Every number of the model is a field of `Accelerator` or a rule of its docstring; ASSUMPTIONS
and RULES give each one's meaning and source ("assumed" where it is not derived from anything),
and the search reports print them as one table (`assumptions_table`). The model is not
calibrated against hardware, so the reports also show how the headline ratios move:
`lanes_table` over the area charged for the FP16 baseline's FMA (the least certain number),
`what_if_table` with one other assumption changed at a time, and `paper_table` next to the
Anda paper's reported averages, with what differs between the two setups. The first two take
any activation format in place of Anda (`fmt`: a search among formats, a baselines.FormatChoice),
and `configuration_rows` gives configurations in any format the rows of cost.format_table.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from anda_jax import cost
from anda_jax.numerics.anda import AndaFormat

# field -> (what it is, its source; "assumed" where nothing fixes it).
ASSUMPTIONS = {
    "lanes": ("lanes (1-bit x 4-bit AND-accumulate slices) every design gets: iso-area",
              "assumed; the ratios do not depend on it while every design is compute-bound"),
    "memory_bits_per_cycle": ("on-chip buffer bandwidth, bits per cycle", "assumed"),
    "tokens_per_weight_read": (
        "tokens that share one fetch of the weights (batch or prefill length)",
        "assumed (a 256-token prefill or batch; 1 would be batch-1 decoding, below)"),
    "fp16_fma_lanes": (
        "area of one FP16 x FP16 FMA of the GPU-like baseline, in lanes",
        "assumed: the 11 x 11-bit significand multiplier alone, 121 bit-products / 4; exponent "
        "add, alignment and normalisation left out (favours the baseline); swept below"),
    "figna_mantissa_bits": (
        "magnitude bits of an FP16 activation pre-aligned to its group's largest exponent "
        "(FIGNA-like, and any FP16 site on the FP-INT unit)",
        "docs/formats.md, section 4: the 11-bit significand and the alignment shifts that matter"),
    "weight_bits": ("bits of the layers' weights",
                    "the evaluated models' INT4 weights (SmolLM2's GGUF: Q4_1; docs/formats.md, "
                    "section 3)"),
    "weight_group_size": ("weights per 16-bit scale and 16-bit offset",
                          "GGUF Q4_1 blocks of 32 (docs/formats.md, section 3)"),
    "compressor_elements_per_cycle": ("activation elements the compressor converts per cycle",
                                      "assumed"),
    "energy_per_memory_bit": (
        "energy of moving one bit to or from the buffer, in lane-ops",
        "assumed; an on-chip SRAM access costs one to two orders of magnitude more per bit than "
        "a small integer add (Horowitz, ISSCC 2014, 45 nm tables); ten times more below"),
    "energy_per_compressor_op": ("energy of one compressor op (compare, or one output bit), "
                                 "in lane-ops", "assumed"),
    "fp_elements": (
        "how FP elements (MXFP, NVFP4, FP8) run: aligned to the block's scale on the bit-serial "
        "unit, or on a bit-parallel significand multiplier with a shifter",
        "both are reported (the format tables' two column groups); this one sets the others"),
    "fp_shift_lanes_per_exponent_bit": (
        "area of the parallel FP element's aligning shifter, lanes per exponent bit",
        "assumed (one barrel-shifter stage per exponent bit at one lane: favours the FP "
        "formats)"),
    "lm_head": ("the LM head counted as a site of its own (d_model x vocab MACs per token)",
                "a choice, on by default (without it, below)"),
    "head_mantissa_bits": (
        "the head input's format: 0 keeps FP16, M > 0 is the qkv site's format at M",
        "the evaluated models keep the head's input in floating point; no evaluated row "
        "quantizes it"),
    "head_weight_bits": ("bits of the head's weights (ceil(bits / 4) slices per MAC on the "
                         "FP-INT designs)",
                         "SmolLM2's GGUF stores its tied head (token_embd) as Q8_0"),
}

# The rules of the model that are no field: (name, value, what it is, source).
RULES = (
    ("FP16 activation", f"{cost.FP16_BITS} bits", "stored and moved per element",
     "IEEE 754 binary16"),
    ("Anda / block FP compute", "M lane-cycles / MAC",
     "one bit-plane per cycle, the sign in the same cycle", "docs/formats.md, section 4"),
    ("INT8 element compute", "7 lane-cycles / MAC", "sign and magnitude planes",
     "assumed: the compressor emits sign and magnitude (two's complement would be 8)"),
    ("FP element compute, aligned", "m + 1 + emax - emin lane-cycles / MAC",
     "the element aligned to its block's scale: E2M1 4, E2M3 6, E3M2 9, E4M3 18, E5M2 32",
     "docs/formats.md, sections 5 to 7 (the elements)"),
    ("FP element compute, parallel", "m + 1 + shifter lanes, 1 MAC / cycle",
     "a bit-parallel significand x 4-bit multiplier", "assumed"),
    ("weight slices", f"ceil(bits / {cost.LANE_WEIGHT_BITS})",
     "lane-cycles per MAC are multiplied by it on the FP-INT designs",
     "the lane's definition (1 x 4 bits)"),
    ("scales and block shifts", "0", "amortised over the block or token, not counted",
     "assumed (favours NVFP4 most: blocks of 16)"),
    ("weight group share", f"{cost.WEIGHT_GROUP_SCALE_BITS} bits / weight_group_size",
     "read with each weight", "GGUF Q4_1 (docs/formats.md, section 3); applied to the head's "
     "Q8_0 too, which has 16 (0.5 bit per head weight more)"),
    ("activation traffic", "2 x elements x stored bits",
     "each GeMM input written once by its producer and read once", "assumed"),
    ("compressor ops", "2 + magnitude bits per element",
     "a compare, the sign and one op per magnitude bit", "assumed"),
    ("cycles per token", "max(compute, memory, compressor)", "the three are pipelined",
     "assumed"),
    ("energy per token", "lane-cycles + memory bits x energy_per_memory_bit + compressor ops x "
     "energy_per_compressor_op", "in lane-ops; an FP16 FMA's energy scales with its area",
     "assumed"),
)

# The Anda paper's reported averages over OPT, LLaMA and LLaMA-2 against a GPU-like FP-FP
# baseline (arXiv 2411.15982, abstract), quoted to set the model's figures next to them.
PAPER = dict(speedup=2.4, area_efficiency=4.0, energy_efficiency=3.1)
PAPER_SOURCE = "arXiv 2411.15982 (abstract): averages over OPT, LLaMA and LLaMA-2"

# The FP16 FMA areas of the sensitivity table: from a multiplier no larger than a 16-bit
# aligned FP-INT one to exponent, alignment and normaliser as large as the multiplier.
FP16_FMA_LANES = (16.0, 20.0, 30.25, 40.0, 60.0)

# One assumption changed at a time (`what_if`). Each brackets a default.
ASSUMPTION_VARIANTS = (
    ("lm_head=False: the four searched sites only (the model without the head)",
     dict(lm_head=False)),
    ("head_weight_bits=4: the head's weights in 4 bits like the layers'",
     dict(head_weight_bits=4)),
    ("tokens_per_weight_read=16: a small batch shares each weight fetch",
     dict(tokens_per_weight_read=16)),
    ("tokens_per_weight_read=1: batch-1 decoding, every weight read per token",
     dict(tokens_per_weight_read=1)),
    ("compressor_elements_per_cycle=2: a narrow compressor",
     dict(compressor_elements_per_cycle=2.0)),
    ("energy_per_memory_bit=200: memory energy ten times the default",
     dict(energy_per_memory_bit=200.0)),
)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], rule: str) -> list[str]:
  """Markdown lines of a table; `rule` is its separator line (the columns' alignment)."""
  return (["| " + " | ".join(header) + " |", rule]
          + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def assumptions_table(hw: cost.Accelerator) -> list[str]:
  """Markdown lines: every field of `hw` with its value, meaning and source, then the rules."""
  missing = set(cost.ACCELERATOR_FIELDS) - set(ASSUMPTIONS)
  if missing:  # a field nobody has explained: refuse rather than print an unsourced number
    raise ValueError(f"Accelerator fields {sorted(missing)} have no entry in ASSUMPTIONS")
  rows = [(f"`{name}`", f"{getattr(hw, name)!r}", *ASSUMPTIONS[name])
          for name in cost.ACCELERATOR_FIELDS]
  rows += list(RULES)
  return _table(("assumption", "value", "what it is", "source"), rows, "|---|---|---|---|")


def ratios(shape: cost.ModelShape, precision: Any, fmt: Any, hw: cost.Accelerator) -> dict:
  """`precision` in `fmt` on `hw` against the GPU-like FP16xFP16 baseline: speedup_vs_fp16,
  energy_saving_vs_fp16 (baseline / this, > 1 is better), and what bounds its cycles."""
  c, fp16 = hw.run(shape, precision, fmt), hw.fp16_gpu(shape)
  return dict(speedup_vs_fp16=fp16["cycles"] / c["cycles"],
              energy_saving_vs_fp16=fp16["energy"] / c["energy"], bound=cost.bound(c))


def configuration_rows(shape: cost.ModelShape, configs: Sequence[tuple[str, Any, Any]],
                       hw: cost.Accelerator) -> dict[str, list[dict[str, Any]]]:
  """{fp_elements model: rows} for cost.format_table: each (label, precision, format) of
  `configs` (FP16 where the precision is 0) under each of cost.FP_ELEMENT_MODELS, the rest of
  `hw` as is. A row: format (the label), storage_bits (mean per activation element over the
  four searched sites), memory_bits (per token), lane_cycles_per_mac (over every modeled site,
  the head included), speedup_vs_fp16 and energy_saving_vs_fp16."""
  out = {}
  for mode in cost.FP_ELEMENT_MODELS:
    h = dataclasses.replace(hw, fp_elements=mode)
    macs, rows = h.sites(shape)["macs"].sum(), []
    for label, precision, fmt in configs:
      c = h.run(shape, precision, fmt)
      rows.append(dict(format=label, storage_bits=cost.format_storage_bits(shape, precision, fmt),
                       memory_bits=c["memory_bits"], lane_cycles_per_mac=c["lane_cycles"] / macs)
                  | ratios(shape, precision, fmt, h))
    out[mode] = rows
  return out


def what_if(shape: cost.ModelShape, precision: Any, group_size: int = 64, exponent_bits: int = 8,
            hw: cost.Accelerator | None = None, variants=ASSUMPTION_VARIANTS,
            fmt: Any = None) -> list[dict[str, Any]]:
  """Anda's speedup and energy saving vs FP16xFP16 under `hw`, then under each variant
  (label, {field: value}) of it with those fields changed: rows of assumption, speedup_vs_fp16,
  energy_saving_vs_fp16, and what bounds Anda's and FP16's cycles. fmt: another format in
  place of Anda at (group_size, exponent_bits)."""
  hw, fmt = hw or cost.Accelerator(), fmt or AndaFormat(group_size, exponent_bits)
  rows = []
  for label, changes in (("as configured", {}),) + tuple(variants):
    h = dataclasses.replace(hw, **changes)
    r = ratios(shape, precision, fmt, h)
    rows.append(dict(assumption=label, speedup_vs_fp16=r["speedup_vs_fp16"],
                     energy_saving_vs_fp16=r["energy_saving_vs_fp16"], anda_bound=r["bound"],
                     fp16_bound=cost.bound(h.fp16_gpu(shape))))
  return rows


def what_if_table(*args, **kwargs) -> list[str]:
  """Markdown lines of `what_if`."""
  return _table(("assumption", "speedup vs FP16", "energy saving vs FP16",
                 "Anda bound by" if kwargs.get("fmt") is None else "bound by", "FP16 bound by"),
                [(r["assumption"], f"{r['speedup_vs_fp16']:.2f}x",
                  f"{r['energy_saving_vs_fp16']:.2f}x", r["anda_bound"], r["fp16_bound"])
                 for r in what_if(*args, **kwargs)], "|---|---:|---:|---|---|")


def lanes_table(shape: cost.ModelShape, configs: Sequence[tuple[str, Any]], group_size: int,
                exponent_bits: int, hw: cost.Accelerator,
                lanes: Sequence[float] = FP16_FMA_LANES, fmt: Any = None) -> list[str]:
  """Markdown lines: the speedup and energy saving vs FP16 of each (label, precision) of
  `configs` for each FP16 FMA area of `lanes` (and `hw`'s own, marked), the rest of `hw` as is.
  fmt: another format in place of Anda at (group_size, exponent_bits)."""
  fmt = fmt or AndaFormat(group_size, exponent_bits)
  header = ["fp16_fma_lanes"] + [f"{what}, {label}" for label, _ in configs
                                 for what in ("speedup", "energy saving")]
  rows = []
  for value in sorted(set(lanes) | {hw.fp16_fma_lanes}):
    h = dataclasses.replace(hw, fp16_fma_lanes=float(value))
    cells = [f"{value:g}" + (" (configured)" if value == hw.fp16_fma_lanes else "")]
    for _, precision in configs:
      r = ratios(shape, precision, fmt, h)
      cells += [f"{r['speedup_vs_fp16']:.2f}x", f"{r['energy_saving_vs_fp16']:.2f}x"]
    rows.append(cells)
  return _table(header, rows, "|" + "---:|" * len(header))


def lanes_for(target: float, shape: cost.ModelShape, precision: Any, group_size: int,
              exponent_bits: int, hw: cost.Accelerator) -> float | None:
  """The FP16 FMA area (lanes) at which Anda's modeled speedup vs FP16 equals `target`: the
  speedup is proportional to it while the FP16 design is compute-bound; None where that area
  would leave it bound by memory (no area gives `target` then)."""
  anda = hw.anda(shape, precision, group_size, exponent_bits)
  lanes = target * anda["cycles"] * hw.lanes / hw.sites(shape)["macs"].sum()
  fp16 = dataclasses.replace(hw, fp16_fma_lanes=lanes).fp16_gpu(shape)
  return lanes if cost.bound(fp16) == "compute" else None


def paper_table(shape: cost.ModelShape, precision: Any, group_size: int, exponent_bits: int,
                hw: cost.Accelerator, model: str = "this model") -> list[str]:
  """Markdown lines: the paper's reported averages (PAPER_SOURCE) next to the model's figures
  for one configuration of `model`, with the head as configured and without it, and what
  differs."""
  ours = cost.summarize(shape, precision, group_size, exponent_bits, hw)
  bare = cost.summarize(shape, precision, group_size, exponent_bits,
                        dataclasses.replace(hw, lm_head=False))
  lanes = lanes_for(PAPER["area_efficiency"], shape, precision, group_size, exponent_bits, hw)
  head = "with the LM head" if hw.lm_head else "without the LM head (lm_head=False)"
  rows = [
      ("what is evaluated", "OPT, LLaMA, LLaMA-2: FP-INT GeMM operations on the paper's "
       "hardware", f"{model}: modeled, the four sites" + (" and the head" if hw.lm_head else ""),
       f"{model}: modeled, the four searched sites",
       "model size and family; a hardware evaluation against an analytic model (its numbers "
       "and their sources: the search report's assumptions table); the LM head"),
      ("speedup", f"{PAPER['speedup']}x", "–", "–",
       "the paper compares designs of different area; the model gives every design the same "
       "area, so it has no counterpart"),
      ("area efficiency (throughput per area)", f"{PAPER['area_efficiency']}x",
       f"{ours['speedup_vs_fp16']:.2f}x", f"{bare['speedup_vs_fp16']:.2f}x",
       f"proportional to the FP16 FMA's assumed area (fp16_fma_lanes = {hw.fp16_fma_lanes:g}); "
       + (f"{lanes:.1f} lanes give the paper's {PAPER['area_efficiency']}x" if lanes else
          "the FP16 design is memory-bound there")),
      ("energy efficiency", f"{PAPER['energy_efficiency']}x",
       f"{ours['energy_saving_vs_fp16']:.2f}x", f"{bare['energy_saving_vs_fp16']:.2f}x",
       "energy in lane-ops with an assumed cost per memory bit; the paper's is from its "
       "hardware evaluation"),
  ]
  return _table(("figure", "paper (reported averages)", f"model, {head}",
                 "model, four searched sites only", "what differs"), rows,
                "|---|---:|---:|---:|---|")
