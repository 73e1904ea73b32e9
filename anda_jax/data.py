"""Corpora -> token windows, with fixed calibration / test splits.

Sources (`load_corpus(name_or_path)`):
- "enwiki-excerpt": the shortened English Wikipedia dump pinned in `anda_jax.assets`
  (gensim's test data). Main-namespace, non-redirect pages are stripped to plain text with
  mwparserfromhell (templates, references, tables, math, files, categories and interlanguage
  links removed). 106 articles, 2.9 M characters; `calibration_fraction=0.25` puts 26
  articles (0.80 M characters) in calibration and 80 (2.10 M characters) in test. With the
  SmolLM2 tokenizer: 183,840 calibration and 466,696 test tokens
  (`python -m anda_jax.data enwiki-excerpt smollm2-135m` prints these).
- a MediaWiki XML dump (`*.xml` or `*.xml.bz2`): the same processing.
- a WikiText-raw file (`*.raw`, e.g. wiki.test.raw): articles start at ` = Title = ` lines.
- a WikiText-raw folder holding wiki.train.raw and wiki.test.raw: its own split
  (train -> calibration, test -> test).
- any other text file: articles are blocks separated by blank lines.

Splits are by article, deterministic and independent of file order: articles are sorted by
the sha256 of their title (or text) and the first `round(fraction * n)` go to calibration (at
least one once there are two articles; a one-article corpus has an empty calibration split).
So no test article is ever seen during calibration.

Token windows: the texts of a split are joined with a blank line, tokenized once (the ids
are cached on disk keyed by the sha256 of the text and of the tokenizer), and cut into
windows of `seq_len` tokens, non-overlapping unless `stride < seq_len`. With `bos` (a model
trained with BOS first, as Gemma 3: `bos_first` decides from the tokenizer), every window is
BOS followed by seq_len - 1 tokens of the stream, windows start every `stride` stream tokens
(default seq_len - 1: consecutive, no stream token twice), and BOS is never a target (the
targets are a window's tokens after its first).

Both caches (the articles of a MediaWiki dump, the token ids) live in the asset cache
(anda_jax.assets.cache_dir()) and store a sha256 of their content, checked on every read: an
entry that is damaged, of another format or edited is rebuilt, with a warning. A cache that
cannot be written (a shared, read-only one) is read, and what it lacks is computed every time,
with a warning.
"""

from __future__ import annotations

import bz2
import dataclasses
import hashlib
import json
import pathlib
import re
import sys
import warnings
import xml.etree.ElementTree as ET
import zipfile

import numpy as np

from anda_jax import assets
from anda_jax import files
from anda_jax import models
from anda_jax.checks import check_int

CORPORA = ("enwiki-excerpt",)
SEPARATOR = "\n\n"
# Bump when the text extraction changes, so cached corpora are rebuilt.
_EXTRACT_VERSION = 2
_DROP_TAGS = ("ref", "math", "table", "gallery", "timeline", "score", "references")


@dataclasses.dataclass(frozen=True)
class Corpus:
  name: str
  calibration: list[str]
  test: list[str]
  # The fraction of the articles that went to calibration; None: the corpus brings its own split
  # (a WikiText folder's wiki.train.raw and wiki.test.raw).
  calibration_fraction: float | None = None

  def split(self, name: str) -> list[str]:
    """The texts of split `name`; a ValueError saying why when it has none."""
    if name not in ("calibration", "test"):
      raise ValueError(f"split={name!r} is invalid: must be 'calibration' or 'test'")
    texts = self.calibration if name == "calibration" else self.test
    if not texts:
      raise ValueError(f"split={name!r} is invalid for corpus {self.name!r}: {self._why_empty(name)}")
    return texts

  def _why_empty(self, name: str) -> str:
    if self.calibration_fraction is None:
      file = "wiki.train.raw" if name == "calibration" else "wiki.test.raw"
      return f"that split is empty, as its {file} holds no text"
    n = len(self.calibration) + len(self.test)
    return (f"that split is empty: the corpus holds {n} article{'s' * (n != 1)}, and articles go "
            f"to the test split first (calibration gets round({self.calibration_fraction} x "
            "articles), at least 1 once there are 2 or more); give a corpus of 2 or more articles "
            "(a plain text file's articles are its blocks separated by blank lines)")


# ----------------------------------------------------------------------------- text

# References, comments and math are cut with a regex before parsing: removing them from the
# parse tree one by one is quadratic and was most of the time on long articles.
_PRE_STRIP = re.compile(
    r"<!--.*?-->|<ref[^>]*/>|<ref[^>]*?>.*?</ref>|<math[^>]*>.*?</math>", re.S | re.I)


