"""Report 003: ContrastASC — contrastive fine-tuning of BEATs and CRD into CP-Mobile at 16 kHz.

Roles (`configs/report003_contrastasc.py:<role>[,root=TAU22][,dirs=MicIRP][,beats=CKPT]
[,tut17=ROOT][,icme24=ROOT][,esc50=ROOT][,size=S][,seed=N][,smoke]`):
  Teachers (BEATs from its released checkpoint, §2; 16 kHz, its Kaldi fbank; table 1):
    frozen            BEATs frozen, a linear head trained with CE on clean clips: the linear
                      probe ("BEATs (Frozen)"); phase 1's optimiser (AdamW 8e-3, wd 1e-4, batch
                      2048, 50 epochs)
    ft                "FT (CE-only)": end to end from `frozen` with its linear head, phase 2's
                      recipe with λ = 1; beside it (gradients stopped at the embedding, so the
                      network is CE-only) its projection head learns soft SupCon, as the FT
                      teacher's head for the FT + CRD student
    cft_heads         phase 1 of contrastive FT: backbone frozen, the cosine head (γ = 56) and
                      the 2-layer projection head (768 → 768 → 128) trained 50 epochs, AdamW 8e-3,
                      wd 1e-4, batch 2048; the augmented clip feeds only the projection branch
                      (soft SupCon), the clean clip the classification head (CE; `mix.clean_view`)
    cft               phase 2 ("Contrastive FT"): end to end from `cft_heads`, 30 epochs, cosine
                      schedule with 2 warm-up epochs, peak lr 1e-4; L = 0.25·CE + 0.75·SoftSupCon
                      (eq. 2, τ = 0.2) on the augmented clips
    cft_linear_heads, cft_linear   the same with a linear classification head (table 1's ablation)
  Augmentation (§2): Freq-MixStyle (p 0.4, α 0.4), mixup (p 0.3, α 2.0), time roll up to 0.1 s,
  frequency masks up to 48 bins.
  Students (CP-Mobile with LayerNorm, pool → LayerNorm1D → cosine head, §3; table 2, figure 2),
  `size` one of SIZES (common.CP_MOBILE_REPORT003; default the 126K model), on CP-Mobile's
  frontend with window, hop and n_fft halved at 16 kHz (STUDENT_FRONTEND: 96 ms / 16 ms):
    student_nokd      CE only
    student_ft_kd, student_ft_crd, student_cft_kd, student_cft_crd   KD / CRD from the FT / C-FT
                      teacher: L = α·CE + (1 − α)·KD + β·CRD (eq. 4; α = 0.02, β = 0.1 for CRD,
                      0 for KD-only; τ_KD = 2, τ_CRD = 0.07). CRD (`crd_softmax`) is eq. 3 as
                      written: the teacher's frozen projection q^T as anchor, the student's
                      projection (a 2-layer MLP to 128 on its post-LayerNorm embedding) of the same
                      clip as positive, those of the batch's other clips as negatives
    student_cft_crd_nonorm     table 2's "− LayerNorm": no normalisation anywhere (body and head)
    student_cft_crd_batchnorm  "+ BatchNorm": BatchNorm in the body and BatchNorm1D in the head
  Students train 75 epochs, 7 warm-up, cosine, AdamW with the peak lr of their size
  ({0.04, 0.04, 0.03, 0.02, 0.01} from the smallest to the largest); DIR p 0.6, the mel upper
  edge shifted within ±1000 Hz (CP-Mobile's fmax jitter), Freq-MixStyle (0.4, 0.4), time roll
  0.1 s, frequency masks 48; no mixup (§3).
  Every run ends with stage fewshot (§4): K ∈ {5, 20} shots, 300 episodes, logistic regression
  on TUT17 and ICME24 (and ESC-50 when `esc50` is given), with retrieval mAP; teachers from the
  pooled BEATs embedding, students from the embedding before the head's LayerNorm.
Not in the report (our choices, also listed in the README): phase 2's batch (256) and weight
decay (1e-4, phase 1's); phase 1's schedule (constant); CE-only FT's head (linear: the
conventional recipe of figure 1), that it starts from the linear probe, and its projection head
trained beside it on the stopped embedding (the report reuses a trained projection head for CRD
but trains one only in contrastive FT); phase 1's loss (eq. 2's λ on the two heads, which share
no parameters); CRD's negatives (the batch's other clips: eq. 3 names no memory bank; the
memory-bank NCE form of the original CRD is the term `crd`); the KD reduction (the mean over
B × C, CP-Mobile's, which α = 0.02 comes from); the students' batch (256) and weight decay
(1e-3, CP-Mobile's); the student's γ (56, the teacher's); the five sizes' widths (only 126K is
CP-Mobile's own, see common.CP_MOBILE_REPORT003); teachers selected by validation accuracy.
Data: TAU22 development (`root`), fold1 train less a 10 % validation split held out by
recording location, tested on fold1 evaluate; resampled to 16 kHz. `beats` is the BEATs
checkpoint (`.pt`: {cfg, model, label_dict}); its cfg sets the encoder. `smoke`: the synthetic
scenes at 16 kHz, a tiny random BEATs (2 layers, width 64), two student sizes in figure 2
(SMOKE_SIZES), XLA's optimisations kept (its 256-step runs are compute-bound), the
synthetic open set for few-shot; students 32 epochs at lr 1e-3 (the LayerNorm students learn
the synthetic scenes slower than BatchNorm ones) and, as the tiny teachers are weak, α = 0.5
(SMOKE_ALPHA).
"""
import copy

