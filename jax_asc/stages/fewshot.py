"""Stage `fewshot`: K-shot transfer and retrieval of this run's embeddings on other datasets
(report 003, section 4, tables 1-3).

For checkpoint `fewshot.checkpoint` of the run, every dataset of `fewshot.datasets` is read at
the run's sample rate (its frontend's; real datasets resampled once and cached by the readers of
jax_asc/data, from `fewshot.roots.<name>`), embedded by the run's own frontend and model as the
named output `fewshot.output` (a name of the task family's `OUTPUTS`, checked by the task), and
scored by jax_asc/eval/fewshot.py:

  for each K of `fewshot.shots`: `fewshot.episodes` seeded episodes (`fewshot.seed`) of K
    examples per class from the dataset's support pool, a logistic regression on their
    embeddings, accuracy on the held-out set: mean ± 95 % interval, per-class accuracy and its
    mean over the classes TAU22 holds (`fewshot.seen.<name>`) and over the others (table 3);
  retrieval mAP: each held-out embedding queries all the others by cosine similarity (the held
    out set is the test part where the dataset has one, else the whole pool).

| dataset | support pool | held out |
|---|---|---|
| tut17 | fold `data.tut17_fold` train list | its evaluate list |
| icme24 | the labelled rows | the labelled rows outside each episode's support |
| esc50 | folds 1-4 | fold 5 (ESC-50's folds keep clips of one source recording together) |
| synthetic_open | jax_asc/data/synthetic_open.py: 10 seen + new scenes | the rest of each episode |

Long clips (`fewshot.window`): "mean_1s" (the default) cuts every clip into consecutive 1-s
windows (data/derived.py's segments: a clip must hold a whole number of them), embeds each and
averages the window embeddings per clip; "clip" embeds the whole clip in one pass. The default is
mean_1s because the TAU22 models are trained on 1-s clips: a 10-s clip in one pass shows a
CP-Mobile ten times the frames its global pooling and batch statistics were trained with, and a
model with a fixed input grid (PaSST, ViT at 1 s) cannot take it at all. Report 003 does not say
which it used.

Embeddings are cached per dataset part in `<workdir>/fewshot/embeddings/<dataset>/<part>.npz`
(filenames, labels, embeddings), keyed by the checkpoint's parameters, the output, the window,
the frontend and the part's file list: a re-run with other shots, episodes or seed embeds
nothing. Writes `<workdir>/reports/fewshot.{json,md}` and `fewshot.done.json`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Dict, List, Optional, Tuple

import jax
import ml_collections
import numpy as np

from jax_asc import data as data_lib
from jax_asc.audio import frontends
from jax_asc.data import audio_io, derived, synthetic_open
from jax_asc.data.dataset import Split
from jax_asc.eval import fewshot as fewshot_lib
from jax_asc.stages import common
from jax_asc.teachers import cache as cache_lib

DATASETS = ("tut17", "icme24", "esc50", "synthetic_open")
WINDOWS = ("clip", "mean_1s")
WINDOW_SECONDS = 1.0
# dataset → (support-pool split, held-out split or None: the rest of each episode)
PARTS = {"tut17": ("train", "evaluate"), "icme24": ("labelled", None),
         "esc50": ("folds1234", "fold5"), "synthetic_open": ("open", None)}
CACHE_VERSION = 1


def _names(config) -> List[str]:
  names = [n.strip() for n in config.fewshot.datasets.split(",") if n.strip()]
  if not names:
    raise ValueError("fewshot.datasets is empty: name some of " + ", ".join(DATASETS))
  unknown = [n for n in names if n not in DATASETS]
  if unknown:
    raise ValueError(f"fewshot.datasets={config.fewshot.datasets!r}: unknown {unknown}; "
                     f"valid: {list(DATASETS)}")
  return list(dict.fromkeys(names))


def _shots(config) -> Tuple[int, ...]:
  shots = config.fewshot.shots
  shots = (shots,) if isinstance(shots, int) else tuple(shots)
  if not shots or any(int(k) != k or k < 1 for k in shots):
    raise ValueError(f"fewshot.shots must be positive whole numbers, got {shots!r}")
  return tuple(int(k) for k in shots)


def _data_config(config, name: str, sample_rate: int) -> ml_collections.ConfigDict:
  """A `data` section reading dataset `name` from `fewshot.roots.<name>` like the run's data
  (cache folder, resampler, cache dtype, bad-file policy), at `sample_rate`, mono, whole
  clips."""
  root = config.fewshot.roots.get(name, "")
  if not root:
    raise ValueError(f"fewshot.roots.{name} is empty: point it at the {name} dataset folder "
                     f"(or leave {name} out of fewshot.datasets)")
  if not os.path.isdir(root):
    raise FileNotFoundError(f"fewshot.roots.{name} = {root!r} is not a folder")
  d = config.data
  return ml_collections.ConfigDict(dict(
      name=name, root=root, split_dir="", sample_rate=int(sample_rate), cache_dir=d.cache_dir,
      resampler=d.resampler, cache_dtype=d.cache_dtype, skip_bad_files=d.skip_bad_files,
      tut17_fold=d.tut17_fold, keep_channels=False, segment_seconds=0.0, source="files",
      train_split="train", validation_split="validation", test_split="test",
      selection_split="validation"))


def _synthetic_open(config, sample_rate: int) -> Split:
  cfg = config.fewshot.synthetic_open
  seed = int(config.data.synthetic.seed)
  split = synthetic_open.load(seed, int(cfg.per_class), int(cfg.new_classes),
                              cache_dir=config.data.cache_dir)
  if split.sample_rate != sample_rate:
    waveform = audio_io.resample(split.audio(), split.sample_rate, sample_rate,
                                 config.data.resampler)
    samples = int(round(split.num_samples * sample_rate / split.sample_rate))
    waveform = audio_io.fit_length(waveform, samples)
    split = dataclasses.replace(split, columns=dict(split.columns, waveform=waveform),
                                sample_rate=sample_rate, waveform_scale=1.0)
  return split


def load_parts(config, name: str, sample_rate: int) -> Tuple[Split, Optional[Split]]:
  """(support pool, held-out part or None) of dataset `name` at `sample_rate` (see PARTS)."""
  pool_name, test_name = PARTS[name]
  if name == "synthetic_open":
    return _synthetic_open(config, sample_rate), None
  cfg = _data_config(config, name, sample_rate)
  wanted = [pool_name] + ([test_name] if test_name else [])
  splits = data_lib.load_splits(cfg, wanted)
  return splits[pool_name], (splits[test_name] if test_name else None)


def seen_classes(config, name: str, classes) -> List[int]:
  """Indices of `fewshot.seen.<name>` (comma list of class names) in `classes`."""
  if name not in config.fewshot.seen:
    raise ValueError(f"fewshot.seen has no entry for {name!r}: list its classes that TAU22 "
                     f"holds (comma-separated, may be empty)")
  listed = [c.strip() for c in config.fewshot.seen[name].split(",") if c.strip()]
  unknown = [c for c in listed if c not in classes]
  if unknown:
    raise ValueError(f"fewshot.seen.{name}: {unknown} are not classes of {name} "
                     f"({list(classes)})")
  return [list(classes).index(c) for c in listed]


def _reference_split(config, workdir: str) -> Split:
  """A one-clip stand-in for the run's training split: what the task is built for (classes,
  devices, sample rate, clip length) from `<workdir>/data.json`."""
  run = common.run_data(config, workdir)
  waveform = np.zeros((1, int(run.get("channels", 1)), int(run["num_samples"])), np.float32)
  return Split(name="reference", dataset=run["dataset"], classes=list(run["classes"]),
               devices=list(run["devices"]), sample_rate=int(run["sample_rate"]),
               columns={"waveform": waveform, "filename": np.array(["reference"]),
                        "index": np.zeros(1, np.int32), "label": np.zeros(1, np.int32),
                        "recording_device": np.zeros(1, np.int32)})


def _parameters_digest(variables) -> str:
  h = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(variables)[0],
                           key=lambda item: jax.tree_util.keystr(item[0])):
    value = np.asarray(jax.device_get(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{value.dtype}|{value.shape}|".encode())
    h.update(np.ascontiguousarray(value).tobytes())
  return h.hexdigest()[:16]


def _embed(model: common.Inference, split: Split, output: str, window: str) -> np.ndarray:
  """(N, D) float32 `output` of every clip of `split` (window: see the module docstring)."""
  if window == "clip":
    return np.asarray(model.outputs(split)[output], np.float32)
  windows = derived.segment(split, WINDOW_SECONDS, key="fewshot.window='mean_1s'")
  per_clip = len(windows) // len(split)
  values = np.asarray(model.outputs(windows)[output], np.float32)
  return values.reshape(len(split), per_clip, *values.shape[1:]).mean(axis=1)


def _embedded(model, split: Split, output: str, window: str, folder: str, key: dict
              ) -> np.ndarray:
  """`_embed` of `split`, read from `folder/<split>.npz` when its record matches `key`."""
  digest = hashlib.sha256(json.dumps(dict(key, version=CACHE_VERSION,
                                          split=cache_lib.split_fingerprint(split)),
                                     sort_keys=True).encode()).hexdigest()[:16]
  path = os.path.join(folder, f"{split.name.replace('/', '_')}.npz")
  if os.path.exists(path):
    with np.load(path) as stored:
      if (str(stored["key"]) == digest
          and np.array_equal(stored["filename"], np.asarray(split.filename))):
        return stored["embedding"]
  values = _embed(model, split, output, window)
  if values.ndim != 2:
    raise ValueError(f"fewshot.output={output!r} gives (N, {values.shape[1:]}) per clip; "
                     f"few-shot needs one vector per clip (N, D)")
  if jax.process_index() == 0:
    os.makedirs(folder, exist_ok=True)
    tmp = path + f".tmp{os.getpid()}.npz"
    np.savez(tmp, key=np.array(digest), filename=np.asarray(split.filename),
             label=np.asarray(split["label"]), embedding=values)
    os.replace(tmp, path)
  return values


def _finite(value):
  """NaN → None for JSON (an interval of one episode, a group without classes)."""
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, float) and math.isnan(value):
    return None
  return value


def evaluate_dataset(config, name: str, embed, shots, episodes: int, seed: int) -> Dict:
  """The few-shot and retrieval results of dataset `name`; `embed(split)` → (N, D)."""
  sample_rate = frontends.settings_from_config(config.frontend).sample_rate
  pool, test = load_parts(config, name, sample_rate)
  classes = list(pool.classes)
  seen = seen_classes(config, name, classes)
  pool_x, pool_y = embed(pool), np.asarray(pool["label"])
  present = np.unique(pool_y[pool_y >= 0]).tolist()    # the classes evaluated
  test_x = test_y = None
  if test is not None:
    test_x, test_y = embed(test), np.asarray(test["label"])
  held_x, held_y = (pool_x, pool_y) if test is None else (test_x, test_y)
  result = {
      "classes": [classes[c] for c in present],
      "seen": [classes[c] for c in present if c in seen],
      "unseen": [classes[c] for c in present if c not in seen],
      "support_pool": {"split": pool.name, "examples": int(np.sum(pool_y >= 0))},
      "held_out": ({"split": test.name, "examples": int(np.sum(test_y >= 0))} if test is not None
                   else "the pool's examples outside each episode's support"),
      "embedding_dim": int(pool_x.shape[1]),
      "map": fewshot_lib.retrieval_map(held_x, held_y),
      "shots": {}}
  for k in shots:
    result["shots"][str(k)] = fewshot_lib.few_shot(
        pool_x, pool_y, shots=k, episodes=episodes, seed=seed, test_embeddings=test_x,
        test_labels=test_y, seen=seen, class_names=classes, dataset=name,
        standardize=bool(config.fewshot.standardize))
  return result


def _pct(group: Optional[dict]) -> str:
  if not group or group.get("mean") is None:
    return "–"
  ci = group.get("ci95")
  return f"{100 * group['mean']:.1f}" + (f" ± {100 * ci:.1f}" if ci is not None else "")


def markdown(result: Dict) -> str:
  """A table per dataset: K, accuracy ± 95 % interval, seen, unseen (percent); mAP."""
  lines = [f"# Few-shot evaluation ({result['checkpoint']['which']} checkpoint, step "
           f"{result['checkpoint']['step']}; output {result['output']}, window "
           f"{result['window']}, {result['episodes']} episodes, seed {result['seed']}"
           f"{', standardized' if result.get('standardize') else ''})", ""]
  for name, data in result["datasets"].items():
    lines += [f"## {name}: {len(data['classes'])} classes, {len(data['unseen'])} unseen; "
              f"retrieval mAP {data['map']:.3f}", "",
              "| K | accuracy (%) | seen (%) | unseen (%) |", "|---|---|---|---|"]
    for k, r in data["shots"].items():
      lines.append(f"| {k} | {_pct(r['accuracy'])} | {_pct(r.get('seen'))} | "
                   f"{_pct(r.get('unseen'))} |")
    lines.append("")
  return "\n".join(lines)


def run(config, workdir: str) -> Dict:
  cfg = config.fewshot
  names = _names(config)
  shots = _shots(config)
  if cfg.window not in WINDOWS:
    raise ValueError(f"fewshot.window must be one of {WINDOWS}, got {cfg.window!r}")
  if int(cfg.episodes) < 1:
    raise ValueError(f"fewshot.episodes must be ≥ 1, got {cfg.episodes}")
  output = cfg.output
  which = cfg.checkpoint
  variables, meta = common.restore_variables(config, workdir, which)
  # The task checks the output name (its OUTPUTS) when it is built.
  model = common.Inference(config, _reference_split(config, workdir), variables,
                           outputs=(output,))
  key = {"checkpoint": which, "parameters": _parameters_digest(variables), "output": output,
         "window": cfg.window, "frontend": dataclasses.asdict(
             frontends.settings_from_config(config.frontend)), "model": config.model.to_dict()}
  result = {"checkpoint": {"which": which, "step": int(meta["step"])}, "output": output,
            "window": cfg.window, "shots": list(shots), "episodes": int(cfg.episodes),
            "seed": int(cfg.seed), "standardize": bool(cfg.standardize), "datasets": {}}
  for name in names:
    folder = os.path.join(workdir, "fewshot", "embeddings", name)
    embed = lambda split, folder=folder: _embedded(model, split, output, cfg.window, folder, key)
    result["datasets"][name] = evaluate_dataset(config, name, embed, shots, int(cfg.episodes),
                                                int(cfg.seed))
  result = _finite(result)
  paths = common.write_metrics(workdir, "fewshot", result)
  if jax.process_index() == 0:
    text = markdown(result)
    paths["md"] = os.path.join(workdir, "reports", "fewshot.md")
    with open(paths["md"], "w") as f:
      f.write(text + "\n")
    print(text, flush=True)
  done = {"reports": paths}
  for name, data in result["datasets"].items():
    done[f"{name}/map"] = data["map"]
    for k, r in data["shots"].items():
      done[f"{name}/{k}shot"] = r["accuracy"]["mean"]
  common.write_done(workdir, "fewshot", config, done)
  return result
