"""Stage `evaluate`: restore a checkpoint of the run and evaluate it on a split.

Writes `<workdir>/reports/<split>.{json,md}` and `<split>_confusion.png`, and prints the
per-device table and the complexity table.
"""
from __future__ import annotations

import os

import jax

from jax_asc.eval import report
from jax_asc.stages import common
from jax_asc.train import checkpoint as checkpoint_lib
from jax_asc.train import loop


def run(config, workdir: str) -> dict:
  split = common.load_splits(config, config.evaluate.split)[config.evaluate.split]
  common.record_skipped(workdir, [split])
  task = common.classification_task(config, split)
  # The state template only needs shapes: the evaluated split stands in for the training data.
  batches = lambda start: common.eval_batches(split, config.evaluate.batch_size)
  setup = loop.setup(task, config, loop.TrainData(steps_per_epoch=1, batches=batches))

  which = config.evaluate.checkpoint
  checkpoints = checkpoint_lib.Checkpoints(
      workdir, best_metric=config.checkpoint.best_metric, best_mode=config.checkpoint.best_mode,
      keep_best=config.checkpoint.keep_best)
  try:
    restored = checkpoints.restore(setup.state, which)
  finally:
    checkpoints.close()
  if restored is None:
    raise FileNotFoundError(f"no {which!r} checkpoint in {os.path.join(workdir, 'checkpoints')}: "
                            "run the train stage first (or set evaluate.checkpoint)")
  state, meta = restored
  result = common.evaluate_split(setup.trainer, state, split, config.evaluate.batch_size,
                                 config.evaluate.use_ema)
  result["checkpoint"] = {"which": which, "step": int(meta["step"])}
  name = f"{config.evaluate.split}"
  paths = common.write_report(workdir, name, result, split.classes)
  cost = common.model_complexity(config, len(split.classes), split.num_samples)
  if jax.process_index() == 0:
    print(report.markdown_table(result, f"{name} ({which} checkpoint, step {meta['step']})"))
    print(cost.table(config.complexity.param_dtype), flush=True)
  common.write_done(workdir, "evaluate", config, {"reports": paths, "accuracy":
                                                  result["accuracy"]})
  return result
