"""Entry point: `python -m jax_asc.main --config configs/<file>.py[:arg] --workdir DIR`.

Overrides: `--config.key=value` (the config is locked: an unknown key is an error naming the valid
ones). `config.stage` lists the stages to run, comma-separated, in order (see jax_asc/stages).
Everything the run does goes to the workdir: config.json, metrics, checkpoints, reports.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # TensorFlow (tf.data) start-up chatter

from jax_asc.native import allocator  # noqa: E402

allocator.retain_freed_memory()   # before JAX starts its threads (see jax_asc/native/allocator.py)

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/<x>.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for everything this run writes.")
flags.mark_flags_as_required(["config", "workdir"])


def enable_compilation_cache() -> None:
  """XLA's persistent compilation cache ($JAX_ASC_COMPILATION_CACHE, default
  ~/.cache/jax_asc/xla; "off" disables it): stages and runs that compile the same step (per-device
  fine-tuning, repeated launches) reuse it instead of compiling again."""
  import jax
  folder = os.environ.get("JAX_ASC_COMPILATION_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "jax_asc", "xla"))
  if folder == "off" or jax.config.jax_compilation_cache_dir:
    return
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _flat(tree, prefix=""):
  if isinstance(tree, dict):
    for key, value in tree.items():
      yield from _flat(value, f"{prefix}{key}.")
  else:
    yield prefix[:-1], tree


def check_processes_agree(config) -> None:
  """Stops a multi-process run whose processes were started with different configs (every key
  but `distributed.process_id`), naming the keys that differ from process 0's; a no-op for one
  process. Each process compares a digest first, so agreeing runs exchange 8 bytes."""
  import hashlib
  import json
  import jax
  import numpy as np
  from jax.experimental import multihost_utils
  if jax.process_count() == 1:
    return
  mine = json.loads(config.to_json_best_effort(sort_keys=True))
  mine.get("distributed", {}).pop("process_id", None)
  text = json.dumps(mine, sort_keys=True).encode()
  digest = np.frombuffer(hashlib.sha256(text).digest()[:8], np.uint32)
  digests = np.asarray(multihost_utils.process_allgather(digest))
  if (digests == digests[0]).all():
    return
  longest = int(np.asarray(multihost_utils.process_allgather(np.int32(len(text)))).max())
  padded = np.frombuffer(text.ljust(longest, b" "), np.uint8)
  first = json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(padded))
                           .astype(np.uint8)).decode())
  ours, theirs = dict(_flat(mine)), dict(_flat(first))
  keys = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
  others = [p for p in range(len(digests)) if not (digests[p] == digests[0]).all()]
  raise ValueError(
      f"the {len(digests)} processes of this multi-host run disagree on the config: "
      f"process(es) {others} differ from process 0"
      + (f"; this process (index {jax.process_index()}) differs in "
         + ", ".join(f"{k} = {ours.get(k)!r} (process 0: {theirs.get(k)!r})" for k in keys)
         if keys else "") + ". Start every process with the same config and flags")


def run(config, workdir: str) -> dict:
  """Runs the stages of `config.stage` in order; returns {stage: result}."""
  import jax
  from jax_asc import native, stages
  from jax_asc.train import mesh as mesh_lib

  names = [s.strip() for s in config.stage.split(",") if s.strip()]
  unknown = [s for s in names if s not in stages.STAGES]
  if unknown or not names:
    raise ValueError(f"config.stage={config.stage!r}: unknown stage(s) {unknown}; "
                     f"valid: {sorted(stages.STAGES)}")
  mesh_lib.maybe_initialize_distributed(config.distributed)
  check_processes_agree(config)
  enable_compilation_cache()
  native.configure(config.get("kernels", "auto"))   # before anything is traced
  if jax.process_index() == 0:
    print(f"jax_asc: {native.summary()}", flush=True)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=1, sort_keys=True))
  results = {}
  for name in names:
    logging.info("Stage %s", name)
    results[name] = stages.STAGES[name](config, workdir)
  return results


def main(argv):
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)   # orbax and clu are chatty at INFO; --verbosity=0
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
