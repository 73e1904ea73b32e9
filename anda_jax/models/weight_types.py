"""What a loaded model's weights are: for each weight, the checkpoint tensor types it was read
from (GGUF types such as Q4_K or Q8_0, safetensors dtypes such as BF16) and what each became
(INT4 as stored, INT4 re-quantized RTN, or a float dtype). A model carries it as
`model.weight_types`, so a run can record it in one line:

    setup["weights"] = model.weight_types.as_dict()
    print(model.weight_types)  # Q4_K -> INT4 asymmetric G=32 (as stored): 18; Q5_0 -> float32: 81
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from anda_jax.numerics import int4

# The INT4 scheme (symmetric, group size) a 4-bit GGUF type keeps when it stays as stored.
_GGUF_INT4_SCHEMES = {"Q4_0": (True, 32), "Q4_1": (False, 32), "Q4_K": (False, 32)}


@dataclasses.dataclass(frozen=True)
class WeightTypes:
  """Rows (weight, stored type, number of tensors, what they became); hashable, so a model can
  hold it as a static attribute."""

  rows: tuple[tuple[str, str, int, str], ...]

  def as_dict(self) -> dict:
    """{weight: {stored type: {"tensors": n, "as": what they became}}}, JSON-ready."""
    out = {}
    for weight, stored, n, became in self.rows:
      out.setdefault(weight, {})[stored] = {"tensors": n, "as": became}
    return out

  def counts(self) -> dict[str, int]:
    """{"<stored type> -> <what it became>": number of tensors}, over every weight."""
    counts = collections.Counter()
    for _, stored, n, became in self.rows:
      counts[f"{stored} -> {became}"] += n
    return dict(sorted(counts.items()))

  def __str__(self) -> str:
    return "; ".join(f"{k}: {n}" for k, n in self.counts().items())


def _int4_name(w: int4.Int4Weights) -> str:
  return f"INT4 {'symmetric' if w.symmetric else 'asymmetric'} G={w.group_size}"


def describe(sources: dict[str, collections.Counter], weights: dict) -> WeightTypes:
  """The WeightTypes of loaded `weights` (as apply_table returns them) from `sources`: for each
  destination ("layers.qkv", "embed", ...), a Counter of the stored types of the tensors read
  into it. A 4-bit GGUF type counts as stored when its weight ended in its own INT4 scheme,
  as re-quantized (RTN) when in another one."""
  rows = []
  for dest, kinds in sources.items():
    site = dest.removeprefix("layers.")
    w = weights["layers"][site] if dest.startswith("layers.") else weights[dest]
    for kind, n in sorted(kinds.items()):
      if isinstance(w, int4.Int4Weights):
        kept = _GGUF_INT4_SCHEMES.get(kind) == (w.symmetric, w.group_size)
        became = f"{_int4_name(w)} ({'as stored' if kept else 'RTN'})"
      else:
        became = np.dtype(w.dtype).name
      rows.append((site if dest.startswith("layers.") else dest, kind, n, became))
  return WeightTypes(tuple(rows))
