"""anda_jax.qwix_provider: Anda on models through google/qwix (the optional `qwix` extra).

1. Consistency: our LLaMA (and OPT) in float mode, quantized by the provider with one rule per
   product type, gives logits bit-identical to the built-in Anda path at the same precision,
   on tiny models and on the real SmolLM2-135M (marked real_model).
2. A model we did not write, NNX and Linen: every product of these models sits in a layer
   Flax ships (nnx.MultiHeadAttention: LinearGeneral projections, attention through
   jax.nn.dot_product_attention; nnx.Einsum, nnx.Linear; linen.Dense / DenseGeneral), assembled
   into a small transformer as a model zoo would. Checks that exactly the matched products are quantized (counted by module
   path) and that the output equals a reference that quantizes those inputs by hand.
   Why not a model zoo from PyPI: the `gemma` package (3.x; 4.x needs Python >= 3.12) pulls in
   kauldron, hence TensorFlow, xmanager and google-cloud clients (pip was still resolving after
   8 minutes); MaxText needs Python >= 3.12; `jax-bonsai` on PyPI is an empty 0.0.1
   placeholder; `recurrentgemma` would downgrade numpy and absl-py; `nnx-lm` pins flax 0.10.
3. The ops the provider intercepts (`@`, jnp.matmul / dot / einsum, lax.dot_general), which
   operand is the activation, exemptions (M = 0) and rule validation.
"""

from absl.testing import absltest
from absl.testing import parameterized
from flax import linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qwix  # the optional extra, which the tests install: pip install -e ".[test,qwix]"

# pylint: disable=g-import-not-at-top,wrong-import-position
from anda_jax.matmul import ProductSpec
from anda_jax import models
from anda_jax.numerics import anda
from anda_jax.numerics.anda import AndaFormat
from anda_jax.qwix_provider import AndaProvider, AndaRule, site_rules
import testlib

PRECISION = np.array([7, 6, 7, 8], np.int32)  # qkv, o, up (gate/up), down
_FORWARD = jax.jit(lambda m, t, p, s: m(t, p, s), static_argnums=3)
_FLOAT = jax.jit(lambda m, t: m(t))


def _quantize(x, mantissa_bits, group_size, axis=-1):
  return anda.quantize(x, AndaFormat(group_size=group_size, axis=axis), mantissa_bits)


def _paths(provider):
  return sorted((p.module_path, p.op) for p in provider.products)


def _tiny_opt(seed=0, n_layers=2, d=64, heads=4, ff=128, vocab=96, max_positions=64):
  """A random OPT built from a weights dict (pre-LN, tied head)."""
  rng = np.random.default_rng(seed)
  f = lambda *shape, s=1.0: (s * rng.standard_normal(shape)).astype(np.float32)
  ln = lambda: (1 + 0.1 * rng.standard_normal((n_layers, d))).astype(np.float32)
  layers = dict(attn_ln_w=ln(), attn_ln_b=f(n_layers, d, s=0.1),
                mlp_ln_w=ln(), mlp_ln_b=f(n_layers, d, s=0.1),
                qkv=f(n_layers, d, 3 * d, s=d ** -0.5), qkv_b=f(n_layers, 3 * d, s=0.1),
                o=f(n_layers, d, d, s=d ** -0.5), o_b=f(n_layers, d, s=0.1),
                up=f(n_layers, d, ff, s=d ** -0.5), up_b=f(n_layers, ff, s=0.1),
                down=f(n_layers, ff, d, s=ff ** -0.5), down_b=f(n_layers, d, s=0.1))
  weights = dict(embed=f(vocab, d), positions=f(max_positions + 2, d, s=0.1), final_ln_w=ln()[0],
                 final_ln_b=f(d, s=0.1), layers=layers)
  config = models.OPTConfig(n_layers=n_layers, d_model=d, n_heads=heads, d_ff=ff, vocab=vocab,
                            max_positions=max_positions)
  return models.OPT(config, weights)


# ------------------------------------------------------------------------------ 1. consistency


