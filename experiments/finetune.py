"""Anda-aware fine-tuning on a real model: how much of the loss at low M a short training of a
few parameters buys back.

    python -m experiments.finetune --config=configs/finetune.py:quick
    python -m experiments.finetune --config=configs/finetune.py

For every M in `mantissa_bits` (the `types` in Anda at M with group size G, the other types FP)
and every subset in `subsets` ("norms", "lora"; anda_jax.finetune), trains that subset at that
configuration on windows of calibration articles, stops early on windows of other calibration
articles (`val`), and evaluates test perplexity (test articles, `test.windows`) before and
after, both at the configuration and with FP activations (which shows how much of a gain is
plain adaptation to the corpus rather than recovery from quantization).

Writes results/<run_name>/ :
  setup.json       the settings the rows are valid for; a rerun with other settings is refused
  results.jsonl    one line per result, appended as soon as known: "before" (the untuned model at
                   FP and at every M: test and validation perplexity), then one per (M, subset):
                   test perplexity after at M and at FP, validation before / best, steps, early
                   stop, training seconds, the loss history; a rerun skips what is there
  params/M<m>-<subset>.safetensors   the trained parameters: --config.finetune=<file> makes the
                   sweep, sensitivity study or search run on the tuned model
  checkpoints/     while a training runs, its checkpoint every train.checkpoint_every steps
                   (parameters, optimizer state, step, early-stopping state): a rerun continues
                   from it, bit for bit; removed once the result row is written
  results.csv      the rows without histories
  loss_curves.png  training loss (each step, and its running mean) and validation NLL, one
                   panel per M
and prints a table. Training runs on one device (no mesh); the test evaluations on --config.mesh.
"""

from __future__ import annotations

import math
import pathlib
import time

from absl import logging
import numpy as np

from anda_jax.checks import check_int
from anda_jax import data
from anda_jax.evaluation import evaluate
from anda_jax import finetune
from anda_jax import precision as anda_precision
from anda_jax.precision import MAX_MANTISSA_BITS, MIN_MANTISSA_BITS
from configs import finetune as finetune_config
from experiments.harness import cli
from experiments.harness import config_checks
from experiments.harness import distributed
from experiments.harness import loading
from experiments.harness import reports
from experiments.harness import run_folder

BEFORE = "before"
ROW_FIELDS = ("id",)
SPLITS = ("train", "val", "test")
SMOOTH = 5  # steps in the running mean of the plotted training loss


# ---------------------------------------------------------------------- validation


def validate(cfg) -> None:
  """Everything checkable before loading anything heavy; ValueError with a clear message."""
  config_checks.check_config(cfg, finetune_config.get_config())
  config_checks.one_group_size(cfg, "fine-tuning")
  if cfg.data.split != "calibration":
    raise ValueError(f"data.split={cfg.data.split!r} is invalid: training runs on 'calibration' "
                     "(the test split is held out for the report)")
  if cfg.finetune is not None:
    raise ValueError(f"finetune={cfg.finetune!r} is invalid here: fine-tuning starts from the "
                     "loaded model (None)")
  if cfg.impl != "fake":
    raise ValueError(f"impl={cfg.impl!r} is invalid for training: must be 'fake'")
  config_checks.check_ints("mantissa_bits", cfg.mantissa_bits, MIN_MANTISSA_BITS, MAX_MANTISSA_BITS)
  config_checks.check_types(cfg.types, anda_precision.MODULE_TYPES)
  if not cfg.subsets or any(s not in finetune.SUBSETS for s in cfg.subsets):
    raise ValueError(f"subsets={tuple(cfg.subsets)!r} is invalid: must be a non-empty subset of "
                     f"{finetune.SUBSETS}")
  a = cfg.val.articles
  if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a < 1:
    raise ValueError(f"val.articles={a!r} is invalid: must be a fraction in (0, 1)")
  check_int("val.windows", cfg.val.windows, 1)
  check_int("test.windows", cfg.test.windows, 1)
  for subset in cfg.subsets:
    train_config(cfg, subset)  # ValueError naming a bad training setting


