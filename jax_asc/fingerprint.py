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


def _digest(value) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def of_json(config_json: str) -> str:
  """Fingerprint of a config serialised as JSON (`config.json` of a workdir)."""
  cfg = json.loads(config_json)
  cfg.pop("stage", None)
  return _digest(cfg)


def config_fingerprint(config) -> str:
  """Fingerprint of a `ConfigDict`."""
  return of_json(config.to_json_best_effort(sort_keys=True))


def section_fingerprints(config) -> Dict[str, str]:
  """{top-level key: fingerprint of its value} of a `ConfigDict` (`stage` left out): which parts
  of a config changed, for a stage that reads only some of them."""
  cfg = json.loads(config.to_json_best_effort(sort_keys=True))
  cfg.pop("stage", None)
  return {key: _digest(value) for key, value in cfg.items()}


def read_record(workdir: str, stage: str) -> Optional[Dict]:
  """`<workdir>/<stage>.done.json` (fingerprint, token, upstream, outputs), or None."""
  path = os.path.join(workdir, f"{stage}.done.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)