def wikitext_to_plain(wikitext: str) -> str:
  """MediaWiki markup -> plain text (one paragraph per line)."""
  import mwparserfromhell  # pylint: disable=g-import-not-at-top (slow import, only needed here)

  code = mwparserfromhell.parse(_PRE_STRIP.sub("", wikitext))
  for node in code.filter(recursive=False, forcetype=(mwparserfromhell.nodes.Tag,
                                                      mwparserfromhell.nodes.Wikilink)):
    if isinstance(node, mwparserfromhell.nodes.Tag):
      drop = str(node.tag).strip().lower() in _DROP_TAGS
    else:
      drop = ":" in str(node.title)  # File:, Image:, Category:, interlanguage links
    if drop:
      code.remove(node)
  text = code.strip_code(normalize=True, collapse=True)
  lines = (re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines())
  return "\n".join(line for line in lines if line)


def _mediawiki_articles(path: pathlib.Path) -> list[tuple[str, str]]:
  """(title, plain text) of the main-namespace, non-redirect pages of a dump."""
  opener = bz2.open if path.suffix == ".bz2" else open
  articles = []
  try:
    with opener(path, "rb") as f:
      for _, el in ET.iterparse(f):
        if el.tag.rsplit("}", 1)[-1] != "page":
          continue
        ns, title = el.findtext("{*}ns"), el.findtext("{*}title")
        if ns == "0" and el.find("{*}redirect") is None:
          text = wikitext_to_plain(el.findtext("{*}revision/{*}text") or "")
          if text:
            articles.append((title, text))
        el.clear()  # keeps memory flat on big dumps
  except (ET.ParseError, OSError, EOFError) as e:
    raise ValueError(f"{path} is not a readable MediaWiki XML dump: {e}") from e
  return articles


_WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")


def _wikitext_raw_articles(text: str) -> list[tuple[str, str]]:
  """Splits WikiText-raw at its top-level ` = Title = ` lines."""
  groups = []  # (title, lines)
  for line in text.splitlines():
    is_title = bool(_WIKITEXT_TITLE.match(line))
    if is_title or not groups:
      groups.append((line.strip(" =") if is_title else "", []))
    groups[-1][1].append(line)
  return [(title, "\n".join(lines).strip("\n")) for title, lines in groups if "".join(lines).strip()]


def _blocks(text: str) -> list[tuple[str, str]]:
  blocks = [b.strip() for b in re.split(r"\n\s*\n", text)]
  return [("", b) for b in blocks if b]


def split_articles(articles, calibration_fraction: float) -> tuple[list[str], list[str]]:
  """Deterministic split by article: sorted by sha256(title or text), first part calibrates."""
  def key(article):
    title, text = article
    return hashlib.sha256((title or text).encode()).hexdigest()

  ordered = sorted(articles, key=key)
  n_cal = round(calibration_fraction * len(ordered))
  if len(ordered) >= 2:
    n_cal = min(max(n_cal, 1), len(ordered) - 1)  # both splits non-empty
  return [t for _, t in ordered[:n_cal]], [t for _, t in ordered[n_cal:]]


def _read_text(path: pathlib.Path) -> str:
  try:
    return path.read_text(encoding="utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path} is not UTF-8 text: {e}") from e


def _articles_from_file(path: pathlib.Path) -> list[tuple[str, str]]:
  name = path.name.lower()
  if name.endswith((".xml", ".xml.bz2")) or ".xml-" in name:
    # Parsing the Wikipedia excerpt takes ~10 s, so the articles are cached, keyed by the
    # file's content and the extraction code's version.
    key = f"{hashlib.sha256(path.read_bytes()).hexdigest()[:32]}-v{_EXTRACT_VERSION}"
    return _cached_articles(assets.cache_dir() / "corpora" / f"{key}.json",
                            lambda: _mediawiki_articles(path))
  text = _read_text(path)
  if name.endswith(".raw"):
    return _wikitext_raw_articles(text)
  return _blocks(text)


def _articles_sha256(articles) -> str:
  return hashlib.sha256(json.dumps(articles).encode()).hexdigest()


