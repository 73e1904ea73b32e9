"""The repository explains itself: a short README, small modules, and the format definitions
cited from docs/formats.md, not from files a clone does not hold."""

import pathlib
import re
import subprocess

from absl.testing import absltest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tracked(*patterns: str) -> list[pathlib.Path]:
  out = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True,
                       check=True).stdout.split()
  return [ROOT / p for p in out]


class RepositoryTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    if not (ROOT / ".git").exists():
      self.fail("the repository checks need a git checkout (git ls-files)")

  def test_readme_is_at_most_250_lines(self):
    self.assertLessEqual(len((ROOT / "README.md").read_text().splitlines()), 250)

  def test_no_python_file_outside_tests_over_600_lines(self):
    long = {str(p.relative_to(ROOT)): n for p in tracked("*.py")
            if not p.relative_to(ROOT).parts[0] == "tests"
            and (n := len(p.read_text().splitlines())) > 600}
    self.assertEqual(long, {})

  def test_definitions_are_cited_from_the_repository_only(self):
    # The normative definitions live in docs/formats.md; files outside a clone are cited nowhere.
    outside = re.compile(r"ANDA_SPEC|\bDESIGN\.md")
    hits = [str(p.relative_to(ROOT)) for p in tracked("*.py", "*.md", "*.toml")
            if p.name != "repository_test.py" and outside.search(p.read_text())]
    self.assertEqual(hits, [])


if __name__ == "__main__":
  absltest.main()
