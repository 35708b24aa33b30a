"""The one plan runner: a report's chain of runs, re-run exactly where its config changed.

    python -m jax_asc.plans configs/report000_dafa.py [--smoke] [--workdir DIR] [--dirs MICIRP]
                            [--passt-checkpoint FILE] [--m2d FILE] [--resunetk FILE]
                            [--qwen PATH] [--beats FILE] [--tut17 DIR] [--icme24 DIR]
                            [--esc50 DIR]
                            [--option KEY=VALUE …] [--jobs N] [DATASET_ROOT]

A report's config module declares its plan next to its configs: `get_plan()` returns a `Plan`
(the runs, each a workdir under the chain's workdir, the config role, its stages, its overrides,
the runs it `needs` and where it is `init_from`). `launch/report00*_*.sh` are one-line calls of
this module.

When a stage may be skipped. Every finished stage writes `<run>/<stage>.done.json` with the
fingerprint of the run's config (`stage` left out) and a fresh token; the runner adds the tokens
of what the stage consumed (`upstream`: the previous stage of the same run, the last stage of
every run it needs). A stage is skipped only when its `.done.json` exists, its fingerprint equals
the current config's and its upstream tokens equal the current ones. So a changed config re-runs
that run's stages from the first stale one, and — their tokens being new — everything downstream
of them, in this run and in the runs that need it; an unchanged finished stage is skipped. An
interrupted stage resumes from its last checkpoint. A training stage that runs again after it
finished starts afresh when a config section it reads changed or a run it needs gave other
results (see `STAGE_OUTPUTS`), else it resumes its finished checkpoint. Delete a `.done.json` to
re-run a stage and everything downstream of it; to retrain one, delete its checkpoints too.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import sys
from typing import List, Mapping, Optional, Sequence, Tuple

from jax_asc import fingerprint as fingerprint_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MICIRP = os.path.join(REPO, "..", "shared", "data", "micirp")
# The `--<name> PATH` options a plan may take (`Plan.checkpoints`).
PATH_OPTIONS = ("m2d", "resunetk", "qwen", "beats", "tut17", "icme24", "esc50")


@dataclasses.dataclass(frozen=True)
class InitFrom:
  """Start a run's parameters from another run's checkpoint (a later phase of a recipe).

  run: the other run's path in the plan; checkpoint: "best" | "latest" | "soup" | a step;
  params_only: take only the parameters (fresh BatchNorm statistics), else also the statistics.
  The optimizer state always starts fresh.
  """
  run: str
  checkpoint: str = "latest"
  params_only: bool = False


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a plan.

  path: the run's workdir relative to the chain's workdir, e.g. "teachers/t_ce1".
  role: the config's role argument (plus ",seed=N" where needed).
  stages: the stages, in order (jax_asc/stages).
  overrides: dotted config keys → values; "{workdir}" in a string is the chain's workdir.
  needs: paths of the runs whose results this run reads (their last stage must be done first).
  init_from: where the parameters start (adds its run to `needs`).
  passt: starts from the AudioSet PaSST checkpoint (real data only).
  config: config file, default the plan's.
  """
  path: str
  role: str
  stages: Tuple[str, ...]
  overrides: Mapping[str, object] = dataclasses.field(default_factory=dict)
  needs: Tuple[str, ...] = ()
  init_from: Optional[InitFrom] = None
  passt: bool = False
  config: str = ""

  def all_needs(self) -> Tuple[str, ...]:
    extra = (self.init_from.run,) if self.init_from else ()
    return tuple(dict.fromkeys(tuple(self.needs) + extra))


