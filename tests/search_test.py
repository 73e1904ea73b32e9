"""Adaptive precision search on synthetic evaluators (the properties are about the algorithm)."""

import json
import pathlib
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from anda_jax import cost
from anda_jax import search
from experiments import search as exp_search

FP_PPL = 10.0
# Sensitivity of each type: the loss a type adds is SENS * 2^-2M (M = 0: float, no loss).
SENS = np.array([4.0, 1.0, 16.0, 64.0])
MACS = np.array([3.0, 1.0, 8.0, 4.0])


class Counter:
  """A jitted synthetic perplexity function that counts its traces (= compilations)."""

  def __init__(self, sens=SENS):
    self.traces = 0
    self.sens = jnp.asarray(sens, jnp.float32)
    self.fn = jax.jit(self._ppl)

  def _ppl(self, precisions):
    self.traces += 1  # runs only while tracing
    m = precisions.astype(jnp.float32)
    per_entry = jnp.where(precisions > 0, self.sens * jnp.exp2(-2 * m), 0.0)
    return FP_PPL * jnp.exp(per_entry.reshape(precisions.shape[0], -1).sum(-1))

  def __call__(self, precisions):
    chex.assert_rank(precisions, {2, 3})
    return np.asarray(self.fn(jnp.asarray(precisions)))


def loss(config, sens=SENS):
  config = np.asarray(config)
  per_entry = np.where(config > 0, sens * 2.0 ** (-2 * config), 0.0)
  return np.exp(per_entry.sum()) - 1


