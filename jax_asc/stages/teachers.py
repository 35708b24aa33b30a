"""Teacher outputs for distillation: logit caches, ensembles, and frozen online teachers.

* A teacher run's `predict` stage writes `<teacher workdir>/predictions/<split>.npz`: `filenames`
  (N,), `logits` (N, C) float32 and `metadata` (JSON: teacher config fingerprint, checkpoint,
  dataset, split fingerprint, classes, frontend settings).
* A student run's `ensemble` stage gathers its `config.teacher.members` into
  `<workdir>/teacher_logits/<split>.npz`: the members' logits (K, N, C) in the student split's
  order, the ensemble mode ("logits": softmax of the mean logits, report 000; "probabilities":
  the mean of the softmaxes, report 001) and the members' metadata. The temperature is applied
  when training, so both modes are exact at any τ.
* Loading checks that the cache was made for this run: same split (fingerprint of the file
  list), same members, same mode, and each member's cache against the record of the stage that
  wrote it (`predict.done.json`: token and config fingerprint), never against `config.json`,
  which a later call of the same workdir rewrites.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np

from jax_asc import fingerprint
from jax_asc.data.dataset import Split
from jax_asc.train import checkpoint as checkpoint_lib


class CacheMismatchError(ValueError):
  """A teacher cache that was not made for this run (other split, teacher or settings)."""


def split_fingerprint(split: Split) -> str:
  """Identifies a split's content: dataset, sample rate, clip length and the file list."""
  h = hashlib.sha256()
  h.update(f"{split.dataset}|{split.sample_rate}|{split.num_samples}|".encode())
  h.update("\n".join(split.filename.tolist()).encode())
  return h.hexdigest()[:16]


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: {workdir} is not a jax_asc run (train the "
                            "teacher there first)")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


# Stages whose checkpoints a teacher's predictions come from: a record of one of them with
# another fingerprint than the cache's means the teacher changed after it predicted.
MODEL_STAGES = ("train", "distill", "soup", "finetune_device")


stage_record = fingerprint.read_record


def check_member_record(member: str, meta: Dict, path: str) -> Optional[str]:
  """The problem with teacher `member`'s prediction cache `path` (metadata `meta`), or None.

  The cache is checked against the record of the run that made it: the member's
  `predict.done.json` must carry the cache's token (it finished writing this cache), and no
  model-making stage of the member may have run since with another configuration.
  """
  record = stage_record(member, "predict")
  if record is None:
    return (f"{member} has no predict.done.json: {path} was not finished by a predict stage "
            "(re-run it)")
  made_by = meta.get("teacher_config_fingerprint")
  if record.get("token") != meta.get("token"):
    return (f"{path} is not the cache {member}'s last predict stage wrote (token "
            f"{meta.get('token')} ≠ {record.get('token')}): re-run its predict stage")
  for stage in MODEL_STAGES:
    done = stage_record(member, stage)
    if done is not None and done.get("config_fingerprint") != made_by:
      return (f"teacher {member} changed since it predicted: its {stage} stage ran with "
              f"configuration {done.get('config_fingerprint')}, {path} was predicted with "
              f"{made_by}; re-run its predict stage")
  return None


def predictions_path(workdir: str, split_name: str) -> str:
  return os.path.join(workdir, "predictions", f"{split_name}.npz")


def ensemble_path(workdir: str, split_name: str) -> str:
  return os.path.join(workdir, "teacher_logits", f"{split_name}.npz")


def save_cache(path: str, filenames: np.ndarray, logits: np.ndarray, metadata: Dict) -> None:
  if jax.process_index() > 0:
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, filenames=np.asarray(filenames, str), logits=np.asarray(logits, np.float32),
           metadata=np.asarray(json.dumps(metadata, sort_keys=True)))
  os.replace(tmp, path)


def load_cache(path: str) -> Tuple[np.ndarray, np.ndarray, Dict]:
  if not os.path.exists(path):
    raise FileNotFoundError(path)
  with np.load(path, allow_pickle=False) as f:
    for key in ("filenames", "logits", "metadata"):
      if key not in f.files:
        raise CacheMismatchError(f"{path} is not a teacher cache: no {key!r} array")
    return f["filenames"], f["logits"], json.loads(str(f["metadata"]))


def _members(config) -> List[str]:
  members = [m.strip() for m in str(config.teacher.members).split(",") if m.strip()]
  if not members:
    raise ValueError("config.teacher.members is empty: name the teacher run workdirs "
                     "(comma-separated) whose predictions form the ensemble")
  return members


