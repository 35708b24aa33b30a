"""Single-label classification of clips (acoustic scenes, reports 000-003): frontend,
augmentation, model, named teachers and loss terms, outputs and evaluators.

What a run trains is set by its config, not by code paths per recipe:

* `config.loss.terms` {name: weight}: any term of the registry (jax_asc/losses/registry.py) whose
  inputs this task provides (`BATCH_INPUTS`, the model's `embedding` / `features` / DFM
  `adapted`, and each named teacher's outputs, `TEACHER_OUTPUTS`): ce (mixup-aware), kd (from a
  teacher's `log_probs` at `loss.kd.temperature`), dcsl / gdal on the embedding by recording
  device (report 000 eq. 2-4), dfm / ssfm from an online teacher's feature maps (report 001
  eq. 4-5), supcon / soft_supcon on the embedding, cka / cosine against a teacher's embedding.
  Each teacher term reads the teacher named by `config.loss.<term>.teacher`. Report 000 eq. 1 is
  {ce: 1 − λ, kd: λ}; report 001 eq. 3 is {kd: α, ssfm or dfm: β, ce: γ}.
* `config.teachers` {name: {source: cache | online | ema, …}} (jax_asc/teachers): a cache
  teacher's members arrive as the split column `teacher/<name>/<output>` (joined by the stage);
  an online teacher hears the student's augmented waveform through its own sample rate and
  frontend, mixed with the same mixup draw (MixStyle and masks are student-only); the EMA
  teacher is the student's EMA on the student's own augmented input.
* `config.mix`: Freq-MixStyle / MixStyle on the student's log-mels, mixup of inputs and targets.

Training input order: waveform augmentation (DIR → roll → gain) → log-mel (+ fmin/fmax jitter,
masks) → MixStyle → mixup. The waveform column is (B, C, S); C > 1 is averaged to mono.
Outputs: `logits` (B, C) and, when asked for (`outputs`), `embedding` (B, D), the model's
`embedding_prenorm` (before its head norm, report 003's few-shot embedding) and `projected`.

A term that reads `projected` (crd; supcon / soft_supcon with `on = "projected"`) from a model
without a projection head wraps it in one (`heads.WithProjection`, CRD's student head of report
003 §3, set by `loss.crd.student_head`/`student_hidden`): its parameters are in every checkpoint
of the run. With `mix.clean_view` (report 003 §2, phase 1) each step runs the model on the clean
and the augmented clips together (2B): ce reads the clean half, every other term the augmented.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jax_asc import models, teachers as teachers_lib
from jax_asc.audio import augment, frontends
from jax_asc.eval import evaluators
from jax_asc.losses import distillation, registry
from jax_asc.models import heads
from jax_asc.teachers import cache as cache_lib
from jax_asc.teachers import online as online_lib
from jax_asc.train import step as step_lib

FEATURE_TERMS = ("dfm", "ssfm")
# What this task gives the loss terms (registry input names) besides the model's outputs.
BATCH_INPUTS = ("logits", "targets", "target_probs", "labels", "device", "num_devices", "index",
                "crd_key")
# What each kind of teacher gives (`ctx.teachers[name]`).
TEACHER_OUTPUTS = {"cache": ("log_probs", "logits"),
                   "online": ("features", "embedding", "projected", "logits", "log_probs"),
                   "ema": ("log_probs", "logits", "embedding")}
OUTPUTS = ("logits", "embedding", "embedding_prenorm", "projected")
# Terms that read a projection head's output; a model without one gets CRD's student head.
PROJECTED_TERMS = ("crd", "crd_softmax", "supcon", "soft_supcon")
RNG_STREAMS = ("dropout", "patchout")


def loss_settings(config) -> Dict[str, dict]:
  """{term: settings} from `config.loss.<term>` (registered defaults where a config has none)."""
  return registry.settings_of(config.loss)


def teachers_read(config, settings=None) -> Dict[str, List[str]]:
  """{teacher name: the weighted loss terms reading it} (`config.loss.<term>.teacher`)."""
  settings = loss_settings(config) if settings is None else settings
  return registry.teachers_read(config.loss.terms, settings)


def mono(waveform: jax.Array) -> jax.Array:
  """(B, C, S) → (B, S): the one channel, or the mean of several."""
  return waveform[:, 0] if waveform.shape[1] == 1 else waveform.mean(axis=1)


def waveform_augmentation(config, devices: Sequence[str], impulse_responses=None):
  """(key, waveform (B, S), recording_device (B,)) → waveforms after DIR → time roll → gain,
  as `config.waveform_augment` says (DIR draws from `impulse_responses` (M, L))."""
  cfg = config.waveform_augment
  irs = eligible_ids = None
  if cfg.dir_prob > 0:
    if impulse_responses is None:
      raise ValueError("waveform_augment.dir_prob > 0 needs waveform_augment.dir_folder")
    irs = jnp.asarray(impulse_responses)
    unknown = [d for d in cfg.dir_devices if d not in devices]
    if unknown:
      raise ValueError(f"waveform_augment.dir_devices {unknown} are not recording devices of "
                       f"this dataset ({list(devices)})")
    eligible_ids = jnp.asarray([list(devices).index(d) for d in cfg.dir_devices], jnp.int32)

  def apply(key, x, recording_device):
    k_dir, k_roll, k_gain = jax.random.split(key, 3)
    if irs is not None:
      eligible = (None if eligible_ids.size == 0 else
                  jnp.any(recording_device[:, None] == eligible_ids[None, :], axis=1))
      x = augment.device_impulse_response(k_dir, x, irs, cfg.dir_prob, eligible)
    x = augment.time_roll(k_roll, x, cfg.roll_samples)
    return augment.random_gain(k_gain, x, cfg.gain_db)
  return apply


def _feature_maps(shapes: Dict[str, Any]) -> Dict[str, tuple]:
  return {k: v.shape for k, v in shapes.items() if hasattr(v, "shape") and len(v.shape) == 4}


def _student_shapes(model, n_mels: int, frames: int) -> Dict[str, Any]:
  return jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x,
                                                         return_features=True)[0],
                        jax.ShapeDtypeStruct((1, n_mels, frames), jnp.float32))


def build(config, split, *, dtype=jnp.float32, need_teachers: bool = True,
          outputs: Sequence[str] = ("logits",), impulse_responses=None) -> step_lib.Task:
  """The classification task of this run's config for split `split` (classes, recording
  devices, sample rate, clip length; in training also the joined cache-teacher columns).

  need_teachers=False builds the same model for evaluation and prediction: no teacher is loaded
  (a student's checkpoint is usable without its teachers). outputs: the named outputs `predict`
  should give (`OUTPUTS`). impulse_responses: (M, L) DIR bank when `waveform_augment.dir_prob`
  > 0 (training only).
  """
  unknown = sorted(set(outputs) - set(OUTPUTS))
  if unknown:
    raise ValueError(f"the classification task has no output(s) {unknown}; outputs: "
                     f"{list(OUTPUTS)}")
  settings_fe = frontends.settings_from_config(config.frontend)
  if settings_fe.sample_rate != split.sample_rate:
    raise ValueError(f"frontend.sample_rate {settings_fe.sample_rate} differs from the data's "
                     f"{split.sample_rate} Hz (data.sample_rate)")
  augment_cfg = frontends.augment_from_config(config.augment)
  wave_augment = (waveform_augmentation(config, split.devices, impulse_responses)
                  if need_teachers else None)
  weights = registry.active(config.loss.terms)
  settings = loss_settings(config)
  mix = config.mix
  n_classes, n_devices = len(split.classes), len(split.devices)
  student = models.build(config.model, n_classes=n_classes, dtype=dtype)
  frames = settings_fe.num_frames(split.num_samples)

  specs = teachers_lib.specs(config)
  read_by = teachers_read(config, settings)    # teacher name → the weighted terms reading it
  for name, terms in read_by.items():
    if name not in specs:
      raise ValueError(f"loss term {terms[0]!r} reads teacher {name!r} (config.loss.{terms[0]}"
                       f".teacher); this run's teachers (config.teachers): "
                       f"{sorted(specs) or 'none'}")
  for term in FEATURE_TERMS:
    if term in weights and specs[settings[term]["teacher"]].source != "online":
      raise ValueError(f"loss term {term!r} needs an online teacher's feature maps; "
                       f"config.loss.{term}.teacher = {settings[term]['teacher']!r} is a "
                       f"{specs[settings[term]['teacher']].source} teacher")
  teacher_outputs = {name: (TEACHER_OUTPUTS["cache"] if spec.output == "logits"
                            else (spec.output,)) if spec.source == "cache"
                     else TEACHER_OUTPUTS[spec.source] for name, spec in specs.items()}
  provided = set(BATCH_INPUTS) | {"embedding", "features"} | (
      {"adapted"} if "dfm" in weights else set())
  if any(name in weights and "projected" in registry.TERMS[name].inputs(settings[name])
         for name in PROJECTED_TERMS):
    if "projected" not in _student_shapes(student, settings_fe.n_mels, frames):
      crd = settings["crd"]
      if crd["student_head"] not in ("mlp", "linear"):
        raise ValueError("loss.crd.student_head must be 'mlp' or 'linear', got "
                         f"{crd['student_head']!r}")
      student = heads.WithProjection(
          student, features=int(crd["feat_dim"]),
          hidden=int(crd["student_hidden"]) if crd["student_head"] == "mlp" else None)
    provided = provided | {"projected"}
  if mix.clean_view and read_by:
    raise ValueError("mix.clean_view (report 003's phase 1) trains heads on clean and augmented "
                     f"views without teachers; this run's loss reads {sorted(read_by)}")
  registry.check_inputs(weights, settings, provided, teacher_outputs, "classification")
  missing = [c for c in ("waveform", "label", "recording_device", "index") if c not in split]
  if missing:
    raise ValueError(f"the classification task reads the column(s) {missing}, which split "
                     f"{split.name!r} of {split.dataset or 'the dataset'} lacks; columns: "
                     f"{sorted(split.columns)}")

  # (student stage, teacher stage) pairs each online teacher must give, from its feature terms.
  pairs: Dict[str, List[Tuple[str, str]]] = {}
  for term in FEATURE_TERMS:
    if term in weights:
      name = settings[term]["teacher"]
      for pair in registry.pairs(settings[term]["stages"], term):
        known = dict(pairs.get(name, []))
        if pair[0] in known and known[pair[0]] != pair[1]:
          raise ValueError(f"loss.{term}.stages maps student stage {pair[0]!r} of teacher "
                           f"{name!r} to {pair[1]!r}, another term to {known[pair[0]]!r}")
        if pair not in pairs.setdefault(name, []):
          pairs[name].append(pair)

  used = {name: specs[name] for name in read_by}
  temperature = float(settings["kd"]["temperature"])
  needs_maps = bool(pairs) or "dfm" in weights
  s_maps = (_feature_maps(_student_shapes(student, settings_fe.n_mels, frames)) if needs_maps
            else {})
  online: Dict[str, online_lib.OnlineTeacher] = {}
  teacher_maps: Dict[str, Dict[str, tuple]] = {}    # online teacher → its feature maps' shapes
  frozen: Dict[str, Any] = {}
  cache_columns: Dict[str, str] = {}
  ema_decay = None
  for name, spec in used.items():
    if spec.source == "ema":
      ema_decay = teachers_lib.ema_decay(config)
    if not need_teachers:
      continue
    if spec.source == "online":
      teacher = online_lib.load(name, spec, n_classes)
      t_out = online_lib.shapes(teacher, split.num_samples, split.sample_rate,
                                return_features=True)
      if t_out["logits"].shape[-1] != n_classes:
        raise ValueError(f"teachers.{name}: the run {spec.run} predicts "
                         f"{t_out['logits'].shape[-1]} classes, this data has {n_classes}")
      t_maps = teacher_maps[name] = _feature_maps(t_out)
      if "projected" not in t_out and any(
          "teacher.projected" in registry.TERMS[term].inputs(settings[term])
          for term in read_by[name]):
        raise ValueError(f"teachers.{name}: the run {spec.run} (model "
                         f"{teacher.run_config.model.name!r}) has no projection head (`projected`"
                         f" output), which loss term(s) {read_by[name]} read")
      for s_stage, t_stage in pairs.get(name, []):
        for stage, maps, who in ((s_stage, s_maps, "student"), (t_stage, t_maps, "teacher")):
          if stage not in maps:
            raise ValueError(f"loss.{'/'.join(t for t in FEATURE_TERMS if t in weights)}"
                             f".stages: {who} {'' if who == 'student' else name + ' '}has no "
                             f"feature map {stage!r}; maps: {sorted(maps)}")
      online[name] = teacher
      frozen[name] = teacher.variables
    elif spec.source == "cache":
      column = cache_lib.column_name(name, spec.output)
      if column not in split:
        raise ValueError(f"teacher {name!r} (cache) needs the column {column!r} joined to the "
                         f"split (stages join it from teachers.{name}.runs); columns: "
                         f"{sorted(split.columns)}")
      if spec.output == "logits" and split[column].shape[-1] != n_classes:
        raise cache_lib.CacheMismatchError(
            f"teacher {name!r}: cached logits have {split[column].shape[-1]} classes, the data "
            f"{n_classes}")
      cache_columns[name] = column

  model = student
  dfm_teacher = settings["dfm"]["teacher"] if "dfm" in weights else None
  if "dfm" in weights:
    # The adapters' shapes: (student stage, teacher channels, student channels). In training
    # they come from the teacher; evaluation needs no teacher (the adapters are not used).
    dfm_pairs = registry.pairs(settings["dfm"]["stages"], "dfm")
    if dfm_teacher in online:
      t_maps = teacher_maps[dfm_teacher]
      adapters = tuple((s, t_maps[t][-1], s_maps[s][-1]) for s, t in dfm_pairs)
    else:
      adapters = tuple((s, 1, 1) for s, _ in dfm_pairs)
    model = heads.WithFeatureAdapters(student, adapters)

  use_ema = need_teachers and any(s.source == "ema" for s in used.values())
  return_features = (any(o != "logits" for o in outputs) or any(
      name in registry.TERMS[t].inputs(settings[t]) for t in weights
      for name in ("embedding", "features", "adapted", "projected")))
  columns = ("waveform", "label", "recording_device", "index") + tuple(cache_columns.values())

  def make_inputs(key, batch):
    waveform = mono(batch["waveform"])
    if key is None:
      return frontends.log_mel(waveform, settings_fe)
    k_wave, k_front, k_style, k_mixup = jax.random.split(key, 4)
    clean = frontends.log_mel(waveform, settings_fe) if mix.clean_view else None
    waveform = wave_augment(k_wave, waveform, batch["recording_device"])
    x = frontends.log_mel(waveform, settings_fe, key=k_front, aug=augment_cfg)
    x = augment.mixstyle(k_style, x, mix.mixstyle_p, mix.mixstyle_alpha,
                         frequency_wise=mix.mixstyle_frequency_wise)
    extras = {}
    perm = lam = None
    if mix.mixup_alpha > 0:
      if mix.mixup_p < 1:   # only a fraction of the examples is mixed
        k_mixup, k_which = jax.random.split(k_mixup)
        perm, lam = augment.mixup_draw(k_mixup, x.shape[0], mix.mixup_alpha)
        lam = jnp.where(jax.random.uniform(k_which, lam.shape) < mix.mixup_p, lam, 1.0)
      else:
        perm, lam = augment.mixup_draw(k_mixup, x.shape[0], mix.mixup_alpha)
      x = augment.mix(x, perm, lam)
      extras.update(mix_perm=perm, mix_lam=lam)
    if use_ema:   # the mean teacher sees the student's augmented input
      extras["ema_input"] = x
    for name, teacher in online.items():
      xt = teacher.inputs(waveform, split.sample_rate)
      extras[f"teacher_input/{name}"] = xt if perm is None else augment.mix(xt, perm, lam)
    if clean is not None:
      x = jnp.concatenate([clean.astype(x.dtype), x])
    return step_lib.Prepared(x, extras)

  def mixed(probs, batch):
    """Teacher targets mixed like the inputs (mixup)."""
    return augment.mix(probs, batch["mix_perm"], batch["mix_lam"]) if "mix_perm" in batch else probs

  def from_logits(logits):
    return {"logits": logits, "log_probs": jax.nn.log_softmax(
        logits.astype(jnp.float32) / temperature, axis=-1)}

  def teacher(frozen_vars, batch):
    """{teacher name: outputs} of every teacher a weighted term reads (see TEACHER_OUTPUTS)."""
    out = {}
    for name, column in cache_columns.items():
      members = batch[column]                                       # (B, K, …)
      spec = used[name]
      if spec.output == "logits":
        log_p = distillation.ensemble_log_probs(members.transpose(1, 0, 2).astype(jnp.float32),
                                                temperature, cache_lib.ensemble_mode(spec))
        if "mix_perm" in batch:
          log_p = jnp.log(jnp.maximum(mixed(jnp.exp(log_p), batch), 1e-30))
        out[name] = {"log_probs": log_p, "logits": mixed(members.mean(axis=1), batch)}
      else:
        out[name] = {spec.output: mixed(members.mean(axis=1), batch)}
    for name, teacher_model in online.items():
      feats = teacher_model.apply(frozen_vars[name], batch[f"teacher_input/{name}"],
                                  mesh=placed.get("mesh"), return_features=True)
      out[name] = dict(from_logits(feats["logits"].astype(jnp.float32)),
                       features={s: feats[t] for s, t in pairs.get(name, [])},
                       embedding=feats.get("embedding"), projected=feats.get("projected"))
    if use_ema:
      ema_name = next(n for n, s in used.items() if s.source == "ema")
      ema_out = model.apply(frozen_vars[step_lib.EMA_KEY], batch["ema_input"], train=False,
                            **({"return_features": True} if return_features else {}))
      logits = ema_out["logits"] if isinstance(ema_out, dict) else ema_out
      out[ema_name] = dict(from_logits(logits),
                           embedding=ema_out.get("embedding") if isinstance(ema_out, dict)
                           else None)
    return out

  def loss(output, batch, ctx):
    labels = batch["label"]
    clean_logits = None
    if mix.clean_view:   # rows [0, B): the clean clips, [B, 2B): the augmented ones
      b = labels.shape[0]
      if not isinstance(output, dict):
        output = {"logits": output}
      clean_logits = output["logits"][:b]
      output = {k: v[b:] for k, v in output.items() if hasattr(v, "shape")}
    logits = output["logits"] if isinstance(output, dict) else output
    one_hot = target_probs = jax.nn.one_hot(labels, n_classes, dtype=jnp.float32)
    targets = labels
    if "mix_perm" in batch:
      target_probs = mixed(target_probs, batch)
      targets = target_probs
    inputs = {"logits": logits, "targets": targets, "target_probs": target_probs,
              "labels": labels, "device": batch["recording_device"], "num_devices": n_devices,
              "index": batch["index"], "teachers": ctx.teachers, "crd_key": ctx.key}
    if isinstance(output, dict):
      inputs.update(embedding=output.get("embedding"), adapted=output.get("adapted"),
                    projected=output.get("projected"), features=output)
    if clean_logits is not None:
      ce, ce_metrics, _ = registry.total({k: w for k, w in weights.items() if k == "ce"},
                                         settings, dict(inputs, logits=clean_logits,
                                                        targets=one_hot))
      value, metrics, states = registry.total(
          {k: w for k, w in weights.items() if k != "ce"}, settings, inputs, ctx.loss_state)
      value = value + ce
      metrics.update(ce_metrics)
      logits = clean_logits
    else:
      value, metrics, states = registry.total(weights, settings, inputs, ctx.loss_state)
    metrics["accuracy"] = (logits.argmax(-1) == labels).mean()
    return value, metrics, (states or ctx.loss_state)

  def named_outputs(output, batch):
    named = {"logits": output["logits"] if isinstance(output, dict) else output}
    for name in outputs:
      if name == "logits":
        continue
      if not isinstance(output, dict) or name not in output:
        raise ValueError(f"output {name!r}: model {config.model.name!r} gives "
                         f"{sorted(output) if isinstance(output, dict) else ['logits']}")
      named[name] = output[name]
    return named

  # Stateful terms (CRD's memory banks, report 003 eq. 3) keep one row per training example,
  # addressed by its `index` (the row in the split's metadata: rows a holdout or a skipped file
  # took out stay at their random start and are only ever drawn as negatives).
  num_examples = int(np.max(np.asarray(split["index"]))) + 1 if len(split) else 0

  def init_term_states(key):
    return registry.init_states(key, weights, settings, {"num_examples": num_examples})
  stateful = any(registry.TERMS[name].init_state is not None for name in weights)
  has_teacher = bool(online) or bool(cache_columns) or use_ema
  train_kwargs = None
  if dfm_teacher in online:
    train_kwargs = lambda batch, teachers: {"teacher_features":
                                            teachers[dfm_teacher]["features"]}
  frozen_sharding = None
  # The trainer calls `frozen_sharding(mesh)` when it is built, before any step is traced: that
  # is how the task learns the mesh its split teachers gather their weights over.
  placed: Dict[str, Any] = {}

  if online:
    def frozen_sharding(mesh):
      placed["mesh"] = mesh
      return {name: t.shardings(mesh) for name, t in online.items()}
  return step_lib.Task(
      model=model, make_inputs=make_inputs, loss=loss, outputs=named_outputs,
      evaluators=(evaluators.classification("logits"),), rng_streams=RNG_STREAMS,
      apply_kwargs={"return_features": True} if return_features else {},
      teacher=teacher if has_teacher else None, frozen_variables=frozen if online else None,
      frozen_sharding=frozen_sharding, train_kwargs=train_kwargs, ema_teacher=use_ema,
      ema_decay=ema_decay if use_ema else None, columns=columns,
      init_loss_state=init_term_states if stateful else None)


def join_cache_teachers(config, split, workdir: Optional[str]):
  """`split` with the column of every cache teacher a weighted loss term reads
  (`teacher/<name>/<output>`, memory-mapped from the gathered cache, built when absent)."""
  specs = teachers_lib.specs(config)
  columns = {}
  for name in sorted(teachers_read(config)):
    spec = specs.get(name)
    if spec is None or spec.source != "cache":
      continue
    if workdir is None:
      raise ValueError(f"teacher {name!r} (cache) needs the run's workdir")
    columns[cache_lib.column_name(name, spec.output)] = cache_lib.gathered(spec, name, workdir,
                                                                           split)
  return split.with_columns(columns) if columns else split

