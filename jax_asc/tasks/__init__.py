"""Task families: what a run trains, built from its config (`config.task`).

A family module gives:
  build(config, split, *, dtype, need_teachers, outputs, impulse_responses) → `train.step.Task`:
    the model, its inputs from a batch (frontend, augmentation), its teachers, the loss
    (`loss(output, batch, ctx)`, terms by name from `losses.registry`), the named per-example
    outputs (`OUTPUTS`), its evaluators and the model's random streams;
  join_cache_teachers(config, split, workdir) → the split with the cache-teacher columns the
    loss reads;
  OUTPUTS: the output names `predict` may ask for.
The trainer knows no family: a stage builds the task here and hands it to `train.loop`.

| family | what | outputs |
|---|---|---|
| classification | one label per clip (reports 000-003) | logits, embedding |
| tagging | K event tracks of a spatial mixture (report 004) | track_logits, tokens |
| separation | K dry sources of a spatial mixture queried by label (report 004) | waveforms |

A family may also give `complexity_input(config, n_classes, num_samples)` → (model, input
shape) when its model is not a classifier of (1, n_mels, frames) log-mels.
"""
from __future__ import annotations

from jax_asc.tasks import classification, separation, tagging

TASKS = {"classification": classification, "tagging": tagging, "separation": separation}


def family(config):
  """The task family module of `config.task` (an unknown name lists the registered ones)."""
  name = config.get("task", "classification")
  if name not in TASKS:
    raise ValueError(f"config.task must be one of {sorted(TASKS)}, got {name!r}")
  return TASKS[name]


def build(config, split, **kwargs):
  """`family(config).build(config, split, **kwargs)`: the run's `train.step.Task`."""
  return family(config).build(config, split, **kwargs)
