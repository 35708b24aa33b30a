"""Report 004: spatial semantic segmentation of sound scenes (DCASE 2026 Task 4, S5).

Roles (`configs/report004_s5.py:<role>[,root=DATA][,m2d=CKPT][,m2d_norm=MEAN:STD]
[,resunetk=CKPT][,seed=N][,smoke]`):
  tagger_1c        the DCASE baseline tagger on the reference channel: M2D encoder frozen, the
                   track head trained with the PIT cross-entropy (stage 1 of the T4 baseline:
                   AdamW 1e-3, clipping 0.5, batch 32)
  tagger_1c_sd     report 004's masked self-distillation (§2.2, eq. 1-3): the complete M2D
                   fine-tuned (backbone lr 1e-5, heads 1e-4: our choice, the report gives only
                   the backbone's), auxiliary heads on blocks 9 and 10 (γ = 0.05), PI-KD from an
                   EMA teacher (m = 0.999, T = 1.5, α = 0.10, ramped up over the first epoch),
                   L_self (α_self = 0.05, `pit.self_distillation`), clipping 0.5, batch 64
  tagger_4c, tagger_4c_sd   the same on the four FOA channels (per-channel encoding
                   concatenated per token); the SD model masks 30 % of the spatial tokens in
                   training; batch 24
  qwen_cache       stage teacher_cache: the frozen Qwen2-Audio encoder (`qwen`, its
                   safetensors; only the audio tower is read) over the clean sum of each
                   training mixture's dry sources, its tokens pooled to 32 bins and cached per
                   mixture id (jax_asc/teachers/semantic.py)
  tagger_1c_qwen, tagger_4c_qwen   report 004's semantic distillation (§2.3, eq. 4): the M2D
                   tagger fine-tuned with L_pit + λ_CKA·(1 − CKA) + λ_cos·(1 − cos) against the
                   cached teacher tokens, (λ_CKA, λ_cos) = (0.05, 0.02) for 1c and (0.02, 0.01)
                   for 4c (whose semantic match reads the reference channel only); the student
                   tokens pooled to 32 bins and projected to 1280 (lr 1e-4), backbone lr 1e-5
                   (heads 1e-4, our choice as for SD), clipping 0.5; the weights and the
                   projector's learning rate ramped up over 5 epochs; batch 16 (1c) and 4 (4c);
                   1c trains 33 epochs and keeps the last checkpoint, 4c 40 epochs and the best
                   on the validation PIT cross-entropy (the report's epochs 33 and 21). The
                   training mixtures are one fixed draw of `num_train` (the cache holds them);
                   stage inference_checkpoint writes the model without its projector
`accum=N` (taggers) splits each batch into N micro-batches with gradient accumulation (the same
effective batch; the report accumulates where memory requires). CKA is not additive: with
accumulation each micro-batch's CKA sees its own (B/N)·32 pooled tokens.
Data: `root` is the DCASE 2026 Task 4 `data` folder (dev_set/, eval_set/): training mixtures
drawn on the fly (`data.s5.num_train` per epoch, the baseline's 25,088), validation from
metadata/valid.json (checkpoint selection by the validation PIT cross-entropy, as the report),
evaluation on the synthesized test set. `m2d` is the AS-fine-tuned M2D checkpoint (`.pth` or
its `.npz`), required for the taggers on real data; the frontend normalises with `m2d_norm`
(default portable_m2d's (−7.1, 4.2)), which must be the checkpoint's `norm_stats` (checked when
the weights load; the error names the values to pass). `qwen` is the Qwen2-Audio checkpoint
(safetensors: a file, the model folder or its index json), required for `qwen_cache` on real
data. `smoke`: the synthetic S5 set (jax_asc/data/s5_synthetic.py), a tiny random M2D and a tiny
random Qwen-architecture teacher (2 layers of width 64 over a 1-s window); every tagger trains
8 epochs.
"""
from configs import common
from jax_asc import plans

