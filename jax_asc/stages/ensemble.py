"""Stage `ensemble`: gather this run's cache teachers from their members' predictions.

For every cache teacher of `config.teachers` that a weighted loss term reads, (re)writes
`<workdir>/teacher_caches/<name>/<train split>/` (jax_asc/teachers/cache.py) from the members'
current caches. When every member has also predicted the evaluation split, evaluates the
combined teacher there and writes `<workdir>/reports/ensemble_<split>.{json,md}` (the
teachers' side of the report tables; with several cache teachers, `ensemble_<name>_<split>`).
"""
from __future__ import annotations

import os

import jax
import numpy as np

from jax_asc import tasks, teachers as teachers_lib
from jax_asc.eval import metrics, report
from jax_asc.losses import distillation
from jax_asc.stages import common
from jax_asc.teachers import cache as cache_lib


def ensemble_metrics(member_logits: np.ndarray, mode: str, split) -> dict:
  """Classification metrics of the combined members' logits (N, K, C) on `split`."""
  log_p = np.asarray(distillation.ensemble_log_probs(np.swapaxes(member_logits, 0, 1), 1.0,
                                                     mode))
  return metrics.classification_metrics(log_p, split["label"], split["recording_device"],
                                        list(split.classes), list(split.devices))


def cache_teachers(config) -> dict:
  """{name: spec} of the cache teachers a weighted loss term reads."""
  read = tasks.family(config).teachers_read(config)
  return {n: s for n, s in teachers_lib.specs(config).items()
          if s.source == "cache" and n in read}


def run(config, workdir: str) -> dict:
  train_name, eval_name = config.data.train_split, config.evaluate.split
  splits = common.load_splits(config, train_name, eval_name)
  specs = cache_teachers(config)
  if not specs:
    raise ValueError("stage ensemble: no loss term reads a cache teacher of config.teachers "
                     f"(teachers: {sorted(teachers_lib.specs(config))})")
  outputs = {}
  for name, spec in specs.items():
    stacked = cache_lib.gathered(spec, name, workdir, splits[train_name], rebuild=True)
    outputs[name] = {"cache": cache_lib.gathered_dir(workdir, name, train_name),
                     "members": int(stacked.shape[1])}
    members = cache_lib.runs_of(spec, name)
    have_eval = all(os.path.exists(os.path.join(cache_lib.predictions_dir(m, eval_name),
                                                "metadata.json")) for m in members)
    if not (have_eval and spec.output == "logits"):
      continue
    logits, _ = cache_lib.gather(spec, name, splits[eval_name])
    result = ensemble_metrics(logits, cache_lib.ensemble_mode(spec), splits[eval_name])
    result["members"] = [os.path.abspath(m) for m in members]
    result["mode"] = spec.combine
    label = f"ensemble_{eval_name}" if len(specs) == 1 else f"ensemble_{name}_{eval_name}"
    paths = common.write_report(workdir, label, result, splits[eval_name].classes)
    if jax.process_index() == 0:
      print(report.markdown_table(result, f"teacher {name} ({spec.combine}: "
                                  f"{cache_lib.members_summary(members)}) on {eval_name}"),
            flush=True)
    outputs[name].update(accuracy=result["accuracy"], reports=paths)
  common.write_done(workdir, "ensemble", config, outputs)
  return outputs
