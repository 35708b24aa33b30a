"""The defaults every config starts from; a config file changes what differs.

Each config file defines `get_config(arg=None)` returning a `ConfigDict`; `jax_asc.main` locks it,
so a mistyped key (`--config.optimzer.lr=…`) is an error that names the valid keys.
"""
import dataclasses

import ml_collections
from ml_collections import config_dict

from jax_asc.audio import frontends
from jax_asc.losses import registry


def frontend(preset: str = "dcase25", **overrides) -> ml_collections.ConfigDict:
  """All fields of a frontend preset (audio/frontends.py PRESETS: dcase23, dcase25, dcase25_16k
  (report 003's 16 kHz students), passt, cp_resnet, m2d, …), so each can be overridden by flag."""
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


# Report 003 §3, figure 2: five CP-Mobile students "(6K-126K parameters)" trained "following the
# hyperparameters set in CP-Mobile" with peak learning rates {0.04, 0.04, 0.03, 0.02, 0.01}
# (smallest to largest). Neither the report nor fschmid56/cpjku_dcase23 (README, run_training.py,
# models/cp_mobile_clean.py: only the 126K default) states the smaller variants' widths, so
# these are our choice: the d23 CP-Mobile (GRN, strides b2 (2, 2), b4 (2, 1), depth (3, 2, 1))
# scaled in width only, base_channels / channels_multiplier / expansion_rate picked from the
# d23 values so that the sizes step by about ×2.1 from 6K to 126K. size: (base_channels,
# channels_multiplier, expansion_rate, peak learning rate). Parameters and MACs with the
# norm_cosine head at 256 mels × 65 frames (the dcase25_16k frontend on 1 s), pinned in
# tests/test_report003_students.py: 6,130 / 14,002 / 27,400 / 60,702 / 127,268 parameters.
CP_MOBILE_REPORT003 = {
    "6k": (8, 2.0, 2.0, 0.04),
    "14k": (8, 2.3, 3.0, 0.04),
    "27k": (16, 2.3, 2.0, 0.03),
    "61k": (24, 2.0, 3.0, 0.02),
    "126k": (32, 2.3, 3.0, 0.01),   # the d23 CP-Mobile's own widths
}


