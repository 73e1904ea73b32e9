"""Cost model against numbers computed by hand for a small model, and against an independent
per-site reference on random shapes, configurations and settings."""

import dataclasses
import math

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from anda_jax import cost
from anda_jax import models
from anda_jax.numerics.anda import AndaFormat
from anda_jax.numerics import baselines
from anda_jax.numerics.baselines import MXFormat, NVFP4Format, PerTokenFormat
from configs import search as search_config

# A small LLaMA: 2 layers, d_model 8, 4 heads of 2 (2 kv heads), d_ff 16.
# Per layer:  qkv = 8 * (4*2 + 2 * 2*2) = 128   o = 8*8 = 64
#             up  = 2 * 8*16 = 256 (gate + up)   down = 16*8 = 128   total 576
# The LM head: 8 * 32 = 256 MACs per token.
LLAMA = cost.ModelShape(n_layers=2, d_model=8, n_heads=4, n_kv_heads=2, head_dim=2, d_ff=16,
                        vocab=32)
# The same shapes as OPT: kv heads = heads, one fc1.
# Per layer:  qkv = 8 * 24 = 192   o = 64   up = 128   down = 128   total 512
OPT = cost.ModelShape(n_layers=2, d_model=8, n_heads=4, n_kv_heads=4, head_dim=2, d_ff=16,
                      family="opt", vocab=32)


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
                                        family="opt", vocab=32)), OPT)
    self.assertIsNone(cost.as_shape(dict(n_layers=2, d_model=8, n_heads=4, d_ff=16)).vocab)

  @parameterized.named_parameters(
      ("layers", dict(n_layers=0)), ("family", dict(family="gpt")),
      ("kv_heads", dict(n_kv_heads=3)), ("vocab", dict(vocab=0)))
  def test_invalid_shape_names_the_field(self, change):
    kwargs = dict(n_layers=2, d_model=8, n_heads=4, n_kv_heads=2, head_dim=2, d_ff=16)
    kwargs.update(change)
    with self.assertRaisesRegex(ValueError, next(iter(change))):
      cost.ModelShape(**kwargs)

  def test_head_macs_need_the_vocabulary(self):
    self.assertEqual(LLAMA.head_macs(), 8 * 32)
    unknown = dataclasses.replace(LLAMA, vocab=None)
    with self.assertRaisesRegex(ValueError, "vocabulary size.*lm_head=False"):
      cost.Accelerator().anda(unknown, np.full(4, 4))
    self.assertEqual(cost.Accelerator(lm_head=False).anda(unknown, np.full(4, 4)),
                     cost.Accelerator(lm_head=False).anda(LLAMA, np.full(4, 4)))

  def test_smollm2_head_is_a_fifth_of_the_macs(self):
    smollm2 = cost.ModelShape.from_config(models.llama.PRESETS["smollm2-135m"])
    share = cost.summarize(smollm2, np.full(4, 8))["head_share"]
    self.assertAlmostEqual(share, 576 * 49152 / (576 * 49152 + 30 * 3538944))
    self.assertAlmostEqual(share, 0.2105, places=4)


def tiny_model(family):
  """A tiny anda_jax.models model (zero weights: only the shapes matter here)."""
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

  def test_search_config_cost_block_is_the_accelerator_defaults(self):
    # configs/ import nothing from the library, so the search config spells the defaults out.
    defaults = {f.name: f.default for f in dataclasses.fields(cost.Accelerator)}
    self.assertEqual(search_config.get_config().cost.to_dict(), defaults)
  # Without the head: the four searched sites (the head has its own tests below).
  HW = cost.Accelerator(lanes=64, memory_bits_per_cycle=32.0, tokens_per_weight_read=8,
                        weight_group_size=32, compressor_elements_per_cycle=4.0,
                        energy_per_memory_bit=2.0, energy_per_compressor_op=1.0, lm_head=False)

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
    self.assertAlmostEqual(mx["compute_cycles"], 1152 * 7 / 64)  # sign and 7 magnitude planes
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
    self.assertEqual(rows[2]["format"], "mxint8")  # the default other format
    self.assertEqual(rows[2]["cycles"], self.HW.mxint8(LLAMA)["cycles"])
    self.assertEqual(rows[2]["bound"], cost.bound(self.HW.mxint8(LLAMA)))
    table = cost.format_table(cost.compare_formats_by_mode(LLAMA, np.array([8, 4, 6, 2]),
                                                           hw=self.HW))
    self.assertEqual(table.count("\n"), 6)
    # storage, memory bits, then lane-cycles, speedup, energy in each FP-element model.
    self.assertIn("| mxint8 | 8.25 | ", table)
    self.assertIn("lane-cycles / MAC, aligned | lane-cycles / MAC, parallel |", table)


