"""The cost model's assumptions table, its sensitivity tables and the paper's figures."""

import dataclasses

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from anda_jax import cost
from anda_jax import cost_assumptions
from anda_jax import models
from anda_jax.numerics import baselines
from anda_jax.numerics.anda import AndaFormat

LLAMA = cost.ModelShape(n_layers=2, d_model=8, n_heads=4, n_kv_heads=2, head_dim=2, d_ff=16,
                        vocab=32)
SMOLLM2 = cost.ModelShape.from_config(models.llama.PRESETS["smollm2-135m"])
HW = cost.Accelerator(lanes=64, memory_bits_per_cycle=32.0, tokens_per_weight_read=8,
                      compressor_elements_per_cycle=4.0, energy_per_memory_bit=2.0)


def _cells(lines, first):
  """The cells of the table row whose first cell is `first`."""
  row = next(l for l in lines if l.startswith(f"| {first} |"))
  return [c.strip() for c in row.split("|")[1:-1]]


class AssumptionsTableTest(absltest.TestCase):

  def test_every_field_and_rule_has_its_value_and_a_source(self):
    hw = dataclasses.replace(cost.Accelerator(), fp16_fma_lanes=17.5, head_weight_bits=4)
    lines = cost_assumptions.assumptions_table(hw)
    self.assertLen(lines, 2 + len(cost.ACCELERATOR_FIELDS) + len(cost_assumptions.RULES))
    for name in cost.ACCELERATOR_FIELDS:
      cells = _cells(lines, f"`{name}`")
      self.assertEqual(cells[1], repr(getattr(hw, name)))  # the run's value, not the default
      self.assertTrue(cells[2] and cells[3], name)
    for rule in cost_assumptions.RULES:
      self.assertTrue(all(_cells(lines, rule[0])), rule)

  def test_a_field_without_an_entry_is_refused(self):
    original = dict(cost_assumptions.ASSUMPTIONS)
    del cost_assumptions.ASSUMPTIONS["lanes"]
    try:
      with self.assertRaisesRegex(ValueError, r"\['lanes'\] have no entry"):
        cost_assumptions.assumptions_table(cost.Accelerator())
    finally:
      cost_assumptions.ASSUMPTIONS.update(original)


class SensitivityTest(parameterized.TestCase):

  def test_lanes_table_rows_are_summaries_at_each_area(self):
    configs = [("a", np.array([8, 4, 6, 2])), ("b", np.full(4, 7))]
    lines = cost_assumptions.lanes_table(SMOLLM2, configs, 64, 8, cost.Accelerator())
    values = sorted(set(cost_assumptions.FP16_FMA_LANES))
    self.assertLen(lines, 2 + len(values))  # the configured 30.25 is one of them
    for value in values:
      label = f"{value:g}" + (" (configured)" if value == 30.25 else "")
      cells = _cells(lines, label)
      hw = cost.Accelerator(fp16_fma_lanes=value)
      want = [cost.summarize(SMOLLM2, p, 64, 8, hw) for _, p in configs]
      self.assertEqual(cells[1:], [x for s in want for x in (f"{s['speedup_vs_fp16']:.2f}x",
                                                             f"{s['energy_saving_vs_fp16']:.2f}x")])
    # A configured area off the list gets its own row.
    lines = cost_assumptions.lanes_table(SMOLLM2, configs, 64, 8, cost.Accelerator(fp16_fma_lanes=25.0))
    self.assertLen(lines, 3 + len(values))
    self.assertTrue(_cells(lines, "25 (configured)"))

  def test_any_format_in_place_of_anda(self):
    """A search among formats: the sensitivity tables and the configurations' rows for a
    FormatChoice, against the cost model's own runs; Anda's through the same path agree with
    compare_formats."""
    choice = baselines.FormatChoice(tuple(baselines.parse_format(n) for n in ("mxint8", "nvfp4")))
    p = np.array([1, 2, 0, 2])
    lines = cost_assumptions.lanes_table(SMOLLM2, [("mixed", p)], 64, 8, HW, fmt=choice)
    fp16, run = HW.fp16_gpu(SMOLLM2), HW.run(SMOLLM2, p, choice)
    self.assertEqual(_cells(lines, "30.25 (configured)")[1:],
                     [f"{fp16['cycles'] / run['cycles']:.2f}x",
                      f"{fp16['energy'] / run['energy']:.2f}x"])
    rows = cost_assumptions.what_if(SMOLLM2, p, hw=HW, fmt=choice)
    self.assertEqual(rows[0]["anda_bound"], cost.bound(run))
    self.assertAlmostEqual(rows[0]["speedup_vs_fp16"], fp16["cycles"] / run["cycles"])
    self.assertIn("| assumption | speedup vs FP16 | energy saving vs FP16 | bound by |",
                  cost_assumptions.what_if_table(SMOLLM2, p, hw=HW, fmt=choice)[0])
    anda = np.array([8, 0, 6, 5])
    by_mode = cost_assumptions.configuration_rows(
        SMOLLM2, [("mixed", p, choice), ("anda", anda, AndaFormat(64, 8))], HW)
    for mode, want in cost.compare_formats_by_mode(SMOLLM2, anda, hw=HW).items():
      got = by_mode[mode][1]
      for key in ("storage_bits", "memory_bits", "lane_cycles_per_mac", "speedup_vs_fp16",
                  "energy_saving_vs_fp16"):
        self.assertAlmostEqual(got[key], want[-1][key], msg=(mode, key))
      self.assertEqual(by_mode[mode][0]["format"], "mixed")
    self.assertAlmostEqual(by_mode["aligned"][0]["storage_bits"],
                           cost.format_storage_bits(SMOLLM2, p, choice))

  def test_compute_bound_speedup_is_proportional_to_the_fp16_area(self):
    p = np.array([7, 6, 7, 8])
    speedups = [cost.summarize(SMOLLM2, p, hw=cost.Accelerator(fp16_fma_lanes=v))["speedup_vs_fp16"]
                for v in cost_assumptions.FP16_FMA_LANES]
    np.testing.assert_allclose(np.array(speedups) / cost_assumptions.FP16_FMA_LANES,
                               speedups[0] / cost_assumptions.FP16_FMA_LANES[0])

  @parameterized.parameters(2.0, 4.0, 9.0)
  def test_lanes_for_a_target_gives_that_target(self, target):
    p = np.array([7, 6, 7, 8])
    lanes = cost_assumptions.lanes_for(target, SMOLLM2, p, 64, 8, cost.Accelerator())
    got = cost.summarize(SMOLLM2, p, hw=cost.Accelerator(fp16_fma_lanes=lanes))
    self.assertAlmostEqual(got["speedup_vs_fp16"], target)

  def test_lanes_for_is_none_where_fp16_is_memory_bound(self):
    # Decoding: FP16 moves more bits than Anda, so no FMA area brings its speedup down to 1.
    decode = cost.Accelerator(tokens_per_weight_read=1)
    self.assertIsNone(cost_assumptions.lanes_for(1.0, SMOLLM2, np.full(4, 7), 64, 8, decode))
    self.assertIsNotNone(cost_assumptions.lanes_for(4.0, SMOLLM2, np.full(4, 7), 64, 8, decode))


