"""Adaptive precision search on SmolLM2-135M (INT4 GGUF weights), tolerances 0.5% and 1%: the
search runs on the `data` windows (calibration split), the chosen configurations are then
checked on `test.windows` windows of the test split. A candidate fits a tolerance if the upper
end of the 95% paired-bootstrap interval of its loss is within it (rule="point": the estimate,
as in the paper); racing drops candidates clearly over the tolerance after 4 of the windows.

full (no argument):

    python -m experiments.search --config=configs/search.py

80 x 256 calibration tokens (20,400 scored), sized so that each tolerance is at least twice the
half-width of its decision (below: `noise_floor`), and 64 x 256 test tokens, G = 64. Not
measured at this size: about five times the calibration work of the recorded 16-window search
(docs/results/search_smollm2: 11 min 0 s wall on an idle 2-core AMD EPYC (Zen 5, AVX-512), the
search 3 min 51 s), which decided 0.1% and 1% on 16 windows with --config.data.windows=16
--config.tolerances='(0.001,0.01)' --config.allow_unresolved=True. 0.1% needs 501,855 scored
tokens, more than the corpus's calibration split holds (183,840 tokens of SmolLM2's tokenizer:
`python -m anda_jax.data enwiki-excerpt smollm2-135m`): this corpus cannot resolve it. Resumable.

Per layer and type: --config.granularity=layer --config.run_name=search_smollm2_layer. Each
candidate runs from the hidden state entering its layer (prefix_reuse), and the bound skips the
candidates that cannot be chosen (a module type's 30 at a time), but a round can still evaluate
120 candidates (about 6 min on a 2-core AMD EPYC on 16 windows), and one bit a round from M = 10
takes hundreds of rounds (--config.max_rounds bounds it; a stopped run resumes). What finishes:
--config.start_types='(7,6,7,8)' starts every layer from a per-type result, and
--config.max_accept=32 takes up to 32 of a round's fitting candidates at once (if together they
still fit; else 16, 8, ...). Measured on 16 windows: 21 rounds to the end (about 2 h 15 min),
and the result overfit the 16 calibration windows (+0.11% there, +1.03% on test;
--config.test.path=True shows the test loss of every accepted step): a per-layer search needs
more calibration windows than a per-type one (README, "Adaptive precision search").

Mixed precision among other formats (candidates below): the same search choosing per type (or
per layer) among the MX formats, or NVFP4 and MX, instead of Anda's mantissa lengths:
--config.candidates=mx (or nvfp4_mx) --config.run_name=search_smollm2_mx. Runs on the same test
windows (these data settings) are compared, paired, with experiments/search_compare.py:
--runs=results/search_smollm2,results/search_smollm2_mx --out=results/compare_smollm2.

quick: a search for a 2-core CPU on few short windows:

    python -m experiments.search --config=configs/search.py:quick

8 x 32 calibration tokens: far too few to resolve 0.1% or 1%, so the quick variant sets
allow_unresolved=True, without which it is refused (the report says so, and both lie below
the noise floor; with the upper rule the start is already over them). This checks the
pipeline, racing (on the first 4 windows) and two other formats (MXINT8, MXFP8 E4M3); it is
not a result.

gemma3: the full experiment on Gemma 3 270M (configs/common.py, on_gemma3):

    python -m experiments.search --config=configs/search.py:gemma3

The same 80 x 256 calibration and 64 x 256 test windows and tolerances, sized by Gemma's own
noise floor (0.5% needs 19,530 scored tokens, 1% 4,883; 0.1% would need 488,227, more than the
calibration split's 178,066 tokens of Gemma's tokenizer). 1 h 25 min 39 s wall (5,139 s; a round
of four candidates on the 80 windows about 4.6 min) on a 2-core AMD EPYC (Zen 5), shared for
18 min with a test run (docs/results/search_gemma3).
"""

import ml_collections
from ml_collections import config_dict

from configs import common


