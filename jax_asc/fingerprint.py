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


# Keys added after runs were recorded, at the value that does what those runs did: left out of
# the fingerprint at that value, so adding them does not make every finished run stale.
NEUTRAL = {("data", "source"): "files", ("data", "tfds_dir"): ""}


def _digest(value) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _fingerprinted(config_json: str) -> dict:
  """The config's dict without `stage` and the `NEUTRAL` keys at their neutral values."""
  cfg = json.loads(config_json)
  cfg.pop("stage", None)
  for (section, key), neutral in NEUTRAL.items():
    values = cfg.get(section)
    if isinstance(values, dict) and key in values and values[key] == neutral:
      del values[key]
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
