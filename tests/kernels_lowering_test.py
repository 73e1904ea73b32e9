"""The kernels lower (not compile: there is no accelerator here) for TPU (Mosaic) and GPU
(Triton), so that block shapes, dtypes and ops stay within what those backends accept.

Lowering runs JAX's Pallas -> Mosaic / Triton-IR translation on the CPU, which rejects
e.g. misaligned TPU blocks, non-power-of-two Triton tensors, unsupported ops. It does not
run the backend compilers, so it is necessary, not sufficient, for the kernels to compile.

Each test also reads the kernel back out of the lowered program: exactly one Mosaic
(`tpu_custom_call`) or Triton (`__gpu$xla.gpu.triton`) custom call, named as the kernel, with
the grid and the block shapes the wrapper chose, and for the bit-serial kernel a plane loop
whose trip count is read from the M' operand (one compiled kernel for every M'). Reading the
kernel back uses JAX internals (the Mosaic and Triton dialect bindings), pinned with jax in
pyproject.toml.
"""

import base64
import functools
import json
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
from absl.testing import absltest
from absl.testing import parameterized
from jax._src import config as jax_config  # the switch between Mosaic GPU and Triton
from jax._src.interpreters import mlir as jax_mlir
from jax._src.lib import tpu as tpu_dialect
from jax._src.lib import triton as triton_lib
from jaxlib.mlir import ir
from jaxlib.mlir.passmanager import PassManager

from anda_jax.kernels import bitplane_kernel
from anda_jax.kernels import bitserial_kernel
from anda_jax.kernels import quantize_kernel
from anda_jax.numerics import anda
from anda_jax.numerics import bitplane
from anda_jax.numerics import int4

PLATFORMS = ("tpu", "cuda")  # cuda: lowered to Triton (the wrappers ask for it on GPU)


class Kernel(NamedTuple):
  """A Pallas kernel as lowered for one backend."""
  name: str
  grid: tuple[int, ...]  # Triton: the launch grid (x, y, z)
  first_operand: str  # the kernel function's argument holding its first operand
  ir: str  # the kernel function: Mosaic (TPU) or Triton (GPU) MLIR, as text

  def blocks(self) -> set[tuple[int, ...]]:
    """Shapes of the blocks the kernel reads and writes, unit dimensions dropped (a squeezed
    block dimension is 1 in Mosaic and absent in Triton). Mosaic: its windows; Triton: the
    tensors of pointers it loads from and stores to."""
    if "window_bounds" in self.ir:
      shapes = re.findall(r"window_bounds = array<i64: ([\d, ]+)>", self.ir)
      shapes = [s.split(", ") for s in shapes]
    else:
      shapes = [s.split("x")[:-1] for s in re.findall(
          r"tt\.(?:load|store) [^:]*: tensor<([\dx]+)!tt\.ptr", self.ir)]
    return {tuple(int(d) for d in s if d != "1") for s in shapes}

  def loop_bound_arguments(self) -> set[str]:
    """The kernel arguments that the upper bound of some scf.for loop is computed from."""
    defs = {m[0]: m[1] for m in re.findall(r"^\s*(%[\w]+)(?::\d+)? = (.*)$", self.ir, re.M)}
    found = set()
    for bound in re.findall(r"scf\.for %\w+ = %\w+ to (%\w+)", self.ir):
      todo, seen = [bound], set()
      while todo:
        name = todo.pop()
        if name in seen:
          continue
        seen.add(name)
        if name in defs:
          todo.extend(re.findall(r"%\w+", defs[name]))
        elif name.startswith("%arg"):
          found.add(name)
    return found


def _mosaic_kernel(call) -> Kernel:
  config = json.loads(ir.StringAttr(call.attributes["backend_config"]).value)
  body = base64.b64decode(config["custom_call_config"]["body"])
  ctx = jax_mlir.make_ir_context()
  tpu_dialect.register_dialect(ctx)
  with ctx:
    ctx.allow_unregistered_dialects = True  # the serialized form uses a versioned dialect
    module = ir.Module.parse(body)
    PassManager.parse("builtin.module(mosaic-serde{serialize=false})").run(module.operation)
    (func,) = [op for op in module.body.operations if "iteration_bounds" in op.attributes]
    grid = tuple(ir.DenseI64ArrayAttr(func.attributes["iteration_bounds"]))
    # Arguments: one index per grid dimension, then the operands' blocks.
    return Kernel(ir.StringAttr(func.attributes["sym_name"]).value, grid, f"%arg{len(grid)}",
                  str(func))


def _triton_kernel(call) -> Kernel:
  config = call.attributes["mhlo.backend_config"]
  ctx = jax_mlir.make_ir_context()
  triton_lib.dialect.register_dialect(ctx)
  with ctx:
    module = ir.Module.parse(ir.StringAttr(config["ir"]).value_bytes)
  grid = tuple(ir.IntegerAttr(config[k]).value for k in ("grid_x", "grid_y", "grid_z"))
  return Kernel(ir.StringAttr(config["name"]).value, grid, "%arg0", str(module))


