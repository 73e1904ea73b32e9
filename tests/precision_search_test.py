"""anda_jax.precision_search on synthetic evaluators (the properties are about the algorithm)."""

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from anda_jax import precision as anda_precision
from anda_jax import precision_search

N_WINDOWS, TOKENS = 16, 100.0
_rng = np.random.default_rng(0)
DIFFICULTY = _rng.uniform(2.5, 4.0, N_WINDOWS) * TOKENS  # the float model's NLL sum per window
SPREAD = _rng.normal(size=N_WINDOWS)
SPREAD -= SPREAD.mean()  # mean 0: a configuration's loss over all windows is exactly loss()
WINDOW_TOKENS = np.full(N_WINDOWS, TOKENS)
# Sensitivity of each type: a type adds SENS * 2^-2M nats per token (M = 0: float, none).
SENS = np.array([4.0, 1.0, 16.0, 64.0])
MACS = np.array([3.0, 1.0, 8.0, 4.0])


class Counter:
  """A jitted synthetic evaluator of per-window NLL sums that counts its traces (=
  compilations) and records its calls. Window i takes a configuration's added NLL times
  1 + spread * SPREAD[i], so differences vary from window to window (non-zero intervals)."""

  def __init__(self, sens=SENS, spread=0.5):
    self.traces, self.calls = 0, []
    self.sens, self.spread = jnp.asarray(sens, jnp.float32), spread
    self.fn = jax.jit(self._added)

  def _added(self, precisions, spread):
    self.traces += 1  # runs only while tracing
    m = precisions.astype(jnp.float32)
    per_entry = jnp.where(precisions > 0, self.sens * jnp.exp2(-2 * m), 0.0)
    added = per_entry.reshape(precisions.shape[0], -1).sum(-1)
    return TOKENS * added[:, None] * (1 + self.spread * spread[None])

  def __call__(self, precisions, windows=slice(None), base=None):
    chex.assert_rank(precisions, {2, 3})
    self.calls.append((np.asarray(precisions).copy(), windows, base))
    added = self.fn(jnp.asarray(precisions), jnp.asarray(SPREAD[windows], jnp.float32))
    return DIFFICULTY[windows][None] + np.asarray(added, np.float64)


def cached(counter=None, **kwargs):
  return precision_search.CachedEvaluator(counter or Counter(), WINDOW_TOKENS, **kwargs)


def loss(config, sens=SENS):
  config = np.asarray(config)
  per_entry = np.where(config > 0, sens * 2.0 ** (-2 * config), 0.0)
  return np.exp(per_entry.sum()) - 1


def interval_high(config, counter):
  fp, sums = cached(counter)([np.zeros_like(config), config])
  return precision_search.loss_interval(sums, fp, WINDOW_TOKENS).high


