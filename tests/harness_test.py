"""Tests for experiments/harness/: the run folder (setup record, results files, lock, paths),
non-finite perplexities and the model's content digest. No model is loaded here."""

import json
import math
import os
import pathlib
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax

from anda_jax import assets
from anda_jax import files
from configs import sweep as sweep_config
from experiments.harness import cli
from experiments.harness import compile_cache
from experiments.harness import config_checks
from experiments.harness import distributed
from experiments.harness import loading
from experiments.harness import perplexity
from experiments.harness import run_folder
import testlib
from anda_jax import models


def _config(tmp: pathlib.Path, **changes):
  c = sweep_config.get_config("quick")
  c.results_dir, c.run_name = str(tmp / "results"), "run"
  for k, v in changes.items():
    c[k] = v
  return c


class ResultsFileTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = testlib.tempdir(self)
    self.path = self.tmp / "results.jsonl"

  def test_broken_lines_anywhere_are_moved_aside_with_a_warning(self):
    good = [dict(id="a", ppl=1.5), dict(id="b", ppl=2.5), dict(id="c", ppl=3.5)]
    lines = [json.dumps(good[0]).encode(), b"garbage", b"{}", json.dumps(dict(ppl=1.0)).encode(),
             json.dumps(good[1]).encode(), b'{"id": "\xff\xfe"}', b"[1, 2]",
             json.dumps(good[2]).encode(), b'{"id": "torn']
    self.path.write_bytes(b"\n".join(lines))
    with self.assertLogs("absl", "WARNING") as logs:
      results = run_folder.Results(self.tmp, required=("id", "ppl"))
    self.assertEqual(list(results.rows), ["a", "b", "c"])
    # Every broken line is named by file and line in a warning ...
    warned = "\n".join(logs.output)
    for line_no in (2, 3, 4, 6, 7, 9):
      self.assertIn(f"{self.path}:{line_no}:", warned)
    self.assertIn("not UTF-8", warned)
    self.assertIn("without 'id'", warned)
    # ... and kept, byte for byte, in the side file; the results file holds the good rows only.
    side = self.tmp / "results.jsonl.broken"
    self.assertEqual(side.read_bytes().splitlines(), [lines[i] for i in (1, 2, 3, 5, 6, 8)])
    self.assertEqual([json.loads(l) for l in self.path.read_text().splitlines()], good)
    # The next append starts on a clean line, and a rerun finds nothing broken.
    results.append([dict(id="d", ppl=4.5)])
    with self.assertNoLogs("absl", "WARNING"):
      again = run_folder.Results(self.tmp, required=("id", "ppl"))
    self.assertEqual(list(again.rows), ["a", "b", "c", "d"])

  def test_readers_that_do_not_write_skip_without_touching_the_file(self):
    raw = b'{"id": "a", "ppl": 1}\ngarbage\n{"id": "b", "ppl": 2}\n'
    self.path.write_bytes(raw)
    with self.assertLogs("absl", "WARNING") as logs:
      rows = run_folder.read_rows(self.path, ("id", "ppl"))
    self.assertEqual([r["id"] for r in rows], ["a", "b"])
    self.assertIn(f"{self.path}:2: not a JSON line", logs.output[0])
    self.assertEqual(self.path.read_bytes(), raw)
    self.assertFalse((self.tmp / "results.jsonl.broken").exists())

  def test_non_finite_values_are_never_written_as_nan(self):
    results = run_folder.Results(self.tmp)
    with self.assertRaises(ValueError):
      results.append([dict(id="x", ppl=math.nan)])


class PerplexityFieldsTest(parameterized.TestCase):

  @parameterized.parameters(
      (math.log(20.0), dict(ppl=20.0, nll=math.log(20.0), finite=True), None),
      (800.0, dict(ppl=None, nll=800.0, finite=False), "inf"),  # math.exp overflows
      (math.nan, dict(ppl=None, nll=None, finite=False), "nan"),
      (math.inf, dict(ppl=None, nll=None, finite=False), "nan"))
  def test_fields(self, nll, expected, shown):
    fields = perplexity.perplexity_fields(nll)
    self.assertEqual(fields.keys(), expected.keys())
    for k, v in expected.items():
      if isinstance(v, float):
        self.assertAlmostEqual(fields[k], v)
      else:
        self.assertEqual(fields[k], v)
    json.dumps(fields, allow_nan=False)  # valid JSON
    if shown:
      self.assertEqual(perplexity.nonfinite_text(fields), shown)


class SetupTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = testlib.tempdir(self)

  def test_setup_records_batch_sizes_and_model_content(self):
    cfg = _config(self.tmp, window_batch=3, config_batch=2)
    setup = run_folder.setup_of(cfg, None, "ab" * 32)
    self.assertEqual((setup["window_batch"], setup["config_batch"]), (3, 2))
    self.assertEqual(setup["model"]["sha256"], "ab" * 32)

  def test_model_shards_are_part_of_the_setup(self):
    # A row-parallel product adds its shards' partial sums in another order, which moves low-M
    # cells (tests/sharding_test.py measures it): a run started on one model shard must not
    # resume on two. Config shards change no bit; one model shard is the setup of before.
    plain = run_folder.setup_of(_config(self.tmp), None, "ab" * 32)
    self.assertNotIn("model_shards", plain)
    for mesh, shards in (((2, 1), None), ((1, 1), None), ((1, 2), 2), ((2, 4), 4)):
      setup = run_folder.setup_of(_config(self.tmp, mesh=mesh), None, "ab" * 32)
      self.assertEqual(setup.get("model_shards"), shards, mesh)
      self.assertEqual({k: v for k, v in setup.items() if k != "model_shards"}, plain)
    run_folder.check_setup(self.tmp, plain)
    (self.tmp / "results.jsonl").write_text('{"id": "fp"}\n')
    on = lambda mesh: run_folder.setup_of(_config(self.tmp, mesh=mesh), None, "ab" * 32)
    run_folder.check_setup(self.tmp, on((2, 1)), write=False, partial=True)
    with self.assertRaisesRegex(ValueError, r"model_shards: \(not recorded\) -> 2"):
      run_folder.check_setup(self.tmp, on((1, 2)), write=False, partial=True)

  def test_bos_is_recorded_only_where_the_windows_start_with_it(self):
    # The runs recorded before the data.bos setting (docs/results, SmolLM2, whose tokenizer adds
    # no BOS) cut their windows from the stream alone: their setup.json must read the same.
    recorded = json.loads((pathlib.Path(__file__).resolve().parents[1] / "docs" / "results"
                           / "sweep_smollm2" / "setup.json").read_text())
    for value in ("auto", "true", "false"):
      cfg = _config(self.tmp)
      cfg.data.bos = value
      setup = run_folder.setup_of(cfg, None, "ab" * 32)
      self.assertEqual(sorted(setup["data"]), sorted(recorded["data"]), value)
      self.assertNotIn("bos_first", setup)
    self.assertNotIn("bos_first", recorded)
    self.assertEqual(run_folder.bos_setup(False), {})
    self.assertEqual(run_folder.bos_setup(True), dict(bos_first=True))
    run_folder.check_setup(self.tmp, setup | run_folder.bos_setup(True))
    (self.tmp / "results.jsonl").write_text('{"id": "fp"}\n')
    with self.assertRaisesRegex(ValueError, r"bos_first: True -> \(not recorded\)"):
      run_folder.check_setup(self.tmp, setup)
    with mock.patch.object(models, "load", side_effect=AssertionError("model loaded")):
      with self.assertRaisesRegex(ValueError, "data.bos='maybe' is invalid: must be 'auto', True "
                                              "or False"):
        cfg.data.bos = "maybe"
        config_checks.check_data_config(cfg.data)

  def test_a_setup_written_before_the_weights_were_recorded(self):
    # Weights used as stored are what the model's content holds, recorded or not; re-quantized
    # ones (int4_group_size) may have been loaded otherwise, so such a run is not resumed.
    weights = dict(weights={"Q4_1 -> INT4 asymmetric G=32 (as stored)": 4})
    for group, resumes in ((None, True), (32, False)):
      folder = self.tmp / f"g{group}"
      old = dict(model=dict(name="m", sha256="a" * 64, int4_group_size=group))
      run_folder.check_setup(folder, old)
      (folder / "results.jsonl").write_text('{"id": "fp"}\n')
      if resumes:
        run_folder.check_setup(folder, old | weights)
      else:
        with self.assertRaisesRegex(ValueError, "weights.Q4_1 -> INT4 .*: \\(not recorded\\) -> 4"):
          run_folder.check_setup(folder, old | weights)
      other = dict(weights={"Q4_1 -> float32": 4})
      recorded = self.tmp / f"recorded{group}"
      run_folder.check_setup(recorded, old | weights)
      (recorded / "results.jsonl").write_text('{"id": "fp"}\n')
      with self.assertRaisesRegex(ValueError, "weights"):
        run_folder.check_setup(recorded, old | other)

  def test_changed_settings_are_refused_with_one_message_saying_what_changed(self):
    run_folder.check_setup(self.tmp, dict(model=dict(name="m", sha256="a" * 64), window_batch=3))
    (self.tmp / "results.jsonl").write_text('{"id": "fp"}\n')
    run_folder.check_setup(self.tmp, dict(model=dict(name="m", sha256="a" * 64), window_batch=3))
    with self.assertRaises(ValueError) as e:
      run_folder.check_setup(self.tmp, dict(model=dict(name="m", sha256="b" * 64), window_batch=None))
    message = str(e.exception)
    self.assertNotIn("\n", message)
    self.assertIn(f"run folder '{self.tmp}' is invalid for these settings: the model's content changed", message)
    self.assertIn("model.sha256: aaaaaaaaaaaa… -> bbbbbbbbbbbb…", message)
    self.assertIn("window_batch: 3 -> None", message)
    self.assertIn("choose another --config.run_name, or remove", message)
    # Before loading, only the settings known then are compared.
    run_folder.check_setup(self.tmp, dict(window_batch=3), partial=True)
    with self.assertRaisesRegex(ValueError, "window_batch: 3 -> 4"):
      run_folder.check_setup(self.tmp, dict(window_batch=4), partial=True)

  def test_damaged_setup_is_refused_naming_the_file_and_the_fix(self):
    (self.tmp / "setup.json").write_text("")  # a full disk, before writes were atomic
    (self.tmp / "search.jsonl").write_text('{"split": "test"}\n')
    with self.assertRaisesRegex(ValueError, f"run folder '{self.tmp}' is invalid: its setup.json is "
                                            "damaged .*remove"):
      run_folder.check_setup(self.tmp, dict(a=1))

  def test_results_without_a_setup_are_refused(self):
    # An older version's run folder, or setup.json removed: whatever the rows were computed
    # with is unknown, so they are never adopted, before loading or after.
    for name in ("results.jsonl", "search.jsonl", "checkpoints/M4-norms.safetensors"):
      with self.subTest(name):
        folder = testlib.tempdir(self)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("rows")
        top = name.split("/")[0]
        for partial in (True, False):
          with self.assertRaisesRegex(
              ValueError, rf"run folder '{folder}' is invalid: it holds {top} but no setup.json, "
                          "so the settings its results were computed with are unknown; to start a "
                          "new run choose another --config.run_name, or remove"):
            run_folder.check_setup(folder, dict(window_batch=3), partial=partial)
        self.assertFalse((folder / "setup.json").exists())
    # Nothing but the lock, an empty results file and an empty folder: nothing to vouch for.
    (self.tmp / ".lock").write_text("")
    (self.tmp / "results.jsonl").write_text("")
    (self.tmp / "checkpoints").mkdir()
    run_folder.check_setup(self.tmp, dict(window_batch=3))
    self.assertEqual(json.loads((self.tmp / "setup.json").read_text()), dict(window_batch=3))

  def test_a_setup_beside_no_results_is_replaced(self):
    # A run that failed after writing setup.json but before its first row (an older version
    # left such folders): the corrected command is not refused, its settings are recorded.
    (self.tmp / ".lock").write_text("")
    (self.tmp / "setup.json").write_text(json.dumps(dict(impl="bitserial")))
    run_folder.check_setup(self.tmp, dict(impl="fake"), write=False, partial=True)
    run_folder.check_setup(self.tmp, dict(impl="fake"))
    self.assertEqual(json.loads((self.tmp / "setup.json").read_text()), dict(impl="fake"))
    (self.tmp / "results.jsonl").write_text('{"id": "fp"}\n')
    with self.assertRaisesRegex(ValueError, "impl: 'fake' -> 'bitserial'"):
      run_folder.check_setup(self.tmp, dict(impl="bitserial"))

  def test_setup_json_is_written_atomically(self):
    calls = []
    original = files.atomic_write_text

    def spy(path, text):
      calls.append(pathlib.Path(path).name)
      original(path, text)

    with mock.patch.object(files, "atomic_write_text", spy):
      run_folder.check_setup(self.tmp, dict(a=1))
    self.assertEqual(calls, ["setup.json"])
    self.assertEqual(json.loads((self.tmp / "setup.json").read_text()), dict(a=1))


class ModelDigestTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = testlib.tempdir(self)
    self.enterContext(mock.patch.dict(os.environ, {"ANDA_JAX_CACHE": str(self.tmp / "cache")}))

  def test_file_digest_is_cached_and_follows_the_content(self):
    model = self.tmp / "m.gguf"
    model.write_bytes(b"weights one")
    first = loading.model_sha256(str(model))
    self.assertEqual(first, assets.sha256_file(model))
    with mock.patch.object(assets, "sha256_file", side_effect=AssertionError("hashed again")):
      self.assertEqual(loading.model_sha256(str(model)), first)  # from the cache
    model.write_bytes(b"weights two")  # replaced in place: another size
    self.assertNotEqual(loading.model_sha256(str(model)), first)
    self.assertEqual(loading.model_sha256(str(model)), assets.sha256_file(model))

  def test_folder_digest_covers_the_files_the_loader_reads(self):
    folder = self.tmp / "ckpt"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
      (folder / name).write_text(name)
    first = loading.model_sha256(str(folder))
    (folder / "README.md").write_text("notes")
    self.assertEqual(loading.model_sha256(str(folder)), first)
    (folder / "model.safetensors").write_text("other weights")
    self.assertNotEqual(loading.model_sha256(str(folder)), first)

  def test_registry_model_is_its_pinned_digest(self):
    self.assertEqual(loading.model_sha256("smollm2-135m"), assets.REGISTRY["smollm2-135m"].sha256)


class RunFolderTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = testlib.tempdir(self)

  @parameterized.parameters("../escaped", "/tmp/abs", "a/b", "..", ".", "", "a\\b")
  def test_run_name_stays_inside_results_dir(self, name):
    with self.assertRaisesRegex(ValueError, "run_name=.* is invalid: must be a folder name inside results_dir"):
      config_checks.check_run_folder(_config(self.tmp, run_name=name))

  def test_results_dir_must_be_a_writable_folder(self):
    (self.tmp / "file").write_text("x")
    with self.assertRaisesRegex(ValueError, "results_dir .*file.* is invalid: it is a file, not a folder"):
      config_checks.check_run_folder(_config(self.tmp, results_dir=str(self.tmp / "file")))
    with self.assertRaisesRegex(ValueError, "results_dir=.* is invalid: .*file.* is a file, not a folder"):
      config_checks.check_run_folder(_config(self.tmp, results_dir=str(self.tmp / "file" / "sub")))
    with self.assertRaisesRegex(ValueError, "results_dir=.* is invalid: cannot write in"):
      config_checks.check_run_folder(_config(self.tmp, results_dir=_read_only_folder(self.tmp)))
    config_checks.check_run_folder(_config(self.tmp, results_dir=str(self.tmp / "new" / "deeper")))
    self.assertEqual(sorted(p.name for p in self.tmp.iterdir()), ["file"] + (["ro"] if os.geteuid() else []))

  def test_a_second_process_on_the_same_folder_is_refused(self):
    cfg = _config(self.tmp)
    with run_folder.open_run(cfg, {}):
      with self.assertRaisesRegex(files.LockedError, r"\.lock is locked by another process \(pid "
                                                     rf"{os.getpid()}\).*choose another --config.run_name"):
        with run_folder.open_run(cfg, {}):
          pass
    with run_folder.open_run(cfg, {}):  # released when the run ends
      pass

  def test_a_run_that_fails_before_writing_leaves_no_folder(self):
    cfg = _config(self.tmp)
    with self.assertRaisesRegex(ValueError, "model failed"):
      with run_folder.open_run(cfg, {}):
        raise ValueError("model failed")
    self.assertFalse(config_checks.run_dir(cfg).exists())

  def test_a_run_that_fails_before_its_first_row_leaves_nothing(self):
    cfg = _config(self.tmp)
    folder = config_checks.run_dir(cfg)
    with self.assertRaisesRegex(ValueError, "tokenizer failed"):
      with run_folder.open_run(cfg, {}):
        run_folder.check_setup(folder, dict(impl="fake"))
        raise ValueError("tokenizer failed")
    self.assertFalse(folder.exists())
    # A folder that was there before stays, without the setup.json of the failed run; its
    # results, once there are some, stay with theirs.
    folder.mkdir(parents=True)
    with self.assertRaises(KeyboardInterrupt):
      with run_folder.open_run(cfg, {}):
        run_folder.check_setup(folder, dict(impl="fake"))
        raise KeyboardInterrupt
    self.assertEqual([p.name for p in folder.iterdir()], [".lock"])
    with self.assertRaises(KeyboardInterrupt):
      with run_folder.open_run(cfg, {}):
        run_folder.Results(folder, dict(impl="fake")).append([dict(id="fp")])
        raise KeyboardInterrupt
    self.assertCountEqual([p.name for p in folder.iterdir()],
                          [".lock", "setup.json", "results.jsonl"])

  def test_a_refused_second_process_removes_nothing(self):
    cfg = _config(self.tmp)
    folder = config_checks.run_dir(cfg)
    with run_folder.open_run(cfg, {}):
      run_folder.check_setup(folder, dict(impl="fake"))  # the first run, before its first row
      with self.assertRaises(files.LockedError):
        with run_folder.open_run(cfg, {}):
          pass
      self.assertTrue((folder / "setup.json").exists())


