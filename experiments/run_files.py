"""The files of a run folder that make experiments resumable (setup.json and a JSON-lines log),
and the `--config=configs/...` command line every experiment shares.

Every experiment appends one JSON line per result as soon as it is known; a rerun reads
them back and skips what is done. setup.json records what those rows are valid for, so a
rerun with other settings is refused instead of mixing results.
"""

from __future__ import annotations

import json
import pathlib

from absl import app
from absl import flags
from ml_collections import config_flags


def check_setup(run_dir: pathlib.Path, setup: dict, write: bool = True) -> None:
  """Writes run_dir/setup.json, or checks that an existing one describes the same run."""
  path = pathlib.Path(run_dir) / "setup.json"
  if path.exists():
    old = json.loads(path.read_text())
    if old != setup:
      diff = {k: (old.get(k), setup.get(k)) for k in sorted(set(old) | set(setup)) if old.get(k) != setup.get(k)}
      raise ValueError(f"{path} was written for other settings (old, new): {diff}; "
                       "choose another --config.run_name or remove the folder")
  elif write:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(setup, indent=1) + "\n")


def read_jsonl(path: pathlib.Path, repair: bool = False) -> list[dict]:
  """The rows of a JSON-lines log. A torn last line (an interrupted write) is ignored and,
  with `repair`, cut off so that the next append starts on a fresh line; a broken line
  anywhere else is an error naming the file and line."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  raw = path.read_bytes()
  if repair and raw and not raw.endswith(b"\n"):
    raw = raw[:raw.rfind(b"\n") + 1]
    path.write_bytes(raw)
  lines = raw.decode().splitlines()
  rows = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      if i == len(lines) - 1:
        continue
      raise ValueError(f"{path}:{i + 1}: not a JSON line: {line[:80]!r}") from None
  return rows


def append_jsonl(path: pathlib.Path, rows: list[dict]) -> None:
  """Appends rows and flushes, so that what is known survives an interruption."""
  with pathlib.Path(path).open("a") as f:
    f.write("".join(json.dumps(row) + "\n" for row in rows))
    f.flush()


def run_with_config(run, description: str) -> None:
  """`python -m experiments.<name> --config=configs/<file>.py [--config.<key>=...]`: calls
  run(config). The --config flag is defined here, when a module runs as a program, so that the
  experiment modules can import one another without defining it twice."""
  config = config_flags.DEFINE_config_file("config", None, description, lock_config=True)
  flags.mark_flag_as_required("config")

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments {argv[1:]}")
    run(config.value)

  app.run(main)