def _read_articles(path: pathlib.Path) -> list[tuple[str, str]] | None:
  """The (title, text) articles cached at `path`, or None when absent. An entry that is damaged,
  of another shape, or whose articles no longer match their stored sha256 (edited by hand, a torn
  write) is reported and rebuilt, never used."""
  if not path.exists():
    return None
  try:
    entry = json.loads(path.read_bytes())
    articles = entry["articles"]
    if (isinstance(articles, list) and _articles_sha256(articles) == entry["sha256"]
        and all(isinstance(a, list) and len(a) == 2 and all(isinstance(t, str) for t in a)
                for a in articles)):
      return [tuple(a) for a in articles]
  except (ValueError, OSError, KeyError, TypeError):
    pass
  warnings.warn(f"article cache {path} is damaged, of another format or does not match its "
                "checksum: rebuilding it")
  return None


def _cached_articles(path: pathlib.Path, build) -> list[tuple[str, str]]:
  """build() -> [(title, text)], memoized at `path` with the articles' sha256, checked on every
  read; a cache that cannot be written (read-only) costs the time of build(), nothing else."""
  articles = _read_articles(path)
  if articles is None:
    articles = [tuple(a) for a in build()]
    entry = dict(articles=articles, sha256=_articles_sha256(articles))
    _write_cache_entry(path, lambda f: f.write(json.dumps(entry).encode()))
  return articles


def _write_cache_entry(path: pathlib.Path, write) -> None:
  """files.atomic_write(path, write), or a warning when the cache folder cannot be written (a
  shared, read-only cache): the value is used without being cached."""
  try:
    files.atomic_write(path, write)
  except OSError as e:
    warnings.warn(f"cannot write the cache entry {path} ({e.strerror or e}): going on without "
                  "caching it")


def load_corpus(name_or_path: str, *, calibration_fraction: float = 0.25) -> Corpus:
  """A named corpus (see CORPORA) or a file / WikiText folder -> Corpus."""
  if not 0.0 < calibration_fraction < 1.0:
    raise ValueError(f"calibration_fraction={calibration_fraction} is invalid: must be in (0, 1)")
  name = str(name_or_path)
  if name in CORPORA:
    path = assets.fetch(name)
  else:
    path = pathlib.Path(name).expanduser()
    if not path.exists():
      raise ValueError(f"corpus={name!r} is neither a known corpus {CORPORA} nor an existing "
                       "file or folder")
  if path.is_dir():
    train, test = path / "wiki.train.raw", path / "wiki.test.raw"
    if not (train.exists() and test.exists()):
      raise ValueError(f"corpus folder {path} must hold wiki.train.raw and wiki.test.raw")
    cal_articles = _wikitext_raw_articles(_read_text(train))
    test_articles = _wikitext_raw_articles(_read_text(test))
    return Corpus(name, [t for _, t in cal_articles], [t for _, t in test_articles])
  articles = _articles_from_file(path)
  if not articles:
    raise ValueError(f"corpus {path} holds no text")
  calibration, test = split_articles(articles, calibration_fraction)
  return Corpus(name, calibration, test, calibration_fraction)


# --------------------------------------------------------------------------- tokens

def _encode(tokenizer, text: str) -> list[int]:
  out = tokenizer.encode(text)
  return list(getattr(out, "ids", out))  # tokenizers.Encoding or a plain list


def tokenizer_fingerprint(tokenizer) -> str:
  """A sha256 identifying a tokenizer, for the token cache key: its serialized backend (when it
  has one) and how it encodes a probe string (which also catches wrapper settings such as
  adding a BOS token)."""
  if hasattr(tokenizer, "fingerprint"):
    return str(tokenizer.fingerprint)
  h = hashlib.sha256(type(tokenizer).__qualname__.encode())
  candidates = [tokenizer] + [getattr(tokenizer, n, None) for n in ("backend", "_tokenizer", "backend_tokenizer")]
  backend = next((c for c in candidates if hasattr(c, "to_str")), None)
  if backend is not None:
    h.update(backend.to_str().encode())
  probe = "The Anda format, 1234567890 \u2014 \u00dcn\u00efc\u00f6d\u00e9 \u6f22\u5b57\n\t  end"
  h.update(str(_encode(tokenizer, probe)).encode())
  return h.hexdigest()


def _ids_sha256(ids: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(ids, np.int32).tobytes()).hexdigest()


def _cached_ids(path: pathlib.Path) -> np.ndarray | None:
  """The token ids cached at `path`, or None when absent; an entry that is damaged or whose ids
  no longer match their stored sha256 (edited by hand, a torn write) is reported and rebuilt,
  never used."""
  if not path.exists():
    return None
  try:
    with np.load(path) as entry:
      ids, stored = entry["ids"], str(entry["sha256"])
  except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile):
    stored, ids = None, None
  if ids is not None and _ids_sha256(ids) == stored:
    return ids
  warnings.warn(f"token cache {path} is damaged or does not match its checksum: rebuilding it")
  return None


