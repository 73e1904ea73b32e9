"""A few-minute precision search on SmolLM2-135M for a 2-core CPU: few short windows.

python -m experiments.search --config=configs/search_quick.py
Perplexities on 2 x 64 tokens are noisy: this checks the pipeline, it is not a result.
"""

from configs import search_smollm2


def get_config():
  c = search_smollm2.get_config()
  c.run_name = "search_quick"
  c.data.seq_len = 64
  c.data.calibration_windows = 2
  c.data.test_windows = 4
  c.start_m = 8
  c.min_m = 3
  c.uniform_m = (3, 4, 5, 6, 7, 8)
  c.test_uniform = False
  c.eval_batch_size = 2
  return c