# Elements per layer and type of LLAMA (the contraction lengths K): qkv 8, o 8, up 8, down 16.
MIXED = (MXFormat("fp4_e2m1"), NVFP4Format(), AndaFormat(64), PerTokenFormat("int8"))


class FormatsTest(parameterized.TestCase):
  """Every format's storage bits, compute and traffic, by hand on LLAMA's shapes."""

  HW = AcceleratorTest.HW

  def test_storage_bits_of_each_format_by_hand(self):
    on = np.ones(4, np.int32)
    self.assertAlmostEqual(cost.format_storage_bits(LLAMA, on, MXFormat("fp4_e2m1")), 4.25)
    self.assertAlmostEqual(cost.format_storage_bits(LLAMA, on, MXFormat("int8", 16)), 8.5)
    # NVFP4: 4 + 8/16 + 32/K: 8.5 at K = 8 (qkv, o, up), 6.5 at K = 16 (down).
    np.testing.assert_allclose(cost.activation_bits(LLAMA, on, NVFP4Format()),
                               [[8.5, 8.5, 8.5, 6.5]] * 2)
    self.assertAlmostEqual(cost.format_storage_bits(LLAMA, on, NVFP4Format()),
                           (3 * 8 * 8.5 + 16 * 6.5) / 40)
    self.assertAlmostEqual(cost.format_storage_bits(LLAMA, on, PerTokenFormat("int8")),
                           (3 * 8 * 12 + 16 * 10) / 40)
    # One format per type; M = 0 keeps FP16 (16 bits); Anda reads M from the configuration.
    p = np.array([1, 0, 5, 1])
    self.assertAlmostEqual(cost.format_storage_bits(LLAMA, p, MIXED),
                           (8 * 4.25 + 8 * 16 + 8 * 6.125 + 16 * 10) / 40)
    self.assertAlmostEqual(cost.format_storage_bits(LLAMA, p, MIXED, quantized_only=True),
                           (8 * 4.25 + 8 * 6.125 + 16 * 10) / 32)
    self.assertTrue(np.isnan(cost.format_storage_bits(LLAMA, np.zeros(4, np.int32), MIXED,
                                                      quantized_only=True)))
    # Anda's own storage_bits is the same computation.
    self.assertEqual(cost.storage_bits(LLAMA, np.array([8, 4, 6, 0])),
                     cost.format_storage_bits(LLAMA, np.array([8, 4, 6, 0]), AndaFormat(64)))

  @parameterized.parameters(
      # element, aligned integer bits m + 1 + emax - emin, significand bits m + 1, exponent bits
      ("fp4_e2m1", 4, 2, 2), ("fp6_e2m3", 6, 4, 2), ("fp6_e3m2", 9, 3, 3),
      ("fp8_e4m3", 18, 4, 4), ("fp8_e5m2", 32, 3, 5))
  def test_element_lanes(self, element, aligned, significand, exponent):
    self.assertEqual(cost.Accelerator().element_lanes(element), aligned)
    self.assertEqual(cost.Accelerator(fp_elements="parallel").element_lanes(element),
                     significand + exponent)
    half = cost.Accelerator(fp_elements="parallel", fp_shift_lanes_per_exponent_bit=0.5)
    self.assertEqual(half.element_lanes(element), significand + 0.5 * exponent)

  def test_integer_elements_are_seven_planes_in_either_model(self):
    for fp_elements in cost.FP_ELEMENT_MODELS:
      self.assertEqual(cost.Accelerator(fp_elements=fp_elements).element_lanes("int8"), 7)

  def test_mixed_formats_by_hand(self):
    got = self.HW.run(LLAMA, np.array([1, 0, 5, 1]), MIXED)
    # Lanes per MAC: MXFP4 4 planes, o in FP16 (FIGNA-like, 16), Anda M = 5, INT8 7 planes.
    lane_cycles = 2 * (128 * 4 + 64 * 16 + 256 * 5 + 128 * 7)  # 7424
    act_bits = 2 * 2 * (8 * 4.25 + 8 * 16 + 8 * 6.125 + 16 * 10)  # two layers, written + read
    weight_bits = 1152 * (4 + 32 / 32) / 8
    # Compressor on the three quantized sites: compare + sign + magnitude bits (3, 5, 7).
    comp_ops = 2 * (8 * (2 + 3) + 8 * (2 + 5) + 16 * (2 + 7))
    self.assertAlmostEqual(got["lane_cycles"], lane_cycles)
    self.assertAlmostEqual(got["compute_cycles"], lane_cycles / 64)
    self.assertAlmostEqual(got["memory_bits"], act_bits + weight_bits)
    self.assertAlmostEqual(got["compressor_cycles"], 2 * (8 + 8 + 16) / 4)
    self.assertAlmostEqual(got["cycles"], max(lane_cycles / 64, (act_bits + weight_bits) / 32, 16))
    self.assertAlmostEqual(got["energy"], lane_cycles + 2 * (act_bits + weight_bits) + comp_ops)
    # FP16 everywhere passes no compressor.
    self.assertEqual(self.HW.run(LLAMA, np.zeros(4, np.int32), MIXED)["compressor_cycles"], 0)

  def test_a_format_choice_costs_as_the_formats_its_values_name(self):
    choice = baselines.FormatChoice((MXFormat("int8"), NVFP4Format(), PerTokenFormat(),
                                     MXFormat("fp4_e2m1")))
    values = np.array([[1, 2, 0, 4], [3, 3, 1, 0]])
    # By hand: MXINT8 8.25, NVFP4 4.5 + 32/K, per-token 8 + 32/K (K = 8, 8, 8, 16), FP16 16.
    np.testing.assert_allclose(cost.activation_bits(LLAMA, values, choice),
                               [[8.25, 8.5, 16, 4.25], [12, 12, 8.25, 16]])
    self.assertAlmostEqual(cost.format_storage_bits(LLAMA, values, choice),
                           (8 * (8.25 + 8.5 + 16 + 12 + 12 + 8.25) + 16 * (4.25 + 16)) / 80)
    # A per-type configuration costs as the tuple of the formats it names, in both models.
    for fp_elements in cost.FP_ELEMENT_MODELS:
      hw = dataclasses.replace(self.HW, fp_elements=fp_elements)
      got = hw.run(LLAMA, values[0], choice)
      per_type = tuple(choice.formats[v - 1] for v in (1, 2, 1, 4))
      want = hw.run(LLAMA, np.array([1, 1, 0, 1]), per_type)
      self.assertEqual(got, want)
    with self.assertRaisesRegex(ValueError, r"value=5 is invalid: must be an integer in \[1, 4\]"):
      cost.activation_bits(LLAMA, np.full(4, 5), choice)

  def test_memory_bound_when_weights_are_read_per_token(self):
    hw = dataclasses.replace(self.HW, tokens_per_weight_read=1)
    got = hw.run(LLAMA, np.ones(4, np.int32), MXFormat("fp4_e2m1"))
    self.assertAlmostEqual(got["memory_bits"], 2 * 2 * 40 * 4.25 + 1152 * 5)
    self.assertEqual(got["cycles"], got["memory_cycles"])
    self.assertGreater(got["memory_cycles"], got["compute_cycles"])

  def test_compare_formats_puts_other_formats_at_the_quantized_sites(self):
    p = np.array([8, 0, 6, 2])
    others = [baselines.parse_format(n) for n in ("mxfp4", "nvfp4", "fp8_token")]
    rows = cost.compare_formats(LLAMA, p, hw=self.HW, other_formats=others)
    self.assertEqual([r["format"] for r in rows[2:5]], ["mxfp4", "nvfp4", "fp8_token"])
    on = np.array([1, 0, 1, 1])
    for row, fmt in zip(rows[2:5], others):
      want = self.HW.run(LLAMA, on, fmt)
      self.assertAlmostEqual(row["cycles"], want["cycles"])
      self.assertAlmostEqual(row["memory_bits"], want["memory_bits"])
      self.assertAlmostEqual(row["storage_bits"], cost.format_storage_bits(LLAMA, on, fmt))
      self.assertAlmostEqual(row["lane_cycles_per_mac"], want["lane_cycles"] / 1152)
    # FP8 per token: 18 planes where quantized, 16 (FIGNA-like) at o.
    self.assertAlmostEqual(rows[4]["lane_cycles_per_mac"], (2 * (128 + 256 + 128) * 18 + 2 * 64 * 16) / 1152)
    self.assertIn("| nvfp4 | ", cost.format_table({"aligned": rows}))

  @parameterized.named_parameters(
      ("lanes", dict(lanes=0), "lanes=0"),
      ("bandwidth", dict(memory_bits_per_cycle=0.0), "memory_bits_per_cycle=0.0"),
      ("energy", dict(energy_per_memory_bit=-1.0), "energy_per_memory_bit=-1.0"),
      ("nan", dict(fp16_fma_lanes=float("nan")), "fp16_fma_lanes=nan"),
      ("model", dict(fp_elements="serial"), "fp_elements='serial'.*aligned"))
  def test_invalid_accelerator_names_the_field(self, change, message):
    with self.assertRaisesRegex(ValueError, message):
      cost.Accelerator(**change)
    with self.assertRaisesRegex(ValueError, "cost." + message):
      cost.accelerator(change)

  def test_accelerator_from_settings(self):
    self.assertEqual(cost.accelerator(None), cost.Accelerator())
    self.assertEqual(cost.accelerator(dict(lanes=None, fp16_fma_lanes=16.0)),
                     cost.Accelerator(fp16_fma_lanes=16.0))
    with self.assertRaisesRegex(ValueError, r"\['lane'\] are invalid.*'lanes'"):
      cost.accelerator(dict(lane=3))
    with self.assertRaisesRegex(ValueError, "fmt=.*is invalid"):
      cost.format_storage_bits(LLAMA, np.ones(4, np.int32), (MXFormat(),) * 3)