class SearchTest(parameterized.TestCase):

  @parameterized.product(tol=(0.001, 0.01, 0.1), rule=("point", "upper"))
  def test_never_over_tolerance_and_no_candidate_fits(self, tol, rule):
    counter = Counter()
    result = precision_search.search(cached(counter), MACS, np.full(4, 10, np.int32), (tol,),
                                     rule=rule)[tol]
    self.assertTrue(result.within_tolerance)
    self.assertAlmostEqual(result.loss, loss(result.precision), places=5)
    measure = (lambda c: loss(c)) if rule == "point" else (lambda c: interval_high(c, counter))
    self.assertLessEqual(measure(result.precision), tol)
    # It stopped because every one-bit step down is over tolerance (or at min_m).
    for c in precision_search.candidates(result.precision):
      self.assertGreater(measure(c), tol)
    self.assertEqual(result.path[0].tolist(), [10] * 4)
    self.assertLess(result.cost, precision_search.config_cost(np.full(4, 10), MACS))
    self.assertLess(result.interval.low, result.loss)
    self.assertLess(result.loss, result.interval.high)

  def test_the_upper_rule_is_stricter_than_the_point_rule(self):
    stricter = []
    for tol in (0.001, 0.003, 0.01, 0.03, 0.1):
      point, upper = (precision_search.search(cached(), MACS, np.full(4, 10, np.int32), (tol,),
                                              rule=rule, progress=False)[tol]
                      for rule in ("point", "upper"))
      self.assertGreaterEqual(upper.cost, point.cost)
      self.assertLessEqual(upper.interval.high, tol)
      stricter.append(upper.cost > point.cost)
    self.assertTrue(any(stricter))  # the interval costs bits at some tolerance

  def test_deterministic(self):
    start = np.full(4, 9, np.int32)
    first = precision_search.search(cached(), MACS, start)
    second = precision_search.search(cached(), MACS, start)
    self.assertEqual(first.keys(), second.keys())
    for tol in first:
      np.testing.assert_array_equal(first[tol].precision, second[tol].precision)
      self.assertEqual([p.tolist() for p in first[tol].path],
                       [p.tolist() for p in second[tol].path])

  def test_tolerance_zero_returns_start(self):
    start = np.array([6, 7, 8, 9], np.int32)
    result = precision_search.search(cached(), MACS, start, (0.0,))[0.0]
    np.testing.assert_array_equal(result.precision, start)
    self.assertLen(result.path, 1)
    self.assertFalse(result.within_tolerance)  # its loss is > 0

  def test_free_steps_are_taken_first_then_best_ratio(self):
    # Type "o" costs nothing to lower: it goes to min_m; then the best saving / loss.
    sens = np.array([4.0, 0.0, 16.0, 64.0])
    result = precision_search.search(cached(Counter(sens)), MACS, np.full(4, 8, np.int32), (0.01,),
                                     min_m=2, rule="point")
    self.assertEqual(result[0.01].precision[1], 2)
    path = result[0.01].path
    self.assertEqual(path[1].tolist(), [8, 7, 8, 8])
    steps = [np.array(c) for c in path]
    for before, after in zip(steps, steps[1:]):
      self.assertLen(np.flatnonzero(before != after), 1)  # one type, one bit, per round
      self.assertEqual(int((before - after).sum()), 1)
    # Replay the greedy choice by hand at the first non-free step.
    i = next(k for k, c in enumerate(steps) if c[1] == 2)
    current, scores = steps[i], {}
    for t in (0, 2, 3):
      c = current.copy()
      c[t] -= 1
      if loss(c, sens) <= 0.01:
        scores[t] = MACS[t] / (loss(c, sens) - loss(current, sens))
    if scores:
      self.assertEqual(int(np.flatnonzero(steps[i + 1] != current)[0]), max(scores, key=scores.get))

  def test_one_compiled_call_per_round_and_shared_cache(self):
    counter = Counter()
    shared = cached(counter, batch_size=4)
    results = precision_search.search(shared, MACS, np.full(4, 10, np.int32), (0.001, 0.01, 0.05))
    self.assertEqual(counter.traces, 1)  # no recompilation across rounds or tolerances
    rounds_01 = results[0.001].rounds
    self.assertGreater(rounds_01, 2)
    # The tightest tolerance needs exactly one call per round (+1 for float and start).
    tight = cached(batch_size=4)
    precision_search.search(tight, MACS, np.full(4, 10, np.int32), (0.001,))
    self.assertEqual(tight.calls, rounds_01 + 1)
    # Looser tolerances reuse the cache: fewer calls than running them alone.
    alone = 0
    for t in (0.001, 0.01, 0.05):
      e = cached(batch_size=4)
      precision_search.search(e, MACS, np.full(4, 10, np.int32), (t,))
      alone += e.calls
    self.assertLess(shared.calls, alone)
    self.assertEqual(shared.evaluated, len(shared.cache))

  def test_per_layer_granularity_hints_the_current_configuration(self):
    counter = Counter(np.stack([SENS, SENS * 8]))  # layer 1 is more sensitive
    start = np.full((2, 4), 10, np.int32)
    result = precision_search.search(cached(counter, batch_size=8), np.stack([MACS, MACS]), start,
                                     (0.01,))[0.01]
    self.assertEqual(result.precision.shape, (2, 4))
    self.assertEqual(counter.traces, 1)
    self.assertTrue(result.within_tolerance)
    self.assertLessEqual(loss(result.precision, np.asarray(counter.sens)), 0.01 + 1e-6)
    self.assertTrue(np.all(result.precision[0] <= result.precision[1]))
    # Every round's candidates come with the current configuration they each lower by one bit.
    hinted = [(configs, base) for configs, _, base in counter.calls if base is not None]
    self.assertLen(hinted, result.rounds)
    for (configs, base), current in zip(hinted, result.path):
      np.testing.assert_array_equal(base, current)
      self.assertTrue(np.all((base - configs).reshape(len(configs), -1).sum(1) == 1))

  def test_max_rounds_stops_early(self):
    full = precision_search.search(cached(), MACS, np.full(4, 10, np.int32), (0.01,))[0.01]
    short = precision_search.search(cached(), MACS, np.full(4, 10, np.int32), (0.01,),
                                    max_rounds=2)[0.01]
    self.assertEqual(short.rounds, 2)
    self.assertEqual([p.tolist() for p in short.path], [p.tolist() for p in full.path[:3]])

  @parameterized.parameters("point", "upper")
  def test_max_accept_takes_several_bits_a_round_and_still_fits(self, rule):
    sens = np.stack([SENS, SENS * 8, SENS / 4, SENS * 2])
    macs, start = np.broadcast_to(MACS, sens.shape), np.full(sens.shape, 10, np.int32)
    one = precision_search.search(cached(Counter(sens)), macs, start, (0.01,), rule=rule,
                                  progress=False)[0.01]
    counter = Counter(sens)
    many = precision_search.search(cached(counter, batch_size=4), macs, start, (0.01,), rule=rule,
                                   max_accept=8, progress=False)[0.01]
    self.assertEqual(one.rounds, len(one.path))  # one bit a round, then a round that stops
    self.assertLess(many.rounds, one.rounds / 3)
    steps = [int((a - b).sum()) for a, b in zip(many.path, many.path[1:])]
    self.assertEqual(max(steps), 8)
    self.assertTrue(all(1 <= s <= 8 for s in steps))
    for a, b in zip(many.path, many.path[1:]):
      self.assertTrue(np.all((a - b >= 0) & (a - b <= 1)))  # a bit off each accepted entry
    self.assertTrue(many.within_tolerance)
    measure = ((lambda c: loss(c, sens)) if rule == "point" else
               (lambda c: interval_high(c, counter)))
    self.assertLessEqual(measure(many.precision), 0.01 + 1e-6)
    for c in precision_search.candidates(many.precision):  # stopped: no single step fits
      self.assertGreater(measure(c), 0.01)
    # Not the one-bit greedy's path, but a configuration as cheap within 2%.
    self.assertLess(abs(many.cost / one.cost - 1), 0.02)

  def test_resume_from_cache_evaluates_nothing(self):
    seen = {}
    first = cached(on_result=lambda c, s: seen.__setitem__(anda_precision.config_key(c), s))
    a = precision_search.search(first, MACS, np.full(4, 10, np.int32), race_windows=4)
    self.assertTrue(any(len(s) < N_WINDOWS for s in seen.values()))  # racing left some partial
    counter = Counter()
    second = cached(counter, cache=dict(seen))
    b = precision_search.search(second, MACS, np.full(4, 10, np.int32), race_windows=4)
    self.assertEqual(second.calls, 0)
    for tol in a:
      np.testing.assert_array_equal(a[tol].precision, b[tol].precision)

  @parameterized.named_parameters(
      ("start_shape", dict(start=np.full(5, 8)), "start"),
      ("start_below_min", dict(start=np.array([8, 8, 8, 0])), "min_m"),
      ("macs_shape", dict(macs=np.ones(3)), "macs"),
      ("tolerance", dict(tolerances=(-0.1,)), "tolerance"),
      ("rule", dict(rule="median"), "rule='median'"),
      ("race_windows", dict(race_windows=0), "race_windows=0"),
      ("race_level", dict(race_level=1.0), "race_level=1.0"),
      ("max_rounds", dict(max_rounds=-1), "max_rounds=-1"),
      ("max_accept", dict(max_accept=0), "max_accept=0"))
  def test_invalid_inputs(self, change, message):
    kwargs = dict(macs=MACS, start=np.full(4, 8), tolerances=(0.01,))
    kwargs.update(change)
    with self.assertRaisesRegex(ValueError, message):
      precision_search.search(cached(), **kwargs)