def cp_mobile_report003(size: str = "126k", norm: str = "layer", head_norm: str = "",
                        cosine_scale: float = 56.0) -> ml_collections.ConfigDict:
  """A report 003 student: d23 CP-Mobile of `size` (CP_MOBILE_REPORT003) with `norm` in every
  convolution and the "norm_cosine" head (global average pool → `head_norm` → cosine classifier
  with γ = cosine_scale; features `embedding` after the head's norm, `embedding_prenorm` before).

  Table 2's rows: "ours" norm="layer" (head LayerNorm1D); "- LayerNorm" norm="none" (no norm
  anywhere); "+ BatchNorm" norm="batch" (BatchNorm2d in the convolutions, BatchNorm1D over the
  embedding). head_norm "" = the same kind as norm. cosine_scale: the report states γ = 56 for
  the teacher's cosine head only; the student's head is "consistent with the teacher model", so
  the same γ is our default. The peak learning rate is `CP_MOBILE_REPORT003[size][3]`.
  """
  if size not in CP_MOBILE_REPORT003:
    raise ValueError(f"report 003 CP-Mobile size must be one of {list(CP_MOBILE_REPORT003)}, "
                     f"got {size!r}")
  base, multiplier, expansion, _ = CP_MOBILE_REPORT003[size]
  cfg = cp_mobile("dcase23")
  cfg.update(base_channels=base, channels_multiplier=multiplier, expansion_rate=expansion,
             norm=norm, head="norm_cosine", cosine_scale=float(cosine_scale))
  cfg.head_norm = head_norm or norm
  return cfg


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Comma-separated, run in order: train, distill, predict, ensemble, soup, finetune_device,
  # evaluate (jax_asc/stages).
  config.stage = "train,evaluate"
  config.seed = 0
  # The task family (jax_asc/tasks): what the run trains, its outputs and evaluators.
  config.task = "classification"

  # data.name and split names: see jax_asc/data/__init__.py. Real datasets are read from
  # data.root (split files from data.split_dir) and cached at data.sample_rate in data.cache_dir.
  # resampler: "sinc_hann" (torchaudio's sinc_interp_hann, width 6, rolloff 0.99: the d24/25
  # baselines' 44.1 → 32 kHz; soxr_hq differs from it by up to 0.5 nat on average in the log-mel
  # bands above 12 kHz) or "soxr_hq" (librosa's default: the d23 reference's librosa.load).
  # cache_dtype: float32, or float16 at half the disk (its rounding noise moves log-mel bins of
  # broadband clips by up to 0.4 nat, empty bands by 0.25 nat on average). Both measured by
  # benchmarks/data_parity.py.
  config.data = ml_collections.ConfigDict(dict(
      name="synthetic", root="", split_dir="", sample_rate=32000, cache_dir="",
      resampler="sinc_hann", cache_dtype="float32",
      # Training input: "tf_data" (batches gathered on the host) or "accelerator" (the split held in
      # accelerator memory as accelerator_dtype, steps_per_call steps per jitted call; same order).
      pipeline="tf_data", accelerator_dtype="float16", steps_per_call=8,
      skip_bad_files=False, tut17_fold=1,
      train_split="train", validation_split="validation", test_split="test",
      # validation_split="holdout": a validation split held out from train_split, whole
      # recording locations (Split.identifier, e.g. TAU's barcelona-203) making up
      # holdout_fraction of its examples, chosen from holdout_seed (sha256: the same on every
      # machine); train_split then lacks them. selection_split: where best-k checkpoints,
      # soups and "best" teachers are chosen: "validation", or "test" (explicit opt-in, needed
      # when validation_split == test_split; the report tables then carry a note).
      selection_split="validation", holdout_fraction=0.1, holdout_seed=0,
      # > 0: every clip of every split cut into consecutive segments of this many seconds
      # (`<file>@<k>`; the clip length must be a whole multiple, else an error); 0 = whole clips.
      segment_seconds=0.0,
      # The waveform column is (N, C, S): C = the dataset's channels when True, else mixed to
      # mono (C = 1).
      keep_channels=False,
      # Where examples come from: "files" (data.root's audio, cached locally) or "tfds" (the
      # records of jax_asc/data/tfds_builders.py under tfds_dir, a bucket included, built once
      # with `python -m jax_asc.build_tfds`; the same examples and batches, each host reading
      # only its rows).
      source="files", tfds_dir=""))
  config.data.synthetic = ml_collections.ConfigDict(dict(
      seed=0, num_train=4000, num_validation=600, num_test=1800, clip_seconds=1.0))

  config.frontend = frontend("dcase25")
  config.augment = ml_collections.ConfigDict(dict(   # frontend augmentation (on the device)
      fmin_aug_range=1, fmax_aug_range=1, freq_mask=48, time_mask=0, iid_masks=True))
  # Waveform augmentation on the device, in the d23 order DIR → time roll → gain. DIR uses every
  # wav below dir_folder (e.g. the MicIRP set) on clips of dir_devices (empty = all devices),
  # resampled with dir_resampler (soxr_hq: the d23 reference's librosa.load).
  config.waveform_augment = ml_collections.ConfigDict(dict(
      roll_samples=0, gain_db=0.0, dir_folder="", dir_prob=0.0, dir_devices=("a",),
      dir_resampler="soxr_hq"))
  config.model = cp_mobile("dcase25")
  # Initial weights: "" = random; kind "passt_torch" (an official PaSST .pt/.npz),
  # "beats_torch" (an official BEATs .pt, or its convert.save_beats_npz .npz, into model
  # "beats"'s backbone; config.model's architecture must be the checkpoint cfg's),
  # "m2d_torch", "resunetk_torch" or "run" (the `checkpoint` of another run's workdir;
  # params_only: without its BatchNorm statistics; a plan's `init_from` sets these).
  # Parameters whose shape differs (heads) stay fresh. prefix:
  # for passt_torch, the name prefix of the model's tensors in the file (e.g. "net." in a
  # Lightning checkpoint of a fine-tuned teacher); tensors without it are ignored.
  config.model_init = ml_collections.ConfigDict(dict(path="", kind="passt_torch",
                                                     checkpoint="best", params_only=False,
                                                     prefix=""))
  # Loss = Σ weight · term over `loss.terms` (jax_asc/losses/registry.py: every registered term
  # is listed, 0 = off), each with its settings under `loss.<term>` (e.g. loss.kd.temperature,
  # loss.ssfm.stages "student:teacher" pairs, loss.kd.teacher: which named teacher it reads).
  # Report 000 eq. 1 is {ce: 1 − λ, kd: λ}; report 001 eq. 3 is {kd: α, ssfm or dfm: β, ce: γ}.
  config.loss = ml_collections.ConfigDict(dict(
      terms={name: 1.0 if name == "ce" else 0.0 for name in registry.TERMS},
      **registry.default_settings()))
  # Spectrogram mixing on the device: (Freq-)MixStyle (p, α) and mixup (α; 0 = off; mixup_p:
  # the probability that an example is mixed, else λ = 1). clean_view (report 003 §2, phase 1):
  # the model also sees each clip without any augmentation; the classification loss reads that
  # clean view, the other terms (soft SupCon on the projection) the augmented one.
  config.mix = ml_collections.ConfigDict(dict(
      mixstyle_p=0.0, mixstyle_alpha=0.3, mixstyle_frequency_wise=True, mixup_alpha=0.0,
      mixup_p=1.0, clean_view=False))
  # Named teachers (jax_asc/teachers): {name: cache_teacher(…) | online_teacher(…) |
  # ema_teacher(…)}; a loss term reads the one named by loss.<term>.teacher. None by default.
  config.teachers = ml_collections.ConfigDict()
  # Stage predict: the named `outputs` (comma-separated: the task's, e.g. logits, embedding) of
  # this run's `checkpoint` on the named splits (train, validation, test), cached by filename.
  config.predict = ml_collections.ConfigDict(dict(splits="train,test", checkpoint="best",
                                                  outputs="logits"))
  config.soup = ml_collections.ConfigDict(dict(top_k=5))   # stage soup: mean of the best k
  # Stage finetune_device (DSFT, report 000): one copy per device of `devices` ("" = every
  # training device), started from the general model's `general_checkpoint`; `schedule`
  # "constant" (the report states only the rate) or "warmup_cosine" (with warmup_steps).
  config.dsft = ml_collections.ConfigDict(dict(
      devices="", num_epochs=100, learning_rate=1e-5, schedule="constant", warmup_steps=0,
      general_checkpoint="latest", batch_size=0))

  # Stage submit: the DCASE 2025 submission file (jax_asc/stages/submit.py) for the evaluation
  # set at `root` (`dataset` dcase25_eval, its `split`), each clip routed by its device_id to
  # stage finetune_device's model ("device"; `unknown` → the general model's `checkpoint`) or all
  # to the general model ("general"); float16 weights and inputs when `fp16`; written to
  # <workdir>/<out> and validated.
  config.submission = ml_collections.ConfigDict(dict(
      root="", dataset="dcase25_eval", split="test", routing="device", checkpoint="latest",
      fp16=False, out="submission/output.csv"))

  # Stage export: checkpoint `checkpoint` as LiteRT flatbuffers in `formats` (float32, float16,
  # int8), the frontend "separate" (its own float32 file) or "included" in the model (float32 and
  # float16 only; jax_asc/stages/export.py); int8
  # calibrated on `calibration_clips` training clips; checked in the interpreter on
  # `verify_clips` clips of evaluate.split (0 = all), float32 within `float32_tolerance`;
  # latency: median of `latency_runs` calls on `threads` threads.
  config.export = ml_collections.ConfigDict(dict(
      formats="float32,float16,int8", frontend="separate", checkpoint="latest",
      calibration_clips=200, verify_clips=0, threads=1, latency_runs=20,
      float32_tolerance=1e-4))
  # Stage fewshot (report 003 section 4, tables 1-3): K-shot transfer and retrieval mAP of an
  # output of this run's model on other datasets (fewshot_config() below).
  config.fewshot = fewshot_config()

  config.batch_size = 256
  config.num_epochs = 150
  # param_groups: ((regex over '/'-joined param paths, {lr_mult, wd_mult, frozen, schedule}), …),
  # first full match wins; e.g. (("backbone/.*", {"frozen": True}),). See jax_asc/train/optim.py.
  config.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=0.005, b1=0.9, b2=0.999, eps=1e-8, momentum=0.9,
      nesterov=False, weight_decay=1e-4, decay_norm_and_bias=True, grad_clip_norm=0.0,
      grad_accum_steps=1, param_groups=()))
  config.schedule = ml_collections.ConfigDict(dict(
      name="warmup_cosine", warmup_steps=2000, cosine_warmup_epochs=0.0, end_factor=0.0,
      warmup_epochs=14, rampdown_start=50, rampdown_length=84, last_value=0.005))
  config.ema_decay = 0.0
  config.eval_every_epochs = 10
  config.log_every_steps = 50
  # The latest checkpoint (resuming) at the end of every `every_epochs`-th epoch, of every
  # evaluated epoch and of the run, and every `every_steps` steps (0: off) in between; the
  # best-k by `best_metric` at evaluations.
  config.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=0, every_epochs=1, best_metric="validation/macro_accuracy", best_mode="max",
      keep_best=5))
  # fp16: also evaluate with float16 weights and inputs and report the difference (report 001);
  # int8: also with int8 post-training-quantised parameters (per-channel symmetric weights,
  # jax_asc/eval/quantize.py; activations stay float).
  config.evaluate = ml_collections.ConfigDict(dict(
      split="test", checkpoint="latest", use_ema=False, batch_size=256, fp16=False, int8=False))
  # The precision parameters are deployed in, which the DCASE memory limit is counted at
  # (float32, float16, int8; `evaluate.int8` measures what int8 costs in accuracy).
  config.complexity = ml_collections.ConfigDict(dict(param_dtype="float16"))
  config.distributed = ml_collections.ConfigDict(dict(
      enabled=False, coordinator_address="", num_processes=1, process_id=0))
  # CPU kernels (jax_asc/native): "auto" (native C++ kernels when they build, else XLA's forms,
  # with one line naming the cause; $JAX_ASC_KERNELS decides when set), "native" (required: an
  # error naming the cause otherwise) or "xla". Recorded in every <stage>.done.json.
  config.kernels = "auto"
  return config


