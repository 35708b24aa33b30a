"""CP-Mobile as in CPJKU's DCASE 2023 Task 1 winner (fschmid56/cpjku_dcase23, GRN).

126,952 parameters, 28,893,268 MACs for 256 mel × 64 frames (pre-emphasis makes 64 frames per
second). Adam lr 9e-4 with coupled L2 1e-4, batch 256, 150 epochs, the per-epoch exponential
warm-up / linear ramp-down schedule; d23 frontend (Kaldi mel, fmax jitter 1000, freqm 48).
"""
from configs import common


def get_config(arg=None):
  del arg
  config = common.base_config()
  config.frontend = common.frontend("dcase23")
  config.data.resampler = "soxr_hq"   # the d23 reference's librosa.load (librosa 0.10.0.post2)
  config.augment.update(fmax_aug_range=1000, freq_mask=48, time_mask=0, iid_masks=False)
  config.model = common.cp_mobile("dcase23")
  config.optimizer.update(name="adam", learning_rate=9e-4, weight_decay=1e-4)
  config.schedule.name = "dcase23"
  return config