class Noisy:
  """Per-window NLL sums with a deterministic per-(configuration, window) noise on top of
  Counter's smooth loss, so that a one-bit step can add no loss or even remove some (as Anda's
  rounding does on a real model): what the bound needs to skip anything."""

  def __init__(self, sens, noise: float, seed: int):
    self.smooth, self.noise, self.seed = Counter(sens, spread=0.3), noise, seed

  def __call__(self, precisions, windows=slice(None), base=None):
    noise = [np.random.default_rng([self.seed, *(int(v) for v in c.ravel())]).normal(
        0, self.noise, N_WINDOWS)[windows] for c in np.asarray(precisions)]
    return self.smooth(precisions, windows, base) + np.array(noise)


class BoundTest(parameterized.TestCase):

  def test_the_bound_chooses_what_evaluating_every_candidate_chooses(self):
    rng = np.random.default_rng(1)
    skipped = 0
    for case in range(48):
      layers = int(rng.integers(0, 4))  # 0: per type
      sens = SENS * rng.uniform(0.25, 4, (layers, 1) if layers else 1)
      macs = np.broadcast_to(rng.choice([MACS, np.array([2.0, 2.0, 6.0, 6.0])]), sens.shape)
      kw = dict(rule=str(rng.choice(["point", "upper"])), max_accept=int(rng.choice([1, 2, 4])),
                race_windows=rng.choice([None, 4]), min_m=2, progress=False)
      batch = rng.choice([None, 1, 4])
      noise = float(rng.choice([0.0, 0.5, 2.0]))
      start, tolerances = np.full(sens.shape, 10, np.int32), (0.005, 0.03)
      with self.subTest(case=case, layers=layers, batch=batch, noise=noise, **kw):
        runs = {}
        for bound in (False, True):
          ev = cached(Noisy(sens, noise, case), batch_size=batch)
          runs[bound] = ev, precision_search.search(ev, macs, start, tolerances, bound=bound, **kw)
        (plain_ev, plain), (bound_ev, bounded) = runs[False], runs[True]
        for tol in tolerances:
          self.assertEqual([p.tolist() for p in bounded[tol].path],
                           [p.tolist() for p in plain[tol].path])
          self.assertEqual(plain[tol].skipped, 0)
        self.assertLessEqual(bound_ev.window_evaluations, plain_ev.window_evaluations)
        skipped += sum(r.skipped for r in bounded.values())
    self.assertGreater(skipped, 0)  # the cases above exercise the bound

  def test_a_free_high_saving_step_skips_the_other_types(self):
    # Per layer, 3 layers; type 2 saves the most (MACS) and adds no loss: the first round
    # evaluates its 3 candidates only (the rest cannot be chosen), and the choice is the same.
    sens = np.broadcast_to(np.array([4.0, 1.0, 0.0, 64.0]), (3, 4))
    macs, start = np.broadcast_to(MACS, (3, 4)), np.full((3, 4), 8, np.int32)
    kw = dict(max_rounds=1, progress=False)
    plain_ev, bound_ev = cached(Counter(sens)), cached(Counter(sens))
    plain = precision_search.search(plain_ev, macs, start, (0.01,), bound=False, **kw)[0.01]
    bounded = precision_search.search(bound_ev, macs, start, (0.01,), **kw)[0.01]
    np.testing.assert_array_equal(bounded.precision, plain.precision)
    self.assertEqual(np.flatnonzero(start - bounded.precision).tolist(), [2])  # layer 0, type 2
    self.assertEqual(bounded.skipped, 9)
    self.assertEqual(bound_ev.evaluated, 2 + 3)  # float, start, then type 2 of each layer
    self.assertEqual(plain_ev.evaluated, 2 + 12)


