"""The classification task every training stage of reports 000-002 uses: frontend,
augmentation, model, teachers and loss terms.

What a run trains is set by its config, not by code paths per recipe:

* `config.loss.terms` {name: weight}: any term of the registry (jax_asc/losses/registry.py) whose
  inputs this task provides — ce (mixup-aware), kd (from teacher "ensemble": the cached logits
  of `teacher.members`, at `loss.kd.temperature`), dcsl / gdal on the embedding by device
  (report 000 eq. 2-4), dfm / ssfm from teacher "online" (a frozen run, `teacher.online`;
  report 001 eq. 4-5), supcon / soft_supcon on the embedding, cka / cosine against the online
  teacher's embedding; any of kd / cka / cosine with `loss.<term>.teacher = "ema"` reads the
  EMA of the student (`config.ema_decay`) as it was before the step (a mean teacher). Report 000 eq. 1 is {ce: 1 − λ, kd: λ}; report 001 eq. 3 is
  {kd: α, ssfm or dfm: β, ce: γ}.
* `config.mix`: Freq-MixStyle / MixStyle on the student's log-mels, mixup of inputs and targets.
* `config.teacher`: the ensemble members (cached logits) and the online teacher.

Training input order: waveform augmentation (DIR → roll → gain) → log-mel (+ fmin/fmax jitter,
masks) → MixStyle → mixup. An online teacher sees the same augmented waveform through its own
frontend, mixed with the same mixup draw; MixStyle and masks are student-only.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jax_asc import models
from jax_asc.audio import augment, frontends
from jax_asc.data.dataset import Split
from jax_asc.losses import distillation, registry
from jax_asc.models import heads
from jax_asc.stages import common, teachers
from jax_asc.train import loop

FEATURE_TERMS = ("dfm", "ssfm")
# What this task gives the loss terms (registry input names) besides the model's outputs.
BATCH_INPUTS = ("logits", "targets", "target_probs", "labels", "device", "num_devices", "index")


def feature_pairs(spec: str, term: str = "ssfm") -> List[Tuple[str, str]]:
  """"s1:s1,s3:s2" → [("s1", "s1"), ("s3", "s2")]: (student stage, teacher stage) pairs."""
  return list(registry.pairs(spec, term))


def loss_settings(config) -> Dict[str, dict]:
  """{term: settings} from `config.loss.<term>` (registered defaults where a config has none)."""
  settings = registry.default_settings()
  for name in settings:
    if name in config.loss:
      settings[name].update(config.loss[name].to_dict())
  return settings


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
  settings_fe = frontends.settings_from_config(config.frontend)
  if settings_fe.sample_rate != split.sample_rate:
    raise ValueError(f"frontend.sample_rate {settings_fe.sample_rate} differs from the data's "
                     f"{split.sample_rate} Hz (data.sample_rate)")
  augment_cfg = frontends.augment_from_config(config.augment)
  wave_augment = common.waveform_augmentation(config, split) if need_teachers else None
  weights = registry.active(config.loss.terms)
  settings = loss_settings(config)
  mix = config.mix
  n_classes, n_devices = len(split.classes), len(split.devices)
  student = models.build(config.model, n_classes=n_classes, dtype=dtype)
  frames = settings_fe.num_frames(split.num_samples)

  use_kd = any(registry.TERMS[t].teacher_name(settings[t]) == "ensemble" for t in weights)
  feature_terms = [t for t in FEATURE_TERMS if t in weights]
  online_terms = [t for t in weights if registry.TERMS[t].teacher_name(settings[t]) == "online"]
  ema_terms = [t for t in weights if registry.TERMS[t].teacher_name(settings[t]) == "ema"]
  teacher_outputs: Dict[str, Tuple[str, ...]] = {}
  if ema_terms:
    if not config.ema_decay > 0:
      raise ValueError(f"loss terms {ema_terms} read teacher 'ema' (the EMA of the student): "
                       f"set config.ema_decay in (0, 1), got {config.ema_decay}")
    teacher_outputs["ema"] = ("log_probs", "logits", "embedding")
  if use_kd or not need_teachers:
    teacher_outputs["ensemble"] = ("log_probs",)
  if online_terms and (config.teacher.online or not need_teachers):
    teacher_outputs["online"] = ("features", "embedding")
  provided = set(BATCH_INPUTS) | {"embedding", "features"} | (
      {"adapted"} if "dfm" in weights else set())
  registry.check_inputs(weights, settings, provided, teacher_outputs, "classification")

  frozen: Dict = {}
  teacher_model = teacher_settings = None
  pairs: List[Tuple[str, str]] = []      # (student stage, teacher stage) of the feature terms
  for term in feature_terms:
    pairs += [p for p in feature_pairs(settings[term]["stages"], term) if p not in pairs]
  model = student
  if online_terms and need_teachers:
    if not config.teacher.online:
      raise ValueError(f"loss terms {online_terms} read teacher 'online': set teacher.online "
                       "(a teacher run workdir)")
    teacher_config, teacher_variables = teachers.load_frozen_teacher(
        config.teacher.online, config.teacher.online_checkpoint)
    teacher_model = models.build(teacher_config.model, n_classes=n_classes)
    teacher_settings = frontends.settings_from_config(teacher_config.frontend)
    t_shapes = _feature_shapes(teacher_model, teacher_settings.n_mels,
                               teacher_settings.num_frames(split.num_samples))
    s_shapes = _feature_shapes(student, settings_fe.n_mels, frames)
    for s_stage, t_stage in pairs:
      for stage, shapes, who in ((s_stage, s_shapes, "student"), (t_stage, t_shapes, "teacher")):
        if stage not in shapes or len(shapes[stage]) != 4:
          raise ValueError(f"loss.{'/'.join(feature_terms)}.stages: {who} has no feature map "
                           f"{stage!r}; maps: "
                           f"{sorted(k for k, v in shapes.items() if len(v) == 4)}")
    frozen["teacher"] = teacher_variables
  if "dfm" in weights:
    # The adapters' shapes: (student stage, teacher channels, student channels). In training
    # they come from the teacher; evaluation needs no teacher (the adapters are not used).
    dfm_pairs = feature_pairs(settings["dfm"]["stages"], "dfm")
    if teacher_model is not None:
      adapters = tuple((s, t_shapes[t][-1], s_shapes[s][-1]) for s, t in dfm_pairs)
    else:
      adapters = tuple((s, 1, 1) for s, _ in dfm_pairs)
    model = heads.WithFeatureAdapters(student, adapters)
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

  temperature = float(settings["kd"]["temperature"])
  use_ema_teacher = bool(ema_terms) and need_teachers
  return_features = any(name in registry.TERMS[t].reads for t in weights
                        for name in ("embedding", "features", "adapted"))

  def make_inputs(key, batch):
    if key is None:
      return frontends.log_mel(batch["waveform"], settings_fe)
    k_wave, k_front, k_style, k_mixup = jax.random.split(key, 4)
    waveform = wave_augment(k_wave, batch)
    x = frontends.log_mel(waveform, settings_fe, key=k_front, aug=augment_cfg)
    x = augment.mixstyle(k_style, x, mix.mixstyle_p, mix.mixstyle_alpha,
                         frequency_wise=mix.mixstyle_frequency_wise)
    extras = {}
    perm = lam = None
    if mix.mixup_alpha > 0:
      perm, lam = augment.mixup_draw(k_mixup, x.shape[0], mix.mixup_alpha)
      x = augment.mix(x, perm, lam)
      extras.update(mix_perm=perm, mix_lam=lam)
    if use_ema_teacher:   # the mean teacher sees the student's augmented input
      extras["ema_input"] = x
    if teacher_model is not None:
      xt = frontends.log_mel(waveform, teacher_settings)
      extras["teacher_input"] = xt if perm is None else augment.mix(xt, perm, lam)
    return loop.Prepared(x, extras)

  def teacher(frozen_vars, batch):
    """{teacher name: outputs}: "ensemble" (cached KD targets), "online" (the frozen run),
    "ema" (the student's EMA before this step, on the same augmented input)."""
    out = {}
    if use_ema_teacher:
      ema_out = model.apply(frozen_vars["ema"], batch["ema_input"], train=False,
                            **({"return_features": True} if return_features else {}))
      logits = ema_out["logits"] if isinstance(ema_out, dict) else ema_out
      out["ema"] = {"logits": logits, "log_probs": jax.nn.log_softmax(
          logits.astype(jnp.float32) / temperature, axis=-1),
                    "embedding": ema_out.get("embedding") if isinstance(ema_out, dict) else None}
    if "teacher_logits" in frozen_vars:
      members = frozen_vars["teacher_logits"][batch["index"]]               # (B, K, C)
      log_p = distillation.ensemble_log_probs(members.transpose(1, 0, 2), temperature,
                                              config.teacher.ensemble)
      if "mix_perm" in batch:   # targets mixed like the inputs
        log_p = jnp.log(jnp.maximum(augment.mix(jnp.exp(log_p), batch["mix_perm"],
                                                batch["mix_lam"]), 1e-30))
      out["ensemble"] = {"log_probs": log_p}
    if "teacher" in frozen_vars:
      feats = teacher_model.apply(frozen_vars["teacher"], batch["teacher_input"], train=False,
                                  return_features=True)
      out["online"] = {"features": {s: feats[t] for s, t in pairs},
                       "embedding": feats.get("embedding")}
    return out

  def loss(output, batch, key, loss_state):
    logits = output["logits"] if isinstance(output, dict) else output
    labels = batch["label"]
    target_probs = jax.nn.one_hot(labels, n_classes, dtype=jnp.float32)
    targets = labels
    if "mix_perm" in batch:
      target_probs = augment.mix(target_probs, batch["mix_perm"], batch["mix_lam"])
      targets = target_probs
    inputs = {"logits": logits, "targets": targets, "target_probs": target_probs,
              "labels": labels, "device": batch["device"], "num_devices": n_devices,
              "index": batch["index"], "teachers": batch.get("teacher", {}), "crd_key": key}
    if isinstance(output, dict):
      inputs.update(embedding=output.get("embedding"), adapted=output.get("adapted"),
                    features=output)
    value, metrics, states = registry.total(weights, settings, inputs, loss_state)
    metrics["accuracy"] = (logits.argmax(-1) == labels).mean()
    return value, metrics, (states or loss_state)

  has_teacher = bool(frozen) or use_ema_teacher
  train_kwargs = None
  if "dfm" in weights and teacher_model is not None:
    train_kwargs = lambda batch: {"teacher_features": batch["teacher"]["online"]["features"]}
  return loop.Task(model=model, make_inputs=make_inputs, loss=loss, features=return_features,
                   teacher=teacher if has_teacher else None,
                   frozen_variables=frozen if has_teacher else None, train_kwargs=train_kwargs,
                   ema_teacher=use_ema_teacher)


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
      _, variables = teachers.load_frozen_teacher(source, config.model_init.checkpoint)
      loaded = variables["params"]
      batch_stats = None if config.model_init.params_only else variables["batch_stats"]
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
