"""Benchmark of the quickstart sweep against the obvious PyTorch way: `python -m experiments.bench sweep`.

The same configurations as the quickstart (FP; each type alone and all four at M = 3, 4, 6, 8;
G = 64, truncation) on the same windows (8 x 256 test tokens by default), in one process:

  ours         evaluate.window_nll_sums: the configurations vmapped in batches of
               `config_batch`, the windows in batches of `window_batch`, the LM head streamed
               over vocabulary chunks (anda_jax.evaluation.cross_entropy);
  full logits  the same with the LM head as it was before it was streamed: the whole
               [configs, windows, T, vocab] logits, then logsumexp (the jitted program is a
               second copy of evaluate's, traced with the old head);
  PyTorch      transformers' LLaMA loaded from the same GGUF (dequantized to float32), with
               forward pre-hooks on q/k/v, o, gate/up and down that Anda-quantize their input
               (`anda_truncate_torch` below, a torch reading of docs/formats.md, section 1), one
               forward per configuration over all windows.

First, unless --settings names one setting, ours runs the whole sweep once at each
(config_batch x window_batch) setting and the fastest is kept. Then the three variants run
interleaved, one configuration batch at a time, so that they see the same load on a shared
machine; compilation is done before (and timed apart). Prints seconds per configuration, the
ratio, and the perplexities side by side. --profile adds one jax.profiler trace of our jitted
evaluation (one configuration batch), summarized as self time per XLA operation.

    python -m experiments.bench sweep [--model=smollm2-135m] [--windows=8] [--seq_len=256]
        [--settings=1x8,3x8,7x8] [--profile] [--skip_torch] [--skip_full_logits]
        [--full_logits_window_batch=N]
"""

from __future__ import annotations

import collections
import functools
import gzip
import importlib.metadata
import json
import os
import pathlib
import re
import tempfile
import time
import types
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from anda_jax import assets, models
from anda_jax.evaluation import evaluate
from anda_jax import precision as anda_precision
from configs import sweep as sweep_config
from experiments.harness import config_checks
from experiments.harness import loading
from experiments import bench
from experiments import sweep


def _parse(argv):
  p = bench.ArgumentParser("sweep")
  p.add_argument("--model", default="smollm2-135m", help="registry name, .gguf path or HF folder")
  p.add_argument("--corpus", default="enwiki-excerpt")
  p.add_argument("--windows", type=int, default=8)
  p.add_argument("--seq_len", type=int, default=256)
  p.add_argument("--group_size", type=int, default=64)
  p.add_argument("--mantissa_bits", default="3,4,6,8")
  p.add_argument("--settings", default="1x8,3x8,7x8",
                 help="config_batch x window_batch settings of ours to try; the fastest is kept")
  p.add_argument("--profile", action="store_true", help="trace our evaluation, print the top ops")
  p.add_argument("--top", type=int, default=15, help="operations in the profile table")
  p.add_argument("--skip_torch", action="store_true")
  p.add_argument("--skip_full_logits", action="store_true")
  p.add_argument("--full_logits_window_batch", type=int, default=None,
                 help="window batch of the full-logits variant (default: ours'; the old automatic "
                      "choice was 1 window for 3 or 4 configurations of SmolLM2 at 256 tokens)")
  args = p.parse(argv)
  return args


def _settings(text: str) -> list[tuple[int, int]]:
  try:
    out = [tuple(int(v) for v in s.split("x")) for s in text.split(",")]
  except ValueError:
    out = []
  if not out or any(len(s) != 2 or min(s) < 1 for s in out):
    raise ValueError(f"--settings={text!r} is invalid: must be CONFIGSxWINDOWS[,...], e.g. 3x8,7x8")
  return out


# ---------------------------------------------------------------------- the PyTorch peer