def train_config(cfg, subset: str) -> finetune.TrainConfig:
  t = cfg.train
  lr = t.learning_rate[subset] if subset in t.learning_rate else None
  try:
    return finetune.TrainConfig(
        subset=subset, rank=t.rank, steps=t.steps, batch_size=t.batch_size, learning_rate=lr,
        warmup_steps=t.warmup_steps, final_lr_fraction=t.final_lr_fraction,
        weight_decay=t.weight_decay, clip_norm=t.clip_norm, eval_every=t.eval_every,
        patience=t.patience, checkpoint_every=t.checkpoint_every, seed=cfg.seed)
  except ValueError as e:
    name = str(e).split("=", 1)[0]
    if name == "learning_rate":
      raise ValueError(f"train.learning_rate.{subset}={lr!r} is invalid: must be a number > 0") from None
    raise ValueError(f"train.{e}") from None


def precision_of(cfg, m: int) -> np.ndarray:
  """The configuration trained and evaluated at M = m: the `types` at m, the others FP."""
  p = np.zeros(len(anda_precision.MODULE_TYPES), np.int32)
  for t in cfg.types:
    p[anda_precision.TYPE_INDEX[t]] = m
  return p


# ---------------------------------------------------------------------- data


def load_windows(cfg, tokenizer) -> dict[str, np.ndarray]:
  """train: `data` windows from the calibration articles but the last `val.articles` fraction;
  val: windows of those; test: of the test split. No article is in two of them."""
  d = cfg.data
  corpus = data.load_corpus(d.corpus)
  cal = corpus.split("calibration")
  n_val = max(1, round(cfg.val.articles * len(cal)))
  if len(cal) < 2:
    raise ValueError(f"data.corpus={d.corpus!r} has {len(cal)} calibration article(s): training "
                     "and validation need at least 2")
  n_val = min(n_val, len(cal) - 1)
  texts = dict(train=cal[:-n_val], val=cal[-n_val:], test=corpus.split("test"))
  n = dict(train=d.windows, val=cfg.val.windows, test=cfg.test.windows)
  names = dict(train="data.windows", val="val.windows", test="test.windows")
  where = dict(train=f"the calibration articles but the last {n_val}",
               val=f"the last {n_val} calibration articles (val.articles={cfg.val.articles})",
               test="the test split")
  out = {}
  bos = loading.bos_first(d, tokenizer)
  for s in SPLITS:
    out[s] = data.token_windows(texts[s], tokenizer, d.seq_len, max_windows=n[s], stride=d.stride,
                                bos=bos)
    loading.check_window_count(names[s], n[s], out[s], f"{where[s]} of data.corpus={d.corpus!r}")
  return out


def setup_of(cfg, windows: dict | None, digest: str) -> dict:
  setup = dict(model=dict(cfg.model.to_dict(), sha256=digest), format=dict(
      group_size=cfg.format.group_sizes[0], exponent_bits=cfg.format.exponent_bits,
      rounding=cfg.format.rounding), impl=cfg.impl, seed=cfg.seed,
               data=run_folder.data_setup(cfg.data), types=list(cfg.types), val=cfg.val.to_dict(),
               test=cfg.test.to_dict(), train=cfg.train.to_dict())
  if windows is not None:
    setup["windows"] = {s: dict(shape=list(w.shape), sha256=run_folder.windows_sha256(w)[:16])
                        for s, w in windows.items()}
  # The test evaluations' window batch changes their last bits; recorded where set, so that the
  # setup of a run without it reads as before.
  if cfg.window_batch is not None:
    setup["window_batch"] = cfg.window_batch
  return setup | run_folder.mesh_setup(cfg)


# ---------------------------------------------------------------------- the runs


def run(cfg) -> dict:
  """Runs (or resumes) the fine-tuning experiment; returns {id: row}."""
  validate(cfg)
  distributed.maybe_initialize_distributed(cfg)
  digest = loading.model_sha256(cfg.model.name)
  with run_folder.open_run(cfg, setup_of(cfg, None, digest)) as folder:
    return _run(cfg, folder, digest)