class SearchTest(parameterized.TestCase):

  @parameterized.parameters(0.001, 0.01, 0.1)
  def test_never_over_tolerance_and_no_candidate_fits(self, tol):
    result = search.search(Counter(), MACS, np.full(4, 10, np.int32), (tol,))[tol]
    self.assertTrue(result.within_tolerance)
    self.assertLessEqual(loss(result.precision), tol)
    self.assertAlmostEqual(result.loss, loss(result.precision), places=4)
    # It stopped because every one-bit step down is over tolerance (or at min_m).
    for c in search.candidates(result.precision):
      self.assertGreater(loss(c), tol)
    self.assertEqual(result.path[0].tolist(), [10] * 4)
    self.assertLess(result.cost, search.config_cost(np.full(4, 10), MACS))

  def test_deterministic(self):
    start = np.full(4, 9, np.int32)
    first = search.search(Counter(), MACS, start)
    second = search.search(Counter(), MACS, start)
    self.assertEqual(first.keys(), second.keys())
    for tol in first:
      np.testing.assert_array_equal(first[tol].precision, second[tol].precision)
      self.assertEqual([p.tolist() for p in first[tol].path],
                       [p.tolist() for p in second[tol].path])

  def test_tolerance_zero_returns_start(self):
    start = np.array([6, 7, 8, 9], np.int32)
    result = search.search(Counter(), MACS, start, (0.0,))[0.0]
    np.testing.assert_array_equal(result.precision, start)
    self.assertEqual(result.path[0].tolist(), start.tolist())
    self.assertLen(result.path, 1)

  def test_free_steps_are_taken_first_then_best_ratio(self):
    # Type "o" costs nothing to lower: it goes to min_m; then the best saving / loss.
    sens = np.array([4.0, 0.0, 16.0, 64.0])
    result = search.search(Counter(sens), MACS, np.full(4, 8, np.int32), (0.01,), min_m=2)
    self.assertEqual(result[0.01].precision[1], 2)
    # First step: "o" (free). Second: the best MACs / added loss among the others.
    path = result[0.01].path
    self.assertEqual(path[1].tolist(), [8, 7, 8, 8])
    steps = [np.array(c) for c in path]
    for before, after in zip(steps, steps[1:]):
      lowered = np.flatnonzero(before != after)
      self.assertLen(lowered, 1)  # one type, one bit, per round
      self.assertEqual(int((before - after).sum()), 1)
    # Replay the greedy choice by hand at the first non-free step.
    i = next(k for k, c in enumerate(steps) if c[1] == 2)
    current = steps[i]
    scores = {}
    for t in (0, 2, 3):
      c = current.copy()
      c[t] -= 1
      if loss(c, sens) <= 0.01:
        scores[t] = MACS[t] / (loss(c, sens) - loss(current, sens))
    if scores:
      best = max(scores, key=scores.get)
      self.assertEqual(int(np.flatnonzero(steps[i + 1] != current)[0]), best)

  def test_one_compiled_call_per_round_and_shared_cache(self):
    counter = Counter()
    cached = search.CachedEvaluator(counter, batch_size=4)
    results = search.search(cached, MACS, np.full(4, 10, np.int32), (0.001, 0.01, 0.05))
    self.assertEqual(counter.traces, 1)  # no recompilation across rounds or tolerances
    rounds_01 = results[0.001].rounds
    self.assertGreater(rounds_01, 2)
    # The tightest tolerance needs exactly one call per round (+1 for float and start).
    tight = search.CachedEvaluator(Counter(), batch_size=4)
    search.search(tight, MACS, np.full(4, 10, np.int32), (0.001,))
    self.assertEqual(tight.calls, rounds_01 + 1)
    # Looser tolerances reuse the cache: fewer calls than running them alone.
    alone = sum(_calls(t) for t in (0.001, 0.01, 0.05))
    self.assertLess(cached.calls, alone)
    self.assertEqual(cached.evaluated, len(cached.cache))

  def test_per_layer_granularity(self):
    counter = Counter(np.stack([SENS, SENS * 8]))  # layer 1 is more sensitive
    macs = np.stack([MACS, MACS])
    start = np.full((2, 4), 10, np.int32)
    result = search.search(counter, macs, start, (0.01,))[0.01]
    self.assertEqual(result.precision.shape, (2, 4))
    self.assertEqual(counter.traces, 1)
    self.assertTrue(result.within_tolerance)
    self.assertLessEqual(loss(result.precision, np.asarray(counter.sens)), 0.01 + 1e-6)
    self.assertTrue(np.all(result.precision[0] <= result.precision[1]))

  def test_resume_from_cache_evaluates_nothing(self):
    seen = []
    first = search.CachedEvaluator(Counter(), 4, on_result=lambda c, p: seen.append((c, p)))
    a = search.search(first, MACS, np.full(4, 10, np.int32))
    cache = {search.config_key(c): p for c, p in seen}
    second = search.CachedEvaluator(Counter(), 4, cache=cache)
    b = search.search(second, MACS, np.full(4, 10, np.int32))
    self.assertEqual(second.calls, 0)
    for tol in a:
      np.testing.assert_array_equal(a[tol].precision, b[tol].precision)

  def test_padding_keeps_batch_shape(self):
    shapes = []

    def evaluate(p):
      shapes.append(p.shape)
      return np.full(len(p), FP_PPL)

    cached = search.CachedEvaluator(evaluate, batch_size=3)
    out = cached([np.full(4, m) for m in range(1, 8)])
    self.assertEqual(shapes, [(3, 4)] * 3)
    self.assertLen(out, 7)

  @parameterized.named_parameters(
      ("start_shape", dict(start=np.full(5, 8)), "start"),
      ("start_below_min", dict(start=np.array([8, 8, 8, 0])), "min_m"),
      ("macs_shape", dict(macs=np.ones(3)), "macs"),
      ("tolerance", dict(tolerances=(-0.1,)), "tolerance"))
  def test_invalid_inputs(self, change, message):
    kwargs = dict(macs=MACS, start=np.full(4, 8), tolerances=(0.01,))
    kwargs.update(change)
    with self.assertRaisesRegex(ValueError, message):
      search.search(Counter(), **kwargs)


