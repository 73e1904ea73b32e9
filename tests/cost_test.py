"""Cost model against numbers computed by hand for a small model."""

import dataclasses

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from anda_jax import cost

# A small LLaMA: 2 layers, d_model 8, 4 heads of 2 (2 kv heads), d_ff 16.
# Per layer:  qkv = 8 * (4*2 + 2 * 2*2) = 128   o = 8*8 = 64
#             up  = 2 * 8*16 = 256 (gate + up)   down = 16*8 = 128   total 576
LLAMA = cost.ModelShape(n_layers=2, d_model=8, n_heads=4, n_kv_heads=2, head_dim=2, d_ff=16)
# The same shapes as OPT: kv heads = heads, one fc1.
# Per layer:  qkv = 8 * 24 = 192   o = 64   up = 128   down = 128   total 512
OPT = cost.ModelShape(n_layers=2, d_model=8, n_heads=4, n_kv_heads=4, head_dim=2, d_ff=16,
                      family="opt")


@dataclasses.dataclass
class FakeConfig:
  n_layers: int = 2
  d_model: int = 8
  n_heads: int = 4
  n_kv_heads: int = 2
  head_dim: int = 2
  d_ff: int = 16
  vocab: int = 32


class ShapesTest(parameterized.TestCase):

  def test_llama_macs_by_hand(self):
    self.assertEqual(LLAMA.macs_per_token(), dict(qkv=256, o=128, up=512, down=256))
    self.assertEqual(cost.macs_per_token(2, 8, 4, 2, 2, 16),
                     dict(qkv=256, o=128, up=512, down=256))

  def test_opt_macs_by_hand(self):
    self.assertEqual(OPT.macs_per_token(), dict(qkv=384, o=128, up=256, down=256))

  def test_from_config_object_and_model(self):
    self.assertEqual(cost.ModelShape.from_config(FakeConfig()), LLAMA)

    class Model:
      config = FakeConfig()
    self.assertEqual(cost.as_shape(Model()), LLAMA)
    self.assertEqual(cost.as_shape(dict(n_layers=2, d_model=8, n_heads=4, d_ff=16,
                                        family="opt")), OPT)

  @parameterized.named_parameters(
      ("layers", dict(n_layers=0)), ("family", dict(family="gpt")),
      ("kv_heads", dict(n_kv_heads=3)))
  def test_invalid_shape_names_the_field(self, change):
    kwargs = dict(n_layers=2, d_model=8, n_heads=4, n_kv_heads=2, head_dim=2, d_ff=16)
    kwargs.update(change)
    with self.assertRaisesRegex(ValueError, next(iter(change))):
      cost.ModelShape(**kwargs)


def tiny_model(family):
  """A tiny anda_jax.models model (zero weights: only the shapes matter here)."""
  from anda_jax import models  # pylint: disable=g-import-not-at-top
  n, d, f, v = 2, 8, 16, 32
  if family == "llama":
    config = models.LlamaConfig(n_layers=n, d_model=d, n_heads=4, n_kv_heads=2, d_ff=f,
                                vocab=v)
    layers = dict(attn_norm=np.ones((n, d)), qkv=np.zeros((n, d, 16)), o=np.zeros((n, d, d)),
                  mlp_norm=np.ones((n, d)), up=np.zeros((n, d, 2 * f)),
                  down=np.zeros((n, f, d)))
    return models.Llama(config, dict(embed=np.zeros((v, d)), final_norm=np.ones(d),
                                     layers=layers))
  config = models.OPTConfig(n_layers=n, d_model=d, n_heads=4, d_ff=f, vocab=v,
                            max_positions=16)
  layers = dict(attn_ln_w=np.ones((n, d)), attn_ln_b=np.zeros((n, d)),
                qkv=np.zeros((n, d, 3 * d)), o=np.zeros((n, d, d)),
                mlp_ln_w=np.ones((n, d)), mlp_ln_b=np.zeros((n, d)),
                up=np.zeros((n, d, f)), down=np.zeros((n, f, d)))
  return models.OPT(config, dict(embed=np.zeros((v, d)), positions=np.zeros((18, d)),
                                 final_ln_w=np.ones(d), final_ln_b=np.zeros(d),
                                 layers=layers))


class ModelAgreementTest(parameterized.TestCase):

  @parameterized.parameters(("llama", LLAMA), ("opt", OPT))
  def test_shapes_and_macs_match_the_model(self, family, expected):
    model = tiny_model(family)
    self.assertEqual(cost.as_shape(model), expected)
    self.assertEqual(cost.as_shape(model).macs_per_token(), model.macs_per_token())


