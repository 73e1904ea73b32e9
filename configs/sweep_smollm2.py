"""Full sweep on SmolLM2-135M (INT4 GGUF weights): G in {16, 32, 64, 128} x M in 2..10, for each
module type alone and all types uniformly (180 configurations + the FP baseline), on 32
windows of 256 test tokens (8160 scored tokens).

    python -m experiments.sweep --config=configs/sweep_smollm2.py

Measured: 27 min 34 s wall, 4 compilations, on an idle 2-core AMD EPYC (Zen 5, AVX-512) with
the model and corpus cached (about 9 s per configuration). Run time follows the machine's
float32 matrix-product speed: on the project's earlier 2-core machine (jnp.dot 2048^2 at
61 GFLOP/s, 334 here) expect about 5x as long.
Resumable: rerun the same command after an interruption.
"""

import ml_collections
from ml_collections import config_dict


def get_config():
  c = ml_collections.ConfigDict()
  c.run_name = "sweep_smollm2"
  c.results_dir = "results"
  c.model = ml_collections.ConfigDict(dict(name="smollm2-135m",
                                          int4_group_size=config_dict.placeholder(int)))
  c.format = ml_collections.ConfigDict(dict(group_sizes=(16, 32, 64, 128), exponent_bits=8,
                                           rounding="truncate"))  # truncate | nearest | stochastic
  c.mantissa_bits = tuple(range(2, 11))
  c.types = ("qkv", "o", "up", "down", "all")  # "all": every type with the same M
  # corpus: "enwiki-excerpt", a text / WikiText-raw file or folder. stride None: non-overlapping.
  c.data = ml_collections.ConfigDict(dict(corpus="enwiki-excerpt", split="test", seq_len=256,
                                         stride=config_dict.placeholder(int), windows=32))
  c.impl = "fake"  # "fake" (fake quantization) or "bitserial" (the exact bit-serial kernel)
  c.seed = 0  # PRNG seed for stochastic rounding
  # Windows and configurations per forward pass (None: windows sized to a logits budget).
  # The configuration batch is fixed for the whole run so that it compiles once per G.
  c.batch_size = config_dict.placeholder(int)
  c.config_batch = 4
  c.distributed = False  # True: jax.distributed.initialize() for a multi-host run
  return c