def fewshot_config() -> ml_collections.ConfigDict:
  """Stage fewshot (jax_asc/stages/fewshot.py): the K-shot and retrieval evaluation of report
  003 (section 4, tables 1-3) of this run's `checkpoint` ("best", "latest", "soup").
  standardize: each episode's embeddings z-scored with its support's statistics before the
  logistic regression (ours: the report fits on the embeddings as they are, but a pre-norm
  embedding's scale is whatever training left, and the regression's L2 penalty is not scale
  free: a student without norms has features of ~1e-4 and is fitted to a constant there).

  datasets: comma list of tut17 (support pool fold `data.tut17_fold` train, held out its
    evaluate list), icme24 (labelled rows; held out: the rest of each episode), esc50 (pool
    folds 1-4, held out fold 5) and synthetic_open (the synthetic scenes plus new ones, for
    smoke tests; held out: the rest), each read from `roots.<name>` at the run's sample rate.
  output: the task's named output embedded (the classification task's `OUTPUTS`; report 003
    uses the pre-LayerNorm embedding). window: "mean_1s" (consecutive 1-s windows, embeddings
    averaged) or "clip" (the whole clip in one pass). shots: the K's; episodes, seed: the
    draws (mean accuracy with a 95 % interval over the episodes).
  seen: {dataset: comma list of its classes that TAU22's 10 classes (airport, bus, metro,
    metro_station, park, public_square, shopping_mall, street_pedestrian, street_traffic,
    tram) hold}; the others are unseen (table 3). By the class lists (formats.py,
    shared/reference/datasets.md) 4 of TUT17's 15 classes are seen (bus, metro_station, park,
    tram: 11 unseen) and 7 of ICME24's 10 (Restaurant, Construction site, Bar unseen). The
    report's text has the two counts swapped ("3/10 and 11/15 classes are unseen in TUT17 and
    ICME24"): TUT17 has 15 classes and ICME24 10. TUT17's city_center counts as unseen: TAU22
    has no such class, its recordings are of streets and squares that TAU22 splits into
    street_pedestrian, street_traffic and public_square, none of which it matches one to one
    (and 11 unseen is the report's own count). ICME24's Urban park is TAU22's park, Traffic
    street its street_traffic. ESC-50 is sound events, not scenes: none seen.
  synthetic_open: its clips per class and count of new classes (the seen ones use the run's
    data.synthetic.seed, so they are the scenes a synthetic run trained on).
  """
  return ml_collections.ConfigDict(dict(
      datasets="tut17,icme24", checkpoint="best", output="embedding", window="mean_1s",
      shots=(5, 20), episodes=300, seed=0, standardize=True,
      roots=ml_collections.ConfigDict(dict(tut17="", icme24="", esc50="")),
      seen=ml_collections.ConfigDict(dict(
          tut17="bus,metro_station,park,tram",
          icme24="Bus,Airport,Metro,Shopping mall,Public square,Urban park,Traffic street",
          esc50="",
          synthetic_open="airport,bus,metro,metro_station,park,public_square,shopping_mall,"
                         "street_pedestrian,street_traffic,tram")),
      synthetic_open=ml_collections.ConfigDict(dict(per_class=30, new_classes=5))))


