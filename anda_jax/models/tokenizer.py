"""Tokenizers: byte-level BPE or SentencePiece-style BPE (byte fallback) rebuilt from a GGUF
file's metadata, or a directory's tokenizer.json, all with the `tokenizers` library behind a
small `Tokenizer` wrapper."""

from __future__ import annotations

import pathlib

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers

# llama.cpp's LLaMA-3 pre-tokenizer split expression (llama-vocab.cpp).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# The GPT-2 split, as transformers' GGUF tokenizer (the reference our tests check against) uses
# for these. llama.cpp and SmolLM2's own tokenizer.json isolate every digit first; on the whole
# enwiki excerpt (650,328 SmolLM2 tokens) the two differ at 2 places, a space or NBSP before
# "½" or a digit, with equal token counts.
_GPT2_LIKE = ("default", "gpt2", "gpt-2", "smollm", "starcoder", "refact", "command-r", "codeshell",
              "exaone", "minerva")
_LLAMA3_LIKE = ("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx")

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types
_SPACE = "\u2581"  # SentencePiece's visible space


class Tokenizer:
  """encode(text) -> list[int] and decode(ids) -> str over a `tokenizers.Tokenizer`."""

  def __init__(self, backend: tokenizers.Tokenizer, bos_id=None, eos_id=None, add_bos=False):
    self.backend, self.bos_id, self.eos_id, self.add_bos = backend, bos_id, eos_id, add_bos

  def encode(self, text: str) -> list[int]:
    ids = self.backend.encode(text, add_special_tokens=False).ids
    return [self.bos_id] + ids if self.add_bos and self.bos_id is not None else ids

  def decode(self, ids, skip_special_tokens=False) -> str:
    return self.backend.decode(list(map(int, ids)), skip_special_tokens=skip_special_tokens)

  @property
  def vocab_size(self) -> int:
    return self.backend.get_vocab_size()


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


