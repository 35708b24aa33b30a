"""The one task builder every training stage uses: frontend, augmentation, model and loss terms.

What a run trains is set by its config, not by code paths per recipe:

* `config.loss.weights` {ce, kd, dcsl, gdal, feature}: a weighted sum (`losses.combine`) of
  cross-entropy (mixup-aware), KD from the cached teacher ensemble (τ = `loss.temperature`),
  DCSL/GDAL on the embedding by device (report 000 eq. 2–4), and feature distillation from a
  frozen online teacher (`loss.feature.kind` "dfm" or "ssfm", report 001 eq. 4–5).
  Report 000 eq. 1 is {ce: 1 − λ, kd: λ}; report 001 eq. 3 is {kd: α, feature: β, ce: γ}.
* `config.mix`: Freq-MixStyle / MixStyle on the student's log-mels, mixup of inputs and targets.
* `config.teacher`: the ensemble members (cached logits) and the online feature teacher.

Training input order: waveform augmentation (DIR → roll → gain) → log-mel (+ fmin/fmax jitter,
masks) → MixStyle → mixup. An online teacher sees the same augmented waveform through its own
frontend, mixed with the same mixup draw; MixStyle and masks are student-only.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jax_asc import losses, models
from jax_asc.audio import augment, frontends
from jax_asc.data.dataset import Split
from jax_asc.losses import classification, dafa, distillation, features
from jax_asc.models import heads
from jax_asc.stages import common, teachers
from jax_asc.train import loop

FEATURE_KINDS = ("dfm", "ssfm")


def feature_pairs(spec: str) -> List[Tuple[str, str]]:
  """"s1:s1,s3:s2" → [("s1", "s1"), ("s3", "s2")]: (student stage, teacher stage) pairs."""
  pairs = []
  for item in [p.strip() for p in spec.split(",") if p.strip()]:
    if item.count(":") != 1:
      raise ValueError(f"loss.feature.stages item {item!r}: expected 'student_stage:teacher_stage'")
    pairs.append(tuple(s.strip() for s in item.split(":")))
  if not pairs:
    raise ValueError("loss.feature.stages is empty but loss.weights.feature > 0")
  return pairs


def _feature_shapes(model, n_mels: int, frames: int) -> Dict[str, tuple]:
  out = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x,
                                                        return_features=True)[0],
                       jax.ShapeDtypeStruct((1, n_mels, frames), jnp.float32))
  return {k: v.shape for k, v in out.items() if hasattr(v, "shape")}


def build_task(config, split: Split, workdir: Optional[str] = None, *,
               dtype=jnp.float32, need_teachers: bool = True,
               cache_split: Optional[Split] = None) -> loop.Task:
  """The task of this run's config for training split `split` (classes, devices, sample rate).

  `need_teachers=False` builds the same model without loading teacher targets (evaluation and
  prediction need no teacher). `cache_split`: the split the teacher cache was made for when
  `split` is a subset of it (device-specific fine-tuning); default `split`.
  """
  settings = frontends.settings_from_config(config.frontend)
  if settings.sample_rate != split.sample_rate:
    raise ValueError(f"frontend.sample_rate {settings.sample_rate} differs from the data's "
                     f"{split.sample_rate} Hz (data.sample_rate)")
  augment_cfg = frontends.augment_from_config(config.augment)
  wave_augment = common.waveform_augmentation(config, split) if need_teachers else None
  weights = {k: float(v) for k, v in config.loss.weights.items()}
  mix = config.mix
  n_classes, n_devices = len(split.classes), len(split.devices)
  student = models.build(config.model, n_classes=n_classes, dtype=dtype)
  frames = settings.num_frames(split.num_samples)

  use_kd = weights.get("kd", 0) > 0
  use_dafa = weights.get("dcsl", 0) > 0 or weights.get("gdal", 0) > 0
  use_feature = weights.get("feature", 0) > 0
  kind = config.loss.feature.kind
  if use_feature and kind not in FEATURE_KINDS:
    raise ValueError(f"loss.feature.kind must be one of {FEATURE_KINDS}, got {kind!r}")

  frozen: Dict = {}
  teacher_model = teacher_settings = None
  pairs: List[Tuple[str, str]] = []
  model = student
  if use_feature:
    if not config.teacher.online:
      raise ValueError("loss.weights.feature > 0 needs teacher.online (a teacher run workdir)")
    pairs = feature_pairs(config.loss.feature.stages)
    teacher_config, teacher_variables = teachers.load_frozen_teacher(
        config.teacher.online, config.teacher.online_checkpoint) if need_teachers else (
            teachers.load_run_config(config.teacher.online), None)
    teacher_model = models.build(teacher_config.model, n_classes=n_classes)
    teacher_settings = frontends.settings_from_config(teacher_config.frontend)
    t_shapes = _feature_shapes(teacher_model, teacher_settings.n_mels,
                               teacher_settings.num_frames(split.num_samples))
    s_shapes = _feature_shapes(student, settings.n_mels, frames)
    for s_stage, t_stage in pairs:
      for stage, shapes, who in ((s_stage, s_shapes, "student"), (t_stage, t_shapes, "teacher")):
        if stage not in shapes or len(shapes[stage]) != 4:
          raise ValueError(f"loss.feature.stages: {who} has no feature map {stage!r}; maps: "
                           f"{sorted(k for k, v in shapes.items() if len(v) == 4)}")
    if kind == "dfm":
      adapters = tuple((s, t_shapes[t][-1], s_shapes[s][-1]) for s, t in pairs)
      model = heads.WithFeatureAdapters(student, adapters)
    if teacher_variables is not None:
      frozen["teacher"] = teacher_variables
  if use_kd and need_teachers:
    if workdir is None:
      raise ValueError("KD from cached teacher logits needs the run's workdir")
    cache_split = split if cache_split is None else cache_split
    member_logits = teachers.load_ensemble(config, workdir, cache_split)  # (K, N, C)
    if member_logits.shape[-1] != n_classes:
      raise teachers.CacheMismatchError(f"teacher logits have {member_logits.shape[-1]} classes, "
                                        f"the data {n_classes}")
    frozen["teacher_logits"] = jnp.asarray(
        teachers.index_table(cache_split, member_logits.transpose(1, 0, 2)))  # (max idx+1, K, C)

  temperature = float(config.loss.temperature)
  return_features = use_dafa or use_feature

  def make_inputs(key, batch):
    if key is None:
      return frontends.log_mel(batch["waveform"], settings)
    k_wave, k_front, k_style, k_mixup = jax.random.split(key, 4)
    waveform = wave_augment(k_wave, batch)
    x = frontends.log_mel(waveform, settings, key=k_front, aug=augment_cfg)
    x = augment.mixstyle(k_style, x, mix.mixstyle_p, mix.mixstyle_alpha,
                         frequency_wise=mix.mixstyle_frequency_wise)
    extras = {}
    perm = lam = None
    if mix.mixup_alpha > 0:
      perm, lam = augment.mixup_draw(k_mixup, x.shape[0], mix.mixup_alpha)
      x = augment.mix(x, perm, lam)
      extras.update(mix_perm=perm, mix_lam=lam)
    if teacher_model is not None:
      xt = frontends.log_mel(waveform, teacher_settings)
      extras["teacher_input"] = xt if perm is None else augment.mix(xt, perm, lam)
    return loop.Prepared(x, extras)

  def teacher(frozen_vars, batch):
    out = {}
    if "teacher_logits" in frozen_vars:
      members = frozen_vars["teacher_logits"][batch["index"]]               # (B, K, C)
      log_p = distillation.ensemble_log_probs(members.transpose(1, 0, 2), temperature,
                                              config.teacher.ensemble)
      if "mix_perm" in batch:   # targets mixed like the inputs
        log_p = jnp.log(jnp.maximum(augment.mix(jnp.exp(log_p), batch["mix_perm"],
                                                batch["mix_lam"]), 1e-30))
      out["log_probs"] = log_p
    if "teacher" in frozen_vars:
      feats = teacher_model.apply(frozen_vars["teacher"], batch["teacher_input"], train=False,
                                  return_features=True)
      out["features"] = {s: feats[t] for s, t in pairs}
    return out

  def loss(output, batch, key, loss_state):
    del key
    logits = output["logits"] if isinstance(output, dict) else output
    labels = batch["label"]
    targets = labels
    if "mix_perm" in batch:
      one_hot = jax.nn.one_hot(labels, n_classes, dtype=jnp.float32)
      targets = augment.mix(one_hot, batch["mix_perm"], batch["mix_lam"])
    terms = {"ce": classification.cross_entropy(logits, targets,
                                                label_smoothing=config.loss.label_smoothing)}
    if use_kd:
      terms["kd"] = distillation.kd_from_log_probs(logits, batch["teacher"]["log_probs"],
                                                   temperature,
                                                   reduction=config.loss.kd_reduction)
    if use_dafa:
      terms["dcsl"] = dafa.dcsl_loss(output["embedding"], batch["device"], n_devices)
      terms["gdal"] = dafa.gdal_loss(output["embedding"], batch["device"], n_devices)
    if use_feature:
      parts = []
      for s_stage, _ in pairs:
        if kind == "dfm":
          parts.append(features.dfm_loss(output[s_stage], output["adapted"][s_stage]))
        else:
          parts.append(features.ssfm_loss(output[s_stage],
                                          batch["teacher"]["features"][s_stage]))
      terms["feature"] = sum(parts)
    value, metrics = losses.combine(terms, {k: v for k, v in weights.items() if v})
    metrics["accuracy"] = (logits.argmax(-1) == labels).mean()
    return value, metrics, loss_state

  has_teacher = bool(frozen)
  train_kwargs = None
  if kind == "dfm" and use_feature:
    train_kwargs = lambda batch: {"teacher_features": batch["teacher"]["features"]}
  return loop.Task(model=model, make_inputs=make_inputs, loss=loss, features=return_features,
                   teacher=teacher if has_teacher else None,
                   frozen_variables=frozen if has_teacher else None, train_kwargs=train_kwargs)


def eval_task(config, split: Split, dtype=jnp.float32) -> loop.Task:
  """The run's model and evaluation frontend only (no teachers, no augmentation)."""
  return build_task(config, split, dtype=dtype, need_teachers=False)


