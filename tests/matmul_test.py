"""anda_jax.matmul.ProductSpec: any activation format at any of the four product types, through
the one entry point the models use; a model under per-type formats equals quantizing each
product's input by hand."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

import anda_jax
from anda_jax.matmul import ProductSpec
from anda_jax import models
from anda_jax.numerics import int4
import testlib

_FORMATS = dict(
    anda=anda_jax.AndaFormat(group_size=16),
    mxfp4=anda_jax.MXFormat("fp4_e2m1", 32),
    mxint8=anda_jax.MXFormat("int8", 32),
    nvfp4=anda_jax.NVFP4Format(),
    fp8_token=anda_jax.PerTokenFormat("fp8_e4m3"),
)


class ProductSpecTest(parameterized.TestCase):

  @parameterized.named_parameters(*_FORMATS.items())
  def test_product_is_the_quantized_input_times_the_weights(self, fmt):
    x = testlib.heavy_tailed(0, (3, 5, 64))
    qw = testlib.int4_weights(1, 64, 24, 32, symmetric=False)
    m = 6 if isinstance(fmt, anda_jax.AndaFormat) else None
    want = np.asarray(anda_jax.fake_quantize(x, fmt, m), np.float64) @ np.asarray(int4.dequantize(qw), np.float64)
    got = ProductSpec(fmt)(x, qw, 6)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-4)
    # M = 0 keeps the activation in floating point, whatever the format.
    np.testing.assert_array_equal(ProductSpec(fmt)(x, qw, 0), x @ int4.dequantize(qw))

  def test_one_compilation_serves_every_m(self):
    spec = ProductSpec((_FORMATS["mxfp4"], _FORMATS["anda"], _FORMATS["nvfp4"], _FORMATS["anda"]))
    x, w = testlib.heavy_tailed(2, (4, 64)), jnp.eye(64)
    traces = []

    @jax.jit
    def f(m):
      traces.append(1)
      return jnp.stack([spec.at(site)(x, w, m) for site in range(4)])

    outs = [f(jnp.int32(m)) for m in (0, 3, 8)]
    self.assertLen(traces, 1)
    np.testing.assert_array_equal(outs[0], jnp.stack([x] * 4))
    np.testing.assert_array_equal(outs[1][0], outs[2][0])  # MX ignores M's value
    self.assertFalse(np.array_equal(outs[1][1], outs[2][1]))  # Anda does not

  def test_bad_specs(self):
    with self.assertRaisesRegex(ValueError, "must be one, or one per type"):
      ProductSpec((_FORMATS["anda"],) * 3)
    with self.assertRaisesRegex(ValueError, "bitserial' is invalid for non-Anda formats"):
      ProductSpec(_FORMATS["mxfp4"], "bitserial")
    with self.assertRaisesRegex(ValueError, r"call spec.at\(site\)"):
      ProductSpec((_FORMATS["anda"],) * 4)(jnp.ones((2, 16)), jnp.ones((16, 2)), 4)
    with self.assertRaisesRegex(ValueError, "fmt='int8' is invalid"):
      ProductSpec("int8")


class PerTypeFormatsInAModelTest(absltest.TestCase):

  def test_model_quantizes_each_type_with_its_format(self):
    ckpt = testlib.make_checkpoint(testlib.tempdir(self) / "ckpt", d_model=64, d_ff=128)
    model, _ = models.load(ckpt)
    per_type = (_FORMATS["mxfp4"], _FORMATS["anda"], _FORMATS["nvfp4"], _FORMATS["fp8_token"])
    tokens = jnp.arange(12)[None] % 200
    precision = np.array([1, 5, 1, 1])
    got = jax.jit(lambda p: model(tokens, p, ProductSpec(per_type)))(precision)

    # The same model, with each site's input quantized by hand through a float-only spec.
    class ByHand(ProductSpec):
      def __call__(self, x, w, mantissa_bits, key=None, precision="highest"):
        m = 5 if isinstance(self.fmt, anda_jax.AndaFormat) else None
        return jnp.matmul(anda_jax.fake_quantize(x, self.fmt, m), int4.as_float(w), precision=precision)

    want = model(tokens, precision, ByHand(per_type))
    np.testing.assert_array_equal(got, want)
    float_logits = model(tokens)
    self.assertGreater(float(jnp.abs(got - float_logits).max()), 1e-3)  # the formats did act

  def test_a_format_choice_is_the_format_of_each_value(self):
    """docs/formats.md, section 10: a FormatChoice configuration (one compiled program for
    every configuration) equals the per-type formats its values name."""
    ckpt = testlib.make_checkpoint(testlib.tempdir(self) / "ckpt", d_model=64, d_ff=128)
    model, _ = models.load(ckpt)
    names = ("mxfp4", "mxint8", "nvfp4", "fp8_token")
    choice = anda_jax.FormatChoice(tuple(_FORMATS[n] for n in names))
    tokens = jnp.arange(12)[None] % 200
    traces = []

    @jax.jit
    def logits(p):
      traces.append(1)
      return model(tokens, p, ProductSpec(choice))

    for values in ([1, 2, 3, 4], [4, 0, 2, 1], [3, 3, 0, 0]):
      per_type = ProductSpec(tuple(_FORMATS[names[max(v, 1) - 1]] for v in values))
      want = model(tokens, np.minimum(values, 1), per_type)
      np.testing.assert_array_equal(logits(np.array(values)), want, err_msg=str(values))
    self.assertLen(traces, 1)
    np.testing.assert_array_equal(logits(np.zeros(4, int)), model(tokens))


if __name__ == "__main__":
  absltest.main()
