"""Label-queried separation of spatial mixtures (report 004, S5): the ResUNetK separator.

The model (`config.model`, `models.resunetk.ResUNetK`) hears the 4-channel mixture and is
queried with the labels of its K tracks (one-hot rows, silence all zeros); it returns one dry
mono waveform per track, zero for silent ones. In training the queries are the oracle labels
(the `labels` column); the system evaluation (stage `system_eval`) queries it with a tagger's.

Loss (`config.loss.terms`): `ca_pit_snr`, the T4 baseline's class-aware permutation-invariant
−SNR against the dry targets (`sources`), an estimate only matched to a reference of its own
label (losses/separation.py). Outputs: `waveforms` (B, K, S). Evaluator: CAPI-SDRi (dB) with the
oracle labels, `s5_metrics.capi_sdri`.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax_asc import models
from jax_asc.eval import s5_metrics
from jax_asc.losses import registry
from jax_asc.train import step as step_lib

BATCH_INPUTS = ("separated", "sources", "track_targets", "silence")
OUTPUTS = ("waveforms",)


class QueriedSeparator(nn.Module):
  """`separator(mixture, label_vector)` called on one input dict {"mixture" (B, C, S),
  "label_vector" (B, K·n_classes)} (the trainer hands a model one input); (B, K, S) out."""
  separator: Any

  def __call__(self, inputs, train: bool = False):
    return self.separator(inputs["mixture"], inputs["label_vector"], train=train)[:, :, 0]


def label_vector(labels: jax.Array, num_classes: int) -> jax.Array:
  """(B, K) class indices (silence = num_classes) → (B, K·num_classes) query: K one-hot rows,
  silence an all-zero row (the T4 baseline's `label_vector_mode='concat'`)."""
  onehot = jax.nn.one_hot(labels, num_classes + 1, dtype=jnp.float32)[..., :num_classes]
  return onehot.reshape(labels.shape[0], -1)


def build_model(config, num_classes: int, dtype=jnp.float32) -> QueriedSeparator:
  return QueriedSeparator(models.build(config.model, n_classes=num_classes, dtype=dtype))


class _MixtureOnly(nn.Module):
  """The separator queried with K silent tracks (counting needs one array input; its
  parameters and MACs do not depend on the query's values)."""
  model: QueriedSeparator
  query_size: int

  def __call__(self, mixture, train: bool = False):
    query = jnp.zeros((mixture.shape[0], self.query_size), jnp.float32)
    return self.model({"mixture": mixture, "label_vector": query}, train=train)


def complexity_input(config, n_classes: int, num_samples: int):
  """(model, input shape) of one mixture for `eval.complexity` (the STFTs are not counted)."""
  model = build_model(config, n_classes)
  separator = model.separator
  return (_MixtureOnly(model, separator.num_sources * n_classes),
          (1, separator.in_channels, num_samples))


def loss_settings(config):
  """{term: settings} from `config.loss.<term>` (registered defaults where a config has none)."""
  return registry.settings_of(config.loss)


def capi_evaluator(output: str = "waveforms", chunk: int = 32):
  """CAPI-SDRi (dB) of output `output` (N, K, S) queried with the oracle labels, against the
  split's `sources` and its mixtures' reference channel (read `chunk` rows at a time)."""
  def evaluate(outputs, split):
    estimates = outputs[output]
    result = s5_metrics.capi_sdri(s5_metrics.split_mixtures(
        split, np.asarray(split["labels"]), lambda rows: estimates[rows], chunk))
    yield "capi_sdri", result["capi_sdri"]
  return evaluate


def build(config, split, *, dtype=jnp.float32, need_teachers: bool = True,
          outputs: Sequence[str] = ("waveforms",), impulse_responses=None) -> step_lib.Task:
  """The separation task of this run's config for `split` (classes, channels)."""
  unknown = sorted(set(outputs) - set(OUTPUTS))
  if unknown:
    raise ValueError(f"the separation task has no output(s) {unknown}; outputs: "
                     f"{list(OUTPUTS)}")
  missing = [c for c in ("waveform", "labels") + (("sources",) if need_teachers else ())
             if c not in split]
  if missing:
    raise ValueError(f"the separation task reads the column(s) {missing}, which split "
                     f"{split.name!r} of {split.dataset or 'the dataset'} lacks; columns: "
                     f"{sorted(split.columns)}")
  num_classes = len(split.classes)
  model = build_model(config, num_classes, dtype)
  if split.num_channels != model.separator.in_channels:
    raise ValueError(f"model.in_channels = {model.separator.in_channels} but split "
                     f"{split.name!r} has {split.num_channels} channels")
  weights = registry.active(config.loss.terms)
  settings = loss_settings(config)
  registry.check_inputs(weights, settings, set(BATCH_INPUTS), {}, "separation")

  def make_inputs(key, batch):
    return {"mixture": batch["waveform"], "label_vector": label_vector(batch["labels"],
                                                                       num_classes)}

  def loss(output, batch, ctx):
    inputs = {"separated": output, "sources": batch["sources"],
              "track_targets": batch["labels"], "silence": num_classes}
    value, metrics, _ = registry.total(weights, settings, inputs)
    return value, metrics, ctx.loss_state

  return step_lib.Task(
      model=model, make_inputs=make_inputs, loss=loss,
      outputs=lambda output, batch: {"waveforms": output},
      evaluators=(capi_evaluator("waveforms"),) if "sources" in split else (),
      columns=("waveform", "labels") + (("sources",) if "sources" in split else ()))


def join_cache_teachers(config, split, workdir: Optional[str]):
  """The separation task reads no cache teacher: `split` unchanged."""
  return split
