"""What the stages share: data, the classification task, the trainer set-up, evaluation."""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Dict, Optional

import jax
import numpy as np

from jax_asc import data as data_lib
from jax_asc import models
from jax_asc.audio import frontends
from jax_asc.data import pipeline
from jax_asc.data.dataset import Split
from jax_asc.eval import complexity, metrics, report
from jax_asc.losses import classification
from jax_asc.train import loop


def load_splits(config) -> Dict[str, Split]:
  return data_lib.load_splits(config.data)


def get_split(splits: Dict[str, Split], name: str, key: str) -> Split:
  if name not in splits:
    raise KeyError(f"config.{key} = {name!r} is not a split of this dataset; "
                   f"splits: {sorted(splits)}")
  return splits[name]


def classification_task(config, n_classes: int) -> loop.Task:
  """Log-mel frontend (+ augmentation when training) → model → cross-entropy."""
  settings = frontends.settings_from_config(config.frontend)
  augment = frontends.augment_from_config(config.augment)
  model = models.build(config.model, n_classes=n_classes)

  def make_inputs(key, batch):
    return frontends.log_mel(batch["waveform"], settings, key=key,
                             aug=augment if key is not None else None)

  def loss(logits, batch, key, loss_state):
    del key
    value = classification.cross_entropy(logits, batch["label"],
                                         label_smoothing=config.loss.label_smoothing)
    accuracy = (logits.argmax(-1) == batch["label"]).mean()
    return value, {"accuracy": accuracy}, loss_state

  return loop.Task(model=model, make_inputs=make_inputs, loss=loss)


def train_data(config, split: Split) -> loop.TrainData:
  def batches(start_step):
    return pipeline.train_batches(split, global_batch=config.batch_size, seed=config.seed,
                                  start_step=start_step, process_index=jax.process_index(),
                                  process_count=jax.process_count())
  return loop.TrainData(pipeline.steps_per_epoch(len(split), config.batch_size), batches)


def predict(trainer: loop.Trainer, state, split: Split, batch_size: int,
            use_ema: bool = False) -> np.ndarray:
  batches = pipeline.eval_batches(split, global_batch=batch_size,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count())
  return trainer.predict(state, batches, num_examples=len(split), use_ema=use_ema)


def evaluate_split(trainer, state, split: Split, batch_size: int, use_ema: bool = False) -> Dict:
  logits = predict(trainer, state, split, batch_size, use_ema)
  return metrics.classification_metrics(logits, split.label, split.device, list(split.classes),
                                        list(split.devices))


def model_complexity(config, n_classes: int, num_samples: int) -> complexity.Complexity:
  """Complexity of the model for one clip of `num_samples` samples (frontend excluded)."""
  settings = frontends.settings_from_config(config.frontend)
  model = models.build(config.model, n_classes=n_classes)
  return complexity.count(model, (1, settings.n_mels, settings.num_frames(num_samples)))


def config_fingerprint(config) -> str:
  return hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()[:16]


def write_done(workdir: str, stage: str, config, outputs: Optional[dict] = None) -> None:
  """`<workdir>/<stage>.done.json`: lets launch scripts skip a finished stage."""
  if jax.process_index() > 0:
    return
  with open(os.path.join(workdir, f"{stage}.done.json"), "w") as f:
    json.dump({"stage": stage, "config_fingerprint": config_fingerprint(config),
               "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "outputs": outputs or {}}, f,
              indent=1)


def write_report(workdir: str, name: str, result: Dict, class_names) -> Dict[str, str]:
  if jax.process_index() > 0:
    return {}
  return report.write(result, list(class_names), os.path.join(workdir, "reports"), name)