def _read_only_folder(tmp: pathlib.Path) -> str:
  """A folder this process cannot write in: permission bits for a user, a kernel file system
  for root (which permission bits do not stop)."""
  if os.geteuid() == 0:
    return "/sys/anda_jax_results"
  ro = tmp / "ro"
  ro.mkdir()
  ro.chmod(0o555)
  return str(ro / "results")


class ConfigKeysTest(absltest.TestCase):

  def test_unknown_key_names_the_nearest_valid_keys(self):
    cfg = sweep_config.get_config()
    with self.assertRaisesRegex(ValueError, r"config key 'windows_batch' .* is invalid: .* no such "
                                            r"setting; the nearest valid keys: window_batch"):
      cli.check_override_keys(["prog", "--config=configs/sweep.py:quick", "--config.windows_batch=3"])
    with self.assertRaisesRegex(ValueError, "nearest valid keys: data.seq_len"):
      cli.check_override_keys(["prog", "--config=configs/sweep.py", "--config.seq_len=3"])
    cfg.unlock()
    cfg.batchsize = 3
    with self.assertRaisesRegex(ValueError, r"unknown config keys \['batchsize'\] are invalid"):
      config_checks.check_keys(cfg, sweep_config.get_config())


class ScaleSettingsTest(absltest.TestCase):
  """model.matmul_precision, mesh and the process settings: checked before anything is loaded,
  handed to the loader and to jax.distributed. (tests/cli_test.py runs them as commands,
  tests/distributed_test.py a run of two processes.)"""

  def setUp(self):
    super().setUp()
    self.tmp = testlib.tempdir(self)

  def test_matmul_precision_reaches_the_loader_and_the_setup(self):
    cfg = _config(self.tmp)
    cfg.model.matmul_precision = "default"
    with mock.patch.object(models, "load", return_value=("model", "tokenizer")) as load:
      loading.load_model(cfg.model)
    load.assert_called_once_with(cfg.model.name, int4_group_size=None, matmul_precision="default")
    self.assertEqual(run_folder.setup_of(cfg, None, "ab" * 32)["model"]["matmul_precision"], "default")
    self.assertEqual(sweep_config.get_config().model.matmul_precision, "highest")
    cfg.model.matmul_precision = "bf16"
    with self.assertRaisesRegex(ValueError, r"model.matmul_precision='bf16' is invalid: must be one "
                                            r"of \('highest', 'default'\)"):
      config_checks.check_model_config(cfg.model)

  def test_mesh_shape_is_checked_before_loading(self):
    for bad in ((2,), (0, 1), (2, 2.0), (True, 1), "2,4"):
      with self.subTest(bad):
        with self.assertRaisesRegex(ValueError, r"mesh=.* is invalid: must be None or \(config_shards, "
                                                r"model_shards\)"):
          config_checks.check_mesh(bad)
    config_checks.check_mesh(None)
    config_checks.check_mesh((1, 1))

  def test_process_settings_come_from_the_config_then_the_environment(self):
    cfg = _config(self.tmp, distributed=True)
    environ = dict(JAX_COORDINATOR_ADDRESS="10.0.0.1:1234", JAX_NUM_PROCESSES="4", JAX_PROCESS_ID="3")
    self.assertEqual(distributed.process_settings(cfg, environ),
                     dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3))
    self.assertEqual(distributed.process_settings(cfg, {}),  # None: JAX detects them (SLURM, TPU pod)
                     dict(coordinator_address=None, num_processes=None, process_id=None))
    cfg.process_id = 0
    self.assertEqual(distributed.process_settings(cfg, environ)["process_id"], 0)
    with self.assertRaisesRegex(ValueError, "environment variable JAX_NUM_PROCESSES='two' is invalid"):
      distributed.process_settings(cfg, dict(environ, JAX_NUM_PROCESSES="two"))

  def test_process_settings_are_checked(self):
    cases = [(dict(num_processes=2), "num_processes=2 is invalid without distributed=True"),
             (dict(distributed=True, coordinator_address="host"), "coordinator_address='host' is invalid: "
                                                                  "must be None or 'host:port'"),
             (dict(distributed=True, num_processes=2, process_id=2), r"process_id=2 is invalid: .*\[0, 1\]"),
             (dict(distributed=True, num_processes=0), "num_processes=0 is invalid")]
    for changes, message in cases:
      with self.subTest(str(changes)):
        with self.assertRaisesRegex(ValueError, message):
          config_checks.check_processes(_config(self.tmp, **changes))
    config_checks.check_processes(_config(self.tmp, distributed=True, coordinator_address="127.0.0.1:80",
                                   num_processes=2, process_id=1))


