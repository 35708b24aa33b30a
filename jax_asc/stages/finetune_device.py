"""Stage `finetune_device`: device-specific fine-tuning (DSFT, report 000 §5.3) and
device-routed evaluation.

For each device of `dsft.devices` ("" = every device with training clips) a copy of the
general model (checkpoint `dsft.general_checkpoint` of this run) is trained on that device's
training clips only, with the run's loss (KD from the same teacher cache, CE, …),
`dsft.num_epochs` epochs at `dsft.learning_rate` (report 000: 100 epochs, 1e-5; constant unless
`dsft.schedule` says otherwise), MixStyle off
(as the DCASE25 baseline's device fine-tuning). Each copy lives in `<workdir>/devices/<device>/`
and resumes like any run.

Inference routes every clip of `evaluate.split` to its device's model; devices without one
(unseen devices) go to the general model. Writes `<workdir>/reports/dsft_<split>.{json,md}`:
per-device accuracy before and after DSFT with Δ (report 000 table 2).
"""
from __future__ import annotations

import copy
import json
import os

import jax
import numpy as np

from jax_asc import tasks
from jax_asc.eval import metrics
from jax_asc.stages import common
from jax_asc.train import loop


def device_config(config):
  cfg = copy.deepcopy(config)
  with cfg.unlocked():
    cfg.num_epochs = int(config.dsft.num_epochs)
    cfg.optimizer.learning_rate = float(config.dsft.learning_rate)
    cfg.schedule.name = config.dsft.schedule
    cfg.schedule.warmup_steps = int(config.dsft.warmup_steps)
    cfg.mix.mixstyle_p = 0.0
    if config.dsft.batch_size:
      cfg.batch_size = int(config.dsft.batch_size)
    cfg.model_init.path = ""
  return cfg


def _initializer(general):
  def initialize(state):
    return state.replace(params=jax.tree.map(np.asarray, general["params"]),
                         batch_stats=jax.tree.map(np.asarray, general["batch_stats"]))
  return initialize


def routed_table(before: dict, after: dict, tuned: list, device_names) -> str:
  lines = ["| stage | " + " | ".join(d.upper() for d in device_names) + " | overall |",
           "|---|" + "---|" * (len(device_names) + 1)]
  for label, result in (("after distillation", before), ("after DSFT", after)):
    cells = [f"{100 * result['per_device'][d]:.2f}" if d in result["per_device"] else "–"
             for d in device_names]
    lines.append(f"| {label} | " + " | ".join(cells) + f" | {100 * result['accuracy']:.2f} |")
  deltas = []
  for d in device_names:
    if d in tuned and d in before["per_device"]:
      deltas.append(f"{100 * (after['per_device'][d] - before['per_device'][d]):+.2f}")
    else:
      deltas.append("–")
  lines.append("| Δ | " + " | ".join(deltas) +
               f" | {100 * (after['accuracy'] - before['accuracy']):+.2f} |")
  return "\n".join(lines)


def run(config, workdir: str) -> dict:
  train_name, eval_name = config.data.train_split, config.evaluate.split
  splits = common.load_splits(config, train_name, eval_name)
  train_split, eval_split = splits[train_name], splits[eval_name]
  recorded_by = np.asarray(train_split["recording_device"])
  present = [d for i, d in enumerate(train_split.devices) if np.any(recorded_by == i)]
  devices = [d.strip() for d in config.dsft.devices.split(",") if d.strip()] or present
  general, _ = common.restore_variables(config, workdir, config.dsft.general_checkpoint)
  cfg = device_config(config)
  # The cache teachers' columns are joined to the whole training split (the cache was gathered
  # for it); each device's subset takes its rows.
  family = tasks.family(cfg)
  train_split = family.join_cache_teachers(cfg, train_split, workdir)
  irs = common.impulse_responses(cfg, train_split)

  device_models = {}
  for device in devices:
    subset = common.device_subset(train_split, device)
    device_dir = os.path.join(workdir, "devices", device)
    os.makedirs(device_dir, exist_ok=True)
    print(f"DSFT: device {device}: {len(subset)} clips, {cfg.num_epochs} epochs, "
          f"lr {cfg.optimizer.learning_rate:g}", flush=True)
    task = family.build(cfg, subset, impulse_responses=irs)
    result = loop.fit(task, cfg, device_dir, common.train_data(cfg, subset, task.columns),
                      initialize=_initializer(general))
    device_models[device] = {"params": result.state.params,
                             "batch_stats": result.state.batch_stats}

  before_logits = common.Inference(config, train_split, general).logits(eval_split)
  after_logits = before_logits.copy()
  eval_devices = np.asarray(eval_split["recording_device"])
  for device, variables in device_models.items():
    if device not in eval_split.devices:
      continue
    rows = eval_devices == list(eval_split.devices).index(device)
    if rows.any():
      logits = common.Inference(config, train_split, variables).logits(eval_split)
      after_logits[rows] = logits[rows]
  score = lambda logits: metrics.classification_metrics(
      logits, eval_split["label"], eval_devices, list(eval_split.classes),
      list(eval_split.devices))
  before, after = score(before_logits), score(after_logits)
  table = routed_table(before, after, devices, list(eval_split.devices))
  outputs = {"devices": devices, "before": before, "after": after}
  if jax.process_index() == 0:
    folder = os.path.join(workdir, "reports")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"dsft_{eval_name}.json"), "w") as f:
      json.dump(outputs, f, indent=1)
    with open(os.path.join(folder, f"dsft_{eval_name}.md"), "w") as f:
      f.write(f"# Accuracy (%) by device on {eval_name}, device-routed inference\n\n{table}\n")
    print(table, flush=True)
  common.write_done(workdir, "finetune_device", config,
                    {"devices": devices, "accuracy_before": before["accuracy"],
                     "accuracy_after": after["accuracy"]})
  return outputs
