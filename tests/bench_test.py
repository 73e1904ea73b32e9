"""experiments/bench.py: every benchmark refuses unknown, abbreviated and positional flags and bad
values in one line with exit status 2 before doing anything (a misspelled flag must not run the
defaults), and bench memory checks its disk space before writing its checkpoints."""

import contextlib
import importlib
import io
import os
import pathlib
import subprocess
import sys
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized

from experiments import bench
from experiments import bench_memory
import testlib

_REPO = pathlib.Path(__file__).resolve().parents[1]


def _refusal(test, run, argv) -> str:
  """The one line run(argv) prints on stderr as it exits with status 2."""
  err = io.StringIO()
  with contextlib.redirect_stderr(err), test.assertRaises(SystemExit) as cm:
    run(argv)
  test.assertEqual(cm.exception.code, 2, err.getvalue())
  lines = err.getvalue().splitlines()
  test.assertLen(lines, 1, err.getvalue())
  return lines[0]


class FlagsTest(parameterized.TestCase):

  @parameterized.parameters(*bench.BENCHMARKS)
  def test_unknown_and_positional_flags_are_refused_by_every_benchmark(self, name):
    module = importlib.import_module(f"experiments.bench_{name}")
    self.assertRegex(_refusal(self, module.run, [name, "--no_such_flag=1"]),
                     rf"^error: --no_such_flag=1 is invalid: no such flag \(python -m experiments.bench "
                     rf"{name} --help lists them\)$")
    self.assertRegex(_refusal(self, module.run, [name, "layers=1,2"]),
                     r"^error: layers=1,2 is invalid: this command takes only --flags")

  def test_memory_flags(self):
    cases = [
        (["--seqlen=32", "--windos=1"], r"--seqlen=32 is invalid: no such flag"),  # no abbreviations
        (["--seq=32"], r"--seq=32 is invalid: no such flag"),
        (["--layers=a,b"], r"--layers=a,b is invalid: must be two layer counts, the smaller first"),
        (["--layers=4,2"], r"--layers=4,2 is invalid: must be two layer counts"),
        (["--layers=2"], r"--layers=2 is invalid: must be two layer counts"),
        (["--windows=x"], r"--windows=x is invalid: must be an integer >= 1"),
        (["--seq_len=1"], r"--seq_len=1 is invalid: must be an integer >= 2"),
        (["--group_size=48"], r"--group_size=48 is invalid: must be an integer >= 2 dividing 4096 and 11008"),
        (["--layers"], r"--layers is invalid: expected one argument"),
    ]
    for argv, message in cases:
      with self.subTest(argv=argv):
        self.assertRegex(_refusal(self, bench_memory.run, ["memory", *argv]), "^error: " + message)

  def test_memory_checks_free_space_before_writing(self):
    tmp = testlib.tempdir(self)
    with mock.patch.object(bench_memory, "build_checkpoint", side_effect=AssertionError("wrote")):
      line = _refusal(self, bench_memory.run, ["memory", "--layers=100000,200000", f"--dir={tmp}"])
      self.assertRegex(line, rf"^error: --layers=100000,200000 is invalid with --dir='{tmp}': the "
                             r"checkpoints need about \d+\.\d GB and \d+\.\d GB are free there")
      line = _refusal(self, bench_memory.run, ["memory", f"--dir={tmp / 'missing'}"])
      self.assertRegex(line, r"^error: --dir='.*missing' is invalid: no such folder")
    self.assertEqual(os.listdir(tmp), [])
    # The estimate is the checkpoint's size: about 0.4 GB a layer, plus the embedding and head.
    per_layer = bench_memory.checkpoint_bytes(3) - bench_memory.checkpoint_bytes(2)
    self.assertEqual(per_layer, 2 * (4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096))
    self.assertEqual(bench_memory.checkpoint_bytes(0), 2 * (2 * 32000 * 4096 + 4096))

  def test_command_line(self):
    out = subprocess.run([sys.executable, "-m", "experiments.bench", "memory", "--seqlen=32", "--windos=1"],
                         cwd=_REPO, capture_output=True, text=True, timeout=300)
    self.assertEqual(out.returncode, 2, out.stderr)
    self.assertEqual(out.stderr.strip(), "error: --seqlen=32 is invalid: no such flag (python -m "
                                         "experiments.bench memory --help lists them)")
    out = subprocess.run([sys.executable, "-m", "experiments.bench", "memroy"], cwd=_REPO,
                         capture_output=True, text=True, timeout=300)
    self.assertEqual(out.returncode, 2, out.stderr)
    self.assertRegex(out.stderr.strip(), r"^error: benchmark 'memroy' is invalid: usage: python -m "
                                         r"experiments.bench \{format\|kernels\|")


if __name__ == "__main__":
  absltest.main()