class OwnModelConsistencyTest(parameterized.TestCase):
  """Float mode + provider rules per site == the built-in Anda path, bit for bit."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.directory = testlib.make_checkpoint(testlib.tempdir(cls) / "llama", n_layers=2, d_model=64,
                                            n_heads=4, n_kv_heads=2, d_ff=128, vocab=256)
    cls.tokens = np.random.RandomState(0).randint(0, 96, (2, 40)).astype(np.int32)

  def _check(self, model, fmt, more_checks=True):
    float_before = np.asarray(_FLOAT(model, self.tokens))
    builtin = np.asarray(_FORWARD(model, self.tokens, PRECISION, ProductSpec(fmt)))
    provider = AndaProvider(site_rules(PRECISION, fmt))
    qmodel = qwix.quantize_model(model, provider, self.tokens)
    self.assertEmpty(provider.get_unused_rules())
    provider.clear_log()
    out = np.asarray(_FLOAT(qmodel, self.tokens))  # traced under the provider: each site once
    # One product per type, in the type's sub-module, on the activation's last (K) axis.
    self.assertEqual([(p.module_path, p.op, p.operand, p.axes[0] - len(p.shape), p.mantissa_bits)
                      for p in provider.products],
                     [("qkv", "matmul0", "lhs", -1, 7), ("o", "matmul0", "lhs", -1, 6),
                      ("up", "matmul0", "lhs", -1, 7), ("down", "matmul0", "lhs", -1, 8)])
    self.assertEmpty(provider.skipped)
    self.assertGreater(np.abs(out - float_before).max(), 1e-3)  # Anda did change the logits
    testlib.assert_bit_exact(out, builtin, "provider vs built-in Anda path")
    if not more_checks:
      return
    # The original model is untouched, and no quantized trace leaked into JAX's caches (a new
    # jit, so the model is traced again).
    testlib.assert_bit_exact(np.asarray(jax.jit(lambda m, t: m(t))(model, self.tokens)), float_before)
    # M = 0 rules keep everything in floating point.
    zero = qwix.quantize_model(model, AndaProvider(site_rules(np.zeros(4, np.int32), fmt)), self.tokens)
    testlib.assert_bit_exact(np.asarray(_FLOAT(zero, self.tokens)), float_before)

  @parameterized.named_parameters(("float_weights", None, 32, "truncate"),
                                  ("int4_weights_nearest", 32, 16, "nearest"))
  def test_llama(self, int4_group_size, group_size, rounding):
    model, _ = models.load(self.directory, int4_group_size=int4_group_size)
    self._check(model, AndaFormat(group_size=group_size, rounding=rounding),
                more_checks=int4_group_size is None)

  def test_opt(self):
    self._check(_tiny_opt(), AndaFormat(group_size=32))

  def test_gemma3(self):
    directory = testlib.tempdir(self)
    testlib.hf_tiny_model("gemma3").save_pretrained(directory)
    model, _ = models.load(directory, int4_group_size=32)
    self._check(model, AndaFormat(group_size=32), more_checks=False)

  def test_site_rules_validation(self):
    with self.assertRaisesRegex(ValueError, "precision has shape"):
      site_rules(np.zeros((2, 4), np.int32))


@pytest.mark.real_model
class SmolLM2ConsistencyTest(absltest.TestCase):

  def test_logits_bit_identical_to_builtin(self):
    model, _ = models.load("smollm2-135m")
    tokens = np.random.RandomState(1).randint(0, model.config.vocab, (1, 32)).astype(np.int32)
    fmt = AndaFormat()  # G = 64
    builtin = np.asarray(_FORWARD(model, tokens, PRECISION, ProductSpec(fmt)))
    provider = AndaProvider(site_rules(PRECISION, fmt))
    qmodel = qwix.quantize_model(model, provider, tokens)
    self.assertEmpty(provider.get_unused_rules())
    testlib.assert_bit_exact(np.asarray(_FLOAT(qmodel, tokens)), builtin, "SmolLM2")


# ------------------------------------------------------------------------------ 2. Flax models

D, HEADS, FF, VOCAB, G = 64, 4, 96, 80, 32
M_QKV, M_O, M_UP, M_DOWN = 7, 6, 7, 8
NNX_RULES = (
    AndaRule(module_path=r"blocks/\d+/attn/(query|key|value)", mantissa_bits=M_QKV, group_size=G),
    AndaRule(module_path=r"blocks/\d+/attn/out", mantissa_bits=M_O, group_size=G),
    AndaRule(module_path=r"blocks/\d+/gate_up", mantissa_bits=M_UP, group_size=G),
    AndaRule(module_path=r"blocks/\d+/down", mantissa_bits=M_DOWN, group_size=G),
)


class Block(nnx.Module):
  """A pre-norm transformer block from Flax's stock NNX layers."""

  def __init__(self, rngs):
    self.norm1 = nnx.RMSNorm(D, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads=HEADS, in_features=D, decode=False, rngs=rngs)
    self.norm2 = nnx.RMSNorm(D, rngs=rngs)
    self.gate_up = nnx.Einsum("btd,dnf->btnf", (D, 2, FF), rngs=rngs)
    self.down = nnx.Linear(FF, D, rngs=rngs)

  def __call__(self, x, mask):
    x = x + self.attn(self.norm1(x), mask=mask)
    gate_up = self.gate_up(self.norm2(x))
    return x + self.down(jax.nn.silu(gate_up[..., 0, :]) * gate_up[..., 1, :])


