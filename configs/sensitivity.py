"""Per-layer sensitivity of SmolLM2-135M: each layer x type alone in Anda (G = 64), vmapped
over M, on calibration windows.

full (no argument):

    python -m experiments.sensitivity --config=configs/sensitivity.py

The 30 layers x 4 types, M in {3, 4, 6}, on 8 calibration windows of 256 tokens: 120
(layer, type) pairs x 3 M = 360 configurations, each running only layers l..29 and the head
from a cached float prefix. Measured: 10 min 42 s wall, 1 compilation, on an idle 2-core AMD
EPYC (Zen 5, AVX-512) with the model and corpus cached; about 5x as long on a 2-core CPU whose
jnp.dot 2048^2 runs at 61 GFLOP/s instead of 334.
Resumable: rerun the same command after an interruption.

quick: every layer x type at M = 4 on 2 calibration windows of 64 tokens (noisy; shows the
pipeline and the shape of the heatmap):

    python -m experiments.sensitivity --config=configs/sensitivity.py:quick

Measured with the model and corpus cached: 15 s wall on an idle 2-core AMD EPYC (Zen 5).

gemma3: the full experiment on Gemma 3 270M (configs/common.py, on_gemma3):

    python -m experiments.sensitivity --config=configs/sensitivity.py:gemma3
"""

from ml_collections import config_dict

from configs import common


def get_config(arg=None):
  c = common.experiment("sensitivity_smollm2", group_sizes=(64,), split="calibration", windows=8)
  c.mantissa_bits = (3, 4, 6)  # vmapped: one forward pass per (layer, type) serves them all
  c.types = ("qkv", "o", "up", "down")
  c.layers = config_dict.placeholder(tuple)  # None: every layer
  # config_batch None: all of mantissa_bits in one forward pass.
  if common.variant(arg) == "quick":
    c.run_name = "sensitivity_quick"
    c.mantissa_bits = (4,)
    c.data.seq_len = 64
    c.data.windows = 2
  elif common.variant(arg) == "gemma3":
    common.on_gemma3(c, "sensitivity_gemma3")
  return c
