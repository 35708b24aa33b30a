"""The single-recipe configs against the reference scripts' defaults, written out here.

`configs/cp_mobile_dcase25.py` and `configs/cp_mobile_dcase23.py` say they are the references'
recipes; these tables are the references' settings, copied from the scripts at the commits named
(file:line beside each), so config and reference cannot drift apart unnoticed. Each test maps our
config onto the reference's names and compares every setting.
"""
import pytest

from configs import cp_mobile_dcase23, cp_mobile_dcase25

# CPJKU/dcase2025_task1_baseline@87a5f8c4957b00055f83f6f69af8c52b1a3bb405
DCASE25_TRAIN_BASE = {
    # argparse defaults, train_base.py:426-453
    "n_classes": 10, "base_channels": 32, "channels_multiplier": 1.8, "expansion_rate": 2.1,
    "n_epochs": 150, "batch_size": 256, "mixstyle_p": 0.4, "mixstyle_alpha": 0.3,
    "weight_decay": 0.0001, "roll_sec": 0.1, "lr": 0.005, "warmup_steps": 2000,
    "sample_rate": 32000, "window_length": 3072, "hop_length": 500, "n_fft": 4096,
    "n_mels": 256, "freqm": 48, "timem": 0, "f_min": 0, "f_max": None,
    "check_val_every_n_epoch": 10,   # :419
    "subset": 25,                    # :423, asserted at :359-361
    # hard-coded
    "optimizer": "AdamW",                      # :102-106, all parameters
    "schedule": "cosine_with_warmup/step",     # :107-112, to 0 at the last step
    "resample": "sinc_interp_hann",            # :28-31, torchaudio Resample defaults
    "window": "hann_periodic", "mel_scale": "htk", "mel_norm": None,   # :32-40 torchaudio
    "mask_domain": "power", "iid_masks": True,  # :43-44, :80-83 (4-D input)
    "log_eps": 1e-5, "normalisation": None,    # :83
    "mixstyle_frequency_wise": True,           # helpers/utils.py:6-24, dims [1, 3]
    "mixup": False, "gain": False, "dir": False, "fmax_jitter": False,
    "test_checkpoint": "last",                 # :405
    "test_dtype": "float16",                   # :247-252
}
# train_device_specific.py:449-479 defaults, :51 devices, :120-130 optimizer and schedule.
DCASE25_DEVICE_SPECIFIC = {
    "devices": ("a", "b", "c", "s1", "s2", "s3"), "n_epochs": 50, "batch_size": 256,
    "mixstyle_p": 0.0, "lr": 0.0005, "warmup_steps": 200,
    "schedule": "cosine_with_warmup/step", "start": "last",   # :336-346, last.ckpt
}

# fschmid56/cpjku_dcase23@2e20abaa64264f227c50696e5a43d4c706543ff4, run_training.py
DCASE23_RUN_TRAINING = {
    # argparse defaults, run_training.py:266-308
    "n_classes": 10, "base_channels": 32, "channels_multiplier": 2.3, "expansion_rate": 3,
    "n_epochs": 150, "batch_size": 256, "mixstyle_p": 0.4, "mixstyle_alpha": 0.3,
    "weight_decay": 0.0001, "roll": 4000, "dir_prob": 0.6, "temperature": 2.0,
    "kd_lambda": 0.02, "lr": 0.0009, "warm_up_len": 14, "ramp_down_start": 50,
    "ramp_down_len": 84, "last_lr_value": 0.005, "resample_rate": 32000,
    "window_size": 3072, "hop_size": 500, "n_fft": 4096, "n_mels": 256, "freqm": 48,
    "timem": 0, "fmin": 0, "fmax": None, "fmin_aug_range": 1, "fmax_aug_range": 1000,
    # hard-coded
    "optimizer": "Adam+L2",                    # :82, coupled weight decay on all parameters
    "schedule": "exp_warmup_linear_down/epoch",  # :83-90, helpers/lr_schedule.py:4-41
    "preemphasis": 0.97,                       # models/mel.py:45,59
    "window": "hann",                          # models/mel.py:37-39, periodic=False
    "mel_scale": "kaldi",                      # models/mel.py:77-81
    "effective_fmax": 15500,                   # models/mel.py:30-33, sr // 2 − range // 2
    "log_eps": 1e-5, "normalisation": (4.5, 5.0),   # models/mel.py:86,93
    "mask_domain": "log", "iid_masks": False,  # models/mel.py:88-91 (3-D input, torchaudio 0.11)
    "resample": "librosa",                     # datasets/dcase23.py:56-68 (soxr_hq)
    "kd_reduction": "mean over B×C",           # :46, :110-116
    "dir_devices": ("a",),                     # datasets/dcase23.py:106-119
    "mixup": False, "gain": False,
    "validate_every_epochs": 1,                # Lightning default
    "kept_checkpoint": "last",                 # no ModelCheckpoint: the last epoch's
}