def token_ids(texts: list[str], tokenizer) -> np.ndarray:
  """The texts joined by a blank line, tokenized; cached on disk with the ids' sha256, checked
  on every read. int32 [n_tokens]."""
  text = SEPARATOR.join(texts)
  key = hashlib.sha256(text.encode() + b"\0" + tokenizer_fingerprint(tokenizer).encode()).hexdigest()
  path = assets.cache_dir() / "tokens" / f"{key[:40]}.npz"
  ids = _cached_ids(path)
  if ids is None:
    ids = np.asarray(_encode(tokenizer, text), np.int32)
    _write_cache_entry(path, lambda f: np.savez(f, ids=ids, sha256=np.array(_ids_sha256(ids))))
  return ids


def bos_first(setting, tokenizer) -> bool:
  """Whether windows start with BOS for the `data.bos` setting: "auto" (BOS first when the
  tokenizer adds BOS to what it encodes, as Gemma 3's GGUF says; SmolLM2's does not), or
  True / False (also "true" / "false", as a command line gives them) to force it. Forcing it
  needs a tokenizer that knows its BOS id. ValueError naming the setting otherwise."""
  value = check_bos_setting(setting)
  bos_id = getattr(tokenizer, "bos_id", None)
  if value == "auto":
    return bool(getattr(tokenizer, "add_bos", False)) and bos_id is not None
  if value and bos_id is None:
    raise ValueError(f"data.bos={setting!r} is invalid for this tokenizer: it has no BOS token")
  return value


def check_bos_setting(setting) -> str | bool:
  """The `data.bos` setting as "auto", True or False; ValueError naming it otherwise."""
  value = setting.lower() if isinstance(setting, str) else setting
  named = {"auto": "auto", "true": True, "false": False}
  if isinstance(value, bool):
    return value
  if value not in named:
    raise ValueError(f"data.bos={setting!r} is invalid: must be 'auto', True or False")
  return named[value]


def token_windows(texts: list[str], tokenizer, seq_len: int, max_windows: int | None = None,
                  stride: int | None = None, bos: bool = False) -> np.ndarray:
  """Windows of seq_len tokens, int32 [n, seq_len].

  Windows start every `stride` tokens of the stream (default: non-overlapping). With max_windows,
  that many windows spread evenly over the corpus are kept (in order), so a small
  evaluation still samples every part of the split. bos: each window is the tokenizer's BOS
  followed by seq_len - 1 stream tokens (stride at most, and by default, seq_len - 1); the
  stream is then the text's tokens without the BOS the tokenizer puts at its start."""
  seq_len = check_int("seq_len", seq_len, 2)
  span = seq_len - 1 if bos else seq_len  # stream tokens per window
  limit = " (at most seq_len - 1 with BOS first)" if bos else " (at most seq_len)"
  stride = check_int("stride", span if stride is None else stride, 1, span, limit)
  if max_windows is not None:
    check_int("max_windows", max_windows, 1, hint=" or None")
  ids = token_ids(texts, tokenizer)
  if bos:
    bos_id = tokenizer.bos_id
    ids = ids[1:] if len(ids) and ids[0] == bos_id else ids
  starts = np.arange(0, len(ids) - span + 1, stride)
  if len(starts) == 0:
    raise ValueError(f"the text has {len(ids)} tokens, fewer than seq_len={seq_len}"
                     + (" - 1 (BOS first)" if bos else ""))
  if max_windows is not None and max_windows < len(starts):
    starts = starts[np.linspace(0, len(starts) - 1, max_windows).round().astype(int)]
  windows = np.stack([ids[s:s + span] for s in starts]).astype(np.int32)
  if bos:
    windows = np.concatenate([np.full((len(windows), 1), bos_id, np.int32), windows], axis=1)
  return windows


def _main(argv) -> None:
  """Prints the sizes of a corpus's splits: python -m anda_jax.data [corpus] [model]."""
  corpus = load_corpus(argv[1] if len(argv) > 1 else "enwiki-excerpt")
  tokenizer = None
  if len(argv) > 2:
    _, tokenizer = models.load(argv[2])
  for split in ("calibration", "test"):
    texts = getattr(corpus, split)
    line = f"{split}: {len(texts)} articles, {sum(map(len, texts))} characters"
    if tokenizer is not None:
      line += f", {len(token_ids(texts, tokenizer))} tokens"
    print(line)


if __name__ == "__main__":
  _main(sys.argv)
