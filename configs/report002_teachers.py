"""Report 002: what makes a good teacher — architectures, sizes, device generalisation.

Roles (`configs/report002_teachers.py:<role>[,root=TAU20][,dirs=MicIRP][,seed=N][,smoke]`):
  <arch><size>_<method>  a teacher; method none, ms (MixStyle), fms (Freq-MixStyle), dir (device
                      impulse responses), dirfms (DIR + Freq-MixStyle); architectures and sizes
                      (parameters at 10 classes):
    cpr   CP-ResNet (d23 teacher), base channels 32 / 64 / 128 / 256:
          128k (127,684), 560k, 2m, 10m
    cpm   CP-Mobile, the student's own architecture (d23, GRN), wider: base 32 / 72 / 128:
          128k (126,952: the student's size), 560k (634,790), 2m (1,940,784)
    crnn  CRNN (jax_asc/models/crnn.py, our choice: 4 conv blocks, 2 BiGRU layers), base
          channels 18 / 38 / 72, GRU 2·base units: 128k (124,624), 560k, 2m (1,968,130)
    vit   ViT from scratch (jax_asc/models/vit.py, our choice: ViT-Tiny, width 192, depth 12,
          3 heads, 16×16 patches of the PaSST frontend): 5m (5,399,434)
    passt PaSST-S fine-tuned from the AudioSet checkpoint (≈ 86 M): passt_<method>
  student             CP-Mobile (DCASE23, 126,952 params) distilled from the cache teacher
                      `teachers.ensemble`
                      (d23 KD: τ = 2, label weight 0.02, mean over B×C; averaged logits)
  student_no_kd       the same student trained on the labels alone (the baseline of KD gains)
Dataset: TAU Urban Acoustic Scenes 2020 Mobile (the report's), fold1 train / evaluate, cut into
1-s segments (the student: 28,893,268 MACs per segment); validation (checkpoint selection) on
locations held out from fold1_train. The report's best: a student of 65.81 % from a CP-ResNet +
PaSST ensemble with DIRFMS.
Recipes (the report gives no hyper-parameters; our choices): the d23 CP-ResNet teacher recipe
for cpr and crnn (Adam 1e-3, 150 epochs, hop 750); the d23 PaSST teacher recipe for passt; the
d23 student recipe without KD for cpm (Adam 9e-4, 150 epochs); for vit, from scratch, AdamW
5e-4 with weight decay 0.05 and the PaSST frontend, augmentation and 150 epochs of the CP-ResNet
schedule. MixStyle (p, α) = (0.8, 0.4) for CP-ResNet and CRNN, (0.4, 0.4) for PaSST and ViT,
(0.4, 0.3) for CP-Mobile (the student's). cpm128k is the student itself trained on the labels
(its best checkpoint on the validation split teaches); `student_no_kd` is the same network as a
student (its last checkpoint), the baseline of every KD gain.
"""
from configs import common
from jax_asc import plans
from jax_asc.eval import tables

SIZES = {   # architecture → {size: width setting}
    "cpr": {"128k": 32, "560k": 64, "2m": 128, "10m": 256},     # base_channels
    "cpm": {"128k": 32, "560k": 72, "2m": 128},                 # base_channels
    "crnn": {"128k": 18, "560k": 38, "2m": 72},                 # base_channels (GRU: 2×)
    "vit": {"5m": 192},                                         # embed_dim
}
# Their tiny stand-ins in the smoke run (same order of sizes).
SMOKE_SIZES = {"cpr": {"128k": 8, "560k": 12, "2m": 16, "10m": 24},
               "cpm": {"128k": 8, "560k": 12, "2m": 16},
               "crnn": {"128k": 4, "560k": 6, "2m": 8},
               "vit": {"5m": 64}}
ARCHITECTURES = ("cpr", "cpm", "crnn", "vit", "passt")
METHODS = ("none", "ms", "fms", "dir", "dirfms")
ROLES = (tuple(f"{arch}{size}_{m}" for arch, sizes in SIZES.items() for size in sizes
               for m in METHODS)
         + tuple(f"passt_{m}" for m in METHODS) + ("student", "student_no_kd"))


def split_teacher(name: str) -> tuple:
  """"crnn560k_dirfms" → ("crnn", "560k", "dirfms"); "passt_fms" → ("passt", "", "fms")."""
  arch, size, method = tables.report002_name(name)
  if arch not in ARCHITECTURES:
    raise ValueError(f"report 002 teacher {name!r}: the architecture must be one of "
                     f"{sorted(ARCHITECTURES)}")
  return arch, size, method


def _student_recipe(config) -> None:
  """The d23 CP-Mobile student recipe (its KD settings aside)."""
  config.model = common.cp_mobile("dcase23")
  config.frontend = common.frontend("dcase23")
  config.augment.update(freq_mask=48, fmax_aug_range=1000)
  config.optimizer.update(name="adam", learning_rate=9e-4, weight_decay=1e-4)
  config.schedule.update(name="dcase23", warmup_epochs=14, rampdown_start=50,
                         rampdown_length=84, last_value=0.005)
  config.batch_size, config.num_epochs = 256, 150
  config.mix.update(mixstyle_p=0.4, mixstyle_alpha=0.3)
  config.waveform_augment.roll_samples = 4000