_READERS = {"tpu_custom_call": _mosaic_kernel, "__gpu$xla.gpu.triton": _triton_kernel}


def _operations(op):
  for region in op.regions:
    for block in region.blocks:
      for child in block.operations:
        yield child
        yield from _operations(child)


def _lower(fn, *args, platform) -> list[Kernel]:
  """Lowers jit(fn)(*args) for `platform` and returns the Pallas kernels it calls."""
  with jax_config.jax_pallas_use_mosaic_gpu(False):
    module = jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).compiler_ir("stablehlo")
  kernels = []
  for op in _operations(module.operation):
    if op.operation.name == "stablehlo.custom_call":
      target = ir.StringAttr(op.attributes["call_target_name"]).value
      if target in _READERS:
        kernels.append(_READERS[target](op))
  return kernels


class LoweringTest(parameterized.TestCase):

  def assert_one_kernel(self, kernels, platform, name, grid, blocks) -> Kernel:
    """One Pallas call named `name`, with Pallas grid `grid`, reading or writing (at least)
    blocks of the shapes `blocks`."""
    self.assertEqual([k.name for k in kernels], [name])
    (kernel,) = kernels
    launch_grid = grid if platform == "tpu" else grid + (1,) * (3 - len(grid))
    self.assertEqual(kernel.grid, launch_grid, name)
    for block in blocks:
      self.assertIn(block, kernel.blocks(), name)
    return kernel

  @parameterized.parameters(*PLATFORMS)
  def test_quantize_and_pack_lower(self, platform):
    fmt = anda.AndaFormat(group_size=64, rounding="nearest")
    # 64 rows in tiles of 32; 9 groups: a ragged, non-power-of-two axis, one tile of 16 groups.
    x = jnp.ones((64, 576), jnp.float32)
    m = jnp.int32(4)
    quantize = functools.partial(quantize_kernel._quantize, uniforms=None, fmt=fmt, block_rows=32,
                                 block_groups=32, interpret=False)
    # 3 groups: a tile of 4 (padded), neither the whole axis nor a multiple of 8 for TPU.
    self.assert_one_kernel(_lower(quantize, x[:, :192], m, platform=platform), platform,
                           "anda_quantize", (2, 1), [(32, 4, 64)])
    pack = functools.partial(bitplane_kernel._pack, uniforms=None, fmt=fmt, num_planes=8,
                             block_rows=32, block_groups=128, interpret=False)
    unpack = functools.partial(bitplane_kernel._unpack, dtype=jnp.dtype(jnp.float32), block_rows=32,
                               block_groups=128, interpret=False)
    bp = bitplane.pack(anda.encode(x, fmt, 8))
    for name, fn, args, blocks in (
        ("anda_quantize", quantize, (x, m), [(32, 16, 64)]),  # x and output tiles
        ("anda_bitplane_pack", pack, (x, m), [(32, 16, 64), (32, 16)]),  # x, exponents
        ("anda_bitplane_unpack", unpack, (bp,), [(32, 16), (32, 16, 64)])):  # exponents, output
      with self.subTest(name):
        self.assert_one_kernel(_lower(fn, *args, platform=platform), platform, name, (2, 1), blocks)

  @parameterized.parameters(*PLATFORMS)
  def test_bitserial_lowers(self, platform):
    # 256 rows and N = 256 in tiles of 128; K = 576 in 9 steps of max(G, Gw) = 64.
    fmt = anda.AndaFormat(group_size=64)
    bp = bitplane.pack(anda.encode(jnp.ones((256, 576)), fmt, 8))
    for symmetric in (True, False):
      qw = int4.quantize_rtn(jnp.ones((576, 256)), 32, symmetric)
      for emit_sums in (False, True):
        fn = functools.partial(bitserial_kernel._bitserial, block_rows=128, block_n=128,
                               block_k=None, interpret=False, emit_sums=emit_sums)
        name = "anda_bitserial_sums" if emit_sums else "anda_bitserial_matmul"
        # Packed weights [K tile / 2, N tile]; output [rows, N] tiles, or the sums of the
        # K tile's 64 / min(G, Gw) = 2 blocks.
        blocks = [(32, 128), (128, 2, 128) if emit_sums else (128, 128)]
        with self.subTest(symmetric=symmetric, emit_sums=emit_sums):
          kernel = self.assert_one_kernel(_lower(fn, bp, qw, jnp.int32(6), platform=platform),
                                          platform, name, (2, 2, 9), blocks)
          # M' is a runtime scalar: the plane loop's trip count is read from it.
          self.assertIn(kernel.first_operand, kernel.loop_bound_arguments())


if __name__ == "__main__":
  absltest.main()
