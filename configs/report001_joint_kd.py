"""Report 001: joint output + feature distillation from 2 PaSST + 2 CP-ResNet teachers.

Roles (`configs/report001_joint_kd.py:<role>[,root=TAU][,dirs=MicIRP][,seed=N][,smoke]`), with
the teachers' frontends and augmentations of the report's §2 and table 1:
  passt1     PaSST, n_fft 1024 / win 800 / hop 320, 128 mels; roll 10,000; DIR 0.6; FMS (0.4, 0.4)
  passt2     PaSST, n_fft 4096 / win 800 / hop 320, 128 mels; roll 4,000; DIR 0.4; FMS (0.8, 0.4)
  cpresnet1  CP-ResNet, 4096 / 3072 / 750, 256 mels; roll 4,000; DIR 0.4; FMS (0.8, 0.4)
  cpresnet2  CP-ResNet, 4096 / 3072 / 500, 256 mels; roll 4,000; DIR 0.6; FMS (0.4, 0.3)
  student_ssfm  CP-Mobile (DCASE25, 61,148 params) with KD from the mean softmax of the four
                souped teachers + SSFM at stages 1–3 from cpresnet2 (submission S1)
  student_dfm   the same with DFM at stage 3 (submission S2)
Teachers: model soup of the top 5 checkpoints (§3.1). Student: eq. 3 with T = 2, α = 1,
β = 0.1, γ = 0.05; roll 10,000, DIR 0.6, no FMS; evaluated in float32 and float16.
Not in the report (taken from the CPJKU recipes): the teachers' optimisers and schedules (d23),
the student's (DCASE25 baseline: AdamW 0.005, 150 epochs, batch 256), and which CP-ResNet gives
the features (cpresnet2: the student's hop).
"""
from configs import common
from jax_asc import plans

ROLES = ("passt1", "passt2", "cpresnet1", "cpresnet2", "student_ssfm", "student_dfm")


def get_config(arg=None):
  options = common.parse_arg(arg, ROLES)
  role, dirs, quiet = options["role"], options["dirs"], options["smoke"]
  config = common.base_config()
  config.seed = options["seed"]
  if role.startswith("student"):
    config.stage = "distill,evaluate"
    config.model = common.cp_mobile("dcase25")
    config.frontend = common.frontend("dcase25")
    config.waveform_augment.roll_samples = 10000
    common.with_dir(config, dirs, 0.6, quiet)
    config.loss.terms.update(kd=1.0, ce=0.05)
    config.loss.kd.update(temperature=2.0, reduction="batchmean")
    config.teachers.ensemble = common.cache_teacher(combine="probabilities")
    config.teachers.online = common.online_teacher(checkpoint="soup")
    if role == "student_ssfm":
      config.loss.terms.ssfm = 0.1
      config.loss.ssfm.stages = "s1:s1,s2:s2,s3:s3"
    else:
      config.loss.terms.dfm = 0.1
      config.loss.dfm.stages = "s3:s3"
    config.evaluate.update(checkpoint="latest", fp16=True, int8=True)
    config.eval_every_epochs = 5
  else:
    config.stage = "train,soup,evaluate,predict"
    if role == "passt1":
      common.passt_teacher(config, roll=10000, dir_prob=0.6, dirs=dirs, mixstyle=(0.4, 0.4),
                           quiet=quiet)
    elif role == "passt2":
      common.passt_teacher(config, n_fft=4096, roll=4000, dir_prob=0.4, dirs=dirs,
                           mixstyle=(0.8, 0.4), quiet=quiet)
    elif role == "cpresnet1":
      common.cp_resnet_teacher(config, hop_length=750, roll=4000, dir_prob=0.4, dirs=dirs,
                               mixstyle=(0.8, 0.4), quiet=quiet)
    else:
      common.cp_resnet_teacher(config, hop_length=500, roll=4000, dir_prob=0.6, dirs=dirs,
                               mixstyle=(0.4, 0.3), quiet=quiet)
    config.soup.top_k = 5
    config.evaluate.checkpoint = "soup"
    config.predict.update(splits="train,test", checkpoint="soup")
    config.eval_every_epochs = 1
  if options["smoke"]:
    family = ("student" if role.startswith("student") else
              "passt" if role.startswith("passt") else "cp_resnet")
    common.smoke(config, family)
    if role == "passt2":
      config.frontend.n_fft = 2048
    elif role == "cpresnet1":
      config.frontend.hop_length = 1000
  else:
    common.tau_dcase25(config, options["root"])
  return config


def get_plan() -> plans.Plan:
  """Four teachers (each souped), then the SSFM and DFM students (table 2)."""
  teachers = ("passt1", "passt2", "cpresnet1", "cpresnet2")
  runs = [plans.Run(f"teachers/{t}", t, ("train", "soup", "evaluate", "predict"),
                    passt=t.startswith("passt")) for t in teachers]
  for student in ("student_ssfm", "student_dfm"):
    runs.append(plans.Run(f"students/{student}", student, ("ensemble", "distill", "evaluate"),
                          {"teachers.ensemble.runs": plans.member_paths(*teachers),
                           "teachers.online.run": "{workdir}/teachers/cpresnet2"},
                          needs=tuple(f"teachers/{t}" for t in teachers)))
  return plans.Plan("report001", "configs/report001_joint_kd.py", tuple(runs),
                    tables="report001")
