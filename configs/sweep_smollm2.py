"""Full sweep on SmolLM2-135M (INT4 GGUF weights): G in {16, 32, 64, 128} x M in 2..10, for each
module type alone and all types uniformly (180 configurations + the FP baseline), on 32
windows of 256 test tokens (8160 scored tokens).

    python -m experiments.sweep --config=configs/sweep_smollm2.py

Expected run time on an idle 2-core CPU: about 4 hours (1.5 M token-configurations at ~9 ms
of CPU each, measured with the quickstart; ~1.3 minutes per configuration). Resumable: rerun
the same command after an interruption.
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
