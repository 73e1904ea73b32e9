"""A few-minute sensitivity study on SmolLM2-135M: every layer x type at M = 4 on 2 calibration
windows of 64 tokens (noisy; shows the pipeline and the shape of the heatmap).

    python -m experiments.sensitivity --config=configs/sensitivity_quick.py

Measured with the model and corpus cached: 15 s wall on an idle 2-core AMD EPYC (Zen 5), 133 s
on the project's earlier, slower and shared 2-core machine.
"""

from configs import sensitivity_smollm2


def get_config():
  c = sensitivity_smollm2.get_config()
  c.run_name = "sensitivity_quick"
  c.mantissa_bits = (4,)
  c.data.seq_len = 64
  c.data.windows = 2
  return c