class TinyLM(nnx.Module):

  def __init__(self, rngs, n_blocks=2):
    self.embed = nnx.Embed(VOCAB, D, rngs=rngs)
    self.blocks = nnx.List([Block(rngs) for _ in range(n_blocks)])
    self.head = nnx.Linear(D, VOCAB, rngs=rngs)

  def __call__(self, tokens):
    mask = nnx.make_causal_mask(tokens)
    x = self.embed(tokens)
    for block in self.blocks:
      x = block(x, mask)
    return self.head(x)


def _nnx_reference(lm, tokens):
  """TinyLM's forward with the matched products' inputs quantized by hand."""
  mask = nnx.make_causal_mask(tokens)
  x = lm.embed(tokens)
  for b in lm.blocks:
    h = _quantize(b.norm1(x), M_QKV, G)
    query, key, value = b.attn.query(h), b.attn.key(h), b.attn.value(h)
    heads = nnx.dot_product_attention(query, key, value, mask=mask)  # float: not matched
    # The out projection contracts (heads, head_dim): groups run along the flattened H * Dh.
    heads = _quantize(heads.reshape(*heads.shape[:-2], -1), M_O, G).reshape(heads.shape)
    x = x + b.attn.out(heads)
    gate_up = b.gate_up(_quantize(b.norm2(x), M_UP, G))
    x = x + b.down(_quantize(jax.nn.silu(gate_up[..., 0, :]) * gate_up[..., 1, :], M_DOWN, G))
  return lm.head(x)


class LinenBlock(nn.Module):
  """An MLP with a multi-head split and merge from Flax's stock Linen layers."""

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(FF, name="up")(x)
    h = nn.DenseGeneral((HEADS, 8), name="split")(jax.nn.relu(h))
    y = nn.DenseGeneral(D, axis=(-2, -1), name="merge")(h)
    return y + x @ self.param("mix", nn.initializers.lecun_normal(), (D, D))


