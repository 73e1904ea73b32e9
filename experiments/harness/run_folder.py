"""The run folder: setup.json (what the rows are valid for), a JSON-lines results file appended
as results come, and a lock.

Every experiment appends one JSON line per result as soon as it is known; a rerun reads them back
and skips what is done. setup.json records the settings that change a result, the model's content
and the token windows by sha256, so a rerun against other settings or inputs is refused instead
of mixing results. A broken line of a results file (garbage, a row without its key, non-UTF-8
bytes, a torn last line) is moved to `<file>.broken` with a warning naming file and line, and the
run recomputes what it held. setup.json is written atomically (temp file + rename). A run holds a
lock on its folder: a second process on the same folder is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shutil

from absl import logging
import numpy as np

from anda_jax import files
from experiments.harness import config_checks
from experiments.harness import distributed
from experiments.harness import loading


def windows_sha256(windows: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(windows, np.int32).tobytes()).hexdigest()


def setup_of(cfg, windows, model_digest: str) -> dict:
  """What the rows of a sweep or sensitivity run are valid for: every setting that changes a
  result, the model's content and the windows' checksum. windows None: the part known before
  anything is loaded (for check_setup(partial=True))."""
  setup = dict(model=dict(cfg.model.to_dict(), sha256=model_digest),
               exponent_bits=cfg.format.exponent_bits, rounding=cfg.format.rounding, impl=cfg.impl,
               seed=cfg.seed, data=data_setup(cfg.data), window_batch=cfg.window_batch,
               config_batch=cfg.config_batch)
  if windows is not None:
    setup.update(windows_shape=list(windows.shape), windows_sha256=windows_sha256(windows))
  return setup | finetune_setup(cfg) | mesh_setup(cfg)


def data_setup(d) -> dict:
  """The `data` section as setup.json records it: without `bos`, whose resolved value (what the
  windows are) bos_setup records."""
  return {k: v for k, v in d.to_dict().items() if k != "bos"}


def bos_setup(bos_first: bool) -> dict:
  """The setup.json entry of windows that start with BOS (data.bos, resolved for the model's
  tokenizer); {} for windows cut from the stream alone, so that the setup of such a run (every
  run before the setting, all on SmolLM2, whose tokenizer adds no BOS) reads as before."""
  return dict(bos_first=True) if bos_first else {}


def mesh_setup(cfg) -> dict:
  """The setup.json entry of the `mesh` setting: what of it changes a result. Model shards do:
  a row-parallel product (o, down) adds its shards' partial sums in another order, and a cell
  at low M moves with that order as it does across CPUs (configs/common.py, `mesh`). Config
  shards change no bit (each device evaluates whole configurations), nor does the number of
  processes. {} for one model shard, so that the setup of a run without a mesh reads as before."""
  shards = 1 if cfg.mesh is None else int(cfg.mesh[1])
  return {} if shards == 1 else dict(model_shards=shards)


def weights_setup(model) -> dict:
  """The setup.json entry of what a loaded model's weights are: each stored tensor type, what
  it became (INT4 as stored, INT4 re-quantized, a float dtype) and how many tensors
  (anda_jax.models.weight_types); {} for a model built without a checkpoint."""
  kinds = getattr(model, "weight_types", None)
  return {} if kinds is None else dict(weights=kinds.counts())


def _weights_as_stored(setup: dict) -> bool:
  """Whether a setup says the weights were used as stored (no int4_group_size): what such a run
  loaded is what the model's content (its sha256) holds, recorded or not."""
  model = setup.get("model")
  group = model.get("int4_group_size") if isinstance(model, dict) else setup.get("int4_group_size")
  return group is None


def finetune_setup(cfg) -> dict:
  """The setup.json entry of the `finetune` setting: {} without one (so the setup of a run
  without it reads as before), else the file and its sha256."""
  path = cfg.get("finetune")
  if path is None:
    return {}
  return dict(finetune=dict(file=str(path), sha256=loading.file_sha256(pathlib.Path(path).expanduser())))


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
  return out


def _shown(value) -> str:
  if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
    return value[:12] + "…"  # a sha256
  return "(not recorded)" if value is _MISSING else repr(value)


