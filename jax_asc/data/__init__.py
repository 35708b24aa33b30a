"""Datasets and input pipelines. `load_splits(cfg)` reads the dataset named by `cfg.name`."""
from __future__ import annotations

from typing import Dict

from jax_asc.data.dataset import Split

DATASETS = ("synthetic",)


def load_splits(cfg) -> Dict[str, Split]:
  if cfg.name == "synthetic":
    from jax_asc.data import synthetic
    return synthetic.load(cfg.synthetic)
  raise ValueError(f"data.name must be one of {DATASETS}, got {cfg.name!r}")
