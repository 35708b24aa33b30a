"""Flax Linen models. `build(cfg)` makes one from a config section (`cfg.name` + its fields)."""
from __future__ import annotations

import dataclasses

from jax_asc.models.beats import BEATsClassifier
from jax_asc.models.cp_mobile import CPMobile
from jax_asc.models.cp_resnet import CPResNet
from jax_asc.models.crnn import CRNN
from jax_asc.models.m2d import M2DEncoder, M2DTagger
from jax_asc.models.passt import PaSST
from jax_asc.models.resunetk import ResUNetK
from jax_asc.models.vit import ViT

MODELS = {"beats": BEATsClassifier, "cp_mobile": CPMobile, "cp_resnet": CPResNet, "crnn": CRNN,
          "m2d": M2DEncoder, "m2d_tagger": M2DTagger, "passt": PaSST, "resunetk": ResUNetK,
          "vit": ViT}


def build(cfg, **overrides):
  """The module named `cfg.name`, with every other key of `cfg` as a constructor argument."""
  kwargs = dict(cfg)
  name = kwargs.pop("name")
  if name not in MODELS:
    raise ValueError(f"model.name must be one of {sorted(MODELS)}, got {name!r}")
  cls = MODELS[name]
  kwargs.update(overrides)
  valid = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")}
  unknown = sorted(set(kwargs) - valid)
  if unknown:
    raise ValueError(f"model {name!r} has no setting {unknown}; valid: {sorted(valid)}")
  for key, value in kwargs.items():   # ConfigDict lists → tuples (Flax attributes are hashable)
    if isinstance(value, list):
      kwargs[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
  return cls(**kwargs)