class HeadTest(absltest.TestCase):
  """The LM head as a site of its own, by hand on LLAMA (head: 256 MACs, 8 input elements)."""

  HW = dataclasses.replace(AcceleratorTest.HW, lm_head=True)  # head_weight_bits 8: two slices

  def test_fp16_head_by_hand(self):
    p = np.array([8, 4, 6, 2])
    got, bare = self.HW.anda(LLAMA, p), AcceleratorTest.HW.anda(LLAMA, p)
    # FP16 input, FIGNA-like: 16 planes x 2 slices of the 8-bit weights.
    self.assertAlmostEqual(got["lane_cycles"], bare["lane_cycles"] + 256 * 16 * 2)
    # Its input written and read at 16 bits; its weights at 8 + 32 / 32 bits, per 8 tokens.
    self.assertAlmostEqual(got["memory_bits"],
                           bare["memory_bits"] + 2 * 8 * 16 + 256 * 9 / 8)
    self.assertAlmostEqual(got["compressor_cycles"], bare["compressor_cycles"])  # FP16: none
    fp16, fp16_bare = self.HW.fp16_gpu(LLAMA), AcceleratorTest.HW.fp16_gpu(LLAMA)
    self.assertAlmostEqual(fp16["lane_cycles"], (1152 + 256) * 30.25)  # one FMA, any weight
    self.assertAlmostEqual(fp16["memory_bits"], fp16_bare["memory_bits"] + 2 * 8 * 16 + 256 * 9 / 8)
    self.assertAlmostEqual(self.HW.figna(LLAMA)["lane_cycles"], 1152 * 16 + 256 * 16 * 2)
    s = cost.summarize(LLAMA, p, hw=self.HW)
    self.assertAlmostEqual(s["head_share"], 256 / (1152 + 256))
    self.assertAlmostEqual(s["speedup_vs_fp16"], fp16["cycles"] / got["cycles"])
    # The measures of the configuration stay over the four searched sites.
    bare_summary = cost.summarize(LLAMA, p, hw=AcceleratorTest.HW)
    for key in ("mean_m", "storage_bits", "bops", "bops_saving"):
      self.assertEqual(s[key], bare_summary[key])

  def test_quantized_head_takes_the_qkv_format(self):
    hw = dataclasses.replace(self.HW, head_mantissa_bits=5, head_weight_bits=4)
    p = np.array([8, 4, 6, 2])
    got, bare = hw.anda(LLAMA, p), AcceleratorTest.HW.anda(LLAMA, p)
    self.assertAlmostEqual(got["lane_cycles"], bare["lane_cycles"] + 256 * 5)
    self.assertAlmostEqual(got["memory_bits"],
                           bare["memory_bits"] + 2 * 8 * 6.125 + 256 * 5 / 8)
    self.assertAlmostEqual(got["compressor_cycles"], bare["compressor_cycles"] + 8 / 4)
    self.assertAlmostEqual(got["energy"] - bare["energy"],
                           256 * 5 + 2 * (2 * 8 * 6.125 + 256 * 5 / 8) + 8 * (2 + 5))
    # With MXFP4 at qkv (and every site), the head is MXFP4: 4 planes, 4.25 bits.
    mx = hw.run(LLAMA, np.ones(4, np.int32), MXFormat("fp4_e2m1"))
    mx_bare = AcceleratorTest.HW.run(LLAMA, np.ones(4, np.int32), MXFormat("fp4_e2m1"))
    self.assertAlmostEqual(mx["lane_cycles"], mx_bare["lane_cycles"] + 256 * 4)
    self.assertAlmostEqual(mx["memory_bits"] - mx_bare["memory_bits"], 2 * 8 * 4.25 + 256 * 5 / 8)

  def test_invalid_head_settings_name_the_field(self):
    for change, message in ((dict(lm_head=1), "lm_head=1 is invalid"),
                            (dict(head_mantissa_bits=25), r"head_mantissa_bits=25 .*\[0, 24\]"),
                            (dict(head_weight_bits=0), "head_weight_bits=0 is invalid")):
      with self.assertRaisesRegex(ValueError, message):
        cost.Accelerator(**change)


