"""The experiments over many devices and processes, on the tiny test model. A multi-process run
as users start one: two local processes of `python -m experiments.sweep
--config.distributed=True` joined by jax.distributed on the CPU (gloo collectives). Their rows
equal a single process's; only process 0 writes; when it is killed mid-run, the other stops,
the files stay readable and a rerun resumes. And --config.mesh reaches every evaluation of
the sweep, the sensitivity study and the search.

Only 127.0.0.1 is bound: the coordinator through JAX_COORDINATOR_BIND_ADDRESS, gloo's
listening sockets by passing it the hostname (see _LAUNCH). Every wait has a timeout."""

import functools
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

from absl.testing import absltest
import numpy as np

from anda_jax import files
from experiments.harness import run_folder
from experiments import sweep
import testlib

# gloo (JAX's CPU collectives) listens on the address the host's name resolves to, which may
# be a public one; this test binds loopback only, so it hands gloo the hostname itself.
_LAUNCH = """
import functools, runpy, sys
from jax._src.lib import _jax
_jax.make_gloo_tcp_collectives = functools.partial(_jax.make_gloo_tcp_collectives, hostname="127.0.0.1")
sys.argv[0] = "experiments.sweep"
runpy.run_module("experiments.sweep", run_name="__main__", alter_sys=True)
"""
_TIMEOUT = 120  # seconds any one run may take (a hung collective fails the test, not CI)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class MultiProcessSweepTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = testlib.tempdir(cls)
    cls.ckpt, cls.corpus = testlib.tiny_run_inputs(cls.tmp)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device per process
    cls.env = dict(env, JAX_PLATFORMS="cpu", ANDA_JAX_CACHE=str(cls.tmp / "cache"))

  def start(self, results_dir: pathlib.Path, log: pathlib.Path, *extra: str, env=None):
    """One process of the quick sweep on the tiny model (G = 8, 6 M values, 2 configurations a
    batch: 16 batches, so a kill after the first lands mid-run)."""
    args = ["--config=configs/sweep.py:quick", f"--config.model.name={self.ckpt}",
            f"--config.data.corpus={self.corpus}", f"--config.results_dir={results_dir}",
            "--config.format.group_sizes=(8,)", "--config.mantissa_bits=(3,4,5,6,7,8)",
            "--config.config_batch=2", *extra]
    with log.open("w") as out:
      proc = subprocess.Popen([sys.executable, "-c", _LAUNCH, *args], cwd=testlib.REPO,
                              env=env or self.env, stdout=out, stderr=subprocess.STDOUT)
    self.addCleanup(functools.partial(_kill, proc))
    return proc

  def start_pair(self, name: str, results_dirs):
    """Processes 0 and 1 of one run, joined through a fresh port on 127.0.0.1."""
    port = _free_port()
    env = dict(self.env, JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}")
    return [self.start(results_dirs[i], self.tmp / f"{name}.{i}.log", "--config.distributed=True",
                       f"--config.coordinator_address=127.0.0.1:{port}", "--config.num_processes=2",
                       f"--config.process_id={i}", env=env)
            for i in range(2)]

  def wait_ok(self, procs, name):
    for i, proc in enumerate(procs):
      self.assertEqual(proc.wait(timeout=_TIMEOUT), 0, self.log(f"{name}.{i}"))

  def log(self, name: str) -> str:
    return (self.tmp / f"{name}.log").read_text()[-3000:]

  def assert_rows_equal(self, got: dict, want: dict):
    self.assertEqual(sorted(got), sorted(want))
    for key, row in want.items():
      self.assertEqual({k: v for k, v in got[key].items() if k not in ("ppl", "nll", "seconds")},
                       {k: v for k, v in row.items() if k not in ("ppl", "nll", "seconds")}, key)
      np.testing.assert_allclose(got[key]["ppl"], row["ppl"], rtol=1e-6, err_msg=key)

  def rows(self, run_dir: pathlib.Path) -> dict:
    rows = run_folder.read_rows(run_dir / "results.jsonl", sweep.ROW_FIELDS)
    ids = [r["id"] for r in rows]
    self.assertLen(set(ids), len(ids), f"a configuration written twice: {ids}")
    return {r["id"]: r for r in rows}

  def test_two_processes_give_the_single_process_rows_and_resume_after_a_kill(self):
    t0 = time.time()
    single = self.start(self.tmp / "single", self.tmp / "single.log")
    self.assertEqual(single.wait(timeout=_TIMEOUT), 0, self.log("single"))
    want = self.rows(self.tmp / "single" / "quickstart")
    self.assertLen(want, 1 + 5 * 6)

    # A shared results folder (a cluster's shared file system): process 1 must neither take the
    # folder's lock (process 0 would be refused) nor append a row (it would appear twice).
    shared = self.tmp / "shared"
    self.wait_ok(self.start_pair("shared", [shared, shared]), "shared")
    self.assert_rows_equal(self.rows(shared / "quickstart"), want)
    # Process 0 refused (another run holds the folder): every process stops with its message.
    with files.locked(shared / "quickstart" / ".lock"):
      procs = self.start_pair("refused", [shared, shared])
      for i, proc in enumerate(procs):
        self.assertEqual(proc.wait(timeout=_TIMEOUT), 2, self.log(f"refused.{i}"))
        self.assertRegex(self.log(f"refused.{i}"), r"\nerror: .*quickstart/.lock is locked by another process")

    # A folder per process (a TPU pod's hosts have disks of their own). Process 0, the writer,
    # is killed once its first rows are written: process 1 must stop, not wait forever.
    dirs = [self.tmp / "own0", self.tmp / "own1"]
    results = dirs[0] / "quickstart" / "results.jsonl"
    procs = self.start_pair("killed", dirs)
    deadline = time.time() + _TIMEOUT
    while not (results.exists() and results.read_bytes().count(b"\n")) and time.time() < deadline:
      self.assertIsNone(procs[0].poll(), self.log("killed.0"))
      time.sleep(0.01)
    procs[0].send_signal(signal.SIGKILL)
    t_kill = time.time()
    self.assertNotEqual(procs[1].wait(timeout=60), 0, self.log("killed.1"))
    stopped = time.time() - t_kill
    done = self.rows(dirs[0] / "quickstart")  # readable: whole rows, flushed as they came
    self.assertBetween(len(done), 1, len(want) - 1)
    with files.locked(dirs[0] / "quickstart" / ".lock", wait=False):  # the kernel freed it
      pass

    # The same command again resumes: process 1 sees no file, yet skips what process 0 has.
    self.wait_ok(self.start_pair("resumed", dirs), "resumed")
    self.assertIn(f"{len(done)} already done", self.log("resumed.0"))
    self.assertIn(f"{len(done)} already done", self.log("resumed.1"))
    self.assert_rows_equal(self.rows(dirs[0] / "quickstart"), want)
    self.assertFalse(dirs[1].exists(), "process 1 wrote in its results folder")
    print(f"5 runs in {time.time() - t0:.0f} s; process 0 killed after {len(done)} of "
          f"{len(want)} rows, process 1 stopped {stopped:.1f} s later")