def pretrained_initializer(config):
  """`initialize` for `loop.fit` loading `config.model_init` (a PaSST .pt/.npz or another run's
  checkpoint) into matching parameters; the head is kept fresh when its shape differs."""
  from jax_asc.models import convert
  source = config.model_init.path
  if not source:
    return None

  def initialize(state):
    if config.model_init.kind == "passt_torch":
      loaded = convert.passt_params(convert.load_torch_state_dict(source))
      batch_stats = None
    elif config.model_init.kind == "run":
      variables, _ = teachers.load_frozen_teacher(source, config.model_init.checkpoint)
      loaded, batch_stats = variables["params"], variables["batch_stats"]
    else:
      raise ValueError(f"model_init.kind must be 'passt_torch' or 'run', got "
                       f"{config.model_init.kind!r}")
    params, skipped = _merge(state.params, loaded)
    if skipped:
      print(f"model_init: kept fresh (shape differs or absent): {skipped}", flush=True)
    new = state.replace(params=params, opt_state=state.opt_state)
    if batch_stats:
      new = new.replace(batch_stats=_merge(state.batch_stats, batch_stats)[0])
    if new.ema_params is not None:
      new = new.replace(ema_params=jax.tree.map(jnp.copy, params))
    return new
  return initialize


def _merge(target, source, path=""):
  """target's tree with leaves replaced by source's where names and shapes agree."""
  skipped = []
  if isinstance(target, dict):
    out = {}
    for k, v in target.items():
      if isinstance(source, dict) and k in source:
        out[k], sub = _merge(v, source[k], f"{path}/{k}")
        skipped += sub
      else:
        out[k] = v
        skipped.append(f"{path}/{k}")
    return out, skipped
  if np.shape(source) == np.shape(target):
    return jnp.asarray(source, target.dtype), skipped
  return target, [path]
