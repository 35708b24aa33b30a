"""CP-Mobile as in the DCASE 2025 Task 1 baseline (CPJKU/dcase2025_task1_baseline).

61,148 parameters, 29,419,156 MACs for 256 mel × 65 frames (1 s at 32 kHz, hop 500). Every
setting of the baseline's `train_base.py` (the general model) and `train_device_specific.py`
(stage finetune_device); `tests/test_recipes.py` lists the reference's defaults and compares:
  - AdamW lr 0.005, weight decay 1e-4 on all parameters, batch 256, 150 epochs, 2000 warm-up
    steps then a per-step half cosine to 0; validation every 10 epochs;
  - mel: 44.1 → 32 kHz (torchaudio sinc_interp_hann), n_fft 4096, window 3072, hop 500, 256 HTK
    mels 0–16 kHz, frequency masks up to 48 bins on the power mel, per example;
  - Freq-MixStyle p 0.4, α 0.3; a random circular time roll of ±0.1 s (`roll_sec`: the
    reference rolls ±4410 samples at 44.1 kHz before resampling, we ±3200 at 32 kHz after);
  - the **last** checkpoint tested, in float32 and in float16 (the reference's figure);
  - device-specific fine-tuning: per device a, b, c, s1, s2, s3, from the general model's last
    checkpoint, AdamW lr 5e-4, 200 warm-up steps then cosine, 50 epochs, batch 256, MixStyle off.

On TAU Urban Acoustic Scenes 2022 Mobile (the DCASE 2025 setting: the 25 % split, the split files
split25.csv / test.csv beside meta.csv or in data.split_dir):

    python -m jax_asc.main --config configs/cp_mobile_dcase25.py:/data/TAU-urban-acoustic-scenes-2022-mobile-development \\
        --workdir workdirs/dcase25 [--config.stage=train,evaluate,finetune_device]

and the submission file for the evaluation set, each clip routed by its device_id:

    python -m jax_asc.main --config configs/cp_mobile_dcase25.py:/data/TAU-…-development \
        --workdir workdirs/dcase25 --config.stage=submit \
        --config.submission.root=/data/TAU-urban-acoustic-scenes-2025-mobile-evaluation

Checkpoints are never chosen on the test split: the reference validates on it but tests its
last checkpoint, and our selection split is held out from split25 by recording location.
Without an argument it trains on the synthetic default.
"""
from configs import common


def get_config(arg=None):
  options = common.recipe_options(arg, keys=("root",))
  config = common.base_config()
  config.frontend = common.frontend("dcase25")
  config.model = common.cp_mobile("dcase25")
  config.mix.update(mixstyle_p=0.4, mixstyle_alpha=0.3)
  config.waveform_augment.roll_samples = int(0.1 * config.data.sample_rate)
  config.evaluate.update(checkpoint="latest", fp16=True)
  config.dsft.update(devices="a,b,c,s1,s2,s3", num_epochs=50, learning_rate=5e-4,
                     schedule="warmup_cosine", warmup_steps=200, general_checkpoint="latest",
                     batch_size=256)
  config.submission.fp16 = True   # the baseline tests in float16
  if options["root"]:
    # Checkpoints are selected on locations held out from split25 (data.holdout_fraction).
    common.tau_dcase25(config, options["root"])
  return config
