"""Per-layer sensitivity of SmolLM2-135M: each of the 30 layers x 4 types alone in Anda (G = 64),
M in {3, 4, 6}, on 8 calibration windows of 256 tokens.

    python -m experiments.sensitivity --config=configs/sensitivity_smollm2.py

120 (layer, type) pairs x 3 M = 360 configurations, each running only layers l..29 and the
head from a cached float prefix. Measured: 10 min 42 s wall, 1 compilation, on an idle 2-core
AMD EPYC (Zen 5, AVX-512) with the model and corpus cached; about 5x as long on the project's
earlier 2-core machine (jnp.dot 2048^2 at 61 GFLOP/s, 334 here).
Resumable: rerun the same command after an interruption.
"""

import ml_collections
from ml_collections import config_dict


def get_config():
  c = ml_collections.ConfigDict()
  c.run_name = "sensitivity_smollm2"
  c.results_dir = "results"
  c.model = ml_collections.ConfigDict(dict(name="smollm2-135m",
                                          int4_group_size=config_dict.placeholder(int)))
  c.format = ml_collections.ConfigDict(dict(group_size=64, exponent_bits=8, rounding="truncate"))
  c.mantissa_bits = (3, 4, 6)  # vmapped: one forward pass per (layer, type) serves them all
  c.types = ("qkv", "o", "up", "down")
  c.layers = config_dict.placeholder(tuple)  # None: every layer
  c.data = ml_collections.ConfigDict(dict(corpus="enwiki-excerpt", split="calibration", seq_len=256,
                                         stride=config_dict.placeholder(int), windows=8))
  c.impl = "fake"
  c.seed = 0
  c.batch_size = config_dict.placeholder(int)  # windows per forward pass (None: logits budget)
  c.distributed = False  # True: jax.distributed.initialize() for a multi-host run
  return c
