"""Tests for anda_jax.data: text extraction, article splits, token windows and their cache."""

import bz2
import errno
import json
from unittest import mock

from absl.testing import absltest
import numpy as np
import pytest

from anda_jax import data
from anda_jax import files
import testlib


def _page(title, text, ns=0, redirect=False):
  red = '<redirect title="X" />' if redirect else ""
  return (f"<page><title>{title}</title><ns>{ns}</ns><id>1</id>{red}<revision><id>2</id>"
          f"<text xml:space=\"preserve\">{text}</text></revision></page>")


def _dump(pages):
  return ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">'
          + "".join(pages) + "</mediawiki>")


class CharTokenizer:
  """One id per byte; counts calls to see the cache at work."""

  def __init__(self, offset=0):
    self.offset, self.calls = offset, 0

  def encode(self, text):
    self.calls += 1
    return [b + self.offset for b in text.encode()]


class BosCharTokenizer(CharTokenizer):
  """CharTokenizer that, like a GGUF tokenizer with add_bos_token, starts what it encodes with
  BOS (id 0, no byte of the texts below)."""

  bos_id = 0

  def __init__(self, add_bos=True):
    super().__init__()
    self.add_bos = add_bos

  def encode(self, text):
    return [self.bos_id] * self.add_bos + super().encode(text)


class DataTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = testlib.tempdir(self)
    self.cache = testlib.asset_cache(self)

  def test_wikitext_to_plain(self):
    wiki = ("'''Albedo''' is [[File:A.png|thumb|caption]] the [[reflection|reflect]]ion"
            "<ref name=\"a\">Cite {{cite web|x=1}}</ref> of light<ref name=\"b/c\"/>.\n"
            "== History ==\n{| class=\"wikitable\"\n|-\n| cell\n|}\n<!-- hidden -->\n"
            "Measured {{convert|1|m}} <math>x^2</math> daily. [[Category:Optics]] [[de:Albedo]]")
    self.assertEqual(data.wikitext_to_plain(wiki),
                     "Albedo is the reflection of light.\nHistory\nMeasured daily.")

  def test_mediawiki_dump_split_by_article_is_deterministic(self):
    pages = [_page(f"Article {i}", f"Body of article {i}. " * 5) for i in range(12)]
    pages += [_page("Redirect", "#REDIRECT [[Article 1]]", redirect=True),
              _page("Wikipedia:About", "project page", ns=4)]
    path = self.tmp / "dump.xml.bz2"
    path.write_bytes(bz2.compress(_dump(pages).encode()))
    corpus = data.load_corpus(str(path), calibration_fraction=0.25)
    self.assertLen(corpus.calibration, 3)
    self.assertLen(corpus.test, 9)
    self.assertEmpty(set(corpus.calibration) & set(corpus.test))
    self.assertEqual(set(corpus.calibration) | set(corpus.test),
                     {f"Body of article {i}. " * 4 + f"Body of article {i}." for i in range(12)})
    # The split depends on the articles, not on their order in the file.
    shuffled = self.tmp / "shuffled.xml"
    shuffled.write_text(_dump(pages[::-1]))
    again = data.load_corpus(str(shuffled), calibration_fraction=0.25)
    self.assertEqual(again.calibration, corpus.calibration)
    self.assertEqual(again.test, corpus.test)

  def test_wikitext_raw_file_and_folder(self):
    raw = (" = Alpha = \n\n Alpha text . \n\n = = Section = = \n\n More alpha . \n\n"
           " = Beta = \n\n Beta text . \n\n = Gamma = \n\n Gamma text . \n")
    (self.tmp / "wiki.test.raw").write_text(raw)
    corpus = data.load_corpus(str(self.tmp / "wiki.test.raw"), calibration_fraction=0.34)
    articles = sorted(corpus.calibration + corpus.test)
    self.assertLen(articles, 3)
    self.assertIn("= = Section = =", articles[0])  # subsections stay with their article
    self.assertTrue(articles[1].startswith(" = Beta = "))
    (self.tmp / "wiki.train.raw").write_text(" = Delta = \n\n Delta text . \n")
    folder = data.load_corpus(str(self.tmp))
    self.assertEqual(folder.calibration, [" = Delta = \n\n Delta text . "])
    self.assertLen(folder.test, 3)

  def test_plain_text_blocks(self):
    (self.tmp / "t.txt").write_text("one\nstill one\n\n\ntwo\n\nthree\n\nfour\n")
    corpus = data.load_corpus(str(self.tmp / "t.txt"), calibration_fraction=0.5)
    self.assertCountEqual(corpus.calibration + corpus.test, ["one\nstill one", "two", "three", "four"])
    self.assertLen(corpus.calibration, 2)

  def test_bad_inputs(self):
    with self.assertRaisesRegex(ValueError, "neither a known corpus"):
      data.load_corpus(str(self.tmp / "missing.txt"))
    (self.tmp / "bad.xml").write_text("<mediawiki><page>")
    with self.assertRaisesRegex(ValueError, "bad.xml is not a readable MediaWiki"):
      data.load_corpus(str(self.tmp / "bad.xml"))
    with self.assertRaisesRegex(ValueError, "calibration_fraction"):
      data.load_corpus("enwiki-excerpt", calibration_fraction=1.0)
    (self.tmp / "empty.txt").write_text("\n\n")
    with self.assertRaisesRegex(ValueError, "holds no text"):
      data.load_corpus(str(self.tmp / "empty.txt"))

  def test_windows_non_overlapping_strided_and_spread(self):
    tok = CharTokenizer()
    texts = ["abcdefghij", "klmnopqrstuvwxyz"]
    ids = np.frombuffer("\n\n".join(texts).encode(), np.uint8).astype(np.int32)  # 28 tokens
    w = data.token_windows(texts, tok, 8)
    np.testing.assert_array_equal(w, ids[:24].reshape(3, 8))
    self.assertEqual(w.dtype, np.int32)
    w = data.token_windows(texts, tok, 8, stride=4)
    np.testing.assert_array_equal(w, np.stack([ids[s:s + 8] for s in range(0, 21, 4)]))
    w = data.token_windows(texts, tok, 4, max_windows=3)  # 7 windows -> first, middle, last
    np.testing.assert_array_equal(w, np.stack([ids[0:4], ids[12:16], ids[24:28]]))
    with self.assertRaisesRegex(ValueError, "fewer than seq_len=64"):
      data.token_windows(texts, tok, 64)
    with self.assertRaisesRegex(ValueError, "stride=9"):
      data.token_windows(texts, tok, 8, stride=9)
    with self.assertRaisesRegex(ValueError, "seq_len=1"):
      data.token_windows(texts, tok, 1)

  def test_bos_first_windows(self):
    tok = BosCharTokenizer()
    texts = ["abcdefghij", "klmnopqrstuvwxyz"]
    stream = np.frombuffer("\n\n".join(texts).encode(), np.uint8).astype(np.int32)  # 28 tokens
    # Consecutive windows: BOS, then 7 stream tokens each, the stream's own BOS not repeated.
    w = data.token_windows(texts, tok, 8, bos=True)
    self.assertEqual((w.shape, w.dtype), ((4, 8), np.int32))
    np.testing.assert_array_equal(w[:, 0], 0)
    np.testing.assert_array_equal(w[:, 1:].ravel(), stream)  # every stream token once, in order
    # The targets (each window's tokens after its first) never hold BOS.
    self.assertNotIn(0, w[:, 1:])
    w = data.token_windows(texts, tok, 8, stride=3, bos=True)
    np.testing.assert_array_equal(w, np.stack([np.r_[0, stream[s:s + 7]] for s in range(0, 22, 3)]))
    w = data.token_windows(texts, tok, 5, max_windows=3, bos=True)  # 7 windows: first, middle, last
    np.testing.assert_array_equal(w[:, 1:], np.stack([stream[0:4], stream[12:16], stream[24:28]]))
    with self.assertRaisesRegex(ValueError, r"stride=8 .*at most seq_len - 1 with BOS first"):
      data.token_windows(texts, tok, 8, stride=8, bos=True)
    with self.assertRaisesRegex(ValueError, r"fewer than seq_len=30 - 1 \(BOS first\)"):
      data.token_windows(texts, tok, 30, bos=True)
    # Without BOS the stream is cut as it is (its leading BOS stays where the tokenizer put it).
    w = data.token_windows(texts, tok, 8)
    np.testing.assert_array_equal(w, np.r_[0, stream][:24].reshape(3, 8))

  def test_bos_setting(self):
    adds, plain = BosCharTokenizer(), BosCharTokenizer(add_bos=False)
    self.assertTrue(data.bos_first("auto", adds))
    self.assertFalse(data.bos_first("auto", plain))
    self.assertFalse(data.bos_first("auto", CharTokenizer()))  # no BOS token at all
    for forced, want in (("true", True), ("True", True), (True, True), ("false", False),
                         (False, False)):
      self.assertEqual(data.bos_first(forced, plain), want)
      self.assertEqual(data.bos_first(forced, adds), want)
    with self.assertRaisesRegex(ValueError, "data.bos=True is invalid for this tokenizer: it has "
                                            "no BOS token"):
      data.bos_first(True, CharTokenizer())
    with self.assertRaisesRegex(ValueError, "data.bos='yes' is invalid: must be 'auto', True or "
                                            "False"):
      data.bos_first("yes", adds)

  def test_token_cache_keyed_by_text_and_tokenizer(self):
    tok = CharTokenizer()
    a = data.token_ids(["some text"], tok)
    b = data.token_ids(["some text"], tok)
    # Every call encodes the fingerprint's probe string; only the first encodes the text.
    self.assertEqual(tok.calls, 3)
    np.testing.assert_array_equal(a, b)
    other = CharTokenizer(offset=1)
    np.testing.assert_array_equal(data.token_ids(["some text"], other), a + 1)
    data.token_ids(["other text"], tok)
    self.assertEqual(tok.calls, 5)
    # A damaged cache entry is rebuilt, not trusted (whatever the entries' file format).
    entries = list((self.cache / "tokens").iterdir())
    self.assertLen(entries, 3)  # one per (text, tokenizer)
    for f in entries:
      f.write_bytes(b"junk")
    np.testing.assert_array_equal(data.token_ids(["some text"], tok), a)
    self.assertEqual(tok.calls, 7)

  def _dump(self, n=12):
    pages = [_page(f"Article {i}", f"Body of article {i}. " * 5) for i in range(n)]
    path = self.tmp / f"dump{n}.xml"
    path.write_text(_dump(pages))
    return path

  def test_article_cache_is_checked_and_rebuilt(self):
    path = self._dump()
    corpus = data.load_corpus(str(path))
    entry, = (self.cache / "corpora").iterdir()
    self.assertEqual(len(corpus.calibration) + len(corpus.test), 12)
    # Half the articles cut from the entry by hand, in whatever format it has.
    stored = json.loads(entry.read_text())
    articles = stored["articles"] if isinstance(stored, dict) else stored
    del articles[6:]
    entry.write_text(json.dumps(stored))
    with self.assertWarnsRegex(UserWarning, f"article cache {entry} is damaged, of another format "
                                            "or does not match its checksum: rebuilding it"):
      again = data.load_corpus(str(path))
    self.assertEqual(again, corpus)
    # Valid JSON of other shapes, and damaged files: rebuilt as well.
    for text in (b"[1, 2]", b'{"articles": 3}', b'[["title"]]', b"{}", b"null", b"{broken", b"\xff"):
      with self.subTest(text=text):
        entry.write_bytes(text)
        with self.assertWarnsRegex(UserWarning, "rebuilding it"):
          self.assertEqual(data.load_corpus(str(path)), corpus)
    # The rebuilt entry is used as it is, without a warning.
    with mock.patch.object(data, "_mediawiki_articles", side_effect=AssertionError("parsed again")):
      self.assertEqual(data.load_corpus(str(path)), corpus)

  def test_read_only_cache_is_read_and_not_written(self):
    tok = CharTokenizer()
    cached_dump = self._dump()
    corpus = data.load_corpus(str(cached_dump))
    ids = data.token_ids(corpus.test, tok)
    read_only = OSError(errno.EROFS, "Read-only file system")
    with mock.patch.object(files, "atomic_write", side_effect=read_only):
      # What the cache holds is read from it ...
      with mock.patch.object(data, "_mediawiki_articles", side_effect=AssertionError("parsed again")):
        self.assertEqual(data.load_corpus(str(cached_dump)), corpus)
      np.testing.assert_array_equal(data.token_ids(corpus.test, tok), ids)
      # ... and what it lacks is computed, with a warning naming the entry.
      with self.assertWarnsRegex(UserWarning, "cannot write the cache entry .*corpora.* "
                                              "\\(Read-only file system\\): going on without caching it"):
        self.assertLen(data.load_corpus(str(self._dump(5))).test, 4)
      with self.assertWarnsRegex(UserWarning, "cannot write the cache entry .*tokens"):
        np.testing.assert_array_equal(data.token_ids(["new text"], tok), list(b"new text"))
    self.assertLen(list((self.cache / "tokens").iterdir()), 1)

  def test_empty_calibration_split_says_why(self):
    (self.tmp / "one.txt").write_text("The only article.\nIt is long enough for many windows.\n")
    corpus = data.load_corpus(str(self.tmp / "one.txt"))
    self.assertLen(corpus.test, 1)
    with self.assertRaisesRegex(ValueError, r"split='calibration' is invalid for corpus '.*one.txt': "
                                            r"that split is empty: the corpus holds 1 article, and "
                                            r"articles go to the test split first \(calibration gets "
                                            r"round\(0.25 x articles\)"):
      corpus.split("calibration")
    (self.tmp / "wiki.train.raw").write_text("\n")
    (self.tmp / "wiki.test.raw").write_text(" = A = \n\n text . \n")
    with self.assertRaisesRegex(ValueError, "that split is empty, as its wiki.train.raw holds no text"):
      data.load_corpus(str(self.tmp)).split("calibration")


@pytest.mark.download
class EnwikiTest(absltest.TestCase):
  """The real corpus through the asset registry (the default cache; ~20 s the first time)."""

  def test_documented_split_sizes(self):
    corpus = data.load_corpus("enwiki-excerpt")
    self.assertLen(corpus.calibration, 26)
    self.assertLen(corpus.test, 80)
    self.assertEmpty(set(corpus.calibration) & set(corpus.test))
    self.assertNotIn("{{", "".join(corpus.test))
    self.assertNotIn("<ref", "".join(corpus.test))


if __name__ == "__main__":
  absltest.main()