def _run(cfg, folder: pathlib.Path, digest: str) -> dict:
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  t_start = time.time()
  mesh = distributed.mesh_of(cfg)  # the test evaluations'; before loading, a bad shape is refused
  model, tokenizer = loading.load_model(cfg.model)
  config_checks.check_group_size_fits(model, cfg.format.group_sizes, cfg.impl)
  distributed.check_mesh_fits(model, mesh, [config_checks.product_spec(cfg, cfg.format.group_sizes[0])])
  windows = load_windows(cfg, tokenizer)
  loading.check_model_fits(cfg, model, windows)
  is_main = distributed.is_main()
  bos = run_folder.bos_setup(loading.bos_first(cfg.data, tokenizer))
  results = run_folder.Results(folder, setup_of(cfg, windows, digest)
                               | run_folder.weights_setup(model) | bos,
                               write=is_main,
                           required=ROW_FIELDS)
  spec = config_checks.product_spec(cfg, cfg.format.group_sizes[0])
  key = config_checks.rounding_key(cfg)
  fp = np.zeros(len(anda_precision.MODULE_TYPES), np.int32)
  ms = list(cfg.mantissa_bits)
  configs = [fp] + [precision_of(cfg, m) for m in ms]
  test_kw = dict(score_from=loading.score_from(cfg.data), batch_size=cfg.window_batch,
                 config_batch=cfg.config_batch, key=key, mesh=mesh)
  val_kw = dict(batch_size=cfg.train.batch_size, key=key)
  logging.info("windows %s", {s: w.shape for s, w in windows.items()})

  if BEFORE not in results.rows:
    t0 = time.time()
    test = evaluate.perplexity(model, windows["test"], np.stack(configs), spec, **test_kw)
    val = [finetune.perplexity(model, None, windows["val"], p, spec, **val_kw) for p in configs]
    results.append([dict(id=BEFORE, mantissa_bits=[0] + ms, test_ppl=[float(v) for v in test],
                         val_ppl=val, seconds=round(time.time() - t0, 2))])

  for m in ms:
    precision = precision_of(cfg, m)
    for subset in cfg.subsets:
      run_id = f"M{m}-{subset}"
      if run_id in results.rows:
        continue
      tcfg = train_config(cfg, subset)
      ckpt = folder / "checkpoints" / f"{run_id}.safetensors"
      bar = tqdm(total=tcfg.steps, desc=run_id, unit="step", disable=not is_main)

      def on_step(state, val, bar=bar):
        bar.update(state.step - bar.n)
        bar.set_postfix(loss=f"{state.history[-1][1]:.3f}",
                        val_ppl=f"{state.val_history[-1][1]:.2f}")

      state = finetune.train(model, windows["train"], windows["val"], precision, spec, tcfg,
                             checkpoint=ckpt if is_main else None,
                             fingerprint=dict(model_sha256=digest), on_step=on_step)
      bar.close()
      t0 = time.time()
      tuned = finetune.apply_params(nnx.clone(model), state.best_params)
      test = evaluate.perplexity(tuned, windows["test"], np.stack([precision, fp]), spec, **test_kw)
      params_file = folder / "params" / f"{run_id}.safetensors"
      row = dict(
          id=run_id, subset=subset, mantissa_bits=m, precision=precision.tolist(),
          test_ppl=float(test[0]), test_ppl_fp=float(test[1]),
          val_ppl_before=state.val_history[0][1], val_ppl=state.best_val,
          best_step=state.best_step, steps=state.step, stopped_early=state.stopped_early,
          train_seconds=round(state.seconds, 2), eval_seconds=round(time.time() - t0, 2),
          n_params=finetune.count(state.best_params), params_file=str(params_file.relative_to(folder)),
          tokens_per_step=tcfg.batch_size * (cfg.data.seq_len - 1),
          history=[[s, round(v, 5)] for s, v in state.history],
          val_history=[list(v) for v in state.val_history])
      if is_main:
        finetune.save_params(params_file, state.best_params, dict(
            subset=subset, precision=precision.tolist(), model=cfg.model.name,
            model_sha256=digest, int4_group_size=cfg.model.int4_group_size,
            format=row_format(cfg), steps=state.step, best_step=state.best_step,
            val_ppl=state.best_val, seed=cfg.seed))
      results.append([row])
      if is_main and ckpt.exists():
        ckpt.unlink()
  print(f"wall time {time.time() - t_start:.1f} s")
  if is_main:
    report(folder)
  return results.rows


def row_format(cfg) -> dict:
  return dict(group_size=cfg.format.group_sizes[0], exponent_bits=cfg.format.exponent_bits,
              rounding=cfg.format.rounding)


# ---------------------------------------------------------------------- report


def _ratio(value, base) -> str:
  if value is None or base is None or not (math.isfinite(value) and math.isfinite(base)):
    return "-"
  r = value / base
  return f"{r - 1:+.1%}" if r < 2 else f"x{r:.1f}"