def anda_truncate_torch(x, mantissa_bits: int, group_size: int = 64, exponent_bits: int = 8):
  """Anda quantization with truncation (docs/formats.md, section 1) of a float32 torch tensor along
  its last axis, as a researcher would write it in torch: the shared exponent from frexp of the
  group maximum, scale by a power of two, floor, clamp, scale back. Bit-identical to
  anda_jax.numerics.anda.quantize (tests/bench_sweep_test.py)."""
  import torch  # pylint: disable=g-import-not-at-top

  k = x.shape[-1]
  groups = torch.nn.functional.pad(x, (0, -k % group_size)).unflatten(-1, (-1, group_size))
  mag = groups.abs()
  top = mag.amax(-1, keepdim=True)
  e_max, e_min = 2 ** (exponent_bits - 1) - 1, -(2 ** (exponent_bits - 1) - 2)
  _, e = torch.frexp(top)  # top = f * 2^e with f in [0.5, 1): floor(log2 top) = e - 1
  shared = torch.where(top > 0, e - 1, e_min).clamp(e_min, e_max)
  # |x| / 2^(E - M + 1) as two power-of-two products (each exact): 2^149 is not a float32.
  shift = (mantissa_bits - 1 - shared).to(x.dtype)
  half = torch.floor(shift / 2)
  q = torch.floor(mag * torch.exp2(half) * torch.exp2(shift - half)).clamp_max(2.0 ** mantissa_bits - 1)
  out = torch.copysign(q * torch.exp2(-half) * torch.exp2(half - shift), groups)
  out = torch.where(torch.isfinite(top), out, torch.nan)  # a NaN / Inf group decodes to NaN
  return out.flatten(-2)[..., :k]


# The products each type's activation feeds, by transformers' LLaMA module names.
_HOOKED = {"qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
           "o": ("self_attn.o_proj",), "up": ("mlp.gate_proj", "mlp.up_proj"),
           "down": ("mlp.down_proj",)}


class TorchPeer:
  """transformers' model with forward pre-hooks that Anda-quantize the inputs of the products
  (per the type's M in `self.precision`, 0: float)."""

  def __init__(self, path, group_size: int):
    import torch  # pylint: disable=g-import-not-at-top
    from transformers import AutoModelForCausalLM  # pylint: disable=g-import-not-at-top

    torch.set_num_threads(os.cpu_count())
    path = pathlib.Path(path)
    if path.is_dir():
      self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    else:
      self.model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    self.model.eval()
    self.types = anda_precision.MODULE_TYPES
    self.precision = dict.fromkeys(self.types, 0)
    modules = dict(self.model.named_modules())
    for layer in self.model.model.layers:
      prefix = next(name for name, m in modules.items() if m is layer)
      for t, names in _HOOKED.items():
        for name in names:
          modules[f"{prefix}.{name}"].register_forward_pre_hook(functools.partial(self._hook, t, group_size))

  def _hook(self, type_name, group_size, module, args):
    del module
    m = self.precision[type_name]
    return None if m == 0 else (anda_truncate_torch(args[0], m, group_size),) + args[1:]

  def window_nll_sums(self, windows: np.ndarray, precision) -> np.ndarray:
    """float64 [N] NLL sums per window of one precision configuration [4]."""
    import torch  # pylint: disable=g-import-not-at-top

    self.precision = dict(zip(self.types, (int(m) for m in precision)))
    tokens = torch.from_numpy(np.asarray(windows, np.int64))
    with torch.inference_mode():
      logits = self.model(tokens).logits[:, :-1]
      nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    return nll.view(len(tokens), -1).double().sum(1).numpy()


# ---------------------------------------------------------------------- ours, and the old LM head

def full_logits_nll(features, head, targets, chunk=None, precision=None):
  """The LM head as evaluate computed it before streaming: all logits, then logsumexp."""
  del chunk
  logits = jnp.matmul(features.astype(jnp.float32), head.astype(jnp.float32).T,
                      precision=precision)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits, axis=-1) - picked


def _with_full_logits(program):
  """A second jitted copy of evaluate's program whose LM head is `full_logits_nll`: the same
  code, with its own function object (JAX caches traces by function) and its own globals, in
  which `cross_entropy.streamed_nll` is the old head."""
  fn = program.__wrapped__
  old_head = types.SimpleNamespace(streamed_nll=full_logits_nll)
  copy = types.FunctionType(fn.__code__, dict(fn.__globals__, cross_entropy=old_head), fn.__name__,
                            fn.__defaults__, fn.__closure__)
  return jax.jit(copy, static_argnames=("graphdef", "spec", "mesh"))


