"""CP-Mobile as in CPJKU's DCASE 2023 Task 1 winner (fschmid56/cpjku_dcase23 `run_training.py`).

126,952 parameters (GRN), 28,893,268 MACs for 256 mel × 64 frames (pre-emphasis makes 64 frames
per second). Every setting of the reference's student recipe; `tests/test_recipes.py` lists
its defaults and compares:
  - Adam lr 9e-4 with coupled L2 1e-4 on all parameters, batch 256, 150 epochs, the per-epoch
    schedule (exponential warm-up over 14 epochs, linear ramp-down from epoch 50 over 84 epochs
    to 0.005 × lr); validated every epoch, the last checkpoint kept;
  - d23 frontend: pre-emphasis 0.97, symmetric Hann 3072, hop 500, n_fft 4096, 256 Kaldi mels,
    fmax 15,500 Hz (train: jittered in [15,001, 16,000]), log, frequency masks up to 48 bins
    in the log domain (one mask per batch, as torchaudio 0.11 on 3-D input), (x + 4.5) / 5;
    waveforms resampled with librosa (soxr_hq);
  - Freq-MixStyle p 0.4, α 0.3; DIR on device a clips with p 0.6 (`dirs=MicIRP folder`);
    time roll ±4000 samples at 32 kHz; no gain augmentation;
  - KD from cached ensemble logits: T = 2, loss 0.02 · CE + 0.98 · KL·T² averaged over B × C
    (`teachers=RUN+RUN`: the workdirs whose `predict` caches make the ensemble; without them
    the run trains with CE only and says so).

    python -m jax_asc.main --config configs/cp_mobile_dcase23.py:root=/data/TAU22,dirs=/data/MicIRP,teachers=runs/passt1+runs/cpr1 \\
        --workdir workdirs/dcase23

The reference trains on all of fold1_train and validates on fold1_evaluate; we hold a validation
split out of fold1_train by recording location and test on fold1_evaluate.
"""
from configs import common


def get_config(arg=None):
  options = common.recipe_options(arg)
  config = common.base_config()
  config.frontend = common.frontend("dcase23")
  config.data.resampler = "soxr_hq"   # the d23 reference's librosa.load (librosa 0.10.0.post2)
  config.augment.update(fmin_aug_range=1, fmax_aug_range=1000, freq_mask=48, time_mask=0,
                        iid_masks=False)
  config.model = common.cp_mobile("dcase23")
  config.optimizer.update(name="adam", learning_rate=9e-4, weight_decay=1e-4)
  config.schedule.update(name="dcase23", warmup_epochs=14, rampdown_start=50, rampdown_length=84,
                         last_value=0.005)
  config.batch_size, config.num_epochs = 256, 150
  config.eval_every_epochs = 1
  config.mix.update(mixstyle_p=0.4, mixstyle_alpha=0.3)
  config.waveform_augment.update(roll_samples=4000, gain_db=0.0)
  common.with_dir(config, options["dirs"], 0.6, quiet=not options["root"])
  config.loss.kd.update(temperature=2.0, reduction="elementwise_mean")
  config.evaluate.update(checkpoint="latest", fp16=False)
  if options["teachers"]:
    config.stage = "ensemble,distill,evaluate"
    config.teachers.ensemble = common.cache_teacher(
        runs=",".join(options["teachers"].split("+")), combine="logits")
    config.loss.terms.update(ce=0.02, kd=0.98)
  elif options["root"]:
    print("note: no teachers=RUN+RUN: the d23 student trains with CE only (its recipe distils "
          "from cached ensemble logits)")
  if options["root"]:
    config.data.update(name="tau22", root=options["root"], train_split="fold1_train",
                       validation_split="holdout", test_split="fold1_evaluate")
    config.evaluate.split = "fold1_evaluate"
  return config