class MeasuresTest(parameterized.TestCase):

  def test_mean_mantissa_bits_by_hand(self):
    # (128*8 + 64*4 + 256*6 + 128*2) / 576 = 3072 / 576
    self.assertAlmostEqual(cost.mean_mantissa_bits(LLAMA, np.array([8, 4, 6, 2])),
                           3072 / 576)
    # Per layer: layer 0 all 4, layer 1 all 8 -> 6.
    self.assertAlmostEqual(cost.mean_mantissa_bits(LLAMA, np.array([[4] * 4, [8] * 4])), 6.0)
    # Float counts as 16 aligned bits.
    self.assertAlmostEqual(cost.mean_mantissa_bits(LLAMA, np.zeros(4, np.int32)), 16.0)

  def test_storage_bits_by_hand(self):
    # Elements per layer: qkv 8, o 8, up 8, down 16 (40). G=64, e=8 -> +0.125 bit.
    # M = [8, 4, 6, 0]: (8*9.125 + 8*5.125 + 8*7.125 + 16*16) / 40
    expected = (8 * 9.125 + 8 * 5.125 + 8 * 7.125 + 16 * 16) / 40
    self.assertAlmostEqual(cost.storage_bits(LLAMA, np.array([8, 4, 6, 0])), expected)
    self.assertAlmostEqual(cost.storage_bits(LLAMA, np.full(4, 3), group_size=16,
                                             exponent_bits=5), 1 + 3 + 5 / 16)

  def test_bops_by_hand(self):
    # 2 layers * (128*9 + 64*5 + 256*7 + 128*16) * 4 bits
    self.assertEqual(cost.bops(LLAMA, np.array([8, 4, 6, 0])),
                     2 * (128 * 9 + 64 * 5 + 256 * 7 + 128 * 16) * 4)
    self.assertEqual(cost.fp16_bops(LLAMA), 1152 * 16 * 4)
    self.assertEqual(cost.bops(LLAMA, np.zeros(4, np.int32)), cost.fp16_bops(LLAMA))

  def test_invalid_precision(self):
    with self.assertRaisesRegex(ValueError, "shape"):
      cost.bops(LLAMA, np.zeros((3, 4), np.int32))
    with self.assertRaisesRegex(ValueError, "0, 24"):
      cost.bops(LLAMA, np.array([25, 4, 4, 4]))


class AcceleratorTest(parameterized.TestCase):
  HW = cost.Accelerator(lanes=64, memory_bits_per_cycle=32.0, tokens_per_weight_read=8,
                        weight_group_size=32, compressor_elements_per_cycle=4.0,
                        energy_per_memory_bit=2.0, energy_per_compressor_op=1.0)

  def test_anda_by_hand(self):
    p = np.array([8, 4, 6, 2])
    got = self.HW.anda(LLAMA, p)
    lane_cycles = 2 * (128 * 8 + 64 * 4 + 256 * 6 + 128 * 2)  # 6144
    act_bits = 2 * 2 * (8 * 9.125 + 8 * 5.125 + 8 * 7.125 + 16 * 3.125)  # written + read
    weight_bits = 1152 * (4 + 32 / 32) / 8
    comp_ops = 2 * (8 * 10 + 8 * 6 + 8 * 8 + 16 * 4)  # compare + sign + M per element
    self.assertAlmostEqual(got["compute_cycles"], lane_cycles / 64)
    self.assertAlmostEqual(got["memory_bits"], act_bits + weight_bits)
    self.assertAlmostEqual(got["memory_cycles"], (act_bits + weight_bits) / 32)
    self.assertAlmostEqual(got["compressor_cycles"], 80 / 4)
    self.assertAlmostEqual(got["cycles"], max(96, (act_bits + weight_bits) / 32, 20))
    self.assertAlmostEqual(got["energy"],
                           lane_cycles + 2 * (act_bits + weight_bits) + comp_ops)

  def test_baselines_by_hand(self):
    weight_bits = 1152 * 5 / 8
    fp16_mem = 2 * 80 * 16 + weight_bits
    fp16 = self.HW.fp16_gpu(LLAMA)
    self.assertAlmostEqual(fp16["compute_cycles"], 1152 * 30.25 / 64)
    self.assertAlmostEqual(fp16["energy"], 1152 * 30.25 + 2 * fp16_mem)
    figna = self.HW.figna(LLAMA)
    self.assertAlmostEqual(figna["compute_cycles"], 1152 * 16 / 64)
    mx = self.HW.mxint8(LLAMA)
    self.assertAlmostEqual(mx["compute_cycles"], 1152 * 8 / 64)
    self.assertAlmostEqual(mx["memory_bits"], 2 * 80 * 8.25 + weight_bits)
    # BFP with uniform M is Anda with every type at M.
    self.assertEqual(self.HW.bfp(LLAMA, 5), self.HW.anda(LLAMA, np.full(4, 5)))

  def test_fewer_bits_never_cost_more(self):
    previous = None
    for m in range(12, 0, -1):
      now = self.HW.anda(LLAMA, np.full(4, m))
      if previous is not None:
        self.assertLessEqual(now["cycles"], previous["cycles"])
        self.assertLess(now["energy"], previous["energy"])
      previous = now

  def test_summary_and_table(self):
    s = cost.summarize(LLAMA, np.array([8, 4, 6, 2]), hw=self.HW)
    self.assertAlmostEqual(s["bops_saving"], 1 - cost.bops(LLAMA, [8, 4, 6, 2]) / (1152 * 64))
    self.assertAlmostEqual(s["speedup_vs_fp16"],
                           self.HW.fp16_gpu(LLAMA)["cycles"] / self.HW.anda(LLAMA, [8, 4, 6, 2])["cycles"])
    rows = cost.compare_formats(LLAMA, np.array([8, 4, 6, 2]), hw=self.HW)
    self.assertLen(rows, 5)
    self.assertEqual(rows[0]["speedup_vs_fp16"], 1.0)
    self.assertIn("BFP, uniform M=6", rows[3]["format"])  # ceil(3072 / 576)
    table = cost.format_table(rows)
    self.assertEqual(table.count("\n"), 6)
    self.assertIn("MXINT8", table)


if __name__ == "__main__":
  absltest.main()