from configs import common
from jax_asc import plans

TEACHERS_PHASE1 = ("frozen", "cft_heads", "cft_linear_heads")
TEACHERS_PHASE2 = {"ft": "frozen", "cft": "cft_heads", "cft_linear": "cft_linear_heads"}
STUDENTS = ("student_nokd", "student_ft_kd", "student_ft_crd", "student_cft_kd",
            "student_cft_crd", "student_cft_crd_nonorm", "student_cft_crd_batchnorm")
ROLES = TEACHERS_PHASE1 + tuple(TEACHERS_PHASE2) + STUDENTS
EXTRA_KEYS = ("beats", "tut17", "icme24", "esc50", "size")
# Figure 2's students (common.CP_MOBILE_REPORT003: widths and peak learning rates), smallest
# first; the smoke chain trains the two largest (its one-block-per-stage 6K model has 3,692
# parameters and stays near chance on the synthetic scenes).
SIZES = tuple(common.CP_MOBILE_REPORT003)
SMOKE_SIZES = (SIZES[-2], SIZES[-1])
SAMPLE_RATE = 16000
# The students' frontend (§3): CP-Mobile's (d23: 4096 / 3072 / 500 at 32 kHz, the upper mel edge
# at Nyquist − 1000 Hz and jittered by ±1000 Hz) with window, hop and n_fft halved at 16 kHz:
# 96 ms / 16 ms.
STUDENT_FRONTEND = dict(sample_rate=SAMPLE_RATE, n_fft=2048, win_length=1536, hop_length=250,
                        n_mels=256, fmax=7000.0)
# Eq. 2 and eq. 4.
CE_WEIGHT_FT = 0.25
SUPCON_TEMPERATURE = 0.2
ALPHA, BETA, KD_TEMPERATURE, CRD_TEMPERATURE = 0.02, 0.1, 2.0, 0.07
COSINE_SCALE = 56.0
# The smoke chain's α: its tiny random-start BEATs teachers reach about 30 % (chance 10 %), and
# at α = 0.02 their near-uniform targets leave a student at chance.
SMOKE_ALPHA = 0.5


def beats_model(head: str, smoke: bool):
  """The BEATs teacher (jax_asc/models/beats.py): the released iter3+ sizes (the checkpoint's cfg
  is checked against them when it loads), or a tiny random one for the smoke chain."""
  cfg = common.beats(head=head, cosine_scale=COSINE_SCALE)
  if smoke:
    cfg.update(embed_dim=32, encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
               encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4, num_buckets=32,
               max_distance=64, projection_hidden=64)
  return cfg