def cache_teacher(runs: str = "", combine: str = "logits",
                  output: str = "logits") -> ml_collections.ConfigDict:
  """A teacher read from other runs' `predict` caches: `runs` (comma-separated workdirs; a
  plan sets them), `combine` ("logits": softmax of the mean logits, report 000;
  "probabilities": mean of the softmaxes, report 001; "mean"), the cached `output`."""
  return ml_collections.ConfigDict(dict(source="cache", runs=runs, combine=combine,
                                        output=output))


def online_teacher(run: str = "", checkpoint: str = "best", dtype: str = "float32",
                   sharding: str = "replicated") -> ml_collections.ConfigDict:
  """A frozen run inside the step: its workdir (`run`), `checkpoint` (best, latest, soup),
  weights in `dtype` (float32, bfloat16, float16), `sharding` (replicated, split)."""
  return ml_collections.ConfigDict(dict(source="online", run=run, checkpoint=checkpoint,
                                        dtype=dtype, sharding=sharding))


def ema_teacher(decay: float = 0.999) -> ml_collections.ConfigDict:
  """The EMA of the student (a mean teacher), momentum `decay` (report 004: 0.999)."""
  return ml_collections.ConfigDict(dict(source="ema", decay=decay))


def parse_arg(arg, roles, defaults=None, extra_keys=()) -> dict:
  """"role[,smoke][,root=PATH][,dirs=PATH][,seed=N]" → {"role", "smoke", "root", "dirs", "seed"}
  (and each of `extra_keys`, e.g. report 004's checkpoints m2d=PATH, resunetk=PATH).

  Used by the report configs: `configs/report000_dafa.py:teacher_ce,root=/data/TAU` trains that
  report's CE teacher on the real dataset; `…:teacher_ce,smoke` the tiny synthetic version.
  """
  options = dict(role=None, smoke=False, root="", dirs="", seed=0, **{k: "" for k in extra_keys})
  options.update(defaults or {})
  keys = ("root", "dirs", "seed") + tuple(extra_keys)
  for token in [t.strip() for t in (arg or "").split(",") if t.strip()]:
    if token == "smoke":
      options["smoke"] = True
    elif "=" in token:
      key, value = token.split("=", 1)
      if key not in keys:
        raise ValueError(f"config option {key!r} unknown; valid: {', '.join(keys)}, smoke")
      options[key] = int(value) if key == "seed" else value
    elif options["role"] is None:
      options["role"] = token
    else:
      raise ValueError(f"config arg {arg!r}: two roles ({options['role']!r}, {token!r})")
  if options["role"] not in roles:
    raise ValueError(f"config arg: role must be one of {sorted(roles)}, got {options['role']!r}")
  if not options["smoke"] and not options["root"]:
    raise ValueError("config arg needs root=<dataset folder> (or smoke for the synthetic set)")
  return options


