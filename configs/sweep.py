"""Perplexity sweeps on SmolLM2-135M (INT4 GGUF weights): each module type alone and all types
uniformly, over group sizes G x mantissa lengths M.

full (no argument):

    python -m experiments.sweep --config=configs/sweep.py

G in {16, 32, 64, 128} x M in 2..10 (180 configurations + the FP baseline), on 32 windows of
256 test tokens (8160 scored tokens). Measured: 27 min 34 s wall, 4 compilations, on an idle
2-core AMD EPYC (Zen 5, AVX-512) with the model and corpus cached (about 9 s per
configuration). Run time follows the machine's float32 matrix-product speed (a 2-core CPU whose jnp.dot
2048^2 runs at 61 GFLOP/s instead of 334 takes about 5x as long).
Resumable: rerun the same command after an interruption.

quick, the README's first command: a small sweep that finishes in under 10 minutes on a 2-core
CPU from an empty cache (downloads of ~120 MB included):

    python -m experiments.sweep --config=configs/sweep.py:quick

G = 64, M in {3, 4, 6, 8}, each type alone and all together (20 configurations + the FP
baseline), on 3 windows of 128 test tokens. Perplexities on 381 tokens are noisy: this shows
the pipeline and the trend, the full sweep is the measurement. Measured from an empty cache in
a fresh clone and virtualenv: 22 s wall on an idle 2-core AMD EPYC (Zen 5, AVX-512). One
compilation.

gemma3: the full sweep on Gemma 3 270M (configs/common.py, on_gemma3):

    python -m experiments.sweep --config=configs/sweep.py:gemma3

The same 181 configurations and windows: 1 h 52 min wall (6,724 s, about 35 s per configuration;
the 262,144-entry LM head is most of each forward), 4 compilations, on a 2-core AMD EPYC (Zen 5)
shared with light other work (docs/results/sweep_gemma3).
"""

from configs import common


def get_config(arg=None):
  c = common.experiment("sweep_smollm2", group_sizes=(16, 32, 64, 128), split="test", windows=32)
  c.mantissa_bits = tuple(range(2, 11))
  c.types = ("qkv", "o", "up", "down", "all")  # "all": every type with the same M
  # Other formats evaluated next to Anda on the same windows, by name (anda_jax.numerics.baselines.
  # FORMAT_NAMES, options after a colon: "mxfp4:block_size=16"), each at the sites of
  # other_format_types ("all": every type at once): configs/formats.py.
  c.other_formats = ()
  c.other_format_types = ("all",)
  # Fixed for the whole run, so that the sweep compiles once per G.
  c.config_batch = 4
  if common.variant(arg) == "quick":
    c.run_name = "quickstart"
    c.format.group_sizes = (64,)
    c.mantissa_bits = (3, 4, 6, 8)
    c.data.seq_len = 128
    c.data.windows = 3
    c.config_batch = 3
    c.window_batch = 3
  elif common.variant(arg) == "gemma3":
    common.on_gemma3(c, "sweep_gemma3")
  return c
