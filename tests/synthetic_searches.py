"""Synthetic finished search runs (setup.json, chosen.json, search.jsonl) whose per-window
sums are built so that every paired difference between them is known in closed form: a shift of
c nats per scored token on every window gives exp(c) - 1 on every bootstrap resample."""

import gzip
import json
import math
import pathlib

import numpy as np

# A model of 64-wide contractions (G = 64 and MX's blocks of 32 divide every K).
SHAPE = dict(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128,
             family="llama", vocab=32)
N, TOKENS = 6, 10.0  # test windows, scored tokens in each
MX = ["mxint8", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4"]
BASE = np.random.default_rng(0).uniform(20, 40, N)  # FP's per-window sums
ALTERNATING = np.tile([1.0, -1.0], N // 2)


def shifted(per_token) -> np.ndarray:
  """FP's sums moved by `per_token` nats per scored token on each window (a number or [N])."""
  return BASE + np.asarray(per_token, float) * TOKENS


def row(precision, sums, fmt=None) -> dict:
  out = dict(split="test", precision=list(precision), windows=N,
             perplexity=math.exp(float(np.sum(sums)) / (N * TOKENS)),
             window_nll=[float(s) for s in sums], window_tokens=[TOKENS] * N)
  return out if fmt is None else dict(out, format=fmt)


def write_run(folder: pathlib.Path, chosen, rows, *, candidates=None, rounding="truncate",
              uniform_m=(), other_formats=(), test_sha="t", model="m", packed=False):
  """A finished search run's files: chosen [(tolerance, precision)], test rows (FP's added)."""
  folder.mkdir(parents=True)
  setup = dict(model=model, model_sha256="s", int4_group_size=None, corpus="c", seq_len=11,
               format=dict(group_size=64, exponent_bits=8, rounding=rounding),
               windows=dict(calibration=dict(n=4, sha256="c"), test=dict(n=N, sha256=test_sha)),
               shape=SHAPE, **({} if candidates is None else dict(candidates=candidates)))
  (folder / "setup.json").write_text(json.dumps(setup))
  (folder / "chosen.json").write_text(json.dumps(dict(
      granularity="type", rule="upper", uniform_m=list(uniform_m),
      other_formats=list(other_formats),
      chosen=[dict(tolerance=t, precision=p, within_tolerance=True) for t, p in chosen])))
  text = "".join(json.dumps(r) + "\n" for r in [row([0] * 4, BASE)] + rows)
  if packed:
    (folder / "search.jsonl.gz").write_bytes(gzip.compress(text.encode()))
  else:
    (folder / "search.jsonl").write_text(text)
  return folder
