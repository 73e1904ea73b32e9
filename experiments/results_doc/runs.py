"""The recorded runs: their folders under docs/results, the commands that wrote them (checked
against the files, setting by setting), the CPUs they ran on, and reading their files."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import pathlib
import shlex

from absl import flags
from ml_collections import config_flags

from experiments import finetune as finetune_experiment
from experiments import formats_report
from experiments import search as search_experiment
from experiments import search_compare
from experiments import search_resolution
from experiments.harness import perplexity
from experiments.harness import run_folder

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
DOC = ROOT / "docs" / "results.md"

# The CPUs the recorded runs ran on (setup.json does not record it).
EPYC = "AMD EPYC (Zen 5, AVX-512), 2 cores, idle"
EPYC_SHARED = "AMD EPYC (Zen 5, AVX-512), 2 cores, shared with other jobs"
NOT_RECORDED = "CPU not recorded"
WINDOW_BATCH_NOTE = ("setup.json records `window_batch` None (windows per forward pass sized "
                     "automatically), while configs/search.py sets 4 (racing needs a fixed window "
                     "batch): rerun into this folder, the command is refused as a changed setting; "
                     "under another `--config.run_name` it runs anew, and its last digits may "
                     "differ")


@dataclasses.dataclass(frozen=True)
class Run:
  """A recorded run: its folder under docs/results, the command that wrote it, its CPU, and the
  settings in which the command, read with the current config file, differs from the files
  ((setting, why) pairs; the page prints each why)."""

  folder: str
  command: str
  cpu: str
  known: tuple[tuple[str, str], ...] = ()

  @property
  def path(self) -> pathlib.Path:
    return RESULTS / self.folder


# The recorded searches decided on 16 calibration windows, fewer than their tolerances need
# (experiments/search_resolution.py): they are rerun with the override that keeps that.
_SEARCH = ("python -m experiments.search --config=configs/search.py --config.data.windows=16 "
           "--config.allow_unresolved=True")
_TOLERANCES = "--config.tolerances='(0.001,0.01)'"
RUNS = dict(
    sweep=Run("sweep_smollm2", "python -m experiments.sweep --config=configs/sweep.py", EPYC),
    nearest=Run("sweep_smollm2_nearest", "python -m experiments.sweep --config=configs/sweep.py "
                "--config.run_name=sweep_smollm2_nearest --config.format.rounding=nearest "
                "--config.format.group_sizes='(64,)' --config.mantissa_bits='(6,7,8,9,10)' "
                "--config.types='(\"all\",)'", EPYC),
    formats=Run("formats_smollm2", "python -m experiments.sweep --config=configs/formats.py",
                EPYC_SHARED),
    sensitivity=Run("sensitivity_smollm2",
                    "python -m experiments.sensitivity --config=configs/sensitivity.py", EPYC),
    search=Run("search_smollm2", f"{_SEARCH} {_TOLERANCES} --config.bound=False "
               "--config.test.path=True", EPYC),
    layer=Run("search_smollm2_layer", f"{_SEARCH} {_TOLERANCES} "
              "--config.run_name=search_smollm2_layer "
              "--config.granularity=layer --config.max_rounds=1 --config.uniform_m='(10,)' "
              "--config.test.uniform=False --config.other_formats='()'", NOT_RECORDED,
              known=(("window_batch", WINDOW_BATCH_NOTE),)),
    layer_from_type=Run(
        "search_smollm2_layer_from_type", f"{_SEARCH} --config.run_name="
        "search_smollm2_layer_from_type --config.granularity=layer "
        "--config.start_types='(7,6,7,8)' "
        "--config.tolerances='(0.01,)' --config.max_accept=32 --config.uniform_m='(7,8)' "
        "--config.other_formats='()' --config.bound=False --config.test.path=True", EPYC),
    noise=Run("noise_floor_smollm2",
              "python -m experiments.noise_floor --config=configs/noise_floor.py", EPYC),
    finetune=Run("finetune_smollm2", "python -m experiments.finetune --config=configs/finetune.py "
                 "--config.seeds=1 --config.control=False", EPYC_SHARED),
    search_base=Run("finetune_smollm2/search_base", f"{_SEARCH} {_TOLERANCES} "
                    "--config.run_name=search_base "
                    "--config.other_formats='()'", EPYC_SHARED,
                    known=(("window_batch", WINDOW_BATCH_NOTE),)),
    search_norms6=Run(
        "finetune_smollm2/search_norms6", f"{_SEARCH} {_TOLERANCES} "
        "--config.run_name=search_norms6 "
        "--config.finetune=results/finetune_smollm2/params/M6-norms.safetensors "
        "--config.other_formats='()' --config.test.uniform=False", EPYC_SHARED,
        known=(("window_batch", WINDOW_BATCH_NOTE),)),
    noise_nearest=Run("noise_floor_smollm2_nearest",
                      "python -m experiments.noise_floor --config=configs/noise_floor.py "
                      "--config.run_name=noise_floor_smollm2_nearest "
                      "--config.format.rounding=nearest", EPYC),
    gemma3_noise=Run("noise_floor_gemma3",
                     "python -m experiments.noise_floor --config=configs/noise_floor.py:gemma3",
                     EPYC_SHARED),
    gemma3_sweep=Run("sweep_gemma3",
                     "python -m experiments.sweep --config=configs/sweep.py:gemma3", EPYC_SHARED),
    gemma3_sensitivity=Run(
        "sensitivity_gemma3",
        "python -m experiments.sensitivity --config=configs/sensitivity.py:gemma3", EPYC_SHARED),
    gemma3_formats=Run("formats_gemma3",
                       "python -m experiments.sweep --config=configs/formats.py:gemma3",
                       EPYC_SHARED),
    gemma3_search=Run("search_gemma3",
                      "python -m experiments.search --config=configs/search.py:gemma3",
                      EPYC_SHARED),
)

# ---------------------------------------------------------------------- reading the files


def read_json(run: Run, name: str):
  return json.loads((run.path / name).read_text())


def read_jsonl(path: pathlib.Path) -> list[dict]:
  """The rows of a JSON-lines file, plain or gzipped (`<name>.gz` when `<name>` is absent)."""
  if not path.exists() and path.with_name(path.name + ".gz").exists():
    with gzip.open(path.with_name(path.name + ".gz"), "rt") as f:
      return [json.loads(line) for line in f if line.strip()]
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def result_rows(run: Run) -> dict:
  """results.jsonl by id, each row as a report reads it (ppl None where it is not finite)."""
  return {r["id"]: perplexity.reported(r) for r in read_jsonl(run.path / "results.jsonl")}


def search_rows(run: Run) -> dict:
  """search.jsonl by (split, format, precision): the row on the most windows (racing leaves
  rows on the first few windows only)."""
  out = {}
  for r in read_jsonl(run.path / "search.jsonl"):
    key = (r["split"], r.get("format", formats_report.ANDA), json.dumps(r["precision"]))
    if key not in out or r["windows"] > out[key]["windows"]:
      out[key] = r
  return out


def file_name(run: Run, name: str) -> str:
  """The file's name as stored (search.jsonl may be gzipped); FileNotFoundError if neither is:
  the page links only files that exist."""
  for stored in (name, name + ".gz"):
    if (run.path / stored).exists():
      return stored
  raise FileNotFoundError(f"{run.folder}: neither {name} nor {name}.gz")


# ---------------------------------------------------------------------- the commands


def config_of(command: str):
  """The config `command` runs with, parsed as the experiment parses it (config file, then the
  `--config.<key>=` overrides)."""
  argv = shlex.split(command)
  args = ["results_doc"] + [a.replace("--config=", f"--config={ROOT}/", 1) for a in argv[3:]]
  holder = flags.FlagValues()
  config = config_flags.DEFINE_config_file("config", flag_values=holder, sys_argv=args)
  holder(args)
  return config.value


def _flat(d, prefix=""):
  if not isinstance(d, dict):
    return {prefix[:-1]: d}
  return {k: v for key, value in d.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


def _plain(value):
  return list(value) if isinstance(value, tuple) else value


def _differences(expected: dict, recorded: dict) -> dict:
  """{setting: (command's, files')} over the settings both name (older files record fewer)."""
  e, r = _flat(expected), _flat(recorded)
  return {k: (e[k], r[k]) for k in e.keys() & r.keys()
          if _plain(e[k]) != _plain(r[k]) and "sha256" not in k}


def _expected_setup(experiment: str, cfg) -> dict:
  """setup.json as the experiment writes it for `cfg`, without what needs the model, the
  windows or the files (checksums, shapes)."""
  cfg = cfg.copy_and_resolve_references()
  finetune = cfg.get("finetune")
  with cfg.unlocked():
    cfg.finetune = None  # its entry hashes the file, which the docs do not hold
  if experiment == "search":
    setup = search_experiment.setup_of(cfg, None, None, "")
    setup["windows"] = dict(calibration=dict(n=cfg.data.windows), test=dict(n=cfg.test.windows))
  elif experiment == "finetune":
    setup = finetune_experiment.setup_of(cfg, None, "")
  else:
    setup = run_folder.setup_of(cfg, None, "")
    if experiment in ("sensitivity", "noise_floor"):
      setup["group_size"] = cfg.format.group_sizes[0]
    if experiment == "noise_floor":
      setup["perturb"] = cfg.perturb
  return setup | ({} if finetune is None else dict(finetune=dict(file=finetune)))


def _evaluated(experiment: str, cfg, run: Run) -> tuple:
  """(what the command evaluates, what the files hold) for the experiment's configurations."""
  if experiment == "sweep":
    rows = result_rows(run).values()
    have = {(r.get("format", "anda"), r["type"], r["group_size"], r["mantissa_bits"]) for r in rows}
    want = {("anda", "fp", None, 0)} | {("anda", t, g, m) for g in cfg.format.group_sizes
                                        for t in cfg.types for m in cfg.mantissa_bits}
    want |= {(f, t, None, None) for f in cfg.other_formats for t in cfg.other_format_types}
    return want, have
  if experiment == "sensitivity":
    rows = [r for r in result_rows(run).values() if r["layer"] is not None]
    layers = cfg.layers or range(1 + max(r["layer"] for r in rows))
    return ({(l, t, m) for l in layers for t in cfg.types for m in cfg.mantissa_bits},
            {(r["layer"], r["type"], r["mantissa_bits"]) for r in rows})
  if experiment == "noise_floor":
    with (run.path / "noise_floor.csv").open() as f:
      subsets = {int(e["windows"]) for e in csv.DictReader(f)}
    perturbed = (False, True) if cfg.perturb else (False,)
    return ({(m, p) for m in (0, *cfg.mantissa_bits) for p in perturbed}, set(cfg.subsets)), (
        {(r["mantissa_bits"], r["perturbed"]) for r in result_rows(run).values()}, subsets)
  if experiment == "finetune":
    return (finetune_experiment.run_ids(cfg),
            {r["id"] for r in read_jsonl(run.path / "results.jsonl")})
  chosen = read_json(run, "chosen.json")
  settings = dict(granularity=cfg.granularity, min_m=cfg.min_m, uniform_m=list(cfg.uniform_m),
                  start_m=list(cfg.start_types) if cfg.start_types else cfg.start_m,
                  rule=cfg.rule, race_windows=cfg.race_windows, race_level=cfg.race_level,
                  prefix_reuse=cfg.prefix_reuse, max_rounds=cfg.max_rounds,
                  max_accept=cfg.max_accept, bound=cfg.bound, test_path=cfg.test.path,
                  other_formats=list(cfg.other_formats), cost=cfg.cost.to_dict(),
                  tolerances=list(cfg.tolerances), allow_unresolved=cfg.allow_unresolved)
  recorded = dict(chosen, tolerances=[c["tolerance"] for c in chosen["chosen"]])
  return settings, {k: v for k, v in recorded.items() if k in settings}


