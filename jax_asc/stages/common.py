"""What the stages share: data, the classification task, the trainer set-up, evaluation."""
from __future__ import annotations

import json
import os
import time
import uuid
from typing import Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jax_asc import data as data_lib
from jax_asc import fingerprint, models, native
from jax_asc.audio import augment, frontends
from jax_asc.data import impulse_responses, pipeline
from jax_asc.data.dataset import Split
from jax_asc.eval import complexity, metrics, report
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
    irs, _ = impulse_responses.load_impulse_responses(cfg.dir_folder, split.sample_rate,
                                                      cfg.dir_resampler)
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
  """The run's training task (`stages.tasks.build_task`; no workdir: no cached teacher logits)."""
  from jax_asc.stages import tasks
  return tasks.build_task(config, split)


PIPELINES = ("tf_data", "accelerator")
ACCELERATOR_DTYPES = ("float16", "float32")


def accelerator_data(config, split: Split) -> loop.AcceleratorData:
  """The split for the accelerator path (`data.pipeline = "accelerator"`): waveforms in
  `data.accelerator_dtype` (int16 PCM stays int16: as small, and exact), the same step order as
  the tf.data pipeline."""
  cfg = config.data
  if cfg.accelerator_dtype not in ACCELERATOR_DTYPES:
    raise ValueError(f"data.accelerator_dtype must be one of {ACCELERATOR_DTYPES}, got "
                     f"{cfg.accelerator_dtype!r}")
  waveform, scale = split.waveform, float(split.waveform_scale)
  if waveform.dtype != np.int16 and (waveform.dtype != np.dtype(cfg.accelerator_dtype) or scale != 1):
    converted = np.empty(waveform.shape, cfg.accelerator_dtype)
    for start in range(0, len(split), 1024):   # in chunks: the cache may be a memory map
      rows = np.arange(start, min(start + 1024, len(split)))
      converted[rows] = split.float_waveforms(rows)
    waveform, scale = converted, 1.0
  arrays = {"waveform": np.asarray(waveform), "label": split.label, "device": split.device,
            "index": split.index}
  rows = lambda step: pipeline.global_step_rows(len(split), config.batch_size, config.seed, step)
  return loop.AcceleratorData(arrays, rows, steps_per_call=cfg.steps_per_call, waveform_scale=scale)


def train_data(config, split: Split) -> loop.TrainData:
  """The training split for the loop: tf.data batches from the host (`data.pipeline`
  "tf_data") or the split held on the accelerators ("accelerator"), in the same order."""
  if config.data.pipeline not in PIPELINES:
    raise ValueError(f"data.pipeline must be one of {PIPELINES}, got {config.data.pipeline!r}")

  def batches(start_step):
    return pipeline.train_batches(split, global_batch=config.batch_size, seed=config.seed,
                                  start_step=start_step, process_index=jax.process_index(),
                                  process_count=jax.process_count())
  def example():
    per_host = config.batch_size // jax.process_count()
    batch = pipeline.host_batch(split, np.arange(per_host) % len(split))
    return dict(batch, mask=np.ones(per_host, bool))
  accelerator = accelerator_data(config, split) if config.data.pipeline == "accelerator" else None
  return loop.TrainData(pipeline.steps_per_epoch(len(split), config.batch_size), batches,
                        example, accelerator)


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


def new_token() -> str:
  """A fresh id for one finished stage (what downstream stages record they consumed)."""
  return uuid.uuid4().hex[:16]


def write_done(workdir: str, stage: str, config, outputs: Optional[dict] = None,
               token: Optional[str] = None) -> None:
  """`<workdir>/<stage>.done.json`: the config fingerprint (`stage` left out,
  jax_asc/fingerprint.py), a fresh token, the CPU-kernel path and the outputs. A plan
  (jax_asc/plans.py) skips the stage while its fingerprint and upstream tokens are unchanged."""
  if jax.process_index() > 0:
    return
  path = os.path.join(workdir, f"{stage}.done.json")
  with open(path + ".tmp", "w") as f:
    json.dump({"stage": stage, "config_fingerprint": fingerprint.config_fingerprint(config),
               "token": token or new_token(),
               "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "outputs": outputs or {},
               "cpu_kernels": native.describe()}, f, indent=1)
  os.replace(path + ".tmp", path)


def write_report(workdir: str, name: str, result: Dict, class_names) -> Dict[str, str]:
  if jax.process_index() > 0:
    return {}
  return report.write(result, list(class_names), os.path.join(workdir, "reports"), name)


def split_alias(config, name: str) -> str:
  """"train" / "validation" / "test" → the config's split names; other names pass through."""
  return {"train": config.data.train_split, "validation": config.data.validation_split,
          "test": config.data.test_split}.get(name, name)


def checkpoints_of(config, workdir: str):
  from jax_asc.train import checkpoint as checkpoint_lib
  ckpt = config.checkpoint
  return checkpoint_lib.Checkpoints(workdir, best_metric=ckpt.best_metric,
                                    best_mode=ckpt.best_mode, keep_best=ckpt.keep_best)


def restore_variables(config, workdir: str, which: str):
  """({"params", "batch_stats"[, "ema_params"]}, meta) of checkpoint `which` of a run."""
  checkpoints = checkpoints_of(config, workdir)
  try:
    restored = checkpoints.restore_variables(which)
  finally:
    checkpoints.close()
  if restored is None:
    raise FileNotFoundError(f"no {which!r} checkpoint in {os.path.join(workdir, 'checkpoints')}: "
                            "run the stage that makes it first")
  return restored


class Inference:
  """A run's model restored from a checkpoint, predicting logits of whole splits.

  dtype float16 casts the weights (and so the inputs inside the model) to half precision, as
  the DCASE25 baseline and report 001 evaluate; logits come back as float32.
  """

  def __init__(self, config, split: Split, variables, *, dtype=jnp.float32,
               use_ema: bool = False):
    import optax
    from jax_asc.stages import tasks
    from jax_asc.train import mesh as mesh_lib
    from jax_asc.train.state import TrainState
    self.task = tasks.eval_task(config, split, dtype=dtype)
    params = variables.get("ema_params") if use_ema else variables["params"]
    if params is None:
      raise ValueError("evaluate.use_ema=True but the checkpoint has no EMA parameters")
    cast = lambda tree: jax.tree.map(lambda v: jnp.asarray(v, dtype), tree)
    self.state = TrainState(step=jnp.zeros((), jnp.int32), params=cast(params),
                            batch_stats=cast(variables.get("batch_stats") or {}), opt_state=None,
                            ema_params=None, rng=jnp.zeros((2,), jnp.uint32))
    self.trainer = loop.Trainer(self.task, optax.identity(), mesh_lib.make_mesh())
    self.batch_size = config.evaluate.batch_size

  def logits(self, split: Split) -> np.ndarray:
    return predict(self.trainer, self.state, split, self.batch_size)


def device_subset(split: Split, device: str) -> Split:
  """The examples of one device (same name, classes, devices and indices)."""
  import dataclasses
  if device not in split.devices:
    raise ValueError(f"device {device!r} is not in split {split.name!r} ({list(split.devices)})")
  rows = np.flatnonzero(split.device == split.devices.index(device))
  if len(rows) == 0:
    raise ValueError(f"split {split.name!r} has no clips of device {device!r}")
  return dataclasses.replace(
      split, waveform=split.waveform[rows], label=split.label[rows], device=split.device[rows],
      filename=split.filename[rows], index=split.index[rows],
      identifier=None if split.identifier is None else split.identifier[rows], skipped=())
