"""Every floating-point product of a model runs at the precision chosen once
(`models.load(..., matmul_precision=)`): no dot_general in a traced forward carries another.
On TPU a float32 product at the default precision is one bfloat16 pass (TF32 on recent GPUs),
an error larger than the effects Anda studies measure; the CPU would never show it, so the
check is on the program, not on its numbers."""

import collections

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from anda_jax.matmul import ProductSpec
from anda_jax import models
from anda_jax.numerics.anda import AndaFormat
import testlib


def float_dot_precisions(jaxpr) -> collections.Counter:
  """(in a Pallas kernel?, precision) of every floating-point dot_general in a jaxpr and all its
  sub-jaxprs (loops, conds, custom derivatives, Pallas kernels), counted."""
  found = collections.Counter()

  def walk(j, in_kernel):
    for eqn in j.eqns:
      if eqn.primitive.name == "dot_general" and jnp.issubdtype(eqn.outvars[0].aval.dtype, jnp.floating):
        found[(in_kernel, str(eqn.params["precision"]))] += 1
      for value in eqn.params.values():
        for sub in value if isinstance(value, (list, tuple)) else [value]:
          inner = getattr(sub, "jaxpr", sub)
          if hasattr(inner, "eqns"):
            walk(inner, in_kernel or eqn.primitive.name == "pallas_call")

  walk(jaxpr.jaxpr, False)
  return found


class MatmulPrecisionTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    tmp = testlib.tempdir(cls)
    # LLaMA with a tied head (an einsum against the embedding), OPT with float projections
    # in and out of the embedding width and a separate head: every kind of product there is.
    llama = testlib.make_checkpoint(tmp / "llama", tie=True)
    opt = testlib.hf_tiny_model("opt", word_embed_proj_dim=32, tie_word_embeddings=False)
    opt.save_pretrained(tmp / "opt")
    testlib.hf_tiny_model("gemma3").save_pretrained(tmp / "gemma3")
    cls.dirs = dict(llama=llama, opt=tmp / "opt", gemma3=tmp / "gemma3")

  @parameterized.product(kind=("llama", "opt", "gemma3"), impl=("fake", "bitserial"),
                         matmul_precision=("highest", "default"))
  def test_every_float_product_has_the_chosen_precision(self, kind, impl, matmul_precision):
    model, _ = models.load(self.dirs[kind], int4_group_size=32, matmul_precision=matmul_precision)
    spec = ProductSpec(AndaFormat(group_size=32), impl)
    tokens = jnp.zeros((1, 8), jnp.int32)
    jaxpr = jax.make_jaxpr(lambda t, p: model(t, p, spec))(tokens, jnp.full(4, 6, jnp.int32))
    found = float_dot_precisions(jaxpr)
    chosen = {"highest": jax.lax.Precision.HIGHEST, "default": jax.lax.Precision.DEFAULT}
    want = {(False, str((chosen[matmul_precision],) * 2))}
    if impl == "bitserial":
      # The kernel's plane products multiply 0/+-1 bits by INT4 codes: exact in one bfloat16
      # pass, so it names the fastest precision explicitly (a None would fail here).
      want.add((True, str((jax.lax.Precision.DEFAULT,) * 2)))
    # 4 FP-INT products, 2 attention products, the head (+ 2 projections for OPT).
    self.assertGreaterEqual(sum(n for (in_kernel, _), n in found.items() if not in_kernel), 7)
    self.assertEqual(set(found), want, found)

  def test_unknown_precision_is_refused_before_loading(self):
    with self.assertRaisesRegex(ValueError, r"matmul_precision='bf16' is invalid: must be one of"):
      models.load("/nonexistent", matmul_precision="bf16")

  def test_highest_equals_default_on_the_cpu(self):
    # The CPU computes float32 products in float32 either way: the choice costs nothing here.
    logits = {p: np.asarray(models.load(self.dirs["llama"], matmul_precision=p)[0](
        jnp.arange(8)[None], np.full(4, 6, np.int32))) for p in ("highest", "default")}
    np.testing.assert_array_equal(logits["highest"], logits["default"])


if __name__ == "__main__":
  absltest.main()
