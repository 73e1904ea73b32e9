"""Anda on any Flax model: a qwix quantization provider (optional: `pip install -e ".[qwix]"`).

google/qwix quantizes models it did not write: `qwix.quantize_model(model, provider, *inputs)`
makes a copy of the model whose `__call__` runs with the provider intercepting the products,
and rules pick the products by the path of the module that computes them. `AndaProvider`
fake-quantizes the activation operand of every matched product to Anda (docs/formats.md,
section 1) along its contraction axis with `anda.quantize`; the other operand (the weight) is
untouched, so INT4 weights stay whatever the model dequantizes them to.

    import qwix
    from anda_jax.qwix_provider import AndaProvider, AndaRule

    rules = [AndaRule(module_path=r".*(q|k|v)_proj", mantissa_bits=7, group_size=64),
             AndaRule(module_path=r".*down_proj", mantissa_bits=8)]
    qmodel = qwix.quantize_model(model, AndaProvider(rules), *example_inputs)   # NNX
    logits = qmodel(*inputs)

Which products: in the dynamic extent of the quantized method, `jax.lax.dot_general`,
`jnp.einsum` (two operands), `jnp.matmul`, `jnp.dot` and the `@` operator on JAX arrays. A
product matches the first rule (in order) whose `module_path` regex fully matches the path of
the innermost Flax module on the call stack ("" is the root; NNX paths join attribute names
with "/", e.g. "layers/0/mlp/down_proj"; Linen paths are the module's `path`) and whose
`op_names` (if given) contain the op: "dot_general", "einsum", "matmul" (`@` and `jnp.matmul`)
or "dot". A rule with mantissa_bits = 0 keeps its products in floating point (use it first in
the list to exempt modules). Unmatched products run unchanged.

Flax NNX and Linen are both supported (qwix intercepts either; tests cover both).

Not supported (the built-in models in `anda_jax.models` do these; the provider cannot):
- a traced mantissa length, hence `jax.vmap` over precision configurations or one compiled
  program for every M: M is static in the rules, so each configuration is its own provider,
  its own quantized model and its own compilation;
- stochastic rounding (it needs a PRNG key per product, which qwix's call path cannot give);
- the bit-serial implementation (impl="bitserial"): this is fake quantization,
  decode(encode(x)) in the activation's dtype, with a straight-through gradient;
- per-layer precisions inside one module: a rule sees module paths, not loop iterations, so a
  model that runs its layers in a `lax.fori_loop` / `scan` over stacked weights (ours, MaxText's
  scanned layers) gets one M per product type for all layers;
- products that the model computes through other JAX functions (`jnp.tensordot`, `jnp.inner`,
  `jnp.linalg`, `jax.nn.dot_product_attention`, which Flax's attention calls, ...) or through
  `lax.dot_general` called from inside JAX's own code: JAX caches the traces of its jitted
  functions, so such a product may or may not reach an interceptor. They are left unquantized
  (`skipped` and a warning name them when seen);
- a reference to `jnp.matmul` / `jnp.dot` taken before the call (`mm = jnp.matmul; mm(x, w)`):
  those two are intercepted as attributes of `jax.numpy`, so only calls that look them up
  there are seen (`@`, `jnp.einsum` and `lax.dot_general` are intercepted however referenced).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
from typing import Sequence

from absl import logging
import jax
import jax.numpy as jnp
from jax._src.numpy import array_methods
import numpy as np
from opt_einsum import parser as einsum_parser
import qwix
from qwix._src.utils import flax_util

from anda_jax.numerics import anda
from anda_jax.precision import FLOAT, MAX_MANTISSA_BITS, MODULE_TYPES

__all__ = ["AndaRule", "AndaProvider", "QuantizedProduct", "site_rules"]

ACTIVATION_OPERANDS = ("lhs", "rhs", "auto")
OP_NAMES = ("dot_general", "einsum", "matmul", "dot")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AndaRule(qwix.QuantizationRule):
  """Puts the activation operand of the matched products in Anda.

  Matching (qwix's): `module_path` (a regex, fully matched against the module path) and
  `op_names` (empty = every op; else a subset of OP_NAMES).
  Format: `mantissa_bits` M (1..24, or 0 = keep floating point), `group_size`,
  `exponent_bits`, `rounding` ("truncate" or "nearest"), as `anda.AndaFormat`.
  `activation`: which operand is the activation: "lhs" (the default, as in every Flax layer:
  x @ W, dot_general(inputs, kernel), einsum(eq, inputs, kernel)), "rhs", or "auto" (the
  operand that is not a parameter of the current module, found as qwix finds weights; lhs when
  neither is). qwix's own quantization fields (weight_qtype, act_qtype, ...) must stay unset.
  """

  mantissa_bits: int
  group_size: int = 64
  exponent_bits: int = 8
  rounding: str = "truncate"
  activation: str = "lhs"

  def __post_init__(self):
    m = self.mantissa_bits
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not FLOAT <= m <= MAX_MANTISSA_BITS:
      raise ValueError(f"mantissa_bits={self.mantissa_bits!r} is invalid: must be a Python int in "
                       f"[{FLOAT}, {MAX_MANTISSA_BITS}] (the provider does not take a traced M)")
    if self.rounding == "stochastic":
      raise ValueError("rounding='stochastic' is not supported by the qwix provider (it needs a "
                       "PRNG key per product): use 'truncate' or 'nearest'")
    anda.AndaFormat(self.group_size, self.exponent_bits, self.rounding)  # validates
    if not isinstance(self.module_path, str):
      raise ValueError(f"module_path={self.module_path!r} is invalid: must be a regex string")
    try:
      re.compile(self.module_path)
    except re.error as e:
      raise ValueError(f"module_path={self.module_path!r} is invalid: not a regular expression "
                       f"({e})") from None
    if self.activation not in ACTIVATION_OPERANDS:
      raise ValueError(f"activation={self.activation!r} is invalid: must be one of {ACTIVATION_OPERANDS}")
    if isinstance(self.op_names, str) or set(self.op_names) - set(OP_NAMES):
      raise ValueError(f"op_names={self.op_names!r} is invalid: must be a collection of {OP_NAMES}")
    for name in ("weight_qtype", "act_qtype", "tile_size", "act_static_scale", "act_calibration_method"):
      if getattr(self, name) is not None:
        raise ValueError(f"{name}={getattr(self, name)!r} is invalid for an AndaRule: the Anda "
                         "provider ignores qwix's own quantization settings, leave it None")

  @property
  def fmt(self) -> anda.AndaFormat:
    """The rule's format, grouping along the last axis (the provider moves the product's
    contraction axis there)."""
    return anda.AndaFormat(self.group_size, self.exponent_bits, self.rounding)


@dataclasses.dataclass(frozen=True)
class QuantizedProduct:
  """One product whose activation the provider quantized (recorded when it was traced/run)."""

  module_path: str
  op: str  # qwix's op id within the module, e.g. "dot_general0"
  operand: str  # "lhs" or "rhs"
  shape: tuple[int, ...]  # the activation's shape
  axes: tuple[int, ...]  # its contraction axes (the Anda groups run along them)
  mantissa_bits: int
  fmt: anda.AndaFormat


class AndaProvider(qwix.QuantizationProvider):
  """qwix's provider interface: intercepts the products of a quantized model's method and
  fake-quantizes the activation of every product that an `AndaRule` matches.

  `products` lists what was quantized, one entry per product each time the model was traced
  (or run eagerly); `skipped` names matched products that were left alone because JAX's own
  code computed them (see the module docstring). `clear_log()` empties both."""

  def __init__(self, rules: Sequence[AndaRule], *, disable_jit: bool = False):
    super().__init__(rules, disable_jit=disable_jit)
    self.products: list[QuantizedProduct] = []
    self.skipped: list[tuple[str, str]] = []

  def _init_rule(self, rule):
    if not isinstance(rule, AndaRule):
      raise ValueError(f"rule={rule!r} is invalid for AndaProvider: must be an AndaRule")
    return rule

  def clear_log(self):
    self.products.clear()
    self.skipped.clear()

  def get_intercept_map(self):
    return super().get_intercept_map() | {
        "jax.lax.dot_general": self._dot_general,
        "jax.numpy.einsum": self._einsum,
        "jax.numpy.matmul": self._matmul,
        "jax.numpy.dot": self._dot,
        # The `@` operator of arrays and tracers (both call these functions).
        "jax._src.numpy.array_methods._operator_matmul": self._operator_matmul,
        "jax._src.numpy.array_methods._operator_rmatmul": self._operator_rmatmul,
    }

  # ---------------------------------------------------------------------------- the handlers
  # Each runs with this provider's interception switched off (qwix does not recurse), so the
  # JAX function it calls at the end is the original.

  def _dot_general(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                   **kwargs):
    lhs, rhs = self._quantize_operands("dot_general", lhs, rhs,
                                       lambda: tuple(dimension_numbers[0]))
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type, **kwargs)

  def _einsum(self, subscripts, *operands, **kwargs):
    if isinstance(subscripts, str) and len(operands) == 2:
      lhs, rhs = self._quantize_operands(
          "einsum", *operands, lambda: _einsum_contraction(subscripts, *operands))
      return jnp.einsum(subscripts, lhs, rhs, **kwargs)
    rule, _ = self._get_current_rule_and_op_id("einsum")
    if rule is not None and rule.mantissa_bits != FLOAT:
      raise ValueError(f"jnp.einsum({subscripts!r}, <{len(operands)} operands>) in module "
                       f"{_module_path()!r} matches {rule}, but the Anda provider supports only "
                       "two-operand einsums with a subscripts string")
    return jnp.einsum(subscripts, *operands, **kwargs)

  def _matmul(self, a, b, **kwargs):
    a, b = self._quantize_operands("matmul", a, b, lambda: _matmul_contraction(a, b))
    return jnp.matmul(a, b, **kwargs)

  def _dot(self, a, b, **kwargs):
    a, b = self._quantize_operands("dot", a, b, lambda: _matmul_contraction(a, b))
    return jnp.dot(a, b, **kwargs)

  def _operator_matmul(self, a, b):  # a @ b
    if _is_array(b):
      a, b = self._quantize_operands("matmul", a, b, lambda: _matmul_contraction(a, b),
                                     skip=_OPERATOR_FORWARDING)
    return array_methods._operator_matmul(a, b)  # pylint: disable=protected-access

  def _operator_rmatmul(self, a, b):  # b @ a
    if _is_array(b):
      b, a = self._quantize_operands("matmul", b, a, lambda: _matmul_contraction(b, a),
                                     skip=_OPERATOR_FORWARDING)
    return array_methods._operator_rmatmul(a, b)  # pylint: disable=protected-access

  # ---------------------------------------------------------------------------- quantization

  def _quantize_operands(self, op_name, lhs, rhs, contraction, skip=()):
    """(lhs, rhs) with the activation operand in Anda if a rule with M > 0 matches.
    `contraction()` gives the contraction axes (lhs_axes, rhs_axes); it is only called then."""
    rule, op_id = self._get_current_rule_and_op_id(op_name)
    if rule is None or rule.mantissa_bits == FLOAT:
      return lhs, rhs
    path = _module_path()
    caller = _caller_module(skip)
    if caller == "jax" or caller.startswith("jax."):
      # A product inside one of JAX's own (jitted, trace-cached) functions: not reliably seen.
      if (path, op_id) not in self.skipped:
        self.skipped.append((path, op_id))
        logging.warning("AndaProvider: %s in module %r (called from %s) matches a rule but is "
                        "computed inside JAX; left in floating point", op_id, path, caller)
      return lhs, rhs
    operand = rule.activation
    if operand == "auto":
      operand = "rhs" if _is_param(lhs) and not _is_param(rhs) else "lhs"
    lhs_axes, rhs_axes = contraction()
    x, axes = (lhs, lhs_axes) if operand == "lhs" else (rhs, rhs_axes)
    x = jnp.asarray(x)
    axes = tuple(sorted(int(a) % x.ndim for a in axes)) if x.ndim else ()
    if not axes:  # no contraction (an outer or scalar product): nothing to group along
      return lhs, rhs
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"{op_id} in module {path!r}: the {operand} operand (dtype {x.dtype}) is "
                       f"not floating point, so it cannot be the activation; set the rule's "
                       f"activation= to the other operand")
    xq = quantize_along(x, axes, rule.fmt, rule.mantissa_bits)
    self.products.append(QuantizedProduct(path, op_id, operand, tuple(x.shape), axes,
                                          rule.mantissa_bits, rule.fmt))
    return (xq, rhs) if operand == "lhs" else (lhs, xq)


def quantize_along(x, axes: Sequence[int], fmt: anda.AndaFormat, mantissa_bits) -> jax.Array:
  """Anda fake quantization of `x` with groups along its contraction `axes` (ascending). Several
  axes are flattened in x's axis order into one K, as a reshape to [..., K] @ [K, N] would."""
  axes = tuple(axes)
  if len(axes) == 1:
    return anda.quantize(x, dataclasses.replace(fmt, axis=axes[0]), mantissa_bits)
  rest = [i for i in range(x.ndim) if i not in axes]
  perm = rest + list(axes)
  moved = jnp.transpose(x, perm)
  flat = moved.reshape(*moved.shape[:len(rest)], -1)
  q = anda.quantize(flat, dataclasses.replace(fmt, axis=-1), mantissa_bits)
  return jnp.transpose(q.reshape(moved.shape), np.argsort(perm))


