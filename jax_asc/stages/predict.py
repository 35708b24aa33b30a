"""Stage `predict`: this run's named outputs on whole splits, cached by filename.

For each split of `predict.splits` ("train", "validation", "test" or a split name) writes
`<workdir>/predictions/<split>/` (jax_asc/teachers/cache.py): `filenames.npy`, one
`<output>.npy` per name of `predict.outputs` (the task family's outputs, e.g. logits,
embedding) and `metadata.json` with what a student checks before using it (this run's config
fingerprint and this stage's token (a digest of the predictions), checkpoint `predict.checkpoint`, dataset, split
fingerprint, classes, frontend settings). No teacher of this run is loaded.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os

import jax
import numpy as np

from jax_asc import fingerprint, tasks
from jax_asc.audio import frontends
from jax_asc.stages import common
from jax_asc.teachers import cache as cache_lib


def run(config, workdir: str) -> dict:
  names = [common.split_alias(config, s.strip()) for s in config.predict.splits.split(",")
           if s.strip()]
  if not names:
    raise ValueError("predict.splits is empty")
  outputs_wanted = tuple(o.strip() for o in config.predict.outputs.split(",") if o.strip())
  offered = tasks.family(config).OUTPUTS
  unknown = sorted(set(outputs_wanted) - set(offered))
  if unknown or not outputs_wanted:
    raise ValueError(f"predict.outputs={config.predict.outputs!r}: the {config.task} task "
                     f"gives {list(offered)}" + (f", not {unknown}" if unknown else ""))
  splits = common.load_splits(config, config.data.train_split, *names)
  reference = splits[config.data.train_split]     # classes and devices the model was built for
  which = config.predict.checkpoint
  variables, meta = common.restore_variables(config, workdir, which)
  model = common.Inference(config, reference, variables, outputs=outputs_wanted)
  settings = dataclasses.asdict(frontends.settings_from_config(config.frontend))
  written = {}
  predicted = {name: model.outputs(splits[name]) for name in names}
  # The token is the predictions' own digest: predicting again what was predicted before (a
  # re-run after a change this run's model does not depend on) gives the same token, so the
  # students that read this cache need not train again (jax_asc/plans.py).
  digest = hashlib.sha256(f"{which}:{int(meta['step'])}".encode())
  for name in names:
    digest.update(f"{name}:{cache_lib.split_fingerprint(splits[name])}".encode())
    for key in sorted(predicted[name]):
      digest.update(key.encode())
      digest.update(np.ascontiguousarray(predicted[name][key]).tobytes())
  token = digest.hexdigest()[:16]   # also in predict.done.json: the record this cache is checked by
  for name in names:
    split, outputs = splits[name], predicted[name]
    folder = cache_lib.predictions_dir(workdir, name)
    if jax.process_index() == 0:
      cache_lib.save(folder, split.filename, outputs, {
          "teacher_config_fingerprint": fingerprint.config_fingerprint(config), "token": token,
          "teacher_workdir": os.path.abspath(workdir),
          "model": config.model.to_dict(), "frontend": settings,
          "checkpoint": {"which": which, "step": int(meta["step"])},
          "dataset": config.data.name, "split": name,
          "split_fingerprint": cache_lib.split_fingerprint(split),
          "classes": list(split.classes)})
    written[name] = folder
    print(f"predict: {', '.join(outputs)} of {len(split)} clips of {name!r} → {folder}",
          flush=True)
  common.write_done(workdir, "predict", config, written, token=token)
  return written
