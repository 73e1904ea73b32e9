"""Several processes and devices: joining the processes of a run, process 0 as the only writer
(on_main shares what it read and its refusals with every process, so all take the same path
through the collectives or stop with the same error), and the device mesh.
"""

from __future__ import annotations

import json
import os

from absl import logging
import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from anda_jax import sharding
from experiments.harness import errors


_distributed = []  # [True] once jax.distributed is initialized


# Where a process setting left None in the config comes from. JAX reads the first itself; the
# other two are this project's, for launchers that export variables (JAX detects all three
# under SLURM, Open MPI, on a Cloud TPU pod and on Kubernetes).
PROCESS_VARIABLES = dict(coordinator_address="JAX_COORDINATOR_ADDRESS",
                         num_processes="JAX_NUM_PROCESSES", process_id="JAX_PROCESS_ID")


def process_settings(cfg, environ=None) -> dict:
  """jax.distributed.initialize's coordinator_address, num_processes and process_id: each from
  the config, else from its environment variable (PROCESS_VARIABLES), else None (detected)."""
  environ = os.environ if environ is None else environ
  out = {}
  for key, var in PROCESS_VARIABLES.items():
    value = cfg[key]
    if value is None and environ.get(var):
      value = environ[var]
      if key != "coordinator_address":
        try:
          value = int(value)
        except ValueError:
          raise ValueError(f"environment variable {var}={value!r} is invalid: must be an integer "
                           f"(the run's {key})") from None
    out[key] = value
  return out


def maybe_initialize_distributed(cfg) -> None:
  """distributed=True: joins the processes of the run (jax.distributed.initialize), before any
  JAX computation. JAX's timeouts apply: the processes must all start within 5 minutes; when one
  dies the others stop (at once when it is process 0, which hosts the coordinator; within the
  100 s heartbeat timeout otherwise) instead of waiting in a collective forever."""
  if not cfg.distributed or _distributed:
    return
  settings = process_settings(cfg)
  # Cross-process computations on the CPU need a collectives implementation (gloo over TCP; the
  # default of this jax, set in case an environment unset it). GPUs and TPUs have their own.
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(**settings)
  except ValueError as e:  # a setting missing and no cluster detected, or process_id out of range
    raise ValueError(f"distributed=True is invalid here: {e} (set --config.coordinator_address, "
                     "num_processes and process_id, or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES "
                     "and JAX_PROCESS_ID, or run under SLURM, Open MPI or on a Cloud TPU pod)") from None
  _distributed.append(True)
  logging.info("process %d of %d; %d devices in all, %d here", jax.process_index(),
               jax.process_count(), jax.device_count(), jax.local_device_count())


def is_main() -> bool:
  """Only process 0 writes files. (A single-process run asks no backend: the refusals before
  loading stay one line, without the backends' start-up log.)"""
  return not _distributed or jax.process_index() == 0


def _broadcast_json(value):
  """Process 0's `value` (JSON) on every process; a collective, so every process calls it."""

  data = np.frombuffer(json.dumps(value).encode(), np.uint8) if is_main() else np.zeros(0, np.uint8)
  size = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
  buffer = np.zeros(size, np.uint8)
  buffer[:data.size] = data
  return json.loads(np.asarray(multihost_utils.broadcast_one_to_all(buffer)).tobytes())


def on_main(fn):
  """fn() run by process 0 alone, its value (JSON) or its error shared with every process. The
  run folder is process 0's (the others may not even see it: a TPU pod's hosts have disks of
  their own), and every process must take the same path through the collective computations
  (the same configurations, in the same order), or stop with the same error instead of waiting
  for the others. A single process just calls fn()."""
  if not _distributed or jax.process_count() == 1:
    return fn()
  if not is_main():
    shared = _broadcast_json(None)
    if "error" in shared:
      error = ValueError if shared["clean"] else RuntimeError
      raise error(f"{shared['error']} (process 0)")
    return shared["value"]
  try:
    value = fn()
  except Exception as e:
    clean = isinstance(e, errors.CLEAN_ERRORS)
    _broadcast_json(dict(error=str(e) if clean else f"{type(e).__name__}: {e}", clean=clean))
    raise
  _broadcast_json(dict(value=value))
  return value


def mesh_of(cfg):
  """The device mesh of the `mesh` setting over the devices of every process (after
  maybe_initialize_distributed), None for a single device; ValueError when its shape does not
  multiply to the number of devices."""
  return sharding.make_mesh(None if cfg.mesh is None else tuple(cfg.mesh))


def check_mesh_fits(model, mesh, specs) -> None:
  """Every layer weight splits whole over the model shards of `mesh`, for each ProductSpec of
  `specs`: N of the column-parallel products, K of the row-parallel ones into whole Anda groups
  and INT4 scale groups. Checked after loading, before any result is written (evaluate would
  find it only then); ValueError naming the mesh."""
  if sharding.model_shards(mesh) == 1:
    return

  state = nnx.split(model)[1]
  shape = tuple(mesh.shape.values())
  for spec in specs:
    try:
      jax.tree_util.tree_map_with_path(
          lambda path, leaf, spec=spec: sharding.weight_spec(path, leaf, mesh, spec.formats), state)
    except ValueError as e:
      raise ValueError(f"mesh={shape} is invalid for this model: {e}") from None