class RacingTest(parameterized.TestCase):

  @parameterized.product(rule=("point", "upper"), per_layer=(False, True), race_windows=(4, 8))
  def test_racing_chooses_what_full_evaluation_chooses(self, rule, per_layer, race_windows):
    sens = np.stack([SENS, SENS * 8, SENS / 4]) if per_layer else SENS
    start = np.full(np.shape(sens), 9, np.int32)
    macs = np.broadcast_to(MACS, np.shape(sens))
    tolerances = (0.001, 0.01, 0.05)
    full = cached(Counter(sens))
    plain = precision_search.search(full, macs, start, tolerances, rule=rule, min_m=2)
    raced_ev = cached(Counter(sens))
    raced = precision_search.search(raced_ev, macs, start, tolerances, rule=rule, min_m=2,
                                    race_windows=race_windows)
    for tol in tolerances:
      self.assertEqual([p.tolist() for p in raced[tol].path], [p.tolist() for p in plain[tol].path])
      self.assertEqual(raced[tol].interval, plain[tol].interval)
    self.assertGreater(sum(r.dropped for r in raced.values()), 0)
    # A dropped candidate costs only its first slice, unless a looser tolerance needs it whole.
    partial = [s for s in raced_ev.cache.values() if len(s) < N_WINDOWS]
    self.assertTrue(all(len(s) == race_windows for s in partial))
    self.assertEqual(raced_ev.window_evaluations,
                     full.window_evaluations - len(partial) * (N_WINDOWS - race_windows))

  def test_a_candidate_far_over_the_tolerance_is_dropped_after_the_slice(self):
    ev = cached()
    current = np.array([9, 9, 9, 9], np.int32)
    fp, cur = ev([np.zeros(4, np.int32), current])
    far = np.array([9, 9, 4, 9], np.int32)  # up at M = 4: +6.4% over all windows
    first = ev([far], 4)[0]
    self.assertTrue(precision_search.raced_out(first, cur, fp, WINDOW_TOKENS, 0.01, 0.99))
    self.assertFalse(precision_search.raced_out(first, cur, fp, WINDOW_TOKENS, 0.2, 0.99))
    self.assertTrue(precision_search.raced_out(np.full(4, np.nan), cur, fp, WINDOW_TOKENS, 1.0, 0.99))

  def test_race_lower_bound(self):
    diff = np.array([1.0, 2.0, 3.0, 4.0])
    self.assertEqual(precision_search.race_lower_bound(diff, 4, 0.99), 10.0)  # all seen: exact
    self.assertEqual(precision_search.race_lower_bound(diff[:1], 4, 0.99), -np.inf)
    # sum seen + 12 * (mean - t_{0.9, 3} * s * sqrt(1/4 + 1/12)), t_{0.9, 3} = 1.6377
    want = 10.0 + 12 * (2.5 - 1.637744 * np.std(diff, ddof=1) * np.sqrt(1 / 4 + 1 / 12))
    self.assertAlmostEqual(precision_search.race_lower_bound(diff, 16, 0.9), want, places=4)
    # A prediction bound: over normal windows the total falls below it 10% of the time at 0.9.
    rng = np.random.default_rng(1)
    windows = rng.normal(0.3, 1.0, (4000, 16))
    bounds = np.array([precision_search.race_lower_bound(w[:4], 16, 0.9) for w in windows])
    self.assertBetween(float(np.mean(windows.sum(1) < bounds)), 0.085, 0.115)