class ModesTest(absltest.TestCase):

  def test_both_models_differ_only_in_fp_elements(self):
    p = np.array([8, 0, 6, 2])
    others = [baselines.parse_format(n) for n in baselines.FORMAT_NAMES]
    modes = cost.compare_formats_by_mode(LLAMA, p, hw=cost.Accelerator(), other_formats=others)
    self.assertEqual(tuple(modes), cost.FP_ELEMENT_MODELS)
    for aligned, parallel in zip(*modes.values()):
      self.assertEqual(aligned["format"], parallel["format"])
      self.assertEqual(aligned["memory_bits"], parallel["memory_bits"])
      fp = aligned["format"] in ("mxfp6_e3m2", "mxfp8_e4m3", "mxfp8_e5m2", "fp8_token")
      # E2M1 (4 = 2 + 2) and E2M3 (6 = 4 + 2) cost the same in both; the wider ones do not.
      if fp:
        self.assertLess(parallel["lane_cycles_per_mac"], aligned["lane_cycles_per_mac"])
      else:
        self.assertEqual(aligned["lane_cycles_per_mac"], parallel["lane_cycles_per_mac"])
    # FP8 E4M3 per MAC: 18 planes aligned, 4 significand + 4 shifter lanes parallel.
    e4m3 = {m: next(r for r in rows if r["format"] == "mxfp8_e4m3") for m, rows in modes.items()}
    sites = cost.Accelerator().sites(LLAMA)
    on = sites["macs"][:-1].reshape(2, 4)[:, [0, 2, 3]].sum()
    fp16 = sites["macs"][:-1].reshape(2, 4)[:, 1].sum() * 16 + 256 * 16 * 2
    for mode, lanes in (("aligned", 18), ("parallel", 8)):
      self.assertAlmostEqual(e4m3[mode]["lane_cycles_per_mac"],
                             (on * lanes + fp16) / sites["macs"].sum())