def check_command(run: Run) -> list[str]:
  """How the command's settings differ from the files: "setting: command gives X, files hold
  Y" (an empty list: the command writes these files)."""
  experiment = shlex.split(run.command)[2].split(".")[1]
  if experiment == "search_compare":
    return check_comparison(run)
  cfg = config_of(run.command)
  out = [] if cfg.run_name == run.path.name else [
      f"run_name: command gives {cfg.run_name!r}, files are in {run.folder!r}"]
  diffs = _differences(_expected_setup(experiment, cfg), read_json(run, "setup.json"))
  if experiment == "search" and cfg.data.windows:  # a command the search refuses writes nothing
    try:
      search_resolution.check(cfg, cfg.data.windows)
    except ValueError as e:
      diffs["refused"] = (str(e), "files")
  want, have = _evaluated(experiment, cfg, run)
  if isinstance(want, dict):
    diffs |= _differences(want, have)
  elif want != have:
    diffs["evaluated configurations"] = (sorted(map(str, want - have))[:3],
                                         sorted(map(str, have - want))[:3])
  out += [f"{k}: command gives {a!r}, files hold {b!r}" for k, (a, b) in sorted(diffs.items())
          if k.split(".")[0] not in dict(run.known)]
  missing = {k for k, _ in run.known} - {k.split(".")[0] for k in diffs}
  return out + [f"{k}: listed as differing, but the command and the files agree" for k in missing]