def _augment(config, roll_seconds: float = 0.1) -> None:
  """§2's augmentation: Freq-MixStyle (0.4, 0.4), time roll ≤ 0.1 s, frequency masks ≤ 48."""
  config.mix.update(mixstyle_p=0.4, mixstyle_alpha=0.4, mixstyle_frequency_wise=True)
  config.waveform_augment.roll_samples = int(roll_seconds * SAMPLE_RATE)
  config.augment.update(freq_mask=48, time_mask=0, fmin_aug_range=1, fmax_aug_range=1)


def _teacher(config, role: str, options) -> None:
  smoke = options["smoke"]
  head = "linear" if role in ("frozen", "ft", "cft_linear_heads", "cft_linear") else "cosine"
  config.model = beats_model(head, smoke)
  config.frontend = common.frontend("beats")
  if role == "frozen":   # the linear probe's classification head sees clean clips (§2)
    config.augment.update(freq_mask=0, time_mask=0, fmin_aug_range=1, fmax_aug_range=1)
  else:
    _augment(config)
    config.mix.update(mixup_alpha=2.0, mixup_p=0.3)
    config.loss.terms.update(ce=CE_WEIGHT_FT, soft_supcon=1.0 - CE_WEIGHT_FT)
    config.loss.soft_supcon.update(temperature=SUPCON_TEMPERATURE, on="projected")
  if role == "ft":   # CE only for the network; the projection head learns beside it (for CRD)
    config.loss.terms.ce = 1.0
    config.model.projection_stop_gradient = True
  if role in TEACHERS_PHASE1:   # phase 1: backbone frozen, heads from scratch
    config.optimizer.update(name="adamw", learning_rate=8e-3, weight_decay=1e-4,
                            param_groups=(("backbone/.*", {"frozen": True}),))
    config.schedule.name = "constant"
    config.batch_size = 2048
    config.num_epochs = 50
    config.mix.clean_view = role != "frozen"
    if options["beats"]:
      config.model_init.update(path=options["beats"], kind="beats_torch")
    elif not smoke:
      raise ValueError(f"role {role!r} starts from the BEATs checkpoint: config option "
                       "beats=<BEATs .pt> (launch script: --beats FILE)")
  else:                         # phase 2: end to end (init_from the phase-1 run: the plan)
    config.optimizer.update(name="adamw", learning_rate=1e-4, weight_decay=1e-4)
    config.schedule.update(name="warmup_cosine", cosine_warmup_epochs=2.0)
    config.batch_size = 256
    config.num_epochs = 30
  config.eval_every_epochs = 1
  config.evaluate.checkpoint = "best"
  config.fewshot.update(output="embedding", checkpoint="best")


def _student(config, role: str, options) -> None:
  size = options["size"] or SIZES[-1]
  norm = "none" if role.endswith("_nonorm") else "batch" if role.endswith("_batchnorm") else "layer"
  config.model = common.cp_mobile_report003(size, norm=norm, cosine_scale=COSINE_SCALE)
  config.frontend = common.frontend("dcase23", **STUDENT_FRONTEND)
  _augment(config)
  config.augment.fmax_aug_range = 2000   # the upper edge within 7000 ± 1000 Hz
  common.with_dir(config, options["dirs"], 0.6, options["smoke"])
  config.optimizer.update(name="adamw", learning_rate=common.CP_MOBILE_REPORT003[size][3],
                          weight_decay=1e-3)
  config.schedule.update(name="warmup_cosine", cosine_warmup_epochs=7.0)
  config.batch_size = 256
  config.num_epochs = 75
  config.eval_every_epochs = 5
  config.evaluate.checkpoint = "latest"
  if role != "student_nokd":
    config.teachers.online = common.online_teacher(checkpoint="best")
    config.loss.terms.update(ce=ALPHA, kd=1.0 - ALPHA)
    config.loss.kd.update(teacher="online", temperature=KD_TEMPERATURE,
                          reduction="elementwise_mean")
    if "_crd" in role:
      config.loss.terms.crd_softmax = BETA
      config.loss.crd_softmax.update(teacher="online", temperature=CRD_TEMPERATURE)
      config.loss.crd.update(feat_dim=128, student_head="mlp", student_hidden=0)
  config.fewshot.update(output="embedding_prenorm", checkpoint="latest")


