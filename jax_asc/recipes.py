"""The reproduction chains of reports 000–002, run by `launch/report00*_*.sh`.

    python -m jax_asc.recipes report000 [--smoke] [--workdir DIR] [--dirs MICIRP]
                                        [--passt-checkpoint FILE] [DATASET_ROOT]

Each report is a plan: an ordered list of runs (a workdir under `teachers/` or `students/`, a
config file with its role argument, the stages, and config overrides). All runs go through
`jax_asc.main.run` in one process, so a chain pays the start-up once and reuses compiled steps.
A finished stage (`<run>/<stage>.done.json`) is skipped, so re-running resumes the chain; an
interrupted stage resumes from its last checkpoint. Delete a `.done.json` to redo a stage.
At the end the report's tables are written to `<workdir>/tables/` (jax_asc/eval/tables.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MICIRP = os.path.join(REPO, "..", "shared", "data", "micirp")


@dataclasses.dataclass
class Run:
  path: str              # relative to the chain's workdir, e.g. "teachers/t_ce1"
  config: str            # configs/<file>.py
  role: str              # the config's role argument (plus ",seed=N" where needed)
  stages: str
  overrides: Dict[str, object] = dataclasses.field(default_factory=dict)
  passt: bool = False    # starts from the AudioSet PaSST checkpoint (real data)


def _members(*names: str) -> str:
  return ",".join(f"{{workdir}}/teachers/{n}" for n in names)


def plan_report000() -> List[Run]:
  cfg = "configs/report000_dafa.py"
  runs = [Run("teachers/t_ce1", cfg, "teacher_ce,seed=0", "train,evaluate,predict", passt=True),
          Run("teachers/t_ce2", cfg, "teacher_ce,seed=1", "train,evaluate,predict", passt=True),
          Run("teachers/t_dafa", cfg, "teacher_dafa,seed=0", "train,evaluate,predict",
              passt=True)]
  for members in ("t_ce1", "t_ce2", "t_dafa", "t_ce1+t_ce2", "t_ce1+t_dafa"):
    runs.append(Run(f"students/{members}", cfg, "student", "ensemble,distill,evaluate",
                    {"teacher.members": _members(*members.split("+"))}))
  runs.append(Run("students/t_ce1+t_dafa", cfg, "student", "finetune_device",
                  {"teacher.members": _members("t_ce1", "t_dafa")}))
  return runs


def plan_report001() -> List[Run]:
  cfg = "configs/report001_joint_kd.py"
  teachers = ("passt1", "passt2", "cpresnet1", "cpresnet2")
  runs = [Run(f"teachers/{t}", cfg, t, "train,soup,evaluate,predict", passt=t.startswith("passt"))
          for t in teachers]
  for student in ("student_ssfm", "student_dfm"):
    runs.append(Run(f"students/{student}", cfg, student, "ensemble,distill,evaluate",
                    {"teacher.members": _members(*teachers),
                     "teacher.online": "{workdir}/teachers/cpresnet2"}))
  return runs


def plan_report002() -> List[Run]:
  cfg = "configs/report002_teachers.py"
  teachers = ([f"cpr{size}_dirfms" for size in ("128k", "560k", "2m", "10m")] +
              [f"cpr128k_{m}" for m in ("none", "ms", "fms", "dir")] + ["passt_dirfms"])
  runs = [Run(f"teachers/{t}", cfg, t, "train,evaluate,predict", passt=t.startswith("passt"))
          for t in teachers]
  for t in teachers:
    runs.append(Run(f"students/{t}", cfg, "student", "ensemble,distill,evaluate",
                    {"teacher.members": _members(t)}))
  runs.append(Run("students/cpr128k_dirfms+passt_dirfms", cfg, "student",
                  "ensemble,distill,evaluate",
                  {"teacher.members": _members("cpr128k_dirfms", "passt_dirfms")}))
  return runs


PLANS = {"report000": plan_report000, "report001": plan_report001, "report002": plan_report002}


def load_config(path: str, arg: str):
  spec = importlib.util.spec_from_file_location("jax_asc_config", os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _set(config, dotted: str, value) -> None:
  *parents, leaf = dotted.split(".")
  node = config
  for name in parents:
    node = getattr(node, name)
  setattr(node, leaf, value)


def remaining_stages(run_dir: str, stages: str) -> List[str]:
  return [s for s in stages.split(",")
          if not os.path.exists(os.path.join(run_dir, f"{s}.done.json"))]


def dependencies(plan: List[Run]) -> List[List[int]]:
  """For each run, the earlier runs it needs: those it names in its overrides (teacher runs)
  and earlier runs of the same workdir (a later stage of the same model)."""
  deps = []
  for i, run in enumerate(plan):
    named = {item.strip() for value in run.overrides.values() if isinstance(value, str)
             for item in value.split(",")}
    deps.append([j for j, other in enumerate(plan[:i])
                 if other.path == run.path or f"{{workdir}}/{other.path}" in named])
  return deps


def _run_one(report: str, index: int, workdir: str, base: str, smoke: bool,
             passt_checkpoint: str) -> None:
  run = PLANS[report]()[index]
  run_dir = os.path.join(workdir, run.path)
  todo = remaining_stages(run_dir, run.stages)
  if not todo:
    print(f"== {run.path}: {run.stages} done, skipped", flush=True)
    return
  from jax_asc import main   # JAX and TF: only when a stage is left to run
  print(f"== {run.path}: {','.join(todo)}", flush=True)
  config = load_config(run.config, f"{run.role},{base}")
  config.stage = ",".join(todo)
  for key, value in run.overrides.items():
    _set(config, key, value.format(workdir=workdir) if isinstance(value, str) else value)
  if run.passt and not smoke:
    config.model_init.path = os.path.abspath(passt_checkpoint)
  config.lock()
  main.run(config, run_dir)


def run_chain(report: str, workdir: str, *, smoke: bool, root: str = "", dirs: str = "",
              passt_checkpoint: str = "", jobs: int = 1) -> str:
  """Runs the report's plan under `workdir`; returns the tables' Markdown.

  `jobs` > 1 runs independent runs (teachers, students of finished teachers) in that many
  worker processes at once; each run is the same as in a sequential chain.
  """
  from jax_asc.eval import tables
  workdir = os.path.abspath(workdir)
  base = "smoke" if smoke else f"root={os.path.abspath(root)}"
  if dirs:
    base += f",dirs={os.path.abspath(dirs)}"
  plan = PLANS[report]()
  args = (workdir, base, smoke, passt_checkpoint)
  if jobs <= 1:
    for index in range(len(plan)):
      _run_one(report, index, *args)
  else:
    import concurrent.futures
    import multiprocessing
    deps = dependencies(plan)
    done, running = set(), {}
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
      while len(done) < len(plan):
        for index in range(len(plan)):
          if index not in done and index not in running.values() and \
              all(d in done for d in deps[index]):
            running[pool.submit(_run_one, report, index, *args)] = index
        finished, _ = concurrent.futures.wait(running, return_when="FIRST_COMPLETED")
        for future in finished:
          future.result()   # a failed run stops the chain with its error
          done.add(running.pop(future))
  return tables.write(report, workdir, smoke)


def main_cli(argv=None) -> None:
  parser = argparse.ArgumentParser(description="Run a report's reproduction chain.")
  parser.add_argument("report", choices=sorted(PLANS))
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
  args = parser.parse_args(argv)
  if args.smoke and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
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
    needs_passt = any(r.passt for r in PLANS[args.report]())
    if needs_passt and not os.path.isfile(args.passt_checkpoint):
      parser.error("the PaSST teachers start from --passt-checkpoint FILE (AudioSet PaSST-S)")
    dirs = args.dirs
  workdir = args.workdir or os.path.join("workdirs", args.report + ("_smoke" if args.smoke else ""))
  print(run_chain(args.report, workdir, smoke=args.smoke, root=args.root, dirs=dirs,
                  passt_checkpoint=args.passt_checkpoint, jobs=args.jobs))


if __name__ == "__main__":
  main_cli()
