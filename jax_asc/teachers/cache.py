"""Teacher caches: per-example outputs of a run on disk, keyed by filename.

* A run's `predict` stage writes `<run>/predictions/<split>/`: `filenames.npy` (N,), one
  `<output>.npy` (N, …) per named output it was asked for (`logits`, `embedding`, …) and
  `metadata.json` (the run's config fingerprint and the token of that predict stage, checkpoint,
  dataset, split fingerprint, classes, frontend settings, output shapes).
* A student's cache teacher (`config.teachers.<name>`, source "cache") gathers the caches of its
  `runs` into `<student>/teacher_caches/<name>/<split>/`: `filenames.npy` and `<output>.npy`
  (N, K, …) with the K members stacked, rows in the student split's order; `metadata.json` says
  which members, the combination mode and the split's fingerprint. The stage joins it to the
  split as the column `teacher/<name>/<output>`; it is memory-mapped and read batch by batch
  with the other columns on the tf.data path (the accelerator path, `data.pipeline =
  "accelerator"`, holds every column the task reads on the devices, this one too).
* A member's cache is checked against the record of the run that made it (its
  `predict.done.json`: the cache's token, and no model-making stage run since with another
  configuration), never against `config.json`, which a later call of the same workdir rewrites;
  a student's gathered cache is checked against its members, mode and split.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from jax_asc import fingerprint

# Stages whose checkpoints a teacher's predictions come from: a record of one of them with
# another fingerprint than the cache's means the teacher changed after it predicted.
MODEL_STAGES = ("train", "distill", "soup", "finetune_device")
COMBINE_MODES = ("logits", "probabilities", "mean")


class CacheMismatchError(ValueError):
  """A teacher cache that was not made for this run (other split, teacher or settings)."""


@dataclasses.dataclass
class Cache:
  """One cache folder: filenames (N,), {output: (N, …) memory map}, metadata."""
  folder: str
  filenames: np.ndarray
  outputs: Dict[str, np.ndarray]
  metadata: Dict

  def output(self, name: str) -> np.ndarray:
    if name not in self.outputs:
      raise CacheMismatchError(f"{self.folder} holds outputs {sorted(self.outputs)}, not "
                               f"{name!r}: predict it (predict.outputs) and re-run that stage")
    return self.outputs[name]


def split_fingerprint(split) -> str:
  """Identifies a split's content: dataset, sample rate, clip length and the file list."""
  h = hashlib.sha256()
  h.update(f"{split.dataset}|{split.sample_rate}|{split.num_samples}|".encode())
  h.update("\n".join(np.asarray(split.filename).tolist()).encode())
  return h.hexdigest()[:16]


def predictions_dir(workdir: str, split_name: str) -> str:
  return os.path.join(workdir, "predictions", split_name.replace("/", "_"))


def gathered_dir(workdir: str, teacher: str, split_name: str) -> str:
  return os.path.join(workdir, "teacher_caches", teacher, split_name.replace("/", "_"))


def column_name(teacher: str, output: str) -> str:
  """The split column a cache teacher's output joins as."""
  return f"teacher/{teacher}/{output}"


def save(folder: str, filenames: Sequence[str], outputs: Mapping[str, np.ndarray],
         metadata: Dict) -> None:
  """Writes a cache folder atomically (a half-written cache is never visible)."""
  filenames = np.asarray(filenames, str)
  for name, array in outputs.items():
    if len(array) != len(filenames):
      raise ValueError(f"cache output {name!r} has {len(array)} rows for {len(filenames)} files")
  partial = folder.rstrip("/") + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  np.save(os.path.join(partial, "filenames.npy"), filenames)
  shapes = {}
  for name, array in outputs.items():
    array = np.asarray(array)
    if array.dtype.kind == "f" and array.dtype != np.float16:
      array = array.astype(np.float32)
    np.save(os.path.join(partial, f"{name}.npy"), array)
    shapes[name] = {"shape": list(array.shape[1:]), "dtype": str(array.dtype)}
  with open(os.path.join(partial, "metadata.json"), "w") as f:
    json.dump(dict(metadata, outputs=shapes), f, indent=1, sort_keys=True)
  old = folder.rstrip("/") + ".old"
  if os.path.exists(folder):
    shutil.rmtree(old, ignore_errors=True)
    os.replace(folder, old)
  os.replace(partial, folder)
  shutil.rmtree(old, ignore_errors=True)