@dataclasses.dataclass(frozen=True)
class Plan:
  """A report's chain: `runs` in an order that respects `needs`; `tables` names the table
  writer of jax_asc/eval/tables.py ("" = none)."""
  name: str
  config: str
  runs: Tuple[Run, ...]
  tables: str = ""
  # Official checkpoints the real (not smoke) chain starts from and other datasets it reads, by
  # option name (PATH_OPTIONS): each is given as `--<name> PATH` and handed to every run's config
  # as `<name>=PATH` (report 003: beats, tut17, icme24, esc50; report 004: m2d, resunetk, qwen).
  checkpoints: Tuple[str, ...] = ()
  # Paths of PATH_OPTIONS the real chain takes when given but does not require (report 003:
  # esc50, an extra few-shot dataset).
  optional: Tuple[str, ...] = ()
  # The smoke chain compiles with XLA's backend optimisations off (tiny models: compiling
  # dominates); a plan whose smoke runs are compute-bound (report 004's U-Net) keeps them.
  smoke_fast_compile: bool = True

  def __post_init__(self):
    seen = set()
    for run in self.runs:
      for need in run.all_needs():
        if need not in seen:
          raise ValueError(f"plan {self.name}: run {run.path!r} needs {need!r}, which is not an "
                           f"earlier run of the plan (earlier: {sorted(seen)})")
      seen.add(run.path)


def member_paths(*names: str, group: str = "teachers") -> str:
  """"{workdir}/teachers/a,{workdir}/teachers/b": a cache teacher's `runs` override value."""
  return ",".join(f"{{workdir}}/{group}/{n}" for n in names)


