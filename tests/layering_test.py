"""The layering contract in pyproject.toml ([tool.importlinter]) holds: no module imports from a
layer above its own. Fails, naming the import chain, on the first upward import."""

import contextlib
import io
import os
import pathlib

from absl.testing import absltest
from importlinter import cli

_REPO = pathlib.Path(__file__).resolve().parents[1]


class LayeringTest(absltest.TestCase):

  def test_no_upward_import(self):
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(_REPO)  # import-linter reads pyproject.toml from the working directory
    try:
      with contextlib.redirect_stdout(out):
        exit_code = cli.lint_imports(no_cache=True)
    finally:
      os.chdir(cwd)
    self.assertEqual(exit_code, 0, out.getvalue())
    self.assertIn("3 kept, 0 broken", out.getvalue())


if __name__ == "__main__":
  absltest.main()