def _align(filenames: np.ndarray, logits: np.ndarray, split: Split, source: str) -> np.ndarray:
  """Rows of `logits` in the order of `split.filename`; every file of the split must be there."""
  row_of = {name: i for i, name in enumerate(filenames.tolist())}
  missing = [f for f in split.filename.tolist() if f not in row_of]
  if missing:
    raise CacheMismatchError(f"{source} has no logits for {len(missing)} of the {len(split)} "
                             f"files of split {split.name!r}, e.g. {missing[:3]}")
  return logits[np.asarray([row_of[f] for f in split.filename.tolist()])]


def build_ensemble(config, split: Split) -> Tuple[np.ndarray, Dict]:
  """Member logits (K, N, C) in `split` order and the ensemble metadata, from the members'
  prediction caches; checks each member's metadata against its run and this split."""
  mode = config.teacher.ensemble
  if mode not in ("logits", "probabilities"):
    raise ValueError(f"teacher.ensemble must be 'logits' or 'probabilities', got {mode!r}")
  stacked, members_meta = [], []
  for member in _members(config):
    path = predictions_path(member, split.name)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} does not exist: run the predict stage of teacher {member} "
                              f"on split {split.name!r} first")
    filenames, logits, meta = load_cache(path)
    problem = check_member_record(member, meta, path)
    if problem:
      raise CacheMismatchError(problem)
    if list(meta.get("classes", [])) != list(split.classes):
      raise CacheMismatchError(f"{path} has classes {meta.get('classes')}, the split has "
                               f"{list(split.classes)}")
    stacked.append(_align(filenames, logits, split, path))
    members_meta.append(dict(meta, workdir=os.path.abspath(member)))
  metadata = {"mode": mode, "members": members_meta, "split": split.name,
              "split_fingerprint": split_fingerprint(split), "classes": list(split.classes)}
  return np.stack(stacked).astype(np.float32), metadata


def load_ensemble(config, workdir: str, split: Split) -> np.ndarray:
  """Member logits (K, N, C) in `split` order from `<workdir>/teacher_logits/<split>.npz`,
  building the cache first when it is absent; a cache made for other members, mode or split is
  an error (delete it or re-run the ensemble stage)."""
  path = ensemble_path(workdir, split.name)
  if not os.path.exists(path):
    logits, metadata = build_ensemble(config, split)
    save_cache(path, split.filename, logits, metadata)
    return logits
  filenames, logits, meta = load_cache(path)
  expected = [os.path.abspath(m) for m in _members(config)]
  problems = []
  if meta.get("mode") != config.teacher.ensemble:
    problems.append(f"mode {meta.get('mode')!r} ≠ teacher.ensemble {config.teacher.ensemble!r}")
  if [m.get("workdir") for m in meta.get("members", [])] != expected:
    problems.append(f"members {[m.get('workdir') for m in meta.get('members', [])]} ≠ "
                    f"teacher.members {expected}")
  for member in meta.get("members", []):
    if os.path.isdir(member["workdir"]):   # a moved teacher folder: the cache still stands
      problem = check_member_record(member["workdir"], member,
                                    predictions_path(member["workdir"], split.name))
      if problem:
        problems.append(problem)
  if meta.get("split_fingerprint") != split_fingerprint(split):
    problems.append(f"split fingerprint {meta.get('split_fingerprint')} ≠ this run's "
                    f"{split_fingerprint(split)} (other files or sample rate)")
  if problems:
    raise CacheMismatchError(f"{path} was not made for this run: " + "; ".join(problems) +
                             ". Delete it or re-run the ensemble stage.")
  return np.stack([_align(filenames, member, split, path) for member in logits])


def index_table(split: Split, rows: np.ndarray) -> np.ndarray:
  """Scatter per-example arrays (N, …) into a table indexed by `split.index` (the batch's
  "index" field), so a step gathers its examples' rows on the device."""
  table = np.zeros((int(split.index.max()) + 1,) + rows.shape[1:], np.float32)
  table[split.index] = rows
  return table


def load_frozen_teacher(workdir: str, which: str):
  """(teacher config, {"params", "batch_stats"}) of another run's checkpoint `which`."""
  config = load_run_config(workdir)
  ckpt = config.checkpoint
  checkpoints = checkpoint_lib.Checkpoints(workdir, best_metric=ckpt.best_metric,
                                           best_mode=ckpt.best_mode, keep_best=ckpt.keep_best)
  try:
    restored = checkpoints.restore_variables(which)
  finally:
    checkpoints.close()
  if restored is None:
    raise FileNotFoundError(f"teacher {workdir} has no {which!r} checkpoint "
                            f"(teacher.online_checkpoint); train it first")
  return config, restored[0]


def members_summary(members: Sequence[str]) -> str:
  return " + ".join(os.path.basename(os.path.normpath(m)) for m in members)
