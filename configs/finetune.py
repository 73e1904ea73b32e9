"""Anda-aware fine-tuning of SmolLM2-135M (INT4 GGUF weights): for each M in mantissa_bits (the
`types` in Anda at M, G = 64, the others FP) and each trainable subset (normalization gains;
rank-8 LoRA adapters on the four FP-INT products), train on calibration windows, stop early on
windows of other calibration articles, report test perplexity before and after. The control
arm: the same training with float activations (M = 0), evaluated at each M and at FP; every
training is repeated for `seeds` seeds (data order, LoRA initialization).

full (no argument):

    python -m experiments.finetune --config=configs/finetune.py

M in {4, 5, 6}, both subsets, 3 seeds: 18 trainings under Anda and 6 control trainings, each of
at most 40 steps of 2 x 256 tokens on 64 calibration windows, validation on 8 x 256 tokens of
held-out calibration articles, test on 32 x 256 test tokens. Resumable.

quick, for the README: M = 4, both subsets, one seed, with the control (4 trainings), 30 steps
of 2 x 128 tokens, test on 8 x 128 tokens:

    python -m experiments.finetune --config=configs/finetune.py:quick

Perplexities on 1016 test tokens are noisy: this shows the pipeline and the size of the effect.

gemma3: the full experiment on Gemma 3 270M (configs/common.py, on_gemma3):

    python -m experiments.finetune --config=configs/finetune.py:gemma3
"""

import ml_collections

from configs import common


def get_config(arg=None):
  # `data`: the training windows (calibration split, minus the validation articles).
  c = common.experiment("finetune_smollm2", group_sizes=(64,), split="calibration", windows=64)
  c.mantissa_bits = (4, 5, 6)  # one training per M (and subset): the types below at M
  c.types = ("qkv", "o", "up", "down")  # in Anda at M; the others stay FP
  c.subsets = ("norms", "lora")
  # Each training runs with seeds seed, seed + 1, ..., seed + seeds - 1 (data order, LoRA's A).
  c.seeds = 3
  # The control arm: each subset (and seed) trained with float activations (M = 0), evaluated
  # at every M: what tuning buys without Anda in the loop.
  c.control = True
  # Validation (early stopping): `windows` windows from the last `articles` fraction of the
  # calibration articles, which the training windows never see.
  c.val = ml_collections.ConfigDict(dict(articles=0.2, windows=8))
  c.test = ml_collections.ConfigDict(dict(windows=32))  # of the test split (other articles)
  c.train = ml_collections.ConfigDict(dict(
      steps=40, batch_size=2, rank=8,
      learning_rate=ml_collections.ConfigDict(dict(norms=2e-3, lora=1e-3)),
      warmup_steps=5, final_lr_fraction=0.1, weight_decay=0.0, clip_norm=1.0,
      eval_every=10, patience=3, checkpoint_every=10))
  if common.variant(arg) == "quick":
    c.run_name = "finetune_quick"
    c.mantissa_bits = (4,)
    c.seeds = 1
    c.data.seq_len = 128
    c.data.windows = 64
    c.val.windows = 4
    c.test.windows = 8
    c.train.steps = 30
    c.train.eval_every = 10
    c.window_batch = 4
  elif common.variant(arg) == "gemma3":
    common.on_gemma3(c, "finetune_gemma3")
  return c
