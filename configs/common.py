"""The blocks every experiment config shares, built once: one schema for the same idea.

    run_name, results_dir   the run folder: results_dir/run_name
    model                   name, int4_group_size, matmul_precision
    format                  group_sizes (a tuple; the sensitivity study and the search take
                            one), exponent_bits, rounding
    data                    corpus, split, seq_len, stride, windows, bos: the token windows
                            the experiment evaluates (bos: BOS first in every window)
    impl, seed              the product's implementation; the PRNG seed for stochastic rounding
    window_batch            windows per forward pass (None: sized to a logits budget)
    config_batch            precision configurations per forward pass (None: all at once)
    mesh                    (config_shards, model_shards) over all devices (None: all on config)
    distributed             True: jax.distributed.initialize() for a multi-process run, with
                            coordinator_address, num_processes, process_id (None: from the
                            JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID variables,
                            else detected from SLURM, Open MPI, a Cloud TPU pod or Kubernetes)
    finetune                trained parameters (anda_jax.finetune) applied after loading, or None
    compilation_cache       True: JAX's persistent compilation cache for the commands (False: off)

Each experiment's file (configs/sweep.py, sensitivity.py, search.py) adds its own settings and
a quick variant, selected by argument as in big_vision: `--config=configs/sweep.py:quick`; the
gemma3 variant (`--config=configs/sweep.py:gemma3`) runs the full experiment on Gemma 3 270M.
"""

import ml_collections
from ml_collections import config_dict

VARIANTS = ("full", "quick", "gemma3")
# The formats Anda is compared with (configs/formats.py, configs/search.py): the names of
# anda_jax.numerics.baselines.FORMAT_NAMES, spelled out because configs import nothing from the library.
OTHER_FORMATS = ("mxfp4", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp8_e4m3", "mxfp8_e5m2", "mxint8",
                 "nvfp4", "fp8_token", "int8_token")


def variant(arg: str | None) -> str:
  """The variant `--config=configs/<experiment>.py[:arg]` asks for: "full" (no argument) or "quick"."""
  name = arg or "full"
  if name not in VARIANTS:
    raise ValueError(f"config argument {arg!r} is invalid: must be one of {VARIANTS} (or none: full)")
  return name


def on_gemma3(c: ml_collections.ConfigDict, run_name: str) -> ml_collections.ConfigDict:
  """The experiment `c` on Gemma 3 270M (Google's base model, its Q4_K_M GGUF; the Gemma Terms of
  Use apply) in the paper's setting: every FP-INT matrix INT4 with groups of 32 along K, the
  file's Q4_K ones as stored and the others (Q5_0, Q6_K, Q8_0) re-quantized RTN from the file's
  numbers; the tied embedding and LM head stay as the file has them (Q8_0), as for SmolLM2.
  Windows, group sizes and mantissa lengths stay the SmolLM2 experiment's, so the two compare."""
  c.run_name = run_name
  c.model.name = "gemma3-270m"
  c.model.int4_group_size = 32
  return c