def recipe_options(arg, keys=("root", "dirs", "teachers")) -> dict:
  """"[PATH][,root=PATH][,dirs=PATH][,teachers=RUN+RUN]" → {key: value} for the single-recipe
  configs (cp_mobile_dcase2x.py): a bare first token is the dataset root (as before);
  `teachers` lists cache-teacher workdirs joined by '+'."""
  options = {key: "" for key in keys}
  for i, token in enumerate(t.strip() for t in (arg or "").split(",")):
    if not token:
      continue
    if "=" not in token:
      if i or "root" not in keys:
        raise ValueError(f"config arg {arg!r}: {token!r} is not key=value; keys: {list(keys)}")
      options["root"] = token
      continue
    key, value = token.split("=", 1)
    if key not in keys:
      raise ValueError(f"config option {key!r} unknown; valid: {', '.join(keys)}")
    options[key] = value
  return options


def tau_dcase25(config, root: str) -> None:
  """TAU Urban Acoustic Scenes 2022 Mobile in the DCASE25 setting: 25 % split, test split;
  selection on a validation split held out from split25 by recording location."""
  config.data.update(name="tau22", root=root, train_split="split25", validation_split="holdout",
                     test_split="test")
  config.evaluate.split = "test"


def with_dir(config, dirs: str, prob: float, quiet: bool = False) -> None:
  """DIR augmentation on device 'a' clips with probability `prob` from the MicIRP folder `dirs`
  (off, with a note, when no folder is given)."""
  if dirs:
    config.waveform_augment.update(dir_folder=dirs, dir_prob=prob)
  elif prob > 0 and not quiet:
    print(f"note: no impulse-response folder (dirs=…): DIR augmentation (p={prob}) is off")


