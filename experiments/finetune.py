"""Anda-aware fine-tuning on a real model: how much of the loss at low M a short training of a
few parameters buys back.

    python -m experiments.finetune --config=configs/finetune.py:quick
    python -m experiments.finetune --config=configs/finetune.py

For every M in `mantissa_bits` (the `types` in Anda at M with group size G, the other types FP),
every subset in `subsets` ("norms", "lora"; anda_jax.finetune) and every seed (`seed`, ...,
`seed` + `seeds` - 1: data order, LoRA initialization), trains that subset at that configuration
on windows of calibration articles, stops early on windows of other calibration articles
(`val`), and evaluates test perplexity (test articles, `test.windows`) at the configuration and
with FP activations. With `control`, each subset and seed is also trained with float
activations (M = 0) and evaluated at every M and at FP: how much of the gain is tuning itself
(fitting the corpus), not recovery from quantization. Every test evaluation keeps its per-window
NLL sums, so the report pairs any two of them on the same windows (bootstrap intervals).

Writes results/<run_name>/ :
  setup.json       the settings the rows are valid for; a rerun with other settings is refused
                   (`seeds` and `control` only add rows: a rerun with more of them adds those)
  results.jsonl    one line per result, appended as soon as known: "before" (the untuned model at
                   FP and at every M: test and validation perplexity), then one per training:
                   "M<m>-<subset>[-seed<s>]" (test perplexity after at M and at FP) and
                   "control-<subset>[-seed<s>]" (at FP and every M), each with the validation
                   perplexity before / best, steps, early stop, training seconds, the loss
                   history, and the test evaluations' per-window NLL sums (test_window_nll,
                   window_tokens); a rerun skips what is there (so "before" and a control
                   hold the M of the run that wrote them: another M wants another run_name)
  params/<id>.safetensors   the trained parameters: --config.finetune=<file> makes the sweep,
                   sensitivity study or search run on the tuned model
  checkpoints/     while a training runs, its checkpoint every train.checkpoint_every steps
                   (parameters, optimizer state, step, early-stopping state): a rerun continues
                   from it, bit for bit; removed once the result row is written
  results.csv      one line per (training, M) with its increases and intervals
                   (experiments/finetune_report.py)
  loss_curves.png  training loss (each step, and its running mean) and validation NLL, one
                   panel per M and one for the controls
and prints the report. Training runs on one device (no mesh); the test evaluations on
--config.mesh.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

from absl import logging
from flax import nnx
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
from experiments import finetune_report
from experiments.harness import loading
from experiments.harness import perplexity
from experiments.harness import run_folder

BEFORE, ANDA, CONTROL = finetune_report.BEFORE, finetune_report.ANDA, finetune_report.CONTROL
ROW_FIELDS = finetune_report.ROW_FIELDS
SPLITS = ("train", "val", "test")


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
  check_int("seeds", cfg.seeds, 1)
  for subset in cfg.subsets:
    train_config(cfg, subset)  # ValueError naming a bad training setting


def train_config(cfg, subset: str, seed: int | None = None) -> finetune.TrainConfig:
  t = cfg.train
  lr = t.learning_rate[subset] if subset in t.learning_rate else None
  try:
    return finetune.TrainConfig(
        subset=subset, rank=t.rank, steps=t.steps, batch_size=t.batch_size, learning_rate=lr,
        warmup_steps=t.warmup_steps, final_lr_fraction=t.final_lr_fraction,
        weight_decay=t.weight_decay, clip_norm=t.clip_norm, eval_every=t.eval_every,
        patience=t.patience, checkpoint_every=t.checkpoint_every,
        seed=cfg.seed if seed is None else seed)
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


@dataclasses.dataclass(frozen=True)
class Job:
  """One training: `subset` at `mantissa_bits` (under Anda) or the control (float activations,
  evaluated at every M) with training seed `seed`."""

  id: str
  subset: str
  seed: int
  control: bool
  mantissa_bits: int | None  # None for the control

  @property
  def train_m(self) -> int:
    return 0 if self.control else self.mantissa_bits


def job_id(subset: str, seed: int, first_seed: int, m: int | None = None) -> str:
  """"M4-norms" (first seed), "M4-norms-seed1", "control-norms", "control-norms-seed1"."""
  name = f"M{m}-{subset}" if m is not None else f"{CONTROL}-{subset}"
  return name if seed == first_seed else f"{name}-seed{seed}"


def jobs(cfg) -> list[Job]:
  """Every training of the run, in order: under Anda by M, subset, seed; then the controls."""
  seeds = [cfg.seed + k for k in range(cfg.seeds)]
  out = [Job(job_id(s, k, cfg.seed, m), s, k, False, m)
         for m in cfg.mantissa_bits for s in cfg.subsets for k in seeds]
  if cfg.control:
    out += [Job(job_id(s, k, cfg.seed), s, k, True, None) for s in cfg.subsets for k in seeds]
  return out


def run_ids(cfg) -> set[str]:
  """The ids of the rows a run of `cfg` writes."""
  return {BEFORE} | {j.id for j in jobs(cfg)}


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
                               write=is_main, required=ROW_FIELDS)
  spec = config_checks.product_spec(cfg, cfg.format.group_sizes[0])
  key = config_checks.rounding_key(cfg)
  weights = evaluate.target_weights(len(windows["test"]), windows["test"].shape[1],
                                    loading.score_from(cfg.data))

  def test_fields(model, precisions) -> dict:
    """Test perplexity at each configuration, with its per-window NLL sums (paired intervals)."""
    sums, tokens = evaluate.window_nll_sums(
        model, windows["test"], np.stack(precisions), spec, weights=weights,
        batch_size=cfg.window_batch, config_batch=cfg.config_batch, key=key, mesh=mesh)
    return dict(test_ppl=[float(np.exp(s.sum() / tokens.sum())) for s in sums],
                test_window_nll=[perplexity.window_fields(s, tokens)["window_nll"] for s in sums],
                window_tokens=[float(t) for t in tokens])

  fp = precision_of(cfg, 0)
  ms = list(cfg.mantissa_bits)
  configs = [fp] + [precision_of(cfg, m) for m in ms]
  logging.info("windows %s", {s: w.shape for s, w in windows.items()})
  if BEFORE not in results.rows:
    t0 = time.time()
    val = [finetune.perplexity(model, None, windows["val"], p, spec,
                               batch_size=cfg.train.batch_size, key=key) for p in configs]
    results.append([dict(id=BEFORE, mantissa_bits=[0] + ms, **test_fields(model, configs),
                         val_ppl=val, seconds=round(time.time() - t0, 2))])
  for job in jobs(cfg):
    if job.id in results.rows:
      continue
    state = _train(cfg, folder, model, windows, spec, job, digest, is_main)
    t0 = time.time()
    tuned = finetune.apply_params(nnx.clone(model), state.best_params)
    # Under Anda: at its M and at FP; the control (trained at FP): at FP and at every M.
    evaluated = [job.mantissa_bits, 0] if not job.control else [0] + ms
    test = test_fields(tuned, [precision_of(cfg, m) for m in evaluated])
    if not job.control:  # the row as before: one M, its FP evaluation beside it
      test = dict(test_ppl=test["test_ppl"][0], test_ppl_fp=test["test_ppl"][1],
                  test_window_nll=test["test_window_nll"][0],
                  test_window_nll_fp=test["test_window_nll"][1],
                  window_tokens=test["window_tokens"])
    params_file = folder / "params" / f"{job.id}.safetensors"
    row = dict(
        id=job.id, subset=job.subset, arm=CONTROL if job.control else ANDA, seed=job.seed,
        mantissa_bits=evaluated if job.control else job.mantissa_bits,
        precision=precision_of(cfg, job.train_m).tolist(), **test,
        val_ppl_before=state.val_history[0][1], val_ppl=state.best_val,
        best_step=state.best_step, steps=state.step, stopped_early=state.stopped_early,
        train_seconds=round(state.seconds, 2), eval_seconds=round(time.time() - t0, 2),
        n_params=finetune.count(state.best_params),
        params_file=str(params_file.relative_to(folder)),
        tokens_per_step=cfg.train.batch_size * (cfg.data.seq_len - 1),
        history=[[s, round(v, 5)] for s, v in state.history],
        val_history=[list(v) for v in state.val_history])
    if is_main:
      finetune.save_params(params_file, state.best_params, dict(
          subset=job.subset, precision=row["precision"], model=cfg.model.name,
          model_sha256=digest, int4_group_size=cfg.model.int4_group_size,
          format=row_format(cfg), steps=state.step, best_step=state.best_step,
          val_ppl=state.best_val, seed=job.seed))
    results.append([row])
    checkpoint = folder / "checkpoints" / f"{job.id}.safetensors"
    if is_main and checkpoint.exists():
      checkpoint.unlink()
  print(f"wall time {time.time() - t_start:.1f} s")
  if is_main:
    finetune_report.report(folder)
  return results.rows


def _train(cfg, folder, model, windows, spec, job: Job, digest: str, is_main: bool):
  """One training (resumed from its checkpoint where one is left): its final TrainState."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  tcfg = train_config(cfg, job.subset, job.seed)
  bar = tqdm(total=tcfg.steps, desc=job.id, unit="step", disable=not is_main)

  def on_step(state, val):
    del val
    bar.update(state.step - bar.n)
    bar.set_postfix(loss=f"{state.history[-1][1]:.3f}", val_ppl=f"{state.val_history[-1][1]:.2f}")

  checkpoint = folder / "checkpoints" / f"{job.id}.safetensors"
  state = finetune.train(model, windows["train"], windows["val"], precision_of(cfg, job.train_m),
                         spec, tcfg, checkpoint=checkpoint if is_main else None,
                         fingerprint=dict(model_sha256=digest), on_step=on_step)
  bar.close()
  return state


def row_format(cfg) -> dict:
  return dict(group_size=cfg.format.group_sizes[0], exponent_bits=cfg.format.exponent_bits,
              rounding=cfg.format.rounding)


def report(run_dir) -> str:
  """Writes results.csv and loss_curves.png from results.jsonl; prints and returns the table."""
  return finetune_report.report(run_dir)


if __name__ == "__main__":
  cli.run_with_config(run, "Fine-tuning configuration.")