def get_config(arg=None):
  options = common.parse_arg(arg, ROLES, extra_keys=EXTRA_KEYS)
  if options["size"] and options["size"] not in SIZES:
    raise ValueError(f"config option size must be one of {list(SIZES)}, got "
                     f"{options['size']!r}")
  role, smoke = options["role"], options["smoke"]
  config = common.base_config()
  config.seed = options["seed"]
  config.stage = "train,evaluate,fewshot"
  config.data.sample_rate = SAMPLE_RATE
  config.data.resampler = "sinc_hann"
  if role.startswith("student"):
    _student(config, role, options)
  else:
    _teacher(config, role, options)
  for name in ("tut17", "icme24", "esc50"):
    config.fewshot.roots[name] = options[name]
  config.fewshot.update(datasets="tut17,icme24" + (",esc50" if options["esc50"] else ""),
                        shots=(5, 20), episodes=300)
  if smoke:
    _smoke(config, role)
  else:
    config.data.update(name="tau22", root=options["root"], train_split="train",
                       validation_split="holdout", test_split="test")
    config.evaluate.split = "test"
  return config


def _smoke(config, role: str) -> None:
  """The tiny synthetic version (launch/report003_contrastasc.sh --smoke): the report's models
  (tiny), frontends and augmentations on the synthetic scenes at 16 kHz."""
  student = role.startswith("student")
  kept = {key: copy.deepcopy(config[key]) for key in ("model", "frontend", "augment")}
  common.smoke(config, "student")     # the data, evaluation and schedule parts
  for key, value in kept.items():
    config[key] = value
  config.augment.freq_mask = min(config.augment.freq_mask, 8)
  config.batch_size = 32
  if student:   # 32 mel bins, one block per stage
    config.frontend.update(n_mels=32, hop_length=400)
    config.model.update(n_blocks=(1, 1, 1), strides=((1, 1), (2, 1), (1, 2)))
    config.num_epochs = 32
    config.eval_every_epochs = 32
    config.optimizer.learning_rate = 1e-3
    config.schedule.cosine_warmup_epochs = 1.0
    config.loss.crd.num_negatives = 64
    if config.loss.terms.kd:   # the tiny BEATs teachers are weak (about 30 %): labels count more
      config.loss.terms.update(ce=SMOKE_ALPHA, kd=1.0 - SMOKE_ALPHA)
  else:
    phase1 = role in TEACHERS_PHASE1
    config.num_epochs = 4 if phase1 else 8
    config.eval_every_epochs = 2
    config.optimizer.learning_rate = 3e-3 if phase1 else 1e-3
    config.schedule.cosine_warmup_epochs = 1.0
  config.fewshot.update(datasets="synthetic_open", episodes=20)


def get_plan(smoke: bool = False) -> plans.Plan:
  """The six teachers (phase 1, then phase 2 from it), the students of table 2 at the 126K
  size, the FT + KD and C-FT + CRD students of figure 2 at the other sizes, and the tables."""
  runs = [plans.Run(f"teachers/{t}", t, ("train", "evaluate", "fewshot"))
          for t in TEACHERS_PHASE1]
  for teacher, phase1 in TEACHERS_PHASE2.items():
    runs.append(plans.Run(f"teachers/{teacher}", teacher, ("train", "evaluate", "fewshot"),
                          init_from=plans.InitFrom(f"teachers/{phase1}", "best")))

  def student(role, size):
    teacher = "ft" if "_ft_" in role else "cft" if "_cft_" in role else None
    overrides = {"teachers.online.run": f"{{workdir}}/teachers/{teacher}"} if teacher else {}
    name = role if size == SIZES[-1] else f"{role}@{size}"
    return plans.Run(f"students/{name}", f"{role},size={size}",
                     ("train", "evaluate", "fewshot"), overrides,
                     needs=(f"teachers/{teacher}",) if teacher else ())

  runs += [student(role, SIZES[-1]) for role in STUDENTS]
  for size in SMOKE_SIZES if smoke else SIZES:
    if size != SIZES[-1]:
      runs += [student("student_ft_kd", size), student("student_cft_crd", size)]
  return plans.Plan("report003", "configs/report003_contrastasc.py", tuple(runs),
                    tables="report003", checkpoints=("beats", "tut17", "icme24"),
                    optional=("esc50",), smoke_fast_compile=False)
