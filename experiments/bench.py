"""Benchmarks, each run side by side with its baseline in one process, printing ratios.

  python -m experiments.bench format        # jitted quantize vs a memory-bound x * 2 + 1
  python -m experiments.bench kernels       # Pallas kernels (interpret mode on CPU) vs pure JAX
  python -m experiments.bench model         # our forward vs transformers', GFLOP/s, Anda overhead
  python -m experiments.bench sensitivity   # sensitivity study with and without prefix reuse
  python -m experiments.bench memory        # peak RSS of a 7B-shaped INT4 model, 2 vs 4 layers
  python -m experiments.bench sweep         # the quickstart sweep vs transformers with hooks; LM head
  python -m experiments.bench search        # precision search with and without racing / prefix reuse
  python -m experiments.bench gemm          # the model's product shapes: weight layouts, window batches

Tests assert behaviour; only this file (and the bench_* modules it dispatches to) times.
"""

from __future__ import annotations

import argparse
import importlib
import re
import statistics
import sys
import time

import jax

from experiments.harness import errors

BENCHMARKS = ("format", "kernels", "model", "sensitivity", "search", "sweep", "memory", "gemm")


class ArgumentParser(argparse.ArgumentParser):
  """The flags of a benchmark, strictly: an unknown or abbreviated flag, a positional argument or
  a bad value is one line `error: <what> is invalid: <why>`, exit status 2, as in the experiments
  (a misspelled flag must not run the defaults)."""

  def __init__(self, benchmark: str, **kwargs):
    super().__init__(prog=f"python -m experiments.bench {benchmark}", allow_abbrev=False, **kwargs)

  def parse(self, argv) -> argparse.Namespace:
    """The flags of argv[1:] (argv[0] is the program's or the benchmark's name)."""
    args, extra = self.parse_known_args(list(argv)[1:])
    if extra:
      what = "no such flag" if extra[0].startswith("-") else "this command takes only --flags"
      errors.error_exit(f"{extra[0]} is invalid: {what} ({self.prog} --help lists them)")
    return args

  def error(self, message):
    # argparse says "argument --x: invalid int value: 'a'"; say "--x='a' is invalid: ...". A
    # flag_type's message starts with "=": it completes the flag.
    if match := re.fullmatch(r"argument (\S+?)(?:/\S+)?: (.*)", message, re.S):
      flag, why = match.groups()
      if value := re.fullmatch(r"invalid (\w+) value: (.*)", why, re.S):
        kind = {"int": "an integer", "float": "a number"}.get(value[1], f"a {value[1]}")
        message = f"{flag}={value[2]} is invalid: must be {kind}"
      else:
        message = flag + why if why.startswith("=") else f"{flag} is invalid: {why}"
    errors.error_exit(message)


def flag_type(convert, expected: str):
  """An argparse type: convert(text), whose ValueError becomes `--flag=text is invalid: must be
  <expected>`."""

  def parse(text: str):
    try:
      return convert(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"={text} is invalid: must be {expected}") from None

  return parse


def int_at_least(lo: int):
  """An argparse type: an integer >= lo."""

  def convert(text: str) -> int:
    value = int(text)
    if value < lo:
      raise ValueError(text)
    return value

  return flag_type(convert, f"an integer >= {lo}")


def run_cleanly(run, argv) -> None:
  """run(argv) as a command: a user error is one line and exit status 2 (errors.call_cleanly),
  Ctrl-C one line and status 130 (a benchmark keeps nothing but its temporary files, which it
  removes)."""
  try:
    errors.call_cleanly(run, argv)
  except KeyboardInterrupt:
    errors.interrupted_exit("a benchmark keeps no results: run it again")


def time_call(fn, *args, repeats: int = 5, warmup: int = 1) -> float:
  """Median wall seconds of fn(*args) (outputs blocked on), after `warmup` calls that
  absorb compilation."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv: list[str]) -> None:
  if len(argv) < 2 or argv[1] not in BENCHMARKS:
    given = f"benchmark {argv[1]!r} is invalid" if len(argv) > 1 else "no benchmark given"
    errors.error_exit(f"{given}: usage: python -m experiments.bench {{{'|'.join(BENCHMARKS)}}} "
                      "[--flags]")
  run_cleanly(importlib.import_module(f"experiments.bench_{argv[1]}").run, argv[1:])


if __name__ == "__main__":
  main(sys.argv)