def site_rules(precision, fmt: anda.AndaFormat = anda.AndaFormat()) -> list[AndaRule]:
  """Rules for this project's own models (`anda_jax.models.Llama` / `Gemma3` / `OPT`), whose four
  FP-INT product types run in sub-modules named after them ("qkv", "o", "up", "down"): M per type
  from a precision configuration of shape [4] (docs/formats.md, section 8), in `fmt`."""
  values = np.asarray(precision)
  if values.shape != (len(MODULE_TYPES),):
    raise ValueError(f"precision has shape {list(values.shape)}: must be [{len(MODULE_TYPES)}] (one M "
                     f"per type {MODULE_TYPES}); per-layer configurations need the built-in path")
  return [AndaRule(module_path=site, mantissa_bits=int(m), group_size=fmt.group_size,
                   exponent_bits=fmt.exponent_bits, rounding=fmt.rounding)
          for site, m in zip(MODULE_TYPES, values)]


# ------------------------------------------------------------------------------ helpers


def _is_array(x) -> bool:
  return isinstance(x, (jax.Array, np.ndarray, np.generic, int, float, complex))


def _is_param(x) -> bool:
  try:
    return flax_util.find_param(x) is not None
  except ValueError:  # several same-shaped parameters: undecidable, treat as not a parameter
    return False


