"""Stage `export`: the run's model as LiteRT flatbuffers, checked in the LiteRT interpreter.

Converts checkpoint `export.checkpoint` (its EMA parameters with `evaluate.use_ema`) to each format of `export.formats` (float32, float16,
int8; jax_asc/stages/litert.py says how each is made) and writes `<workdir>/export/`:

  model_<format>.tflite   `export.frontend` "separate": log-mel (1, n_mels, frames) → logits
                          (1, classes); "included": waveform (1, channels, samples) float32 →
                          logits (float32 and float16 only)
  frontend.tflite         ("separate") waveform → log-mel, float32 in every format: the DCASE
                          complexity counts the model alone, and an FFT and a logarithm in int8
                          wreck the input (int8 with the frontend included is refused)
  report.json, report.md  per format: file bytes; the largest |Δ logit| against the JAX model
                          (float32) on the checked clips; accuracy of the interpreter and of JAX
                          on them, and how often their labels agree; the interpreter's median
                          latency per clip (batch 1, `export.threads` threads; all, and the
                          model alone); operators, and in
                          int8 those left in float; parameter bytes at that precision and MACs
                          against the DCASE limits

The checked clips are the first `export.verify_clips` of `evaluate.split` (0 = all of it). The
float32 export must equal the JAX model within `export.float32_tolerance` · max(1, max |logit|),
else the stage stops: a converter that changed the function is a bug, not a precision choice.
int8 calibrates activation ranges on `export.calibration_clips` clips of the training split
(a seeded draw), through the JAX frontend when the frontend is separate.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List

import jax
import jax.numpy as jnp
import numpy as np

from jax_asc.eval import complexity as complexity_lib
from jax_asc.stages import common, litert
from jax_asc.train import step as step_lib

FRONTENDS = ("included", "separate")


def formats_of(config) -> List[str]:
  names = [f.strip() for f in config.export.formats.split(",") if f.strip()]
  unknown = [f for f in names if f not in litert.FORMATS]
  if unknown or not names:
    raise ValueError(f"export.formats={config.export.formats!r}: expected a comma-separated "
                     f"subset of {list(litert.FORMATS)}")
  return names


def functions(task, variables, use_ema: bool = False):
  """(frontend: waveform (B, C, S) → model input, model: input → logits) in evaluation mode,
  with the EMA parameters when `use_ema`."""
  params = variables["ema_params"] if use_ema else variables["params"]
  stats = variables.get("batch_stats") or {}

  def frontend(waveform):
    return step_lib.split_prepared(task.make_inputs(None, {"waveform": waveform}))[0]

  def model(inputs):
    output = task.apply({"params": params, "batch_stats": stats}, inputs, train=False)
    return task.outputs(output, {})["logits"].astype(jnp.float32)

  return frontend, model


def run(config, workdir: str) -> Dict:
  cfg = config.export
  formats = formats_of(config)
  if cfg.frontend not in FRONTENDS:
    raise ValueError(f"export.frontend must be one of {FRONTENDS}, got {cfg.frontend!r}")
  if cfg.frontend == "included" and "int8" in formats:
    raise ValueError("export.formats has int8 with export.frontend='included': full-integer "
                     "quantisation would put the frontend's FFT and logarithm in int8 too (on "
                     "report 000's smoke student its labels then agreed with float32 on 10 % of "
                     "the clips); export the frontend separately (export.frontend='separate')")
  names = [config.data.train_split, config.evaluate.split]
  splits = common.load_splits(config, *names)
  train_split, verify = splits[names[0]], splits[names[1]]
  variables, meta = common.restore_variables(config, workdir, cfg.checkpoint)
  inference = common.Inference(config, train_split, variables, use_ema=config.evaluate.use_ema)
  frontend, model = functions(inference.task, variables, config.evaluate.use_ema)
  full = lambda waveform: model(frontend(waveform))
  count = len(verify) if cfg.verify_clips <= 0 else min(cfg.verify_clips, len(verify))
  clips = verify.audio("waveform", np.arange(count))                 # (n, C, S)
  example = clips[:1]
  jax_logits = np.asarray(inference.logits(verify.take(np.arange(count))))
  draw = np.random.default_rng(config.seed).permutation(len(train_split))
  calibration_rows = np.sort(draw[:min(cfg.calibration_clips, len(train_split))])
  jit_frontend = jax.jit(frontend)

  def calibration():
    for row in calibration_rows:
      clip = train_split.audio("waveform", np.array([row]))
      yield clip if cfg.frontend == "included" else np.asarray(jit_frontend(clip))

  folder = os.path.join(workdir, "export")
  frontend_interpreter = None
  result = {"checkpoint": {"which": cfg.checkpoint, "step": int(meta["step"])},
            "frontend": cfg.frontend, "clips": count, "split": config.evaluate.split,
            "formats": {}}
  if cfg.frontend == "separate":
    blob = litert.convert(frontend, example, "float32", name="waveform")
    result["frontend_file"] = {"path": os.path.join(folder, "frontend.tflite"),
                               "bytes": litert.save(blob, os.path.join(folder,
                                                                       "frontend.tflite"))}
    frontend_interpreter = litert.Interpreter(blob, cfg.threads)
    frontend_latency = frontend_interpreter.latency_ms(example, cfg.latency_runs)
    result["frontend_file"]["latency_ms_per_clip"] = frontend_latency
    model_example = np.asarray(jit_frontend(example))
  cost = common.model_complexity(config, len(train_split.classes), train_split.num_samples)
  labels = np.asarray(verify["label"][:count]) if "label" in verify else None

  for fmt in formats:
    if cfg.frontend == "included":
      blob = litert.convert(full, example, fmt, calibration, name="waveform")
    else:
      blob = litert.convert(model, model_example, fmt, calibration, name="log_mel")
    path = os.path.join(folder, f"model_{fmt}.tflite")
    size = litert.save(blob, path)
    interpreter = litert.Interpreter(blob, cfg.threads)

    def predict(clip):
      x = clip if frontend_interpreter is None else frontend_interpreter(clip)
      return interpreter(x)

    logits = np.concatenate([predict(clips[i:i + 1]) for i in range(count)])
    if frontend_interpreter is None:
      model_latency = latency = interpreter.latency_ms(example, cfg.latency_runs)
    else:
      model_latency = interpreter.latency_ms(model_example, cfg.latency_runs)
      latency = frontend_latency + model_latency
    entry = {"path": path, "bytes": size,
             "max_abs_logit_difference": float(np.abs(logits - jax_logits).max()),
             "label_agreement": float((logits.argmax(-1) == jax_logits.argmax(-1)).mean()),
             "latency_ms_per_clip": latency, "model_latency_ms_per_clip": model_latency,
             "threads": cfg.threads,
             "operators": len(interpreter.operators()),
             "param_bytes": cost.param_bytes(fmt), "macs": cost.macs,
             "within_dcase_limits": cost.within_dcase_limits(fmt)}
    if fmt == "int8":
      entry["float_operators"] = interpreter.float_operators()
    if labels is not None and (labels >= 0).all():
      entry["accuracy"] = float((logits.argmax(-1) == labels).mean())
      entry["jax_accuracy"] = float((jax_logits.argmax(-1) == labels).mean())
    result["formats"][fmt] = entry
    if fmt == "float32":
      bound = cfg.float32_tolerance * max(1.0, float(np.abs(jax_logits).max()))
      if entry["max_abs_logit_difference"] > bound:
        raise RuntimeError(f"the float32 LiteRT export of {workdir} differs from the JAX model "
                           f"by {entry['max_abs_logit_difference']:.3g} in a logit (bound "
                           f"{bound:.3g}, export.float32_tolerance): the conversion changed "
                           "the function")
  if jax.process_index() == 0:
    with open(os.path.join(folder, "report.json"), "w") as f:
      json.dump(result, f, indent=1)
    with open(os.path.join(folder, "report.md"), "w") as f:
      f.write(markdown(result) + "\n")
    print(markdown(result), flush=True)
  common.write_done(workdir, "export", config, result)
  return result


def markdown(result: Dict) -> str:
  """The export report as a table, one row per format."""
  limit = complexity_lib.DCASE_MAX_PARAM_BYTES
  rows = [f"LiteRT export (frontend {result['frontend']}; {result['clips']} clips of "
          f"{result['split']!r}; checkpoint {result['checkpoint']['which']} step "
          f"{result['checkpoint']['step']})", "",
          "| format | file (B) | max abs Δ logit | agreement | accuracy (JAX) | latency (ms/clip: "
          f"all, model) | params (B, limit {limit:,}) | MACs |",
          "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for fmt, e in result["formats"].items():
    accuracy = (f"{100 * e['accuracy']:.2f} % ({100 * e['jax_accuracy']:.2f} %)"
                if "accuracy" in e else "–")
    rows.append(f"| {fmt} | {e['bytes']:,} | {e['max_abs_logit_difference']:.2e} | "
                f"{100 * e['label_agreement']:.1f} % | {accuracy} | "
                f"{e['latency_ms_per_clip']:.3f}, {e['model_latency_ms_per_clip']:.3f} | "
                f"{e['param_bytes']:,} "
                f"{'PASS' if e['within_dcase_limits'] else 'FAIL'} | {e['macs']:,} |")
  if "frontend_file" in result:
    rows += ["", f"frontend.tflite: {result['frontend_file']['bytes']:,} B (float32), "
             f"{result['frontend_file']['latency_ms_per_clip']:.3f} ms per clip"]
  int8 = result["formats"].get("int8")
  if int8 and int8["float_operators"]:
    rows += ["", f"int8: operators left in float: {', '.join(int8['float_operators'])}"]
  return "\n".join(rows)
