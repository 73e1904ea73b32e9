"""Benchmark of the memory a 7B-shaped model costs: `python -m experiments.bench memory`.

Builds, in a temporary folder, a synthetic Hugging Face checkpoint shaped like LLaMA-2-7B (hidden
4096, FFN 11008, 32 heads, vocab 32000, random float16 weights in safetensors, written tensor by
tensor, a config.json and a small trained BPE tokenizer.json), once with 2 layers and once with 4.
Each is loaded with int4_group_size=128 in a fresh process, which then evaluates 2 configurations
(M = 0, the float activation, and M = 8) on 2 windows of 256 tokens with
anda_jax.evaluation.evaluate.perplexity. Printed: the peak resident memory of each process (the child's
ru_maxrss, from os.wait4), the per-layer slope between the two, the packed INT4 bytes of one
layer (4-bit codes + float32 scales + offsets of the seven matrices), and the extrapolation to
32 layers (LLaMA-2-7B), with PASS / FAIL against the targets:
  slope <= 1.5 x the packed INT4 bytes of a layer;  32-layer extrapolation <= 6 GB (10^9 bytes).
The peak is host memory: on the CPU that is everything; on an accelerator the device's own peak is
printed as well when the backend reports it.

    python -m experiments.bench memory [--layers=2,4] [--group_size=128] [--seq_len=256]
        [--windows=2] [--batch_size=1] [--config_batch=2] [--dir=/tmp] [--keep]

The checkpoints take about 0.4 GB per layer plus 0.5 GB (embedding and head): before writing
anything, the larger of the two (both with --keep) is checked against the free space in --dir.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

from experiments import bench
from experiments.harness import errors

# LLaMA-2-7B's shapes.
HIDDEN, FFN, HEADS, VOCAB = 4096, 11008, 32, 32000
FULL_LAYERS = 32
TARGET_SLOPE_RATIO = 1.5
TARGET_FULL_BYTES = 6e9
PRECISIONS = ((0, 0, 0, 0), (8, 8, 8, 8))  # the float activation, and Anda M = 8 at every site
GB, MB = 1e9, 1e6


def _layer_counts(text: str) -> tuple[int, int]:
  counts = tuple(int(n) for n in text.split(","))
  if len(counts) != 2 or not 1 <= counts[0] < counts[1]:
    raise ValueError(text)
  return counts


def _group_size(text: str) -> int:
  g = int(text)
  if g < 2 or HIDDEN % g or FFN % g:
    raise ValueError(text)
  return g


def _parse(argv):
  p = bench.ArgumentParser("memory")
  p.add_argument("--layers", default=(2, 4), type=bench.flag_type(
      _layer_counts, "two layer counts, the smaller first, e.g. 2,4"),
                 help="two layer counts: the slope is taken between them")
  p.add_argument("--group_size", type=bench.flag_type(_group_size, f"an integer >= 2 dividing "
                                                      f"{HIDDEN} and {FFN}"), default=128,
                 help="int4_group_size of the RTN weights")
  p.add_argument("--seq_len", type=bench.int_at_least(2), default=256)
  p.add_argument("--windows", type=bench.int_at_least(1), default=2)
  p.add_argument("--batch_size", type=bench.int_at_least(1), default=1, help="windows per forward")
  p.add_argument("--config_batch", type=bench.int_at_least(1), default=2,
                 help="configurations per forward (vmapped)")
  p.add_argument("--dir", default=None, help="where the temporary checkpoints go (default: $TMPDIR)")
  p.add_argument("--keep", action="store_true", help="keep the checkpoints (printed paths)")
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: measure one checkpoint
  return p.parse(argv)


# ----------------------------------------------------------------------------- the checkpoint


def _tensor_specs(n_layers: int) -> list[tuple[str, tuple[int, ...], str]]:
  """(name, torch shape, kind) of every tensor, in file order; kind picks the random values."""
  specs = [("model.embed_tokens.weight", (VOCAB, HIDDEN), "embed")]
  for i in range(n_layers):
    p = f"model.layers.{i}."
    specs += [(p + "input_layernorm.weight", (HIDDEN,), "norm"),
              (p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN), "linear"),
              (p + "self_attn.k_proj.weight", (HIDDEN, HIDDEN), "linear"),
              (p + "self_attn.v_proj.weight", (HIDDEN, HIDDEN), "linear"),
              (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN), "linear"),
              (p + "post_attention_layernorm.weight", (HIDDEN,), "norm"),
              (p + "mlp.gate_proj.weight", (FFN, HIDDEN), "linear"),
              (p + "mlp.up_proj.weight", (FFN, HIDDEN), "linear"),
              (p + "mlp.down_proj.weight", (HIDDEN, FFN), "linear")]
  return specs + [("model.norm.weight", (HIDDEN,), "norm"), ("lm_head.weight", (VOCAB, HIDDEN), "linear")]


def write_safetensors(path, specs, rows_of, rows_per_chunk: int = 1024) -> None:
  """A float16 safetensors file written tensor by tensor, in chunks of rows: the header first
  (every offset is known from the shapes), then each tensor's bytes as rows_of(name, shape, kind,
  lo, hi) produces them. The writer holds one chunk, never the checkpoint."""
  header, offset = {"__metadata__": {"format": "pt"}}, 0
  for name, shape, _ in specs:
    n_bytes = int(np.prod(shape)) * 2
    header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + n_bytes]}
    offset += n_bytes
  text = json.dumps(header, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    for name, shape, kind in specs:
      step = rows_per_chunk if len(shape) > 1 else shape[0]  # vectors in one piece
      for lo in range(0, shape[0], step):
        hi = min(lo + step, shape[0])
        f.write(np.ascontiguousarray(rows_of(name, shape, kind, lo, hi), np.float16).tobytes())


def _tokenizer_json(path) -> None:
  """A small byte-level BPE trained here (the model's vocabulary is larger; the windows are random
  ids anyway: memory does not depend on which tokens they are)."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import decoders, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top

  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  text = ("The quick brown fox jumps over the lazy dog. A language model predicts the next token; "
          "perplexity measures how surprised it is. ") * 20
  tok.train_from_iterator([text], trainer)
  tok.save(str(path))