def get_config(arg=None):
  # One function, as in every config file: the settings read top to bottom, each with its reason.
  # 80 windows: the 20,075 scored tokens that resolve 0.5% (see noise_floor below), rounded up
  # to whole window batches.
  c = common.experiment("search_smollm2", group_sizes=(64,), split="calibration", windows=80)
  # The held-out check: FP, the chosen configurations and (uniform=True) the uniform-M curve
  # on this many windows of the test split; path=True: also every configuration each search
  # accepted on its way, so the report shows where the test loss parts from the calibration
  # loss (a per-layer search overfits its calibration windows; one more evaluation per round).
  c.test = ml_collections.ConfigDict(dict(windows=64, uniform=True, path=False))
  c.granularity = "type"  # "type": M per module type [4]; "layer": per layer and type [L, 4]
  # What each entry chooses among: "anda", Anda's mantissa length M (start_m, or start_types,
  # down to min_m, one bit a round); or a list of formats, each entry holding the index of its
  # format (docs/formats.md, section 10): "mx" (MXINT8, MXFP8 E4M3 and E5M2, MXFP6 E2M3 and
  # E3M2, MXFP4), "nvfp4_mx" (those and NVFP4), or a tuple of names of
  # anda_jax.numerics.baselines.FORMAT_NAMES (--config.candidates='("mxint8","mxfp4")'). A list
  # starts from floating point everywhere (16 bits), so an entry no format fits stays float, and
  # walks down its ladder by storage bits per activation element: a round's candidates for an
  # entry are the formats at its next lower level of bits (8.25 MXINT8 and MXFP8, 6.25 MXFP6,
  # about 4.55 NVFP4 with its per-token scale, 4.25 MXFP4), each saving MACs x the bits it drops.
  # Calibration windows, tolerances, rule, racing and the bound are the same; start_m,
  # start_types, min_m and uniform_m are Anda's (the uniform curve of a list is each of its
  # formats at every site), and the format block (G, exponent bits, rounding) is Anda's. The
  # resolution check still reads the Anda noise-floor study (`noise_floor`), by loss level.
  # Recorded in setup.json: a run folder serves one candidate list.
  c.candidates = config_dict.FieldReference("anda", field_type=object)
  c.start_m = 10  # every type starts here; one bit comes off one entry per round
  # Or M per type (qkv, o, up, down) to start from, in every layer: e.g. a per-type search's
  # result, refined per layer (--config.start_types='(8,6,8,8)'). None: start_m everywhere.
  c.start_types = config_dict.placeholder(tuple)
  c.min_m = 2
  c.tolerances = (0.005, 0.01)  # relative perplexity increase over FP activations
  # Decisions the data can resolve: each tolerance must be at least twice the half-width of the
  # paired interval that decides it, predicted before anything runs from the noise-floor study
  # in this folder (experiments.noise_floor, of the same model, corpus and format): the pair
  # ("M8 vs fp", ...) whose loss is nearest the tolerance gives half-width x sqrt(tokens) at its
  # most tokens, and a half-width shrinks as 1 / sqrt(tokens). Here: 0.354 / sqrt(tokens) near
  # M = 8, so 1% needs 5,019 scored tokens, 0.5% 20,075 and 0.1% 501,855. A configuration short
  # of that is refused, naming the tokens it needs (experiments/search_resolution.py says why a
  # study and not a pilot run); allow_unresolved=True runs it anyway, recorded in chosen.json and
  # the report. Relative paths are from the folder the command runs in (the repository's).
  # With --config.format.rounding=nearest: docs/results/noise_floor_smollm2_nearest, its study.
  c.noise_floor = "docs/results/noise_floor_smollm2"
  c.allow_unresolved = False
  c.uniform_m = tuple(range(2, 11))  # the block-FP comparison curve
  # A candidate fits if its loss is within the tolerance: "upper", the upper end of its 95%
  # paired-bootstrap interval against FP; "point", its estimate (the paper's rule).
  c.rule = "upper"
  # Racing: each round's candidates first run on this many calibration windows; those over the
  # tolerance even at the low end of a one-sided prediction bound at race_level (from their
  # per-window differences against the current configuration) are dropped, the rest run on the
  # other windows. None (or >= data.windows): every candidate on every window.
  c.race_windows = 4
  c.race_level = 0.99
  # Windows per forward pass, a divisor of race_windows: the racing slice and the rest are then
  # whole batches of this size, as without racing. (The batch size can move a float result by
  # its last bits, seen on this CPU between 16 and 4 windows of 64 tokens, and Anda's rounding
  # can amplify that; a fixed size keeps a search with and without racing identical.)
  c.window_batch = 4
  # Per-layer granularity: run each candidate from the hidden state entering its lowered layer
  # under the current configuration (the layers before it are the same): about half the work.
  c.prefix_reuse = True
  c.max_rounds = config_dict.placeholder(int)  # stop each tolerance after this many rounds
  # Accept up to this many of a round's fitting candidates together (the best ones, if together
  # they still fit; else half as many, ...): 1 is the paper's greedy, a bit per round. A
  # per-layer search needs a round per bit it removes (hundreds); e.g. 16 makes that tens.
  c.max_accept = 1
  # Branch and bound: a round evaluates its candidates by decreasing saving (one module type at a
  # time) and skips those that cannot be among the accepted (anda_jax.precision_search). The
  # choice is the same as with False; only the work differs.
  c.bound = True
  # Measured next to the chosen configurations (each at all four sites, on both splits; each is
  # one compilation): names of anda_jax.numerics.baselines.FORMAT_NAMES, () for none.
  c.other_formats = common.OTHER_FORMATS
  # The modeled accelerator of the report's cost columns: the fields of anda_jax.cost.Accelerator
  # with its defaults (tests/cost_test.py checks that they agree), each an assumption the report
  # tables with its source (anda_jax.cost_assumptions; e.g. --config.cost.fp16_fma_lanes=16).
  # lm_head: the LM head counted as its own site, its input FP16 (head_mantissa_bits=0) and its
  # weights 8 bits (SmolLM2's Q8_0). They change only the report (chosen.json), never an
  # evaluated row.
  c.cost = ml_collections.ConfigDict(dict(
      lanes=16384, memory_bits_per_cycle=2048.0, tokens_per_weight_read=256,
      fp16_fma_lanes=30.25, figna_mantissa_bits=16, weight_bits=4, weight_group_size=32,
      compressor_elements_per_cycle=64.0, energy_per_memory_bit=20.0,
      energy_per_compressor_op=1.0, fp_elements="aligned", fp_shift_lanes_per_exponent_bit=1.0,
      lm_head=True, head_mantissa_bits=0, head_weight_bits=8))
  # config_batch None: 4 configurations per forward pass (one layer's candidates; a bounded round's
  # batch of one type's candidates runs from the first of their layers). 1 wastes no layer pass
  # on that, yet measured slower per layer (README, Benchmarks) and moves results' last bits.
  if common.variant(arg) == "quick":
    c.run_name = "search_quick"
    c.data.seq_len = 32
    c.data.windows = 8
    c.test.windows = 4
    c.start_m = 8
    c.min_m = 3
    c.uniform_m = (3, 4, 5, 6, 7, 8)
    c.test.uniform = False
    c.other_formats = ("mxint8", "mxfp8_e4m3")
    c.tolerances = (0.001, 0.01)
    c.allow_unresolved = True  # 8 x 31 tokens resolve neither tolerance: refused without it
  elif common.variant(arg) == "gemma3":
    common.on_gemma3(c, "search_gemma3")
    c.noise_floor = "docs/results/noise_floor_gemma3"  # its own model's (configs/noise_floor.py)
    # The other formats at every site are the formats study's (configs/formats.py:gemma3): here
    # each would cost a Gemma forward pass over 144 windows (about 3 min on a 2-core CPU).
    c.other_formats = ()
  return c
