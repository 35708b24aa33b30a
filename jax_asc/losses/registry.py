"""Loss terms by name: `config.loss.terms = {name: weight}`, each with its own settings.

A term is a pure function of named inputs (arrays a task provides from the model output, the
batch and its teachers) and its settings, returning a scalar (a stateful term, CRD, also its new
state). A task names what it provides; `total` forms Σ weight · term over the weighted terms and
refuses an unknown term (listing the registered ones) or a term whose inputs the task does not
provide (naming them), so a config can switch on any term a task can feed.

Inputs a term may read (shapes; B = batch):
  logits (B, C); targets (B, C) label probabilities (mixup-mixed one-hot); labels (B,) int;
  embedding (B, D); device (B,) int with setting-free `num_devices`; index (B,) int;
  features {stage: (B, H, W, C)} student maps; adapted {stage: map} DFM adapters' outputs;
  track_logits (B, K, C) and track_targets (B, K) (permutation-invariant tagging);
  aux_track_logits {block: (B, K, C)} the auxiliary heads' (deep supervision); step () int32,
  the optimizer steps done (ramps);
  projected (B, D) a student projection head's output (CRD);
  separated (B, K, S) a separator's waveforms, sources (B, K, S) the dry targets, silence the
  silence class (label-queried separation);
  teachers {name: {log_probs (B, C) at the KD temperature, logits, embedding, features,
  track_logits, projected, tokens}}: a term with a `teacher` setting reads the teacher of that
  name;
  semantic (B, bins, D) the student's pooled tokens projected to a semantic teacher's width
  (report 004 §2.3), the teacher's `tokens` alike.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

from jax_asc.losses import (classification, contrastive, dafa, distillation, features, pit,
                            separation, similarity)


@dataclasses.dataclass(frozen=True)
class Term:
  """name; reads: the inputs it needs (teacher outputs as "teacher.<key>"); settings: defaults
  (each settable as `config.loss.<name>.<key>`); source: the report and equation;
  compute(inputs, settings) → scalar, or (scalar, new state) when `init_state` is set;
  init_state(key, settings, info) → the term's first state (info: task facts such as
  `num_examples`)."""
  name: str
  reads: Tuple[str, ...]
  compute: Callable[..., Any]
  settings: Mapping[str, Any]
  source: str
  init_state: Optional[Callable[..., Any]] = None

  def teacher_name(self, settings) -> Optional[str]:
    return settings.get("teacher") if "teacher" in self.settings else None

  def inputs(self, settings) -> Tuple[str, ...]:
    """What it reads under these settings: a term with an `on` setting reads that input in
    place of "embedding"."""
    if "on" not in self.settings:
      return self.reads
    on = settings.get("on", self.settings["on"])
    if on not in ON_CHOICES:
      raise ValueError(f"loss.{self.name}.on must be one of {list(ON_CHOICES)}, got {on!r}")
    return tuple(on if item == "embedding" else item for item in self.reads)


ON_CHOICES = ("embedding", "projected")


TERMS: Dict[str, Term] = {}


def register(name: str, reads: Tuple[str, ...], source: str, init_state=None, **settings):
  def wrap(fn):
    if name in TERMS:
      raise ValueError(f"loss term {name!r} is registered twice")
    TERMS[name] = Term(name, tuple(reads), fn, dict(settings), source, init_state)
    return fn
  return wrap


def get(name: str) -> Term:
  if name not in TERMS:
    raise KeyError(f"loss term {name!r} is not registered; registered terms: {sorted(TERMS)}")
  return TERMS[name]


def default_settings() -> Dict[str, Dict[str, Any]]:
  """{term: its settings} with the registered defaults (configs/common.py's `config.loss`)."""
  return {name: dict(term.settings) for name, term in TERMS.items()}


def settings_of(loss_config) -> Dict[str, Dict[str, Any]]:
  """{term: settings}: the registered defaults updated by `config.loss.<term>` where a config
  has that section (what every task family hands `total`)."""
  settings = default_settings()
  for name in settings:
    if name in loss_config:
      settings[name].update(loss_config[name].to_dict())
  return settings


def pairs(spec: str, term: str) -> Tuple[Tuple[str, str], ...]:
  """"s1:s1,s3:s2" → (("s1", "s1"), ("s3", "s2")): (student stage, teacher stage) pairs."""
  out = []
  for item in [p.strip() for p in spec.split(",") if p.strip()]:
    if item.count(":") != 1:
      raise ValueError(f"loss.{term}.stages item {item!r}: expected "
                       "'student_stage:teacher_stage'")
    out.append(tuple(s.strip() for s in item.split(":")))
  if not out:
    raise ValueError(f"loss.{term}.stages is empty")
  return tuple(out)


def _teacher(inputs, settings, key):
  return inputs["teachers"][settings["teacher"]][key]


@register("ce", ("logits", "targets"), "cross-entropy (mixup-aware soft targets)",
          label_smoothing=0.0)
def _ce(inputs, s):
  return classification.cross_entropy(inputs["logits"], inputs["targets"],
                                      label_smoothing=s["label_smoothing"])


@register("kd", ("logits", "teacher.log_probs"),
          "Hinton KD: report 000 eq. 1, report 001 eq. 3 (soft term)",
          temperature=2.0, reduction="batchmean", teacher="ensemble")
def _kd(inputs, s):
  return distillation.kd_from_log_probs(inputs["logits"], _teacher(inputs, s, "log_probs"),
                                        s["temperature"], reduction=s["reduction"])


@register("dcsl", ("embedding", "device", "num_devices"), "DCSL: report 000 eq. 2-3")
def _dcsl(inputs, s):
  return dafa.dcsl_loss(inputs["embedding"], inputs["device"], inputs["num_devices"])


@register("gdal", ("embedding", "device", "num_devices"), "GDAL: report 000 eq. 2, 4")
def _gdal(inputs, s):
  return dafa.gdal_loss(inputs["embedding"], inputs["device"], inputs["num_devices"])


@register("dfm", ("features", "adapted"), "DFM: report 001 eq. 4", stages="s3:s3",
          teacher="online")
def _dfm(inputs, s):
  return sum(features.dfm_loss(inputs["features"][st], inputs["adapted"][st])
             for st, _ in pairs(s["stages"], "dfm"))


@register("ssfm", ("features", "teacher.features"), "SSFM: report 001 eq. 5", stages="s3:s3",
          teacher="online")
def _ssfm(inputs, s):
  teacher = _teacher(inputs, s, "features")
  return sum(features.ssfm_loss(inputs["features"][st], teacher[st])
             for st, _ in pairs(s["stages"], "ssfm"))


# The contrastive terms read `on`: the model's "embedding" or its projection head's "projected"
# (report 003 §2 contrasts the 128-d projections, not the 768-d embedding).
@register("supcon", ("embedding", "labels"), "SupCon (one view per clip)", temperature=0.07,
          on="embedding")
def _supcon(inputs, s):
  return contrastive.supcon_loss(inputs[s["on"]][:, None], inputs["labels"],
                                 temperature=s["temperature"], base_temperature=s["temperature"])


@register("soft_supcon", ("embedding", "targets"), "soft (mixup-aware) SupCon: report 003 eq. 1",
          temperature=0.2, on="embedding")
def _soft_supcon(inputs, s):
  return contrastive.soft_supcon_loss(inputs[s["on"]], inputs["targets"],
                                      temperature=s["temperature"])[0]


@register("cka", ("embedding", "teacher.embedding"), "1 − linear CKA: report 004 eq. 4",
          teacher="online", debiased=False)
def _cka(inputs, s):
  return 1.0 - similarity.linear_cka(inputs["embedding"], _teacher(inputs, s, "embedding"),
                                     debiased=s["debiased"])


@register("cosine", ("embedding", "teacher.embedding"), "cosine distance: report 004 eq. 4",
          teacher="online")
def _cosine(inputs, s):
  return similarity.cosine_distance(inputs["embedding"], _teacher(inputs, s, "embedding"))


@register("semantic_cka", ("semantic", "teacher.tokens", "step"),
          "1 − CKA(S, T) of the pooled, projected student tokens and the semantic teacher's: "
          "report 004 eq. 4 (λ_CKA; its weight ramped up over warmup_steps)",
          teacher="qwen", warmup_steps=0, debiased=False)
def _semantic_cka(inputs, s):
  cka, _ = similarity.semantic_similarities(inputs["semantic"], _teacher(inputs, s, "tokens"),
                                            debiased=s["debiased"])
  return (1.0 - cka) * pit.linear_ramp(inputs["step"], s["warmup_steps"])


@register("semantic_cos", ("semantic", "teacher.tokens", "step"),
          "1 − cos(S̄, T̄) of the clip means: report 004 eq. 4 (λ_cos; its weight ramped up over "
          "warmup_steps)", teacher="qwen", warmup_steps=0)
def _semantic_cos(inputs, s):
  _, cos = similarity.semantic_similarities(inputs["semantic"], _teacher(inputs, s, "tokens"))
  return (1.0 - cos) * pit.linear_ramp(inputs["step"], s["warmup_steps"])


@register("pit_ce", ("track_logits", "track_targets"), "PIT cross-entropy: report 004")
def _pit_ce(inputs, s):
  return pit.pit_cross_entropy(inputs["track_logits"], inputs["track_targets"])[0]


@register("pi_kd", ("track_logits", "teacher.track_logits", "step"),
          "PI-KD: report 004 eq. 2 (its weight ramped up over warmup_steps)",
          temperature=1.0, teacher="ema", warmup_steps=0)
def _pi_kd(inputs, s):
  value = pit.pi_kd_loss(inputs["track_logits"], _teacher(inputs, s, "track_logits"),
                         temperature=s["temperature"])[0]
  return value * pit.linear_ramp(inputs["step"], s["warmup_steps"])


@register("aux_pit_ce", ("aux_track_logits", "track_targets"),
          "L_aux of report 004 eq. 3: PIT cross-entropy of each auxiliary head, averaged")
def _aux_pit_ce(inputs, s):
  heads = list(inputs["aux_track_logits"].values())
  if not heads:
    raise ValueError("loss term 'aux_pit_ce' is weighted but the model has no auxiliary heads "
                     "(model.aux_blocks is empty)")
  return sum(pit.pit_cross_entropy(h, inputs["track_targets"])[0] for h in heads) / len(heads)


@register("self_kd", ("track_logits", "aux_track_logits"),
          "L_self of report 004 eq. 3 (our definition: PI-KD from the main head to each "
          "auxiliary head)", temperature=1.5)
def _self_kd(inputs, s):
  return pit.self_distillation(inputs["track_logits"], inputs["aux_track_logits"],
                               temperature=s["temperature"])


@register("ca_pit_snr", ("separated", "sources", "track_targets", "silence"),
          "class-aware PIT −SNR of the label-queried separator: report 004 (T4 baseline)")
def _ca_pit_snr(inputs, s):
  return separation.class_aware_pit_snr(inputs["separated"], inputs["sources"],
                                        inputs["track_targets"], silence=inputs["silence"])[0]


# CRD's student head (a task wraps a model that has no `projected` output in it, for every term
# that reads `projected`: crd, crd_softmax, supcon / soft_supcon on "projected"): "mlp" (report
# 003 §3: Linear(D, hidden) → ReLU → Linear(hidden, feat_dim), hidden 0 = D) or "linear" (the
# original CRD's embed), L2-normalised; its input is the model's `embedding`.
def _crd_state(key, s, info):
  return contrastive.crd_memory_init(key, info["num_examples"], s["feat_dim"])


@register("crd", ("projected", "teacher.projected", "index", "crd_key"),
          "CRD (memory-bank NCE): report 003 eq. 3", init_state=_crd_state, teacher="online",
          feat_dim=128, num_negatives=4096, temperature=0.07, momentum=0.5, student_head="mlp",
          student_hidden=0)
def _crd(inputs, s, state):
  num_data = state.student.shape[0]
  contrast = contrastive.sample_contrast_indices(inputs["crd_key"], inputs["index"], num_data,
                                                 s["num_negatives"])
  return contrastive.crd_loss(state, inputs["projected"], _teacher(inputs, s, "projected"),
                              inputs["index"], contrast, temperature=s["temperature"],
                              momentum=s["momentum"])


@register("crd_softmax", ("projected", "teacher.projected"),
          "CRD in the softmax form written in report 003 eq. 3 (in-batch negatives)",
          teacher="online", temperature=0.07)
def _crd_softmax(inputs, s):
  # −log softmax over the student keys of the teacher anchor q^T: the positive k^S of the same
  # clip, the negatives k_-^S the other clips' projections in the (global) batch.
  return contrastive.info_nce_loss(inputs["projected"], _teacher(inputs, s, "projected"),
                                   temperature=s["temperature"], direction="teacher_anchor")


def teachers_read(weights: Mapping[str, float], settings: Mapping[str, Mapping]
                  ) -> Dict[str, list]:
  """{teacher name: the weighted terms reading it} (each term's `teacher` setting)."""
  read: Dict[str, list] = {}
  for term in active(weights):
    name = TERMS[term].teacher_name(settings[term])
    if name:
      read.setdefault(name, []).append(term)
  return read


def active(weights: Mapping[str, float]) -> Dict[str, float]:
  """The weighted terms ({name: weight ≠ 0}); an unregistered name is an error listing them."""
  unknown = sorted(set(weights) - set(TERMS))
  if unknown:
    raise KeyError(f"config.loss.terms names unknown term(s) {unknown}; registered terms: "
                   f"{sorted(TERMS)}")
  return {k: float(v) for k, v in weights.items() if float(v)}


def check_inputs(weights: Mapping[str, float], settings: Mapping[str, Mapping], provided,
                 teachers: Mapping[str, Tuple[str, ...]], task: str) -> None:
  """Raises naming the first weighted term whose inputs the task does not provide.

  provided: the input names the task provides; teachers: {teacher name: its output keys}."""
  for name in active(weights):
    term, s = TERMS[name], settings[name]
    for item in term.inputs(s):
      if item.startswith("teacher."):
        teacher, key = term.teacher_name(s), item[len("teacher."):]
        if teacher not in teachers:
          raise ValueError(f"loss term {name!r} reads teacher {teacher!r} "
                           f"(config.loss.{name}.teacher); this run's teachers: "
                           f"{sorted(teachers) or 'none'}")
        if key not in teachers[teacher]:
          raise ValueError(f"loss term {name!r} reads {key!r} of teacher {teacher!r}, which "
                           f"gives {sorted(teachers[teacher])}")
      elif item not in provided:
        raise ValueError(f"loss term {name!r} needs input {item!r}, which task {task!r} does "
                         f"not provide (it provides {sorted(provided)})")


def init_states(key: jax.Array, weights, settings, info) -> Dict[str, Any]:
  """{term: first state} of the weighted stateful terms ({} when none)."""
  names = [n for n in active(weights) if TERMS[n].init_state is not None]
  keys = jax.random.split(key, max(len(names), 1))
  return {n: TERMS[n].init_state(k, settings[n], info) for n, k in zip(names, keys)}


def total(weights: Mapping[str, float], settings: Mapping[str, Mapping], inputs: Mapping,
          states: Optional[Mapping[str, Any]] = None) -> tuple:
  """(Σ weight · term, {term: value} metrics, {term: new state}) over the weighted terms."""
  states = dict(states or {})
  loss, metrics = jnp.zeros((), jnp.float32), {}
  for name, weight in active(weights).items():
    term = TERMS[name]
    if term.init_state is not None:
      value, states[name] = term.compute(inputs, settings[name], states[name])
    else:
      value = term.compute(inputs, settings[name])
    value = jnp.asarray(value, jnp.float32)
    metrics[name] = value
    loss = loss + weight * value
  return loss, metrics, states
