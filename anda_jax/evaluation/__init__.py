"""Scoring a model on token windows:

  evaluate.py          perplexity and per-window NLL sums, vmapped over precision configurations
  cross_entropy.py     the streamed LM head: NLL over vocabulary chunks, no full logits
  intervals.py         paired-bootstrap intervals of a relative perplexity increase
  prefix.py            the hidden states entering each layer, reused across configurations
  window_evaluator.py  WindowEvaluator: a precision search's calls, batched over configurations
"""