class MeshSettingTest(absltest.TestCase):

  def test_every_evaluation_of_the_experiments_runs_on_the_configured_mesh(self):
    tmp = testlib.tempdir(self)
    ckpt, corpus = testlib.tiny_run_inputs(tmp)
    script = f"""
        import collections, json
        from unittest import mock
        from anda_jax.evaluation import evaluate
        from configs import search as search_config, sensitivity as sensitivity_config, sweep as sweep_config
        from experiments import search, sensitivity, sweep

        meshes, original = collections.defaultdict(set), evaluate.window_nll_sums
        def recorded(*args, mesh="auto", **kwargs):  # every evaluation ends up here
          meshes[name].add(repr(mesh if mesh in (None, "auto") else dict(mesh.shape)))
          return original(*args, mesh=mesh, **kwargs)

        for name, module, config in (("sweep", sweep, sweep_config), ("sensitivity", sensitivity, sensitivity_config),
                                     ("search", search, search_config)):
          c = config.get_config("quick")
          c.model.name, c.data.corpus, c.results_dir = {str(ckpt)!r}, {str(corpus)!r}, {str(tmp)!r}
          c.data.seq_len, c.data.windows, c.format.group_sizes, c.mesh = 24, 2, (8,), (2, 2)
          if name == "sweep":
            c.mantissa_bits, c.types = (4,), ("all",)
          if name == "search":
            c.test.windows, c.start_m, c.min_m, c.uniform_m, c.tolerances = 2, 4, 3, (3,), (0.01,)
            c.other_formats = ("mxint8:block_size=8",)  # whole blocks in a model shard of K = 16
          with mock.patch.object(evaluate, "window_nll_sums", recorded):
            module.run(c)
        print(json.dumps({{k: sorted(v) for k, v in meshes.items()}}))
        """
    meshes = testlib.run_with_cpu_devices(self, script, 4)
    self.assertEqual(meshes, {name: ["{'config': 2, 'model': 2}"]
                              for name in ("sweep", "sensitivity", "search")})


def _kill(proc: subprocess.Popen) -> None:
  if proc.poll() is None:
    proc.kill()
    proc.wait(timeout=30)


if __name__ == "__main__":
  absltest.main()