def smoke(config, family: str) -> None:
  """Shrinks a report config to the tiny synthetic version its launch script's --smoke runs:
  small data, 32 mel bins, tiny models (one block per stage), a few epochs: enough that the
  students and CP-ResNet teachers learn the synthetic scenes well above chance (tests assert
  it), evaluated a few times (the soups of report 001 average the best of them). `family`:
  student, cp_resnet, passt, crnn or vit."""
  config.data.update(name="synthetic", root="", train_split="train", validation_split="validation",
                     test_split="test")
  config.data.synthetic.update(num_train=256, num_validation=64, num_test=144)
  config.evaluate.split = "test"
  config.frontend.update(n_mels=32, n_fft=1024, win_length=800, hop_length=800)
  config.augment.update(freq_mask=4, time_mask=0, fmax_aug_range=1)
  config.batch_size = 32
  config.num_epochs = {"student": 16, "cp_resnet": 8, "crnn": 8, "passt": 24, "vit": 24}.get(
      family, 8)
  # Students: once, at the end; teachers four times ("best" checkpoints, soups of the best 2).
  config.eval_every_epochs = config.num_epochs // (1 if family == "student" else 4)
  config.optimizer.learning_rate = {"student": 1e-2, "cp_resnet": 3e-3, "crnn": 3e-3,
                                    "passt": 1e-3, "vit": 1e-3}.get(family, 1e-3)
  config.log_every_steps = 8
  config.schedule.update(warmup_steps=2, warmup_epochs=1, rampdown_start=config.num_epochs,
                         rampdown_length=1)
  config.checkpoint.keep_best = 2
  # The latest checkpoint at evaluations and at the end only: an orbax save in a training run
  # costs 0.2-0.3 s, as much as a smoke epoch of 8 steps.
  config.checkpoint.every_epochs = config.eval_every_epochs
  config.soup.top_k = 2
  config.evaluate.batch_size = 72
  config.dsft.update(num_epochs=1, batch_size=8)
  if family == "student":   # one block per stage: half the graph to trace and compile
    config.model.update(base_channels=8, n_blocks=(1, 1, 1), strides=((1, 1), (2, 1), (1, 2)))
  elif family == "cp_resnet":
    config.model.update(base_channels=8, cut_channels_s3=4, n_blocks=(1, 1, 1),
                        maxpool_positions_s1=(0, 1))
  elif family == "passt":
    # A transformer from scratch (no AudioSet weights here) learns slowly: two blocks of width
    # 64 and more epochs than the CNNs; still the weakest teacher of the smoke chains.
    config.model.update(embed_dim=64, depth=2, num_heads=8, patch_size=8, stride=8,
                        input_size=(32, 40), s_patchout_t=1, s_patchout_f=1)
    config.model_init.path = ""
  elif family == "crnn":   # 32 mel bins × 40 frames → 2 × 10 after the pools
    config.model.update(base_channels=8, rnn_hidden=16, rnn_layers=1,
                        pools=((2, 2), (2, 2), (2, 1), (2, 1)))
  elif family == "vit":
    config.model.update(embed_dim=64, depth=2, num_heads=4, patch_size=8, input_size=(32, 40))
    config.model_init.path = ""
  else:
    raise ValueError(f"smoke family must be student, cp_resnet, passt, crnn or vit, got "
                     f"{family!r}")


