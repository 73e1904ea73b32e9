"""Meshes and weight layouts for evaluation over many devices and processes.

The mesh has two axes: "config" splits the batch of precision configurations (data
parallelism: every configuration is one independent forward), "model" splits the layer
weights, Megatron style: the products whose activation is shared (qkv, gate/up) are
column-parallel (output features N split), the ones that follow them (o, down) row-parallel
(contraction features K split). Anda groups run along K, so a row-parallel shard must hold
whole groups, and packed INT4 weights whole scale groups. Everything else (embeddings, norms,
the LM head) is replicated. XLA's SPMD partitioner inserts the collectives; the arithmetic is
the same, except that row-parallel sums add their partial products in another order.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from anda_jax.precision import MODULE_TYPES

AXES = ("config", "model")
COLUMN_PARALLEL = ("qkv", "up")  # and their biases qkv_b, up_b: split along N
ROW_PARALLEL = ("o", "down")  # split along K (their biases are added after the sum: replicated)


def make_mesh(shape=None, devices=None) -> Mesh | None:
  """A ("config", "model") mesh of `shape` over `devices` (default: all of them, on "config"),
  or None for a single device."""
  devices = jax.devices() if devices is None else list(devices)
  shape = (len(devices), 1) if shape is None else tuple(shape)
  if (len(shape) != 2 or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1
                             for n in shape) or shape[0] * shape[1] != len(devices)):
    raise ValueError(f"mesh={shape!r} is invalid: must be (config_shards, model_shards), two positive "
                     f"integers whose product is the number of devices, {len(devices)}")
  if len(devices) == 1:
    return None
  return Mesh(np.asarray(devices).reshape(shape), AXES)


def model_shards(mesh: Mesh | None) -> int:
  return 1 if mesh is None else mesh.shape["model"]


def config_shards(mesh: Mesh | None) -> int:
  return 1 if mesh is None else mesh.shape["config"]


def _site(path) -> str | None:
  """The layer weight a state leaf belongs to ("qkv", "o_b", ...), None outside the layers."""
  keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
  return keys[keys.index("layers") + 2] if "layers" in keys[:1] and len(keys) > 2 else None


def weight_spec(path, leaf, mesh: Mesh | None, formats) -> P:
  """The PartitionSpec of one model-state leaf; ValueError when its split would not be whole.
  formats: the activation format of each product type (qkv, o, up, down), whose group (block)
  size a row-parallel shard must hold whole."""
  site, shards = _site(path), model_shards(mesh)
  ndim = np.ndim(leaf)
  if shards == 1 or site is None:
    return P()
  base = site[:-2] if site.endswith("_b") else site
  if base in COLUMN_PARALLEL:
    axis = ndim - 1
  elif site in ROW_PARALLEL:
    axis = ndim - 2
  else:
    return P()
  name = jax.tree_util.keystr(path)
  if leaf.shape[axis] % shards:
    raise ValueError(f"{name} has shape {list(leaf.shape)}: its axis {axis} ({leaf.shape[axis]}) does "
                     f"not split into {shards} model shards")
  # Per-token formats have no group along K: their scale is a reduction XLA splits like a sum.
  group_size = getattr(formats[MODULE_TYPES.index(site)], "group_size", None) if site in ROW_PARALLEL else None
  if group_size and not name.endswith((".scale", ".offset")):
    k = leaf.shape[axis] * (2 if name.endswith(".packed") else 1)  # a packed row holds two K rows
    if (k // shards) % group_size:
      raise ValueError(f"the {site} product's K = {k} splits into {shards} model shards of "
                       f"{k // shards}, which is not a multiple of the activation group size G = "
                       f"{group_size}: a row-parallel shard must hold whole groups (use fewer model "
                       "shards, or a G that divides K / model_shards)")
  return P(*([None] * axis), "model")


def place(tree, mesh: Mesh | None, spec_of):
  """Host or device arrays -> global arrays laid out over `mesh` by spec_of(path, leaf). Works
  when the mesh spans several processes (every process holds the same host data)."""
  if mesh is None:
    return jax.tree.map(jax.numpy.asarray, tree)

  def one(path, leaf):
    x = np.asarray(leaf)
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec_of(path, x)), lambda i: x[i])

  return jax.tree_util.tree_map_with_path(one, tree)
