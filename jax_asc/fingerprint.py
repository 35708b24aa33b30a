"""The fingerprint of a run's configuration and the records of finished stages.

`stage` is left out (it says which stages one call runs, not what a run is), so a run's stages
run in one call or one at a time record the same fingerprint. Light on purpose (no JAX): the plan
runner computes it before deciding whether anything must run.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, Optional


# Keys added after runs were recorded (paths into the config), at the value that does what those
# runs did: left out of the fingerprint at that value, so adding them does not make every
# finished run stale. A callable gives a value computed when first needed.
NEUTRAL = {("data", "source"): "files", ("data", "tfds_dir"): "",
           # report 003: the Kaldi framing of the BEATs fbank, phase 1's two views, mixup
           # probability, warm-up in epochs, contrastive terms on the projection, CRD's head
           ("frontend", "framing"): "stft", ("frontend", "remove_dc"): False,
           ("frontend", "input_scale"): 1.0, ("frontend", "log_floor"): False,
           ("mix", "mixup_p"): 1.0, ("mix", "clean_view"): False,
           ("schedule", "cosine_warmup_epochs"): 0.0,
           ("loss", "supcon", "on"): "embedding", ("loss", "soft_supcon", "on"): "embedding",
           ("loss", "crd", "student_head"): "mlp", ("loss", "crd", "student_hidden"): 0,
           ("loss", "crd_softmax"): {"teacher": "online", "temperature": 0.07},
           ("loss", "terms", "crd_softmax"): 0.0,
           ("fewshot",): lambda: _default_section("fewshot_config")}


def _default_section(name: str):
  """A section's default (configs/common.py `<name>()`) as the config's JSON holds it."""
  from configs import common
  return json.loads(getattr(common, name)().to_json_best_effort(sort_keys=True))


def _digest(value) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _fingerprinted(config_json: str) -> dict:
  """The config's dict without `stage` and the `NEUTRAL` keys at their neutral values."""
  cfg = json.loads(config_json)
  cfg.pop("stage", None)
  for path, neutral in NEUTRAL.items():
    parent = cfg
    for key in path[:-1]:
      parent = parent.get(key) if isinstance(parent, dict) else None
    if not isinstance(parent, dict) or path[-1] not in parent:
      continue
    if callable(neutral):
      neutral = NEUTRAL[path] = neutral()
    if parent[path[-1]] == neutral:
      del parent[path[-1]]
  return cfg


def of_json(config_json: str) -> str:
  """Fingerprint of a config serialised as JSON (`config.json` of a workdir)."""
  return _digest(_fingerprinted(config_json))


def config_fingerprint(config) -> str:
  """Fingerprint of a `ConfigDict`."""
  return of_json(config.to_json_best_effort(sort_keys=True))


def section_fingerprints(config) -> Dict[str, str]:
  """{top-level key: fingerprint of its value} of a `ConfigDict` (`stage` left out): which parts
  of a config changed, for a stage that reads only some of them."""
  cfg = _fingerprinted(config.to_json_best_effort(sort_keys=True))
  return {key: _digest(value) for key, value in cfg.items()}


def read_record(workdir: str, stage: str) -> Optional[Dict]:
  """`<workdir>/<stage>.done.json` (fingerprint, token, upstream, outputs), or None."""
  path = os.path.join(workdir, f"{stage}.done.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)
