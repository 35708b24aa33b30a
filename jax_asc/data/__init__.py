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
  s5_synthetic   train, validation, test: 4-channel S5 mixtures (report 004), built on first use
                 (`cfg.s5`, s5_synthetic.py)
  dcase26t4      train (mixed on the fly), valid (metadata/valid.json), test (synthesized),
                 eval: the DCASE 2026 Task 4 data folder (`cfg.s5`, s5_dcase.py)
Real datasets are read from `cfg.root`, resampled to `cfg.sample_rate` once with `cfg.resampler`
(`audio_io.RESAMPLERS`) and cached as `cfg.cache_dtype` under `cfg.cache_dir` (default
`$JAX_ASC_DATA_DIR` or `~/.cache/jax_asc`); `cfg.keep_channels` keeps the dataset's channels
(waveform (N, C, S)), else they are mixed to mono (C = 1). Every split is a table of named
columns (`dataset.COLUMNS`).

Sources (`cfg.source`): "files" (above) or "tfds": the same splits from the records the TFDS
builders (`tfds_builders.py`, built with `python -m jax_asc.build_tfds`) wrote under
`cfg.tfds_dir`, read by row (`tfds_source.py`).

Derived at load time (`derived.py`), for every dataset:
  segment_seconds > 0   every clip of every split cut into consecutive segments `<file>@<k>`
  validation_split = "holdout"   a split "holdout" of `holdout_fraction` of `train_split`,
                        whole recording locations (`Split.identifier`) chosen by
                        `holdout_seed`; whenever `train_split` is loaded it lacks them
  selection_split       "validation" (checkpoints, soups, "best" teachers are chosen on the
                        validation split, which must then differ from the test split) or "test"
                        (an explicit opt-in to select on the test split)
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, Sequence

import numpy as np

from jax_asc.data import audio_io, derived, formats, loading
from jax_asc.data.dataset import Split, default_cache_dir

DATASETS = ("synthetic", "tau22", "tau20", "dcase25_eval", "tut17", "icme24", "esc50", "fsdd",
            "s5_synthetic", "dcase26t4")
S5_DATASETS = ("s5_synthetic", "dcase26t4")
SELECTION_SPLITS = ("validation", "test")
HOLDOUT = derived.HOLDOUT
# base_config()'s values of the keys a hand-built `cfg` (tests, benchmarks) may lack.
_DEFAULTS = dict(validation_split="validation", test_split="test", train_split="train",
                 selection_split="validation", holdout_fraction=0.1, holdout_seed=0,
                 segment_seconds=0.0, keep_channels=False, source="files", tfds_dir="")
SOURCES = ("files", "tfds")


def _option(cfg, key: str):
  try:
    return getattr(cfg, key)
  except (AttributeError, KeyError):
    return _DEFAULTS[key]


def check_selection(cfg) -> None:
  """Raises when `cfg` (config.data) would select checkpoints on the test split unasked.

  Selection (best-k checkpoints, model soups, "best" teachers) reads `validation_split`; when
  that is the test split, `selection_split` must say "test" explicitly.
  """
  selection = _option(cfg, "selection_split")
  if selection not in SELECTION_SPLITS:
    raise ValueError(f"data.selection_split must be one of {SELECTION_SPLITS}, got "
                     f"{selection!r}")
  validation, test = _option(cfg, "validation_split"), _option(cfg, "test_split")
  if validation == test and selection != "test":
    raise ValueError(
        f"data.validation_split is the test split {test!r}: checkpoints (best-k, soups, "
        f"'best' teachers) would be selected on the test split. Hold out a validation split "
        f"(data.validation_split='holdout') or name another one; a config that really wants "
        f"this must set data.selection_split='test'")
  if validation == HOLDOUT and _option(cfg, "train_split") == HOLDOUT:
    raise ValueError("data.train_split cannot be named 'holdout' when "
                     "data.validation_split='holdout'")


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
    return formats.esc50(root, formats.esc50_folds(split))
  if name == "fsdd":
    return formats.fsdd(root, split)
  raise ValueError(f"data.name must be one of {DATASETS}, got {name!r}")


