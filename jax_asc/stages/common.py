"""What the stages share: data, the run's task, input pipelines, predictions, records."""
from __future__ import annotations

import json
import os
import time
import uuid
from typing import Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_asc import data as data_lib
from jax_asc import fingerprint, models, native, tasks
from jax_asc.audio import frontends
from jax_asc.data import impulse_responses as impulse_lib
from jax_asc.data import on_accelerator, pipeline
from jax_asc.data.dataset import Split
from jax_asc.eval import complexity, evaluators, report
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


def impulse_responses(config, split: Split) -> Optional[np.ndarray]:
  """The DIR bank (M, L) at the split's rate when `waveform_augment.dir_prob` > 0, else None."""
  cfg = config.waveform_augment
  if cfg.dir_prob <= 0:
    return None
  if not cfg.dir_folder:
    raise ValueError("waveform_augment.dir_prob > 0 needs waveform_augment.dir_folder")
  irs, _ = impulse_lib.load_impulse_responses(cfg.dir_folder, split.sample_rate,
                                              cfg.dir_resampler)
  return irs


def training_task(config, split: Split, workdir: Optional[str] = None):
  """(the split with the columns the run's teachers add, the run's training task)."""
  family = tasks.family(config)
  split = family.join_cache_teachers(config, split, workdir)
  task = family.build(config, split, impulse_responses=impulse_responses(config, split))
  return split, task


PIPELINES = ("tf_data", "accelerator")


def train_data(config, split: Split, columns: Optional[Sequence[str]] = None) -> loop.TrainData:
  """The training split for the loop: tf.data batches from the host (`data.pipeline`
  "tf_data") or the split held on the accelerators ("accelerator"), in the same order; only
  `columns` (the task's, `Task.columns`; None: every numeric column)."""
  if config.data.pipeline not in PIPELINES:
    raise ValueError(f"data.pipeline must be one of {PIPELINES}, got {config.data.pipeline!r}")

  def batches(start_step):
    return pipeline.train_batches(split, global_batch=config.batch_size, seed=config.seed,
                                  start_step=start_step, process_index=jax.process_index(),
                                  process_count=jax.process_count(), columns=columns)
  def example():
    per_host = config.batch_size // jax.process_count()
    batch = pipeline.host_batch(split, np.arange(per_host) % len(split), columns)
    return dict(batch, mask=np.ones(per_host, bool))
  accelerator = None
  if config.data.pipeline == "accelerator":
    if split.per_epoch is not None:
      raise ValueError(f"data.pipeline='accelerator' holds a fixed split on the device, but "
                       f"split {split.name!r} of {split.dataset} is drawn anew every epoch "
                       f"(mixtures rendered on the fly): use data.pipeline='tf_data'")
    accelerator = on_accelerator.from_split(
        split, global_batch=config.batch_size, seed=config.seed,
        accelerator_dtype=config.data.accelerator_dtype,
        steps_per_call=config.data.steps_per_call, columns=columns)
  return loop.TrainData(pipeline.steps_per_epoch(len(split), config.batch_size), batches,
                        example, accelerator)


def eval_batches(split: Split, batch_size: int, columns: Optional[Sequence[str]] = None):
  """This host's masked evaluation batches of `split` (every example once)."""
  return pipeline.eval_batches(split, global_batch=batch_size, process_index=jax.process_index(),
                               process_count=jax.process_count(), columns=columns)


def eval_columns(task, split: Split):
  """The columns evaluation batches carry: the task's, without teacher columns."""
  names = task.columns or split.batch_columns
  return tuple(c for c in names if c in split.columns and not c.startswith("teacher/"))


def predict(trainer: loop.Trainer, state, split: Split, batch_size: int,
            use_ema: bool = False, outputs: Optional[Sequence[str]] = None
            ) -> Dict[str, np.ndarray]:
  """{name: (N, …)} named outputs of the trainer's task on every example of `split`."""
  return trainer.predict(state, eval_batches(split, batch_size,
                                             eval_columns(trainer.task, split)),
                         num_examples=len(split), use_ema=use_ema, outputs=outputs)


def evaluate_split(trainer, state, split: Split, batch_size: int, prefix: str,
                   use_ema: bool = False) -> Dict[str, float]:
  """{`prefix/metric`: value} of the task's evaluators on `split`."""
  outputs = predict(trainer, state, split, batch_size, use_ema)
  return evaluators.scalars(trainer.task.evaluators, outputs, split, prefix)


def model_complexity(config, n_classes: int, num_samples: int) -> complexity.Complexity:
  """Complexity of the model for one clip of `num_samples` samples (frontend excluded)."""
  family = tasks.family(config)
  if hasattr(family, "complexity_input"):
    return complexity.count(*family.complexity_input(config, n_classes, num_samples))
  settings = frontends.settings_from_config(config.frontend)
  model = models.build(config.model, n_classes=n_classes)
  return complexity.count(model, (1, settings.n_mels, settings.num_frames(num_samples)))