# A ladder of formats (value 0: float, 16 bits): two at 8.25 bits, two at 6.25, one at 4.25,
# each adding ERR[value] x the entry's sensitivity in nats per token. At each level the
# first-listed format is the worse one, so picking by list order would be wrong.
LADDER_BITS = np.array([16.0, 8.25, 8.25, 6.25, 6.25, 4.25])
ERR = np.array([0.0, 3e-5, 1e-5, 6e-4, 2e-4, 4e-3])


class FormatCounter:
  """Per-window NLL sums of format configurations (values index ERR), windows varying as in
  Counter. Optionally with per-(configuration, window) noise, so that steps can add no loss."""

  def __init__(self, sens, err=ERR, noise=0.0, seed=0):
    self.sens, self.err, self.noise, self.seed = np.asarray(sens), np.asarray(err), noise, seed

  def added(self, config) -> float:
    return float((self.sens * self.err[np.asarray(config)]).sum())

  def __call__(self, precisions, windows=slice(None), base=None):
    out = []
    for c in np.asarray(precisions):
      row = DIFFICULTY[windows] + TOKENS * self.added(c) * (1 + 0.5 * SPREAD[windows])
      if self.noise:
        row = row + np.random.default_rng([self.seed, *(int(v) for v in c.ravel())]).normal(
            0, self.noise, N_WINDOWS)[windows]
      out.append(row)
    return np.array(out)


