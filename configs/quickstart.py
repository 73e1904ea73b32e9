"""The README's first command: a small sweep on SmolLM2-135M that finishes in under 10 minutes
on a 2-core CPU from an empty cache (downloads of ~120 MB included).

    python -m experiments.sweep --config=configs/quickstart.py

G = 64, M in {3, 4, 6, 8}, each type alone and all together (20 configurations + the FP
baseline), on 3 windows of 128 test tokens. Perplexities on 381 tokens are noisy: this
shows the pipeline and the trend, configs/sweep_smollm2.py is the measurement.
Measured from an empty cache on the shared 2-core machine (the job got 47% of the CPU):
4 min 51 s wall, 138 s of CPU; one compilation.
"""

from configs import sweep_smollm2


def get_config():
  c = sweep_smollm2.get_config()
  c.run_name = "quickstart"
  c.format.group_sizes = (64,)
  c.mantissa_bits = (3, 4, 6, 8)
  c.data.seq_len = 128
  c.data.windows = 3
  c.config_batch = 3
  c.batch_size = 3
  return c
