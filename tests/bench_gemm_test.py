"""experiments/bench_gemm.py: both layouts timed on every (shape, rows), bad flags refused."""

import contextlib
import io

from absl.testing import absltest

from experiments import bench_gemm


class BenchGemmTest(absltest.TestCase):

  def test_every_shape_and_row_count_gets_both_layouts(self):
    with contextlib.redirect_stdout(io.StringIO()) as out:
      rates = bench_gemm.run(["gemm", "--shapes=24x40,16x8", "--rows=8,32", "--repeats=1"])
    self.assertEqual(set(rates), {(s, r) for s in ("24x40", "16x8") for r in (8, 32)})
    for rate in rates.values():
      self.assertEqual(set(rate), {"kn", "nk"})
      self.assertTrue(all(v > 0 for v in rate.values()))
    self.assertIn("[N,K]/[K,N]", out.getvalue())
    self.assertEqual(set(bench_gemm.SHAPES), {"qkv", "o", "gate_up", "down", "head_chunk"})

  def test_bad_flags_are_refused(self):
    for flags in (["--rows=0"], ["--shapes=24"], ["--shapes=axb"], ["--shapes=0x4"]):
      with self.assertRaisesRegex(ValueError, "are invalid"):
        bench_gemm.run(["gemm"] + flags)


if __name__ == "__main__":
  absltest.main()