def ladder_for(shape, bits=LADDER_BITS):
  return precision_search.FormatLadder(np.broadcast_to(bits, (*shape, len(bits))))


def format_loss(config, sens, err=ERR):
  return float(np.expm1((np.asarray(sens) * err[np.asarray(config)]).sum()))


class FormatLadderTest(parameterized.TestCase):
  """The search among formats (docs/formats.md, section 10): the same rules as for Anda's
  mantissa lengths, walking down levels of storage bits."""

  def test_steps_are_every_format_of_the_next_lower_level(self):
    ladder = ladder_for((4,))
    steps = ladder.steps(np.array([0, 2, 4, 5]))
    self.assertEqual([(c.tolist(), e, saved) for c, e, saved in steps], [
        ([1, 2, 4, 5], 0, 7.75), ([2, 2, 4, 5], 0, 7.75),  # float -> both 8.25-bit formats
        ([0, 3, 4, 5], 1, 2.0), ([0, 4, 4, 5], 1, 2.0),  # 8.25 -> both 6.25-bit formats
        ([0, 2, 5, 5], 2, 2.0)])  # 6.25 -> 4.25; the bottom has no step
    self.assertEqual(ladder.cost(np.array([0, 2, 4, 5]), MACS), 3 * 16 + 8.25 + 8 * 6.25 + 4 * 4.25)
    # Levels: bits equal up to rounding are one level (3 + 32/6 and 50/6 differ in float64);
    # bits may differ between entries (entry 3's first format is below its 8.25).
    bits = np.array([[16, 3 + 32 / 6, 4.5, (3 * 6 + 32) / 6]] * 4)
    bits[3] = [16, 8 + 32 / 1536, 4.5, 8.25]
    self.assertNotEqual(bits[0, 1], bits[0, 3])
    steps = precision_search.FormatLadder(bits).steps(np.zeros(4, np.int32))
    per_entry = {}
    for c, e, _ in steps:
      per_entry.setdefault(e, []).append(int(c.ravel()[e]))
    self.assertEqual(per_entry, {0: [1, 3], 1: [1, 3], 2: [1, 3], 3: [3]})

  @parameterized.product(tol=(0.0005, 0.003, 0.02), rule=("point", "upper"),
                         per_layer=(False, True))
  def test_walks_down_by_levels_within_tolerance_choosing_the_better_format(self, tol, rule,
                                                                         per_layer):
    sens = np.stack([SENS, SENS / 4, SENS * 2]) if per_layer else SENS
    macs = np.broadcast_to(MACS, sens.shape)
    start = np.zeros(sens.shape, np.int32)
    ladder = ladder_for(sens.shape)
    ev = cached(FormatCounter(sens))
    result = precision_search.search(ev, macs, start, (tol,), rule=rule, ladder=ladder,
                                     progress=False)[tol]
    self.assertTrue(result.within_tolerance)
    fp, sums = ev([start, result.precision])
    measure = (lambda c: format_loss(c, sens)) if rule == "point" else (
        lambda c: precision_search.loss_interval(ev([c])[0], fp, WINDOW_TOKENS).high)
    self.assertLessEqual(measure(result.precision), tol)
    self.assertAlmostEqual(result.loss, format_loss(result.precision, sens), places=6)
    # Stopped because no step of the ladder fits.
    for c, _, _ in ladder.steps(result.precision):
      self.assertGreater(measure(c), tol)
    # Every step moves one entry to the next lower level of bits; of two formats of one
    # level the better one (lower error: 2 and 4) is taken, though listed second.
    for before, after in zip(result.path, result.path[1:]):
      (entry,) = np.flatnonzero(before.ravel() != after.ravel())
      b, a = LADDER_BITS[before.ravel()[entry]], LADDER_BITS[after.ravel()[entry]]
      self.assertEqual(a, LADDER_BITS[LADDER_BITS < b].max())
    self.assertFalse(np.isin(np.stack(result.path), [1, 3]).any())
    self.assertGreater(len(result.path), 2)
    self.assertEqual(result.cost, ladder.cost(result.precision, macs))

  def test_the_worse_format_is_chosen_when_it_is_the_better_one(self):
    err = ERR[[0, 2, 1, 4, 3, 5]]  # the errors of each level swapped
    result = precision_search.search(cached(FormatCounter(SENS, err)), MACS, np.zeros(4, np.int32),
                                     (0.003,), rule="point", ladder=ladder_for((4,)))[0.003]
    self.assertFalse(np.isin(np.stack(result.path), [2, 4]).any())
    self.assertTrue(np.isin(result.precision, [1, 3, 5]).all())

  def test_free_steps_first_by_saving_then_best_saving_per_loss(self):
    # The 8.25-bit level is free: every type takes it first, the largest MACs first (up 8,
    # down 4, qkv 3, o 1), before any step that adds loss; then saving per added loss.
    err = np.array([0.0, 0.0, 1e-3, 6e-4, 2e-4, 4e-3])
    result = precision_search.search(cached(FormatCounter(SENS, err)), MACS,
                                     np.zeros(4, np.int32), (0.01,), rule="point",
                                     ladder=ladder_for((4,)))[0.01]
    path = [c.tolist() for c in result.path]
    self.assertEqual(path[:5], [[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1], [1, 0, 1, 1],
                                [1, 1, 1, 1]])
    current = result.path[4]
    scores = {}
    for c, e, saved in ladder_for((4,)).steps(current):
      added = format_loss(c, SENS, err) - format_loss(current, SENS, err)
      if format_loss(c, SENS, err) <= 0.01:
        scores[c.tobytes()] = (MACS[e] * saved / added, c.tolist())
    self.assertEqual(path[5], max(scores.values())[1])

  def test_bound_racing_and_max_accept_as_for_anda(self):
    """The bound and racing change no choice; max_accept moves several entries one level each
    (one candidate per entry, though an entry has several)."""
    skipped = dropped = 0
    for case in range(12):
      rng = np.random.default_rng(case)
      layers = int(rng.integers(0, 3))
      sens = SENS * rng.uniform(0.25, 4, (layers, 1) if layers else 1)
      macs = np.broadcast_to(MACS, sens.shape)
      ladder, start = ladder_for(sens.shape), np.zeros(sens.shape, np.int32)
      accept, noise = int(rng.choice([1, 3])), (0.0, 0.3)[case % 2]
      kw = dict(rule=str(rng.choice(["point", "upper"])), max_accept=accept, ladder=ladder,
                progress=False)
      with self.subTest(case=case, layers=layers, noise=noise, rule=kw["rule"], max_accept=accept):
        runs = {}
        for name, extra in (("plain", dict(bound=False)), ("fast", dict(race_windows=4))):
          ev = cached(FormatCounter(sens, noise=noise, seed=case), batch_size=4)
          runs[name] = ev, precision_search.search(ev, macs, start, (0.002, 0.02), **kw, **extra)
        (plain_ev, plain), (fast_ev, fast) = runs["plain"], runs["fast"]
        for tol in plain:
          self.assertEqual([p.tolist() for p in fast[tol].path],
                           [p.tolist() for p in plain[tol].path])
          for before, after in zip(plain[tol].path, plain[tol].path[1:]):
            moved = np.flatnonzero(before.ravel() != after.ravel())
            self.assertBetween(len(moved), 1, accept)  # several entries, one level each
            for e in moved:
              b = LADDER_BITS[before.ravel()[e]]
              self.assertEqual(LADDER_BITS[after.ravel()[e]], LADDER_BITS[LADDER_BITS < b].max())
        self.assertLessEqual(fast_ev.window_evaluations, plain_ev.window_evaluations)
        skipped += sum(r.skipped for r in fast.values())
        dropped += sum(r.dropped for r in fast.values())
    self.assertGreater(skipped, 0)  # the cases exercise the bound and racing
    self.assertGreater(dropped, 0)

  @parameterized.named_parameters(
      ("shape", dict(ladder=precision_search.FormatLadder(np.ones((3, 4, 2)))),
       "ladder bits shape"),
      ("value", dict(start=np.full(4, 6)), r"must be a value of the ladder, 0..5"),
      ("negative", dict(start=np.full(4, -1)), r"must be a value of the ladder"))
  def test_invalid_inputs(self, change, message):
    kwargs = dict(macs=MACS, start=np.zeros(4, np.int32), tolerances=(0.01,),
                  ladder=ladder_for((4,)))
    kwargs.update(change)
    with self.assertRaisesRegex(ValueError, message):
      precision_search.search(cached(FormatCounter(SENS)), **kwargs)
    for bits in (np.ones((4, 1)), np.zeros((4, 3)), np.ones(4), np.full((4, 2), np.nan)):
      with self.assertRaisesRegex(ValueError, "must be positive storage bits"):
        precision_search.FormatLadder(bits)


