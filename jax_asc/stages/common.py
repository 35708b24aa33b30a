"""What the stages share: data, the classification task, the trainer set-up, evaluation."""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jax_asc import data as data_lib
from jax_asc import models
from jax_asc.audio import augment, frontends
from jax_asc.data import impulse_responses, pipeline
from jax_asc.data.dataset import Split
from jax_asc.eval import complexity, metrics, report
from jax_asc.losses import classification
from jax_asc.train import loop


def load_splits(config, *names: str) -> Dict[str, Split]:
  """{split name: Split} of `config.data` for the named splits."""
  return data_lib.load_splits(config.data, names)


def record_skipped(workdir: str, splits) -> None:
  """Writes `<workdir>/skipped_files.json` when bad files were left out (skip_bad_files)."""
  skipped = {s.name: [list(item) for item in s.skipped] for s in splits if s.skipped}
  if skipped and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "skipped_files.json"), "w") as f:
      json.dump(skipped, f, indent=1)
    total = sum(len(v) for v in skipped.values())
    print(f"Skipped {total} bad file(s): listed in {workdir}/skipped_files.json", flush=True)


def waveform_augmentation(config, split: Split):
  """(key, batch) → waveforms after DIR → time roll → gain, as `config.waveform_augment` says."""
  cfg = config.waveform_augment
  irs = eligible_ids = None
  if cfg.dir_prob > 0:
    if not cfg.dir_folder:
      raise ValueError("waveform_augment.dir_prob > 0 needs waveform_augment.dir_folder")
    irs, _ = impulse_responses.load_impulse_responses(cfg.dir_folder, split.sample_rate)
    irs = jnp.asarray(irs)
    unknown = [d for d in cfg.dir_devices if d not in split.devices]
    if unknown:
      raise ValueError(f"waveform_augment.dir_devices {unknown} are not devices of "
                       f"{split.dataset or 'this dataset'} ({list(split.devices)})")
    eligible_ids = jnp.asarray([split.devices.index(d) for d in cfg.dir_devices], jnp.int32)

  def apply(key, batch):
    k_dir, k_roll, k_gain = jax.random.split(key, 3)
    x = batch["waveform"]
    if irs is not None:
      eligible = (None if eligible_ids.size == 0 else
                  jnp.any(batch["device"][:, None] == eligible_ids[None, :], axis=1))
      x = augment.device_impulse_response(k_dir, x, irs, cfg.dir_prob, eligible)
    x = augment.time_roll(k_roll, x, cfg.roll_samples)
    return augment.random_gain(k_gain, x, cfg.gain_db)
  return apply


def classification_task(config, split: Split) -> loop.Task:
  """Waveform augmentation → log-mel frontend (+ augmentation) when training → model → CE.

  `split` (the training split) provides the classes, devices and sample rate.
  """
  settings = frontends.settings_from_config(config.frontend)
  if settings.sample_rate != split.sample_rate:
    raise ValueError(f"frontend.sample_rate {settings.sample_rate} differs from the data's "
                     f"{split.sample_rate} Hz (data.sample_rate)")
  augment_cfg = frontends.augment_from_config(config.augment)
  wave_augment = waveform_augmentation(config, split)
  model = models.build(config.model, n_classes=len(split.classes))

  def make_inputs(key, batch):
    if key is None:
      return frontends.log_mel(batch["waveform"], settings)
    k_wave, k_frontend = jax.random.split(key)
    waveform = wave_augment(k_wave, batch)
    return frontends.log_mel(waveform, settings, key=k_frontend, aug=augment_cfg)

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


def eval_batches(split: Split, batch_size: int):
  """This host's masked evaluation batches of `split` (every example once)."""
  return pipeline.eval_batches(split, global_batch=batch_size, process_index=jax.process_index(),
                               process_count=jax.process_count())


def predict(trainer: loop.Trainer, state, split: Split, batch_size: int,
            use_ema: bool = False) -> np.ndarray:
  return trainer.predict(state, eval_batches(split, batch_size), num_examples=len(split),
                         use_ema=use_ema)


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
