"""Stage `evaluate`: restore a checkpoint of the run and evaluate it on a split.

Runs the task's evaluators over its named outputs; for a split with labels and a task with
logits it also writes the classification report: `<workdir>/reports/<split>.{json,md}` and
`<split>_confusion.png`, and prints the per-device table and the complexity table. With
`evaluate.fp16`, the model is also evaluated with float16 weights and inputs and the accuracy
difference is reported (report 001); with `evaluate.int8`, with its parameters quantised to int8
(per-channel weights, jax_asc/eval/quantize.py). No teacher of the run is loaded.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jax_asc.eval import evaluators, metrics, quantize, report
from jax_asc.stages import common


def run(config, workdir: str) -> dict:
  split = common.load_splits(config, config.evaluate.split)[config.evaluate.split]
  common.record_skipped(workdir, [split])
  which = config.evaluate.checkpoint
  variables, meta = common.restore_variables(config, workdir, which)
  name = f"{config.evaluate.split}"

  def evaluate(dtype, weights=variables):
    model = common.Inference(config, split, weights, dtype=dtype,
                             use_ema=config.evaluate.use_ema)
    outputs = model.outputs(split)
    result = {}
    if "logits" in outputs and "label" in split:
      devices = split.get("recording_device")
      devices = np.zeros(len(split), np.int32) if devices is None else devices
      result = metrics.classification_metrics(outputs["logits"], split["label"], devices,
                                              list(split.classes), list(split.devices))
    result["metrics"] = evaluators.scalars(model.task.evaluators, outputs, split, name)
    return result

  result = evaluate(jnp.float32)
  result["checkpoint"] = {"which": which, "step": int(meta["step"])}
  classification = "accuracy" in result

  def change(other, **extra):
    return {"accuracy": other["accuracy"], "macro_accuracy": other["macro_accuracy"],
            "per_device": other["per_device"], "device_groups": other["device_groups"],
            "accuracy_change": other["accuracy"] - result["accuracy"], **extra}

  if config.evaluate.fp16 and classification:
    result["fp16"] = change(evaluate(jnp.float16))
  if config.evaluate.int8 and classification:
    used = "ema_params" if config.evaluate.use_ema else "params"
    params, summary = quantize.fake_quantize_int8(variables[used])
    result["int8"] = change(evaluate(jnp.float32, dict(variables, **{used: params})),
                            quantisation=summary)
  cost = common.model_complexity(config, len(split.classes), split.num_samples)
  result["params"], result["macs"] = cost.params, cost.macs
  if classification:
    paths = common.write_report(workdir, name, result, split.classes)
  else:
    paths = common.write_metrics(workdir, name, result)
  if jax.process_index() == 0:
    if classification:
      print(report.markdown_table(result, f"{name} ({which} checkpoint, step {meta['step']})"))
    else:
      print("\n".join(f"{k}: {v:.4f}" for k, v in result["metrics"].items()))
    for key, label in (("fp16", "float16"), ("int8", "int8 weights")):
      if key in result:
        print(f"{label}: accuracy {100 * result[key]['accuracy']:.2f}% "
              f"({100 * result[key]['accuracy_change']:+.2f} points vs float32)")
    print(cost.table(config.complexity.param_dtype), flush=True)
  done = {"reports": paths, **result["metrics"]}
  if classification:
    done["accuracy"] = result["accuracy"]
  common.write_done(workdir, "evaluate", config, done)
  return result