class FlaxModelTest(absltest.TestCase):

  def test_nnx_model_exactly_matched_products_quantized(self):
    lm = TinyLM(nnx.Rngs(0))
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, VOCAB, (2, 24)), jnp.int32)
    provider = AndaProvider(NNX_RULES)
    qlm = qwix.quantize_model(lm, provider, tokens)
    self.assertEmpty(provider.get_unused_rules())
    provider.clear_log()
    out = np.asarray(_FLOAT(qlm, tokens))
    expected = [(f"blocks/{i}/{name}", op) for i in range(2) for name, op in (
        ("attn/query", "dot_general0"), ("attn/key", "dot_general0"), ("attn/value", "dot_general0"),
        ("attn/out", "dot_general0"), ("gate_up", "einsum0"), ("down", "dot_general0"))]
    self.assertEqual(_paths(provider), sorted(expected))  # 12: not attention's einsums, not the head
    out_products = [p for p in provider.products if p.module_path.endswith("attn/out")]
    self.assertEqual({(p.shape, p.axes) for p in out_products}, {((2, 24, HEADS, D // HEADS), (2, 3))})
    reference = np.asarray(jax.jit(_nnx_reference)(lm, tokens))
    self.assertGreater(np.abs(reference - np.asarray(_FLOAT(lm, tokens))).max(), 1e-3)
    testlib.assert_bit_exact(out, reference, "NNX model vs hand-quantized reference")

    # A catch-all rule also quantizes the head; attention's einsums run inside JAX's own
    # jax.nn.dot_product_attention (Flax delegates to it), which the provider leaves alone.
    everything = AndaProvider([AndaRule(module_path=".*", mantissa_bits=8, group_size=16)])
    qlm = qwix.quantize_model(lm, everything, tokens)
    everything.clear_log()
    jax.eval_shape(lambda m, t: m(t), qlm, tokens)
    self.assertEqual(_paths(everything), sorted(expected + [("head", "dot_general0")]))
    self.assertTrue(all(path.endswith("/attn") for path, _ in everything.skipped), everything.skipped)

  def test_linen_model(self):
    block = LinenBlock()
    x = jax.random.normal(jax.random.key(1), (2, 5, D))
    params = block.init(jax.random.key(0), x)
    provider = AndaProvider([AndaRule(module_path="up|merge", mantissa_bits=5, group_size=16)])
    qblock = qwix.quantize_model(block, provider)
    out = np.asarray(jax.jit(qblock.apply)(params, x))
    self.assertEqual(_paths(provider), [("merge", "dot_general0"), ("up", "dot_general0")])
    p = params["params"]
    h = nn.Dense(FF).apply({"params": p["up"]}, _quantize(x, 5, 16))
    h = nn.DenseGeneral((HEADS, 8)).apply({"params": p["split"]}, jax.nn.relu(h))
    h = _quantize(h.reshape(*h.shape[:-2], -1), 5, 16).reshape(h.shape)
    y = nn.DenseGeneral(D, axis=(-2, -1)).apply({"params": p["merge"]}, h) + x @ p["mix"]
    testlib.assert_bit_exact(out, np.asarray(y), "Linen model vs hand-quantized reference")


# ------------------------------------------------------------------------------ 3. ops and rules

K, N = 16, 5


class Product(nnx.Module):
  """One product fn(x, w) with its own module path."""

  def __init__(self, fn, w):
    self.fn = fn
    self.w = nnx.Param(jnp.asarray(w))

  def __call__(self, x):
    return self.fn(x, self.w[...])


def _ops_model():
  w = w_numpy = np.random.RandomState(0).standard_normal((K, N)).astype(np.float32)
  products = dict(
      at=(lambda x, w: x @ w, w),
      # Looked up at call time: a stored reference to jnp.matmul / jnp.dot is not intercepted.
      matmul=(lambda x, w: jnp.matmul(x, w), w),
      dot=(lambda x, w: jnp.dot(x, w), w),
      ein=(lambda x, w: jnp.einsum("...k,kn->...n", x, w), w),
      dg=(lambda x, w: jax.lax.dot_general(x, w, (((2,), (0,)), ((), ()))), w),
      auto=(lambda x, w: jnp.einsum("nk,btk->btn", w, x), w.T),  # activation on the right
      rhs=(lambda x, w: jnp.matmul(w, x.swapaxes(-1, -2)), w.T),  # [N, K] @ [B, K, T]
      rmatmul=(lambda x, w: w_numpy.T @ x.swapaxes(-1, -2), w.T),  # numpy @ jax: x.__rmatmul__
      exempt=(lambda x, w: x @ w, w),
      inside_jax=(lambda x, w: jnp.tensordot(x, w, axes=1), w),
  )

  class Ops(nnx.Module):

    def __init__(self):
      for name, (fn, weight) in products.items():
        setattr(self, name, Product(fn, weight))
      self.w = nnx.Param(jnp.asarray(w))

    def __call__(self, x):
      out = {name: getattr(self, name)(x) for name in products}
      out["root"] = x @ self.w[...]  # in no rule's module
      return out

  return Ops()


class OpsTest(parameterized.TestCase):

  def test_ops(self):
    model = _ops_model()
    x = jnp.asarray(np.random.RandomState(1).standard_normal((2, 3, K)), jnp.float32)
    rules = [AndaRule(module_path="exempt", mantissa_bits=0),
             AndaRule(module_path="at|matmul|dot|ein|dg|exempt|inside_jax", mantissa_bits=5, group_size=8),
             AndaRule(module_path="auto", mantissa_bits=4, group_size=8, activation="auto"),
             AndaRule(module_path="rhs|rmatmul", mantissa_bits=3, group_size=8, activation="rhs")]
    provider = AndaProvider(rules)
    qmodel = qwix.quantize_model(model, provider, x)
    self.assertEqual(_paths(provider), [("at", "matmul0"), ("auto", "einsum0"), ("dg", "dot_general0"),
                                        ("dot", "dot0"), ("ein", "einsum0"), ("matmul", "matmul0"),
                                        ("rhs", "matmul0"), ("rmatmul", "matmul0")])
    self.assertEqual(provider.skipped, [("inside_jax", "dot_general0")])  # computed inside JAX
    by_path = {p.module_path: p for p in provider.products}
    self.assertEqual({by_path[name].operand for name in ("auto", "rhs", "rmatmul")}, {"rhs"})
    for jit in (False, True):
      out = (_FLOAT if jit else lambda m, x: m(x))(qmodel, x)
      w = np.asarray(model.w[...])
      x5 = _quantize(x, 5, 8)
      expected = dict(at=x5 @ w, matmul=x5 @ w, dot=jnp.dot(x5, w), ein=x5 @ w, dg=x5 @ w,
                      auto=jnp.einsum("nk,btk->btn", w.T, _quantize(x, 4, 8)),
                      rhs=jnp.matmul(w.T, _quantize(x, 3, 8).swapaxes(-1, -2)),
                      rmatmul=jnp.matmul(w.T, _quantize(x, 3, 8).swapaxes(-1, -2)),
                      exempt=x @ w, inside_jax=x @ w, root=x @ w)
      for name, value in expected.items():
        np.testing.assert_allclose(out[name], value, rtol=1e-6, atol=1e-6, err_msg=f"{name} jit={jit}")

  def test_op_names_filter(self):
    model = _ops_model()
    x = jnp.ones((1, 2, K), jnp.float32)
    provider = AndaProvider([AndaRule(module_path=".*", op_names=("einsum",), mantissa_bits=5, group_size=8)])
    qwix.quantize_model(model, provider, x)
    self.assertEqual(_paths(provider), [("auto", "einsum0"), ("ein", "einsum0")])

  @parameterized.named_parameters(
      ("mantissa_too_large", dict(mantissa_bits=25), "mantissa_bits=25"),
      ("mantissa_negative", dict(mantissa_bits=-1), "mantissa_bits=-1"),
      ("mantissa_traced_like", dict(mantissa_bits=np.array(7)), "mantissa_bits="),
      ("stochastic", dict(mantissa_bits=7, rounding="stochastic"), "stochastic"),
      ("rounding", dict(mantissa_bits=7, rounding="up"), "rounding='up'"),
      ("group_size", dict(mantissa_bits=7, group_size=0), "group_size"),
      ("exponent_bits", dict(mantissa_bits=7, exponent_bits=9), "exponent_bits"),
      ("activation", dict(mantissa_bits=7, activation="weight"), "activation='weight'"),
      ("op_names", dict(mantissa_bits=7, op_names=("conv",)), "op_names"),
      ("act_qtype", dict(mantissa_bits=7, act_qtype=jnp.int8), "act_qtype"),
      ("module_path_regex", dict(mantissa_bits=7, module_path="("),
       r"module_path='\(' is invalid: not a regular expression \(missing \), unterminated"),
      ("module_path_type", dict(mantissa_bits=7, module_path=None), "module_path=None is invalid"),
  )
  def test_invalid_rule(self, kwargs, message):
    with self.assertRaisesRegex(ValueError, message):
      AndaRule(**kwargs)

  def test_provider_takes_only_anda_rules(self):
    with self.assertRaisesRegex(ValueError, "must be an AndaRule"):
      AndaProvider([qwix.QuantizationRule(module_path=".*")])

  def test_rule_format(self):
    rule = AndaRule(module_path="x", mantissa_bits=6, group_size=32, exponent_bits=5, rounding="nearest")
    self.assertEqual(rule.fmt, AndaFormat(group_size=32, exponent_bits=5, rounding="nearest"))


if __name__ == "__main__":
  absltest.main()