class Ours:
  """evaluate.window_nll_sums at one (config_batch, window_batch) setting; full_logits: with the
  old LM head (_with_full_logits), which window_nll_sums is made to call (so both programs stay
  compiled side by side)."""

  def __init__(self, model, spec, config_batch: int, window_batch: int, full_logits: bool = False):
    self.model, self.spec, self.cb, self.wb = model, spec, config_batch, window_batch
    self.program = evaluate._nll_sums  # pylint: disable=protected-access
    if full_logits:
      self.program = _with_full_logits(self.program)

  def _patched(self):
    return mock.patch.object(evaluate, "_nll_sums", self.program)

  def __call__(self, windows, precisions) -> np.ndarray:
    """float64 [C, N] per-window NLL sums."""

    with self._patched():
      return evaluate.window_nll_sums(self.model, windows, precisions, self.spec, batch_size=self.wb,
                                      config_batch=self.cb)[0]

  def one_call(self, windows, precisions):
    """(the compiled program of one configuration batch x one window batch, a function that runs
    it once, its shape as text): what window_nll_sums calls, single device."""
    from flax import nnx  # pylint: disable=g-import-not-at-top

    graphdef, state = nnx.split(self.model)
    x = np.asarray(windows[:self.wb], np.int32)
    p = np.asarray(precisions[:self.cb], np.int32)
    args = (graphdef, state, x, x[:, 1:], np.ones(x[:, 1:].shape, np.float32), p, 0, None, 0)
    kwargs = dict(spec=self.spec, mesh=None)
    with self._patched():
      compiled = self.program.lower(*args, **kwargs).compile()
    run_once = lambda: jax.block_until_ready(self.program(*args, **kwargs))
    return compiled, run_once, f"{len(p)} configurations x {len(x)} windows x {x.shape[1]} tokens"


def _timed(fn, *args):
  t0 = time.perf_counter()
  out = fn(*args)
  return out, time.perf_counter() - t0


# ---------------------------------------------------------------------- profile

def _source_lines(hlo_text: str) -> dict:
  """stack_frame_id -> "file:line function" from the tables at the end of a compiled module's text."""
  tables, current = collections.defaultdict(dict), None
  for line in hlo_text.splitlines():
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      current = line
    elif current and (m := re.match(r"(\d+) (.*)", line)):
      tables[current][int(m[1])] = m[2]
    else:
      current = None
  out = {}
  for frame, text in tables["StackFrames"].items():
    loc = tables["FileLocations"].get(int(re.search(r"file_location_id=(\d+)", text)[1]), "")
    if m := re.search(r"file_name_id=(\d+) function_name_id=(\d+) line=(\d+)", loc):
      file = pathlib.Path(tables["FileNames"].get(int(m[1]), "?").strip('"')).name
      out[frame] = f"{file}:{m[3]} {tables['FunctionNames'].get(int(m[2]), '').strip(chr(34))}"
  return out


def _hlo_ops(hlo_text: str) -> dict:
  """instruction name -> (opcode, shape, what: the end of its op_name and its source line)."""
  sources = _source_lines(hlo_text)
  ops = {}
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
    if not m:
      continue
    rest = line[m.end():]
    if rest.startswith("("):  # a tuple shape: up to its closing parenthesis
      depth = 0
      for end, ch in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
          break
      shape, rest = "tuple", rest[end + 1:]
    else:
      shape, _, rest = rest.partition(" ")
    opcode = re.match(r"\s*([\w\-]+)\(", rest)
    name = re.search(r'op_name="([^"]+)"', line)
    frame = re.search(r"stack_frame_id=(\d+)", line)
    what = "/".join(name[1].split("/")[-2:]) if name else ""
    if frame and int(frame[1]) in sources:
      what += f" @ {sources[int(frame[1])]}"
    ops[m[1]] = (opcode[1] if opcode else "", shape.split("{")[0], what)
  return ops