def _module_path() -> str:
  return "/".join(map(str, flax_util.get_current_module_path()))


def _matmul_contraction(a, b):
  """The contraction axes of a and b in matmul / dot (numpy semantics)."""
  a_axes = (-1,) if np.ndim(a) >= 1 else ()
  b_axes = ((-2,) if np.ndim(b) >= 2 else (-1,)) if np.ndim(b) >= 1 else ()
  if not a_axes or not b_axes:
    return (), ()
  return a_axes, b_axes


def _einsum_contraction(subscripts, lhs, rhs):
  """The axes of lhs and rhs that a two-operand einsum contracts (labels in both operands and
  not in the output). A label repeated within one operand (a diagonal) is not supported."""
  inputs, output, _ = einsum_parser.parse_einsum_input((subscripts, lhs, rhs))
  lhs_sub, rhs_sub = inputs.split(",")
  for sub in (lhs_sub, rhs_sub):
    if len(set(sub)) != len(sub):
      raise ValueError(f"einsum {subscripts!r}: repeated labels within an operand are not "
                       "supported by the Anda provider")
  contracted = (set(lhs_sub) & set(rhs_sub)) - set(output)
  return (tuple(i for i, c in enumerate(lhs_sub) if c in contracted),
          tuple(i for i, c in enumerate(rhs_sub) if c in contracted))


_QWIX_DIR = os.path.dirname(qwix.__file__) + os.sep


# Where JAX forwards a tracer's `@` to _operator_matmul: not the caller we look for.
_OPERATOR_FORWARDING = ("jax._src.numpy.array_methods", "jax._src.core")


def _caller_module(skip=()) -> str:
  """The module that called the intercepted JAX function: the first frame outside this file,
  qwix (whose interception frames, patched code objects included, are qwix's files) and the
  modules in `skip`."""
  frame = inspect.currentframe()
  try:
    while frame is not None:
      filename = frame.f_code.co_filename
      name = frame.f_globals.get("__name__", "")
      if filename != __file__ and not filename.startswith(_QWIX_DIR) and name not in skip:
        return name
      frame = frame.f_back
    return ""
  finally:
    del frame