def _ours_dcase25(config) -> dict:
  f, m, w = config.frontend, config.model, config.waveform_augment
  opt, sched = config.optimizer, config.schedule
  return {
      "n_classes": m.n_classes, "base_channels": m.base_channels,
      "channels_multiplier": m.channels_multiplier, "expansion_rate": m.expansion_rate,
      "n_epochs": config.num_epochs, "batch_size": config.batch_size,
      "mixstyle_p": config.mix.mixstyle_p, "mixstyle_alpha": config.mix.mixstyle_alpha,
      "weight_decay": opt.weight_decay, "roll_sec": w.roll_samples / config.data.sample_rate,
      "lr": opt.learning_rate, "warmup_steps": sched.warmup_steps,
      "sample_rate": config.data.sample_rate, "window_length": f.win_length,
      "hop_length": f.hop_length, "n_fft": f.n_fft, "n_mels": f.n_mels,
      "freqm": config.augment.freq_mask, "timem": config.augment.time_mask, "f_min": f.fmin,
      "f_max": f.fmax, "check_val_every_n_epoch": config.eval_every_epochs,
      "subset": int(config.data.train_split.removeprefix("split")),
      "optimizer": "AdamW" if (opt.name, opt.decay_norm_and_bias) == ("adamw", True) else opt.name,
      "schedule": ("cosine_with_warmup/step" if (sched.name, sched.end_factor) ==
                   ("warmup_cosine", 0.0) else sched.name),
      "resample": {"sinc_hann": "sinc_interp_hann"}.get(config.data.resampler),
      "window": f.window, "mel_scale": f.mel_scale, "mel_norm": f.mel_norm,
      "mask_domain": f.mask_domain, "iid_masks": config.augment.iid_masks,
      "log_eps": f.log_eps,
      "normalisation": None if (f.norm_shift, f.norm_scale) == (0.0, 1.0) else (
          f.norm_shift, f.norm_scale),
      "mixstyle_frequency_wise": config.mix.mixstyle_frequency_wise,
      "mixup": config.mix.mixup_alpha > 0, "gain": w.gain_db > 0, "dir": w.dir_prob > 0,
      "fmax_jitter": config.augment.fmax_aug_range > 1,
      "test_checkpoint": {"latest": "last"}.get(config.evaluate.checkpoint),
      "test_dtype": "float16" if config.evaluate.fp16 else "float32",
  }


def _ours_dcase23(config) -> dict:
  f, m, w, aug = config.frontend, config.model, config.waveform_augment, config.augment
  opt, sched, terms = config.optimizer, config.schedule, config.loss.terms
  return {
      "n_classes": m.n_classes, "base_channels": m.base_channels,
      "channels_multiplier": m.channels_multiplier, "expansion_rate": m.expansion_rate,
      "n_epochs": config.num_epochs, "batch_size": config.batch_size,
      "mixstyle_p": config.mix.mixstyle_p, "mixstyle_alpha": config.mix.mixstyle_alpha,
      "weight_decay": opt.weight_decay, "roll": w.roll_samples, "dir_prob": w.dir_prob,
      "temperature": config.loss.kd.temperature,
      "kd_lambda": terms.ce if abs(terms.ce + terms.kd - 1.0) < 1e-9 else None,
      "lr": opt.learning_rate, "warm_up_len": sched.warmup_epochs,
      "ramp_down_start": sched.rampdown_start, "ramp_down_len": sched.rampdown_length,
      "last_lr_value": sched.last_value, "resample_rate": config.data.sample_rate,
      "window_size": f.win_length, "hop_size": f.hop_length, "n_fft": f.n_fft,
      "n_mels": f.n_mels, "freqm": aug.freq_mask, "timem": aug.time_mask, "fmin": f.fmin,
      # The reference's fmax=None means sr // 2 − fmax_aug_range // 2; ours states that value.
      "fmax": None if f.fmax == config.data.sample_rate // 2 - aug.fmax_aug_range // 2 else f.fmax,
      "fmin_aug_range": aug.fmin_aug_range, "fmax_aug_range": aug.fmax_aug_range,
      "optimizer": "Adam+L2" if (opt.name, opt.decay_norm_and_bias) == ("adam", True) else opt.name,
      "schedule": "exp_warmup_linear_down/epoch" if sched.name == "dcase23" else sched.name,
      "preemphasis": f.preemphasis, "window": f.window, "mel_scale": f.mel_scale,
      "effective_fmax": f.fmax, "log_eps": f.log_eps,
      "normalisation": (f.norm_shift, f.norm_scale), "mask_domain": f.mask_domain,
      "iid_masks": aug.iid_masks,
      "resample": {"soxr_hq": "librosa"}.get(config.data.resampler),
      "kd_reduction": {"elementwise_mean": "mean over B×C"}.get(config.loss.kd.reduction),
      "dir_devices": tuple(w.dir_devices),
      "mixup": config.mix.mixup_alpha > 0, "gain": w.gain_db > 0,
      "validate_every_epochs": config.eval_every_epochs,
      "kept_checkpoint": {"latest": "last"}.get(config.evaluate.checkpoint),
  }


