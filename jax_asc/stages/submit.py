"""Stage `submit`: the DCASE 2025 Task 1 submission file for an evaluation set.

Reads the evaluation list of `config.submission` (dataset `dcase25_eval` at `submission.root`:
`evaluation_setup/fold1_test.csv` with `filename` and `device_id`), predicts every listed clip
and writes `<workdir>/<submission.out>` in the official layout (TAB-separated `filename,
scene_label, <one probability per class>`, one row per listed file in the list's order), then
validates the written file (jax_asc/eval/submission.py).

Routing (`submission.routing`):
  device    each clip goes to the device-specific model of its `device_id` (stage
            finetune_device of this run, `<workdir>/devices/<device>/`, last checkpoint);
            `unknown` goes to the general model (`submission.checkpoint`). A listed device
            with no fine-tuned model is an error naming it (it is neither known nor `unknown`).
  general   every clip goes to the general model.
`submission.fp16` predicts with float16 weights and inputs (the DCASE25 baseline's test).
"""
from __future__ import annotations

import copy
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jax_asc import data as data_lib
from jax_asc.eval import submission as submission_lib
from jax_asc.stages import common

ROUTINGS = ("device", "general")
UNKNOWN = "unknown"


def evaluation_split(config):
  """The listed evaluation clips (`submission.dataset`, split `submission.split`)."""
  sub = config.submission
  if not sub.root:
    raise ValueError("submission.root is empty: point it at the evaluation set's folder (the one "
                     "holding evaluation_setup/fold1_test.csv)")
  cfg = copy.deepcopy(config.data)
  with cfg.unlocked():
    cfg.update(name=sub.dataset, root=sub.root, train_split=sub.split,
               validation_split="validation", test_split=sub.split, selection_split="validation",
               segment_seconds=0.0)
  return data_lib.load_splits(cfg, [sub.split])[sub.split]


def tuned_devices(workdir: str, needed_by: str = "submission.routing='device'",
                  instead: str = "set submission.routing='general'") -> list:
  """The devices stage finetune_device fine-tuned in this run (its record); without the record
  an error saying that `needed_by` needs it, or do `instead`."""
  path = os.path.join(workdir, "finetune_device.done.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{needed_by} needs the device-specific models: no {path}; run "
                            f"stage finetune_device first, or {instead}")
  with open(path) as f:
    return list(json.load(f)["outputs"]["devices"])


def route(eval_devices, known, source: str = "the evaluation list", names=None) -> dict:
  """{model: row indices}: each row to its device's model ("" = the general model for
  `unknown`). `eval_devices`: the device name of every row; a device without a model is an
  error naming `source` and the first row of each such device (its name in `names`, if given)."""
  eval_devices = np.asarray(eval_devices)
  strangers = sorted(set(map(str, eval_devices)) - set(known) - {UNKNOWN})
  if strangers:
    first = {d: int(np.flatnonzero(eval_devices == d)[0]) for d in strangers}
    where = (f"first at rows {first}" if names is None else
             f"e.g. { {d: names[row] for d, row in first.items()} }")
    raise ValueError(f"{source} names device(s) {strangers} ({where}) for which this run has "
                     f"no device-specific model (fine-tuned: {list(known)}); only '{UNKNOWN}' "
                     "goes to the general model")
  routes = {"": np.flatnonzero(eval_devices == UNKNOWN)}
  for device in known:
    routes[device] = np.flatnonzero(eval_devices == device)
  return {k: v for k, v in routes.items() if len(v)}


def run(config, workdir: str) -> dict:
  sub = config.submission
  if sub.routing not in ROUTINGS:
    raise ValueError(f"submission.routing must be one of {ROUTINGS}, got {sub.routing!r}")
  evaluation = evaluation_split(config)
  common.record_skipped(workdir, [evaluation])
  reference = common.load_splits(config, config.data.train_split)[config.data.train_split]
  if tuple(evaluation.classes) != tuple(reference.classes):
    raise ValueError(f"the evaluation set's classes {list(evaluation.classes)} differ from the "
                     f"classes this run was trained on {list(reference.classes)}")
  names = np.array(evaluation.devices)[np.asarray(evaluation["recording_device"])]
  if sub.routing == "device":
    routes = route(names, tuned_devices(workdir))
  else:
    routes = {"": np.arange(len(evaluation))}
  dtype = jnp.float16 if sub.fp16 else jnp.float32
  logits = np.full((len(evaluation), len(reference.classes)), np.nan, np.float32)
  counts = {}
  for device, rows in routes.items():
    if device:
      variables, _ = common.restore_variables(
          config, os.path.join(workdir, "devices", device), "latest")
    else:
      variables, _ = common.restore_variables(config, workdir, sub.checkpoint)
    model = common.Inference(config, reference, variables, dtype=dtype)
    logits[rows] = model.logits(evaluation.take(rows))
    counts[device or "general"] = int(len(rows))
  assert not np.isnan(logits).any(), "a listed clip was routed to no model"
  filenames = [str(f) for f in evaluation["filename"]]
  path = os.path.join(workdir, sub.out)
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    submission_lib.write_submission(path, filenames, logits, list(reference.classes))
    rows_written = submission_lib.validate_submission(path, filenames, list(reference.classes))
    print(f"submit: {rows_written} clips → {path} (models: {counts})", flush=True)
  outputs = {"path": path, "rows": len(filenames), "routing": sub.routing, "models": counts,
             "dtype": "float16" if sub.fp16 else "float32"}
  common.write_done(workdir, "submit", config, outputs)
  return outputs