TAGGERS = ("tagger_1c", "tagger_1c_sd", "tagger_1c_qwen", "tagger_4c", "tagger_4c_sd",
           "tagger_4c_qwen")
ROLES = TAGGERS + ("qwen_cache", "separator", "system")
# Table rows of the system evaluation: "<track>/<system>" → the tagger role.
SYSTEM_ROWS = {"1c/baseline": "tagger_1c", "1c/masked_sd": "tagger_1c_sd",
               "1c/semantic_kd": "tagger_1c_qwen", "4c/baseline": "tagger_4c",
               "4c/masked_sd": "tagger_4c_sd", "4c/semantic_kd": "tagger_4c_qwen"}
# (γ, α, α_self), T, EMA momentum: report 004 §2.2.
SD_WEIGHTS = dict(aux_pit_ce=0.05, pi_kd=0.10, self_kd=0.05)
SD_TEMPERATURE = 1.5
EMA_MOMENTUM = 0.999
BATCH = {"tagger_1c": 32, "tagger_4c": 32, "tagger_1c_sd": 64, "tagger_4c_sd": 24,
         "tagger_1c_qwen": 16, "tagger_4c_qwen": 4}
# (λ_CKA, λ_cos) of eq. 4, report 004 §2.3.
QWEN_WEIGHTS = {"tagger_1c_qwen": (0.05, 0.02), "tagger_4c_qwen": (0.02, 0.01)}
QWEN_WARMUP_EPOCHS = 5
# (epochs, checkpoint): 1c keeps its last checkpoint (epoch 33), 4c the best on validation.
QWEN_TRAINING = {"tagger_1c_qwen": (33, "latest"), "tagger_4c_qwen": (40, "best")}
# The M2D checkpoint's log-mel statistics when it stores none (portable_m2d's default).
M2D_NORM = (-7.1, 4.2)


def m2d_tagger(channels: int, **overrides):
  """`models.m2d.M2DTagger` settings: ViT-B/16 over 80 × 1001 log-mels (M2D-AS), the T4 head."""
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(
      name="m2d_tagger", channels=channels, embed_dim=768, depth=12, num_heads=12,
      mlp_ratio=4.0, patch_size=16, input_size=(80, 1001), flat_features=True, num_tracks=3,
      track_input_dim=1024, track_hidden_dim=512, aux_blocks=(), spatial_mask_rate=0.0))
  cfg.update(overrides)
  return cfg


def resunetk(**overrides):
  """`models.resunetk.ResUNetK` settings: the T4 baseline's separator (4 channels in, K = 3)."""
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(
      name="resunetk", n_fft=1024, hop=160, in_channels=4, num_sources=3, condition_size=512,
      widths=(32, 64, 128, 256, 384, 384)))
  cfg.update(overrides)
  return cfg


def qwen_teacher(checkpoint: str = "", **encoder):
  """`config.teachers.qwen`: the frozen Qwen2-Audio encoder (its sizes unless `encoder` says
  otherwise), its tokens of the clean sources pooled to 32 bins, cached for the train split."""
  import ml_collections
  return ml_collections.ConfigDict(dict(
      source="qwen_audio", checkpoint=checkpoint, init_seed=0, encoder=dict(encoder), bins=32,
      folder="", splits="train", batch_size=4, dtype="float32"))


# The smoke chain's teacher: Qwen's architecture, 2 layers of width 64, a 1-s window.
SMOKE_QWEN = dict(num_mel_bins=128, d_model=64, num_layers=2, num_heads=4, ffn_dim=128,
                  max_source_positions=50)
QWEN_WIDTH = 1280


def s5_data():
  import ml_collections
  return ml_collections.ConfigDict(dict(
      seed=0, num_train=25088, num_validation=0, num_test=0, duration_s=10.0, min_events=0,
      clips_per_class=0, rooms=0, on_the_fly_train=True))