def report(run_dir) -> str:
  """Writes results.csv and loss_curves.png from results.jsonl; prints and returns the table."""
  run_dir = pathlib.Path(run_dir)
  rows = {r["id"]: r for r in run_folder.read_rows(run_dir / "results.jsonl", ROW_FIELDS)}
  before = rows.get(BEFORE)
  order = lambda r: (r["mantissa_bits"], finetune.SUBSETS.index(r["subset"]) if r["subset"] in finetune.SUBSETS else 9)
  runs = sorted((r for k, r in rows.items() if k != BEFORE), key=order)
  fields = ["id", "subset", "mantissa_bits", "test_ppl_before", "test_ppl", "test_ppl_fp_before",
            "test_ppl_fp", "val_ppl_before", "val_ppl", "best_step", "steps", "stopped_early",
            "train_seconds", "n_params", "params_file"]
  test_before, fp_test = {}, None
  if before:
    test_before = dict(zip(before["mantissa_bits"], before["test_ppl"]))
    fp_test = test_before.get(0)
  csv_rows = [dict(r, test_ppl_before=test_before.get(r["mantissa_bits"]), test_ppl_fp_before=fp_test)
              for r in runs]
  reports.write_text(run_dir / "results.csv", reports.csv_text(fields, csv_rows))
  shown = "not measured" if fp_test is None else f"{fp_test:.3f}"
  lines = [f"test perplexity; FP activations, untuned: {shown}. (In brackets: relative to that.) "
           "'gap': the tuned model at M over its own FP perplexity",
           f"{'M':>3} {'untuned at M':>18}  {'subset':<6} {'tuned at M':>18} {'tuned, FP':>10} "
           f"{'gap':>7} {'steps':>5} {'train s':>7}"]
  for m in sorted({r["mantissa_bits"] for r in runs} | {m for m in test_before if m}):
    b = test_before.get(m)
    first = f"{m:>3} " + (f"{b:>8.2f} ({_ratio(b, fp_test):>7})" if b else f"{'-':>18}")
    for r in [r for r in runs if r["mantissa_bits"] == m] or [None]:
      if r is None:
        lines.append(first)
        continue
      lines.append(f"{first}  {r['subset']:<6} {r['test_ppl']:>8.2f} ({_ratio(r['test_ppl'], fp_test):>7}) "
                   f"{r['test_ppl_fp']:>10.2f} {_ratio(r['test_ppl'], r['test_ppl_fp']):>7} "
                   f"{r['steps']:>5} {r['train_seconds']:>7.0f}")
      first = " " * len(first)
  table = reports.with_weights(run_dir, "\n".join(lines))
  print(table)
  _plot(run_dir, runs, before)
  return table


def _plot(run_dir: pathlib.Path, runs: list[dict], before: dict | None) -> None:
  plt = reports.pyplot()

  ms = sorted({r["mantissa_bits"] for r in runs})
  if not ms:
    return
  val_before = dict(zip(before["mantissa_bits"], before["val_ppl"])) if before else {}
  fig, axes = plt.subplots(1, len(ms), figsize=(5 * len(ms), 3.8), squeeze=False, sharey=True)
  for ax, m in zip(axes[0], ms):
    for r in (r for r in runs if r["mantissa_bits"] == m):
      i = finetune.SUBSETS.index(r["subset"]) if r["subset"] in finetune.SUBSETS else 9
      steps, loss = (np.array(v) for v in zip(*r["history"])) if r["history"] else (np.zeros(0),) * 2
      ax.plot(steps, loss, c=f"C{i}", alpha=0.25, lw=0.7)
      k = min(SMOOTH, len(loss))
      if k:  # the running mean over the last k steps (a batch is a few windows: noisy)
        mean = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], mean, c=f"C{i}", lw=1.2, label=f"{r['subset']}: training loss ({k}-step mean)")
      vs, vp = zip(*r["val_history"])
      ax.plot(vs, np.log(vp), "o-", c=f"C{i}", ms=3, label=f"{r['subset']}: validation NLL")
    if 0 in val_before:
      ax.axhline(math.log(val_before[0]), c="k", ls=":", lw=1, label="validation NLL, FP, untuned")
    ax.set(title=f"M = {m}", xlabel="step")
  axes[0][0].set_ylabel("NLL per token (nats)")
  axes[0][-1].legend(fontsize=7)
  fig.tight_layout()
  reports.save_figure(fig, run_dir / "loss_curves.png", dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  cli.run_with_config(run, "Fine-tuning configuration.")
