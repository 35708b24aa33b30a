"""K-track tagging of spatial mixtures (report 004, S5): the M2D tagger with permutation-invariant
losses, auxiliary heads and an EMA teacher.

The model (`config.model`, `models.m2d.M2DTagger`) reads the log-mels of the mixture's reference
channel (`model.channels` = 1, "1c") or of its four FOA channels (4, "4c"), each through the
configured frontend (`frontends.m2d(mean, std)`: the M2D checkpoint's normalisation), and
predicts K = 3 tracks over the dataset's classes plus silence (the last class). Track order is
arbitrary, so every loss is permutation-invariant (`losses/pit.py`).

Loss terms (`config.loss.terms`; report 004 eq. 3 is {pit_ce: 1, aux_pit_ce: γ, pi_kd: α,
self_kd: α_self}):
  pit_ce      L_main: the T4 baseline's PIT cross-entropy against the `labels` column;
  aux_pit_ce  L_aux: the same for each auxiliary head (blocks `model.aux_blocks`), averaged;
  pi_kd       L_KD (eq. 2): PI-KD at `loss.pi_kd.temperature` from the EMA teacher
              (`config.teachers.ema`, eq. 1, on the same input), its weight ramped linearly
              over `loss.pi_kd.warmup_steps` (the report does not say how KD starts; the EMA
              teacher is the student itself at first);
  self_kd     L_self: the report names it without defining it; ours is the main head teaching
              the auxiliary heads (`pit.self_distillation`);
  semantic_cka, semantic_cos   report 004 eq. 4 (§2.3): λ_CKA·(1 − CKA(S, T)) and
              λ_cos·(1 − cos(S̄, T̄)) between the model's `semantic` output (the reference
              channel's tokens pooled to the teacher's time bins and projected to its width,
              `model.semantic_dim`) and a Qwen2-Audio teacher's cached tokens of the clean
              sources (`config.teachers.<name>`, source "qwen_audio", `teachers/semantic.py`;
              joined to the training split as `teacher/<name>/tokens`), each ramped up over
              its `warmup_steps`. The run logs the raw `cka` and `cos` beside them.
The 4c model masks 30 % of its spatial tokens in training (`model.spatial_mask_rate`).

Outputs: `track_logits` (B, K, C + 1) and, asked for, `tokens` (B, N, C_in·D) (the encoder's).
`TRAIN_ONLY_PARAMS`: what stage inference_checkpoint drops (the semantic projector). Evaluators: accuracy_mixture,
accuracy_source (%) and pit_ce (the validation loss report 004 selects checkpoints on).
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from jax_asc import models, teachers as teachers_lib
from jax_asc.audio import frontends
from jax_asc.eval import evaluators
from jax_asc.losses import registry, similarity
from jax_asc.teachers import semantic as semantic_lib
from jax_asc.train import step as step_lib

BATCH_INPUTS = ("track_logits", "track_targets", "aux_track_logits", "step", "semantic")
TEACHER_OUTPUTS = {"ema": ("track_logits",), semantic_lib.SOURCE: (semantic_lib.OUTPUT,)}
SEMANTIC_TERMS = ("semantic_cka", "semantic_cos")
OUTPUTS = ("track_logits", "tokens")
RNG_STREAMS = ("spatial_mask",)
TRAIN_ONLY_PARAMS = ("semantic_projector",)


def inference_model_config(config):
  """`config.model` of the inference model: without the training-only semantic projector."""
  model = config.model.copy_and_resolve_references()
  if "semantic_dim" in model:
    model.semantic_dim = 0
  return model


def loss_settings(config):
  """{term: settings} from `config.loss.<term>` (registered defaults where a config has none)."""
  return registry.settings_of(config.loss)


def log_mels(waveform: jax.Array, channels: int, settings: frontends.MelSettings) -> jax.Array:
  """(B, C_all, S) mixtures → (B, channels, n_mels, frames) log-mels of the first `channels`
  channels (channel 0 is the reference)."""
  x = waveform[:, :channels]
  batch = x.shape[0]
  mels = frontends.log_mel(x.reshape(batch * channels, x.shape[-1]), settings)
  return mels.reshape(batch, channels, *mels.shape[1:])


def build_model(config, num_classes: int, dtype=jnp.float32):
  """The tagger of `config.model` for `num_classes` event classes (+ silence)."""
  return models.build(config.model, num_classes=num_classes + 1, dtype=dtype)


def complexity_input(config, n_classes: int, num_samples: int):
  """(model, input shape) of one mixture, for `eval.complexity` (frontend excluded)."""
  model = build_model(config, n_classes)
  settings = frontends.settings_from_config(config.frontend)
  return model, (1, model.channels, settings.n_mels, settings.num_frames(num_samples))


def build(config, split, *, dtype=jnp.float32, need_teachers: bool = True,
          outputs: Sequence[str] = ("track_logits",), impulse_responses=None) -> step_lib.Task:
  """The tagging task of this run's config for `split` (classes, channels, sample rate).

  need_teachers=False: the same model for evaluation and prediction (no EMA teacher)."""
  unknown = sorted(set(outputs) - set(OUTPUTS))
  if unknown:
    raise ValueError(f"the tagging task has no output(s) {unknown}; outputs: {list(OUTPUTS)}")
  missing = [c for c in ("waveform",) if c not in split]
  if need_teachers:
    missing += [c for c in ("labels",) if c not in split]
  if missing:
    raise ValueError(f"the tagging task reads the column(s) {missing}, which split "
                     f"{split.name!r} of {split.dataset or 'the dataset'} lacks; columns: "
                     f"{sorted(split.columns)}")
  settings_fe = frontends.settings_from_config(config.frontend)
  if settings_fe.sample_rate != split.sample_rate:
    raise ValueError(f"frontend.sample_rate {settings_fe.sample_rate} differs from the data's "
                     f"{split.sample_rate} Hz")
  num_classes = len(split.classes)
  model = build_model(config, num_classes, dtype)
  channels = int(model.channels)
  if split.num_channels < channels:
    raise ValueError(f"model.channels = {channels} but split {split.name!r} has "
                     f"{split.num_channels} channel(s)")
  if "labels" in split and int(split["labels"].shape[1]) != model.num_tracks:
    raise ValueError(f"split {split.name!r} has {split['labels'].shape[1]} tracks, the model "
                     f"{model.num_tracks} (model.num_tracks)")
  weights = registry.active(config.loss.terms)
  settings = loss_settings(config)
  specs = teachers_lib.specs(config)
  for name, spec in specs.items():
    if spec.source not in TEACHER_OUTPUTS:
      raise ValueError(f"teachers.{name}: the tagging task's teachers are of sources "
                       f"{sorted(TEACHER_OUTPUTS)}, got {spec.source!r}")
  registry.check_inputs(weights, settings, set(BATCH_INPUTS),
                        {name: TEACHER_OUTPUTS[spec.source] for name, spec in specs.items()},
                        "tagging")
  read = registry.teachers_read(weights, settings)
  use_ema = need_teachers and any(specs[n].source == "ema" for n in read)
  ema_name = next((n for n in read if specs[n].source == "ema"), None)
  semantic_columns = {}
  for name in sorted(n for n in read if specs[n].source == semantic_lib.SOURCE):
    if not need_teachers:     # evaluation: the inference model may lack the projector
      continue
    if int(model.semantic_dim) <= 0:
      raise ValueError(f"loss terms {[t for t in SEMANTIC_TERMS if t in weights]} read teacher "
                       f"{name!r}, but the model has no semantic projector: set "
                       f"model.semantic_dim to the teacher's width")
    column = semantic_lib.column_name(name)
    if column not in split:
      raise ValueError(f"teacher {name!r} ({semantic_lib.SOURCE}) needs the column {column!r} "
                       f"joined to split {split.name!r} (the stages join it from its cache); "
                       f"columns: {sorted(split.columns)}")
    expected = (int(model.semantic_bins), int(model.semantic_dim))
    if tuple(split[column].shape[1:]) != expected:
      raise ValueError(f"teacher {name!r}: cached tokens are {tuple(split[column].shape[1:])} "
                       f"(bins, width), the model's semantic output {expected} "
                       f"(model.semantic_bins, model.semantic_dim)")
    semantic_columns[name] = column
  watch_semantic = next(iter(semantic_columns), None)

  def make_inputs(key, batch):
    x = log_mels(batch["waveform"], channels, settings_fe)
    if key is None:
      return x
    return step_lib.Prepared(x, {"ema_input": x} if use_ema else {})

  def teacher(frozen, batch):
    out = {name: {semantic_lib.OUTPUT: batch[column].astype(jnp.float32)}
           for name, column in semantic_columns.items()}
    if use_ema:
      logits = model.apply(frozen[step_lib.EMA_KEY], batch["ema_input"], train=False)
      out[ema_name] = {"track_logits": logits.astype(jnp.float32)}
    return out

  def loss(output, batch, ctx):
    inputs = {"track_logits": output["logits"], "aux_track_logits": output["aux_logits"],
              "track_targets": batch["labels"], "step": ctx.step, "teachers": ctx.teachers,
              "semantic": output.get("semantic")}
    value, metrics, _ = registry.total(weights, settings, inputs)
    predicted = jnp.sort(output["logits"].argmax(-1), axis=1)
    metrics["accuracy_mixture"] = jnp.all(predicted == jnp.sort(batch["labels"], axis=1),
                                          axis=1).mean()
    if watch_semantic is not None:   # the similarities themselves, not ramped
      metrics["cka"], metrics["cos"] = similarity.semantic_similarities(
          output["semantic"], ctx.teachers[watch_semantic][semantic_lib.OUTPUT])
    return value, metrics, ctx.loss_state

  def named_outputs(output, batch):
    named = {"track_logits": output["logits"]}
    if "tokens" in outputs:
      named["tokens"] = output["tokens"]
    return named

  return step_lib.Task(
      model=model, make_inputs=make_inputs, loss=loss, outputs=named_outputs,
      evaluators=(evaluators.tagging("track_logits"),), rng_streams=RNG_STREAMS,
      apply_kwargs={"return_features": True},
      teacher=teacher if use_ema or semantic_columns else None,
      ema_teacher=use_ema, ema_decay=teachers_lib.ema_decay(config) if use_ema else None,
      columns=(("waveform", "labels") if "labels" in split else ("waveform",))
      + tuple(semantic_columns.values()))


def join_cache_teachers(config, split, workdir: Optional[str]):
  """`split` with the cached tokens of every semantic teacher a weighted loss term reads
  (`teacher/<name>/tokens`, memory-mapped; the cache must match the teacher and every
  mixture, `teachers.semantic.cached_tokens`)."""
  specs = teachers_lib.specs(config)
  read = registry.teachers_read(config.loss.terms, loss_settings(config))
  columns = {semantic_lib.column_name(name): semantic_lib.cached_tokens(name, specs[name],
                                                                        split, workdir)
             for name in sorted(read) if name in specs
             and specs[name].source == semantic_lib.SOURCE}
  return split.with_columns(columns) if columns else split