def _differences(reference: dict, ours: dict) -> list:
  assert set(ours) == set(reference), sorted(set(ours) ^ set(reference))
  return [f"{k}: reference {reference[k]!r}, ours {ours[k]!r}" for k in reference
          if ours[k] != reference[k]]


def test_dcase25_config_is_the_baselines_recipe():
  config = cp_mobile_dcase25.get_config("/data/tau22")
  assert not _differences(DCASE25_TRAIN_BASE, _ours_dcase25(config))
  dsft = config.dsft
  ours = {"devices": tuple(dsft.devices.split(",")), "n_epochs": dsft.num_epochs,
          "batch_size": dsft.batch_size, "mixstyle_p": 0.0,   # finetune_device.device_config
          "lr": dsft.learning_rate, "warmup_steps": dsft.warmup_steps,
          "schedule": ("cosine_with_warmup/step" if dsft.schedule == "warmup_cosine"
                       else dsft.schedule),
          "start": {"latest": "last"}.get(dsft.general_checkpoint)}
  assert not _differences(DCASE25_DEVICE_SPECIFIC, ours)
  from jax_asc.stages import finetune_device
  assert finetune_device.device_config(config).mix.mixstyle_p == 0.0


def test_dcase23_config_is_the_reference_students_recipe():
  config = cp_mobile_dcase23.get_config("root=/data/tau22,dirs=/data/micirp,teachers=t1+t2")
  assert not _differences(DCASE23_RUN_TRAINING, _ours_dcase23(config))
  assert config.teachers.ensemble.runs == "t1,t2" and config.teachers.ensemble.combine == "logits"
  assert (config.data.train_split, config.data.test_split) == ("fold1_train", "fold1_evaluate")
  assert config.evaluate.split == "fold1_evaluate"


def test_the_comparison_sees_a_drifted_setting():
  config = cp_mobile_dcase25.get_config("/data/tau22")
  config.waveform_augment.roll_samples = 0
  config.mix.mixstyle_p = 0.0
  assert _differences(DCASE25_TRAIN_BASE, _ours_dcase25(config)) == [
      "mixstyle_p: reference 0.4, ours 0.0", "roll_sec: reference 0.1, ours 0.0"]


def test_recipe_config_args():
  assert cp_mobile_dcase25.get_config().data.name == "synthetic"
  plain = cp_mobile_dcase23.get_config()
  assert plain.loss.terms.kd == 0.0 and "ensemble" not in plain.teachers
  with pytest.raises(ValueError, match="config option 'teacher' unknown; valid: root, dirs, "
                                       "teachers"):
    cp_mobile_dcase23.get_config("teacher=x")
  with pytest.raises(ValueError, match="config option 'dirs' unknown; valid: root"):
    cp_mobile_dcase25.get_config("/data,dirs=/x")


def test_passt_teacher_recipe_mel_upper_edge_as_d23_ran_it():
  """d23's PaSST teacher: fmax = sr/2 − fmax_aug_range/2 = 15,500 Hz in evaluation, drawn from
  [15,001, 16,000] in training (the AudioSet frontend's 15,000 / [14,501, 15,500] differs)."""
  from configs import common
  from jax_asc.audio import augment
  import jax
  config = common.base_config()
  common.passt_teacher(config, quiet=True)
  assert config.frontend.fmax == 15500.0 and config.augment.fmax_aug_range == 1000
  draw = jax.vmap(lambda k: augment.jitter_corner(k, config.frontend.fmax,
                                                  config.augment.fmax_aug_range, -1))
  draws = draw(jax.random.split(jax.random.key(0), 20000))
  assert float(draws.min()) == 15001.0 and float(draws.max()) == 16000.0
