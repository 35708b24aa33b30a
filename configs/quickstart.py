"""Quickstart: CP-Mobile on the synthetic acoustic scenes, trained and evaluated on a CPU.

    python -m jax_asc.main --config configs/quickstart.py --workdir workdirs/quickstart

`make demo` runs this (about 4 minutes on 2 CPU cores, first run included: it also builds the
dataset cache). `configs/quickstart.py:tiny` is the seconds-long variant the tests run.
The model is the DCASE25 CP-Mobile at 128 mel bins (n_fft 2048) so a laptop CPU trains it in
minutes; `configs/cp_mobile_dcase25.py` is the full 256-bin reference setting.
"""
from configs import common


def get_config(arg=None):
  config = common.base_config()
  config.data.synthetic.update(num_train=2560, num_validation=400, num_test=900)
  config.frontend = common.frontend("dcase25", n_mels=128, n_fft=2048, win_length=1536)
  config.augment.freq_mask = 16
  config.batch_size = 64
  config.num_epochs = 8
  config.optimizer.learning_rate = 0.005
  config.schedule.warmup_steps = 40
  config.eval_every_epochs = 2
  config.log_every_steps = 20
  config.evaluate.batch_size = 128
  if arg == "tiny":
    config.data.synthetic.update(num_train=64, num_validation=24, num_test=36)
    config.frontend = common.frontend("dcase25", n_mels=32, n_fft=512, win_length=400,
                                      hop_length=800)
    config.model.base_channels = 8
    config.batch_size = 16
    config.num_epochs = 2
    config.eval_every_epochs = 1
    config.schedule.warmup_steps = 2
    config.log_every_steps = 2
    config.evaluate.batch_size = 16
  elif arg:
    raise ValueError(f"quickstart config arg must be empty or 'tiny', got {arg!r}")
  return config
