"""Adaptive precision search on SmolLM2-135M (INT4 GGUF weights), tolerances 0.1% and 1%.

python -m experiments.search --config=configs/search_smollm2.py

16 x 256 calibration and 64 x 256 test tokens, G = 64. Measured: 8 min 20 s wall (69
configurations searched, then the chosen ones and uniform M = 2..10 on both splits) on an idle
2-core AMD EPYC (Zen 5, AVX-512), model and corpus cached. Resumable.
Per-layer granularity: --config.granularity=layer --config.run_name=search_smollm2_layer
(30 layers x 4 types = 120 candidates per round: hours on a CPU; add --config.config_batch=8).
"""

import ml_collections
from ml_collections import config_dict


def get_config():
  c = ml_collections.ConfigDict()
  c.run_name = "search_smollm2"
  c.results_dir = "results"
  c.model = ml_collections.ConfigDict(dict(name="smollm2-135m",
                                          int4_group_size=config_dict.placeholder(int)))
  c.format = ml_collections.ConfigDict(dict(group_size=64, exponent_bits=8, rounding="truncate"))
  c.data = ml_collections.ConfigDict(dict(
      corpus="enwiki-excerpt", seq_len=256, calibration_windows=16, test_windows=64))
  c.granularity = "type"  # "type": M per module type [4]; "layer": per layer and type [L, 4]
  c.start_m = 10  # every type starts here; one bit comes off one entry per round
  c.min_m = 2
  c.tolerances = (0.001, 0.01)  # relative perplexity increase over FP activations
  c.uniform_m = tuple(range(2, 11))  # the block-FP comparison curve
  c.test_uniform = True  # also evaluate the uniform-M curve on the test split
  # Windows and configurations per forward pass inside evaluate.perplexity (None: windows
  # sized to a logits budget, all configurations of a round at once). With
  # granularity="layer" a round has 120 configurations: set config_batch (e.g. 8).
  c.eval_batch_size = config_dict.placeholder(int)
  c.config_batch = config_dict.placeholder(int)
  return c