class CompilationCacheTest(absltest.TestCase):
  """A compilation cache that cannot be written (a shared, read-only cache) is read and not
  written, or left off when its folder cannot be made: never a warning per program."""

  _SETTINGS = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
               "jax_persistent_cache_min_compile_time_secs", "jax_persistent_cache_min_entry_size_bytes")

  def setUp(self):
    super().setUp()
    saved = {k: getattr(jax.config, k) for k in self._SETTINGS}  # process-wide: restored after
    self.addCleanup(lambda: [jax.config.update(k, v) for k, v in saved.items()])
    self.cache = testlib.asset_cache(self)
    jax.config.update("jax_compilation_cache_dir", None)

  def test_writable_folder_stores_every_program(self):
    folder = compile_cache.use_compilation_cache(_config(self.cache))
    self.assertEqual(folder, compile_cache.compilation_cache_dir())
    self.assertTrue(folder.is_dir())
    self.assertEqual(jax.config.jax_persistent_cache_min_compile_time_secs, 0.0)

  def test_read_only_folder_is_read_but_never_written(self):
    compile_cache.compilation_cache_dir().mkdir(parents=True)
    with testlib.warnings_logged(compile_cache.logging) as warned, \
         mock.patch.object(compile_cache.os, "access", return_value=False):
      folder = compile_cache.use_compilation_cache(_config(self.cache))
    self.assertEqual(folder, compile_cache.compilation_cache_dir())
    self.assertTrue(jax.config.jax_enable_compilation_cache)
    self.assertEqual(jax.config.jax_persistent_cache_min_compile_time_secs, float("inf"))
    self.assertEqual(warned, [f"the compilation cache {folder} is read-only: its programs are loaded, "
                              "new ones compiled but not stored"])

  def test_folder_that_cannot_be_made_leaves_the_cache_off(self):
    # No one can create a folder in /proc, root included.
    with mock.patch.dict(os.environ, {"ANDA_JAX_CACHE": "/proc/anda_jax_cache"}), \
         testlib.warnings_logged(compile_cache.logging) as warned:
      self.assertIsNone(compile_cache.use_compilation_cache(_config(self.cache)))
    self.assertFalse(jax.config.jax_enable_compilation_cache)
    self.assertLen(warned, 1)
    self.assertRegex(warned[0], "cannot create the compilation cache /proc/anda_jax_cache/.*: "
                                "compiling without it")


if __name__ == "__main__":
  absltest.main()
