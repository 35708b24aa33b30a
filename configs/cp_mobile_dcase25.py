"""CP-Mobile as in the DCASE 2025 Task 1 baseline (CPJKU/dcase2025_task1_baseline).

61,148 parameters, 29,419,156 MACs for 256 mel × 65 frames (1 s at 32 kHz, hop 500).
AdamW lr 0.005, wd 1e-4, batch 256, 150 epochs, 2000 warm-up steps then cosine.

On TAU Urban Acoustic Scenes 2022 Mobile (the DCASE 2025 setting: the 25 % split, the split files
split25.csv / test.csv beside meta.csv or in data.split_dir):

    python -m jax_asc.main --config configs/cp_mobile_dcase25.py:/data/TAU-urban-acoustic-scenes-2022-mobile-development \
        --workdir workdirs/dcase25

Without an argument it trains on the synthetic default.
"""
from configs import common


def get_config(arg=None):
  config = common.base_config()
  config.frontend = common.frontend("dcase25")
  config.model = common.cp_mobile("dcase25")
  if arg:
    # Checkpoints are selected on locations held out from split25 (data.holdout_fraction).
    config.data.update(name="tau22", root=arg, train_split="split25", validation_split="holdout",
                       test_split="test")
    config.evaluate.split = "test"
  return config
