"""The command line: `python -m experiments.<name> --config=configs/<name>.py[:quick]
[--config.<key>=...]`, with one-line errors for unknown keys, bad values and config files that
cannot be loaded.
"""

from __future__ import annotations

import os
import pathlib
import re
import runpy

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments.harness import compile_cache
from experiments.harness import config_checks
from experiments.harness import distributed
from experiments.harness import errors


class _IntOrNoneParser(flags.IntegerParser):
  """The parser of an integer setting on the command line that also takes None, which several
  mean (data.windows: all of the split, window_batch: sized automatically); ml_collections'
  own parser refuses it ("invalid literal for int()"). Each setting's check says whether None
  is allowed there."""

  def parse(self, argument):
    if isinstance(argument, str) and argument.strip() == "None":
      return None
    return super().parse(argument)

  def flag_type(self):
    return "int or None"


config_flags.register_flag_parser_for_type(int, _IntOrNoneParser())


def _argv_value(argv, name: str) -> str | None:
  for i, a in enumerate(argv):
    if a == "--":
      break
    if a.startswith(f"--{name}="):
      return a.split("=", 1)[1]
    if a == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _load_config_file(spec: str):
  """get_config(arg) of `--config=path[:arg]`, as config_flags loads it, with the error (a
  missing file, a bad variant) as a clean ValueError."""

  path, _, arg = spec.partition(":")
  if not pathlib.Path(path).is_file():
    raise ValueError(f"--config={spec} is invalid: no such file {path!r}")
  try:
    module = runpy.run_path(path)
    return module["get_config"](*([arg] if arg else []))
  except ValueError as e:
    raise ValueError(f"--config={spec} is invalid: {e}") from None


def check_override_keys(argv) -> None:
  """`--config.<key>=...` of a key the config file does not have -> ValueError naming the
  valid keys nearest to it (ml_collections' own error is a bare AttributeError)."""
  spec = _argv_value(argv, "config")
  if spec is None:
    return
  valid = config_checks.key_paths(_load_config_file(spec))
  for a in argv:
    if a == "--":
      break
    for prefix in ("--config.", "--noconfig.", "-config.", "-noconfig."):
      if a.startswith(prefix):
        key = a[len(prefix):].split("=", 1)[0]
        if key not in valid:
          raise ValueError(f"config key {key!r} (in {a}) is invalid: {spec.partition(':')[0]} has "
                           f"no such setting; {config_checks.nearest_keys(key, valid)}")


def parse_flags(argv):
  """absl's flag parsing with one-line errors (exit status 2): unknown config keys with the
  nearest valid ones, bad flag values, a config file that cannot be loaded."""
  show = "--traceback" in argv or any(a.startswith(("--verbosity=", "-v=")) and a.split("=")[1] not in ("0", "-1")
                                      for a in argv)
  try:
    check_override_keys(argv)
    return flags.FLAGS(argv)
  except (flags.Error, ValueError, AttributeError, KeyError, TypeError, OSError) as e:
    if show:
      raise
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, flags.UnrecognizedFlagError):
      message = f"--{e.flagname} is invalid: no such flag (--helpfull lists them)"
    elif match := re.match(r"flag (-\S+): (.*)", message):  # absl's IllegalFlagValueError
      message = f"{match[1]} is invalid: {match[2]}"
    errors.error_exit(message)


def define_traceback_flag() -> None:
  if "traceback" not in flags.FLAGS:
    flags.DEFINE_bool("traceback", False, "on an error, show the whole stack instead of one line")


def run_with_config(run, description: str) -> None:
  """`python -m experiments.<name> --config=configs/<name>.py[:quick] [--config.<key>=...]`:
  calls run(config). The --config flag is defined here, when a module runs as a program, so that
  the experiment modules can be imported without defining it. A bad setting prints one line,
  `error: <what> is invalid: <why>`, and exits with status 2 (--traceback: the stack). With the
  `compilation_cache` setting (default True) JAX's persistent compilation cache is on
  (compile_cache.use_compilation_cache), and the command prints how many programs it loaded and stored."""
  config = config_flags.DEFINE_config_file("config", None, description, lock_config=True)
  flags.mark_flag_as_required("config")
  define_traceback_flag()

  def run_cached(cfg):
    folder = compile_cache.use_compilation_cache(cfg)
    with compile_cache.count_cache_use() as used:
      out = run(cfg)
    if folder is not None and distributed.is_main():
      if os.access(folder, os.W_OK):
        compiled = f"{used['stored']} compiled and stored"
      else:
        compiled = f"{used['looked_up'] - used['loaded']} compiled (not stored: the folder is read-only)"
      print(f"compilation cache {folder}: {used['loaded']} programs loaded, {compiled}")
    return out

  def main(argv):
    if len(argv) > 1:
      errors.error_exit(f"arguments {argv[1:]} are invalid: this command takes only flags")
    try:
      errors.call_cleanly(run_cached, config.value)
    except KeyboardInterrupt:
      interrupted_exit(config.value)

  try:
    app.run(main, flags_parser=parse_flags)
  except KeyboardInterrupt:  # while the flags and the config file were read
    errors.interrupted_exit("nothing was written: run the command again")


def interrupted_exit(cfg) -> None:
  """Ctrl-C in a run: one line saying what its run folder kept and how to resume (every
  experiment skips what its folder holds), exit status 130. Files are written whole or appended
  line by line, so what is kept is sound."""
  folder = config_checks.run_dir(cfg)
  kept = sorted(p.name for p in folder.iterdir() if p.name != ".lock") if folder.is_dir() else []
  if kept:
    message = (f"the run folder {folder} keeps what was done ({', '.join(kept)}): run the same "
               "command again to resume")
  else:
    message = f"nothing was written in {folder}: run the command again"
  if not distributed.is_main():  # process 0 alone says it
    os._exit(errors.INTERRUPTED)  # pylint: disable=protected-access (see errors.interrupted_exit)
  errors.interrupted_exit(message)