def load(folder: str) -> Cache:
  """A cache folder with its outputs memory-mapped (nothing is read until indexed)."""
  meta_path = os.path.join(folder, "metadata.json")
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"{folder} is not a teacher cache (no metadata.json)")
  with open(meta_path) as f:
    metadata = json.load(f)
  filenames = np.load(os.path.join(folder, "filenames.npy"))
  outputs = {}
  for name in metadata.get("outputs", {}):
    path = os.path.join(folder, f"{name}.npy")
    if not os.path.exists(path):
      raise CacheMismatchError(f"{folder}: metadata lists output {name!r} but {path} is missing")
    outputs[name] = np.load(path, mmap_mode="r")
    if len(outputs[name]) != len(filenames):
      raise CacheMismatchError(f"{path} has {len(outputs[name])} rows for {len(filenames)} "
                               "files")
  return Cache(folder, filenames, outputs, metadata)


def check_member_record(member: str, meta: Dict, path: str) -> Optional[str]:
  """The problem with run `member`'s prediction cache `path` (metadata `meta`), or None.

  The cache is checked against the record of the run that made it: the member's
  `predict.done.json` must carry the cache's token (it finished writing this cache), and no
  model-making stage of the member may have run since with another configuration.
  """
  record = fingerprint.read_record(member, "predict")
  if record is None:
    return (f"{member} has no predict.done.json: {path} was not finished by a predict stage "
            "(re-run it)")
  made_by = meta.get("teacher_config_fingerprint")
  if record.get("token") != meta.get("token"):
    return (f"{path} is not the cache {member}'s last predict stage wrote (token "
            f"{meta.get('token')} ≠ {record.get('token')}): re-run its predict stage")
  for stage in MODEL_STAGES:
    done = fingerprint.read_record(member, stage)
    if done is not None and done.get("config_fingerprint") != made_by:
      return (f"teacher {member} changed since it predicted: its {stage} stage ran with "
              f"configuration {done.get('config_fingerprint')}, {path} was predicted with "
              f"{made_by}; re-run its predict stage")
  return None


def align(filenames: np.ndarray, split, source: str) -> np.ndarray:
  """Row of `filenames` for every file of `split` (in split order); all must be there."""
  row_of = {name: i for i, name in enumerate(np.asarray(filenames).tolist())}
  wanted = np.asarray(split.filename).tolist()
  missing = [f for f in wanted if f not in row_of]
  if missing:
    raise CacheMismatchError(f"{source} has no entry for {len(missing)} of the {len(split)} "
                             f"files of split {split.name!r}, e.g. {missing[:3]}")
  return np.asarray([row_of[f] for f in wanted], np.int64)


def runs_of(spec, teacher: str) -> List[str]:
  """The member run workdirs of cache teacher `teacher` (`teachers.<name>.runs`)."""
  runs = [m.strip() for m in str(spec.runs).split(",") if m.strip()]
  if not runs:
    raise ValueError(f"teachers.{teacher}.runs is empty: name the teacher run workdirs "
                     "(comma-separated) whose predict caches this teacher reads")
  return runs