def check_comparison(run: Run) -> list[str]:
  """How a comparison's files differ from what its command (`python -m
  experiments.search_compare --runs=... --out=...`, run from the repository's root) computes
  now from the search folders it names: its folder, then compare.json entry by entry."""
  args = dict(a[2:].split("=", 1) for a in shlex.split(run.command)[3:] if "=" in a)
  if not {"runs", "out"} <= args.keys():
    return ["the command names no --runs=... or no --out=..."]
  if (ROOT / args["out"]).resolve() != run.path.resolve():
    return [f"out: command gives {args['out']!r}, files are in {run.folder!r}"]
  folders = args["runs"].split(",")
  try:
    want = search_compare.record_of([ROOT / f for f in folders], ROOT / args["out"])
  except ValueError as e:
    return [f"runs: the command is refused: {e}"]
  for entry, folder in zip(want["runs"], folders):
    entry["folder"] = folder  # as the command names it
  have = read_json(run, "compare.json")
  return [f"compare.json {key}: the command computes another value from the runs now"
          for key in sorted(want.keys() | have.keys())
          if json.loads(json.dumps(want.get(key))) != have.get(key)]


def source(run: Run, files: tuple[str, ...]) -> list[str]:
  """The lines under a table: command, CPU, files (after checking the command against them)."""
  wrong = check_command(run)
  if wrong:
    raise ValueError(f"{run.folder}: the command `{run.command}` does not match the files: "
                     + "; ".join(wrong))
  paths = [f"{run.folder}/{file_name(run, f)}" for f in files]
  links = ", ".join(f"[`{p}`](results/{p})" for p in paths)
  out = [f"- Command: `{run.command}`", f"- CPU: {run.cpu}", f"- Files: {links}"]
  return out + [f"- Note: {why}" for _, why in run.known] + [""]
