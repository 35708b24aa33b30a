"""Stage `predict`: this run's logits on whole splits, cached for distillation.

For each split of `predict.splits` ("train", "validation", "test" or a split name) writes
`<workdir>/predictions/<split>.npz` (see stages/teachers.py) from checkpoint `predict.checkpoint`
(latest, best or soup), with the metadata a student checks before using it.
"""
from __future__ import annotations

import dataclasses
import os

from jax_asc import fingerprint
from jax_asc.audio import frontends
from jax_asc.stages import common, teachers


def run(config, workdir: str) -> dict:
  names = [common.split_alias(config, s.strip()) for s in config.predict.splits.split(",")
           if s.strip()]
  if not names:
    raise ValueError("predict.splits is empty")
  splits = common.load_splits(config, config.data.train_split, *names)
  reference = splits[config.data.train_split]     # classes and devices the model was built for
  which = config.predict.checkpoint
  variables, meta = common.restore_variables(config, workdir, which)
  model = common.Inference(config, reference, variables)
  settings = dataclasses.asdict(frontends.settings_from_config(config.frontend))
  outputs = {}
  token = common.new_token()   # also in predict.done.json: the record this cache is checked by
  for name in names:
    split = splits[name]
    logits = model.logits(split)
    path = teachers.predictions_path(workdir, name)
    teachers.save_cache(path, split.filename, logits, {
        "teacher_config_fingerprint": fingerprint.config_fingerprint(config), "token": token,
        "teacher_workdir": os.path.abspath(workdir),
        "model": config.model.to_dict(), "frontend": settings,
        "checkpoint": {"which": which, "step": int(meta["step"])},
        "dataset": config.data.name, "split": name,
        "split_fingerprint": teachers.split_fingerprint(split), "classes": list(split.classes)})
    outputs[name] = path
    print(f"predict: {len(split)} clips of {name!r} → {path}", flush=True)
  common.write_done(workdir, "predict", config, outputs, token=token)
  return outputs
