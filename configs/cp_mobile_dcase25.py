"""CP-Mobile as in the DCASE 2025 Task 1 baseline (CPJKU/dcase2025_task1_baseline).

61,148 parameters, 29,419,156 MACs for 256 mel × 65 frames (1 s at 32 kHz, hop 500).
AdamW lr 0.005, wd 1e-4, batch 256, 150 epochs, 2000 warm-up steps then cosine; Freq-MixStyle
arrives with the augmentation issues. On the synthetic default here:

    python -m jax_asc.main --config configs/cp_mobile_dcase25.py --workdir workdirs/dcase25
"""
from configs import common


def get_config(arg=None):
  del arg
  config = common.base_config()
  config.frontend = common.frontend("dcase25")
  config.model = common.cp_mobile("dcase25")
  return config