def _teacher(config, arch: str, size: str, method: str, dirs: str, quiet: bool) -> None:
  use_dir = method in ("dir", "dirfms")
  if arch == "passt":
    common.passt_teacher(config, roll=10000, dir_prob=0.6 if use_dir else 0.0, dirs=dirs,
                         mixstyle=(0.4, 0.4), quiet=quiet)
  elif arch in ("cpr", "crnn"):
    common.cp_resnet_teacher(config, dir_prob=0.4 if use_dir else 0.0, dirs=dirs, quiet=quiet)
    if arch == "cpr":
      config.model.base_channels = SIZES["cpr"][size]
    else:
      width = SIZES["crnn"][size]
      config.model = common.crnn(base_channels=width, rnn_hidden=2 * width)
  elif arch == "cpm":
    _student_recipe(config)
    config.model.base_channels = SIZES["cpm"][size]
    common.with_dir(config, dirs, 0.6 if use_dir else 0.0, quiet)
  else:   # vit
    common.passt_teacher(config, roll=10000, dir_prob=0.6 if use_dir else 0.0, dirs=dirs,
                         mixstyle=(0.4, 0.4), quiet=quiet)
    config.model = common.vit(embed_dim=SIZES["vit"][size])
    config.model_init.path = ""
    config.optimizer.update(name="adamw", learning_rate=5e-4, weight_decay=0.05)
    config.schedule.update(name="dcase23", warmup_epochs=15, rampdown_start=50,
                           rampdown_length=85, last_value=0.005)
    config.batch_size, config.num_epochs = 256, 150
  if method in ("none", "dir"):
    config.mix.mixstyle_p = 0.0
  config.mix.mixstyle_frequency_wise = method != "ms"


def get_config(arg=None):
  options = common.parse_arg(arg, ROLES)
  role, dirs, quiet = options["role"], options["dirs"], options["smoke"]
  config = common.base_config()
  config.seed = options["seed"]
  arch = size = None   # a teacher's
  if role == "student":
    config.stage = "distill,evaluate"
    _student_recipe(config)
    common.with_dir(config, dirs, 0.6, quiet)
    config.loss.terms.update(ce=0.02, kd=0.98)
    config.loss.kd.update(temperature=2.0, reduction="elementwise_mean")
    config.teachers.ensemble = common.cache_teacher(combine="logits")
    config.eval_every_epochs = 5
  elif role == "student_no_kd":
    config.stage = "train,evaluate"
    _student_recipe(config)
    common.with_dir(config, dirs, 0.6, quiet)
    config.eval_every_epochs = 5
  else:
    arch, size, method = split_teacher(role)
    _teacher(config, arch, size, method, dirs, quiet)
    config.stage = "train,evaluate,predict"
    config.evaluate.checkpoint = "best"
    config.predict.update(splits="train,test", checkpoint="best")
    config.eval_every_epochs = 1
  if options["smoke"]:
    if role.startswith("student"):
      common.smoke(config, "student")
    else:
      common.smoke(config, {"cpr": "cp_resnet", "cpm": "student"}.get(arch, arch))
      if arch == "cpm":   # the student's smoke settings evaluate once; a teacher four times
        config.eval_every_epochs = config.num_epochs // 4
      if arch in SMOKE_SIZES:
        width = SMOKE_SIZES[arch][size]
        if arch == "vit":
          config.model.embed_dim = width
        elif arch == "crnn":
          config.model.update(base_channels=width, rnn_hidden=2 * width)
        else:
          config.model.base_channels = width
  else:
    # The report trains on 1-s segments of the 10-s clips (complexity per 1-s clip) and we
    # select checkpoints on recording locations held out from fold1_train, never on the test.
    config.data.update(name="tau20", root=options["root"], train_split="fold1_train",
                       validation_split="holdout", test_split="fold1_evaluate",
                       segment_seconds=1.0)
    config.evaluate.split = "fold1_evaluate"
  return config


# The plan's teachers: CP-ResNet at every size and device-generalisation method, the other
# architectures at their sizes (DIRFMS, the report's best method), PaSST.
PLAN_TEACHERS = (tuple(f"cpr{size}_dirfms" for size in SIZES["cpr"])
                 + tuple(f"cpr128k_{m}" for m in METHODS if m != "dirfms")
                 + ("cpm128k_dirfms", "cpm2m_dirfms", "crnn128k_dirfms", "crnn2m_dirfms",
                    "vit5m_dirfms", "passt_dirfms"))
PLAN_ENSEMBLES = ("cpr128k_dirfms+passt_dirfms", "cpr128k_dirfms+crnn128k_dirfms+passt_dirfms")


def get_plan() -> plans.Plan:
  """The teachers of PLAN_TEACHERS, a student distilled from each and from the ensembles of
  PLAN_ENSEMBLES (averaged logits), and the student without KD (`students/no_kd`: labels only)
  that every KD gain is measured against."""
  runs = [plans.Run(f"teachers/{t}", t, ("train", "evaluate", "predict"),
                    passt=t.startswith("passt")) for t in PLAN_TEACHERS]
  for members in PLAN_TEACHERS + PLAN_ENSEMBLES:
    names = members.split("+")
    runs.append(plans.Run(f"students/{members}", "student", ("ensemble", "distill", "evaluate"),
                          {"teachers.ensemble.runs": plans.member_paths(*names)},
                          needs=tuple(f"teachers/{n}" for n in names)))
  runs.append(plans.Run("students/no_kd", "student_no_kd", ("train", "evaluate")))
  return plans.Plan("report002", "configs/report002_teachers.py", tuple(runs),
                    tables="report002")