def experiment(run_name: str, *, group_sizes: tuple[int, ...], split: str, windows: int,
               seq_len: int = 256) -> ml_collections.ConfigDict:
  """The shared blocks, on SmolLM2-135M (INT4 GGUF weights) and the Wikipedia excerpt."""
  c = ml_collections.ConfigDict()
  c.run_name = run_name
  c.results_dir = "results"
  # name: a registry name, a GGUF file or a Hugging Face folder; int4_group_size: RTN INT4 for
  # float checkpoints (None: weights as stored). matmul_precision: of every floating-point
  # product of the model, "highest" (a float32 product on every backend) or "default" (the
  # backend's: one bfloat16 pass on TPU, TF32 on recent NVIDIA GPUs, 8 to 10 mantissa bits, an
  # error as large as the M = 8..10 effects the experiments measure; float32 on the CPU).
  # Recorded in setup.json: on TPU and GPU it changes the results.
  c.model = ml_collections.ConfigDict(dict(name="smollm2-135m",
                                          int4_group_size=config_dict.placeholder(int),
                                          matmul_precision="highest"))
  c.format = ml_collections.ConfigDict(dict(group_sizes=group_sizes, exponent_bits=8,
                                           rounding="truncate"))  # truncate | nearest | stochastic
  # corpus: "enwiki-excerpt", a text / WikiText-raw file or folder. split: calibration | test.
  # stride None: non-overlapping windows. windows: how many, spread over the split (None: all).
  # bos: "auto" starts every window with BOS when the model's tokenizer adds BOS (a model trained
  # so, as Gemma 3; SmolLM2's adds none, so its windows are cut from the stream alone); "true" /
  # "false" force it. With BOS a window is BOS + seq_len - 1 stream tokens and BOS is never a
  # target. Recorded in setup.json (bos_first) only where the windows start with BOS.
  c.data = ml_collections.ConfigDict(dict(corpus="enwiki-excerpt", split=split, seq_len=seq_len,
                                         stride=config_dict.placeholder(int), windows=windows,
                                         bos="auto"))
  c.impl = "fake"  # "fake" (fake quantization) or "bitserial" (the exact bit-serial kernel)
  c.seed = 0  # PRNG seed for stochastic rounding
  c.window_batch = config_dict.placeholder(int)
  c.config_batch = config_dict.placeholder(int)
  # (config_shards, model_shards), e.g. --config.mesh='(2,4)': the device mesh evaluation runs
  # on (anda_jax.sharding); the product must be the number of devices of all processes. None:
  # every device on "config", each holding the whole model (the fastest while it fits). Model
  # shards split the layer weights, for a model too large for one device; a row-parallel shard
  # must hold whole Anda groups (K / model_shards a multiple of G, checked after loading). Model
  # shards are recorded in setup.json (model_shards, where not 1), and a run resumes only on as
  # many: a row-parallel product (o, down) adds its shards' partial sums in another order, which
  # moves a float perplexity by about 1e-7 relative but a low-M cell as far as another CPU's
  # summation order does. With 2 host devices (XLA_FLAGS=--xla_force_host_platform_device_count=2,
  # AMD EPYC), `python -m experiments.sweep --config=configs/sweep.py:quick
  # --config.format.group_sizes='(32,)' --config.mantissa_bits='(4,8)'
  # --config.types="('up','all')"` gives `up` at M = 4 46.73 without a mesh, 49.27 with
  # --config.mesh='(1,2)' (M = 8: 24.84, 24.88; FP 24.7126 both); the tiny test model moves far
  # less (tests/sweep_test). Config shards change no bit (each device evaluates whole
  # configurations): not recorded.
  c.mesh = config_dict.placeholder(tuple)
  # True: the processes of a multi-process run (one per host, or per GPU) join with
  # jax.distributed.initialize(coordinator_address, num_processes, process_id) before any JAX
  # computation; each None is taken from JAX_COORDINATOR_ADDRESS ("host:port" of process 0),
  # JAX_NUM_PROCESSES, JAX_PROCESS_ID, else JAX detects it (SLURM, Open MPI, Cloud TPU pod,
  # Kubernetes). Every process runs the same command; only process 0 writes the run folder.
  c.distributed = False
  c.coordinator_address = config_dict.placeholder(str)
  c.num_processes = config_dict.placeholder(int)
  c.process_id = config_dict.placeholder(int)
  # A file of trained parameters (experiments.finetune writes them: results/<run>/params/*.
  # safetensors) applied to the model after loading; None: the model as loaded.
  c.finetune = config_dict.placeholder(str)
  # JAX's persistent compilation cache, on by default for the commands (python -m
  # experiments.<name>): a rerun or a resumed run loads its compiled programs instead of
  # compiling them again. Folder: <asset cache>/jax_compilation_cache/<CPU> (asset cache:
  # ~/.cache/anda_jax or $ANDA_JAX_CACHE; $JAX_COMPILATION_CACHE_DIR, if set, wins). False: off.
  # Changes no result, so not recorded in setup.json.
  c.compilation_cache = True
  return c
