"""Benchmark of the model forward: `python -m experiments.bench model [--model=...]`.

On one GGUF model and the same windows (4 x 512 tokens by default), in one process:
  1. tokens/s of our jitted forward vs transformers' PyTorch forward (float32, CPU, same
     thread count) and the ratio (target >= 1.2x);
  2. achieved GFLOP/s of our forward next to jnp.dot of two 2048x2048 float32 arrays
     (target >= 75%), and torch's matmul of the same arrays: the two frameworks' matrix-product
     ceilings, which bound the speed ratio;
  3. the cost of Anda at all four sites (G=64, M=8) over M=0, the float model (target <= 1.15x).
Variants run round-robin and each keeps its best time, so load from other processes on a
shared machine skews the ratios as little as possible.

--head=logits (default) times forwards that return the [windows, tokens, vocab] logits;
--head=loss times what evaluation computes, every window's next-token loss: ours through the
streamed LM head (the logits never exist), transformers' forward with labels. For a large
vocabulary (Gemma 3: 262,144 entries, 2.1 GB of logits per 4 x 512 tokens) the second is the
one evaluation pays.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from anda_jax import AndaFormat
from anda_jax import assets, models
from anda_jax import data
from anda_jax.evaluation import cross_entropy
from anda_jax.matmul import ProductSpec, lax_precision
from experiments import bench


def _parse(argv):
  p = bench.ArgumentParser("model")
  p.add_argument("--model", default="smollm2-135m", help="registry name or .gguf path")
  p.add_argument("--windows", type=int, default=4)
  p.add_argument("--seq_len", type=int, default=512)
  p.add_argument("--repeats", type=int, default=3, help="timed rounds per variant")
  p.add_argument("--skip_torch", action="store_true")
  p.add_argument("--head", choices=("logits", "loss"), default="logits",
                 help="time forwards to the full logits, or to each window's loss (streamed head)")
  args = p.parse(argv)
  return args


def _windows(tokenizer, n, seq_len, vocab):
  """Real text windows when the corpus is at hand, else fixed random ids (speed does not depend
  on which tokens they are)."""
  try:
    corpus = data.load_corpus("enwiki-excerpt")
    w = data.token_windows(corpus.test, tokenizer, seq_len, max_windows=n)
    if len(w) == n:
      return np.asarray(w, np.int32), "enwiki-excerpt test windows"
  except Exception as e:  # pylint: disable=broad-except
    print(f"(corpus unavailable: {type(e).__name__}: {e}; using random token ids)")
  return np.random.RandomState(0).randint(0, vocab, (n, seq_len)).astype(np.int32), "random token ids"


def _flops(model, n_tokens, seq_len, batch):
  """Useful FLOPs of one forward: 2 x MACs of the linear layers and the LM head, plus attention's
  two products over the causal triangle only (T (T + 1) / 2 query-key pairs per head)."""
  c = model.config
  macs = sum(model.macs_per_token().values()) + c.d_model * c.vocab
  attn = 2 * c.n_layers * batch * c.n_heads * (seq_len * (seq_len + 1) // 2) * c.head_dim
  return 2 * (macs * n_tokens + attn)


def _losses(model, tokens, precision, spec):
  """Every window's mean next-token loss [windows], the LM head streamed over vocabulary chunks
  as evaluation runs it."""
  h = model.run_layers(model.embed(tokens), precision, spec)
  nll = cross_entropy.streamed_nll(model.head_input(h)[:, :-1], model.head_weight(), tokens[:, 1:],
                                   precision=lax_precision(model.matmul_precision))
  return nll.mean(axis=-1)


def _round_robin(fns: dict, repeats: int, calls: dict) -> dict:
  """Best time of each fn over `repeats` rounds of calls[name] (default 1) calls each."""
  best = {k: float("inf") for k in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      for _ in range(calls.get(name, 1)):
        t0 = time.perf_counter()
        fn()
        best[name] = min(best[name], time.perf_counter() - t0)
  return best


def run(argv) -> None:
  args = _parse(argv)

  path = assets.fetch(args.model) if args.model in models.REGISTRY else args.model
  model, tokenizer = models.load(path)
  windows, source = _windows(tokenizer, args.windows, args.seq_len, model.config.vocab)
  n_tokens = windows.size
  threads = os.cpu_count()
  print(f"model {args.model}: {windows.shape[0]} x {windows.shape[1]} tokens ({source}); "
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {threads} threads; "
        f"head: {args.head}")
  print(f"weights: {model.weight_types}")

  spec = ProductSpec(AndaFormat(group_size=64))
  forward = jax.jit(lambda m, t, p: (m(t, p, spec) if args.head == "logits"
                                     else _losses(m, t, p, spec)))
  tokens = jnp.asarray(windows)
  precisions = {"M=0": jnp.zeros(4, jnp.int32), "M=8": jnp.full(4, 8, jnp.int32)}
  fns = {name: (lambda p=p: forward(model, tokens, p).block_until_ready()) for name, p in precisions.items()}
  a = jnp.asarray(np.random.RandomState(1).standard_normal((2048, 2048)), jnp.float32)
  dot = jax.jit(jnp.dot)
  fns["jnp.dot 2048^2"] = lambda: dot(a, a).block_until_ready()

  if not args.skip_torch:
    import torch  # pylint: disable=g-import-not-at-top
    from transformers import AutoModelForCausalLM  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(threads)
    path = os.fspath(path)
    hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(path) or ".", gguf_file=os.path.basename(path),
                                              dtype=torch.float32).eval()
    torch_tokens = torch.from_numpy(windows.astype(np.int64))

    def torch_forward():
      with torch.inference_mode():
        if args.head == "logits":
          hf(torch_tokens).logits
        else:
          hf(torch_tokens, labels=torch_tokens).loss

    fns["torch"] = torch_forward
    a_torch = torch.from_numpy(np.array(a))
    fns["torch.mm 2048^2"] = lambda: torch.mm(a_torch, a_torch)

  for fn in fns.values():  # compile / warm up
    fn()
  # The 2048^2 products take tens of ms: ten calls a round, so their best is the framework's
  # sustained rate and not one lucky or unlucky call.
  best = _round_robin(fns, args.repeats, calls={"jnp.dot 2048^2": 10, "torch.mm 2048^2": 10})

  flops = _flops(model, n_tokens, windows.shape[1], windows.shape[0])
  square_gflops = {name: 2 * 2048 ** 3 / best[name] / 1e9 for name in ("jnp.dot 2048^2", "torch.mm 2048^2")
                   if name in best}
  print(f"{'variant':<16}{'seconds':>10}{'tokens/s':>12}{'GFLOP/s':>10}")
  for name in ("M=0", "M=8", "torch"):
    if name in best:
      print(f"{name:<16}{best[name]:>10.3f}{n_tokens / best[name]:>12.1f}{flops / best[name] / 1e9:>10.1f}")
  for name, gflops in square_gflops.items():
    print(f"{name:<16}{best[name]:>10.3f}{'':>12}{gflops:>10.1f}")
  ours = best["M=0"]
  if "torch" in best:
    print(f"speed vs torch (M=0, tokens/s ratio): {best['torch'] / ours:.2f}x   (target >= 1.2x)")
  print(f"GFLOP/s vs jnp.dot (M=0): {flops / ours / 1e9 / square_gflops['jnp.dot 2048^2']:.0%}   (target >= 75%)")
  print(f"Anda cost M=8 / M=0: {best['M=8'] / best['M=0']:.3f}x   (target <= 1.15x)")


if __name__ == "__main__":
  import sys
  bench.run_cleanly(run, sys.argv)
