"""`python -m experiments.results_doc [--check]`: writes (or checks) docs/results.md."""

from __future__ import annotations

import argparse
import difflib
import pathlib
import sys

from anda_jax import files
from experiments.results_doc import page
from experiments.results_doc.runs import DOC

DESCRIPTION = "Writes docs/results.md from the result files under docs/results/."


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m experiments.results_doc",
                                   description=DESCRIPTION)
  parser.add_argument("--check", action="store_true",
                      help="exit 1 if the page differs from what the files give; write nothing")
  parser.add_argument("--doc", type=pathlib.Path, default=DOC, help="the page (docs/results.md)")
  args = parser.parse_args(argv)
  try:
    text = page.generate()
  except (OSError, ValueError, KeyError) as e:
    print(f"error: docs/results cannot be read: {e}", file=sys.stderr)
    return 2
  if not args.check:
    files.atomic_write_text(args.doc, text)  # an interrupted write leaves the old page
    print(f"wrote {args.doc}")
    return 0
  current = args.doc.read_text() if args.doc.exists() else ""
  if current == text:
    return 0
  diff = list(difflib.unified_diff(current.splitlines(), text.splitlines(), str(args.doc),
                                   "generated", lineterm="", n=0))
  print(f"{args.doc} is stale: run `python -m experiments.results_doc`\n" + "\n".join(diff[:40]),
        file=sys.stderr)
  return 1


if __name__ == "__main__":
  sys.exit(main())
