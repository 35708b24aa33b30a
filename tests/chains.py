"""Starts the report chains' --smoke runs (launch/report00*_*.sh) in the background.

conftest.py starts them as soon as the session has collected tests/test_launch.py and runs that
file last, so the chains (mostly single-threaded compiling) overlap with the rest of the suite;
test_launch.py waits for them. Each chain gets its own workdir, dataset cache and XLA
compilation cache under `root`.
"""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"report000": "report000_dafa.sh", "report001": "report001_joint_kd.sh",
           "report002": "report002_teachers.sh", "report003": "report003_contrastasc.sh",
           "report004": "report004_s5.sh"}
# Worker processes per chain. The chains share two cores with the rest of the suite, so extra
# workers mostly add start-up (each imports TF and JAX); report 000 keeps two to test `--jobs`.
JOBS = {"report000": 2, "report001": 1, "report002": 1, "report003": 1, "report004": 1}


def environment(root: str) -> dict:
  return dict(os.environ, PYTHON=sys.executable, JAX_ASC_DATA_DIR=os.path.join(root, "data"),
              JAX_ASC_COMPILATION_CACHE=os.path.join(root, "xla_cache"))


def start(root: str) -> dict:
  """{report: (process, log file)} of the chains, started now."""
  env = environment(root)
  procs = {}
  for report, script in SCRIPTS.items():
    run_env = env
    if report == "report004":   # its plan keeps XLA's optimisations (compute-bound U-Net)
      flags = env.get("XLA_FLAGS", "").replace("--xla_backend_optimization_level=0", "")
      run_env = dict(env, XLA_FLAGS=flags.strip())
    log = open(os.path.join(root, f"{report}.log"), "w")
    procs[report] = (subprocess.Popen(
        ["bash", os.path.join(REPO, "launch", script), "--smoke", "--jobs", str(JOBS[report]),
         "--workdir", os.path.join(root, report)], stdout=log, stderr=subprocess.STDOUT,
        env=run_env), log)
  return procs


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
      proc.kill()
      proc.wait()
    log.close()