def build_checkpoint(directory, n_layers: int, seed: int = 0) -> pathlib.Path:
  """The synthetic LLaMA-2-7B-shaped checkpoint with n_layers layers, in `directory`."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)

  def rows_of(name, shape, kind, lo, hi):
    del name
    if kind == "norm":
      return 1 + 0.1 * rng.standard_normal(shape[0], np.float32)
    x = rng.standard_normal((hi - lo, shape[1]), np.float32)
    return x if kind == "embed" else x / np.float32(np.sqrt(shape[1]))  # activations stay O(1)

  write_safetensors(directory / "model.safetensors", _tensor_specs(n_layers), rows_of)
  config = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=HIDDEN,
                intermediate_size=FFN, num_hidden_layers=n_layers, num_attention_heads=HEADS,
                num_key_value_heads=HEADS, vocab_size=VOCAB, rms_norm_eps=1e-5, rope_theta=10000.0,
                hidden_act="silu", tie_word_embeddings=False, max_position_embeddings=4096,
                torch_dtype="float16")
  (directory / "config.json").write_text(json.dumps(config, indent=1))
  _tokenizer_json(directory / "tokenizer.json")
  return directory


def packed_bytes_per_layer(group_size: int) -> int:
  """Bytes of one layer's seven matrices as RTN INT4: two 4-bit codes a byte, plus a float32 scale
  and a float32 offset per group of `group_size` along K."""
  matrices = [(HIDDEN, HIDDEN)] * 4 + [(HIDDEN, FFN)] * 2 + [(FFN, HIDDEN)]  # [K, N]
  return sum(k * n // 2 + 2 * (k // group_size) * n * 4 for k, n in matrices)


# ----------------------------------------------------------------------------- one process


def _rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _child(args) -> None:
  """Loads one checkpoint and evaluates it; prints one JSON line of measurements."""
  # Imported in the child alone: the parent writes the checkpoints with numpy and should not hold
  # a JAX runtime (its threads and buffers) beside the children whose memory it measures.
  import jax  # pylint: disable=g-import-not-at-top
  from anda_jax import AndaFormat, models  # pylint: disable=g-import-not-at-top
  from anda_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  from anda_jax.numerics import int4  # pylint: disable=g-import-not-at-top
  from anda_jax.matmul import ProductSpec  # pylint: disable=g-import-not-at-top

  out = dict(platform=jax.devices()[0].platform, rss_after_import=_rss_bytes())
  t0 = time.perf_counter()
  model, _ = models.load(args.child, int4_group_size=args.group_size)
  out.update(load_seconds=time.perf_counter() - t0, peak_after_load=_peak_bytes(), rss_after_load=_rss_bytes())
  layers = model.layers.get_value()
  is_int4 = lambda w: isinstance(w, int4.Int4Weights)
  out["int4_bytes_per_layer"] = sum(
      a.nbytes for w in layers.values() if is_int4(w) for a in jax.tree.leaves(w)) // model.config.n_layers
  out["layer_bytes_per_layer"] = sum(a.nbytes for a in jax.tree.leaves(layers)) // model.config.n_layers
  out["weight_dtypes"] = sorted({str(a.dtype) for a in jax.tree.leaves(layers) if a.dtype.kind not in "iu"} |
                                {str(model.embedding[...].dtype), str(model.lm_head[...].dtype)})
  windows = np.random.default_rng(1).integers(0, model.config.vocab, (args.windows, args.seq_len))
  t0 = time.perf_counter()
  ppl = evaluate.perplexity(model, windows, np.asarray(PRECISIONS, np.int32),
                            ProductSpec(AndaFormat(group_size=64)), batch_size=args.batch_size,
                            config_batch=args.config_batch)
  out.update(eval_seconds=time.perf_counter() - t0, perplexities=[float(p) for p in ppl],
             peak=_peak_bytes(), rss_after_eval=_rss_bytes())
  stats = jax.devices()[0].memory_stats() if out["platform"] != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    out["device_peak"] = int(stats["peak_bytes_in_use"])
  print(json.dumps(out))


def _measure(directory, args) -> dict:
  """Runs _child on `directory` in a fresh process; its measurements plus its ru_maxrss."""
  cmd = [sys.executable, "-m", "experiments.bench_memory", f"--child={directory}",
         f"--group_size={args.group_size}", f"--seq_len={args.seq_len}", f"--windows={args.windows}",
         f"--batch_size={args.batch_size}", f"--config_batch={args.config_batch}"]
  repo = pathlib.Path(__file__).resolve().parents[1]
  with tempfile.TemporaryFile("w+") as stdout:
    proc = subprocess.Popen(cmd, cwd=repo, stdout=stdout)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout.seek(0)
    text = stdout.read()
  if proc.returncode:
    sys.exit(f"the measuring process failed (exit {proc.returncode}) on {directory}")
  result = json.loads(text.strip().splitlines()[-1])
  result["ru_maxrss"] = usage.ru_maxrss * 1024
  return result


# ----------------------------------------------------------------------------- the benchmark


def checkpoint_bytes(n_layers: int) -> int:
  """The size of build_checkpoint's model.safetensors with n_layers layers, but for its header
  (the tokenizer and config.json are a few kB more)."""
  return sum(int(np.prod(shape)) * 2 for _, shape, _ in _tensor_specs(n_layers))


def _check_room(args, counts) -> None:
  """--dir is a folder with room for the checkpoints (both at once with --keep, else the larger),
  or one line and exit status 2, before anything is written."""
  where = pathlib.Path(args.dir).expanduser() if args.dir else pathlib.Path(tempfile.gettempdir())
  if not where.is_dir():
    errors.error_exit(f"--dir={args.dir!r} is invalid: no such folder")
  sizes = [checkpoint_bytes(n) for n in counts]
  need, free = (sum(sizes) if args.keep else max(sizes)) * 1.01 + 10 * MB, shutil.disk_usage(where).free
  if need > free:
    errors.error_exit(f"--layers={','.join(map(str, counts))} is invalid with --dir={str(where)!r}: the "
                      f"checkpoints need about {need / GB:.1f} GB{' (--keep: both)' if args.keep else ''}"
                      f" and {free / GB:.1f} GB are free there; choose fewer layers or --dir on a "
                      "larger disk")


def run(argv) -> dict:
  args = _parse(argv)
  if args.child:
    _child(args)
    return {}
  counts = args.layers
  _check_room(args, counts)
  parent = tempfile.mkdtemp(prefix="anda_bench_memory_", dir=args.dir and pathlib.Path(args.dir).expanduser())
  free = shutil.disk_usage(parent).free
  print(f"synthetic LLaMA-2-7B-shaped checkpoints (float16) with {list(counts)} layers in {parent} "
        f"({free / GB:.0f} GB free); int4_group_size={args.group_size}; {len(PRECISIONS)} configurations "
        f"x {args.windows} windows x {args.seq_len} tokens (batch_size={args.batch_size}, "
        f"config_batch={args.config_batch}); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
  results = {}
  try:
    for n in counts:
      t0 = time.perf_counter()
      directory = build_checkpoint(pathlib.Path(parent) / f"llama2-7b-shaped-{n}-layers", n)
      size = (directory / "model.safetensors").stat().st_size
      print(f"  built {n} layers: {size / GB:.2f} GB in {time.perf_counter() - t0:.0f} s; measuring ...", flush=True)
      results[n] = _measure(directory, args)
      if not args.keep:
        shutil.rmtree(directory)
  finally:
    if not args.keep:
      shutil.rmtree(parent, ignore_errors=True)

  packed = packed_bytes_per_layer(args.group_size)
  print(f"{'layers':>6}{'peak RSS GB':>13}{'after load GB':>15}{'peak in load GB':>17}"
        f"{'load s':>8}{'eval s':>8}  perplexities (M=0, M=8)")
  for n, r in results.items():
    print(f"{n:>6}{r['ru_maxrss'] / GB:>13.3f}{r['rss_after_load'] / GB:>15.3f}{r['peak_after_load'] / GB:>17.3f}"
          f"{r['load_seconds']:>8.1f}{r['eval_seconds']:>8.1f}  {', '.join(f'{p:.4g}' for p in r['perplexities'])}")
  (lo, r_lo), (hi, r_hi) = results.items()
  slope = (r_hi["ru_maxrss"] - r_lo["ru_maxrss"]) / (hi - lo)
  full = r_lo["ru_maxrss"] + (FULL_LAYERS - lo) * slope
  measured = r_hi["int4_bytes_per_layer"]
  print(f"weights in the model: {', '.join(r_hi['weight_dtypes'])}; platform {r_hi['platform']}")
  print(f"packed INT4 bytes per layer (codes + scales + offsets): {packed / MB:.1f} MB "
        f"(in the loaded model: {measured / MB:.1f} MB; with the float16 norms {r_hi['layer_bytes_per_layer'] / MB:.1f} MB)")
  ok_slope = slope <= TARGET_SLOPE_RATIO * packed
  ok_full = full <= TARGET_FULL_BYTES
  # Cross-check: the slope of the resident memory right after loading (the weights alone, no
  # evaluation transients, which the allocator may serve from memory freed by the loader).
  # The packed bytes are a floor of the true per-layer cost (the weights are resident at the
  # peak); a measured slope below them means the allocator reused memory the loader had freed.
  resident = (r_hi["rss_after_load"] - r_lo["rss_after_load"]) / (hi - lo)
  cautious = r_lo["ru_maxrss"] + (FULL_LAYERS - lo) * max(slope, resident, packed)
  print(f"per-layer slope of peak RSS: {slope / MB:.1f} MB = {slope / packed:.2f}x the packed bytes   "
        f"(target <= {TARGET_SLOPE_RATIO}x): {'PASS' if ok_slope else 'FAIL'}")
  print(f"extrapolation to {FULL_LAYERS} layers: {full / GB:.2f} GB   (target <= {TARGET_FULL_BYTES / GB:.0f} GB): "
        f"{'PASS' if ok_full else 'FAIL'}")
  print(f"cross-check: resident slope after loading {resident / MB:.1f} MB/layer = {resident / packed:.2f}x the "
        f"packed bytes; extrapolation with the largest of the two slopes and the packed bytes: "
        f"{cautious / GB:.2f} GB")
  if "device_peak" in r_hi:
    print(f"device peak ({r_hi['platform']}): {r_lo['device_peak'] / GB:.3f} GB at {lo} layers, "
          f"{r_hi['device_peak'] / GB:.3f} GB at {hi} layers")
  print(f"load average at the end: {os.getloadavg()[0]:.1f}")
  return dict(results=results, slope=slope, resident_slope=resident, packed=packed, full=full,
              cautious=cautious, ok_slope=ok_slope, ok_full=ok_full)


if __name__ == "__main__":
  bench.run_cleanly(run, sys.argv)