def beats(**overrides) -> ml_collections.ConfigDict:
  """BEATs teacher settings (jax_asc/models/beats.py `BEATsClassifier`): the released iter3+
  models' cfg (a checkpoint's own cfg is checked against these when it loads), the pooled
  embedding's 2-layer projection head to 128 and a cosine (γ 56) or linear classifier."""
  cfg = ml_collections.ConfigDict(dict(
      name="beats", n_classes=10, input_patch_size=16, embed_dim=512, conv_bias=False,
      encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072,
      encoder_attention_heads=12, activation_fn="gelu", layer_norm_first=False, deep_norm=True,
      conv_pos=128, conv_pos_groups=16, relative_position_embedding=True, num_buckets=320,
      max_distance=800, gru_rel_pos=True, dropout=0.0, attention_dropout=0.0,
      activation_dropout=0.0, dropout_input=0.0, encoder_layerdrop=0.0,
      layer_wise_gradient_decay_ratio=1.0, head="cosine", cosine_scale=56.0,
      projection_dim=128, projection_hidden=768, projection_stop_gradient=False))
  cfg.update(overrides)
  return cfg


def cp_resnet(**overrides) -> ml_collections.ConfigDict:
  """CP-ResNet settings (d23 defaults: rho 8, base 32 → 127,684 parameters)."""
  cfg = ml_collections.ConfigDict(dict(
      name="cp_resnet", n_classes=10, rho=8, base_channels=32, channels_multiplier=2.0,
      cut_channels_s2=0, cut_channels_s3=36, n_blocks=(2, 1, 1), groups=(1, 2, 1),
      maxpool_positions_s1=(0, 1, 2, 4)))
  cfg.update(overrides)
  return cfg