def parse_norm(text: str) -> tuple:
  """"MEAN:STD" → (mean, std) of the M2D log-mels; "" → the default."""
  if not text:
    return M2D_NORM
  try:
    mean, std = (float(v) for v in text.split(":"))
  except ValueError:
    raise ValueError(f"config option m2d_norm={text!r}: expected MEAN:STD, e.g. -7.1:4.2") \
        from None
  return mean, std


def _tagger(config, role: str, norm=M2D_NORM, qwen: str = "") -> None:
  channels = 4 if role.startswith("tagger_4c") else 1
  sd = role.endswith("_sd")
  semantic = role.endswith("_qwen")
  config.task = "tagging"
  config.model = m2d_tagger(channels, aux_blocks=(9, 10) if sd else (),
                            spatial_mask_rate=0.3 if sd and channels == 4 else 0.0)
  config.frontend = common.frontend("m2d", norm_shift=-norm[0], norm_scale=norm[1])
  config.loss.terms = {name: 0.0 for name in config.loss.terms}
  config.loss.terms.pit_ce = 1.0
  config.batch_size = BATCH[role]
  config.optimizer.update(name="adamw", weight_decay=0.0, grad_clip_norm=0.5)
  config.schedule.update(name="constant")
  if sd:
    config.loss.terms.update(SD_WEIGHTS)
    config.loss.pi_kd.update(temperature=SD_TEMPERATURE, teacher="ema")
    config.loss.self_kd.temperature = SD_TEMPERATURE
    config.loss.pi_kd.warmup_steps = config.data.s5.num_train // config.batch_size  # 1 epoch
    config.teachers.ema = common.ema_teacher(EMA_MOMENTUM)
    config.optimizer.learning_rate = 1e-4
    config.optimizer.param_groups = (("encoder/.*", {"lr_mult": 0.1}),)   # backbone 1e-5
    config.num_epochs = 40
  elif semantic:
    _semantic_kd(config, role, qwen)
  else:
    config.optimizer.learning_rate = 1e-3
    config.optimizer.param_groups = (("encoder/.*", {"frozen": True}),)
    config.num_epochs = 300
  config.checkpoint.update(best_metric="validation/pit_ce", best_mode="min", keep_best=1)
  config.evaluate.update(checkpoint="best", batch_size=16)
  config.predict.update(splits="test", checkpoint="best", outputs="track_logits")
  config.eval_every_epochs = 1
  if semantic:
    config.evaluate.checkpoint = config.predict.checkpoint = QWEN_TRAINING[role][1]


def _semantic_kd(config, role: str, qwen: str) -> None:
  """Report 004 §2.3 on top of the fine-tuned M2D tagger (see the module docstring)."""
  config.model.update(semantic_dim=QWEN_WIDTH, semantic_bins=32)
  config.teachers.qwen = qwen_teacher(qwen)
  config.data.s5.on_the_fly_train = False     # the cache holds one fixed draw
  cka, cos = QWEN_WEIGHTS[role]
  config.loss.terms.update(semantic_cka=cka, semantic_cos=cos)
  _semantic_warmup(config, QWEN_WARMUP_EPOCHS)
  config.optimizer.learning_rate = 1e-4
  # Backbone 1e-5; heads and projector 1e-4, the projector's ramped up (warmup_cosine with
  # end_factor 1: linear for schedule.warmup_steps updates, then constant).
  config.optimizer.param_groups = (("encoder/.*", {"lr_mult": 0.1}),
                                   ("semantic_projector/.*", {"schedule": "warmup_cosine"}))
  config.schedule.end_factor = 1.0
  config.num_epochs = QWEN_TRAINING[role][0]


