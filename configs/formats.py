"""The formats study: Anda against the formats hardware ships (OCP MX INT8 / FP8 / FP6 / FP4,
NVFP4, per-token FP8 and INT8) on SmolLM2-135M (INT4 GGUF weights), on the sweep's windows. It
is the sweep (experiments/sweep.py) with other formats: resumable the same way, and it adds
formats.md (the table) and pareto.png (perplexity increase vs storage bits per activation
element) to the sweep's files.

full (no argument):

    python -m experiments.sweep --config=configs/formats.py

Anda over G in {16, 32, 64, 128} x M in 2..10 with every type at once (36 configurations), and
each other format at all four sites and at each site alone (9 x 5), plus the FP baseline, on
the full sweep's 32 windows of 256 test tokens (8160 scored tokens).

quick, for the README:

    python -m experiments.sweep --config=configs/formats.py:quick

Anda at G in {32, 64} x M in {3, ..., 8} and every other format at all four sites, on the quick
sweep's 3 windows of 128 tokens (381 scored tokens: it shows the pipeline, the full run is the
measurement).

Every format rounds to nearest (ties to even): OCP MX's default, and what NVFP4 and the
per-token recipes do; Anda is set to round to nearest too so that only the format differs
(the sweep's default is truncation).

gemma3: the full experiment on Gemma 3 270M (configs/common.py, on_gemma3):

    python -m experiments.sweep --config=configs/formats.py:gemma3

The same 82 configurations and windows, about 38 s per configuration: 67 of them took 42 min 36 s
wall after a resume (2,556 s, 12 compilations) on a 2-core AMD EPYC (Zen 5) shared with light
other work, so about 52 min in all (docs/results/formats_gemma3).
"""

from configs import common
from configs import sweep


def get_config(arg=None):
  c = sweep.get_config(arg)
  c.format.rounding = "nearest"
  c.types = ("all",)
  c.other_formats = common.OTHER_FORMATS
  if common.variant(arg) == "quick":
    c.run_name = "formats_quick"
    c.format.group_sizes = (32, 64)
    c.mantissa_bits = (3, 4, 5, 6, 7, 8)
    c.other_format_types = ("all",)
    c.config_batch = 1  # one configuration per format: a larger batch would be padding
  else:
    c.run_name = "formats_gemma3" if common.variant(arg) == "gemma3" else "formats_smollm2"
    c.other_format_types = ("all", "qkv", "o", "up", "down")
    # 9 M per G (the baseline rides with the first G: 10) and 5 sites per other format: with 5
    # configurations per forward pass no batch is padded.
    c.config_batch = 5
  return c