def load_splits(cfg, names: Sequence[str]) -> Dict[str, Split]:
  """{split name: Split} for the named splits (each loaded once), after the derivations above.

  The order: load, cut into `segment_seconds` segments, then hold out (the held-out locations
  are the same with or without segments). With `validation_split="holdout"`, asking for
  "holdout" loads `train_split` to split it, and `train_split` comes back without the held-out
  examples whichever names are asked for.
  """
  audio_io.check_resampler(cfg.resampler, "data.resampler")
  check_selection(cfg)
  wanted = list(dict.fromkeys(names))
  use_holdout = _option(cfg, "validation_split") == HOLDOUT
  train_name = _option(cfg, "train_split")
  if HOLDOUT in wanted and not use_holdout:
    raise ValueError(f"split 'holdout' asked for, but data.validation_split is "
                     f"{_option(cfg, 'validation_split')!r}: set data.validation_split='holdout'")
  to_load = [n for n in wanted if n != HOLDOUT]
  if HOLDOUT in wanted and train_name not in to_load:
    to_load.append(train_name)
  source = _option(cfg, "source")
  if source == "tfds":
    from jax_asc.data import tfds_source
    splits = tfds_source.load(cfg, to_load)
  elif source == "files":
    splits = _load_plain(cfg, to_load)
  else:
    raise ValueError(f"data.source must be one of {SOURCES}, got {source!r}")
  seconds = float(_option(cfg, "segment_seconds"))
  if seconds < 0:
    raise ValueError(f"data.segment_seconds must be ≥ 0 (0 = whole clips), got {seconds}")
  if seconds > 0:
    splits = {n: derived.segment(s, seconds) for n, s in splits.items()}
  if use_holdout and train_name in splits:
    splits[train_name], splits[HOLDOUT] = derived.holdout(
        splits[train_name], float(_option(cfg, "holdout_fraction")),
        int(_option(cfg, "holdout_seed")))
  return {n: splits[n] for n in wanted}


def read_split(cfg, name: str) -> Split:
  """Split `name` of `cfg.name` read from its files (no segments, no holdout): what the TFDS
  builders (`tfds_builders.py`) write as records."""
  return _load_plain(cfg, [name])[name]


def _s5_settings(cfg):
  if getattr(cfg, "s5", None) is None:
    raise ValueError(f"data.name {cfg.name!r} needs the section data.s5 (configs/report004_s5.py "
                     f"declares it)")
  if cfg.sample_rate != 32000:
    raise ValueError(f"data.sample_rate is {cfg.sample_rate}; the S5 mixtures are 32000 Hz")
  return cfg.s5


def _at_rate(split: Split, cfg) -> Split:
  """A rendered split (the synthetic scenes are 32 kHz) at `data.sample_rate`, resampled in
  memory with `data.resampler` (report 003 trains at 16 kHz); unchanged at its own rate."""
  if cfg.sample_rate == split.sample_rate:
    return split
  waveform = np.asarray(split["waveform"], np.float32) * split.waveform_scale
  waveform = audio_io.resample(waveform, split.sample_rate, cfg.sample_rate, cfg.resampler)
  samples = int(round(split["waveform"].shape[-1] * cfg.sample_rate / split.sample_rate))
  columns = dict(split.columns, waveform=audio_io.fit_length(waveform, samples))
  return dataclasses.replace(split, columns=columns, sample_rate=int(cfg.sample_rate),
                             waveform_scale=1.0)


def _load_plain(cfg, names: Sequence[str]) -> Dict[str, Split]:
  """{split name: Split} as the dataset gives them (no segments, no holdout)."""
  if cfg.name == "s5_synthetic":
    from jax_asc.data import s5_synthetic
    splits = s5_synthetic.load(_s5_settings(cfg), cfg.cache_dir)
    missing = sorted(set(names) - set(splits))
    if missing:
      raise KeyError(f"s5_synthetic splits are {sorted(splits)}; config names {missing}")
    return {n: splits[n] for n in names}
  if cfg.name == "dcase26t4":
    from jax_asc.data import s5_dcase
    if not cfg.root or not os.path.isdir(cfg.root):
      raise FileNotFoundError(f"data.root {cfg.root!r} must be the DCASE 2026 Task 4 data "
                              f"folder (holding dev_set/, eval_set/)")
    s5 = _s5_settings(cfg)
    return {n: s5_dcase.load(cfg.root, n, s5) for n in dict.fromkeys(names)}
  if cfg.name == "synthetic":
    from jax_asc.data import synthetic
    splits = synthetic.load(cfg.synthetic, cfg.cache_dir)
    missing = sorted(set(names) - set(splits))
    if missing:
      raise KeyError(f"synthetic splits are {sorted(splits)}; config names {missing}")
    return {n: _at_rate(splits[n], cfg) for n in names}
  cache_dir = cfg.cache_dir or default_cache_dir()
  return {n: loading.load(manifest(cfg, n), sample_rate=cfg.sample_rate, cache_dir=cache_dir,
                          skip_bad_files=cfg.skip_bad_files, cache_dtype=cfg.cache_dtype,
                          resampler=cfg.resampler,
                          keep_channels=bool(_option(cfg, "keep_channels")))
          for n in dict.fromkeys(names)}
