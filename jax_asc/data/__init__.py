"""Datasets and input pipelines. `load_splits(cfg, names)` reads the named splits of `cfg.name`.

Datasets (`cfg.name`) and their split names:
  synthetic      train, validation, test (built on first use; `cfg.synthetic`)
  tau22, tau20   fold1_train, fold1_evaluate, fold1_test; split5 … split100, test (DCASE24/25
                 split files in `cfg.split_dir`, default `cfg.root`)
  dcase25_eval   test (prediction only: `device_id` column, `unknown` devices)
  tut17          train, evaluate, test of fold `cfg.tut17_fold`
  icme24         all (unlabelled rows kept with label −1), labelled, unlabelled
  esc50          fold1 … fold5, or several folds as folds1234
  fsdd           train (takes 5–49), test (takes 0–4)
Real datasets are read from `cfg.root`, resampled to `cfg.sample_rate` once with `cfg.resampler`
(`audio_io.RESAMPLERS`) and cached as `cfg.cache_dtype` under `cfg.cache_dir` (default
`$JAX_ASC_DATA_DIR` or `~/.cache/jax_asc`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, Sequence

from jax_asc.data import audio_io, formats, loading
from jax_asc.data.dataset import Split, default_cache_dir

DATASETS = ("synthetic", "tau22", "tau20", "dcase25_eval", "tut17", "icme24", "esc50", "fsdd")


def manifest(cfg, split: str) -> formats.Manifest:
  """The validated metadata of one split of the dataset `cfg.name` at `cfg.root`."""
  name, root = cfg.name, cfg.root
  if not root:
    raise ValueError(f"data.root is empty: point it at the {name} dataset folder")
  if not os.path.isdir(root):
    raise FileNotFoundError(f"data.root {root!r} is not a folder")
  if name in ("tau22", "tau20"):
    version = {"tau22": "2022", "tau20": "2020"}[name]
    return formats.tau_mobile(root, split, version=version, split_dir=cfg.split_dir or None)
  if name == "dcase25_eval":
    if split != "test":
      raise ValueError(f"dcase25_eval has only the split 'test', got {split!r}")
    return formats.dcase25_evaluation(root)
  if name == "tut17":
    return formats.tut17(root, split, fold=cfg.tut17_fold)
  if name == "icme24":
    full = formats.icme24(root)
    keep = {"all": lambda e: True, "labelled": lambda e: e.label >= 0,
            "unlabelled": lambda e: e.label < 0}
    if split not in keep:
      raise ValueError(f"icme24 splits are all, labelled, unlabelled; got {split!r}")
    return dataclasses.replace(full, split=split,
                               examples=[e for e in full.examples if keep[split](e)])
  if name == "esc50":
    digits = split[5:] if split.startswith("folds") else split[4:] if split.startswith("fold") else ""
    if not digits or not all(d in "12345" for d in digits):
      raise ValueError(f"esc50 splits are fold1 … fold5 or folds<digits>, got {split!r}")
    return formats.esc50(root, tuple(sorted({int(d) for d in digits})))
  if name == "fsdd":
    return formats.fsdd(root, split)
  raise ValueError(f"data.name must be one of {DATASETS}, got {name!r}")


def load_splits(cfg, names: Sequence[str]) -> Dict[str, Split]:
  """{split name: Split} for the named splits (each loaded once)."""
  audio_io.check_resampler(cfg.resampler, "data.resampler")
  if cfg.name == "synthetic":
    from jax_asc.data import synthetic
    if cfg.sample_rate != synthetic.SAMPLE_RATE:
      raise ValueError(f"data.sample_rate is {cfg.sample_rate}; the synthetic scenes are "
                       f"{synthetic.SAMPLE_RATE} Hz")
    splits = synthetic.load(cfg.synthetic, cfg.cache_dir)
    missing = sorted(set(names) - set(splits))
    if missing:
      raise KeyError(f"synthetic splits are {sorted(splits)}; config names {missing}")
    return {n: splits[n] for n in names}
  cache_dir = cfg.cache_dir or default_cache_dir()
  return {n: loading.load(manifest(cfg, n), sample_rate=cfg.sample_rate, cache_dir=cache_dir,
                          skip_bad_files=cfg.skip_bad_files, cache_dtype=cfg.cache_dtype,
                          resampler=cfg.resampler)
          for n in dict.fromkeys(names)}
