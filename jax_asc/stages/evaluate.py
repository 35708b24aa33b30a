"""Stage `evaluate`: restore a checkpoint of the run and evaluate it on a split.

Writes `<workdir>/reports/<split>.{json,md}` and `<split>_confusion.png`, and prints the
per-device table and the complexity table. With `evaluate.fp16`, the model is also evaluated
with float16 weights and inputs and the accuracy difference is reported (report 001).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_asc.eval import metrics, report
from jax_asc.stages import common


def run(config, workdir: str) -> dict:
  split = common.load_splits(config, config.evaluate.split)[config.evaluate.split]
  common.record_skipped(workdir, [split])
  which = config.evaluate.checkpoint
  variables, meta = common.restore_variables(config, workdir, which)

  def evaluate(dtype):
    model = common.Inference(config, split, variables, dtype=dtype,
                             use_ema=config.evaluate.use_ema)
    logits = model.logits(split)
    return metrics.classification_metrics(logits, split.label, split.device,
                                          list(split.classes), list(split.devices))

  result = evaluate(jnp.float32)
  result["checkpoint"] = {"which": which, "step": int(meta["step"])}
  if config.evaluate.fp16:
    half = evaluate(jnp.float16)
    result["fp16"] = {"accuracy": half["accuracy"], "macro_accuracy": half["macro_accuracy"],
                      "per_device": half["per_device"], "device_groups": half["device_groups"],
                      "accuracy_change": half["accuracy"] - result["accuracy"]}
  name = f"{config.evaluate.split}"
  cost = common.model_complexity(config, len(split.classes), split.num_samples)
  result["params"], result["macs"] = cost.params, cost.macs
  paths = common.write_report(workdir, name, result, split.classes)
  if jax.process_index() == 0:
    print(report.markdown_table(result, f"{name} ({which} checkpoint, step {meta['step']})"))
    if "fp16" in result:
      print(f"float16: accuracy {100 * result['fp16']['accuracy']:.2f}% "
            f"({100 * result['fp16']['accuracy_change']:+.2f} points vs float32)")
    print(cost.table(config.complexity.param_dtype), flush=True)
  common.write_done(workdir, "evaluate", config, {"reports": paths, "accuracy":
                                                  result["accuracy"]})
  return result