class ReportTest(absltest.TestCase):
  """The report's figures come from the run's files, not from a search in memory."""

  def _write_run(self, run_dir):
    shape = dict(n_layers=2, d_model=8, n_heads=4, n_kv_heads=2, head_dim=2, d_ff=16,
                 family="llama")
    (run_dir / "setup.json").write_text(json.dumps(dict(
        model="tiny", int4_group_size=None, corpus="c", seq_len=8,
        format=dict(group_size=64, exponent_bits=8, rounding="truncate"),
        windows=dict(calibration=dict(n=2, sha256="x"), test=dict(n=3, sha256="y")),
        shape=shape)))
    rows = [("calibration", [0, 0, 0, 0], 20.0), ("calibration", [6, 6, 6, 6], 20.01),
            ("calibration", [6, 5, 6, 6], 20.018), ("calibration", [6, 5, 6, 5], 20.15),
            ("calibration", [5, 5, 5, 5], 20.9), ("test", [0, 0, 0, 0], 30.0),
            ("test", [6, 5, 6, 6], 30.06), ("test", [6, 5, 6, 5], 30.3)]
    with (run_dir / "search.jsonl").open("w") as f:
      for split, p, ppl in rows:
        f.write(json.dumps(dict(split=split, precision=p, perplexity=ppl)) + "\n")
      f.write('{"split": "calibr')  # a torn last line from an interrupted run
    (run_dir / "chosen.json").write_text(json.dumps(dict(
        granularity="type", start_m=6, min_m=2, uniform_m=[5, 6],
        chosen=[dict(tolerance=0.001, precision=[6, 5, 6, 6]),
                dict(tolerance=0.01, precision=[6, 5, 6, 5])])))
    return cost.ModelShape(**shape)

  def test_report_reads_the_run_files(self):
    run_dir = pathlib.Path(self.enterContext(tempfile.TemporaryDirectory())) / "tiny_run"
    run_dir.mkdir()
    shape = self._write_run(run_dir)
    text = exp_search.write_report(run_dir)
    self.assertEqual((run_dir / "report.md").read_text(), text)
    self.assertTrue((run_dir / "pareto.png").stat().st_size > 1000)
    lines = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[2:-1]]
             for l in text.splitlines() if l.startswith("| ") and "%" in l.split("|")[1]
             or l.startswith("| uniform") or l.startswith("| FP16 activations")}
    # Tolerance 1%: [6, 5, 6, 5] -> 20.150 (+0.75%) on calibration, 30.300 (+1.00%) on test.
    row = lines["1%"]
    self.assertEqual(row[:5], ["6, 5, 6, 5", "20.150", "+0.75%", "30.300", "+1.00%"])
    s = cost.summarize(shape, np.array([6, 5, 6, 5]))
    self.assertEqual(row[5], f"{s['mean_m']:.2f}")  # (128*6 + 64*5 + 256*6 + 128*5)/576
    self.assertEqual(row[5], f"{(128 * 6 + 64 * 5 + 256 * 6 + 128 * 5) / 576:.2f}")
    self.assertEqual(row[7], f"{100 * s['bops_saving']:.1f}%")
    self.assertEqual(row[8], f"{s['speedup_vs_fp16']:.2f}x")
    self.assertEqual(lines["0.1%"][1:5], ["20.018", "+0.09%", "30.060", "+0.20%"])
    self.assertEqual(lines["FP16 activations"][1:5], ["20.000", "+0.00%", "30.000", "+0.00%"])
    self.assertEqual(lines["uniform M=5"][1:5], ["20.900", "+4.50%", "–", "–"])
    # Changing a file changes the report: nothing is cached elsewhere.
    log = exp_search.ResultsLog(run_dir / "search.jsonl")  # repairs the torn line
    log.appender("test")(np.full(4, 5), 33.0)
    self.assertIn("| uniform M=5 | 5, 5, 5, 5 | 20.900 | +4.50% | 33.000 | +10.00% |",
                  exp_search.write_report(run_dir))

  def test_results_log_appends_and_resumes(self):
    path = pathlib.Path(self.enterContext(tempfile.TemporaryDirectory())) / "search.jsonl"
    log = exp_search.ResultsLog(path)
    log.appender("test")(np.array([3, 4, 5, 6]), 12.5)
    log.appender("calibration")(np.array([[3, 4, 5, 6]]), 11.0)
    again = exp_search.ResultsLog(path)
    self.assertEqual(again.cache("test"), {search.config_key(np.array([3, 4, 5, 6])): 12.5})
    self.assertEqual(list(again.cache("calibration").values()), [11.0])


