"""Stages `train` and `distill`: fit the configured model on the training split, validating as
it goes (the task's evaluators on the validation split pick the best checkpoints). `distill` is
the same loop with a loss that must include a teacher term (KD from a cache teacher, feature
distillation from an online teacher, a mean teacher, …); see jax_asc/tasks and jax_asc/teachers."""
from __future__ import annotations

import json
import os
import resource

import jax

from jax_asc import tasks
from jax_asc.stages import common, model_init
from jax_asc.train import state as state_lib


def fit_run(config, workdir: str, stage: str) -> dict:
  splits = common.load_splits(config, config.data.train_split, config.data.validation_split)
  train_split = splits[config.data.train_split]
  validation = splits[config.data.validation_split]
  common.record_skipped(workdir, splits.values())
  common.write_run_data(workdir, train_split)
  train_split, task = common.training_task(config, train_split, workdir)
  n_classes = len(train_split.classes)

  cost = common.model_complexity(config, n_classes, train_split.num_samples)
  if jax.process_index() == 0:
    os.makedirs(os.path.join(workdir, "reports"), exist_ok=True)
    with open(os.path.join(workdir, "reports", "complexity.md"), "w") as f:
      f.write(cost.table(config.complexity.param_dtype) + "\n")
    with open(os.path.join(workdir, "reports", "complexity.json"), "w") as f:
      json.dump(cost.as_dict(config.complexity.param_dtype), f, indent=1)
  print(f"Model: {cost.params:,} parameters, {cost.macs:,} MACs per clip; training on "
        f"{len(train_split)} clips, validating on {len(validation)}", flush=True)

  def evaluate(trainer, state):
    return common.evaluate_split(trainer, state, validation, config.evaluate.batch_size,
                                 "validation")

  result = common.loop.fit(task, config, workdir,
                           common.train_data(config, train_split, task.columns),
                           evaluate=evaluate,
                           initialize=model_init.pretrained_initializer(config))
  memory = memory_report(result.state)
  print(f"Memory: train state {memory['train_state_mb']:.2f} MB on the devices, peak host "
        f"{memory['peak_host_mb']:.0f} MB resident", flush=True)
  outputs = {"final_step": int(result.state.step), "validation": result.last_eval,
             "params": cost.params, "macs": cost.macs, "memory": memory}
  common.write_done(workdir, stage, config, outputs)
  return outputs


def memory_report(state) -> dict:
  """Train-state MB on the devices, this process's peak resident host MB, and the first
  device's peak MB in use where the backend reports it (GPU/TPU)."""
  report = {"train_state_mb": state_lib.memory_bytes(state) / 2**20,
            # ru_maxrss is in KiB on Linux.
            "peak_host_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10}
  stats = getattr(jax.local_devices()[0], "memory_stats", lambda: None)()
  if stats and "peak_bytes_in_use" in stats:
    report["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
  return report


def run(config, workdir: str) -> dict:
  return fit_run(config, workdir, "train")


def run_distill(config, workdir: str) -> dict:
  from jax_asc.losses import registry
  settings = tasks.family(config).loss_settings(config)
  teacher_terms = [t for t in registry.active(config.loss.terms)
                   if registry.TERMS[t].teacher_name(settings[t])]
  if not teacher_terms:
    raise ValueError("stage distill needs a teacher term in loss.terms: e.g. kd (reading a "
                     "cache teacher of config.teachers) or ssfm / dfm (an online teacher)")
  return fit_run(config, workdir, "distill")
