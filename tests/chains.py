"""Starts the report chains' --smoke runs (launch/report00*_*.sh) in the background.

conftest.py starts them as soon as the session has collected tests/test_launch.py and runs that
file last, so the chains (mostly single-threaded compiling) overlap with the rest of the suite;
test_launch.py waits for them. Each chain runs in its own workdir under `root` (the dataset
cache and XLA compilation cache there are shared). Once a chain has ended, the same background
process runs the report's notebook on it (`python tests/chains.py REPORT ROOT`), so the notebooks
overlap with the chains still running instead of running one after the other at the end.
"""
import json
import os
import signal
import subprocess
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"report000": "report000_dafa.sh", "report001": "report001_joint_kd.sh",
           "report002": "report002_teachers.sh", "report003": "report003_contrastasc.sh",
           "report004": "report004_s5.sh"}
# Worker processes per chain. The chains share two cores with the rest of the suite, so extra
# workers mostly add start-up (each imports TF and JAX); report 000 keeps two to test `--jobs`.
JOBS = {"report000": 2, "report001": 1, "report002": 1, "report003": 1, "report004": 1}
NOTEBOOKS = {"report000": "report000_dafa.ipynb", "report001": "report001_joint_kd.ipynb",
             "report002": "report002_teachers.ipynb",
             "report003": "report003_contrastasc.ipynb", "report004": "report004_s5.ipynb"}
# The chains run at a lower CPU priority than the tests (`nice`), so the tests, one process that
# is longer than any chain, keep a core while the five chains share what is left; once the tests
# end, the chains have both cores. At equal priority the six processes shared the two cores
# evenly, the chains ended first and the tests' last minutes ran on one core.
NICENESS = 10


def environment(root: str) -> dict:
  return dict(os.environ, PYTHON=sys.executable, JAX_ASC_DATA_DIR=os.path.join(root, "data"),
              JAX_ASC_COMPILATION_CACHE=os.path.join(root, "xla_cache"))


def keeps_xla_optimisations(report: str) -> bool:
  """Whether the report's plan compiles its smoke runs with XLA's optimisations
  (`Plan.smoke_fast_compile` False: compute-bound runs, report 003's BEATs and report 004's
  U-Net). The suite's `--xla_backend_optimization_level=0` (conftest.py) must then not reach the
  chain, or it runs slower (report 003: 859 CPU-s with it, 576 without)."""
  from jax_asc import plans
  config = os.path.join(REPO, "configs", SCRIPTS[report].replace(".sh", ".py"))
  return not plans.load_plan(config, smoke=True).smoke_fast_compile


def chain_environment(root: str, report: str) -> dict:
  """The environment one chain runs in: `environment(root)`, without the suite's
  `--xla_backend_optimization_level=0` where the plan keeps XLA's optimisations."""
  env = environment(root)
  if keeps_xla_optimisations(report):
    flags = env.get("XLA_FLAGS", "").replace("--xla_backend_optimization_level=0", "")
    env["XLA_FLAGS"] = flags.strip()
  return env


def lowered_priority(argv: list) -> list:
  """`argv` run `NICENESS` steps below the caller's CPU priority."""
  return ["nice", "-n", str(NICENESS)] + list(argv)


def start(root: str) -> dict:
  """{report: (process, log file)} of the chains, started now (`run_chain_then_notebook`)."""
  procs = {}
  for report in SCRIPTS:
    log = open(os.path.join(root, f"{report}.log"), "w")
    procs[report] = (subprocess.Popen(
        lowered_priority([sys.executable, os.path.abspath(__file__), report, root]),
        stdout=log, stderr=subprocess.STDOUT, env=chain_environment(root, report),
        start_new_session=True), log)   # its own process group: `stop` ends the chain with it
  return procs


def notebook_result(root: str, report: str) -> str:
  """The file `run_chain_then_notebook` writes the notebook's run into: JSON {"outputs": its
  text outputs, "seconds": its wall time} or {"error": the traceback}."""
  return os.path.join(root, f"{report}.notebook.json")


def run_chain_then_notebook(report: str, root: str) -> int:
  """Runs the report's smoke chain in `<root>/<report>`; when it succeeds, runs the report's
  notebook on the finished chain (every run should be skipped) and writes what it showed to
  `notebook_result(root, report)` (tests/test_launch.py checks it). Returns the chain's exit
  code; a failing notebook is recorded there, not in the exit code."""
  code = subprocess.call(["bash", os.path.join(REPO, "launch", SCRIPTS[report]), "--smoke",
                          "--jobs", str(JOBS[report]), "--workdir", os.path.join(root, report)])
  if code:
    return code
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import test_notebook
  start = time.time()
  try:
    outputs = test_notebook.execute(NOTEBOOKS[report], {
        "SMOKE": True, "DATASET_ROOT": "", "WORKDIR": os.path.join(root, report),
        "EXTRA_ARGS": [], "JOBS": 1})
    result = {"outputs": outputs, "seconds": time.time() - start}
  except Exception:   # the test reports it, with the traceback
    result = {"error": traceback.format_exc()[-6000:]}
  with open(notebook_result(root, report), "w") as f:
    json.dump(result, f)
  return 0


def wait(root: str, procs: dict, timeout: float = 1500) -> list:
  """Waits for every chain; the failures, each with the tail of its log."""
  failed = []
  for report, (proc, log) in procs.items():
    proc.wait(timeout=timeout)
    log.close()
    if proc.returncode:
      with open(os.path.join(root, f"{report}.log")) as f:
        failed.append(f"{report} (exit {proc.returncode}):\n" + f.read()[-4000:])
  return failed


def stop(procs: dict) -> None:
  for proc, log in procs.values():
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)   # the driver and the chain it runs
      proc.wait()
    log.close()


if __name__ == "__main__":
  sys.exit(run_chain_then_notebook(sys.argv[1], sys.argv[2]))