def gather(spec, teacher: str, split) -> Tuple[np.ndarray, Dict]:
  """The members' output `spec.output` stacked (N, K, …) in `split` order, and the gathered
  cache's metadata; checks each member's cache against its run and this split."""
  if spec.combine not in COMBINE_MODES:
    raise ValueError(f"teachers.{teacher}.combine must be one of {COMBINE_MODES}, got "
                     f"{spec.combine!r}")
  stacked, members_meta = [], []
  for member in runs_of(spec, teacher):
    folder = predictions_dir(member, split.name)
    if not os.path.exists(os.path.join(folder, "metadata.json")):
      raise FileNotFoundError(f"{folder} does not exist: run the predict stage of teacher "
                              f"{member} on split {split.name!r} first")
    cache = load(folder)
    problem = check_member_record(member, cache.metadata, folder)
    if problem:
      raise CacheMismatchError(problem)
    if list(cache.metadata.get("classes", [])) != list(split.classes):
      raise CacheMismatchError(f"{folder} has classes {cache.metadata.get('classes')}, the split "
                               f"has {list(split.classes)}")
    rows = align(cache.filenames, split, folder)
    output = cache.output(spec.output)
    order = np.argsort(rows, kind="stable")     # read the memory map in file order
    picked = np.empty((len(rows),) + output.shape[1:], output.dtype)
    picked[order] = output[rows[order]]
    stacked.append(picked)
    members_meta.append(dict(cache.metadata, workdir=os.path.abspath(member)))
  shapes = {tuple(s.shape[1:]) for s in stacked}
  if len(shapes) > 1:
    raise CacheMismatchError(f"teachers.{teacher}: the members' {spec.output!r} have different "
                             f"shapes {sorted(shapes)}")
  metadata = {"combine": spec.combine, "output": spec.output, "members": members_meta,
              "split": split.name, "split_fingerprint": split_fingerprint(split),
              "classes": list(split.classes)}
  return np.stack(stacked, axis=1), metadata


def problems_with(cache: Cache, spec, teacher: str, split) -> List[str]:
  """Why a gathered cache was not made for this run's `spec` and `split` ([] when it was)."""
  meta = cache.metadata
  expected = [os.path.abspath(m) for m in runs_of(spec, teacher)]
  problems = []
  if meta.get("combine") != spec.combine:
    problems.append(f"combine {meta.get('combine')!r} ≠ teachers.{teacher}.combine "
                    f"{spec.combine!r}")
  if meta.get("output") != spec.output:
    problems.append(f"output {meta.get('output')!r} ≠ teachers.{teacher}.output "
                    f"{spec.output!r}")
  if [m.get("workdir") for m in meta.get("members", [])] != expected:
    problems.append(f"members {[m.get('workdir') for m in meta.get('members', [])]} ≠ "
                    f"teachers.{teacher}.runs {expected}")
  for member in meta.get("members", []):
    if os.path.isdir(member["workdir"]):   # a moved teacher folder: the cache still stands
      problem = check_member_record(member["workdir"], member,
                                    predictions_dir(member["workdir"], split.name))
      if problem:
        problems.append(problem)
  if meta.get("split_fingerprint") != split_fingerprint(split):
    problems.append(f"split fingerprint {meta.get('split_fingerprint')} ≠ this run's "
                    f"{split_fingerprint(split)} (other files, order or sample rate)")
  return problems


def gathered(spec, teacher: str, workdir: str, split, rebuild: bool = False) -> np.ndarray:
  """The cache teacher's stacked output (N, K, …) for `split`, memory-mapped from
  `<workdir>/teacher_caches/<teacher>/<split>/`; gathered from the members first when absent
  (or `rebuild`). A cache made for other members, mode, output or split is an error."""
  folder = gathered_dir(workdir, teacher, split.name)
  if rebuild or not os.path.exists(os.path.join(folder, "metadata.json")):
    stacked, metadata = gather(spec, teacher, split)
    if jax.process_index() > 0:
      # Process 0 writes the cache; the others gather the same members themselves and keep the
      # result in memory (no wait on a shared file system; a dense copy per host).
      return stacked
    save(folder, split.filename, {spec.output: stacked}, metadata)
  cache = load(folder)
  problems = problems_with(cache, spec, teacher, split)
  if problems:
    raise CacheMismatchError(f"{folder} was not made for this run: " + "; ".join(problems) +
                             ". Delete it or re-run the ensemble stage.")
  return cache.output(spec.output)


def ensemble_mode(spec) -> str:
  """How a cache teacher's member logits become KD targets (`distillation.ensemble_log_probs`):
  "probabilities" averages the members' softmaxes, "logits" and "mean" their logits."""
  return "probabilities" if spec.combine == "probabilities" else "logits"


def members_summary(members: Sequence[str]) -> str:
  return " + ".join(os.path.basename(os.path.normpath(m)) for m in members)
