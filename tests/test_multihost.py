"""Multi-host training: two processes on localhost (`jax.distributed`, CPU collectives through
gloo), one CPU device each, train the tiny quickstart config over one global batch, each process
reading its own half of every batch. They must end with the parameters of one process training
the same global batch, write the checkpoints once, and both restore them."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from jax_asc.stages import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


# The run every process makes, on configs/quickstart.py:tiny. Centred log-mels (as
# tests/test_training.py's sharded test): reduction order then moves the gradients of this tiny
# network by rounding only.
OVERRIDES = {"stage": "train,evaluate", "num_epochs": 1, "schedule.name": "constant",
             "frontend.norm_shift": 10.0, "frontend.norm_scale": 4.0}


def _command(workdir, cache_dir, *extra):
  return [sys.executable, "-m", "jax_asc.main", "--config", "configs/quickstart.py:tiny",
          "--workdir", str(workdir), f"--config.data.cache_dir={cache_dir}",
          *(f"--config.{key}={value}" for key, value in OVERRIDES.items()), *extra]


def _distributed(port, index):
  return ["--config.distributed.enabled=True",
          f"--config.distributed.coordinator_address=localhost:{port}",
          "--config.distributed.num_processes=2", f"--config.distributed.process_id={index}"]


def _run_two(commands, folder, timeout=420):
  """Runs the commands at once; [(exit code, stdout, stderr)]. Output goes to files: a process
  blocked on a full pipe mid-collective would stall its peer."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  os.makedirs(folder, exist_ok=True)
  logs = [(open(os.path.join(folder, f"{i}.out"), "w+"), open(os.path.join(folder, f"{i}.err"),
                                                                "w+"))
          for i in range(len(commands))]
  processes = [subprocess.Popen(c, cwd=REPO, env=env, stdout=out, stderr=err)
               for c, (out, err) in zip(commands, logs)]
  try:
    for p in processes:
      p.wait(timeout=timeout)
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
  results = []
  for p, (out, err) in zip(processes, logs):
    out.seek(0)
    err.seek(0)
    results.append((p.returncode, out.read(), err.read()))
    out.close()
    err.close()
  return results


def _rel(a, b):
  return max(float(np.linalg.norm(np.asarray(x) - np.asarray(y)) /
                   (np.linalg.norm(np.asarray(y)) + 1e-12))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_two_processes_train_like_one(tiny_config, tmp_path):
  common.load_splits(tiny_config, "train", "validation", "test")   # the cache, built once here
  cache = tiny_config.data.cache_dir
  port = _free_port()
  shared = tmp_path / "two"
  two = _run_two([_command(shared, cache, *_distributed(port, i)) for i in range(2)],
                 tmp_path / "logs_two")
  for index, (code, out, err) in enumerate(two):
    assert code == 0, f"process {index}:\n{err[-3000:]}"
  # The same run in one process: this one (no subprocess to start and import JAX again).
  from jax_asc import main as main_lib
  alone_config = tiny_config.copy_and_resolve_references()
  alone_config.update_from_flattened_dict(OVERRIDES)
  main_lib.run(alone_config, str(tmp_path / "one"))

  # Written once: one set of records and one checkpoint per step, by process 0.
  done = json.load(open(shared / "train.done.json"))
  assert done["outputs"]["final_step"] == 4
  steps = sorted(os.listdir(shared / "checkpoints" / "latest"))
  assert steps == sorted(os.listdir(tmp_path / "one" / "checkpoints" / "latest")), steps
  # Stage evaluate restored the checkpoint in both processes (each exited 0 above) and scored
  # the test split over the two hosts.
  report = json.load(open(shared / "reports" / "test.json"))
  assert report["count"] == 36

  distributed, _ = common.restore_variables(tiny_config, str(shared), "latest")
  alone, _ = common.restore_variables(tiny_config, str(tmp_path / "one"), "latest")
  # Bit-identical on this machine; the bound leaves room for another reduction order.
  assert _rel(distributed["params"], alone["params"]) < 1e-5
  assert _rel(distributed["batch_stats"], alone["batch_stats"]) < 1e-5
  one_report = json.load(open(tmp_path / "one" / "reports" / "test.json"))
  assert abs(report["accuracy"] - one_report["accuracy"]) < 1e-9


def test_processes_that_disagree_on_the_config_stop_naming_the_key(tiny_config, tmp_path):
  port = _free_port()
  commands = [_command(tmp_path / "w", tiny_config.data.cache_dir, *_distributed(port, i),
                       *(["--config.optimizer.learning_rate=0.1"] if i else []))
              for i in range(2)]
  outputs = _run_two(commands, tmp_path / "logs", timeout=300)
  assert all(code != 0 for code, _, _ in outputs)
  err = outputs[1][2]
  assert "disagree on the config" in err and "optimizer.learning_rate = 0.1" in err, err[-3000:]
  assert "process(es) [1] differ from process 0" in outputs[0][2], outputs[0][2][-3000:]
