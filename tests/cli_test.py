"""The experiments' command line, run as a user runs it (a subprocess) on the tiny test model:
a bad setting is one line `error: <what> is invalid: <why>` with exit status 2, found before
any model is loaded or any folder written; a second run on a busy run folder is refused."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import time

from absl.testing import absltest

from anda_jax import files
import testlib

_REPO = pathlib.Path(__file__).resolve().parents[1]


def _sigint_as_in_a_terminal():
  """A child's Ctrl-C as a terminal delivers it: a shell starts background jobs (`pytest ... &`,
  nohup) with SIGINT ignored, the child would inherit that, and Python then installs no
  KeyboardInterrupt handler, so the Ctrl-C tests would test nothing."""
  signal.signal(signal.SIGINT, signal.SIG_DFL)


class CommandLineTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = testlib.tempdir(cls)
    cls.ckpt, _ = testlib.tiny_run_inputs(cls.tmp)  # and tmp/corpus.txt
    # A checkpoint whose config.json is damaged: loading it fails with another message, so a
    # setting refused with its own message was refused before the model was loaded.
    cls.unloadable = cls.tmp / "unloadable"
    cls.unloadable.mkdir()
    (cls.unloadable / "config.json").write_text("{damaged")
    (cls.tmp / "a_file").write_text("not a folder")

  def run_cli(self, module, *args, env=None):
    env = dict(os.environ, ANDA_JAX_CACHE=str(self.tmp / "cache"), **(env or {}))
    return subprocess.run([sys.executable, "-m", f"experiments.{module}", *args], cwd=_REPO, env=env,
                          capture_output=True, text=True, timeout=300)

  def experiment(self, module, *overrides, model=None, results="results", env=None):
    return self.run_cli(module, f"--config=configs/{module}.py:quick",
                        f"--config.model.name={model or self.unloadable}",
                        f"--config.data.corpus={self.tmp / 'corpus.txt'}",
                        f"--config.results_dir={self.tmp / results}", *overrides, env=env)

  def assert_one_line_error(self, out, pattern):
    self.assertEqual(out.returncode, 2, out.stderr)
    # One line, no stack. (Once a model is loaded, JAX may have logged its backends' start-up,
    # in absl's log format, before it.)
    lines = [l for l in out.stderr.splitlines() if not re.match(r"[IWEF]\d{4} ", l)]
    self.assertLen(lines, 1, out.stderr)
    self.assertRegex(lines[0], "^error: " + pattern)

  def test_bad_settings_are_one_line_before_loading_and_leave_no_folder(self):
    ro = "/proc/anda_jax_results"  # no one can create a folder there, root included
    cases = [
        ("sweep", ["--config.window_batch=-1"], r"window_batch=-1 is invalid: must be an integer >= 1"),
        ("sweep", ["--config.run_name=../escaped"], r"run_name='../escaped' is invalid: must be a "
                                                    "folder name inside results_dir"),
        ("sweep", [f"--config.results_dir={self.tmp / 'a_file'}"], r"results_dir .*a_file' is "
                                                                   "invalid: it is a file"),
        ("sweep", [f"--config.results_dir={ro}"], r"results_dir='.*' is invalid: cannot write in"),
        ("search", ["--config.uniform_m=(0, 4)"], r"uniform_m\[0\]=0 is invalid"),
        ("search", ["--config.tolerances=(-0.1,)"], r"tolerances=\(-0.1,\) is invalid"),
        ("sensitivity", ["--config.mantissa_bits=(30,)"], r"mantissa_bits\[0\]=30 is invalid"),
        ("sweep", ["--config.window_batch=abc"], r"--config.window_batch=abc is invalid: "),
    ]
    for module, overrides, pattern in cases:
      with self.subTest(module=module, overrides=overrides):
        self.assert_one_line_error(self.experiment(module, *overrides), pattern)
    self.assertFalse((self.tmp / "results").exists())
    self.assertFalse((self.tmp / "escaped").exists())

  def test_none_is_a_value_of_the_integer_settings(self):
    # data.windows None: every window of the split; window_batch None: sized automatically.
    # A setting that takes no None says so in its own check's words.
    out = self.experiment("sweep", "--config.data.windows=None", "--config.window_batch=None",
                          "--config.config_batch=0")
    self.assert_one_line_error(out, r"config_batch=0 is invalid: must be an integer >= 1 or None")
    out = self.experiment("sweep", "--config.data.seq_len=None")
    self.assert_one_line_error(out, r"data.seq_len=None is invalid: must be an integer >= 2$")
    out = self.experiment("sweep", "--config.data.windows=None", "--config.data.seq_len=64",
                          "--config.format.group_sizes=(8,)", "--config.mantissa_bits=(4,)",
                          "--config.types=('all',)", model=self.ckpt, results="all_windows")
    self.assertEqual(out.returncode, 0, out.stderr)
    setup = json.loads((self.tmp / "all_windows" / "quickstart" / "setup.json").read_text())
    self.assertIsNone(setup["data"]["windows"])
    self.assertGreater(setup["windows_shape"][0], 3)  # the quick variant's 3: all of them here

  def test_unknown_key_and_bad_config_file(self):
    out = self.experiment("search", "--config.tolerance=(0.1,)")
    self.assert_one_line_error(out, r"config key 'tolerance' .* is invalid: configs/search.py has no "
                                    "such setting; the nearest valid keys: tolerances")
    out = self.run_cli("sweep", "--config=configs/sweep.py:fast")
    self.assert_one_line_error(out, r"--config=configs/sweep.py:fast is invalid: config argument "
                                    "'fast' is invalid")

  def test_traceback_flag_shows_the_stack(self):
    out = self.experiment("sweep", "--config.window_batch=-1", "--traceback")
    self.assertNotEqual(out.returncode, 0)
    self.assertIn("Traceback (most recent call last)", out.stderr)
    self.assertIn("window_batch=-1 is invalid", out.stderr)

  def test_a_second_run_on_the_same_folder_is_refused(self):
    run_dir = self.tmp / "busy" / "quickstart"
    with files.locked(run_dir / ".lock"):  # another run holds the folder
      out = self.experiment("sweep", "--config.format.group_sizes=(8,)", model=self.ckpt,
                            results="busy")
    self.assert_one_line_error(out, re.escape(f"{run_dir}/.lock is locked by another process "
                                              f"(pid {os.getpid()})") + ".*wait for that one")
    self.assertFalse((run_dir / "results.jsonl").exists())
    # Once it is free, the same command runs.
    out = self.experiment("sweep", "--config.format.group_sizes=(8,)", "--config.mantissa_bits=(4,)",
                          "--config.types=('all',)", model=self.ckpt, results="busy")
    self.assertEqual(out.returncode, 0, out.stderr)
    self.assertLen((run_dir / "results.jsonl").read_text().splitlines(), 2)

  def test_mesh_is_refused_in_one_line_before_results_and_matmul_precision_is_recorded(self):
    tiny = dict(model=self.ckpt, results="scale")
    out = self.experiment("sweep", "--config.mesh=(2,4)", **tiny)
    self.assert_one_line_error(out, re.escape("mesh=(2, 4) is invalid: must be (config_shards, "
                                              "model_shards), two positive integers whose product "
                                              "is the number of devices, 1"))
    # 4 devices: (1, 4) splits the o product's K = 32 into shards of 8, not whole groups of 16.
    four = dict(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = self.experiment("sweep", "--config.mesh=(1,4)", "--config.format.group_sizes=(16,)",
                          env=four, **tiny)
    self.assert_one_line_error(out, re.escape(
        "mesh=(1, 4) is invalid for this model: the o product's K = 32 splits into 4 model shards "
        "of 8, which is not a multiple of the activation group size G = 16"))
    self.assertFalse((self.tmp / "scale" / "quickstart").exists())
    # The precision of the float products changes results on TPU and GPU: a run records it.
    small = ["--config.format.group_sizes=(8,)", "--config.mantissa_bits=(4,)", "--config.types=('all',)"]
    out = self.experiment("sweep", *small, "--config.model.matmul_precision=default", **tiny)
    self.assertEqual(out.returncode, 0, out.stderr)
    setup = json.loads((self.tmp / "scale" / "quickstart" / "setup.json").read_text())
    self.assertEqual(setup["model"]["matmul_precision"], "default")
    self.assert_one_line_error(self.experiment("sweep", *small, **tiny),
                               "run folder .* is invalid for these settings: .*"
                               "model.matmul_precision: 'default' -> 'highest'")

  def test_ctrl_c_during_a_run_says_what_was_kept_and_the_same_command_resumes(self):
    flags = ["--config=configs/sweep.py:quick", f"--config.model.name={self.ckpt}",
             f"--config.data.corpus={self.tmp / 'corpus.txt'}", f"--config.results_dir={self.tmp / 'ctrl_c'}",
             "--config.format.group_sizes=(8,)", "--config.mantissa_bits=(3,4,5)", "--config.types=('all',)",
             "--config.config_batch=1"]
    # Ctrl-C right after the first rows are appended: Python's SIGINT handler raises
    # KeyboardInterrupt wherever the program is; here it is raised at that point.
    script = f"""
        import runpy, sys
        from experiments.harness import run_folder
        append = run_folder.Results.append
        def append_then_interrupt(self, rows):
          append(self, rows)
          raise KeyboardInterrupt
        run_folder.Results.append = append_then_interrupt
        sys.argv = ["sweep", *{flags!r}]
        runpy.run_module("experiments.sweep", run_name="__main__")
        """
    env = dict(os.environ, ANDA_JAX_CACHE=str(self.tmp / "cache"))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=_REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    run_dir = self.tmp / "ctrl_c" / "quickstart"
    self.assertEqual(out.returncode, 130, out.stderr)
    self.assertNotIn("Traceback", out.stderr)
    lines = [l for l in out.stderr.splitlines() if l.strip() and not re.match(r"[IWEF]\d{4} |sweep:", l)]
    self.assertEqual(lines, [f"interrupted: the run folder {run_dir} keeps what was done (results.jsonl, "
                             "setup.json): run the same command again to resume"])
    kept = len((run_dir / "results.jsonl").read_text().splitlines())
    self.assertBetween(kept, 1, 3)
    out = self.run_cli("sweep", *flags)
    self.assertEqual(out.returncode, 0, out.stderr)
    self.assertIn(f"4 configurations, {kept} already done, {4 - kept} to go", out.stderr)
    self.assertLen((run_dir / "results.jsonl").read_text().splitlines(), 4)

  def test_ctrl_c_while_the_command_starts_is_one_line(self):
    env = dict(os.environ, ANDA_JAX_CACHE=str(self.tmp / "cache"))
    proc = subprocess.Popen([sys.executable, "-m", "experiments.sweep", "--config=configs/sweep.py:quick",
                             f"--config.model.name={self.ckpt}", f"--config.data.corpus={self.tmp / 'corpus.txt'}",
                             "--config.format.group_sizes=(8,)", f"--config.results_dir={self.tmp / 'started'}"],
                            cwd=_REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_as_in_a_terminal)
    time.sleep(1.0)  # importing JAX and the experiment takes seconds
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    # 130 from an exit, or killed by SIGINT as Python does after an uncaught KeyboardInterrupt
    # (a shell shows 130 for both).
    self.assertIn(proc.returncode, (130, -signal.SIGINT), err)
    self.assertNotIn("Traceback", err)
    lines = [l for l in err.splitlines() if l.strip() and not re.match(r"[IWEF]\d{4} ", l)]
    self.assertLen(lines, 1, err)
    self.assertRegex(lines[0], "^interrupted: nothing was written")
    self.assertFalse((self.tmp / "started").exists())

  def test_ctrl_c_in_a_garbage_collection_callback_is_not_lost(self):
    # JAX registers a gc callback; Python ignores (prints) an exception raised in one, so a
    # Ctrl-C landing there would be lost, and the command would go on.
    script = """
        import gc, sys, time
        import experiments
        def interrupted_once(phase, info):
          gc.callbacks.remove(interrupted_once)
          raise KeyboardInterrupt
        gc.callbacks.append(interrupted_once)
        gc.collect()
        time.sleep(30)
        print("went on")
        """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=_REPO,
                         capture_output=True, text=True, timeout=300,
                         preexec_fn=_sigint_as_in_a_terminal)
    self.assertIn(out.returncode, (130, -signal.SIGINT), out.stderr)
    self.assertEqual(out.stdout, "")
    self.assertEqual(out.stderr.strip(), "interrupted: nothing was written: run the command again")

  def test_generate_refuses_bad_precision_before_loading(self):
    for value, why in (("abc", "must be one integer or four"), ("25", r"every M must be in \[0, 24\]"),
                       ("-3", r"every M must be in \[0, 24\]"), ("8,8", "must be one integer or four")):
      with self.subTest(value):
        out = self.run_cli("generate", f"--model={self.unloadable}", f"--precision={value}")
        self.assert_one_line_error(out, f"--precision='{value}' is invalid: {why}")

  def test_generate_refuses_a_prompt_beyond_the_context(self):
    short = testlib.make_checkpoint(self.tmp / "short_context")
    config = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps(dict(config, max_position_embeddings=24)))
    out = self.run_cli("generate", f"--model={short}", "--prompt=" + "The quick brown fox " * 4,
                       "--nochat")
    self.assert_one_line_error(out, r"--prompt is invalid: it has \d+ tokens, and the model's "
                                    "context is 24 tokens")
    out = self.run_cli("generate", f"--model={short}", "--prompt=The quick brown fox", "--nochat",
                       "--max_new_tokens=20", "--precision=6", "--group_size=8")
    self.assertEqual(out.returncode, 0, out.stderr)
    self.assertRegex(out.stderr, r"note: the prompt has \d+ tokens and the model's context is 24: "
                                 r"generating at most \d tokens instead of 20")
    self.assertIn("[Anda G=8 M=[6, 6, 6, 6]] The quick brown fox", out.stdout)


if __name__ == "__main__":
  absltest.main()
