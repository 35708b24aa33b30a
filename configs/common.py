"""The defaults every config starts from; a config file changes what differs.

Each config file defines `get_config(arg=None)` returning a `ConfigDict`; `jax_asc.main` locks it,
so a mistyped key (`--config.optimzer.lr=…`) is an error that names the valid keys.
"""
import dataclasses

import ml_collections
from ml_collections import config_dict

from jax_asc.audio import frontends


def frontend(preset: str = "dcase25", **overrides) -> ml_collections.ConfigDict:
  """All fields of a frontend preset (audio/frontends.py), so each can be overridden by flag."""
  settings = dataclasses.replace(frontends.PRESETS[preset], **overrides)
  fields = dataclasses.asdict(settings)
  cfg = ml_collections.ConfigDict()
  for key, value in fields.items():
    if value is None:   # optional field: typed placeholder, settable from the command line
      value = config_dict.placeholder(float if key == "fmax" else str)
    setattr(cfg, key, value)
  return cfg


def cp_mobile(variant: str = "dcase25") -> ml_collections.ConfigDict:
  """CP-Mobile settings: `dcase25` (61,148 params) or `dcase23` (126,952 params, GRN)."""
  cfg = ml_collections.ConfigDict(dict(
      name="cp_mobile", n_classes=10, base_channels=32, channels_multiplier=1.8,
      expansion_rate=2.1, n_blocks=(3, 2, 1),
      strides=((1, 1), (1, 1), (1, 2), (2, 1), (1, 1), (1, 1)),
      use_grn=False, norm="batch", head="conv", cosine_scale=10.0))
  if variant == "dcase23":
    cfg.channels_multiplier, cfg.expansion_rate, cfg.use_grn = 2.3, 3.0, True
    cfg.strides = ((1, 1), (2, 2), (1, 1), (2, 1), (1, 1), (1, 1))
  elif variant != "dcase25":
    raise ValueError(f"CP-Mobile variant must be dcase25 or dcase23, got {variant!r}")
  return cfg


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.stage = "train,evaluate"   # comma-separated, run in order: train, evaluate
  config.seed = 0

  # data.name and split names: see jax_asc/data/__init__.py. Real datasets are read from
  # data.root (split files from data.split_dir) and cached at data.sample_rate in data.cache_dir.
  config.data = ml_collections.ConfigDict(dict(
      name="synthetic", root="", split_dir="", sample_rate=32000, cache_dir="",
      cache_dtype="float16",
      skip_bad_files=False, tut17_fold=1,
      train_split="train", validation_split="validation", test_split="test"))
  config.data.synthetic = ml_collections.ConfigDict(dict(
      seed=0, num_train=4000, num_validation=600, num_test=1800, clip_seconds=1.0))

  config.frontend = frontend("dcase25")
  config.augment = ml_collections.ConfigDict(dict(   # frontend augmentation (on the device)
      fmin_aug_range=1, fmax_aug_range=1, freq_mask=48, time_mask=0, iid_masks=True))
  # Waveform augmentation on the device, in the d23 order DIR → time roll → gain. DIR uses every
  # wav below dir_folder (e.g. the MicIRP set) on clips of dir_devices (empty = all devices).
  config.waveform_augment = ml_collections.ConfigDict(dict(
      roll_samples=0, gain_db=0.0, dir_folder="", dir_prob=0.0, dir_devices=("a",)))
  config.model = cp_mobile("dcase25")
  config.loss = ml_collections.ConfigDict(dict(label_smoothing=0.0))

  config.batch_size = 256
  config.num_epochs = 150
  config.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=0.005, b1=0.9, b2=0.999, eps=1e-8, momentum=0.9,
      nesterov=False, weight_decay=1e-4, decay_norm_and_bias=True, grad_clip_norm=0.0,
      grad_accum_steps=1))
  config.schedule = ml_collections.ConfigDict(dict(
      name="warmup_cosine", warmup_steps=2000, end_factor=0.0,
      warmup_epochs=14, rampdown_start=50, rampdown_length=84, last_value=0.005))
  config.ema_decay = 0.0
  config.eval_every_epochs = 10
  config.log_every_steps = 50
  config.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=0, best_metric="validation/macro_accuracy", best_mode="max", keep_best=5))
  config.evaluate = ml_collections.ConfigDict(dict(
      split="test", checkpoint="latest", use_ema=False, batch_size=256))
  config.complexity = ml_collections.ConfigDict(dict(param_dtype="float16"))
  config.distributed = ml_collections.ConfigDict(dict(
      enabled=False, coordinator_address="", num_processes=1, process_id=0))
  return config
