"""JAX's persistent compilation cache for the commands, one folder per CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import platform

from absl import logging
import jax

from anda_jax import assets


_CACHE_EVENTS = {"/jax/compilation_cache/compile_requests_use_cache": "looked_up",
                 "/jax/compilation_cache/cache_hits": "loaded",
                 "/jax/compilation_cache/cache_misses": "stored"}


def _cpu_key() -> str:
  """A short name for this machine's CPU: its architecture and a digest of its model and
  instruction-set flags (/proc/cpuinfo where there is one)."""

  try:
    info = pathlib.Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
  except OSError:
    info = []
  lines = sorted({l for l in info if l.startswith(("model name", "flags", "Features", "CPU part"))})
  text = "\n".join([platform.machine(), platform.processor()] + lines)
  return f"{platform.machine() or 'cpu'}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def compilation_cache_dir() -> pathlib.Path:
  """Where the commands keep JAX's persistent compilation cache: one folder per CPU under
  <asset cache>/jax_compilation_cache/. Per CPU because JAX's cache key names the platform
  ("cpu") but not the instruction set, and a program compiled for one CPU (AVX-512, say) must
  not be loaded on another that shares the home folder."""
  return assets.cache_dir() / "jax_compilation_cache" / _cpu_key()


def use_compilation_cache(cfg) -> pathlib.Path | None:
  """Turns JAX's persistent compilation cache on (the `compilation_cache` setting, default True)
  or off for this process; returns its folder (None: off). $JAX_COMPILATION_CACHE_DIR, if set,
  is used instead of compilation_cache_dir(). Every program is stored, however fast it
  compiled, so that a rerun or a resumed run compiles nothing. Process-wide JAX state: called
  by the command line (run_with_config) before anything compiles, not by the experiments'
  run functions, which tests and benchmarks call in-process."""
  on = cfg.get("compilation_cache", True)
  if not isinstance(on, bool):
    raise ValueError(f"compilation_cache={on!r} is invalid: must be True or False")
  folder = pathlib.Path(jax.config.jax_compilation_cache_dir or compilation_cache_dir()) if on else None
  if folder is not None and not folder.is_dir():
    try:
      folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a read-only cache without this CPU's folder: JAX would warn per program
      logging.warning("cannot create the compilation cache %s (%s): compiling without it", folder,
                      e.strerror or e)
      folder = None
  jax.config.update("jax_enable_compilation_cache", folder is not None)
  if folder is None:
    return None
  jax.config.update("jax_compilation_cache_dir", str(folder))
  # A folder this process cannot write (a shared, read-only cache) is read but never written:
  # JAX stores only programs that took longer than this to compile, and warns of every store
  # that fails.
  writable = os.access(folder, os.W_OK)
  if not writable:
    logging.warning("the compilation cache %s is read-only: its programs are loaded, new ones "
                    "compiled but not stored", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0 if writable else float("inf"))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return folder


@contextlib.contextmanager
def count_cache_use():
  """{"looked_up": programs looked up in the persistent compilation cache, "loaded": programs read
  from it, "stored": programs compiled and written to it} inside the block, from JAX's monitoring
  events."""
  counts = dict.fromkeys(_CACHE_EVENTS.values(), 0)

  def listener(event, **kwargs):
    del kwargs
    if event in _CACHE_EVENTS:
      counts[_CACHE_EVENTS[event]] += 1

  jax.monitoring.register_event_listener(listener)
  try:
    yield counts
  finally:
    jax.monitoring.unregister_event_listener(listener)