# Per-MAC compute and stored bits of each other format, spelled out (docs/formats.md, sections 5
# to 7): element -> (aligned planes, parallel significand lanes, exponent bits, element bits).
_ELEMENTS = dict(fp4_e2m1=(4, 2, 2, 4), fp6_e2m3=(6, 4, 2, 6), fp6_e3m2=(9, 3, 3, 6),
                 fp8_e4m3=(18, 4, 4, 8), fp8_e5m2=(32, 3, 5, 8), int8=(7, 7, 0, 8))


def _reference_site(fmt, m: int, k: int, hw) -> tuple:
  """(lanes per 4-bit weight slice, stored bits, compressor magnitude bits or None)."""
  if m == 0:
    return hw.figna_mantissa_bits, 16.0, None
  if isinstance(fmt, AndaFormat):
    return m, 1 + m + fmt.exponent_bits / fmt.group_size, m
  element = "fp4_e2m1" if isinstance(fmt, NVFP4Format) else fmt.element
  aligned, significand, exponent, bits = _ELEMENTS[element]
  lanes = (aligned if element == "int8" or hw.fp_elements == "aligned"
           else significand + hw.fp_shift_lanes_per_exponent_bit * exponent)
  stored = (bits + 8 / fmt.block_size if isinstance(fmt, MXFormat)
            else 4 + 8 / 16 + 32 / k if isinstance(fmt, NVFP4Format) else 8 + 32 / k)
  return lanes, stored, bits - 1