def _pre_tokenizer(pre: str, path):
  if pre in _LLAMA3_LIKE:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(_LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  if pre in _GPT2_LIKE:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  raise ValueError(f"{path}: unsupported GGUF pre-tokenizer tokenizer.ggml.pre={pre!r}: supported are "
                   f"{sorted(_LLAMA3_LIKE + _GPT2_LIKE)}")


def from_gguf(gguf_file) -> Tokenizer:
  """The tokenizer a GGUFFile's metadata describes: byte-level BPE (tokenizer.ggml.model "gpt2")
  or SentencePiece-style BPE with byte fallback ("llama", e.g. Gemma's)."""
  model = gguf_file.meta("tokenizer.ggml.model")
  builders = {"gpt2": _byte_level_bpe, "llama": _sentencepiece_bpe}
  if model not in builders:
    raise ValueError(f"{gguf_file.path}: unsupported tokenizer model tokenizer.ggml.model="
                     f"{model!r}: supported are 'gpt2' (byte-level BPE) and 'llama' (SentencePiece BPE)")
  backend = builders[model](gguf_file)
  return Tokenizer(backend, bos_id=gguf_file.meta("tokenizer.ggml.bos_token_id", None),
                   eos_id=gguf_file.meta("tokenizer.ggml.eos_token_id", None),
                   add_bos=bool(gguf_file.meta("tokenizer.ggml.add_bos_token", model == "llama")))


def _byte_level_bpe(gguf_file) -> tokenizers.Tokenizer:
  path = gguf_file.path
  tokens = list(gguf_file.meta("tokenizer.ggml.tokens"))
  merges = list(gguf_file.meta("tokenizer.ggml.merges"))
  types = list(gguf_file.meta("tokenizer.ggml.token_type", [1] * len(tokens)))
  spelling = _bytes_to_unicode()
  alphabet = set(spelling.values())
  # Vocabulary entries outside the byte alphabet (e.g. added specials with raw spaces) are
  # re-spelled the way the BPE model looks them up.
  vocab = {(t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8"))): i
           for i, t in enumerate(tokens)}
  pairs = [tuple(m.split(" ", 1)) for m in merges]
  for i, pair in enumerate(pairs):
    # The Rust BPE builder panics (an uncatchable-looking PanicException) on such merges.
    if len(pair) != 2 or pair[0] not in vocab or pair[1] not in vocab or "".join(pair) not in vocab:
      raise ValueError(f"{path}: tokenizer.ggml.merges[{i}]={merges[i]!r} is invalid: a merge must be "
                       "two tokens of the vocabulary separated by one space, whose concatenation is "
                       "in the vocabulary too")
  bpe = models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False)
  backend = tokenizers.Tokenizer(bpe)
  backend.pre_tokenizer = _pre_tokenizer(gguf_file.meta("tokenizer.ggml.pre", "default"), path)
  backend.decoder = decoders.ByteLevel()
  control = [tokenizers.AddedToken(t, special=True, normalized=False)
             for t, k in zip(tokens, types) if k == _CONTROL and set(t) <= alphabet]
  user = [tokenizers.AddedToken(t, special=False, normalized=False)
          for t, k in zip(tokens, types) if k == _USER_DEFINED]
  backend.add_special_tokens(control)
  backend.add_tokens(user)
  return backend


def _merges_by_rank(vocab: dict[str, int]) -> list[tuple[str, str]]:
  """The BPE merges a SentencePiece vocabulary implies: every split of a token into two tokens,
  ranked by the merged token's place in the vocabulary (earlier first; of one token's splits, the
  longer left piece first). A GGUF lists no merges for these; transformers' GGUF loader derives
  the same list (the file order, not the scores, which some files leave flat)."""
  merges = []
  for token, rank in vocab.items():
    splits = [(token[:j], token[j:]) for j in range(1, len(token))
              if token[:j] in vocab and token[j:] in vocab]
    splits.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
    merges.extend((rank, -len(left), -len(right), left, right) for left, right in splits)
  merges.sort(key=lambda m: m[:3])  # stable: equal keys keep the order above
  return [(left, right) for *_, left, right in merges]


def _sentencepiece_bpe(gguf_file) -> tokenizers.Tokenizer:
  """SentencePiece BPE ("llama" tokenizer model) from a GGUF's vocabulary: spaces as U+2581, no
  prefix space, unknown characters as their UTF-8 bytes (<0xNN> tokens), control tokens special
  and user-defined ones (e.g. Gemma's newline runs and HTML tags) matched whole."""
  path = gguf_file.path
  if gguf_file.meta("tokenizer.ggml.add_space_prefix", False):
    raise ValueError(f"{path}: tokenizer.ggml.add_space_prefix=true is not supported")
  tokens = list(gguf_file.meta("tokenizer.ggml.tokens"))
  types = list(gguf_file.meta("tokenizer.ggml.token_type", [1] * len(tokens)))
  # Runs of spaces are stored with real spaces; the model looks them up spelled with U+2581.
  spelled = [_SPACE * len(t) if " " in t and not t.strip() else t for t in tokens]
  vocab = {t: i for i, t in enumerate(spelled)}
  unk = gguf_file.meta("tokenizer.ggml.unknown_token_id", None)
  backend = tokenizers.Tokenizer(models.BPE(
      vocab=vocab, merges=_merges_by_rank(vocab), fuse_unk=True, byte_fallback=True,
      unk_token=None if unk is None else tokens[unk]))
  backend.normalizer = normalizers.Replace(" ", _SPACE)
  backend.decoder = decoders.Sequence([decoders.Replace(_SPACE, " "), decoders.ByteFallback(),
                                       decoders.Fuse()])
  backend.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                              for t, k in zip(tokens, types) if k == _CONTROL])
  backend.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False)
                      for t, k in zip(tokens, types) if k == _USER_DEFINED and t in vocab])
  return backend


def from_directory(directory) -> Tokenizer | None:
  """tokenizer.json of a Hugging Face directory (None when there is none)."""
  path = pathlib.Path(directory) / "tokenizer.json"
  if not path.is_file():
    return None
  try:
    backend = tokenizers.Tokenizer.from_file(str(path))
  except Exception as e:
    raise ValueError(f"{path}: not a readable tokenizer.json: {e}") from e
  # Special tokens the post-processor adds (e.g. LLaMA's BOS) come from encode's default.
  return _DirTokenizer(backend)


class _DirTokenizer(Tokenizer):
  def __init__(self, backend):
    super().__init__(backend)

  def encode(self, text: str) -> list[int]:
    return self.backend.encode(text).ids
