"""Named teachers: `config.teachers = {name: {source: cache | online | ema, …}}`.

Inside the step a task sees `ctx.teachers[name]`: that teacher's outputs on this step's batch,
computed once. Four sources:

  cache   per-example outputs other runs predicted (their `predict` stage), gathered by filename
          and joined to the split as the column `teacher/<name>/<output>` (N, K, …), K members;
          settings: runs (comma-separated run workdirs), output ("logits"), combine ("logits":
          softmax of the mean logits, report 000; "probabilities": mean of the softmaxes,
          report 001; "mean": the mean of the members' outputs). See `cache.py`.
  online  another run's model, frozen, run inside the jitted step on the student's augmented
          waveform through its own frontend and sample rate; settings: run, checkpoint (best,
          latest, soup), dtype (float32, bfloat16, float16), sharding (replicated, split). See
          `online.py`.
  ema     the exponential moving average of the student's parameters, as it was before this
          step's update, on the student's input (a mean teacher); settings: decay (report 004:
          0.999), which is the run's EMA momentum.
  qwen_audio  report 004's semantic teacher: a frozen Qwen2-Audio encoder's tokens of each
          mixture's clean sources, computed once by stage `teacher_cache` and joined as the
          column `teacher/<name>/tokens` (N, bins, d); settings: checkpoint, init_seed, encoder,
          bins, folder, splits, batch_size, dtype. See `semantic.py`.

A loss term names the teacher it reads (`config.loss.<term>.teacher`). Evaluating, predicting
with or exporting a student never loads its teachers.
"""
from __future__ import annotations

import types
from typing import Dict

SOURCES: Dict[str, Dict[str, object]] = {
    "cache": dict(runs="", output="logits", combine="logits"),
    "online": dict(run="", checkpoint="best", dtype="float32", sharding="replicated"),
    "ema": dict(decay=0.999),
    # A frozen Qwen2-Audio encoder's tokens of the clean sources, cached (semantic.py).
    "qwen_audio": dict(checkpoint="", init_seed=0, encoder={}, bins=32, folder="",
                       splits="train", batch_size=4, dtype="float32"),
}


def specs(config) -> Dict[str, types.SimpleNamespace]:
  """{name: settings} of `config.teachers` (defaults filled in), each checked: a known source
  and only its keys."""
  out = {}
  teachers = config.get("teachers") if hasattr(config, "get") else None
  for name, spec in (teachers or {}).items():
    spec = dict(spec)
    source = spec.get("source")
    if source not in SOURCES:
      raise ValueError(f"teachers.{name}.source must be one of {sorted(SOURCES)}, got "
                       f"{source!r}")
    valid = set(SOURCES[source]) | {"source"}
    unknown = sorted(set(spec) - valid)
    if unknown:
      raise ValueError(f"teachers.{name} (source {source!r}) has no setting {unknown}; valid: "
                       f"{sorted(valid)}")
    out[name] = types.SimpleNamespace(**dict(SOURCES[source], **spec))
  ema = [n for n, s in out.items() if s.source == "ema"]
  if len(ema) > 1:
    raise ValueError(f"teachers {ema} are all EMA teachers: a run keeps one EMA of the student")
  return out


def ema_decay(config) -> float:
  """The run's EMA momentum: the EMA teacher's decay, or `config.ema_decay` (0 = no EMA).

  Both set to different values is an error (a run keeps one EMA)."""
  decay = float(config.get("ema_decay", 0.0) or 0.0)
  for name, spec in specs(config).items():
    if spec.source != "ema":
      continue
    if not 0.0 < float(spec.decay) < 1.0:
      raise ValueError(f"teachers.{name}.decay must be in (0, 1), got {spec.decay}")
    if decay and decay != float(spec.decay):
      raise ValueError(f"config.ema_decay={decay} differs from teachers.{name}.decay="
                       f"{spec.decay}: a run keeps one EMA of the student; set one of them")
    decay = float(spec.decay)
  return decay
