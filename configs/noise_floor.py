"""The noise floor of a perplexity difference on SmolLM2-135M (INT4 GGUF weights, G = 64): how the
confidence interval of a relative perplexity increase narrows with the number of calibration
tokens, and how far a last-bit change of the inputs moves a perplexity.

full (no argument):

    python -m experiments.noise_floor --config=configs/noise_floor.py

FP activations and uniform M = 8 and M = 6, each also with the embeddings perturbed by one unit
in the last place (the numerical noise that another CPU's or framework's summation order
brings), on 256 calibration windows of 256 tokens; intervals on nested-size subsets of 4, 16,
64 and 256 windows (1,020 to 65,280 scored tokens). Resumable.

quick: the pipeline on 16 windows of 64 tokens (subsets of 2 to 16 windows):

    python -m experiments.noise_floor --config=configs/noise_floor.py:quick

gemma3: the full experiment on Gemma 3 270M (configs/common.py, on_gemma3):

    python -m experiments.noise_floor --config=configs/noise_floor.py:gemma3
"""

from configs import common


def get_config(arg=None):
  c = common.experiment("noise_floor_smollm2", group_sizes=(64,), split="calibration", windows=256)
  c.mantissa_bits = (8, 6)  # uniform M, each compared with FP activations
  c.perturb = True  # also every configuration with its embeddings perturbed in the last bit
  c.subsets = (4, 16, 64, 256)  # windows per subset: the token counts of the table
  if common.variant(arg) == "quick":
    c.run_name = "noise_floor_quick"
    c.data.seq_len = 64
    c.data.windows = 16
    c.subsets = (2, 4, 8, 16)
  elif common.variant(arg) == "gemma3":
    common.on_gemma3(c, "noise_floor_gemma3")
  return c