def new_token() -> str:
  """A fresh id for one finished stage (what downstream stages record they consumed)."""
  return uuid.uuid4().hex[:16]


def write_done(workdir: str, stage: str, config, outputs: Optional[dict] = None,
               token: Optional[str] = None) -> None:
  """`<workdir>/<stage>.done.json`: the config fingerprint (`stage` left out,
  jax_asc/fingerprint.py) and one per top-level section, a token (fresh unless given), the
  CPU-kernel path and the outputs. A plan
  (jax_asc/plans.py) skips the stage while its fingerprint and upstream tokens are unchanged."""
  if jax.process_index() > 0:
    return
  path = os.path.join(workdir, f"{stage}.done.json")
  with open(path + ".tmp", "w") as f:
    json.dump({"stage": stage, "config_fingerprint": fingerprint.config_fingerprint(config),
               "sections": fingerprint.section_fingerprints(config),
               "token": token or new_token(),
               "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "outputs": outputs or {},
               "cpu_kernels": native.describe()}, f, indent=1)
  os.replace(path + ".tmp", path)


def write_report(workdir: str, name: str, result: Dict, class_names) -> Dict[str, str]:
  if jax.process_index() > 0:
    return {}
  return report.write(result, list(class_names), os.path.join(workdir, "reports"), name)


def write_metrics(workdir: str, name: str, result: Dict) -> Dict[str, str]:
  """`<workdir>/reports/<name>.json` of a result that is not a classification report."""
  if jax.process_index() > 0:
    return {}
  folder = os.path.join(workdir, "reports")
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, f"{name}.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=1, default=float)
  return {"json": path}


RUN_DATA = "data.json"


def _data_record(split: Split) -> dict:
  return {"dataset": split.dataset, "split": split.name, "classes": list(split.classes),
          "devices": list(split.devices), "sample_rate": int(split.sample_rate),
          "num_samples": split.num_samples, "channels": split.num_channels}


def write_run_data(workdir: str, split: Split) -> None:
  """`<workdir>/data.json`: what the run's model was trained on (dataset, classes, recording
  devices, sample rate, clip length in samples, channels), so that a prediction from the run
  (jax_asc/predict.py) needs neither the dataset nor a split of it."""
  if jax.process_index() > 0:
    return
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, RUN_DATA), "w") as f:
    json.dump(_data_record(split), f, indent=1)


def run_data(config, workdir: str) -> dict:
  """The record `write_run_data` left in `workdir`; for a run made before it existed, the same
  facts from the run's training split (loaded from its dataset)."""
  path = os.path.join(workdir, RUN_DATA)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return _data_record(load_splits(config, config.data.train_split)[config.data.train_split])


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
  """A run's model restored from a checkpoint, predicting named outputs of whole splits. No
  teacher is loaded.

  dtype float16 casts the weights (and so the inputs inside the model) to half precision, as
  the DCASE25 baseline and report 001 evaluate; floating outputs come back as float32.
  outputs: the named outputs to compute (the task family's `OUTPUTS`; None: its first).
  """

  def __init__(self, config, split: Split, variables, *, dtype=jnp.float32,
               use_ema: bool = False, outputs: Optional[Sequence[str]] = None):
    import optax
    from jax_asc.train import mesh as mesh_lib
    from jax_asc.train.state import TrainState
    if outputs is None:
      outputs = tasks.family(config).OUTPUTS[:1]
    self.task = tasks.build(config, split, dtype=dtype, need_teachers=False,
                            outputs=tuple(outputs))
    params = variables.get("ema_params") if use_ema else variables["params"]
    if params is None:
      raise ValueError("evaluate.use_ema=True but the checkpoint has no EMA parameters")
    cast = lambda tree: jax.tree.map(lambda v: jnp.asarray(v, dtype), tree)
    self.state = TrainState(step=jnp.zeros((), jnp.int32), params=cast(params),
                            batch_stats=cast(variables.get("batch_stats") or {}), opt_state=None,
                            ema_params=None, rng=jnp.zeros((2,), jnp.uint32))
    self.trainer = loop.Trainer(self.task, optax.identity(), mesh_lib.make_mesh())
    self.batch_size = config.evaluate.batch_size

  def outputs(self, split: Split) -> Dict[str, np.ndarray]:
    return predict(self.trainer, self.state, split, self.batch_size)

  def logits(self, split: Split) -> np.ndarray:
    return self.outputs(split)["logits"]

  def scalars(self, split: Split, prefix: str) -> Dict[str, float]:
    return evaluators.scalars(self.task.evaluators, self.outputs(split), split, prefix)


def device_subset(split: Split, device: str) -> Split:
  """The examples recorded by one device (same name, classes, devices and indices)."""
  if device not in split.devices:
    raise ValueError(f"device {device!r} is not in split {split.name!r} ({list(split.devices)})")
  rows = split.select(recording_device=list(split.devices).index(device))
  if len(rows) == 0:
    raise ValueError(f"split {split.name!r} has no clips of device {device!r}")
  return split.take(rows)