def _reference(shape, p, fmt, hw) -> dict:
  """Accelerator.run recomputed site by site from the docstring's rules."""
  d, nh, nkv, hd, f = shape.d_model, shape.n_heads, shape.n_kv_heads, shape.head_dim, shape.d_ff
  per_type = [(d * (nh + 2 * nkv) * hd, d), (nh * hd * d, nh * hd),
              ((2 if shape.family == "llama" else 1) * d * f, d), (f * d, f)]
  sites = [(macs, k, hw.weight_bits, int(p[layer, t]))
           for layer in range(shape.n_layers) for t, (macs, k) in enumerate(per_type)]
  if hw.lm_head:
    sites.append((d * shape.vocab, d, hw.head_weight_bits, hw.head_mantissa_bits))
  lane_cycles = memory = ops = compressed = 0.0
  for macs, k, w_bits, m in sites:
    lanes, stored, magnitude = _reference_site(fmt, m, k, hw)
    lane_cycles += macs * lanes * math.ceil(w_bits / 4)
    memory += 2 * k * stored + macs * (w_bits + 32 / hw.weight_group_size) / hw.tokens_per_weight_read
    if magnitude is not None:
      ops, compressed = ops + k * (2 + magnitude), compressed + k
  cycles = max(lane_cycles / hw.lanes, memory / hw.memory_bits_per_cycle,
               compressed / hw.compressor_elements_per_cycle)
  return dict(lane_cycles=lane_cycles, memory_bits=memory, cycles=cycles,
              energy=lane_cycles + memory * hw.energy_per_memory_bit
              + ops * hw.energy_per_compressor_op)


class ReferenceTest(parameterized.TestCase):

  @parameterized.parameters(range(40))
  def test_run_matches_the_site_by_site_reference(self, seed):
    rng = np.random.default_rng(seed)
    family = ("llama", "opt")[seed % 2]
    n_heads = int(rng.choice([2, 4, 8]))
    n_kv = n_heads if family == "opt" else int(rng.choice([h for h in (1, 2, n_heads)
                                                           if n_heads % h == 0]))
    head_dim = int(rng.choice([4, 8]))
    shape = cost.ModelShape(
        n_layers=int(rng.integers(1, 4)), d_model=n_heads * head_dim if family == "opt"
        else int(rng.choice([16, 32])), n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim,
        d_ff=int(rng.choice([32, 48])), family=family, vocab=int(rng.integers(10, 500)))
    fmt = (AndaFormat(int(rng.choice([16, 32, 64])), int(rng.integers(4, 9))) if seed % 3 == 0
           else baselines.parse_format(str(rng.choice(baselines.FORMAT_NAMES))))
    hw = cost.Accelerator(
        lanes=int(rng.integers(16, 4096)), memory_bits_per_cycle=float(rng.uniform(8, 4096)),
        tokens_per_weight_read=int(rng.integers(1, 300)),
        fp16_fma_lanes=float(rng.uniform(10, 70)), weight_bits=int(rng.choice([3, 4, 8])),
        weight_group_size=int(rng.choice([16, 32, 128])),
        compressor_elements_per_cycle=float(rng.uniform(1, 128)),
        energy_per_memory_bit=float(rng.uniform(0, 200)),
        energy_per_compressor_op=float(rng.uniform(0, 3)),
        fp_elements=str(rng.choice(cost.FP_ELEMENT_MODELS)),
        fp_shift_lanes_per_exponent_bit=float(rng.uniform(0, 2)), lm_head=bool(seed % 4),
        head_mantissa_bits=int(rng.choice([0, 0, rng.integers(1, 12)])),
        head_weight_bits=int(rng.choice([4, 8, 16])))
    p = rng.integers(0, 12, (shape.n_layers, 4)) * (rng.random((shape.n_layers, 4)) < 0.8)
    got, want = hw.run(shape, p, fmt), _reference(shape, p, fmt, hw)
    for key, value in want.items():
      self.assertAlmostEqual(got[key] / value, 1.0, places=12, msg=key)
    # The FP16 x FP16 baseline: one FMA per MAC at every site, whatever the weight bits.
    macs = hw.sites(shape)["macs"].sum()
    self.assertAlmostEqual(hw.fp16_gpu(shape)["lane_cycles"] / (macs * hw.fp16_fma_lanes), 1.0)
    ref_fp16 = _reference(shape, np.zeros_like(p), fmt, dataclasses.replace(hw, head_mantissa_bits=0))
    self.assertAlmostEqual(hw.figna(shape)["lane_cycles"] / ref_fp16["lane_cycles"], 1.0)


if __name__ == "__main__":
  absltest.main()