class CachedEvaluatorTest(absltest.TestCase):

  def test_windows_are_evaluated_once_slice_by_slice(self):
    counter, seen = Counter(), []
    ev = cached(counter, on_result=lambda c, s: seen.append((c.tolist(), len(s))))
    configs = [np.full(4, m, np.int32) for m in (5, 6, 7)]
    first = ev(configs, 4)
    self.assertEqual(first.shape, (3, 4))
    full = ev(configs)
    np.testing.assert_array_equal(full[:, :4], first)
    np.testing.assert_array_equal(full, counter(np.stack(configs)))
    self.assertEqual([w for _, w, _ in counter.calls[:2]], [slice(0, 4), slice(4, N_WINDOWS)])
    self.assertEqual(ev.window_evaluations, 3 * N_WINDOWS)
    self.assertEqual([n for _, n in seen], [4] * 3 + [N_WINDOWS] * 3)
    ev(configs)  # all known: nothing evaluated
    self.assertEqual(ev.calls, 2)

  def test_padding_keeps_batch_shape(self):
    shapes = []

    def evaluate(p, windows, base):
      del base
      shapes.append(p.shape)
      return np.tile(DIFFICULTY[windows], (len(p), 1))

    out = cached(evaluate, batch_size=3)([np.full(4, m) for m in range(1, 8)])
    self.assertEqual(shapes, [(3, 4)] * 3)
    self.assertEqual(out.shape, (7, N_WINDOWS))

  def test_bad_evaluator_output_and_tokens(self):
    with self.assertRaisesRegex(ValueError, r"evaluate returned shape \(1, 3\)"):
      cached(lambda p, w, b: np.zeros((1, 3)))([np.full(4, 5)])
    with self.assertRaisesRegex(ValueError, "window_tokens"):
      precision_search.CachedEvaluator(Counter(), [])


if __name__ == "__main__":
  absltest.main()
