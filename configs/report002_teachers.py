"""Report 002: what makes a good teacher — architectures, sizes, device generalisation.

Roles (`configs/report002_teachers.py:<role>[,root=TAU20][,dirs=MicIRP][,seed=N][,smoke]`):
  cpr<size>_<method>  CP-ResNet teacher, size 128k (base 32, 127,684 params), 560k (base 64),
                      2m (base 128) or 10m (base 256); method none, ms (MixStyle), fms
                      (Freq-MixStyle), dir, dirfms (DIR + Freq-MixStyle)
  passt_<method>      PaSST-S teacher fine-tuned from the AudioSet checkpoint, same methods
  student             CP-Mobile (DCASE23, 126,952 params) distilled from the cache teacher
                      `teachers.ensemble`
                      (d23 KD: τ = 2, label weight 0.02, mean over B×C; averaged logits)
Dataset: TAU Urban Acoustic Scenes 2020 Mobile (the report's), fold1 train / evaluate, cut into
1-s segments; validation (checkpoint selection) on locations held out from fold1_train. The
report's best: a student of 65.81 % from a CP-ResNet + PaSST ensemble with DIRFMS.
Recipes: the d23 CP-ResNet and PaSST teacher and CP-Mobile student recipes (the report gives
no hyper-parameters); MixStyle (p, α) = (0.8, 0.4) for CP-ResNet, (0.4, 0.4) for PaSST.
"""
from configs import common
from jax_asc import plans

SIZES = {"128k": 32, "560k": 64, "2m": 128, "10m": 256}
METHODS = ("none", "ms", "fms", "dir", "dirfms")
ROLES = tuple(f"cpr{s}_{m}" for s in SIZES for m in METHODS) + tuple(
    f"passt_{m}" for m in METHODS) + ("student",)


def get_config(arg=None):
  options = common.parse_arg(arg, ROLES)
  role, dirs, quiet = options["role"], options["dirs"], options["smoke"]
  config = common.base_config()
  config.seed = options["seed"]
  if role == "student":
    config.stage = "distill,evaluate"
    config.model = common.cp_mobile("dcase23")
    config.frontend = common.frontend("dcase23")
    config.augment.update(freq_mask=48, fmax_aug_range=1000)
    config.optimizer.update(name="adam", learning_rate=9e-4, weight_decay=1e-4)
    config.schedule.update(name="dcase23", warmup_epochs=14, rampdown_start=50,
                           rampdown_length=84, last_value=0.005)
    config.batch_size, config.num_epochs = 256, 150
    config.mix.update(mixstyle_p=0.4, mixstyle_alpha=0.3)
    config.waveform_augment.roll_samples = 4000
    common.with_dir(config, dirs, 0.6, quiet)
    config.loss.terms.update(ce=0.02, kd=0.98)
    config.loss.kd.update(temperature=2.0, reduction="elementwise_mean")
    config.teachers.ensemble = common.cache_teacher(combine="logits")
    config.eval_every_epochs = 5
  else:
    family, method = role.split("_")
    use_dir = method in ("dir", "dirfms")
    if family == "passt":
      common.passt_teacher(config, roll=10000, dir_prob=0.6 if use_dir else 0.0, dirs=dirs,
                           mixstyle=(0.4, 0.4), quiet=quiet)
    else:
      common.cp_resnet_teacher(config, dir_prob=0.4 if use_dir else 0.0, dirs=dirs, quiet=quiet)
      config.model.base_channels = SIZES[family[3:]]
    if method in ("none", "dir"):
      config.mix.mixstyle_p = 0.0
    config.mix.mixstyle_frequency_wise = method != "ms"
    config.stage = "train,evaluate,predict"
    config.evaluate.checkpoint = "best"
    config.predict.update(splits="train,test", checkpoint="best")
    config.eval_every_epochs = 1
  if options["smoke"]:
    common.smoke(config, "student" if role == "student" else
                 "passt" if role.startswith("passt") else "cp_resnet")
    if role.startswith("cpr"):
      config.model.base_channels = {"128k": 8, "560k": 12, "2m": 16, "10m": 24}[
          role.split("_")[0][3:]]
  else:
    # The report trains on 1-s segments of the 10-s clips (complexity per 1-s clip) and we
    # select checkpoints on recording locations held out from fold1_train, never on the test.
    config.data.update(name="tau20", root=options["root"], train_split="fold1_train",
                       validation_split="holdout", test_split="fold1_evaluate",
                       segment_seconds=1.0)
    config.evaluate.split = "fold1_evaluate"
  return config


def get_plan() -> plans.Plan:
  """CP-ResNet teachers by size and by device-generalisation method, a PaSST teacher, a student
  from each, and one from the CP-ResNet + PaSST ensemble."""
  teachers = ([f"cpr{size}_dirfms" for size in ("128k", "560k", "2m", "10m")] +
              [f"cpr128k_{m}" for m in ("none", "ms", "fms", "dir")] + ["passt_dirfms"])
  runs = [plans.Run(f"teachers/{t}", t, ("train", "evaluate", "predict"),
                    passt=t.startswith("passt")) for t in teachers]
  for members in teachers + ["cpr128k_dirfms+passt_dirfms"]:
    names = members.split("+")
    runs.append(plans.Run(f"students/{members}", "student", ("ensemble", "distill", "evaluate"),
                          {"teachers.ensemble.runs": plans.member_paths(*names)},
                          needs=tuple(f"teachers/{n}" for n in names)))
  return plans.Plan("report002", "configs/report002_teachers.py", tuple(runs),
                    tables="report002")