def _import(path: str):
  spec = importlib.util.spec_from_file_location(
      "jax_asc_config_" + os.path.basename(path).replace(".", "_"), os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  spec.loader.exec_module(module)
  return module


def load_plan(config_path: str, smoke: bool = False) -> Plan:
  """The `Plan` a config module declares (`get_plan()`, or `get_plan(smoke)` where the smoke
  chain has other runs, e.g. report 004 trains its separator instead of loading the released
  one)."""
  import inspect
  module = _import(config_path)
  if not hasattr(module, "get_plan"):
    raise ValueError(f"{config_path} declares no plan (a get_plan() function)")
  if "smoke" in inspect.signature(module.get_plan).parameters:
    return module.get_plan(smoke=smoke)
  return module.get_plan()


def load_config(path: str, arg: str):
  return _import(path).get_config(arg)


def _set(config, dotted: str, value) -> None:
  *parents, leaf = dotted.split(".")
  node = config
  for name in parents:
    node = getattr(node, name)
  setattr(node, leaf, value)


def run_config(plan: Plan, run: Run, workdir: str, base: str, smoke: bool,
               passt_checkpoint: str = ""):
  """The run's config as the chain runs it (stage not yet set)."""
  config = load_config(run.config or plan.config, f"{run.role},{base}")
  for key, value in run.overrides.items():
    _set(config, key, value.format(workdir=workdir) if isinstance(value, str) else value)
  if run.init_from is not None:
    config.model_init.update(path=os.path.join(workdir, run.init_from.run), kind="run",
                             checkpoint=run.init_from.checkpoint,
                             params_only=run.init_from.params_only)
  if run.passt and not smoke:
    config.model_init.path = os.path.abspath(passt_checkpoint)
  return config


def fingerprint(config) -> str:
  """The run fingerprint a stage records (jax_asc/fingerprint.py: `stage` left out)."""
  return fingerprint_lib.config_fingerprint(config)


_done = fingerprint_lib.read_record


def _token(workdir: str, path: str, stage: str) -> Optional[str]:
  done = _done(os.path.join(workdir, path), stage)
  return None if done is None else done.get("token")


def upstream_of(plan: Plan, index: int, stage: str) -> List[Tuple[str, str]]:
  """(run path, stage) pairs whose results stage `stage` of run `index` consumes: the previous
  stage of the same run (in this or an earlier entry of the same path) and the last stage of
  every needed run."""
  run = plan.runs[index]
  sequence = [(i, s) for i, r in enumerate(plan.runs[:index + 1]) if r.path == run.path
              for s in r.stages]
  position = sequence.index((index, stage))
  pairs = [(run.path, sequence[position - 1][1])] if position > 0 else []
  for need in run.all_needs():
    last = [r for r in plan.runs[:index] if r.path == need][-1]
    pairs.append((need, last.stages[-1]))
  return pairs


def stale_stages(plan: Plan, index: int, workdir: str, current_fingerprint: str) -> List[str]:
  """The stages of run `index` to run now: from the first whose record does not match the
  current config or the current upstream tokens, to the end (all of them downstream of it)."""
  run = plan.runs[index]
  run_dir = os.path.join(workdir, run.path)
  for position, stage in enumerate(run.stages):
    done = _done(run_dir, stage)
    expected = {f"{p}:{s}": _token(workdir, p, s) for p, s in upstream_of(plan, index, stage)}
    if (done is None or done.get("config_fingerprint") != current_fingerprint or
        done.get("upstream", {}) != expected):
      return list(run.stages[position:])
  return []


def _record_upstream(plan: Plan, index: int, workdir: str, stage: str) -> None:
  run_dir = os.path.join(workdir, plan.runs[index].path)
  path = os.path.join(run_dir, f"{stage}.done.json")
  with open(path) as f:
    done = json.load(f)
  done["upstream"] = {f"{p}:{s}": _token(workdir, p, s)
                      for p, s in upstream_of(plan, index, stage)}
  with open(path + ".tmp", "w") as f:
    json.dump(done, f, indent=1)
  os.replace(path + ".tmp", path)


# What a training stage leaves in its run folder, and the config sections it does not read.
# A finished training stage that is stale runs again; it starts afresh (its folders moved to
# `<folder>.previous`, replacing an older one) only when a section it reads changed or a run it
# needs gave other results (their tokens: predict's is a digest of its predictions). Otherwise
# it resumes its finished checkpoint, which trains nothing: the model would be the same. A stage
# that never finished (a crash) has no record and resumes.
STAGE_OUTPUTS = {"train": ("checkpoints",), "distill": ("checkpoints",),
                 "finetune_device": ("devices",), "soup": (os.path.join("checkpoints", "soup"),)}
_EVALUATION = ("export", "evaluate", "submission", "predict", "complexity", "fewshot")
NOT_READ_BY = {"train": _EVALUATION + ("dsft", "soup"), "distill": _EVALUATION + ("dsft", "soup"),
               "finetune_device": _EVALUATION + ("soup",), "soup": _EVALUATION + ("dsft",)}


def must_start_afresh(plan: Plan, index: int, workdir: str, stage: str, config) -> List[str]:
  """Why stage `stage` of run `index`, about to run again, must not resume its finished
  checkpoint: the changed config sections it reads and the needed runs with new results ([]:
  it may resume; also for a stage that never finished or makes no checkpoint)."""
  run = plan.runs[index]
  record = _done(os.path.join(workdir, run.path), stage)
  if stage not in STAGE_OUTPUTS or record is None:
    return []
  now = fingerprint_lib.section_fingerprints(config)
  # A record from before sections were recorded cannot say what changed: its checkpoint is kept
  # (a teacher's fine-tuning is not thrown away on an upgrade); new results upstream still count.
  before = record.get("sections", now)
  reasons = sorted(k for k in set(now) | set(before)
                   if now.get(k) != before.get(k) and k not in NOT_READ_BY[stage])
  recorded = record.get("upstream", {})
  for path, upstream_stage in upstream_of(plan, index, stage):
    key = f"{path}:{upstream_stage}"
    if path != run.path and recorded.get(key) != _token(workdir, path, upstream_stage):
      reasons.append(f"new results of {key}")
  return reasons


def later_training_stages(plan: Plan, index: int, stage: str) -> List[str]:
  """The training stages (`STAGE_OUTPUTS`) after `stage` of run `index` in the same workdir,
  over every entry of the plan for that workdir."""
  path = plan.runs[index].path
  sequence = [(i, s) for i, r in enumerate(plan.runs) if r.path == path for s in r.stages]
  after = sequence[sequence.index((index, stage)) + 1:]
  return [s for _, s in after if s in STAGE_OUTPUTS and s != stage]


def start_afresh(run_dir: str, stage: str) -> List[str]:
  """Moves a finished stage's folders (`STAGE_OUTPUTS`) to `<folder>.previous` and removes its
  record; returns the folders moved."""
  moved = []
  for folder in STAGE_OUTPUTS[stage]:
    path = os.path.join(run_dir, folder)
    if os.path.isdir(path):
      if os.path.exists(path + ".previous"):
        shutil.rmtree(path + ".previous")
      os.replace(path, path + ".previous")
      moved.append(path)
  record = os.path.join(run_dir, f"{stage}.done.json")
  if os.path.exists(record):
    os.remove(record)
  return moved


def run_one(plan: Plan, index: int, workdir: str, base: str, smoke: bool,
            passt_checkpoint: str) -> List[str]:
  """Runs what is stale of run `index`; returns the stages it ran."""
  run = plan.runs[index]
  run_dir = os.path.join(workdir, run.path)
  config = run_config(plan, run, workdir, base, smoke, passt_checkpoint)
  todo = stale_stages(plan, index, workdir, fingerprint(config))
  if not todo:
    print(f"== {run.path}: {','.join(run.stages)} done, skipped", flush=True)
    return []
  from jax_asc import main   # JAX and TF: only when a stage is left to run
  print(f"== {run.path}: {','.join(todo)}", flush=True)
  for stage in todo:   # one stage at a time, so each records what it consumed when it ends
    reasons = must_start_afresh(plan, index, workdir, stage, config)
    if reasons:
      # The run's later training stages (a soup, DSFT; maybe in a later entry of the plan) were
      # made from what is about to be replaced: they start afresh too.
      moved = [m for later in later_training_stages(plan, index, stage)
               for m in start_afresh(run_dir, later)]
      moved = start_afresh(run_dir, stage) + moved
      print(f"   {stage}: starting afresh ({', '.join(reasons)}; previous "
            f"{', '.join(os.path.relpath(m, workdir) + ' → .previous' for m in moved) or 'none'})",
            flush=True)
    stage_config = config.copy_and_resolve_references()
    stage_config.stage = stage
    stage_config.lock()
    main.run(stage_config, run_dir)
    _record_upstream(plan, index, workdir, stage)
  return todo


def dependencies(plan: Plan) -> List[List[int]]:
  """For each run, the earlier runs that must finish first: the runs it needs and earlier
  entries of the same workdir."""
  return [[j for j, other in enumerate(plan.runs[:i])
           if other.path == run.path or other.path in run.all_needs()]
          for i, run in enumerate(plan.runs)]


def run_plan(plan: Plan, workdir: str, *, smoke: bool, root: str = "", dirs: str = "",
             passt_checkpoint: str = "", jobs: int = 1,
             checkpoints: Optional[Mapping[str, str]] = None,
             options: Sequence[str] = ()) -> str:
  """Runs the plan under `workdir`; returns the tables' Markdown ("" without tables).

  `jobs` > 1 runs independent runs (teachers, students of finished teachers) in that many
  worker processes at once; each run is the same as in a sequential chain.
  """
  workdir = os.path.abspath(workdir)
  base = "smoke" if smoke else f"root={os.path.abspath(root)}"
  if dirs:
    base += f",dirs={os.path.abspath(dirs)}"
  for name, path in sorted((checkpoints or {}).items()):
    if name not in plan.checkpoints + plan.optional:
      raise ValueError(f"plan {plan.name} takes no --{name} checkpoint (it takes "
                       f"{list(plan.checkpoints + plan.optional) or 'none'})")
    if path:
      base += f",{name}={os.path.abspath(path)}"
  for option in options:   # KEY=VALUE config options every run's config takes (checked there)
    if "=" not in option or "," in option:
      raise ValueError(f"--option {option!r}: expected KEY=VALUE (no commas)")
    base += f",{option}"
  args = (workdir, base, smoke, passt_checkpoint)
  if jobs <= 1:
    for index in range(len(plan.runs)):
      run_one(plan, index, *args)
  else:
    import concurrent.futures
    import multiprocessing
    deps = dependencies(plan)
    done, running = set(), {}
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
      while len(done) < len(plan.runs):
        for index in range(len(plan.runs)):
          if index not in done and index not in running.values() and \
              all(d in done for d in deps[index]):
            running[pool.submit(run_one, plan, index, *args)] = index
        finished, _ = concurrent.futures.wait(running, return_when="FIRST_COMPLETED")
        for future in finished:
          future.result()   # a failed run stops the chain with its error
          done.add(running.pop(future))
  if not plan.tables:
    return ""
  from jax_asc.eval import tables
  return tables.write(plan.tables, workdir, smoke)


def main_cli(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description="Run a report's plan (its chain of runs).")
  parser.add_argument("config", help="the report's config module, e.g. configs/report000_dafa.py")
  parser.add_argument("root", nargs="?", default="",
                      help="dataset folder (TAU22 for reports 000/001, TAU20 for 002)")
  parser.add_argument("--smoke", action="store_true",
                      help="the same chain on the synthetic set with tiny models")
  parser.add_argument("--workdir", default="")
  parser.add_argument("--dirs", default="",
                      help="MicIRP impulse responses for DIR (smoke: ../shared/data/micirp "
                           "when present); without it DIR is off")
  parser.add_argument("--jobs", type=int, default=1,
                      help="runs at once (independent teachers and students), in worker processes")
  parser.add_argument("--passt-checkpoint", default="",
                      help="AudioSet PaSST-S weights (passt-s-f128-p16-s10-ap.476-swa.pt)")
  parser.add_argument("--m2d", default="", help="report 004: the AS-fine-tuned M2D checkpoint "
                      "(m2d_as_vit_base-80x1001p16x16p32k-…/weights_ep69it3124-0.47998.pth)")
  parser.add_argument("--resunetk", default="",
                      help="report 004: the released ResUNetK separator checkpoint")
  parser.add_argument("--qwen", default="",
                      help="report 004: the Qwen2-Audio checkpoint (Qwen/Qwen2-Audio-7B's "
                           "safetensors: the folder, its index json or one file); only the "
                           "audio tower is read")
  parser.add_argument("--beats", default="", help="report 003: the BEATs checkpoint (.pt with "
                      "cfg, model, label_dict; BEATs_iter3_plus_AS2M.pt)")
  for name, what in (("tut17", "TUT Acoustic Scenes 2017 development"),
                     ("icme24", "ICME 2024 Grand Challenge ASC development"),
                     ("esc50", "ESC-50")):
    parser.add_argument(f"--{name}", default="",
                        help=f"report 003: the {what} folder (few-shot evaluation)")
  parser.add_argument("--option", action="append", default=[],
                      help="KEY=VALUE handed to every run's config argument, e.g. report 004's "
                           "m2d_norm=-7.1:4.2 (the M2D checkpoint's norm_stats)")
  args = parser.parse_args(argv)
  plan = load_plan(args.config, smoke=args.smoke)
  checkpoints = {name: getattr(args, name) for name in PATH_OPTIONS if getattr(args, name)}
  if (args.smoke and plan.smoke_fast_compile
      and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", "")):
    # Tiny models: compiling dominates a smoke chain, and LLVM's optimisations do not pay off.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_backend_optimization_level=0").strip()
  if args.smoke:
    if args.root:
      parser.error("--smoke takes no dataset folder")
    dirs = args.dirs or (SHARED_MICIRP if os.path.isdir(SHARED_MICIRP) else "")
  else:
    if not args.root or not os.path.isdir(args.root):
      parser.error(f"dataset folder {args.root!r} does not exist")
    if any(r.passt for r in plan.runs) and not os.path.isfile(args.passt_checkpoint):
      parser.error("the PaSST teachers start from --passt-checkpoint FILE (AudioSet PaSST-S)")
    for name in plan.checkpoints:
      if not os.path.exists(getattr(args, name)):
        parser.error(f"plan {plan.name} starts from --{name} PATH (got {getattr(args, name)!r})")
    dirs = args.dirs
  for name in checkpoints:
    if name not in plan.checkpoints + plan.optional:
      parser.error(f"plan {plan.name} takes no --{name}")
    if not os.path.exists(checkpoints[name]):
      parser.error(f"--{name} {checkpoints[name]!r} does not exist")
  workdir = args.workdir or os.path.join("workdirs", plan.name + ("_smoke" if args.smoke else ""))
  print(run_plan(plan, workdir, smoke=args.smoke, root=args.root, dirs=dirs,
                 passt_checkpoint=args.passt_checkpoint, jobs=args.jobs,
                 checkpoints=checkpoints, options=args.option))


if __name__ == "__main__":
  main_cli()
