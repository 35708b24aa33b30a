"""Stage `ensemble`: gather the teacher members' cached logits into this run's KD targets.

Writes `<workdir>/teacher_logits/<train split>.npz` (stages/teachers.py). When every member has
also predicted the evaluation split, evaluates the ensemble there and writes
`<workdir>/reports/ensemble_<split>.{json,md}` (the teachers' side of the report tables).
"""
from __future__ import annotations

import os

import jax
import numpy as np

from jax_asc.eval import metrics, report
from jax_asc.losses import distillation
from jax_asc.stages import common, teachers


def ensemble_metrics(member_logits: np.ndarray, mode: str, split) -> dict:
  log_p = np.asarray(distillation.ensemble_log_probs(member_logits, 1.0, mode))
  return metrics.classification_metrics(log_p, split.label, split.device, list(split.classes),
                                        list(split.devices))


def run(config, workdir: str) -> dict:
  train_name, eval_name = config.data.train_split, config.evaluate.split
  splits = common.load_splits(config, train_name, eval_name)
  path = teachers.ensemble_path(workdir, train_name)
  if os.path.exists(path) and jax.process_index() == 0:
    os.remove(path)                      # rebuilt from the members' current caches
  member_logits = teachers.load_ensemble(config, workdir, splits[train_name])
  outputs = {"cache": path, "members": int(member_logits.shape[0])}
  members = [m.strip() for m in config.teacher.members.split(",") if m.strip()]
  if all(os.path.exists(teachers.predictions_path(m, eval_name)) for m in members):
    logits, _ = teachers.build_ensemble(config, splits[eval_name])
    result = ensemble_metrics(logits, config.teacher.ensemble, splits[eval_name])
    result["members"] = [os.path.abspath(m) for m in members]
    result["mode"] = config.teacher.ensemble
    paths = common.write_report(workdir, f"ensemble_{eval_name}", result,
                                splits[eval_name].classes)
    if jax.process_index() == 0:
      print(report.markdown_table(result, f"teacher ensemble ({config.teacher.ensemble}: "
                                  f"{teachers.members_summary(members)}) on {eval_name}"),
            flush=True)
    outputs.update(accuracy=result["accuracy"], reports=paths)
  common.write_done(workdir, "ensemble", config, outputs)
  return outputs