class PaperTableTest(absltest.TestCase):

  def test_paper_figures_next_to_the_model_with_and_without_the_head(self):
    p = np.array([7, 6, 7, 8])
    hw = cost.Accelerator()
    lines = cost_assumptions.paper_table(SMOLLM2, p, 64, 8, hw, model="smollm2-135m")
    ours = cost.summarize(SMOLLM2, p, 64, 8, hw)
    bare = cost.summarize(SMOLLM2, p, 64, 8, dataclasses.replace(hw, lm_head=False))
    area = _cells(lines, "area efficiency (throughput per area)")
    self.assertEqual(area[1:4], ["4.0x", f"{ours['speedup_vs_fp16']:.2f}x",
                                 f"{bare['speedup_vs_fp16']:.2f}x"])
    lanes = cost_assumptions.lanes_for(4.0, SMOLLM2, p, 64, 8, hw)
    self.assertIn(f"{lanes:.1f} lanes give the paper's 4.0x", area[4])
    energy = _cells(lines, "energy efficiency")
    self.assertEqual(energy[1:4], ["3.1x", f"{ours['energy_saving_vs_fp16']:.2f}x",
                                   f"{bare['energy_saving_vs_fp16']:.2f}x"])
    self.assertEqual(_cells(lines, "speedup")[1:4], ["2.4x", "–", "–"])
    self.assertIn("smollm2-135m", _cells(lines, "what is evaluated")[2])
    # The head lowers the ratios: its FP16 input and 8-bit weights cost more than the layers.
    self.assertLess(ours["speedup_vs_fp16"], bare["speedup_vs_fp16"])


class WhatIfTest(absltest.TestCase):

  def test_what_if_changes_one_assumption_at_a_time(self):
    p = np.array([8, 4, 6, 2])
    hw = dataclasses.replace(HW, lm_head=False)
    variants = (("narrow", dict(compressor_elements_per_cycle=0.5)),
                ("decode", dict(tokens_per_weight_read=1, memory_bits_per_cycle=1.0)))
    rows = cost_assumptions.what_if(LLAMA, p, hw=hw, variants=variants)
    self.assertEqual([r["assumption"] for r in rows], ["as configured", "narrow", "decode"])
    for row, h in zip(rows, (hw, dataclasses.replace(hw, **variants[0][1]),
                             dataclasses.replace(hw, **variants[1][1]))):
      want = cost.summarize(LLAMA, p, hw=h)
      self.assertEqual(row["speedup_vs_fp16"], want["speedup_vs_fp16"])
      self.assertEqual(row["energy_saving_vs_fp16"], want["energy_saving_vs_fp16"])
    # By hand: compute 6144 / 64 = 96 cycles; 80 elements / 0.5 = 160 compressor cycles; with
    # one bit per cycle and weights read per token, memory (> 1152 * 5 bits) bounds both.
    self.assertEqual([(r["anda_bound"], r["fp16_bound"]) for r in rows],
                     [("compute", "compute"), ("compressor", "compute"), ("memory", "memory")])
    self.assertAlmostEqual(rows[1]["speedup_vs_fp16"], (1152 * 30.25 / 64) / 160)
    self.assertLen(cost_assumptions.what_if(LLAMA, p),
                   1 + len(cost_assumptions.ASSUMPTION_VARIANTS))
    # The head's variants: without it, the four-site model; with 4-bit head weights, in between.
    full = cost_assumptions.what_if(SMOLLM2, np.array([7, 6, 7, 8]))
    by_label = {r["assumption"].split(":")[0]: r["speedup_vs_fp16"] for r in full}
    self.assertLess(by_label["as configured"], by_label["head_weight_bits=4"])
    self.assertLess(by_label["head_weight_bits=4"], by_label["lm_head=False"])
    table = cost_assumptions.what_if_table(SMOLLM2, np.array([7, 6, 7, 8]))
    self.assertLen(table, 2 + len(full))


if __name__ == "__main__":
  absltest.main()