_MISSING = object()


# The run folder's own files: what its results are valid for, and the lock of the run using it.
_BOOKKEEPING = ("setup.json", ".lock")


def results_in(folder: pathlib.Path) -> list[str]:
  """The names of what a run folder holds besides setup.json and the lock (an empty file or
  folder holds nothing): its results, which setup.json vouches for."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    return []
  empty = lambda p: not any(p.iterdir()) if p.is_dir() else p.stat().st_size == 0
  return sorted(p.name for p in folder.iterdir() if p.name not in _BOOKKEEPING and not empty(p))


def check_setup(run_folder: pathlib.Path, setup: dict, write: bool = True,
                partial: bool = False) -> None:
  """Writes run_folder/setup.json (atomically), or checks that an existing one describes the
  same run: else ValueError saying what changed and how to start a new run. partial: compare
  only the keys of `setup` (the settings known before loading), write nothing. Results without
  a setup.json (an older version's, or setup.json removed) are refused: what they were computed
  with is unknown. A setup.json beside no results vouches for nothing (a run that failed
  before its first row): it is replaced."""
  folder = pathlib.Path(run_folder)
  path = folder / "setup.json"
  fix = (f"to start a new run choose another --config.run_name, or remove {folder} to redo "
         "this one")
  held = results_in(folder)
  if path.exists() and held:
    try:
      old = json.loads(path.read_text())
      if not isinstance(old, dict):
        raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
      raise ValueError(f"run folder {str(folder)!r} is invalid: its setup.json is damaged "
                       f"({e}), so what its results are valid for is unknown; {fix}") from None
    if "weights" not in old and _weights_as_stored(old):
      # Written before the weights were recorded: stored weights were loaded then as now.
      setup = {k: v for k, v in setup.items() if k != "weights"}
    old, new = _flat(old), _flat(setup)
    keys = sorted(new) if partial else sorted(set(old) | set(new))
    changed = [f"{k}: {_shown(old.get(k, _MISSING))} -> {_shown(new.get(k, _MISSING))}"
               for k in keys if old.get(k, _MISSING) != new.get(k, _MISSING)]
    if changed:
      what = "the model's content changed, " if any(c.startswith("model.sha256") for c in changed) else ""
      raise ValueError(f"run folder {str(folder)!r} is invalid for these settings: {what}its "
                       f"results were computed with others (setup.json, old -> new: "
                       f"{'; '.join(changed)}); {fix}")
  elif held:
    raise ValueError(f"run folder {str(folder)!r} is invalid: it holds {', '.join(held)} but no "
                     "setup.json, so the settings its results were computed with are unknown; "
                     f"{fix}")
  elif write and not partial:
    files.atomic_write_text(path, json.dumps(setup, indent=1) + "\n")


@contextlib.contextmanager
def open_run(cfg, setup: dict):
  """The run folder of a checked config, locked for this run: a second process on the same
  folder is refused (files.LockedError naming the holder's pid). `setup` (the settings known
  before loading, see setup_of) is checked against an existing setup.json first, so a rerun
  with other settings is refused before the model is loaded. In a multi-process run process 0
  alone takes the lock and checks; a refusal stops every process with its message (distributed.on_main).
  A run that fails before its first result leaves nothing behind: its setup.json is removed
  (it vouches for no result), and so is the folder if this call created it."""
  folder = config_checks.run_dir(cfg)
  created = not folder.exists()
  holder = ("; it is in use by another run of an experiment: wait for that one to end, or choose "
            "another --config.run_name")
  locked = []
  with contextlib.ExitStack() as lock:

    def take():  # process 0; a refusal stops every process (distributed.on_main)
      lock.enter_context(files.locked(folder / ".lock", wait=False, holder=holder))
      locked.append(True)
      check_setup(folder, setup, write=False, partial=True)

    try:
      distributed.on_main(take)
      yield folder
    except BaseException:
      if distributed.is_main() and locked and folder.is_dir() and not results_in(folder):
        (folder / "setup.json").unlink(missing_ok=True)
        if created and [p.name for p in folder.iterdir()] == [".lock"]:
          shutil.rmtree(folder, ignore_errors=True)
      raise


def check_fields(row, required) -> None:
  """ValueError unless `row` is a JSON object with every field in `required`."""
  if not isinstance(row, dict):
    raise ValueError(f"not a JSON object but {type(row).__name__}")
  missing = [k for k in required if k not in row]
  if missing:
    raise ValueError(f"a row without {', '.join(map(repr, missing))}")


def read_jsonl(path: pathlib.Path, repair: bool = False, check=None) -> list[dict]:
  """The rows of a JSON-lines results file. A line that is not a row (garbage, not UTF-8, a torn
  last line of an interrupted write, or a row `check(row)` refuses with ValueError / KeyError /
  TypeError; default: a JSON object) is left out with a warning naming file and line; with
  `repair`, it is moved to `<file>.broken` and the file rewritten (atomically) without it, so
  the next append starts on a clean line and a resumed run recomputes what it held."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  raw = path.read_bytes()
  check = check or (lambda row: check_fields(row, ()))
  rows, good, bad = [], [], []
  for i, line in enumerate(raw.split(b"\n"), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line.decode("utf-8"))
      check(row)
    except UnicodeDecodeError:
      bad.append((i, line, "not UTF-8 text"))
    except json.JSONDecodeError as e:
      bad.append((i, line, f"not a JSON line ({e.msg})"))
    except (ValueError, KeyError, TypeError) as e:
      bad.append((i, line, str(e)))
    else:
      rows.append(row)
      good.append(line)
  side = path.with_name(path.name + ".broken")
  for i, line, why in bad:
    logging.warning("%s:%d: %s: %s", path, i, why,
                    f"moved to {side}; the run computes it again" if repair else "skipped")
  if repair and (bad or (raw and not raw.endswith(b"\n"))):
    if bad:
      with side.open("ab") as f:
        f.write(b"".join(line + b"\n" for _, line, _ in bad))
        f.flush()
        os.fsync(f.fileno())
    files.atomic_write(path, lambda f: f.write(b"".join(line + b"\n" for line in good)))
  return rows


def read_rows(path: pathlib.Path, required: tuple[str, ...]) -> list[dict]:
  """The rows of a results file as a report reads them: lines without `required` are skipped
  with a warning (the run that writes the file moves them aside)."""
  return read_jsonl(path, check=lambda row: check_fields(row, required))


def append_jsonl(path: pathlib.Path, rows: list[dict]) -> None:
  """Appends rows and flushes, so that what is known survives an interruption."""
  with pathlib.Path(path).open("a") as f:
    f.write("".join(json.dumps(row, allow_nan=False) + "\n" for row in rows))
    f.flush()


class Results:
  """The results file of a run folder (results.jsonl): rows by key, appended and flushed as they
  come. The setup is checked (or written) first; setup None reads a run folder as it is.
  `required`: the fields every row must have (a row without them is a broken line).
  Subclasses name another file, key or row check (experiments/search.py)."""

  name = "results.jsonl"

  @staticmethod
  def key(row: dict):
    return row["id"]

  def check_row(self, row) -> None:
    """ValueError (or KeyError, TypeError) for a line that is not a row of this file."""
    check_fields(row, self.required)
    hash(self.key(row))

  def __init__(self, run_folder: pathlib.Path, setup: dict | None = None, write: bool = True,
               required: tuple[str, ...] = ("id",)):
    self.dir, self.write, self.required = pathlib.Path(run_folder), write, required
    self.path = self.dir / self.name

    def load():  # process 0's check and rows, on every process (distributed.on_main)
      if setup is not None:
        check_setup(self.dir, setup, write)
      return self.read()

    self.rows = {self.key(row): row for row in distributed.on_main(load)}

  def read(self, repair: bool | None = None) -> list[dict]:
    return read_jsonl(self.path, self.write if repair is None else repair, self.check_row)

  def append(self, rows: list[dict]) -> None:
    for row in rows:
      self.rows[self.key(row)] = row
    if self.write:
      append_jsonl(self.path, rows)