class ExperimentTest(absltest.TestCase):
  """experiments.search end to end on a tiny checkpoint with the real evaluator."""

  def test_tiny_model_run_resume_and_one_compile(self):
    import eval_testlib  # pylint: disable=g-import-not-at-top
    from anda_jax import evaluate  # pylint: disable=g-import-not-at-top
    from configs import search_quick  # pylint: disable=g-import-not-at-top

    tmp = pathlib.Path(self.enterContext(tempfile.TemporaryDirectory()))
    ckpt = eval_testlib.make_checkpoint(tmp / "ckpt", n_layers=2, d_model=32, d_ff=64)
    (tmp / "corpus.txt").write_text(eval_testlib.corpus_text())
    cfg = search_quick.get_config()
    cfg.results_dir, cfg.run_name = str(tmp / "results"), "tiny"
    cfg.model.name, cfg.data.corpus = str(ckpt), str(tmp / "corpus.txt")
    cfg.data.seq_len, cfg.data.calibration_windows, cfg.data.test_windows = 16, 4, 4
    cfg.start_m, cfg.min_m, cfg.tolerances, cfg.uniform_m = 6, 2, (0.0, 0.01, 0.05), (2, 4, 6)
    cfg.eval_batch_size, cfg.test_uniform = 4, True

    compiles = evaluate.total_compiles()
    run_dir = exp_search.run(cfg)
    # Every round, the uniform curve and the test split: one compiled program.
    self.assertEqual(evaluate.total_compiles() - compiles, 1)
    rows = exp_search.read_rows(run_dir / "search.jsonl")
    chosen = json.loads((run_dir / "chosen.json").read_text())["chosen"]
    self.assertLen(chosen, 3)
    cal = {search.config_key(np.asarray(r["precision"])): r["perplexity"]
           for r in rows if r["split"] == "calibration"}
    fp = cal[search.config_key(np.zeros(4, np.int32))]
    for c in chosen:  # never over tolerance on the calibration windows
      self.assertLessEqual(cal[search.config_key(np.asarray(c["precision"]))] / fp - 1,
                           c["tolerance"])
    tests = [r for r in rows if r["split"] == "test"]
    self.assertGreaterEqual(len(tests), 4)  # FP, chosen (maybe equal), uniform
    report = (run_dir / "report.md").read_text()
    self.assertIn("| 5% |", report)
    self.assertTrue((run_dir / "pareto.png").exists())

    # Resume: nothing is evaluated again, the file is unchanged, the choice is the same.
    before = (run_dir / "search.jsonl").read_text()
    exp_search.run(cfg)
    self.assertEqual((run_dir / "search.jsonl").read_text(), before)
    self.assertEqual(json.loads((run_dir / "chosen.json").read_text())["chosen"], chosen)
    # Deterministic: a fresh run directory evaluates the same configurations, same choice.
    cfg.run_name = "tiny_again"
    again = exp_search.run(cfg)
    self.assertEqual(json.loads((again / "chosen.json").read_text())["chosen"], chosen)
    self.assertEqual([(r["split"], r["precision"], r["perplexity"]) for r in rows],
                     [(r["split"], r["precision"], r["perplexity"])
                      for r in exp_search.read_rows(again / "search.jsonl")])
    # Per-layer granularity: [n_layers, 4] configurations through the same code.
    cfg.run_name, cfg.granularity, cfg.start_m, cfg.tolerances = "tiny_layer", "layer", 4, (0.02,)
    compiles = evaluate.total_compiles()
    layer_dir = exp_search.run(cfg)
    self.assertEqual(evaluate.total_compiles() - compiles, 1)
    (layer_chosen,) = json.loads((layer_dir / "chosen.json").read_text())["chosen"]
    self.assertEqual(np.shape(layer_chosen["precision"]), (2, 4))
    self.assertIn("(layer mean)", (layer_dir / "report.md").read_text())
    # Another setup in the same directory is refused.
    cfg.run_name, cfg.data.seq_len = "tiny", 12
    with self.assertRaisesRegex(ValueError, "written for other settings.*seq_len"):
      exp_search.run(cfg)


def _calls(tol):
  cached = search.CachedEvaluator(Counter(), 4)
  search.search(cached, MACS, np.full(4, 10, np.int32), (tol,))
  return cached.calls


if __name__ == "__main__":
  absltest.main()