def _semantic_warmup(config, epochs: int) -> None:
  """The distillation weights (steps) and the projector's learning rate (optimizer updates)
  ramped up over `epochs` epochs."""
  steps = epochs * (config.data.s5.num_train // config.batch_size)
  config.loss.semantic_cka.warmup_steps = config.loss.semantic_cos.warmup_steps = steps
  config.schedule.warmup_steps = steps // int(config.optimizer.grad_accum_steps)


def _accumulate(config, accum: str) -> None:
  """`accum=N`: the batch as N micro-batches with gradient accumulation."""
  n = int(accum)
  if n < 1 or config.batch_size % n:
    raise ValueError(f"config option accum={accum}: must divide the batch size "
                     f"{config.batch_size}")
  config.optimizer.grad_accum_steps = n
  config.batch_size //= n
  for term in ("pi_kd", "semantic_cka", "semantic_cos"):
    config.loss[term].warmup_steps *= n      # micro-steps


def _separator(config, role: str, checkpoint: str) -> None:
  """The separator (T4 baseline: class-aware PIT −SNR, 1-3 events, batch 4, AdamW 1e-4) or,
  for role `system`, its evaluation with the taggers' labels (stage system_eval)."""
  config.task = "separation"
  config.model = resunetk()
  config.loss.terms = {name: 0.0 for name in config.loss.terms}
  config.loss.terms.ca_pit_snr = 1.0
  config.data.s5.min_events = 1
  config.batch_size = 4
  config.optimizer.update(name="adamw", learning_rate=1e-4, weight_decay=0.0, grad_clip_norm=0.5)
  config.schedule.update(name="constant")
  config.num_epochs = 100
  config.checkpoint.update(best_metric="validation/capi_sdri", best_mode="max", keep_best=1)
  config.evaluate.update(checkpoint="best", batch_size=4)
  config.eval_every_epochs = 1
  # Stage system_eval: `taggers` "<track>/<system>=<tagger run>,…" (a plan sets them), the
  # separator from `separator_run` (its `checkpoint`) or the released `separator_checkpoint`.
  import ml_collections
  config.system = ml_collections.ConfigDict(dict(
      taggers="", separator_run="", separator_checkpoint=checkpoint, checkpoint="best",
      split="test", batch_size=4))
  config.stage = "train,evaluate" if role == "separator" else "system_eval"


def _smoke(config, role: str) -> None:
  """The synthetic S5 set (1-s mixtures) and a tiny random M2D (2 blocks of width 64; SD's
  auxiliary head on block 1), 8 epochs: the chain takes minutes on a CPU."""
  config.data.update(name="s5_synthetic", root="", train_split="train",
                     validation_split="validation", test_split="test")
  config.data.s5.update(num_train=384, num_validation=64, num_test=96, duration_s=1.0,
                        clips_per_class=12, rooms=4, on_the_fly_train=False)
  if config.task == "separation":
    # A CPU-sized U-Net: 512-point STFT with hop 256, widths ÷ 8 (154 M MACs per 2-s mixture).
    config.model.update(n_fft=512, hop=256, widths=(4, 8, 8, 16, 16, 16), condition_size=32)
    config.data.s5.num_train = 128
    config.optimizer.learning_rate = 3e-3
    config.batch_size = 8
    config.num_epochs = 4
    config.eval_every_epochs = config.checkpoint.every_epochs = 2
    config.log_every_steps = 8
    config.evaluate.batch_size = 8
    config.system.batch_size = 8
    return
  config.data.s5.num_train = 1536
  config.model.update(embed_dim=64, depth=2, num_heads=4, input_size=(80, 101),
                      track_input_dim=64, track_hidden_dim=32)
  if role.endswith("_sd"):
    config.model.aux_blocks = (1,)
    config.loss.pi_kd.warmup_steps = 1536 // 32
  config.model_init.path = ""
  if role.endswith("_qwen") or role == "qwen_cache":
    config.teachers.qwen.encoder = dict(SMOKE_QWEN)
    config.teachers.qwen.batch_size = 64
    config.model.semantic_dim = SMOKE_QWEN["d_model"]
  # The synthetic mixtures' log-mel statistics (no M2D checkpoint to take them from).
  config.frontend.update(norm_shift=9.0, norm_scale=2.5)
  config.optimizer.learning_rate = 2e-3
  config.optimizer.param_groups = ()
  config.batch_size = 32
  config.num_epochs = 8   # every tagger alike, so the systems compare at one budget
  # The latest checkpoint at evaluations and at the end only (common.smoke's reason).
  config.eval_every_epochs = config.checkpoint.every_epochs = 4
  config.log_every_steps = 16
  config.evaluate.batch_size = 32
  if role.endswith("_qwen"):
    _semantic_warmup(config, 2)
    config.optimizer.param_groups = (("semantic_projector/.*", {"schedule": "warmup_cosine"}),)


def get_config(arg=None):
  options = common.parse_arg(arg, ROLES, extra_keys=("m2d", "m2d_norm", "resunetk", "qwen",
                                                     "accum"))
  role = options["role"]
  config = common.base_config()
  config.seed = options["seed"]
  config.data.s5 = s5_data()
  if role in TAGGERS or role == "qwen_cache":
    config.stage = "train,evaluate,predict"
    _tagger(config, role if role in TAGGERS else "tagger_1c_qwen",
            parse_norm(options["m2d_norm"]), options["qwen"])
    if role.endswith("_qwen"):
      config.stage = "train,evaluate,predict,inference_checkpoint"
    if role == "qwen_cache":
      config.stage = "teacher_cache"
      if not options["qwen"] and not options["smoke"]:
        raise ValueError("role qwen_cache on real data runs the Qwen2-Audio encoder: add "
                         "qwen=<its safetensors file or folder> (launch/report004_s5.sh --qwen "
                         "PATH)")
    elif options["m2d"]:
      config.model_init.update(path=options["m2d"], kind="m2d_torch")
    elif not options["smoke"]:
      raise ValueError(f"role {role} on real data starts from the M2D checkpoint: add "
                       f"m2d=<weights .pth or .npz> (launch/report004_s5.sh --m2d FILE)")
  else:
    _separator(config, role, options["resunetk"])
  if options["smoke"]:
    _smoke(config, role)
  else:
    config.data.update(name="dcase26t4", root=options["root"], train_split="train",
                       validation_split="valid", test_split="test")
    config.evaluate.split = "test"
  if options["accum"]:
    if role not in TAGGERS:
      raise ValueError(f"config option accum: only the taggers accumulate, not role {role}")
    _accumulate(config, options["accum"])
  return config


def get_plan(smoke: bool = False) -> plans.Plan:
  """The Qwen teacher's cache, the six taggers (1c, 4c; DCASE baseline, masked SD, semantic KD),
  each predicting its labels on the test split, and the system evaluation of tables 1 and 2:
  every tagger's labels query the separator — the released ResUNetK (`--resunetk`), as in the
  report, or in the smoke chain one trained here on the synthetic mixtures (the task's recipe:
  oracle labels, class-aware PIT)."""
  cache = {"teachers.qwen.folder": "{workdir}/qwen_cache/teacher_caches/qwen"}
  runs = [plans.Run("qwen_cache", "qwen_cache", ("teacher_cache",))]
  for role in TAGGERS:
    if role.endswith("_qwen"):
      runs.append(plans.Run(f"taggers/{role}", role, ("train", "evaluate", "predict",
                                                      "inference_checkpoint"), cache,
                            needs=("qwen_cache",)))
    else:
      runs.append(plans.Run(f"taggers/{role}", role, ("train", "evaluate", "predict")))
  system = {"system.taggers": ",".join(f"{row}={{workdir}}/taggers/{role}"
                                       for row, role in SYSTEM_ROWS.items())}
  needs = tuple(f"taggers/{role}" for role in TAGGERS)
  if smoke:
    runs.append(plans.Run("separator", "separator", ("train", "evaluate")))
    system.update({"system.separator_run": "{workdir}/separator",
                   "system.separator_checkpoint": ""})
    needs += ("separator",)
  runs.append(plans.Run("system", "system", ("system_eval",), system, needs=needs))
  return plans.Plan("report004", "configs/report004_s5.py", tuple(runs), tables="report004",
                    checkpoints=("m2d", "resunetk", "qwen"), smoke_fast_compile=False)