def passt(**overrides) -> ml_collections.ConfigDict:
  """PaSST-S settings (stride 10, 128 × 998 positional grid, as the released checkpoints)."""
  cfg = ml_collections.ConfigDict(dict(
      name="passt", n_classes=10, input_size=(128, 998), patch_size=16, stride=10,
      embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, s_patchout_t=0, s_patchout_f=6))
  cfg.update(overrides)
  return cfg


def crnn(**overrides) -> ml_collections.ConfigDict:
  """CRNN settings (jax_asc/models/crnn.py; base 32, GRU 64: 390,890 parameters)."""
  cfg = ml_collections.ConfigDict(dict(
      name="crnn", n_classes=10, base_channels=32, channel_multipliers=(1, 2, 4, 4),
      pools=((4, 2), (4, 2), (4, 1), (2, 1)), rnn_hidden=64, rnn_layers=2))
  cfg.update(overrides)
  return cfg


def vit(**overrides) -> ml_collections.ConfigDict:
  """ViT settings (jax_asc/models/vit.py): ViT-Tiny on 1 s of the PaSST frontend (128 × 100)."""
  cfg = ml_collections.ConfigDict(dict(
      name="vit", n_classes=10, input_size=(128, 100), patch_size=16, embed_dim=192, depth=12,
      num_heads=3, mlp_ratio=4.0))
  cfg.update(overrides)
  return cfg


def cp_resnet_teacher(config, *, hop_length=750, roll=4000, dir_prob=0.4, dirs="",
                      mixstyle=(0.8, 0.4), quiet=False) -> None:
  """The d23 CP-ResNet teacher recipe: Adam (coupled L2 1e-3) lr 1e-3, batch 256, 150 epochs,
  15 warm-up epochs, ramp-down 50 + 85 → 0.005; Freq-MixStyle (p, α); DIR; time roll."""
  config.model = cp_resnet()
  config.frontend = frontend("cp_resnet", hop_length=hop_length)
  config.augment.update(freq_mask=48, time_mask=0, fmax_aug_range=1000)
  config.optimizer.update(name="adam", learning_rate=1e-3, weight_decay=1e-3)
  config.schedule.update(name="dcase23", warmup_epochs=15, rampdown_start=50,
                         rampdown_length=85, last_value=0.005)
  config.batch_size, config.num_epochs = 256, 150
  config.mix.update(mixstyle_p=mixstyle[0], mixstyle_alpha=mixstyle[1])
  config.waveform_augment.roll_samples = roll
  with_dir(config, dirs, dir_prob, quiet)


def passt_teacher(config, *, roll=10000, dir_prob=0.6, dirs="", mixstyle=(0.4, 0.4),
                  n_fft=1024, quiet=False) -> None:
  """The d23 PaSST teacher recipe: fine-tune PaSST-S from the AudioSet checkpoint (path in
  model_init.path), Adam (coupled L2 1e-3) lr 1e-5, batch 80, 25 epochs, 3 warm-up epochs,
  ramp-down 3 + 10 → 0.01; frequency masks 48, time masks 20; patchout f 6."""
  config.model = passt()
  # d23's teacher script: fmax = sr/2 − fmax_aug_range/2 = 15500 (train 15001–16000).
  config.frontend = frontend("passt", n_fft=n_fft, fmax=15500.0)
  config.augment.update(freq_mask=48, time_mask=20, fmax_aug_range=1000)
  config.optimizer.update(name="adam", learning_rate=1e-5, weight_decay=1e-3)
  config.schedule.update(name="dcase23", warmup_epochs=3, rampdown_start=3, rampdown_length=10,
                         last_value=0.01)
  config.batch_size, config.num_epochs = 80, 25
  config.mix.update(mixstyle_p=mixstyle[0], mixstyle_alpha=mixstyle[1])
  config.waveform_augment.roll_samples = roll
  config.model_init.update(kind="passt_torch")
  with_dir(config, dirs, dir_prob, quiet)