def trace_self_times(trace_file) -> collections.Counter:
  """Self time (microseconds) per XLA operation name from a jax.profiler trace (trace.json.gz):
  the events of the XLA threads, each minus the events nested in it."""
  data = json.load(gzip.open(trace_file))
  events = data["traceEvents"] if isinstance(data, dict) else data
  threads = {(e.get("pid"), e.get("tid")): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  by_thread = collections.defaultdict(list)
  for e in events:
    if "dur" in e and threads.get((e.get("pid"), e.get("tid")), "").startswith("tf_XLA"):
      by_thread[(e["pid"], e["tid"])].append(e)
  self_time = collections.Counter()
  for evs in by_thread.values():
    evs.sort(key=lambda e: (e["ts"], -e["dur"]))
    stack = []  # [event, time of its children]
    for e in evs + [None]:
      while stack and (e is None or e["ts"] >= stack[-1][0]["ts"] + stack[-1][0]["dur"]):
        done, children = stack.pop()
        self_time[done["name"]] += done["dur"] - children
        if stack:
          stack[-1][1] += done["dur"]
      if e is not None:
        stack.append([e, 0.0])
  # The executor's own frames are bookkeeping, not operations.
  return collections.Counter({k: v for k, v in self_time.items() if "::" not in k})


def profile(ours: Ours, windows, precisions, top: int) -> str:
  """One traced call of our jitted program (one configuration batch, one window batch), as a
  table of the `top` operations by self time."""
  compiled, run_once, shape = ours.one_call(windows, precisions)
  hlo = _hlo_ops(compiled.as_text())
  run_once()  # compiled by jit's own cache too
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    with jax.profiler.trace(tmp):
      run_once()
    wall = time.perf_counter() - t0
    times = trace_self_times(next(pathlib.Path(tmp).rglob("*.trace.json.gz")))
  total = sum(times.values())
  lines = [f"profile: one call ({shape}), {wall:.2f} s wall (traced), {total / 1e6:.2f} s of XLA "
           "thread time",
           f"{'op':<28}{'ms':>9}{'share':>7}  {'opcode':<12}{'shape':<26}what"]
  for name, us in times.most_common(top):
    opcode, shape, what = hlo.get(name, ("", "", ""))
    lines.append(f"{name[:27]:<28}{us / 1e3:>9.1f}{us / total:>7.1%}  {opcode:<12}{shape[:25]:<26}{what}")
  return "\n".join(lines)


def temp_megabytes(ours: Ours, windows, precisions) -> float:
  """XLA's temporary buffers of one call of the program (its memory analysis), in MB."""
  return ours.one_call(windows, precisions)[0].memory_analysis().temp_size_in_bytes / 2**20


# ---------------------------------------------------------------------- the benchmark

def _try_settings(model, spec, windows, precisions, settings):
  """Ours at each (config_batch, window_batch) setting: compiled on one window batch, then (with
  several settings) timed on the whole sweep. Returns ({setting: s of the sweep}, {setting: s
  to compile with the first batch})."""
  tried, compile_s, setting_sums, n = {}, {}, {}, len(precisions)
  for cb, wb in settings:
    ours = Ours(model, spec, cb, wb)
    _, compile_s[(cb, wb)] = _timed(ours, windows[:wb], precisions[:cb])
    if len(settings) > 1:
      setting_sums[(cb, wb)], tried[(cb, wb)] = _timed(ours, windows, precisions)
      # The batch shape can change XLA's product blocking, hence float sums in the last bits,
      # which Anda's rounding can amplify: how far each setting's sums are from the first's.
      moved = np.abs(setting_sums[(cb, wb)] - setting_sums[settings[0]]).max()
      print(f"  ours at config_batch={cb}, window_batch={wb}: {tried[(cb, wb)] / n:.2f} s per "
            f"configuration (compile and first batch {compile_s[(cb, wb)]:.1f} s); largest "
            f"per-window NLL sum difference to {settings[0][0]}x{settings[0][1]}: {moved:.3g} nats")
  return tried, compile_s


def _print_perplexities(configs, ppl: dict, with_torch: bool) -> None:
  names = list(ppl)
  print("\nperplexities" + (" (PyTorch vs ours: relative difference)" if with_torch else ""))
  print(f"{'configuration':<16}" + "".join(f"{name:>14}" for name in names)
        + ("   diff" if with_torch else ""))
  for i, c in enumerate(configs):
    diff = f"{ppl['PyTorch'][i] / ppl['ours'][i] - 1:>+7.2%}" if with_torch else ""
    print(f"{c.id:<16}" + "".join(f"{ppl[name][i]:>14.4f}" for name in names) + f"  {diff}")
  if with_torch:
    high = [i for i, c in enumerate(configs) if c.mantissa_bits >= 6 or c.group_size is None]
    worst = max(abs(ppl["PyTorch"][i] / ppl["ours"][i] - 1) for i in high)
    print(f"max |PyTorch / ours - 1| at FP and M >= 6: {worst:.3%} (target < 1%). Not identical: "
          "the two frameworks sum float32 products in different orders, and a last-bit "
          "difference before quantization can move a value across a truncation boundary")


def run(argv) -> dict:
  """Prints the comparison; returns {"configs": ids, "seconds": {variant: s per configuration},
  "ppl": {variant: [C]}, "best": (config_batch, window_batch), "tried": {setting: s}, "compile": s,
  "memory": {variant: MB of XLA temporaries of one call}}."""

  args = _parse(argv)
  settings = _settings(args.settings)
  cfg = sweep_config.get_config("quick")
  cfg.model.name, cfg.data.corpus = args.model, args.corpus
  cfg.data.seq_len, cfg.data.windows = args.seq_len, args.windows
  model, windows, *_ = loading.load_model_and_windows(cfg)
  spec = config_checks.product_spec(cfg, args.group_size)
  configs = sweep.sweep_configs((args.group_size,), [int(m) for m in args.mantissa_bits.split(",")],
                                sweep.SWEEP_TYPES)
  precisions = np.array([c.precision for c in configs], np.int32)
  n = len(configs)
  print(f"sweep benchmark: {n} configurations x {windows.shape[0]} windows x {windows.shape[1]} tokens "
        f"(model {args.model}, G = {args.group_size}, truncate); jax {jax.__version__}, "
        f"{os.cpu_count()} CPU threads")

  tried, compile_s = _try_settings(model, spec, windows, precisions, settings)
  best = min(tried, key=tried.get) if tried else settings[0]
  cb, wb = best

  # 2. Interleaved, one configuration batch at a time.
  variants = {"ours": Ours(model, spec, cb, wb)}
  if not args.skip_full_logits:
    full_wb = args.full_logits_window_batch or wb
    variants["full logits"] = Ours(model, spec, cb, full_wb, full_logits=True)
    _, compile_s["full logits"] = _timed(variants["full logits"], windows[:full_wb], precisions[:cb])
  peer = None
  if not args.skip_torch:
    path = assets.fetch(args.model) if args.model in models.REGISTRY else args.model
    t0 = time.perf_counter()
    peer = TorchPeer(path, args.group_size)
    load_torch = time.perf_counter() - t0
    peer.window_nll_sums(windows[:1], precisions[0])  # warm-up
  seconds = collections.Counter()
  sums = {name: np.zeros((n, len(windows))) for name in list(variants) + (["PyTorch"] if peer else [])}
  for c0 in range(0, n, cb):
    idx = slice(c0, min(c0 + cb, n))
    for name, fn in variants.items():
      sums[name][idx], s = _timed(fn, windows, precisions[idx])
      seconds[name] += s
    if peer is not None:
      for i in range(idx.start, idx.stop):
        sums["PyTorch"][i], s = _timed(peer.window_nll_sums, windows, precisions[i])
        seconds["PyTorch"] += s

  tokens = (windows.shape[1] - 1) * len(windows)
  ppl = {name: np.exp(s.sum(axis=1) / tokens) for name, s in sums.items()}
  per_config = {name: s / n for name, s in seconds.items()}
  print(f"\nours at config_batch={cb}, window_batch={wb}"
        + (" (fastest of the settings tried)" if tried else "")
        + f"; compilation before timing: {compile_s[best]:.1f} s (with the first batch)")
  if peer is not None:
    print(f"PyTorch: transformers {_version('transformers')}, torch {_version('torch')}, model loaded in "
          f"{load_torch:.1f} s")
  print(f"{'variant':<14}{'s / config':>12}{'ratio':>8}")
  for name, s in per_config.items():
    print(f"{name:<14}{s:>12.3f}{s / per_config['ours']:>8.2f}")
  if peer is not None:
    print(f"throughput ours / PyTorch: {per_config['PyTorch'] / per_config['ours']:.2f}x   (target >= 1.0)")
  memory = {}
  if "full logits" in per_config:
    memory = {name: temp_megabytes(variants[name], windows, precisions) for name in ("ours", "full logits")}
    print(f"streamed LM head vs full logits (window batch {variants['full logits'].wb}): "
          f"{per_config['ours'] / per_config['full logits']:.3f} of the time; XLA temporary buffers of "
          f"one call {memory['ours']:.0f} MB vs {memory['full logits']:.0f} MB")
  _print_perplexities(configs, ppl, peer is not None)
  if args.profile:
    print("\n" + profile(variants["ours"], windows, precisions, args.top))
  return dict(configs=[c.id for c in configs], seconds=per_config, ppl=ppl, best=best, tried=tried,
              compile=compile_s[best], memory=memory)


def _version(name: str) -> str:
  return importlib.metadata.version(name)


if __name__ == "__main__":
  import sys
  bench.run_cleanly(run, sys.argv)
